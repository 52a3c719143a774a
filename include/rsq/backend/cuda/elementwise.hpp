// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CUDA backend of the element-wise operations (algorithm::elementwise, <rsq/linalg/elementwise.hpp>): one
/// grid-stride kernel each, on device matrices with any strides. Declarations only; definitions in
/// <rsq/backend/cuda/impl/elementwise.cuh>.

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/core/view.hpp"

namespace rsq::cuda::detail {

template <class S, class D>
void convert_impl(backend::cuda const& be, matrix_view<const S> src, matrix_view<D> dst);
template <class T, class G>
void scale_columns_impl(backend::cuda const& be, matrix_view<T> w, vector_view<const G> g);

template <class T>
void axpy_impl(backend::cuda const& be, T alpha, matrix_view<const T> x, matrix_view<T> y);
template <class T>
void add_to_rows_impl(backend::cuda const& be, matrix_view<T> y, vector_view<const T> b);
template <class T>
[[nodiscard]] double dot_impl(backend::cuda const& be, matrix_view<const T> a, matrix_view<const T> b);

extern template void axpy_impl<float>(backend::cuda const&, float, matrix_view<const float>, matrix_view<float>);
extern template void axpy_impl<double>(backend::cuda const&, double, matrix_view<const double>, matrix_view<double>);
extern template void add_to_rows_impl<float>(backend::cuda const&, matrix_view<float>, vector_view<const float>);
extern template void add_to_rows_impl<double>(backend::cuda const&, matrix_view<double>, vector_view<const double>);
extern template double dot_impl<float>(backend::cuda const&, matrix_view<const float>, matrix_view<const float>);
extern template double dot_impl<double>(backend::cuda const&, matrix_view<const double>, matrix_view<const double>);
extern template void convert_impl<float, double>(backend::cuda const&, matrix_view<const float>, matrix_view<double>);
extern template void convert_impl<double, float>(backend::cuda const&, matrix_view<const double>, matrix_view<float>);
extern template void convert_impl<float, float>(backend::cuda const&, matrix_view<const float>, matrix_view<float>);
extern template void convert_impl<double, double>(backend::cuda const&, matrix_view<const double>,
                                                  matrix_view<double>);
extern template void scale_columns_impl<double, float>(backend::cuda const&, matrix_view<double>,
                                                       vector_view<const float>);
extern template void scale_columns_impl<float, float>(backend::cuda const&, matrix_view<float>,
                                                      vector_view<const float>);

}  // namespace rsq::cuda::detail

namespace rsq::backend {

template <>
struct implementation<algorithm::elementwise, cuda> {
  static constexpr bool available = true;

  template <class S, class D>
  static void convert(cuda const& be, matrix_view<const S> src, matrix_view<D> dst) {
    rsq::cuda::detail::convert_impl<S, D>(be, src, dst);
  }
  template <class T, class G>
  static void scale_columns(cuda const& be, matrix_view<T> w, vector_view<const G> g) {
    rsq::cuda::detail::scale_columns_impl<T, G>(be, w, g);
  }
  template <class T>
  static void axpy(cuda const& be, T alpha, matrix_view<const T> x, matrix_view<T> y) {
    rsq::cuda::detail::axpy_impl<T>(be, alpha, x, y);
  }
  template <class T>
  static void add_to_rows(cuda const& be, matrix_view<T> y, vector_view<const T> b) {
    rsq::cuda::detail::add_to_rows_impl<T>(be, y, b);
  }
  template <class T>
  static double dot(cuda const& be, matrix_view<const T> a, matrix_view<const T> b) {
    return rsq::cuda::detail::dot_impl<T>(be, a, b);
  }
};

}  // namespace rsq::backend
