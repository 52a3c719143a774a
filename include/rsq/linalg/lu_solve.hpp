// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// A square linear system A·Y = B solved in place by LU with partial pivoting, in float64, on a backend: the Cayley
/// retraction of rotation/cayley_sgd.hpp, where A = I − (α/2)·W with W skew is never singular (its eigenvalues are
/// 1 − iαλ/2).
///
/// An implementation of algorithm::lu_solve provides
///   static void run(B const&, matrix_view<double> a, matrix_view<double> b);
/// (arguments checked; both row-major in the backend's memory with contiguous rows; A overwritten by its factors,
/// B by the solution Y). The CPU eliminates in a fixed order (the same bits for any thread count); CUDA calls
/// cuSOLVER's getrf/getrs (the same bits from run to run).

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/lu_solve.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/memory.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/view.hpp"

namespace rsq::linalg {

/// Solves @p a · Y = @p b for square @p a (n, n), @p b (n, m), in place: @p b becomes Y, @p a its LU factors.
/// @throws rsq::invalid_argument for shapes that do not match, arrays outside the backend's memory or with
///         non-contiguous rows; a singular A gives non-finite values in Y (the caller checks: the Cayley A is never
///         singular)
template <backend_tag B>
void lu_solve(B const& be, matrix_view<double> a, matrix_view<double> b) {
  RSQ_EXPECTS(a.rows() == a.cols() && a.rows() > 0, "lu_solve: A must be square and non-empty, got ",
              rsq::detail::shape_string(a));
  RSQ_EXPECTS(b.rows() == a.rows(), "lu_solve: B ", rsq::detail::shape_string(b), " does not have A's ", a.rows(),
              " rows");
  for (auto m : {a, b}) {
    RSQ_EXPECTS(m.stride(1) == 1 || m.cols() == 1, "lu_solve: rows must be contiguous");
    RSQ_EXPECTS(backend::resident(be, m.data()), "lu_solve: both arrays must be in the backend's memory");
  }
  if (b.cols() == 0) return;
  backend::implementation_t<algorithm::lu_solve, B>::run(be, a, b);
}

}  // namespace rsq::linalg
