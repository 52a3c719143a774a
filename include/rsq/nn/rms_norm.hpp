// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// RMSNorm, the normalisation of Llama: y = g ⊙ x / √(mean(x²) + ε), row by row.
///
/// An implementation of algorithm::rms_norm provides
///   static void run(B const&, matrix_view<const float> x, vector_view<const float> g, float eps,
///                   matrix_view<float> y);   // arguments checked; y may be x

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/nn.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/nn/checks.hpp"

namespace rsq::nn {

/// y ← g ⊙ x / √(mean(x²) + eps) for every row of @p x (tokens, features), on @p be; @p y may be @p x.
/// Every array is in @p be's memory with contiguous rows.
/// @throws rsq::invalid_argument for shapes that do not match, eps not in (0, 1), arrays elsewhere
template <backend_tag B>
void rms_norm(B const& be, matrix_view<const float> x, vector_view<const float> gains, float eps, matrix_view<float> y) {
  detail::expect_operand(be, x, "rms_norm", "x");
  detail::expect_operand(be, gains, "rms_norm", "gains");
  detail::expect_operand(be, y, "rms_norm", "y");
  RSQ_EXPECTS(gains.extent(0) == x.cols(), "rms_norm: ", gains.extent(0), " gains for rows of ", x.cols(), " features");
  detail::expect_shape(y, x.rows(), x.cols(), "rms_norm", "y");
  RSQ_EXPECTS(eps > 0.f && eps < 1.f, "rms_norm: eps must be in (0, 1), got ", eps);
  backend::implementation_t<algorithm::rms_norm, B>::run(be, x, gains, eps, y);
}

}  // namespace rsq::nn
