// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Definition of the CUDA round-to-nearest quantization (<rsq/backend/cuda/rtn.hpp>).

#include <cstdint>
#include <vector>

#include "rsq/backend/cuda/impl/common.cuh"
#include "rsq/backend/cuda/kernels/gptq.cuh"
#include "rsq/backend/cuda/kernels/quant.cuh"
#include "rsq/backend/cuda/rtn.hpp"

namespace rsq::cuda::kernels {

/// codes(r, c) = encode(w(r, c)) on the grid of (r, c div group).
template <class T>
__global__ void rtn_encode_kernel(T const* __restrict__ w, index_t rows, index_t cols, index_t group,
                                  T const* __restrict__ scales, T const* __restrict__ zeros, index_t groups,
                                  int max_code, bool offset, std::uint8_t* __restrict__ codes) {
  RSQ_FOR_ROWS(r, rows) RSQ_FOR_COLS(c, cols) {
    index_t const g = c / group;
    codes[r * cols + c] = std::uint8_t(encode(w[r * cols + c], scales[r * groups + g], zeros[r * groups + g], max_code, offset));
  }
}

/// w(r, c) ← decode(encode(w(r, c))) on the grid of (r, c div group), in place (row stride ld).
template <class T>
__global__ void rtn_fake_kernel(T* __restrict__ w, index_t ld, index_t rows, index_t cols, index_t group,
                                T const* __restrict__ scales, T const* __restrict__ zeros, index_t groups,
                                int max_code, bool offset) {
  RSQ_FOR_ROWS(r, rows) RSQ_FOR_COLS(c, cols) {
    index_t const g = c / group;
    T const s = scales[r * groups + g], z = zeros[r * groups + g];
    w[r * ld + c] = decode(encode(w[r * ld + c], s, z, max_code, offset), s, z, offset);
  }
}

}  // namespace rsq::cuda::kernels

namespace rsq::cuda::detail {

template <class T>
quant::quantized_weight<T, backend::cuda> rtn_impl(backend::cuda const& be, matrix_view<const T> w,
                                                   quant::grid_spec const& grid, index_t group_size) {
  auto& ctx = context_for(be.stream);
  cudaStream_t const s = ctx.stream();
  bool const on_device = resident_here(w.data(), "quantize_rtn: the weight");
  if (on_device)
    check_finite_device(ctx, w, "quantize_rtn: weight");
  else
    rsq::detail::check_finite(w, "quantize_rtn: weight");
  index_t const rows = w.rows(), cols = w.cols();
  index_t const g = group_size == -1 ? cols : group_size, groups = (cols + g - 1) / g;
  auto const wd = to_device_matrix<T, T>(w, on_device, s);  // (rows, cols) contiguous
  auto const dg = kernels::device_grid::from(grid);

  quant::quantized_weight<T, backend::cuda> q;
  q.bits = grid.bits;
  q.offset = grid.offset_form();
  q.scales = device_matrix<T>(rows, groups);
  q.zeros = device_matrix<T>(rows, groups);
  q.codes = device_matrix<std::uint8_t>(rows, cols);
  std::vector<std::int32_t> g_idx(static_cast<std::size_t>(cols));
  for (index_t c = 0; c < cols; ++c) g_idx[std::size_t(c)] = std::int32_t(c / g);
  q.g_idx = to_device(g_idx, be);
  int const fit_threads = 128, fit_warps = fit_threads / 32;
  index_t const tasks = rows * groups;
  kernels::fit_kernel<T><<<unsigned((tasks + fit_warps - 1) / fit_warps), fit_threads, 0, s>>>(
      wd.data(), cols, rows, cols, 0, g, groups, 0, dg, q.scales.data(), q.zeros.data(), groups);
  RSQ_CUDA_CHECK_LAUNCH("fit_kernel");
  kernels::rtn_encode_kernel<T><<<kernels::grid_2d(rows, cols), 256, 0, s>>>(
      wd.data(), rows, cols, g, q.scales.data(), q.zeros.data(), groups, dg.max_code, dg.offset, q.codes.data());
  RSQ_CUDA_CHECK_LAUNCH("rtn_encode_kernel");
  RSQ_CUDA_CHECK(cudaStreamSynchronize(s));  // wd is freed on return
  return q;
}

template <class T>
void fake_quantize_impl(backend::cuda const& be, matrix_view<T> w, quant::grid_spec const& grid, index_t group_size) {
  auto& ctx = context_for(be.stream);
  cudaStream_t const s = ctx.stream();
  (void)resident_here(w.data(), "fake_quantize: the weight");
  check_finite_device(ctx, matrix_view<const T>(w), "fake_quantize: weight");
  index_t const rows = w.rows(), cols = w.cols(), ld = rows > 1 ? w.stride(0) : cols;
  index_t const g = group_size == -1 ? cols : group_size, groups = (cols + g - 1) / g;
  auto const dg = kernels::device_grid::from(grid);
  device_matrix<T> scales(rows, groups), zeros(rows, groups);
  int const fit_threads = 128, fit_warps = fit_threads / 32;
  kernels::fit_kernel<T><<<unsigned((rows * groups + fit_warps - 1) / fit_warps), fit_threads, 0, s>>>(
      w.data(), ld, rows, cols, 0, g, groups, 0, dg, scales.data(), zeros.data(), groups);
  RSQ_CUDA_CHECK_LAUNCH("fit_kernel");
  kernels::rtn_fake_kernel<T><<<kernels::grid_2d(rows, cols), 256, 0, s>>>(w.data(), ld, rows, cols, g, scales.data(),
                                                                           zeros.data(), groups, dg.max_code,
                                                                           dg.offset);
  RSQ_CUDA_CHECK_LAUNCH("rtn_fake_kernel");
  RSQ_CUDA_CHECK(cudaStreamSynchronize(s));  // scales and zeros are freed on return
}

}  // namespace rsq::cuda::detail
