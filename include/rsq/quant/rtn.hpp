// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Round-to-nearest quantization of a whole weight (the RTN baseline, and GPTQ's result when H is diagonal).

#include <cfenv>

#include "rsq/core/checks.hpp"
#include "rsq/quant/grid.hpp"
#include "rsq/quant/quantized_weight.hpp"

namespace rsq::quant {

/// Quantizes @p w (rows, cols) to the nearest grid point, per row (@p group_size = −1) or per group of
/// @p group_size consecutive input columns (a last partial group included).
/// @throws rsq::invalid_argument for an empty or non-finite @p w, a bad grid, or group_size 0 or < −1.
template <class T>
[[nodiscard]] quantized_weight<T> quantize_rtn(matrix_view<const T> w, grid_spec const& grid,
                                               index_t group_size = -1) {
  grid.validate();
  RSQ_EXPECTS(w.rows() > 0 && w.cols() > 0, "quantize_rtn: weight is empty ", rsq::detail::shape_string(w));
  RSQ_EXPECTS(group_size == -1 || group_size > 0, "quantize_rtn: group_size must be -1 (per row) or positive, got ",
              group_size);
  RSQ_EXPECTS(std::fegetround() == FE_TONEAREST, "quantize_rtn: the floating-point rounding mode must be FE_TONEAREST");
  rsq::detail::check_finite(w, "quantize_rtn: weight");
  index_t const rows = w.rows(), cols = w.cols();
  index_t const g = group_size == -1 ? cols : group_size;
  index_t const groups = (cols + g - 1) / g;
  quantized_weight<T> q;
  q.bits = grid.bits;
  q.codes = rsq::make_matrix<std::uint8_t>(rows, cols);
  q.scales = rsq::make_matrix<T>(rows, groups);
  q.zeros = rsq::make_matrix<T>(rows, groups);
  q.g_idx = rsq::make_vector<std::int32_t>(cols);
  for (index_t c = 0; c < cols; ++c) q.g_idx(c) = std::int32_t(c / g);
  int const max_code = grid.max_code();
  for (index_t r = 0; r < rows; ++r)
    for (index_t gi = 0; gi < groups; ++gi) {
      index_t const c0 = gi * g, n = std::min(g, cols - c0);
      auto const p = fit(grid, &w(r, c0), n, w.stride(1));
      q.scales(r, gi) = p.scale;
      q.zeros(r, gi) = p.zero;
      for (index_t c = c0; c < c0 + n; ++c) q.codes(r, c) = encode(w(r, c), p.scale, p.zero, max_code);
    }
  return q;
}

}  // namespace rsq::quant
