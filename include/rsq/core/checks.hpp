// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Argument checks shared by the public functions: finite values (naming the first bad element), shapes.

#include <cmath>
#include <string>
#include <string_view>

#include "rsq/core/error.hpp"
#include "rsq/core/view.hpp"

namespace rsq::detail {

/// Throws rsq::invalid_argument naming @p what and the position of the first NaN or Inf in @p m.
template <class T>
void check_finite(matrix_view<T> m, std::string_view what) {
  for (index_t i = 0; i < m.rows(); ++i)
    for (index_t j = 0; j < m.cols(); ++j)
      if (!std::isfinite(m(i, j)))
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
