// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// A linear layer: y = x·Wᵀ + b (or y += x·Wᵀ + b, the residual connection; the bias is optional), W
/// (out_features, in_features) as everywhere in rsq.
///
/// Implemented with algorithm::gemm (<rsq/linalg/gemm.hpp>).

#include "rsq/linalg/elementwise.hpp"
#include "rsq/linalg/gemm.hpp"
#include "rsq/nn/checks.hpp"
#include "rsq/nn/options.hpp"

namespace rsq::nn {

/// y ← x·Wᵀ (+ y with opt.accumulate): @p x (tokens, in), @p w (out, in), @p y (tokens, out), all in @p be's memory
/// with contiguous rows; fp32 or bf16 inputs (opt.precision), fp32 accumulation.
/// @throws rsq::invalid_argument for shapes that do not match, arrays elsewhere
template <backend_tag B>
void linear(B const& be, matrix_view<const float> x, matrix_view<const float> w, matrix_view<float> y,
            linear_options const& opt = {}) {
  detail::expect_operand(be, x, "linear", "x");
  detail::expect_operand(be, w, "linear", "the weight");
  detail::expect_operand(be, y, "linear", "y");
  RSQ_EXPECTS(w.cols() == x.cols(), "linear: the weight ", rsq::detail::shape_string(w), " does not take inputs ",
              rsq::detail::shape_string(x), " (in_features differ)");
  detail::expect_shape(y, x.rows(), w.rows(), "linear", "y");
  if (opt.bias.data()) {
    detail::expect_operand(be, opt.bias, "linear", "the bias");
    RSQ_EXPECTS(opt.bias.extent(0) == w.rows(), "linear: a bias of ", opt.bias.extent(0), " values for ", w.rows(),
                " out_features");
  }
  linalg::gemm(be, x, linalg::op::none, w, linalg::op::transpose, y,
               {.alpha = 1.0, .beta = opt.accumulate ? 1.0 : 0.0, .precision = opt.precision});
  if (opt.bias.data()) linalg::add_to_rows(be, y, opt.bias);
}

}  // namespace rsq::nn
