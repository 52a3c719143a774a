// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Owned arrays returned by rsq: xtensor containers in row-major (C) order, so that results can be written to
/// `.npy` as they are, adapted by Eigen::Map without a copy, and used from CUDA translation units (xtensor compiles
/// cleanly under nvcc, Eigen does not).

#include <cstdint>

#include "rsq/core/view.hpp"
#include "rsq/detail/xtensor_compat.hpp"

namespace rsq {

template <class T>
using matrix = xt::xtensor<T, 2>;  ///< owned (rows, cols), row-major
template <class T>
using vector = xt::xtensor<T, 1>;  ///< owned (size)

/// A zero-filled (rows, cols) matrix. Prefer this to `rsq::matrix<T>({rows, cols})`: braces are ambiguous between
/// a shape and element values in xtensor (for rank 1, `vector<T>({n})` is a one-element vector holding n).
template <class T>
[[nodiscard]] rsq::matrix<T> make_matrix(index_t rows, index_t cols) {
  using shape = typename rsq::matrix<T>::shape_type;
  return rsq::matrix<T>(shape{std::size_t(rows), std::size_t(cols)}, T(0));
}
/// A (rows, cols) matrix whose elements are left uninitialized, for results that are written in full right away.
template <class T>
[[nodiscard]] rsq::matrix<T> make_matrix_for_overwrite(index_t rows, index_t cols) {
  using shape = typename rsq::matrix<T>::shape_type;
  return rsq::matrix<T>(shape{std::size_t(rows), std::size_t(cols)});
}

/// Gives @p m the shape (rows, cols) for contents about to be written in full, keeping its storage when the element
/// count is unchanged (fresh pages cost a first touch: `gptq::solve`'s recycled result); elements are left as they
/// were.
template <class T>
void reshape_for_overwrite(rsq::matrix<T>& m, index_t rows, index_t cols) {
  m.resize({std::size_t(rows), std::size_t(cols)});
}
/// reshape_for_overwrite() for a vector of @p n elements.
template <class T>
void reshape_for_overwrite(rsq::vector<T>& v, index_t n) {
  v.resize({std::size_t(n)});
}

/// A zero-filled vector of @p n elements.
template <class T>
[[nodiscard]] rsq::vector<T> make_vector(index_t n) {
  using shape = typename rsq::vector<T>::shape_type;
  return rsq::vector<T>(shape{std::size_t(n)}, T(0));
}

/// Read-only view of an owned array.
template <class T, std::size_t N>
[[nodiscard]] tensor_view<const T, N> view(xt::xtensor<T, N> const& a) {
  return tensor_view<const T, N>(a);
}
/// Writable view of an owned array.
template <class T, std::size_t N>
[[nodiscard]] tensor_view<T, N> view(xt::xtensor<T, N>& a) {
  return tensor_view<T, N>(a);
}
/// The view of an owned array of another backend's memory (e.g. rsq::cuda::device_matrix), which offers view():
/// code written once for every backend (backend::matrix<T, B>) calls rsq::view on both kinds.
template <class A>
  requires requires(A& a) { a.view(); }
[[nodiscard]] auto view(A& a) {
  return a.view();
}

}  // namespace rsq
