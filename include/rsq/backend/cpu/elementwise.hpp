// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CPU backend of the element-wise operations (algorithm::elementwise, <rsq/linalg/elementwise.hpp>).

#include <vector>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/core/view.hpp"

namespace rsq::backend {

template <>
struct implementation<algorithm::elementwise, cpu_eigen> {
  static constexpr bool available = true;

  template <class S, class D>
  static void convert(cpu_eigen const&, matrix_view<const S> src, matrix_view<D> dst) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (src.size() > (index_t(1) << 16))
#endif
    for (index_t i = 0; i < src.rows(); ++i)
      for (index_t j = 0; j < src.cols(); ++j) dst(i, j) = D(src(i, j));
  }

  template <class T, class G>
  static void scale_columns(cpu_eigen const&, matrix_view<T> w, vector_view<const G> g) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (w.size() > (index_t(1) << 16))
#endif
    for (index_t i = 0; i < w.rows(); ++i)
      for (index_t j = 0; j < w.cols(); ++j) w(i, j) *= T(g(j));
  }

  template <class T>
  static void add_to_rows(cpu_eigen const&, matrix_view<T> y, vector_view<const T> b) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (y.size() > (index_t(1) << 16))
#endif
    for (index_t i = 0; i < y.rows(); ++i)
      for (index_t j = 0; j < y.cols(); ++j) y(i, j) += b(j);
  }

  template <class T>
  static void axpy(cpu_eigen const&, T alpha, matrix_view<const T> x, matrix_view<T> y) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (x.size() > (index_t(1) << 16))
#endif
    for (index_t i = 0; i < x.rows(); ++i)
      for (index_t j = 0; j < x.cols(); ++j) y(i, j) += alpha * x(i, j);
  }

  template <class T>
  static double dot(cpu_eigen const&, matrix_view<const T> a, matrix_view<const T> b) {
    std::vector<double> rows(static_cast<std::size_t>(a.rows()));  // per-row sums: any thread count, same order
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (a.size() > (index_t(1) << 16))
#endif
    for (index_t i = 0; i < a.rows(); ++i) {
      double s = 0;
      for (index_t j = 0; j < a.cols(); ++j) s += double(a(i, j)) * double(b(i, j));
      rows[std::size_t(i)] = s;
    }
    double total = 0;
    for (double s : rows) total += s;
    return total;
  }
};

}  // namespace rsq::backend
