// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Argument checks shared by the public functions: finite values (naming the first bad element), shapes.

#include <cmath>
#include <string>
#include <string_view>
#include <type_traits>

#include "rsq/core/error.hpp"
#include "rsq/core/view.hpp"

namespace rsq::detail {

/// True when the @p n values x[0], x[stride], ... are all finite. x·0 is 0 for a finite x and NaN for ±Inf and NaN,
/// so one sum in independent lanes (no branch per element: it vectorizes) answers for a whole row.
template <class T>
[[nodiscard]] bool all_finite(T const* x, index_t n, index_t stride) noexcept {
  using V = std::remove_const_t<T>;
  if constexpr (!std::is_floating_point_v<V>) {
    for (index_t k = 0; k < n; ++k)
      if (!std::isfinite(x[k * stride])) return false;
    return true;
  } else {
    constexpr index_t lanes = 16;
    V acc[lanes] = {};
    index_t k = 0;
    if (stride == 1)
      for (; k + lanes <= n; k += lanes)
        for (index_t l = 0; l < lanes; ++l) acc[l] += x[k + l] * V(0);
    for (; k < n; ++k) acc[0] += x[k * stride] * V(0);
    V sum = V(0);
    for (V a : acc) sum += a;
    return sum == V(0);
  }
}

/// The first row of @p m with a NaN or Inf, or m.rows() if there is none. Rows are checked in parallel when OpenMP
/// is on (the check reads the whole matrix once: memory-bound).
template <class T>
[[nodiscard]] index_t first_nonfinite_row(matrix_view<T> m) {
  index_t const rows = m.rows(), cols = m.cols();
  index_t bad_row = rows;
  if (cols > 0) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) reduction(min : bad_row) if (rows * cols > (index_t(1) << 18))
#endif
    for (index_t i = 0; i < rows; ++i)
      if (i < bad_row && !all_finite(&m(i, 0), cols, m.stride(1))) bad_row = i;
  }
  return bad_row;
}

/// The first column of row @p i of @p m that holds a NaN or Inf (m.cols() if none).
template <class T>
[[nodiscard]] index_t first_nonfinite_column(matrix_view<T> m, index_t i) {
  index_t j = 0;
  while (j < m.cols() && std::isfinite(m(i, j))) ++j;
  return j;
}

/// Throws rsq::invalid_argument naming @p what and the position of the first NaN or Inf in @p m.
template <class T>
void check_finite(matrix_view<T> m, std::string_view what) {
  index_t const i = first_nonfinite_row(m);
  if (i == m.rows()) return;
  index_t const j = first_nonfinite_column(m, i);
  throw_invalid_argument(what, " has a non-finite value (", m(i, j), ") at row ", i, ", column ", j);
}

/// Throws rsq::invalid_argument naming @p what and the index of the first NaN or Inf in @p v.
template <class T>
void check_finite(vector_view<T> v, std::string_view what) {
  for (index_t i = 0; i < v.extent(0); ++i)
    if (!std::isfinite(v(i))) throw_invalid_argument(what, " has a non-finite value (", v(i), ") at index ", i);
}

/// "(rows x cols)" for error messages.
template <class V>
[[nodiscard]] std::string shape_string(V const& v) {
  std::string s = "(";
  for (std::size_t d = 0; d < V::rank(); ++d) {
    if (d) s += " x ";
    s += std::to_string(v.extent(d));
  }
  return s + ")";
}

}  // namespace rsq::detail
