// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CPU backend's memory (algorithm::memory, <rsq/backend/memory.hpp>): host memory, owned by the xtensor
/// containers rsq returns everywhere, so that a result "on the backend" is the ordinary host result.

#include <cstddef>
#include <cstring>
#include <limits>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/core/tensor.hpp"

namespace rsq::backend {

template <>
struct implementation<algorithm::memory, cpu_eigen> {
  static constexpr bool available = true;

  template <class T>
  using array = rsq::vector<T>;
  template <class T>
  using matrix = rsq::matrix<T>;

  template <class T>
  static matrix<T> make_matrix(cpu_eigen const&, index_t rows, index_t cols) {
    return rsq::make_matrix_for_overwrite<T>(rows, cols);
  }
  static bool resident(cpu_eigen const&, void const*) noexcept { return true; }
  static void copy(cpu_eigen const&, void* dst, void const* src, std::size_t bytes) noexcept {
    if (bytes > 0 && dst != src) std::memmove(dst, src, bytes);
  }
  static void synchronize(cpu_eigen const&) noexcept {}
  static std::size_t bytes_in_use(cpu_eigen const&) noexcept { return 0; }
  static std::size_t bytes_free(cpu_eigen const&) noexcept { return std::numeric_limits<std::size_t>::max(); }
};

}  // namespace rsq::backend
