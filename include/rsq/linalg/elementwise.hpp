// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Element-wise operations on a backend's matrices: conversions between float and double (the rotations of spec §2
/// run in float64 and round to float once), column scaling W ← W·diag(g) (the RMSNorm fusion of spec §2.1), and the
/// y ← αx + y update and the Σ a_ij·b_ij product of the GPTQ proxy loss.
///
/// An implementation of algorithm::elementwise provides (arguments checked, arrays in the backend's memory):
///   template <class S, class D> static void convert(B const&, matrix_view<const S> src, matrix_view<D> dst);
///   template <class T, class G> static void scale_columns(B const&, matrix_view<T> w, vector_view<const G> g);
///   template <class T> static void axpy(B const&, T alpha, matrix_view<const T> x, matrix_view<T> y);
///   template <class T> static void add_to_rows(B const&, matrix_view<T> y, vector_view<const T> b);
///   template <class T> static double dot(B const&, matrix_view<const T> a, matrix_view<const T> b);
///       // in float64, summed row by row and the rows in order: the same for any number of threads

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/elementwise.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/memory.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/view.hpp"

namespace rsq::linalg {

/// dst ← src converted element by element (float ↔ double), both (rows, cols) in @p be's memory.
template <backend_tag B, class S, class D>
void convert(B const& be, matrix_view<const S> src, matrix_view<D> dst) {
  RSQ_EXPECTS(src.rows() == dst.rows() && src.cols() == dst.cols(), "convert: source ",
              rsq::detail::shape_string(src), " and destination ", rsq::detail::shape_string(dst), " differ");
  if (src.size() == 0) return;
  RSQ_EXPECTS(backend::resident(be, src.data()) && backend::resident(be, dst.data()),
              "convert: both arrays must be in the backend's memory");
  backend::implementation_t<algorithm::elementwise, B>::template convert<S, D>(be, src, dst);
}

/// W ← W·diag(g): column j of @p w (rows, cols) scaled by g(j); both in @p be's memory.
template <backend_tag B, class T, class G>
void scale_columns(B const& be, matrix_view<T> w, vector_view<const G> g) {
  RSQ_EXPECTS(g.extent(0) == w.cols(), "scale_columns: ", g.extent(0), " gains for ", w.cols(), " columns");
  if (w.size() == 0) return;
  RSQ_EXPECTS(backend::resident(be, w.data()) && backend::resident(be, g.data()),
              "scale_columns: both arrays must be in the backend's memory");
  backend::implementation_t<algorithm::elementwise, B>::template scale_columns<T, G>(be, w, g);
}

/// y ← α·x + y, both (rows, cols) in @p be's memory.
template <backend_tag B, class T>
void axpy(B const& be, T alpha, matrix_view<const T> x, matrix_view<T> y) {
  RSQ_EXPECTS(x.rows() == y.rows() && x.cols() == y.cols(), "axpy: x ", rsq::detail::shape_string(x), " and y ",
              rsq::detail::shape_string(y), " differ");
  if (x.size() == 0) return;
  RSQ_EXPECTS(backend::resident(be, x.data()) && backend::resident(be, y.data()),
              "axpy: both arrays must be in the backend's memory");
  backend::implementation_t<algorithm::elementwise, B>::template axpy<T>(be, alpha, x, y);
}

/// y(i, j) ← y(i, j) + b(j): @p b (cols) added to every row of @p y (rows, cols), both in @p be's memory (a bias).
template <backend_tag B, class T>
void add_to_rows(B const& be, matrix_view<T> y, vector_view<const T> b) {
  RSQ_EXPECTS(b.extent(0) == y.cols(), "add_to_rows: a vector of ", b.extent(0), " values for rows of ", y.cols());
  if (y.size() == 0) return;
  backend::implementation_t<algorithm::elementwise, B>::template add_to_rows<T>(be, y, b);
}

/// Σ a_ij·b_ij in float64 for (rows, cols) @p a and @p b in @p be's memory.
template <backend_tag B, class T>
[[nodiscard]] double dot(B const& be, matrix_view<const T> a, matrix_view<const T> b) {
  RSQ_EXPECTS(a.rows() == b.rows() && a.cols() == b.cols(), "dot: a ", rsq::detail::shape_string(a), " and b ",
              rsq::detail::shape_string(b), " differ");
  if (a.size() == 0) return 0.0;
  RSQ_EXPECTS(backend::resident(be, a.data()) && backend::resident(be, b.data()),
              "dot: both arrays must be in the backend's memory");
  return backend::implementation_t<algorithm::elementwise, B>::template dot<T>(be, a, b);
}

}  // namespace rsq::linalg
