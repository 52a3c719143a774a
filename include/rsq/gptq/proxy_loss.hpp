// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The GPTQ proxy loss tr((W − Q)·H·(W − Q)ᵀ): the layer-output error that GPTQ minimises, in float64.

#include <Eigen/Core>

#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/core/checks.hpp"

namespace rsq::gptq {

/// tr((W − Q)·H·(W − Q)ᵀ) in float64 for W, Q (rows, cols) and H (cols, cols); pass the undamped H.
template <viewable<2> WA, viewable<2> QA, viewable<2> HA>
[[nodiscard]] double proxy_loss(WA const& w_, QA const& q_, HA const& h_) {
  auto const w = make_const_view<2>(w_);
  auto const q = make_const_view<2>(q_);
  auto const h = make_const_view<2>(h_);
  RSQ_EXPECTS(w.rows() == q.rows() && w.cols() == q.cols(), "proxy_loss: W ", rsq::detail::shape_string(w),
              " and Q ", rsq::detail::shape_string(q), " differ in shape");
  RSQ_EXPECTS(h.rows() == w.cols() && h.cols() == w.cols(), "proxy_loss: H ", rsq::detail::shape_string(h),
              " does not match W ", rsq::detail::shape_string(w));
  Eigen::MatrixXd const d = cpu::as_eigen(w).template cast<double>() - cpu::as_eigen(q).template cast<double>();
  Eigen::MatrixXd const hd = cpu::as_eigen(h).template cast<double>();
  return (d * hd).cwiseProduct(d).sum();
}

}  // namespace rsq::gptq
