// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Small device helpers shared by the kernels: warp reductions, launch sizes, atomic "first bad element" and
/// "largest value" records.

#include <cstdint>

#include "rsq/core/view.hpp"

namespace rsq::cuda::kernels {

inline constexpr unsigned full_mask = 0xffffffffu;

/// Blocks of @p threads needed for @p n items, capped for grid-stride loops.
[[nodiscard]] inline unsigned blocks_for(index_t n, int threads, index_t cap = index_t(1) << 20) {
  index_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  return unsigned(b < cap ? b : cap);
}

/// A 2-D launch for element-wise work on a (rows, cols) matrix: blocks of 256 threads along the columns, grid rows
/// along the matrix rows (the kernels loop with RSQ_FOR_ROWS / RSQ_FOR_COLS, no per-element division).
[[nodiscard]] inline dim3 grid_2d(index_t rows, index_t cols) {
  index_t const x = (cols + 255) / 256;
  return dim3(unsigned(x < 64 ? (x > 0 ? x : 1) : 64), unsigned(rows < 65535 ? (rows > 0 ? rows : 1) : 65535));
}
#define RSQ_FOR_ROWS(r, rows) for (index_t r = blockIdx.y; r < (rows); r += gridDim.y)
#define RSQ_FOR_COLS(c, cols) \
  for (index_t c = index_t(blockIdx.x) * blockDim.x + threadIdx.x; c < (cols); c += index_t(gridDim.x) * blockDim.x)

/// Sum over the warp by a butterfly: every lane ends with the same, bitwise identical value (each step adds the
/// same two operands in every lane, only swapped).
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(full_mask, v, off);
  return v;
}
template <class T>
__device__ __forceinline__ T warp_min(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmin(v, __shfl_xor_sync(full_mask, v, off));
  return v;
}
template <class T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_xor_sync(full_mask, v, off));
  return v;
}

/// Non-negative float as an order-preserving unsigned key (for atomicMax).
__device__ __forceinline__ unsigned long long magnitude_key(double v, unsigned long long index) {
  float const f = float(v);
  return (static_cast<unsigned long long>(__float_as_uint(f)) << 32) | (index & 0xffffffffull);
}

/// A finite check that also works for half types converted to float.
template <class T>
__device__ __forceinline__ bool finite(T v) {
  return isfinite(v);
}

/// dst (rows, cols) contiguous ← src(r, c) at src[r·s0 + c·s1], converted to T: a strided view made contiguous.
template <class S, class T>
__global__ void gather_kernel(S const* __restrict__ src, index_t s0, index_t s1, index_t rows, index_t cols,
                              T* __restrict__ dst) {
  RSQ_FOR_ROWS(r, rows) RSQ_FOR_COLS(c, cols) dst[r * cols + c] = T(src[r * s0 + c * s1]);
}

/// dst (n0·n1, n2) contiguous ← src(a, b, c) at src[a·s0 + b·s1 + c·s2]: a strided batch of matrices made one
/// contiguous matrix of rows (a, b).
template <class T>
__global__ void gather3_kernel(T const* __restrict__ src, index_t s0, index_t s1, index_t s2, index_t n0, index_t n1,
                               index_t n2, T* __restrict__ dst) {
  RSQ_FOR_ROWS(r, n0 * n1) {
    T const* row = src + (r / n1) * s0 + (r % n1) * s1;
    RSQ_FOR_COLS(c, n2) dst[r * n2 + c] = row[c * s2];
  }
}

/// The inverse of gather3_kernel.
template <class T>
__global__ void scatter3_kernel(T const* __restrict__ src, index_t n0, index_t n1, index_t n2, T* __restrict__ dst,
                                index_t s0, index_t s1, index_t s2) {
  RSQ_FOR_ROWS(r, n0 * n1) {
    T* row = dst + (r / n1) * s0 + (r % n1) * s1;
    RSQ_FOR_COLS(c, n2) row[c * s2] = src[r * n2 + c];
  }
}

/// The inverse of gather_kernel: dst[r·s0 + c·s1] ← src (rows, cols) contiguous.
template <class S, class T>
__global__ void scatter_kernel(S const* __restrict__ src, index_t rows, index_t cols, T* __restrict__ dst,
                               index_t s0, index_t s1) {
  RSQ_FOR_ROWS(r, rows) RSQ_FOR_COLS(c, cols) dst[r * s0 + c * s1] = T(src[r * cols + c]);
}

}  // namespace rsq::cuda::kernels
