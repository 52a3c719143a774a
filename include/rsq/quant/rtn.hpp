// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Round-to-nearest quantization of a whole weight (the RTN baseline, and GPTQ's result when H is diagonal), on any
/// backend.
///
/// An implementation of algorithm::rtn provides
///   template <class T> static quant::quantized_weight<T, B> run(B const&, matrix_view<const T> w,
///                                                               quant::grid_spec const&, index_t group_size);
///   template <class T> static void fake_quantize(B const&, matrix_view<T> w, quant::grid_spec const&,
///                                                index_t group_size);   // w ← its dequantized RTN, in place
/// (grid, group size and shape checked; W's values checked there, naming the first NaN/Inf).

#include <cfenv>
#include <utility>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/rtn.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/memory.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/quant/grid.hpp"
#include "rsq/quant/quantized_weight.hpp"

namespace rsq::quant {

/// Quantizes @p w (rows, cols) to the nearest grid point, per row (@p group_size = −1) or per group of
/// @p group_size consecutive input columns (a last partial group included), on backend @p be; @p w in host memory or
/// the backend's memory; the result stays in the backend's memory.
/// @throws rsq::invalid_argument for an empty or non-finite @p w, a bad grid, or group_size 0 or < −1.
template <backend_tag B, class T>
[[nodiscard]] quantized_weight<T, B> quantize_rtn_resident(B const& be, matrix_view<const T> w, grid_spec const& grid,
                                                           index_t group_size = -1) {
  grid.validate();
  RSQ_EXPECTS(w.rows() > 0 && w.cols() > 0, "quantize_rtn: weight is empty ", rsq::detail::shape_string(w));
  RSQ_EXPECTS(group_size == -1 || group_size > 0, "quantize_rtn: group_size must be -1 (per row) or positive, got ",
              group_size);
  RSQ_EXPECTS(std::fegetround() == FE_TONEAREST, "quantize_rtn: the floating-point rounding mode must be FE_TONEAREST");
  check_group_layout(grid, w.cols(), group_size, /*act_order=*/false, /*static_groups=*/false, "quantize_rtn");
  return backend::implementation_t<algorithm::rtn, B>::template run<T>(be, w, grid, group_size);
}

/// A quantized weight of backend B's memory, copied to host memory (moved when it is there already).
template <backend_tag B, class T>
[[nodiscard]] quantized_weight<T> to_host(B const& be, quantized_weight<T, B>&& q) {
  if constexpr (std::is_same_v<quantized_weight<T, B>, quantized_weight<T>>) {
    (void)be;
    return std::move(q);
  } else {
    quantized_weight<T> h;
    h.bits = q.bits;
    h.offset = q.offset;
    h.codes = backend::to_host(be, matrix_view<const std::uint8_t>(rsq::view(q.codes)));
    h.scales = backend::to_host(be, matrix_view<const T>(rsq::view(q.scales)));
    h.zeros = backend::to_host(be, matrix_view<const T>(rsq::view(q.zeros)));
    h.g_idx = rsq::make_vector<std::int32_t>(rsq::view(q.g_idx).extent(0));
    backend::copy(be, h.g_idx.data(), rsq::view(q.g_idx).data(), rsq::view(q.g_idx).extent(0));
    return h;
  }
}

/// quantize_rtn_resident() with the result in host memory.
template <backend_tag B, class T>
[[nodiscard]] quantized_weight<T> quantize_rtn(B const& be, matrix_view<const T> w, grid_spec const& grid,
                                               index_t group_size = -1) {
  return to_host(be, quantize_rtn_resident<B, T>(be, w, grid, group_size));
}

/// @p w ← the dequantized round-to-nearest of @p w (what quantize_rtn's codes decode to), in place, in @p be's
/// memory: the fake quantization of a straight-through estimator (model/rotation_gradient.hpp), without the codes.
/// @throws rsq::invalid_argument as quantize_rtn_resident(), and for @p w outside the backend's memory
template <backend_tag B, class T>
void fake_quantize(B const& be, matrix_view<T> w, grid_spec const& grid, index_t group_size = -1) {
  grid.validate();
  RSQ_EXPECTS(w.rows() > 0 && w.cols() > 0, "fake_quantize: weight is empty ", rsq::detail::shape_string(w));
  RSQ_EXPECTS(w.stride(1) == 1 || w.cols() == 1, "fake_quantize: the weight's rows must be contiguous");
  RSQ_EXPECTS(backend::resident(be, w.data()), "fake_quantize: the weight must be in the backend's memory");
  RSQ_EXPECTS(group_size == -1 || group_size > 0, "fake_quantize: group_size must be -1 (per row) or positive, got ",
              group_size);
  RSQ_EXPECTS(std::fegetround() == FE_TONEAREST, "fake_quantize: the floating-point rounding mode must be FE_TONEAREST");
  check_group_layout(grid, w.cols(), group_size, /*act_order=*/false, /*static_groups=*/false, "fake_quantize");
  backend::implementation_t<algorithm::rtn, B>::template fake_quantize<T>(be, w, grid, group_size);
}

/// Round to nearest on the CPU backend.
template <class T>
[[nodiscard]] quantized_weight<T> quantize_rtn(matrix_view<const T> w, grid_spec const& grid,
                                               index_t group_size = -1) {
  return quantize_rtn<backend::cpu_eigen, T>(backend::cpu_eigen{}, w, grid, group_size);
}

}  // namespace rsq::quant
