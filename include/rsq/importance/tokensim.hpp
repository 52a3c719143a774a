// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// TokenSim (spec §4.4, the reference's `MaxDistWeighting`): the mean squared distance of a token to all tokens of
/// the sequence (non-causal), s_t = (1/L) Σ_j ‖x_t − x_j‖². Tokens least similar to the rest are weighted up.

#include <concepts>
#include <string_view>

#include "rsq/core/tensor.hpp"
#include "rsq/importance/activation_scores.hpp"
#include "rsq/importance/actnorm.hpp"
#include "rsq/importance/context.hpp"
#include "rsq/importance/normalize.hpp"

namespace rsq::importance {

/// TokenSim: s_t = (1/L) Σ_j ‖x_t − x_j‖², then `normalization` (yaml: reverse = false).
///
/// The reference expands the distances through the fp32 Gram matrix (‖x_t‖² − 2⟨x_t, x_j⟩ + ‖x_j‖²), which costs
/// L²·d and cancels badly for large activations. Here the identical quantity is computed in O(L·d) and double
/// precision as ‖x_t − μ‖² + (1/L) Σ_j ‖x_j − μ‖², with μ the mean token, by the CPU code of
/// importance::activation_scores (activation_statistic::spread), the one implementation of the formula.
struct tokensim {
  static constexpr std::string_view name = "tokensim";

  normalize_options normalization{};
  activation_source source = activation_source::input;

  [[nodiscard]] constexpr needs requirements() const noexcept {
    return {.x_in = source == activation_source::input, .x_out = source == activation_source::output};
  }

  /// @returns raw scores // (tokens)
  template <std::floating_point T>
  [[nodiscard]] rsq::vector<T> scores(basic_sequence_context<T> const& ctx) const {
    auto const x = detail::activation(ctx, source, name);  // (tokens, hidden)
    return detail::sequence_scores(activation_statistic::spread, x, {}, detail::activation_names_of(source));
  }

  /// @returns importances r // (tokens)
  template <std::floating_point T>
  [[nodiscard]] rsq::vector<T> weights(basic_sequence_context<T> const& ctx) const {
    validate(normalization, name);
    return normalize(scores(ctx), normalization);
  }
};

}  // namespace rsq::importance
