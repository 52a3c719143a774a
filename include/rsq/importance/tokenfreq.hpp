// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// TokenFreq (spec §4.4, the reference's `TokenFreqWeighting`): how often each token's id occurs in the calibration
/// set, reversed by default (yaml `reverse: true`), so rare tokens are weighted up.
///
/// Alignment: the reference shuffles the layer inputs with `randperm` but not the per-sequence frequency lists, so
/// sequence j is scored with the frequencies of another sequence. That is a bug and is not reproduced: here the
/// scores are always looked up from the ids of the sequence being weighted (ctx.token_ids).

#include <concepts>
#include <string_view>

#include "rsq/core/tensor.hpp"
#include "rsq/importance/context.hpp"
#include "rsq/importance/normalize.hpp"
#include "rsq/importance/token_frequency.hpp"

namespace rsq::importance {

/// TokenFreq: s_t = count of ctx.token_ids[t] in ctx.frequencies (0 for an id never counted), then `normalization`
/// with reverse = true (the yaml default).
struct tokenfreq {
  static constexpr std::string_view name = "tokenfreq";

  normalize_options normalization{.reverse = true};

  [[nodiscard]] constexpr needs requirements() const noexcept {
    return {.token_ids = true, .token_frequency = true};
  }

  /// @returns raw scores (counts, not reversed) // (tokens)
  template <std::floating_point T>
  [[nodiscard]] rsq::vector<T> scores(basic_sequence_context<T> const& ctx) const {
    require(ctx, requirements(), name);
    auto const L = sequence_length(ctx, name);
    auto s = rsq::vector<T>::from_shape({std::size_t(L)});
    for (index_t t = 0; t < L; ++t) {
      auto const id = ctx.token_ids(t);
      RSQ_EXPECTS(id >= 0, name, ": token ids must be >= 0, got ", id, " at index ", t);
      s(std::size_t(t)) = T(ctx.frequencies->count(id));
    }
    return s;
  }

  /// @returns importances r // (tokens)
  template <std::floating_point T>
  [[nodiscard]] rsq::vector<T> weights(basic_sequence_context<T> const& ctx) const {
    validate(normalization, name);
    return normalize(scores(ctx), normalization);
  }
};

}  // namespace rsq::importance
