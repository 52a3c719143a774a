// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CPU backend of linalg::lu_solve (<rsq/linalg/lu_solve.hpp>): Gaussian elimination with partial pivoting in a
/// fixed order (one thread; the systems it serves are the rotations' n × n, n ≤ a few thousand).

#include <cmath>
#include <utility>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/view.hpp"

namespace rsq::backend {

template <>
struct implementation<algorithm::lu_solve, cpu_eigen> {
  static constexpr bool available = true;

  static void run(cpu_eigen const&, matrix_view<double> a, matrix_view<double> b) {
    index_t const n = a.rows(), m = b.cols();
    for (index_t k = 0; k < n; ++k) {
      index_t piv = k;
      for (index_t i = k + 1; i < n; ++i)
        if (std::abs(a(i, k)) > std::abs(a(piv, k))) piv = i;
      if (piv != k) {
        for (index_t j = 0; j < n; ++j) std::swap(a(k, j), a(piv, j));
        for (index_t j = 0; j < m; ++j) std::swap(b(k, j), b(piv, j));
      }
      double const inv = 1.0 / a(k, k);
      for (index_t i = k + 1; i < n; ++i) {
        double const f = a(i, k) * inv;
        if (f == 0) continue;
        a(i, k) = f;
        for (index_t j = k + 1; j < n; ++j) a(i, j) -= f * a(k, j);
        for (index_t j = 0; j < m; ++j) b(i, j) -= f * b(k, j);
      }
    }
    for (index_t kk = n; kk-- > 0;) {
      for (index_t i = kk + 1; i < n; ++i) {
        double const f = a(kk, i);
        if (f == 0) continue;
        for (index_t j = 0; j < m; ++j) b(kk, j) -= f * b(i, j);
      }
      double const inv = 1.0 / a(kk, kk);
      for (index_t j = 0; j < m; ++j) b(kk, j) *= inv;
    }
  }
};

}  // namespace rsq::backend
