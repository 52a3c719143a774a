// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// TokenSim (spec §4.4, the reference's `MaxDistWeighting`): the mean squared distance of a token to all tokens of
/// the sequence (non-causal), s_t = (1/L) Σ_j ‖x_t − x_j‖². Tokens least similar to the rest are weighted up.

#include <cmath>
#include <concepts>
#include <string_view>
#include <vector>

#include "rsq/core/tensor.hpp"
#include "rsq/importance/actnorm.hpp"
#include "rsq/importance/context.hpp"
#include "rsq/importance/normalize.hpp"

namespace rsq::importance {

/// TokenSim: s_t = (1/L) Σ_j ‖x_t − x_j‖², then `normalization` (yaml: reverse = false).
///
/// The reference expands the distances through the fp32 Gram matrix (‖x_t‖² − 2⟨x_t, x_j⟩ + ‖x_j‖²), which costs
/// L²·d and cancels badly for large activations. Here the identical quantity is computed in O(L·d) and double
/// precision as ‖x_t − μ‖² + (1/L) Σ_j ‖x_j − μ‖², with μ the mean token.
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
    index_t const L = x.rows(), d = x.cols();
    std::vector<double> mean(std::size_t(d), 0.0);  // (hidden)
    for (index_t t = 0; t < L; ++t)
      for (index_t c = 0; c < d; ++c) mean[std::size_t(c)] += double(x(t, c));
    for (auto& m : mean) m /= double(L);
    std::vector<double> centred(static_cast<std::size_t>(L));  // ‖x_t − μ‖²
    double spread = 0;                            // (1/L) Σ_j ‖x_j − μ‖²
    for (index_t t = 0; t < L; ++t) {
      double acc = 0;
      for (index_t c = 0; c < d; ++c) {
        double const v = double(x(t, c)) - mean[std::size_t(c)];
        acc += v * v;
      }
      centred[std::size_t(t)] = acc;
      spread += acc;
    }
    spread /= double(L);
    auto s = rsq::vector<T>::from_shape({std::size_t(L)});
    for (index_t t = 0; t < L; ++t) s(std::size_t(t)) = T(centred[std::size_t(t)] + spread);
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
