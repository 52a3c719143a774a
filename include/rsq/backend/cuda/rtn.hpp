// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CUDA backend of round-to-nearest quantization (algorithm::rtn, <rsq/quant/rtn.hpp>): the grids of every
/// (row, group) fitted by the solver's fit kernel (the formulas of quant/grid.hpp, so the codes are the CPU's), then
/// one encoding pass. W in host or device memory; the result in device memory. fake_quantize: the same fit, then
/// one pass that writes each weight's decoded code in place (device memory).
/// Declarations only; definitions in <rsq/backend/cuda/impl/rtn.cuh>.

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/quant/grid.hpp"
#include "rsq/quant/quantized_weight.hpp"

namespace rsq::cuda::detail {

template <class T>
[[nodiscard]] quant::quantized_weight<T, backend::cuda> rtn_impl(backend::cuda const& be, matrix_view<const T> w,
                                                                 quant::grid_spec const& grid, index_t group_size);
extern template quant::quantized_weight<float, backend::cuda> rtn_impl<float>(backend::cuda const&,
                                                                              matrix_view<const float>,
                                                                              quant::grid_spec const&, index_t);
extern template quant::quantized_weight<double, backend::cuda> rtn_impl<double>(backend::cuda const&,
                                                                                matrix_view<const double>,
                                                                                quant::grid_spec const&, index_t);
template <class T>
void fake_quantize_impl(backend::cuda const& be, matrix_view<T> w, quant::grid_spec const& grid, index_t group_size);
extern template void fake_quantize_impl<float>(backend::cuda const&, matrix_view<float>, quant::grid_spec const&,
                                               index_t);
extern template void fake_quantize_impl<double>(backend::cuda const&, matrix_view<double>, quant::grid_spec const&,
                                                index_t);

}  // namespace rsq::cuda::detail

namespace rsq::backend {

template <>
struct implementation<algorithm::rtn, cuda> {
  static constexpr bool available = true;

  template <class T>
  static quant::quantized_weight<T, cuda> run(cuda const& be, matrix_view<const T> w, quant::grid_spec const& grid,
                                              index_t group_size) {
    return rsq::cuda::detail::rtn_impl<T>(be, w, grid, group_size);
  }

  template <class T>
  static void fake_quantize(cuda const& be, matrix_view<T> w, quant::grid_spec const& grid, index_t group_size) {
    rsq::cuda::detail::fake_quantize_impl<T>(be, w, grid, group_size);
  }
};

}  // namespace rsq::backend
