// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Kernels of the CUDA Hessian accumulator: checks of device inputs and the staging of √w·x (spec §5.1).

#include <cuda_bf16.h>

#include <type_traits>

#include <cstdint>

#include "rsq/backend/cuda/kernels/common.cuh"
#include "rsq/backend/cuda/kernels/gptq.cuh"

namespace rsq::cuda::kernels {

/// A batch (sequences, tokens, features) of X with arbitrary strides. Tokens are numbered flat over the batch
/// (sequence·tokens + token); a row's base offset costs one division, the features of a row none.
template <class X>
struct batch_ref {
  X const* data;
  index_t s0, s1, s2;  // strides of sequence, token, feature
  index_t tokens, features;
  __device__ __forceinline__ X const* row(index_t token_flat) const {
    return data + (token_flat / tokens) * s0 + (token_flat % tokens) * s1;
  }
};

/// First NaN/Inf of a batch, in (sequence, token, feature) order: blocks over tokens, threads over features.
template <class X>
__global__ void batch_finite_kernel(batch_ref<X> x, index_t total_tokens, validation_record* rec) {
  for (index_t t = blockIdx.x; t < total_tokens; t += gridDim.x) {
    X const* row = x.row(t);
    for (index_t f = threadIdx.x; f < x.features; f += blockDim.x)
      if (!isfinite(row[f * x.s2])) atomicMin(&rec->first_bad, static_cast<unsigned long long>(t * x.features + f));
  }
}

template <class O, class T>
__device__ __forceinline__ O convert_out(T v) {
  if constexpr (std::is_same_v<O, __nv_bfloat16>) return __float2bfloat16_rn(float(v));
  else return O(v);
}

/// Token-major staging: out(t, f) = scale[t0 + t]·T(x(t0 + t, f)) for t < nt (scale null: 1), row-major (nt, features).
template <class X, class T>
__global__ void stage_rows_kernel(batch_ref<X> x, index_t t0, index_t nt, T const* __restrict__ scale,
                                  T* __restrict__ out) {
  for (index_t t = blockIdx.x; t < nt; t += gridDim.x) {
    X const* row = x.row(t0 + t);
    T const s = scale ? scale[t0 + t] : T(1);
    for (index_t f = threadIdx.x; f < x.features; f += blockDim.x) {
      T const v = T(row[f * x.s2]);
      out[t * x.features + f] = scale ? s * v : v;
    }
  }
}

/// Feature-major staging through 32 x 32 shared-memory tiles: out(f, t) = O(scale[t]·T(x(t0 + t, f))), row-major
/// (features, ld) with ld ≥ nt; the layout that makes XᵀX a TN GEMM, the fast case of cuBLAS's tensor-core kernels.
template <class X, class T, class O>
__global__ void stage_columns_kernel(batch_ref<X> x, index_t t0, index_t nt, T const* __restrict__ scale,
                                     O* __restrict__ out, index_t ld) {
  __shared__ T tile[32][33];
  index_t const tb = index_t(blockIdx.x) * 32, fb = index_t(blockIdx.y) * 32;
  int const tx = int(threadIdx.x), ty = int(threadIdx.y);  // (32, 8)
  index_t const f = fb + tx;
  for (int yy = ty; yy < 32; yy += 8) {  // read: consecutive threads along features
    index_t const t = tb + yy;
    T v = T(0);
    if (t < nt && f < x.features) {
      v = T(x.row(t0 + t)[f * x.s2]);
      if (scale) v = scale[t0 + t] * v;
    }
    tile[yy][tx] = v;
  }
  __syncthreads();
  for (int yy = ty; yy < 32; yy += 8) {  // write: consecutive threads along tokens (zeros in the padding t ≥ nt)
    index_t const fo = fb + yy, t = tb + tx;
    if (t < ld && fo < x.features) out[fo * ld + t] = convert_out<O>(tile[tx][yy]);
  }
}

/// h(a, b) = scale·sum(max(a, b), min(a, b)) from the column-major lower triangle of sum (n, n).
template <class T>
__global__ void symmetrize_kernel(T const* __restrict__ sum, index_t n, T scale, T* __restrict__ h) {
  RSQ_FOR_ROWS(a, n) RSQ_FOR_COLS(b, n) {
    index_t const i = a > b ? a : b, j = a > b ? b : a;
    h[a * n + b] = scale * sum[i + j * n];
  }
}

/// a += b element-wise.
template <class T>
__global__ void add_kernel(T* __restrict__ a, T const* __restrict__ b, index_t n) {
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x)
    a[idx] += b[idx];
}

}  // namespace rsq::cuda::kernels
