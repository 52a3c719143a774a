// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// A quantized weight: integer codes plus per-(row, group) scales and zeros, and the group of every input column.
/// This is what round-to-nearest and the GPTQ solver return, and what the GPTQ checkpoint packer consumes.

#include <cstdint>

#include "rsq/backend/cpu/memory.hpp"
#include "rsq/backend/memory.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/quant/grid.hpp"

namespace rsq::quant {

/// Codes, scales, zeros and group indices of a (rows, cols) = (out_features, in_features) weight, in the memory of
/// backend B (host memory by default; `quantized_weight<T, backend::cuda>` holds device arrays).
/// Dequantized weight: W[r, c] = scales(r, g) · (codes(r, c) − zeros(r, g)) with g = g_idx(c); on an offset grid
/// (llama.cpp Q4_1, grid_spec::offset_form) the zeros hold offsets m and W[r, c] = fl(scales(r, g) · codes(r, c)) + m.
template <class T, class B = backend::cpu_eigen>
struct quantized_weight {
  int bits = 0;
  bool offset = false;                     ///< zeros hold offsets (an offset grid), not integer zero points
  backend::matrix<std::uint8_t, B> codes;  ///< (rows, cols), original column order, values in [0, 2^bits − 1]
  backend::matrix<T, B> scales;            ///< (rows, groups)
  backend::matrix<T, B> zeros;             ///< (rows, groups), integer-valued (offsets when `offset`)
  backend::array<std::int32_t, B> g_idx;   ///< (cols): group of each input column (AutoGPTQ convention)

  [[nodiscard]] index_t rows() const noexcept { return rsq::view(codes).rows(); }
  [[nodiscard]] index_t cols() const noexcept { return rsq::view(codes).cols(); }
  [[nodiscard]] index_t groups() const noexcept { return rsq::view(scales).cols(); }
};

/// The dequantized weight (rows, cols) of @p q.
template <class T>
[[nodiscard]] rsq::matrix<T> dequantize(quantized_weight<T> const& q) {
  index_t const rows = q.rows(), cols = q.cols();
  RSQ_EXPECTS(index_t(q.g_idx.size()) == cols, "dequantize: g_idx has ", q.g_idx.size(), " entries for ", cols,
              " columns");
  auto w = rsq::make_matrix<T>(rows, cols);
  for (index_t c = 0; c < cols; ++c) {
    auto const g = q.g_idx(c);
    RSQ_EXPECTS(g >= 0 && g < q.groups(), "dequantize: g_idx(", c, ") = ", g, " is not a group index below ",
                q.groups());
  }
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) {
      auto const g = q.g_idx(c);
      w(r, c) = q.offset ? quant::decode_offset(q.codes(r, c), q.scales(r, g), q.zeros(r, g))
                         : quant::decode(q.codes(r, c), q.scales(r, g), q.zeros(r, g));
    }
  return w;
}

}  // namespace rsq::quant
