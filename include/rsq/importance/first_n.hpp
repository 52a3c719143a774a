// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Chunk masks (spec §4.3, the reference's `AdhocMaskingWeighting` with method_type "p1_p2_…_P"): First-N ("0_8")
/// and First&Last-N ("0_31_32").

#include <algorithm>
#include <charconv>
#include <concepts>
#include <string>
#include <string_view>
#include <vector>

#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/importance/context.hpp"

namespace rsq::importance {

/// Splits the L tokens into `num_chunks` chunks of ⌊L/P⌋ tokens; tokens of the listed chunks get weight 1, all others
/// (including the L mod P tail tokens) 0. No normalisation, no r_min/r_max. Needs only the sequence length, which
/// must be at least P.
struct first_n {
  static constexpr std::string_view name = "first_n";

  std::vector<index_t> chunks{0};  ///< chunk indices p in [0, P) that get weight 1, no repeats
  index_t num_chunks = 8;          ///< P ≥ 1

  /// Parses the reference's method string "p1_p2_…_P", e.g. "0_8" (First-N) or "0_31_32" (First&Last-N).
  [[nodiscard]] static first_n from_method(std::string_view method) { return parse(method, '_', '_', method); }

  /// Parses the command-line form "p1,p2,…/P", e.g. "0/8" or "0,31/32".
  [[nodiscard]] static first_n from_list(std::string_view list) { return parse(list, ',', '/', list); }

  /// The reference's method string, e.g. "0_31_32".
  [[nodiscard]] std::string method() const {
    std::string s;
    for (auto p : chunks) s += std::to_string(p) + "_";
    return s + std::to_string(num_chunks);
  }

  [[nodiscard]] constexpr needs requirements() const noexcept { return {}; }

  /// Checks the chunk list; throws rsq::invalid_argument.
  void validate() const {
    RSQ_EXPECTS(num_chunks >= 1, "first_n: num_chunks must be >= 1, got ", num_chunks);
    RSQ_EXPECTS(!chunks.empty(), "first_n: the chunk list is empty");
    for (std::size_t i = 0; i < chunks.size(); ++i) {
      RSQ_EXPECTS(chunks[i] >= 0 && chunks[i] < num_chunks, "first_n: chunk ", chunks[i], " is outside [0, ",
                  num_chunks, ")");
      for (std::size_t j = 0; j < i; ++j)
        RSQ_EXPECTS(chunks[j] != chunks[i], "first_n: chunk ", chunks[i], " is listed twice");
    }
  }

  /// @returns the 0/1 mask // (tokens)
  template <std::floating_point T>
  [[nodiscard]] rsq::vector<T> weights(basic_sequence_context<T> const& ctx) const {
    validate();
    auto const L = sequence_length(ctx, name);
    RSQ_EXPECTS(L >= num_chunks, "first_n: the sequence has ", L, " tokens, fewer than the ", num_chunks,
                " chunks of \"", method(), "\"");
    index_t const chunk = L / num_chunks;  // ⌊L/P⌋: the tail of L mod P tokens stays 0, as in the reference
    rsq::vector<T> r = rsq::vector<T>::from_shape({std::size_t(L)});  // (tokens)
    r.fill(T(0));
    for (auto p : chunks)
      for (index_t t = p * chunk; t < (p + 1) * chunk; ++t) r(std::size_t(t)) = T(1);
    return r;
  }

 private:
  [[nodiscard]] static first_n parse(std::string_view text, char sep, char last_sep, std::string_view shown) {
    auto fail = [&](char const* why) {
      rsq::detail::throw_invalid_argument("first_n: bad chunk string \"", shown, "\": ", why);
    };
    auto number = [&](std::string_view s) -> index_t {
      index_t v = 0;
      auto const [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
      if (s.empty() || ec != std::errc{} || ptr != s.data() + s.size() || v < 0)
        fail("expected non-negative integers");
      return v;
    };
    auto const cut = text.rfind(last_sep);
    if (cut == std::string_view::npos) fail("expected at least one chunk and the number of chunks");
    first_n f;
    f.chunks.clear();
    f.num_chunks = number(text.substr(cut + 1));
    std::string_view head = text.substr(0, cut);
    while (true) {
      auto const pos = head.find(sep);
      f.chunks.push_back(number(head.substr(0, pos)));
      if (pos == std::string_view::npos) break;
      head.remove_prefix(pos + 1);
    }
    if (f.num_chunks < 1) fail("the number of chunks must be >= 1");
    for (std::size_t i = 0; i < f.chunks.size(); ++i) {
      if (f.chunks[i] >= f.num_chunks) fail("a chunk index is not below the number of chunks");
      if (std::count(f.chunks.begin(), f.chunks.end(), f.chunks[i]) > 1) fail("a chunk is listed twice");
    }
    return f;
  }
};

}  // namespace rsq::importance
