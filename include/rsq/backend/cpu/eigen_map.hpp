// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Eigen maps over rsq views, for the CPU backend: no copy, any strides. Row-major owned matrices (`rsq::matrix<T>`)
/// map with `as_eigen(view(m))`.

#include <type_traits>

#include <Eigen/Core>

#include "rsq/core/view.hpp"

namespace rsq::cpu {

template <class T>
using eigen_row_matrix = Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using eigen_col_matrix = Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
template <class T>
using eigen_vector = Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, 1>;

/// Eigen map of a strided matrix view (row-major mapping with explicit outer/inner strides).
template <class T>
using eigen_strided_map =
    Eigen::Map<std::conditional_t<std::is_const_v<T>, const eigen_row_matrix<T>, eigen_row_matrix<T>>, Eigen::Unaligned,
               Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;

/// Maps @p v as an Eigen expression without copying.
template <class T>
[[nodiscard]] eigen_strided_map<T> as_eigen(matrix_view<T> v) {
  // A row-major Eigen map takes (outer = row stride, inner = column stride).
  return eigen_strided_map<T>(v.data(), v.rows(), v.cols(),
                              Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(v.stride(0), v.stride(1)));
}

/// Maps a vector view.
template <class T>
[[nodiscard]] auto as_eigen(vector_view<T> v) {
  using vec = std::conditional_t<std::is_const_v<T>, const eigen_vector<T>, eigen_vector<T>>;
  return Eigen::Map<vec, Eigen::Unaligned, Eigen::InnerStride<Eigen::Dynamic>>(
      v.data(), v.extent(0), Eigen::InnerStride<Eigen::Dynamic>(v.stride(0)));
}

}  // namespace rsq::cpu
