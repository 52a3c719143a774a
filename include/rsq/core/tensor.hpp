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

}  // namespace rsq
