// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CPU backend of the Hadamard transform (algorithm::hadamard_transform, <rsq/rotation/hadamard.hpp>): the planned
/// transform's own host code (fast Walsh–Hadamard passes, the hadK mix by Eigen, OpenMP over rows).

#include <cstdint>
#include <span>
#include <vector>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/core/view.hpp"

namespace rsq::backend {

template <>
struct implementation<algorithm::hadamard_transform, cpu_eigen> {
  static constexpr bool available = true;

  /// rows(a, b, :) ← diag(post)·op(H)·diag(pre)·rows(a, b, :) for the planned transform @p h (a
  /// rotation::hadamard): one matrix when the batch is one (a single matrix, or matrices a fixed stride apart),
  /// else through a contiguous copy of all rows, transformed together.
  template <class H, class T>
  static void run(cpu_eigen const&, H const& h, tensor_view<T, 3> rows, bool transpose,
                  std::span<std::int8_t const> pre, std::span<std::int8_t const> post) {
    index_t const n0 = rows.extent(0), n1 = rows.extent(1), n = rows.extent(2);
    if (n0 == 1 || rows.stride(0) == n1 * rows.stride(1)) {
      h.apply_with_signs(matrix_view<T>(rows.data(), {n0 * n1, n}, {rows.stride(1), rows.stride(2)}), transpose, pre,
                         post);
      return;
    }
    thread_local std::vector<T> kept;  // (n0·n1, n), kept: the forward pass calls this for every layer
    kept.resize(std::size_t(n0 * n1 * n));
    T* const buffer = kept.data();  // the calling thread's buffer, shared by the threads below
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (n0 * n1 * n > (index_t(1) << 16))
#endif
    for (index_t a = 0; a < n0; ++a)
      for (index_t b = 0; b < n1; ++b)
        for (index_t c = 0; c < n; ++c) buffer[(a * n1 + b) * n + c] = rows(a, b, c);
    h.apply_with_signs(matrix_view<T>(buffer, n0 * n1, n), transpose, pre, post);
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (n0 * n1 * n > (index_t(1) << 16))
#endif
    for (index_t a = 0; a < n0; ++a)
      for (index_t b = 0; b < n1; ++b)
        for (index_t c = 0; c < n; ++c) rows(a, b, c) = buffer[(a * n1 + b) * n + c];
  }
};

}  // namespace rsq::backend
