// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// ActDiff (spec §4.4, the reference's `MaxDiffWeighting`): how much the layer changes each token,
/// s_t = ‖x_in,t − x_out,t‖₂, reversed by default (yaml `reverse: true`), so tokens whose residual update is
/// *smallest* are weighted up.

#include <cmath>
#include <concepts>
#include <string_view>

#include "rsq/core/checks.hpp"
#include "rsq/core/tensor.hpp"
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
    auto const& a = ctx.x_in;          // (tokens, hidden)
    auto const& b = ctx.x_out;         // (tokens, hidden)
    rsq::detail::check_finite(a, "x_in");
    rsq::detail::check_finite(b, "x_out");
    auto s = rsq::vector<T>::from_shape({std::size_t(a.rows())});
    for (index_t t = 0; t < a.rows(); ++t) {
      double acc = 0;
      for (index_t c = 0; c < a.cols(); ++c) {
        double const d = double(a(t, c)) - double(b(t, c));
        acc += d * d;
      }
      s(std::size_t(t)) = T(std::sqrt(acc));
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
