// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The fused Hadamard kernel (spec §3): one CTA per row (grid-stride over rows), the row in shared memory with one
/// padding word per 32 (so that the strided radix passes hit distinct banks), scale and pre-signs applied on the load.
/// The Sylvester stages over the fast index b = i mod p (p = n/K = 2^m) never cross a slice, so they run over the
/// whole row at once: radix-8 passes (three stages in registers per element loaded), the last pass storing straight
/// to global memory when K = 1. For K > 1, every thread mixes one column b of the (K, p) view: 16 outputs at a time,
/// each a ±sum of the K inputs read from shared memory, signs from a bit table (hadK, or hadKᵀ for the transpose).

#include <cstdint>

#include "rsq/backend/cuda/kernels/common.cuh"

namespace rsq::cuda::kernels {

__host__ __device__ __forceinline__ int padded(int i) { return i + (i >> 5); }

/// One radix-2^RB pass of Sylvester stages s, s+1, ..., s+RB−1 over the padded buffer (or, if @p out, the last pass
/// writing to global memory with post-signs).
template <class T, int RB, int NT>
__device__ __forceinline__ void fwht_pass(T* buf, int n, int s, T* out, std::int8_t const* post) {
  int const h = 1 << s, groups = n >> RB;
  for (int g = int(threadIdx.x); g < groups; g += NT) {
    int const lo = g & (h - 1), hi = g >> s;
    int const j = (hi << (s + RB)) | lo;
    T v[1 << RB];
#pragma unroll
    for (int q = 0; q < (1 << RB); ++q) v[q] = buf[padded(j + q * h)];
#pragma unroll
    for (int t = 0; t < RB; ++t)
#pragma unroll
      for (int q = 0; q < (1 << RB); ++q)
        if (!(q & (1 << t))) {
          T const a = v[q], b = v[q | (1 << t)];
          v[q] = a + b;
          v[q | (1 << t)] = a - b;
        }
    if (out) {
#pragma unroll
      for (int q = 0; q < (1 << RB); ++q) {
        int const i = j + q * h;
        out[i] = (post && post[i] < 0) ? -v[q] : v[q];
      }
    } else {
#pragma unroll
      for (int q = 0; q < (1 << RB); ++q) buf[padded(j + q * h)] = v[q];
    }
  }
}

/// Loads groups of 8 consecutive elements of a row (two 16-byte loads when VEC), applies scale and pre-signs, runs the
/// first min(m, 3) Sylvester stages in registers (butterflies at h < 8 stay inside the group), and stores the group
/// to the padded buffer, or, when these stages are all there is and K = 1, straight back to the row.
template <class T, int NT, bool VEC>
__device__ __forceinline__ void load_first_pass(T* buf, T const* row, int n, int m, T scale, std::int8_t const* pre,
                                                T* out, std::int8_t const* post) {
  int const stages = m < 3 ? m : 3;
  for (int g = int(threadIdx.x); g < n / 8; g += NT) {
    int const j = 8 * g;
    T v[8];
    if constexpr (VEC && sizeof(T) == 4) {
      float4 const a = reinterpret_cast<float4 const*>(row + j)[0], b = reinterpret_cast<float4 const*>(row + j)[1];
      v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else if constexpr (VEC) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        double2 const a = reinterpret_cast<double2 const*>(row + j)[q];
        v[2 * q] = a.x;
        v[2 * q + 1] = a.y;
      }
    } else {
#pragma unroll
      for (int q = 0; q < 8; ++q) v[q] = row[j + q];
    }
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      v[q] *= scale;
      if (pre && pre[j + q] < 0) v[q] = -v[q];
    }
#pragma unroll
    for (int t = 0; t < 3; ++t)
      if (t < stages)
#pragma unroll
        for (int q = 0; q < 8; ++q)
          if (!(q & (1 << t))) {
            T const a = v[q], b = v[q | (1 << t)];
            v[q] = a + b;
            v[q | (1 << t)] = a - b;
          }
    if (out) {
#pragma unroll
      for (int q = 0; q < 8; ++q) out[j + q] = (post && post[j + q] < 0) ? -v[q] : v[q];
    } else {
#pragma unroll
      for (int q = 0; q < 8; ++q) buf[padded(j + q)] = v[q];
    }
  }
}

