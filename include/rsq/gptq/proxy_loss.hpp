// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The GPTQ proxy loss tr((W − Q)·H·(W − Q)ᵀ): the layer-output error that GPTQ minimises, in float64, on any backend.

#include "rsq/backend/memory.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/linalg/elementwise.hpp"
#include "rsq/linalg/gemm.hpp"

namespace rsq::gptq {

/// tr((W − Q)·H·(W − Q)ᵀ) in float64 for W, Q (rows, cols) and H (cols, cols), all in @p be's memory (any strides);
/// pass the undamped H. Computed as Σ (E·H) ⊙ E with E = W − Q, summed in an order that does not depend on the
/// number of threads.
template <backend_tag B, class T>
[[nodiscard]] double proxy_loss(B const& be, matrix_view<const T> w, matrix_view<const T> q, matrix_view<const T> h) {
  RSQ_EXPECTS(w.rows() == q.rows() && w.cols() == q.cols(), "proxy_loss: W ", rsq::detail::shape_string(w),
              " and Q ", rsq::detail::shape_string(q), " differ in shape");
  RSQ_EXPECTS(h.rows() == w.cols() && h.cols() == w.cols(), "proxy_loss: H ", rsq::detail::shape_string(h),
              " does not match W ", rsq::detail::shape_string(w));
  auto e = backend::make_matrix<double>(be, w.rows(), w.cols());   // W − Q
  auto qd = backend::make_matrix<double>(be, w.rows(), w.cols());  // Q
  auto hd = backend::make_matrix<double>(be, h.rows(), h.cols());  // H
  linalg::convert(be, w, rsq::view(e));
  linalg::convert(be, q, rsq::view(qd));
  linalg::convert(be, h, rsq::view(hd));
  linalg::axpy(be, -1.0, matrix_view<const double>(rsq::view(qd)), rsq::view(e));
  auto& eh = qd;  // E·H, into Q's storage (Q is no longer needed)
  linalg::gemm(be, matrix_view<const double>(rsq::view(e)), linalg::op::none, matrix_view<const double>(rsq::view(hd)),
               linalg::op::none, rsq::view(eh));
  return linalg::dot(be, matrix_view<const double>(rsq::view(eh)), matrix_view<const double>(rsq::view(e)));
}

/// proxy_loss() of host arrays (any viewable: Eigen, xtensor, views) on the CPU backend.
template <viewable<2> WA, viewable<2> QA, viewable<2> HA>
[[nodiscard]] double proxy_loss(WA const& w, QA const& q, HA const& h) {
  auto const wv = make_const_view<2>(w);
  using T = typename decltype(wv)::value_type;
  return proxy_loss<backend::cpu_eigen, T>(backend::cpu_eigen{}, wv, matrix_view<const T>(make_const_view<2>(q)),
                                           matrix_view<const T>(make_const_view<2>(h)));
}

}  // namespace rsq::gptq
