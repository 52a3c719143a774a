// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Calibration and evaluation data of the end-to-end pipeline (spec §8.1, §8.2, §9.1), for a text of "stories":
///  - a story is a paragraph of the text: the text is split at every blank line ("\n\n"; an empty piece after the
///    last blank line is dropped). For `tinystories_val.txt` this gives 4300 paragraph-level stories (story 0 is 85
///    tokens with BOS), which is the meaning of story indices everywhere in rsq (and of docs/model.md's windowing);
///  - a range of stories `a:b` (stories a, a+1, ..., b−1) is turned into one token stream: each story encoded with
///    BOS (and the tokenizer's dummy prefix, no EOS), concatenated;
///  - calibration: `nsamples` windows of `seqlen` tokens at seeded random starts of that stream (§8.1), optionally
///    expanded by cyclic shifts (§8.2);
///  - evaluation: the stream cut into consecutive non-overlapping windows of `seqlen` tokens, the tail dropped
///    (§9.1); each window is one sequence whose positions restart at 0.

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/random.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/model/binary_io.hpp"
#include "rsq/model/tokenizer.hpp"

namespace rsq::model {

/// The stories of @p text: the pieces between blank lines ("\n\n"). An empty piece after the last blank line is
/// dropped; other pieces are kept as they are (so indices match a plain split of the file).
[[nodiscard]] inline std::vector<std::string> split_stories(std::string_view text) {
  std::vector<std::string> out;
  std::size_t p = 0;
  for (;;) {
    std::size_t const q = text.find("\n\n", p);
    if (q == std::string_view::npos) {
      if (p < text.size()) out.emplace_back(text.substr(p));
      break;
    }
    out.emplace_back(text.substr(p, q - p));
    p = q + 2;
  }
  return out;
}

/// The stories of the text file at @p path (see split_stories). @throws rsq::io_error if it cannot be read or has
/// no story.
[[nodiscard]] inline std::vector<std::string> load_stories(std::filesystem::path const& path) {
  auto const bytes = detail::read_file(path);
  std::string_view const text(reinterpret_cast<char const*>(bytes.data()), bytes.size());
  auto stories = split_stories(text);
  if (stories.empty()) rsq::detail::throw_io_error(path.string(), ": the text has no stories");
  return stories;
}

/// Stories begin, begin+1, ..., end−1.
struct story_range {
  index_t begin = 0;
  index_t end = 0;

