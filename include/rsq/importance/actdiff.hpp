// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// ActDiff (spec §4.4, the reference's `MaxDiffWeighting`): how much the layer changes each token,
/// s_t = ‖x_in,t − x_out,t‖₂, reversed by default (yaml `reverse: true`), so tokens whose residual update is
/// *smallest* are weighted up. The scores are computed by the CPU code of importance::activation_scores
/// (activation_statistic::distance), the one implementation of the formula.

#include <concepts>
#include <string_view>

#include "rsq/core/tensor.hpp"
#include "rsq/importance/activation_scores.hpp"
#include "rsq/importance/actnorm.hpp"
#include "rsq/importance/context.hpp"
#include "rsq/importance/normalize.hpp"

namespace rsq::importance {

/// ActDiff: s_t = ‖x_in,t − x_out,t‖₂ (double), then `normalization` with reverse = true (the yaml default).
struct actdiff {
  static constexpr std::string_view name = "actdiff";

  normalize_options normalization{.reverse = true};

  [[nodiscard]] constexpr needs requirements() const noexcept { return {.x_in = true, .x_out = true}; }

  /// @returns raw scores (not reversed) // (tokens)
  template <std::floating_point T>
  [[nodiscard]] rsq::vector<T> scores(basic_sequence_context<T> const& ctx) const {
    require(ctx, requirements(), name);
    (void)sequence_length(ctx, name);  // also checks that x_in and x_out have the same shape
    // x_in and x_out (tokens, hidden), checked for NaN/Inf in that order
    return detail::sequence_scores(activation_statistic::distance, ctx.x_in, ctx.x_out,
                                   {.x = "x_in", .x_ref = "x_out"});
  }

  /// @returns importances r // (tokens)
  template <std::floating_point T>
  [[nodiscard]] rsq::vector<T> weights(basic_sequence_context<T> const& ctx) const {
    validate(normalization, name);
    return normalize(scores(ctx), normalization);
  }
};

}  // namespace rsq::importance
