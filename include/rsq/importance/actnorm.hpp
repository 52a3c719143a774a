// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// ActNorm (spec §4.4, the reference's `MagnitudeWeighting`): the L2 norm of each token's activation. Tokens with
/// large norms (massive activations, attention sinks) are weighted up.

#include <cmath>
#include <concepts>
#include <string_view>

#include "rsq/core/checks.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/importance/context.hpp"
#include "rsq/importance/normalize.hpp"

namespace rsq::importance {

/// Which activation an activation-based policy reads (the reference's `input_or_output`).
enum class activation_source {
  input,   ///< ctx.x_in, the layer input (yaml default)
  output,  ///< ctx.x_out, the FP layer output
};

namespace detail {

/// The activation a policy reads, after checking that it is present and finite.
template <class T>
[[nodiscard]] matrix_view<const T> activation(basic_sequence_context<T> const& ctx, activation_source src,
                                              std::string_view who) {
  bool const in = src == activation_source::input;
  require(ctx, needs{.x_in = in, .x_out = !in}, who);
  (void)sequence_length(ctx, who);
  auto const x = in ? ctx.x_in : ctx.x_out;
  RSQ_EXPECTS(x.cols() >= 1, who, ": the activations have no features, got ", rsq::detail::shape_string(x));
  rsq::detail::check_finite(x, in ? "x_in" : "x_out");
  return x;
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
    auto s = rsq::vector<T>::from_shape({std::size_t(x.rows())});
    for (index_t t = 0; t < x.rows(); ++t) {
      double acc = 0;
      for (index_t c = 0; c < x.cols(); ++c) acc += double(x(t, c)) * double(x(t, c));
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
