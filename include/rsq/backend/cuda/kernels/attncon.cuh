// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Kernels of the GPU AttnCon (spec §4.2).

#include <cstdint>

#include "rsq/backend/cuda/kernels/common.cuh"
#include "rsq/backend/cuda/kernels/gptq.cuh"

namespace rsq::cuda::kernels {

/// A rank-3 strided array.
template <class T>
struct array3 {
  T const* data;
  index_t s0, s1, s2;
  __device__ __forceinline__ T at(index_t a, index_t b, index_t c) const { return data[a * s0 + b * s1 + c * s2]; }
};

/// Rows of given probabilities: one warp per (head, row i) sums A[h, i, 0..i] in double and records the first
/// non-finite or negative entry (row-major order) and stores the row sum.
template <class T>
__global__ void probs_rows_kernel(array3<T> a, index_t heads, index_t L, double* row_sums, validation_record* rec) {
  index_t const task = index_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  int const lane = int(threadIdx.x % 32);
  if (task >= heads * L) return;
  index_t const h = task / L, i = task % L;
  double s = 0;
  for (index_t k = lane; k <= i; k += 32) {
    T const v = a.at(h, i, k);
    if (!(isfinite(v) && v >= T(0))) atomicMin(&rec->first_bad, static_cast<unsigned long long>((h * L + i) * L + k));
    s += double(v);
  }
  s = warp_sum(s);
  if (lane == 0) row_sums[task] = s;
}

/// partial[h·L + t] = Σ_{i ≥ t} A[h, i, t] in double (threads along t: coalesced reads of each row i).
template <class T>
__global__ void probs_columns_kernel(array3<T> a, index_t L, double* partial) {
  index_t const h = blockIdx.y;
  for (index_t t = index_t(blockIdx.x) * blockDim.x + threadIdx.x; t < L; t += index_t(gridDim.x) * blockDim.x) {
    double s = 0;
    for (index_t i = t; i < L; ++i) s += double(a.at(h, i, t));
    partial[h * L + t] = s;
  }
}

/// Row statistics of a block of logits S (batch, nq, ld) for queries i0 + r: the maximum m_r and 1/Σ exp(S − m_r)
/// over the visible keys 0..i0+r, in T (as the CPU: exp and the sum in T). One block per (batch, r).
template <class T>
__global__ void softmax_stats_kernel(T const* __restrict__ s, index_t ld, index_t stride_batch, index_t nq, index_t i0,
                                     T* __restrict__ mx, T* __restrict__ inv) {
  index_t const b = blockIdx.y, r = blockIdx.x;
  index_t const visible = i0 + r + 1;
  T const* row = s + b * stride_batch + r * ld;
  __shared__ T red[32];
  T m = -INFINITY;
  for (index_t k = threadIdx.x; k < visible; k += blockDim.x) m = fmax(m, row[k]);
  m = warp_max(m);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = m;
  __syncthreads();
  if (threadIdx.x < 32) {
    T v = threadIdx.x < blockDim.x / 32 ? red[threadIdx.x] : T(-INFINITY);
    red[threadIdx.x] = warp_max(v);
  }
  __syncthreads();
  m = red[0];
  __syncthreads();
  T sum = 0;
  for (index_t k = threadIdx.x; k < visible; k += blockDim.x) sum += exp(row[k] - m);
  sum = warp_sum(sum);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    T t = 0;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) t += red[w];
    mx[b * nq + r] = m;
    inv[b * nq + r] = T(1) / t;
  }
}

/// partial[(h0 + b)·L + t] += Σ_{r: i0 + r ≥ t} exp(S[b, r, t] − m_r)·inv_r, in double, for t < i0 + nq.
template <class T>
__global__ void softmax_columns_kernel(T const* __restrict__ s, index_t ld, index_t stride_batch, index_t nq, index_t i0,
                                       T const* __restrict__ mx, T const* __restrict__ inv, index_t h0, index_t L,
                                       double* __restrict__ partial) {
  index_t const b = blockIdx.y, n = i0 + nq;
  for (index_t t = index_t(blockIdx.x) * blockDim.x + threadIdx.x; t < n; t += index_t(gridDim.x) * blockDim.x) {
    double acc = 0;
    for (index_t r = t > i0 ? t - i0 : 0; r < nq; ++r)
      acc += double(exp(s[b * stride_batch + r * ld + t] - mx[b * nq + r]) * inv[b * nq + r]);
    partial[(h0 + b) * L + t] += acc;
  }
}

/// scores[t] = T(Σ_h partial[h·L + t]), heads in order.
template <class T>
__global__ void heads_sum_kernel(double const* __restrict__ partial, index_t heads, index_t L, T* __restrict__ out) {
  for (index_t t = index_t(blockIdx.x) * blockDim.x + threadIdx.x; t < L; t += index_t(gridDim.x) * blockDim.x) {
    double v = 0;
    for (index_t h = 0; h < heads; ++h) v += partial[h * L + t];
    out[t] = T(v);
  }
}

/// First NaN/Inf of a strided rank-3 array (row-major order).
template <class T>
__global__ void finite3_kernel(array3<T> a, index_t n0, index_t n1, index_t n2, validation_record* rec) {
  RSQ_FOR_ROWS(row, n0 * n1) {
    index_t const i = row / n1, j = row % n1;
    RSQ_FOR_COLS(k, n2) {
      if (!isfinite(a.at(i, j, k))) atomicMin(&rec->first_bad, static_cast<unsigned long long>(row * n2 + k));
    }
  }
}

}  // namespace rsq::cuda::kernels