/// The fused transform of rows of length n = K·2^m (n a multiple of 8, or n < 8 with K = 1 through the scalar path).
/// Mix tables: @p mixf (ceil(K/16), K, 16) floats ±1 with mixf[(c·K + a)·16 + q] = op(hadK)[16c + q][a] (FMA path,
/// staged in shared memory), or, if null, @p mix (ceil(K/16), K) bits (bit q set for +1; select path).
template <class T, int NT, bool VEC>
__global__ void __launch_bounds__(NT) hadamard_kernel(T* __restrict__ x, index_t ld, index_t rows, int n, int m, int k,
                                                      float const* __restrict__ mixf,
                                                      std::uint16_t const* __restrict__ mix,
                                                      std::int8_t const* __restrict__ pre,
                                                      std::int8_t const* __restrict__ post, T scale) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  int const chunks = (k + 15) / 16;
  // Shared memory: the float mix table (if any) first, 16-byte aligned for float4 reads, then the padded row.
  float* mixf_sh = reinterpret_cast<float*>(smem_raw);
  int const mixf_floats = (k > 1 && mixf) ? chunks * k * 16 : 0;
  auto* mix_sh = reinterpret_cast<std::uint16_t*>(mixf_sh + mixf_floats);
  int const mix_words = (k > 1 && !mixf) ? (chunks * k + 7) / 8 * 8 : 0;
  T* buf = reinterpret_cast<T*>(mix_sh + mix_words);
  for (int i = int(threadIdx.x); i < mixf_floats; i += NT) mixf_sh[i] = mixf[i];
  for (int i = int(threadIdx.x); i < (mix_words ? chunks * k : 0); i += NT) mix_sh[i] = mix[i];
  int const p = n / k;
  for (index_t r = blockIdx.x; r < rows; r += gridDim.x) {
    T* row = x + r * ld;
    // n a multiple of 8: the first three stages in registers on the load; otherwise (n = K·2^m with m ≤ 1, or
    // n < 8) a plain load and every stage in the passes below.
    bool const groups8 = n % 8 == 0;
    int const s0 = groups8 ? (m < 3 ? m : 3) : 0;
    bool const done_after_first = groups8 && k == 1 && m <= 3;
    if (groups8) {
      load_first_pass<T, NT, VEC>(buf, row, n, m, scale, pre, done_after_first ? row : nullptr, post);
    } else {
      for (int i = int(threadIdx.x); i < n; i += NT) {
        T v = row[i] * scale;
        if (pre && pre[i] < 0) v = -v;
        buf[padded(i)] = v;
      }
    }
    __syncthreads();
    if (!done_after_first) {
      int s = s0;
      while (s < m) {
        int const rb = m - s >= 3 ? 3 : m - s;
        T* const out = (k == 1 && s + rb == m) ? row : nullptr;
        if (rb == 3) fwht_pass<T, 3, NT>(buf, n, s, out, post);
        else if (rb == 2) fwht_pass<T, 2, NT>(buf, n, s, out, post);
        else fwht_pass<T, 1, NT>(buf, n, s, out, post);
        __syncthreads();
        s += rb;
      }
      if (k == 1 && m == 0)  // n = 1: the transform is the scale
        for (int i = int(threadIdx.x); i < n; i += NT) row[i] = (post && post[i] < 0) ? -buf[padded(i)] : buf[padded(i)];
      if (k > 1) {
        for (int b = int(threadIdx.x); b < p; b += NT) {
          for (int c = 0; c < chunks; ++c) {
            T acc[16];
#pragma unroll
            for (int q = 0; q < 16; ++q) acc[q] = T(0);
            if (mixf_floats) {
              float4 const* sg = reinterpret_cast<float4 const*>(mixf_sh + c * k * 16);
              for (int a = 0; a < k; ++a) {
                T const v = buf[padded(a * p + b)];
#pragma unroll
                for (int q4 = 0; q4 < 4; ++q4) {
                  float4 const w = sg[a * 4 + q4];  // the same address in every lane: a broadcast
                  acc[4 * q4 + 0] += T(w.x) * v;
                  acc[4 * q4 + 1] += T(w.y) * v;
                  acc[4 * q4 + 2] += T(w.z) * v;
                  acc[4 * q4 + 3] += T(w.w) * v;
                }
              }
            } else {
              for (int a = 0; a < k; ++a) {
                T const v = buf[padded(a * p + b)];
                unsigned const bits = mix_sh[c * k + a];
#pragma unroll
                for (int q = 0; q < 16; ++q) acc[q] += ((bits >> q) & 1u) ? v : -v;
              }
            }
#pragma unroll
            for (int q = 0; q < 16; ++q) {
              int const a = c * 16 + q;
              if (a < k) {
                int const i = a * p + b;
                row[i] = (post && post[i] < 0) ? -acc[q] : acc[q];
              }
            }
          }
        }
      }
    }
    __syncthreads();  // the buffer is refilled for the next row
  }
}

}  // namespace rsq::cuda::kernels
