// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CPU backend of round-to-nearest quantization (algorithm::rtn, <rsq/quant/rtn.hpp>).

#include <algorithm>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/quant/grid.hpp"
#include "rsq/quant/quantized_weight.hpp"

namespace rsq::backend {

template <>
struct implementation<algorithm::rtn, cpu_eigen> {
  static constexpr bool available = true;

  template <class T>
  static quant::quantized_weight<T> run(cpu_eigen const&, matrix_view<const T> w, quant::grid_spec const& grid,
                                        index_t group_size) {
    rsq::detail::check_finite(w, "quantize_rtn: weight");
    index_t const rows = w.rows(), cols = w.cols();
    index_t const g = group_size == -1 ? cols : group_size;
    index_t const groups = (cols + g - 1) / g;
    quant::quantized_weight<T> q;
    q.bits = grid.bits;
    q.offset = grid.offset_form();
    q.codes = rsq::make_matrix_for_overwrite<std::uint8_t>(rows, cols);
    q.scales = rsq::make_matrix_for_overwrite<T>(rows, groups);
    q.zeros = rsq::make_matrix_for_overwrite<T>(rows, groups);
    q.g_idx = rsq::make_vector<std::int32_t>(cols);
    for (index_t c = 0; c < cols; ++c) q.g_idx(c) = std::int32_t(c / g);
    for (index_t r = 0; r < rows; ++r)
      for (index_t gi = 0; gi < groups; ++gi) {
        index_t const c0 = gi * g, n = std::min(g, cols - c0);
        auto const p = quant::fit(grid, &w(r, c0), n, w.stride(1));
        q.scales(r, gi) = p.scale;
        q.zeros(r, gi) = p.zero;
        for (index_t c = c0; c < c0 + n; ++c) q.codes(r, c) = quant::encode(grid, w(r, c), p);
      }
    return q;
  }

  template <class T>
  static void fake_quantize(cpu_eigen const&, matrix_view<T> w, quant::grid_spec const& grid, index_t group_size) {
    rsq::detail::check_finite(matrix_view<const T>(w), "fake_quantize: weight");
    index_t const rows = w.rows(), cols = w.cols();
    index_t const g = group_size == -1 ? cols : group_size;
#pragma omp parallel for schedule(static) if (rows * cols >= (index_t(1) << 16))
    for (index_t r = 0; r < rows; ++r)
      for (index_t c0 = 0; c0 < cols; c0 += g) {
        index_t const n = std::min(g, cols - c0);
        auto const p = quant::fit(grid, &w(r, c0), n, w.stride(1));
        for (index_t c = c0; c < c0 + n; ++c) w(r, c) = quant::decode(grid, quant::encode(grid, w(r, c), p), p);
      }
  }
};

}  // namespace rsq::backend
