// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Definitions of the GPU activation scores (<rsq/backend/cuda/activation_scores.hpp>).

#include <algorithm>
#include <string>

#include "rsq/backend/cuda/activation_scores.hpp"
#include "rsq/backend/cuda/impl/common.cuh"
#include "rsq/backend/cuda/kernels/activation_scores.cuh"

namespace rsq::cuda::detail {

template <class T>
void activation_scores_impl(backend::cuda const& be, importance::activation_statistic stat, matrix_view<const T> x,
                            matrix_view<const T> x_ref, index_t seq_len, matrix_view<float> out,
                            importance::activation_names const& names) {
  using importance::activation_statistic;
  auto& ctx = context_for(be.stream);
  cudaStream_t const s = ctx.stream();
  bool const distance = stat == activation_statistic::distance;
  std::string const x_name(names.x), ref_name(names.x_ref);  // check_finite_device takes C strings
  // The front end saw device memory; memory of another device (which no kernel here may read) is refused by name.
  RSQ_EXPECTS(resident_here(x.data(), x_name.c_str()), x_name, " is not in device memory");
  RSQ_EXPECTS(resident_here(out.data(), "activation_scores: out"), "activation_scores: out is not in device memory");
  if (distance) RSQ_EXPECTS(resident_here(x_ref.data(), ref_name.c_str()), ref_name, " is not in device memory");
  // NaN/Inf with the host's messages (the first bad element in row-major order), x before x_ref, as the CPU.
  check_finite_device(ctx, x, x_name.c_str());
  if (distance) check_finite_device(ctx, x_ref, ref_name.c_str());

  index_t const rows = x.rows(), cols = x.cols(), L = seq_len, sequences = rows / L;
  constexpr index_t max_blocks = index_t(1) << 20;  // grid-stride beyond: far below the 2^31 − 1 limit of x
  unsigned const row_blocks = unsigned(std::min(rows, max_blocks));
  constexpr int threads = kernels::activation_threads;
  // (A view with one row or column may carry the stride 0 from xtensor; the kernels then only use index 0 of it.)
  if (stat != activation_statistic::spread) {
    T const* ref = distance ? x_ref.data() : nullptr;  // nullptr: the norm of x itself
    index_t const ldr = distance ? x_ref.stride(0) : 0;
    kernels::activation_rows_kernel<true, T, T, float><<<row_blocks, threads, 0, s>>>(
        x.data(), x.stride(0), ref, ldr, index_t(1), rows, cols, L, out.data(), out.stride(0));
    RSQ_CUDA_CHECK_LAUNCH("activation_rows_kernel");
    return;
  }

  // TokenSim: μ per sequence, ‖x_t − μ‖² per token, then each sequence's spread. The scratch buffers stay the
  // context's: later work on this stream is ordered after these kernels, and a buffer that grows waits for them.
  double* const mean = ctx.buffer<double>(scratch::activation_mean, std::size_t(sequences * cols));  // (seq, hidden)
  double* const centred = ctx.buffer<double>(scratch::activation_rows, std::size_t(rows));          // (seq·L)
  kernels::sequence_mean_kernel<T><<<kernels::grid_2d(sequences, cols), 256, 0, s>>>(x.data(), x.stride(0), sequences,
                                                                                     L, cols, mean);
  RSQ_CUDA_CHECK_LAUNCH("sequence_mean_kernel");
  kernels::activation_rows_kernel<false, T, double, double><<<row_blocks, threads, 0, s>>>(
      x.data(), x.stride(0), mean, cols, L, rows, cols, L, centred, L);
  RSQ_CUDA_CHECK_LAUNCH("activation_rows_kernel");
  kernels::spread_kernel<<<unsigned(std::min(sequences, max_blocks)), threads, 0, s>>>(centred, sequences, L,
                                                                                       out.data(), out.stride(0));
  RSQ_CUDA_CHECK_LAUNCH("spread_kernel");
}

}  // namespace rsq::cuda::detail
