// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Kernels of the activation scores (ActNorm, ActDiff, TokenSim; spec §4.4). Every sum is in double and has a fixed
/// order: a thread sums its own elements in index order, a warp combines its lanes by a butterfly (warp_sum: the
/// same bits in every lane), and thread 0 adds the warps' sums in warp order. No floating-point atomics, so a run
/// gives the same bits as the last one.

#include "rsq/backend/cuda/kernels/common.cuh"

namespace rsq::cuda::kernels {

/// Threads of a block of the row and sequence kernels (their reductions assume exactly this many).
inline constexpr int activation_threads = 256;

/// The sum of @p v over the block's activation_threads threads, in thread 0 (unspecified elsewhere). @p part holds
/// one value per warp; the caller synchronizes the block before calling again.
__device__ __forceinline__ double activation_block_sum(double v, double* part) {
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  double total = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < activation_threads / 32; ++w) total += part[w];
  return total;
}

/// For each row r of x (rows, cols), contiguous columns, row pitch ldx, one block per row (grid-stride):
///   acc = Σ_c (x(r, c) − ref(r div ref_div, c))²   or, with ref == nullptr,   acc = Σ_c x(r, c)²,
/// written as out[(r div seq_len)·ldo + r mod seq_len] = O(√acc) (Root: ActNorm, ActDiff) or O(acc) (TokenSim's
/// ‖x_t − μ‖², ref the per-sequence mean with ref_div = seq_len).
template <bool Root, class T, class R, class O>
__global__ void __launch_bounds__(activation_threads)
    activation_rows_kernel(T const* __restrict__ x, index_t ldx, R const* __restrict__ ref, index_t ldr,
                           index_t ref_div, index_t rows, index_t cols, index_t seq_len, O* __restrict__ out,
                           index_t ldo) {
  __shared__ double part[activation_threads / 32];
  for (index_t r = blockIdx.x; r < rows; r += gridDim.x) {  // the same trip count in every thread of the block
    T const* xr = x + r * ldx;
    double acc = 0;
    if (ref == nullptr) {
      for (index_t c = threadIdx.x; c < cols; c += activation_threads) {
        double const v = double(xr[c]);
        acc += v * v;
      }
    } else {
      R const* rr = ref + (r / ref_div) * ldr;
      for (index_t c = threadIdx.x; c < cols; c += activation_threads) {
        double const v = double(xr[c]) - double(rr[c]);
        acc += v * v;
      }
    }
    double const total = activation_block_sum(acc, part);
    if (threadIdx.x == 0) out[(r / seq_len) * ldo + r % seq_len] = O(Root ? sqrt(total) : total);
    __syncthreads();  // part is written again for the next row
  }
}

/// mean(j, c) = (1/seq_len) Σ_t x(j·seq_len + t, c) for every sequence j and column c (one thread each), the tokens
/// summed in order, as the CPU does; reads are coalesced along the columns. Launch: grid_2d(sequences, cols), 256.
template <class T>
__global__ void sequence_mean_kernel(T const* __restrict__ x, index_t ldx, index_t sequences, index_t seq_len,
                                     index_t cols, double* __restrict__ mean) {
  RSQ_FOR_ROWS(j, sequences) RSQ_FOR_COLS(c, cols) {
    T const* p = x + j * seq_len * ldx + c;
    double acc = 0;
    for (index_t t = 0; t < seq_len; ++t) acc += double(p[t * ldx]);
    mean[j * cols + c] = acc / double(seq_len);
  }
}

/// TokenSim's scores of each sequence j (one block per sequence, grid-stride), from centred = ‖x_t − μ‖²
/// (sequences·seq_len, contiguous): out[j·ldo + t] = float(centred_t + (1/seq_len) Σ_t' centred_t').
__global__ void __launch_bounds__(activation_threads)
    spread_kernel(double const* __restrict__ centred, index_t sequences, index_t seq_len, float* __restrict__ out,
                  index_t ldo) {
  __shared__ double part[activation_threads / 32];
  __shared__ double spread;
  for (index_t j = blockIdx.x; j < sequences; j += gridDim.x) {
    double const* cj = centred + j * seq_len;
    double acc = 0;
    for (index_t t = threadIdx.x; t < seq_len; t += activation_threads) acc += cj[t];
    double const total = activation_block_sum(acc, part);
    if (threadIdx.x == 0) spread = total / double(seq_len);
    __syncthreads();
    for (index_t t = threadIdx.x; t < seq_len; t += activation_threads) out[j * ldo + t] = float(cj[t] + spread);
    __syncthreads();  // part and spread are written again for the next sequence
  }
}

}  // namespace rsq::cuda::kernels
