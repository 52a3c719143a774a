// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// ActNorm (spec §4.4, the reference's `MagnitudeWeighting`): the L2 norm of each token's activation. Tokens with
/// large norms (massive activations, attention sinks) are weighted up. The scores are computed by the CPU code of
/// importance::activation_scores (activation_statistic::norm), the one implementation of the formula.

#include <concepts>
#include <string_view>

#include "rsq/backend/cpu/activation_scores.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/importance/activation_scores.hpp"
#include "rsq/importance/context.hpp"
#include "rsq/importance/normalize.hpp"

namespace rsq::importance {

/// Which activation an activation-based policy reads (the reference's `input_or_output`).
enum class activation_source {
  input,   ///< ctx.x_in, the layer input (yaml default)
  output,  ///< ctx.x_out, the FP layer output
};

namespace detail {

/// The activation a policy reads, after checking that it is present and has features (its values are checked for
/// NaN/Inf where they are read, by rsq::cpu::activation_scores).
template <class T>
[[nodiscard]] matrix_view<const T> activation(basic_sequence_context<T> const& ctx, activation_source src,
                                              std::string_view who) {
  bool const in = src == activation_source::input;
  require(ctx, needs{.x_in = in, .x_out = !in}, who);
  (void)sequence_length(ctx, who);
  auto const x = in ? ctx.x_in : ctx.x_out;
  RSQ_EXPECTS(x.cols() >= 1, who, ": the activations have no features, got ", rsq::detail::shape_string(x));
  return x;
}

/// What the messages of an activation-based policy call its activations.
[[nodiscard]] constexpr activation_names activation_names_of(activation_source src) noexcept {
  return {.x = src == activation_source::input ? "x_in" : "x_out", .x_ref = "x_out"};
}

/// The raw scores @p stat of the one sequence @p x (tokens, hidden) (and @p x_ref for distance), in T.
template <class T>
[[nodiscard]] rsq::vector<T> sequence_scores(activation_statistic stat, matrix_view<const T> x,
                                             matrix_view<const T> x_ref, activation_names const& names) {
  auto s = rsq::vector<T>::from_shape({std::size_t(x.rows())});  // (tokens)
  cpu::activation_scores<T, T>(stat, x, x_ref, x.rows(), matrix_view<T>(s.data(), 1, x.rows()), names);
  return s;
}

}  // namespace detail

/// ActNorm: s_t = ‖x_t‖₂ (computed in double), then `normalization` (yaml: reverse = false).
struct actnorm {
  static constexpr std::string_view name = "actnorm";

  normalize_options normalization{};
  activation_source source = activation_source::input;

  [[nodiscard]] constexpr needs requirements() const noexcept {
    return {.x_in = source == activation_source::input, .x_out = source == activation_source::output};
  }

  /// @returns raw scores // (tokens)
  template <std::floating_point T>
  [[nodiscard]] rsq::vector<T> scores(basic_sequence_context<T> const& ctx) const {
    auto const x = detail::activation(ctx, source, name);  // (tokens, hidden)
    return detail::sequence_scores(activation_statistic::norm, x, {}, detail::activation_names_of(source));
  }

  /// @returns importances r // (tokens)
  template <std::floating_point T>
  [[nodiscard]] rsq::vector<T> weights(basic_sequence_context<T> const& ctx) const {
    validate(normalization, name);
    return normalize(scores(ctx), normalization);
  }
};

}  // namespace rsq::importance
