// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Dense linear algebra of the CPU backend, built on Eigen's (OpenMP-parallel) GEMM: Cholesky, triangular inverse,
/// the upper Cholesky factor of H^-1 that GPTQ needs (spec §6 step 6), and a lower-triangle SYRK for Hessians (§5).
///
/// Eigen 3.4's LLT and `rankUpdate` run on one thread; these routines are recursive (Gustavson-style) so that
/// nearly all flops are matrix products, and each step is split over `Eigen::nbThreads()` OpenMP threads along a
/// dimension whose parts are independent. Only small diagonal leaves (64..128 wide) use Eigen's other kernels.
///
/// All matrices are column-major `Eigen::Ref`s (plain matrices, maps and blocks bind without a copy). Square
/// matrices work in place; only the lower triangle is read.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/view.hpp"

namespace rsq::cpu {

/// A writable column-major matrix argument (matrix, map or block with unit inner stride), without copy.
template <class T>
using col_ref = Eigen::Ref<eigen_col_matrix<T>>;

namespace detail::linalg {

// How the work is spread over threads. Eigen's own parallel GEMM synchronises its threads with spin-waits at every
// depth step of a product; on 2 cores shared with other processes that costs whole scheduler time slices, and the
// recursive algorithms below issue many products. So the parallelism here is one level up: every step splits its
// *independent* dimension (rows of a right-hand side, column panels of a SYRK) into one contiguous part per thread,
// and each thread runs the sequential recursion on its part with single-threaded Eigen kernels (Eigen runs a
// product sequentially inside a parallel region). One barrier per step, no synchronisation inside a product.

// Leaf sizes of the recursions (docs/linalg.md has the measurements): below them Eigen's single-threaded kernels
// beat further splitting.
inline constexpr index_t cholesky_leaf = 64;  // unblocked left-looking Cholesky (a GEMV per column)
inline constexpr index_t trsm_leaf = 64;      // Eigen's blocked triangular solve
inline constexpr index_t inverse_leaf = 64;   // Eigen's triangular solve against the identity
inline constexpr index_t syrk_leaf = 128;     // Eigen's triangular-destination product (no wasted upper half)
inline constexpr index_t min_rows_per_thread = 64;  // smaller parts are not worth a parallel region

/// Rounds up to a multiple of 16, so that split points keep column segments aligned to SIMD packets.
[[nodiscard]] inline constexpr index_t round16(index_t i) { return (i + 15) / 16 * 16; }

/// Where to split a dimension of n > 1: about half, rounded to a multiple of 16 when that leaves both parts
/// non-empty.
[[nodiscard]] inline index_t split(index_t n) {
  index_t const h = round16(n / 2);
  return h < n ? h : n / 2;
}

/// Threads that a parallel loop started here may use: none extra inside somebody else's parallel region.
[[nodiscard]] inline int available_threads() {
#if defined(_OPENMP)
  if (omp_in_parallel()) return 1;
#endif
  return std::max(1, Eigen::nbThreads());
}

/// Runs f(t, parts) for t in [0, parts) on `parts` threads (one part each); parts == 1 runs f(0, 1) here.
template <class F>
void run_parts(int parts, F const& f) {
  if (parts <= 1) {
    f(0, 1);
    return;
  }
#if defined(_OPENMP)
#pragma omp parallel for num_threads(parts) schedule(static, 1)
  for (int t = 0; t < parts; ++t) f(t, parts);
#else
  for (int t = 0; t < parts; ++t) f(t, parts);
#endif
}

/// Calls f(begin, end) on one contiguous, 16-aligned part of [0, count) per available thread (parts of at least
/// min_rows_per_thread).
template <class F>
void parallel_ranges(index_t count, F const& f) {
  int const parts = int(std::clamp<index_t>(count / min_rows_per_thread, 1, available_threads()));
  run_parts(parts, [&](int t, int p) {
    index_t const b = t == 0 ? 0 : std::min(count, round16(count * t / p));
    index_t const e = t + 1 == p ? count : std::min(count, round16(count * (t + 1) / p));
    if (e > b) f(b, e);
  });
}

// ---- triangular solves (TRSM): sequential recursions (two half-size solves around one GEMM) and parallel drivers

/// B <- B L^{-T}: solves X L^T = B for L (k x k) lower, B (m x k). The Cholesky panel step.
template <class T>
void trsm_right_lower_trans_seq(Eigen::Ref<const eigen_col_matrix<T>> l, col_ref<T> b) {
  index_t const k = l.rows();
  if (k <= trsm_leaf) {
    l.transpose().template triangularView<Eigen::Upper>().template solveInPlace<Eigen::OnTheRight>(b);
    return;
  }
  index_t const k1 = split(k), k2 = k - k1;
  // X L^T = [X1 L11^T, X1 L21^T + X2 L22^T]
  trsm_right_lower_trans_seq<T>(l.topLeftCorner(k1, k1), b.leftCols(k1));
  b.rightCols(k2).noalias() -= b.leftCols(k1) * l.bottomLeftCorner(k2, k1).transpose();
  trsm_right_lower_trans_seq<T>(l.bottomRightCorner(k2, k2), b.rightCols(k2));
}

/// B <- B L^{-1}: solves X L = B for L (k x k) lower, B (m x k).
template <class T>
void trsm_right_lower_seq(Eigen::Ref<const eigen_col_matrix<T>> l, col_ref<T> b) {
  index_t const k = l.rows();
  if (k <= trsm_leaf) {
    l.template triangularView<Eigen::Lower>().template solveInPlace<Eigen::OnTheRight>(b);
    return;
  }
  index_t const k1 = split(k), k2 = k - k1;
  // X L = [X1 L11 + X2 L21, X2 L22]: the right half first.
  trsm_right_lower_seq<T>(l.bottomRightCorner(k2, k2), b.rightCols(k2));
  b.leftCols(k1).noalias() -= b.rightCols(k2) * l.bottomLeftCorner(k2, k1);
  trsm_right_lower_seq<T>(l.topLeftCorner(k1, k1), b.leftCols(k1));
}

/// B <- L^{-1} B: solves L X = B for L (k x k) lower, B (k x m).
template <class T>
void trsm_left_lower_seq(Eigen::Ref<const eigen_col_matrix<T>> l, col_ref<T> b) {
  index_t const k = l.rows();
  if (k <= trsm_leaf) {
    l.template triangularView<Eigen::Lower>().solveInPlace(b);
    return;
  }
  index_t const k1 = split(k), k2 = k - k1;
  // L X = [L11 X1; L21 X1 + L22 X2]
  trsm_left_lower_seq<T>(l.topLeftCorner(k1, k1), b.topRows(k1));
  b.bottomRows(k2).noalias() -= l.bottomLeftCorner(k2, k1) * b.topRows(k1);
  trsm_left_lower_seq<T>(l.bottomRightCorner(k2, k2), b.bottomRows(k2));
}

/// Parallel drivers: the rows (right solves) or columns (left solve) of B are independent.
template <class T>
void trsm_right_lower_trans(Eigen::Ref<const eigen_col_matrix<T>> l, col_ref<T> b) {
  parallel_ranges(b.rows(), [&](index_t r0, index_t r1) { trsm_right_lower_trans_seq<T>(l, b.middleRows(r0, r1 - r0)); });
}
template <class T>
void trsm_right_lower(Eigen::Ref<const eigen_col_matrix<T>> l, col_ref<T> b) {
  parallel_ranges(b.rows(), [&](index_t r0, index_t r1) { trsm_right_lower_seq<T>(l, b.middleRows(r0, r1 - r0)); });
}
template <class T>
void trsm_left_lower(Eigen::Ref<const eigen_col_matrix<T>> l, col_ref<T> b) {
  parallel_ranges(b.cols(), [&](index_t c0, index_t c1) { trsm_left_lower_seq<T>(l, b.middleCols(c0, c1 - c0)); });
}

// ---- SYRK ----------------------------------------------------------------------------------------------------------

/// Read-only view of the SYRK factor A (n x k) in its own storage order (Plain: a column- or row-major matrix
/// type); blocks of it bind without a copy, and the recursion instantiates only this one type.
template <class Plain>
using factor_ref = Eigen::Ref<const Plain, 0, Eigen::OuterStride<>>;

/// C_lower += alpha A A^T, sequential recursion: C11 (rec), C21 += alpha A2 A1^T (GEMM), C22 (rec).
/// C's strict upper triangle is not touched.
template <class T, class Plain>
void syrk_lower_seq(col_ref<T> c, factor_ref<Plain> const& a, T alpha) {
  index_t const n = c.rows();
  if (n <= syrk_leaf) {
    // Eigen's triangular-destination product computes only the lower half.
    c.template triangularView<Eigen::Lower>() += (alpha * a) * a.transpose();
    return;
  }
  index_t const n1 = split(n), n2 = n - n1;
  syrk_lower_seq<T, Plain>(c.topLeftCorner(n1, n1), a.topRows(n1), alpha);
  c.bottomLeftCorner(n2, n1).noalias() += (alpha * a.bottomRows(n2)) * a.topRows(n1).transpose();
  syrk_lower_seq<T, Plain>(c.bottomRightCorner(n2, n2), a.bottomRows(n2), alpha);
}

/// Parallel SYRK: thread t owns the column panel [j_t, j_{t+1}) of C's lower triangle (its diagonal triangle by the
/// sequential recursion, the rectangle below it by one GEMM); the panel borders give every thread the same area.
template <class T, class Plain>
void syrk_lower(col_ref<T> c, factor_ref<Plain> const& a, T alpha) {
  index_t const n = c.rows();
  int const parts = int(std::clamp<index_t>(n / min_rows_per_thread, 1, available_threads()));
  run_parts(parts, [&](int t, int p) {
    // Area of columns [0, j) of the lower triangle is (n^2 - (n - j)^2) / 2: a fraction t/p of it ends at
    // j = n (1 - sqrt(1 - t/p)).
    auto border = [&](int i) {
      if (i == 0) return index_t(0);
      if (i == p) return n;
      return std::min(n, round16(index_t(double(n) * (1.0 - std::sqrt(1.0 - double(i) / p)))));
    };
    index_t const j0 = border(t), j1 = border(t + 1);
    if (j1 <= j0) return;
    syrk_lower_seq<T, Plain>(c.block(j0, j0, j1 - j0, j1 - j0), a.middleRows(j0, j1 - j0), alpha);
    if (j1 < n)
      c.block(j1, j0, n - j1, j1 - j0).noalias() +=
          (alpha * a.middleRows(j1, n - j1)) * a.middleRows(j0, j1 - j0).transpose();
  });
}

// ---- Cholesky ----------------------------------------------------------------------------------------------------

/// Unblocked left-looking Cholesky of a small matrix (lower triangle); -1 or the first bad pivot.
template <class T>
index_t cholesky_unblocked(col_ref<T> a) {
  index_t const n = a.rows();
  for (index_t j = 0; j < n; ++j) {
    index_t const m = n - j;
    if (j > 0) a.col(j).tail(m).noalias() -= a.bottomLeftCorner(m, j) * a.row(j).head(j).transpose();
    T const d = a(j, j);
    // `!(d > 0)` also catches NaN. Any NaN/Inf in row j of the lower triangle ends up in this pivot.
    if (!(d > T(0)) || !std::isfinite(d)) return j;
    T const r = std::sqrt(d);
    a(j, j) = r;
    a.col(j).tail(m - 1) /= r;
  }
  return -1;
}

/// Recursive Cholesky: chol(A11), panel A21 <- A21 L11^{-T} (TRSM), A22 -= A21 A21^T (SYRK), chol(A22).
/// Pivots are taken in order, so the first failing one is reported. Leaves the strict upper triangle unspecified.
template <class T>
index_t cholesky_recursive(col_ref<T> a) {
  index_t const n = a.rows();
  if (n <= cholesky_leaf) return cholesky_unblocked<T>(a);
  index_t const n1 = split(n), n2 = n - n1;
  if (index_t const info = cholesky_recursive<T>(a.topLeftCorner(n1, n1)); info >= 0) return info;
  trsm_right_lower_trans<T>(a.topLeftCorner(n1, n1), a.bottomLeftCorner(n2, n1));
  syrk_lower<T, eigen_col_matrix<T>>(a.bottomRightCorner(n2, n2), a.bottomLeftCorner(n2, n1), T(-1));
  if (index_t const info = cholesky_recursive<T>(a.bottomRightCorner(n2, n2)); info >= 0) return n1 + info;
  return -1;
}

// ---- triangular inverse ------------------------------------------------------------------------------------------

/// Recursive in-place inverse of a lower-triangular matrix (lower triangle only):
/// inv([L11 0; L21 L22]) = [L11^-1 0; -L22^-1 L21 L11^-1, L22^-1]. The two solves are GEMM-rich TRSMs, and the
/// two half-size inverses are independent (one per thread).
template <class T>
void invert_lower_recursive(col_ref<T> l) {
  index_t const n = l.rows();
  if (n <= inverse_leaf) {
    eigen_col_matrix<T> inv = eigen_col_matrix<T>::Identity(n, n);
    l.template triangularView<Eigen::Lower>().solveInPlace(inv);
    l.template triangularView<Eigen::Lower>() = inv;
    return;
  }
  index_t const n1 = split(n), n2 = n - n1;
  trsm_right_lower<T>(l.topLeftCorner(n1, n1), l.bottomLeftCorner(n2, n1));     // L21 L11^-1
  trsm_left_lower<T>(l.bottomRightCorner(n2, n2), l.bottomLeftCorner(n2, n1));  // L22^-1 (L21 L11^-1)
  l.bottomLeftCorner(n2, n1) *= T(-1);
  int const parts = available_threads() > 1 && n >= 2 * min_rows_per_thread ? 2 : 1;
  run_parts(parts, [&](int t, int p) {
    if (t == 0 || p == 1) invert_lower_recursive<T>(l.topLeftCorner(n1, n1));
    if (t == 1 || p == 1) invert_lower_recursive<T>(l.bottomRightCorner(n2, n2));
  });
}

template <class T>
void expect_square(col_ref<T> const& a, char const* fn, char const* name) {
  RSQ_EXPECTS(a.rows() == a.cols(), fn, ": ", name, " must be square, got (", a.rows(), " x ", a.cols(), ")");
  RSQ_EXPECTS(a.rows() > 0, fn, ": ", name, " is empty (0 x 0)");
}

}  // namespace detail::linalg

/// Copies the strict lower triangle of the square matrix @p c onto its strict upper triangle (c becomes symmetric).
/// @throws rsq::invalid_argument if c is not square or is empty
template <class T>
void symmetrize_from_lower(col_ref<T> c) {
  detail::linalg::expect_square<T>(c, "symmetrize_from_lower", "c");
  // Tiled transpose copy: a 64 x 64 tile and its mirror both stay in cache.
  constexpr index_t tile = 64;
  index_t const n = c.rows();
  for (index_t j0 = 0; j0 < n; j0 += tile) {
    index_t const jb = std::min(tile, n - j0);
    for (index_t i0 = 0; i0 < j0; i0 += tile) {
      index_t const ib = std::min(tile, j0 - i0);
      c.block(i0, j0, ib, jb) = c.block(j0, i0, jb, ib).transpose();
    }
    for (index_t j = j0; j < j0 + jb; ++j)
      for (index_t i = j0; i < j; ++i) c(i, j) = c(j, i);
  }
}
/// Overload that deduces T, for plain column-major matrices (eigen_col_matrix<T>).
template <class T>
void symmetrize_from_lower(Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& c) {
  symmetrize_from_lower<T>(col_ref<T>(c));
}

/// In-place Cholesky A = L L^T of a symmetric positive-definite n x n matrix.
///
/// Reads only the lower triangle of @p a; on success leaves L in the lower triangle and zeros above it.
/// @tparam T float or double
/// @returns -1 on success, otherwise the index of the first pivot that is not positive or not finite (NaN or Inf
///          anywhere in the lower triangle is reported this way); @p a's content is then unspecified.
/// @throws rsq::invalid_argument if @p a is not square or is empty
template <class T>
[[nodiscard]] index_t cholesky_lower_inplace(col_ref<T> a) {
  static_assert(std::is_floating_point_v<T>, "rsq: cholesky_lower_inplace needs a floating-point matrix");
  detail::linalg::expect_square<T>(a, "cholesky_lower_inplace", "a");
  index_t const info = detail::linalg::cholesky_recursive<T>(a);
  if (info < 0) a.template triangularView<Eigen::StrictlyUpper>().setZero();
  return info;
}
/// Overload that deduces T, for plain column-major matrices (eigen_col_matrix<T>).
template <class T>
[[nodiscard]] index_t cholesky_lower_inplace(Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& a) {
  return cholesky_lower_inplace<T>(col_ref<T>(a));
}

/// In-place inverse of a lower-triangular matrix with a non-zero, finite diagonal.
///
/// Reads and writes only the lower triangle (the strict upper triangle is left as it is).
/// @throws rsq::invalid_argument if @p l is not square, empty, or has a zero or non-finite diagonal element
template <class T>
void invert_lower_triangular_inplace(col_ref<T> l) {
  static_assert(std::is_floating_point_v<T>, "rsq: invert_lower_triangular_inplace needs a floating-point matrix");
  detail::linalg::expect_square<T>(l, "invert_lower_triangular_inplace", "l");
  for (index_t i = 0; i < l.rows(); ++i)
    RSQ_EXPECTS(l(i, i) != T(0) && std::isfinite(l(i, i)),
                "invert_lower_triangular_inplace: l must have a non-zero finite diagonal, got ", l(i, i),
                " at diagonal index ", i);
  detail::linalg::invert_lower_recursive<T>(l);
}
/// Overload that deduces T, for plain column-major matrices (eigen_col_matrix<T>).
template <class T>
void invert_lower_triangular_inplace(Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& l) {
  invert_lower_triangular_inplace<T>(col_ref<T>(l));
}

/// U, the upper-triangular Cholesky factor of H^{-1} (H^{-1} = U^T U, positive diagonal), as GPTQ uses it (spec §6
/// step 6), with one Cholesky and one triangular inverse instead of the reference's chol -> cholesky_inverse ->
/// chol: with J the reversal permutation, L~ = chol(J H J) and U = J L~^{-1} J (2/3 n^3 flops instead of 4/3).
///
/// Reads only the lower triangle of @p h and overwrites all of it with U (zeros below the diagonal).
/// @returns -1 on success, otherwise the index (in H's own numbering) of the pivot at which the Cholesky of J H J
///          failed, i.e. the *last* index i for which the trailing block H[i:, i:] is not positive definite given
///          the blocks after it; NaN/Inf in H is reported this way. @p h's content is then unspecified.
/// @throws rsq::invalid_argument if @p h is not square or is empty
template <class T>
[[nodiscard]] index_t upper_cholesky_of_inverse_inplace(col_ref<T> h) {
  static_assert(std::is_floating_point_v<T>, "rsq: upper_cholesky_of_inverse_inplace needs a floating-point matrix");
  detail::linalg::expect_square<T>(h, "upper_cholesky_of_inverse_inplace", "h");
  index_t const n = h.rows();
  symmetrize_from_lower<T>(h);
  h.reverseInPlace();  // J H J: reverse rows and columns
  index_t const info = detail::linalg::cholesky_recursive<T>(h);
  if (info >= 0) return n - 1 - info;
  h.template triangularView<Eigen::StrictlyUpper>().setZero();
  detail::linalg::invert_lower_recursive<T>(h);  // L~ has a positive finite diagonal: no checks needed
  h.reverseInPlace();                           // J L~^{-1} J: lower triangular becomes upper
  return -1;
}
/// Overload that deduces T, for plain column-major matrices (eigen_col_matrix<T>).
template <class T>
[[nodiscard]] index_t upper_cholesky_of_inverse_inplace(Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& h) {
  return upper_cholesky_of_inverse_inplace<T>(col_ref<T>(h));
}

/// SYRK: the lower triangle of @p c (n x n) += alpha * x^T x, for @p x (tokens x n) any Eigen expression of either
/// storage order (plain matrices, maps and blocks are used without a copy; other expressions are evaluated once).
///
/// Only the lower block triangle is computed, on GEMM tiles; the strict upper triangle of c is not touched (use
/// symmetrize_from_lower() afterwards for a full matrix). x with 0 rows is a no-op. NaN/Inf in x propagate to c.
/// T is deduced from @p alpha, so `syrk_lower_update(h, x, 1.0f)` works for a float `h`.
/// @throws rsq::invalid_argument if c is not square, is empty, or x.cols() != c.rows()
template <class T, class X>
void syrk_lower_update(Eigen::Ref<eigen_col_matrix<std::type_identity_t<T>>> c, Eigen::MatrixBase<X> const& x,
                       T alpha) {
  static_assert(std::is_floating_point_v<T>, "rsq: syrk_lower_update needs a floating-point matrix");
  detail::linalg::expect_square<T>(c, "syrk_lower_update", "c");
  RSQ_EXPECTS(x.cols() == c.rows(), "syrk_lower_update: x must have as many columns as c has rows, got x (",
              x.rows(), " x ", x.cols(), ") and c (", c.rows(), " x ", c.cols(), ")");
  if (x.rows() == 0) return;
  // x^T (n x tokens) as a direct-access matrix of the matching storage order: no copy for matrices, maps, blocks.
  using xt_plain = std::conditional_t<bool(X::IsRowMajor), eigen_col_matrix<T>, eigen_row_matrix<T>>;
  if constexpr (std::is_same_v<typename X::Scalar, T>)
    detail::linalg::syrk_lower<T, xt_plain>(c, x.transpose(), alpha);
  else
    detail::linalg::syrk_lower<T, xt_plain>(c, x.transpose().template cast<T>(), alpha);
}

}  // namespace rsq::cpu
