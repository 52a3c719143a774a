// SPDX-License-Identifier: MIT
#pragma once

// Comparisons of whole arrays that tests share.

#include <algorithm>
#include <cmath>
#include <cstddef>

#include <doctest/doctest.h>

namespace rsq_test {

/// max_i |a_i − b_i| / max_i |b_i| over the elements in memory order (a and b: anything with size() and data()).
template <class A, class B>
double max_norm_rel(A const& a, B const& b) {
  REQUIRE(a.size() == b.size());
  double num = 0, den = 0;
  for (std::size_t i = 0; i < std::size_t(a.size()); ++i) {
    num = std::max(num, std::abs(double(a.data()[i]) - double(b.data()[i])));
    den = std::max(den, std::abs(double(b.data()[i])));
  }
  return num / den;
}

}  // namespace rsq_test