  [[nodiscard]] index_t size() const noexcept { return end - begin; }
  [[nodiscard]] bool overlaps(story_range const& o) const noexcept { return begin < o.end && o.begin < end; }
  friend bool operator==(story_range const&, story_range const&) = default;
};

/// Parses "a:b" (0 ≤ a < b, decimal) into a story_range. @p what names the option in messages.
/// @throws rsq::invalid_argument for anything else ("5", "a:b", "3:3", "5:2", "-1:4", "1:2:3").
[[nodiscard]] inline story_range parse_story_range(std::string_view spec, std::string_view what = "story range") {
  auto const colon = spec.find(':');
  RSQ_EXPECTS(colon != std::string_view::npos, what, ": expected begin:end (e.g. 0:500), got \"", spec, "\"");
  auto number = [&](std::string_view s) -> index_t {
    std::int64_t v = -1;
    auto const [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    RSQ_EXPECTS(!s.empty() && ec == std::errc() && ptr == s.data() + s.size() && v >= 0, what,
                ": begin and end must be non-negative integers, got \"", spec, "\"");
    return index_t(v);
  };
  story_range r{number(spec.substr(0, colon)), number(spec.substr(colon + 1))};
  RSQ_EXPECTS(r.begin < r.end, what, ": begin must be below end, got \"", spec, "\"");
  return r;
}

/// Throws rsq::invalid_argument unless @p r is a non-empty range within the @p count stories.
inline void validate(story_range const& r, index_t count, std::string_view what = "story range") {
  RSQ_EXPECTS(r.begin >= 0 && r.begin < r.end, what, ": ", r.begin, ":", r.end, " is empty or negative");
  RSQ_EXPECTS(r.end <= count, what, ": ", r.begin, ":", r.end, " goes past the ", count, " stories of the text");
}

/// The token stream of stories @p r: each story encoded with BOS (no EOS), concatenated.
/// @throws rsq::invalid_argument if @p r is not within @p stories.
[[nodiscard]] inline std::vector<std::int32_t> story_tokens(tokenizer const& tok, std::span<const std::string> stories,
                                                             story_range const& r) {
  validate(r, index_t(stories.size()));
  std::vector<std::int32_t> stream;
  for (index_t i = r.begin; i < r.end; ++i) {
    auto const ids = tok.encode(stories[std::size_t(i)], {.bos = true, .eos = false});
    stream.insert(stream.end(), ids.begin(), ids.end());
  }
  return stream;
}

/// The SplitMix64 seed of the calibration window starts for a pipeline seed: `seed xor calibration_seed_salt`, so
/// that the window starts and the rotation signs (the stream of `seed` itself) are different streams.
inline constexpr std::uint64_t calibration_seed_salt = 0x5253512D43414C49ULL;  // "RSQ-CALI"

/// @p nsamples windows of @p seqlen tokens of @p stream at random starts (spec §8.1): window k starts at
/// `floor(u_k · (T − seqlen))` with T = stream length and `u_k = random::uniform_of(splitmix64::at(seed ^
/// calibration_seed_salt, k))` in [0, 1), i.e. uniformly in [0, T − seqlen − 1] as the reference's
/// `randint(0, T − L − 1)`. Windows may overlap and need not start at a BOS.
/// @returns windows // (nsamples, seqlen)
/// @throws rsq::invalid_argument for seqlen < 2, nsamples < 1 or a stream shorter than seqlen + 1 tokens.
[[nodiscard]] inline rsq::matrix<std::int32_t> sample_windows(std::span<const std::int32_t> stream, index_t seqlen,
                                                              index_t nsamples, std::uint64_t seed) {
  RSQ_EXPECTS(seqlen >= 2, "sample_windows: seqlen must be at least 2, got ", seqlen);
  RSQ_EXPECTS(nsamples >= 1, "sample_windows: nsamples must be at least 1, got ", nsamples);
  index_t const T = index_t(stream.size());
  RSQ_EXPECTS(T >= seqlen + 1, "sample_windows: the calibration text has ", T, " tokens, windows of ", seqlen,
              " need at least ", seqlen + 1, " (use more stories or a shorter seqlen)");
  auto out = rsq::make_matrix<std::int32_t>(nsamples, seqlen);  // (nsamples, seqlen)
  std::uint64_t const s = seed ^ calibration_seed_salt;
  for (index_t k = 0; k < nsamples; ++k) {
    double const u = random::uniform_of(random::splitmix64::at(s, std::uint64_t(k)));
    index_t const start = std::min(index_t(u * double(T - seqlen)), T - seqlen - 1);
    std::copy_n(stream.data() + start, seqlen, &out(k, 0));
  }
  return out;
}

/// Dataset expansion by cyclic shifts (spec §8.2): every window x (length L) becomes @p factor windows; copy f
/// (f = 0 ... F−1) is x rolled right by f·⌊L/F⌋, `x_f[t] = x[(t − f·⌊L/F⌋) mod L]`, and copy 0 is x itself. The copies
/// of window s are rows s·F ... s·F + F − 1.
/// @returns windows // (sequences · factor, L)
/// @throws rsq::invalid_argument for an empty input or a factor outside [1, L].
[[nodiscard]] inline rsq::matrix<std::int32_t> expand_cyclic(matrix_view<const std::int32_t> windows, index_t factor) {
  index_t const S = windows.rows(), L = windows.cols();
  RSQ_EXPECTS(S > 0 && L > 0, "expand_cyclic: the windows are empty ", rsq::detail::shape_string(windows));
  RSQ_EXPECTS(factor >= 1 && factor <= L, "expand_cyclic: the expansion factor must be in [1, ", L,
              "] (the window length), got ", factor);
  auto out = rsq::make_matrix<std::int32_t>(S * factor, L);  // (sequences · factor, L)
  index_t const step = L / factor;
  for (index_t s = 0; s < S; ++s)
    for (index_t f = 0; f < factor; ++f) {
      index_t const shift = f * step;
      for (index_t t = 0; t < L; ++t) out(s * factor + f, t) = windows(s, ((t - shift) % L + L) % L);
    }
  return out;
}

/// The stream cut into consecutive, non-overlapping windows of @p seqlen tokens; the tail that does not fill a
/// window is dropped (spec §9.1).
/// @returns windows // (⌊T / seqlen⌋, seqlen)
/// @throws rsq::invalid_argument for seqlen < 2 or a stream shorter than one window.
[[nodiscard]] inline rsq::matrix<std::int32_t> consecutive_windows(std::span<const std::int32_t> stream,
                                                                   index_t seqlen) {
  RSQ_EXPECTS(seqlen >= 2, "consecutive_windows: seqlen must be at least 2, got ", seqlen);
  index_t const n = index_t(stream.size()) / seqlen;
  RSQ_EXPECTS(n >= 1, "consecutive_windows: the text has ", stream.size(), " tokens, fewer than one window of ",
              seqlen);
  auto out = rsq::make_matrix<std::int32_t>(n, seqlen);  // (windows, seqlen)
  std::copy_n(stream.data(), n * seqlen, out.data());
  return out;
}

}  // namespace rsq::model
