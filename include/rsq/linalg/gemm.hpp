// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// General matrix product on a backend: C ← α·op(A)·op(B) + β·C with row-major views, in float or double. The
/// building block of nn::linear, of dense rotations and of the model pipeline's residual updates.
///
/// An implementation of algorithm::gemm provides
///   template <class T> static void run(B const&, matrix_view<const T> a, linalg::op, matrix_view<const T> b,
///                                      linalg::op, matrix_view<T> c, linalg::gemm_options const&);
/// (arguments checked; every view in the backend's memory with contiguous rows; T float or double; bf16 applies to
/// float only).

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/gemm.hpp"
#include "rsq/backend/cpu/memory.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/memory.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/precision.hpp"
#include "rsq/core/view.hpp"
#include "rsq/linalg/gemm_options.hpp"

namespace rsq::linalg {

/// C ← α·op(A)·op(B) + β·C on @p be; every view in @p be's memory, rows contiguous (column stride 1), C not
/// overlapping A or B. With β = 0, C's old contents are not read (NaN in C does not propagate).
/// @throws rsq::invalid_argument for shapes that do not match, arrays elsewhere or with other strides
template <backend_tag B, class T>
void gemm(B const& be, matrix_view<const T> a, op op_a, matrix_view<const T> b, op op_b, matrix_view<T> c,
          gemm_options const& opt = {}) {
  auto const rows = [](auto m, op o) { return o == op::none ? m.rows() : m.cols(); };
  auto const cols = [](auto m, op o) { return o == op::none ? m.cols() : m.rows(); };
  RSQ_EXPECTS(cols(a, op_a) == rows(b, op_b) && c.rows() == rows(a, op_a) && c.cols() == cols(b, op_b),
              "gemm: op(A) ", rows(a, op_a), " x ", cols(a, op_a), " times op(B) ", rows(b, op_b), " x ",
              cols(b, op_b), " does not give C ", rsq::detail::shape_string(c));
  // (xtensor gives an axis of extent 1 the stride 0: a single column is contiguous whatever its stride.)
  for (auto const* m : {&a, &b})
    RSQ_EXPECTS(m->stride(1) == 1 || m->cols() <= 1, "gemm: operands need contiguous rows (column stride 1)");
  RSQ_EXPECTS(c.stride(1) == 1 || c.cols() <= 1, "gemm: C needs contiguous rows (column stride 1)");
  if (c.size() == 0) return;
  RSQ_EXPECTS(backend::resident(be, c.data()) && (a.size() == 0 || backend::resident(be, a.data())) &&
                  (b.size() == 0 || backend::resident(be, b.data())),
              "gemm: every operand must be in the backend's memory");
  backend::implementation_t<algorithm::gemm, B>::template run<T>(be, a, op_a, b, op_b, c, opt);
}

/// op(A)·op(B) in a new matrix of @p be's memory (gemm() with α = 1, β = 0).
template <backend_tag B, class T>
[[nodiscard]] backend::matrix<T, B> product(B const& be, matrix_view<const T> a, op op_a, matrix_view<const T> b,
                                            op op_b, gemm_options const& opt = {}) {
  auto c = backend::make_matrix<T>(be, op_a == op::none ? a.rows() : a.cols(), op_b == op::none ? b.cols() : b.rows());
  gemm(be, a, op_a, b, op_b, rsq::view(c), opt);
  return c;
}

}  // namespace rsq::linalg
