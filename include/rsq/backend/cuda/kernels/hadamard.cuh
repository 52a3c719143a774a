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

/// Where element e of a CTA's "super row" lives: the CTA takes rpi = 2^lr consecutive rows at a time (short rows),
/// element e being element e mod n of row r0 + e div n.
template <class T>
struct row_block {
  T* x;
  index_t ld, r0, rows;
  int n, lr, ln;  // rows per iteration 2^lr; ln = log2 n when lr > 0
  __device__ __forceinline__ int row_of(int e) const { return lr ? (e >> ln) : 0; }
  __device__ __forceinline__ int col_of(int e) const { return lr ? (e & (n - 1)) : e; }
  __device__ __forceinline__ bool valid(int e) const { return r0 + row_of(e) < rows; }
  __device__ __forceinline__ T* at(int e) const { return x + (r0 + row_of(e)) * ld + col_of(e); }
};

/// One radix-2^RB pass of Sylvester stages s, s+1, ..., s+RB−1 over the padded buffer of N elements (or, if @p out,
/// the last pass writing to global memory with post-signs).
template <class T, int RB, int NT>
__device__ __forceinline__ void fwht_pass(T* buf, int N, int s, bool to_global, row_block<T> const& out,
                                          std::int8_t const* post) {
  int const h = 1 << s, groups = N >> RB;
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
    if (to_global) {
#pragma unroll
      for (int q = 0; q < (1 << RB); ++q) {
        int const e = j + q * h;
        if (!out.valid(e)) continue;
        int const i = out.col_of(e);
        *out.at(e) = (post && post[i] < 0) ? -v[q] : v[q];
      }
    } else {
#pragma unroll
      for (int q = 0; q < (1 << RB); ++q) buf[padded(j + q * h)] = v[q];
    }
  }
}

/// Loads the PF groups of 8 consecutive elements that thread tid handles (g = tid + f·NT) of a super row into
/// registers (two 16-byte loads per group when VEC); rows past the end read as zeros.
template <class T, int NT, bool VEC, int PF>
__device__ __forceinline__ void prefetch(T (&v)[PF][8], row_block<T> const& rb, int groups) {
#pragma unroll
  for (int f = 0; f < PF; ++f) {
    int const g = int(threadIdx.x) + f * NT;
    if (g >= groups || !rb.valid(8 * g)) {
#pragma unroll
      for (int q = 0; q < 8; ++q) v[f][q] = T(0);
      continue;
    }
    T const* src = rb.at(8 * g);
    if constexpr (VEC && sizeof(T) == 4) {
      float4 const a = reinterpret_cast<float4 const*>(src)[0], b = reinterpret_cast<float4 const*>(src)[1];
      v[f][0] = a.x, v[f][1] = a.y, v[f][2] = a.z, v[f][3] = a.w, v[f][4] = b.x, v[f][5] = b.y, v[f][6] = b.z,
      v[f][7] = b.w;
    } else if constexpr (VEC) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        double2 const a = reinterpret_cast<double2 const*>(src)[q];
        v[f][2 * q] = a.x;
        v[f][2 * q + 1] = a.y;
      }
    } else {
#pragma unroll
      for (int q = 0; q < 8; ++q) v[f][q] = src[q];
    }
  }
}

/// Scale, pre-signs and the first min(m, 3) Sylvester stages on the prefetched groups (butterflies at h < 8 stay
/// inside a group), then into the padded buffer, or straight back to global memory when that is the whole transform.
template <class T, int NT, int PF>
__device__ __forceinline__ void first_pass(T (&v)[PF][8], T* buf, row_block<T> const& rb, int groups, int m, T scale,
                                           std::int8_t const* pre, bool to_global, std::int8_t const* post) {
  int const stages = m < 3 ? m : 3;
#pragma unroll
  for (int f = 0; f < PF; ++f) {
    int const g = int(threadIdx.x) + f * NT;
    if (g >= groups) continue;
    int const e0 = 8 * g, i0 = rb.col_of(e0);
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      v[f][q] *= scale;
      if (pre && pre[i0 + q] < 0) v[f][q] = -v[f][q];
    }
#pragma unroll
    for (int t = 0; t < 3; ++t)
      if (t < stages)
#pragma unroll
        for (int q = 0; q < 8; ++q)
          if (!(q & (1 << t))) {
            T const a = v[f][q], b = v[f][q | (1 << t)];
            v[f][q] = a + b;
            v[f][q | (1 << t)] = a - b;
          }
    if (to_global) {
      if (!rb.valid(e0)) continue;
      T* dst = rb.at(e0);
#pragma unroll
      for (int q = 0; q < 8; ++q) dst[q] = (post && post[i0 + q] < 0) ? -v[f][q] : v[f][q];
    } else {
#pragma unroll
      for (int q = 0; q < 8; ++q) buf[padded(e0 + q)] = v[f][q];
    }
  }
}

/// The K x K mix of one row in the buffer (K > 1): column b of the (K, p) view, 8 outputs at a time from the ±1 float
/// table (ceil(K/8), K, 8), or 16 at a time from the bit table (ceil(K/16), K).
template <class T, int NT>
__device__ __forceinline__ void mix_pass(T const* buf, row_block<T> const& rb, int n, int k, float const* mixf_sh,
                                         std::uint16_t const* mix_sh, std::int8_t const* post) {
  int const p = n / k;
  T* const row = rb.x + rb.r0 * rb.ld;
  for (int b = int(threadIdx.x); b < p; b += NT) {
    if (mixf_sh) {
      for (int c = 0; c < (k + 7) / 8; ++c) {
        T acc[8];
#pragma unroll
        for (int q = 0; q < 8; ++q) acc[q] = T(0);
        float4 const* sg = reinterpret_cast<float4 const*>(mixf_sh + c * k * 8);
        for (int a = 0; a < k; ++a) {
          T const v = buf[padded(a * p + b)];
          float4 const w0 = sg[a * 2], w1 = sg[a * 2 + 1];  // the same address in every lane: a broadcast
          acc[0] += T(w0.x) * v;
          acc[1] += T(w0.y) * v;
          acc[2] += T(w0.z) * v;
          acc[3] += T(w0.w) * v;
          acc[4] += T(w1.x) * v;
          acc[5] += T(w1.y) * v;
          acc[6] += T(w1.z) * v;
          acc[7] += T(w1.w) * v;
        }
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          int const a = c * 8 + q;
          if (a < k) {
            int const i = a * p + b;
            row[i] = (post && post[i] < 0) ? -acc[q] : acc[q];
          }
        }
      }
    } else {
      for (int c = 0; c < (k + 15) / 16; ++c) {
        T acc[16];
#pragma unroll
        for (int q = 0; q < 16; ++q) acc[q] = T(0);
        for (int a = 0; a < k; ++a) {
          T const v = buf[padded(a * p + b)];
          unsigned const bits = mix_sh[c * k + a];
#pragma unroll
          for (int q = 0; q < 16; ++q) acc[q] += ((bits >> q) & 1u) ? v : -v;
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

/// The fused transform. Each CTA takes 2^lr rows at a time (lr > 0 only for short power-of-two rows), as one "super
/// row" of N = 2^lr·n elements in shared memory. With PF > 0 (n a multiple of 8, N/8 ≤ PF·NT) every thread holds its
/// PF groups of 8 elements in registers and loads the next super row's groups right after storing the current ones,
/// so that the global loads of one row are in flight during the shared-memory passes of the previous one. PF = 0: a
/// plain load (n not a multiple of 8, or very long rows). Mix tables: @p mixf (ceil(K/16), K, 16) floats ±1 (FMA
/// path, staged in shared memory) or, if null, @p mix (ceil(K/16), K) bits. MIX: K > 1 (a kernel without the mix
/// code for K = 1 keeps its registers for the prefetch).
template <class T, int NT, bool VEC, int PF, bool MIX>
__global__ void __launch_bounds__(NT) hadamard_kernel(T* __restrict__ x, index_t ld, index_t rows, int n, int m, int k,
                                                      int lr, float const* __restrict__ mixf,
                                                      std::uint16_t const* __restrict__ mix,
                                                      std::int8_t const* __restrict__ pre,
                                                      std::int8_t const* __restrict__ post, T scale) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  int const chunks = (k + 15) / 16;
  // Shared memory: the float mix table (if any) first, 16-byte aligned for float4 reads, then the padded row(s).
  float* mixf_sh = reinterpret_cast<float*>(smem_raw);
  int const mixf_floats = (MIX && mixf) ? (k + 7) / 8 * k * 8 : 0;
  auto* mix_sh = reinterpret_cast<std::uint16_t*>(mixf_sh + mixf_floats);
  int const mix_words = (MIX && !mixf) ? (chunks * k + 7) / 8 * 8 : 0;
  T* buf = reinterpret_cast<T*>(mix_sh + mix_words);
  for (int i = int(threadIdx.x); i < mixf_floats; i += NT) mixf_sh[i] = mixf[i];
  for (int i = int(threadIdx.x); i < (mix_words ? chunks * k : 0); i += NT) mix_sh[i] = mix[i];
  __syncthreads();
  int const ln = 31 - __clz(n), rpi = 1 << lr, N = n << lr, groups = N / 8;
  index_t const step = index_t(gridDim.x) * rpi;
  bool const one_pass = k == 1 && m <= 3;  // the register stages are the whole transform
  row_block<T> rb{x, ld, index_t(blockIdx.x) * rpi, rows, n, lr, ln};
  T v[PF > 0 ? PF : 1][8];
  if constexpr (PF > 0) prefetch<T, NT, VEC, PF>(v, rb, groups);
  for (; rb.r0 < rows; rb.r0 += step) {
    if constexpr (PF > 0) {
      first_pass<T, NT, PF>(v, buf, rb, groups, m, scale, pre, one_pass, post);
      row_block<T> next = rb;
      next.r0 += step;
      if (next.r0 < rows) prefetch<T, NT, VEC, PF>(v, next, groups);  // in flight during the passes below
    } else {
      for (int e = int(threadIdx.x); e < N; e += NT) {
        int const i = rb.col_of(e);
        T val = rb.valid(e) ? *rb.at(e) * scale : T(0);
        if (pre && pre[i] < 0) val = -val;
        buf[padded(e)] = val;
      }
    }
    __syncthreads();
    if (!(PF > 0 && one_pass)) {
      int s = PF > 0 ? (m < 3 ? m : 3) : 0;
      while (s < m) {
        int const rb_bits = m - s >= 3 ? 3 : m - s;
        bool const out = k == 1 && s + rb_bits == m;
        if (rb_bits == 3) fwht_pass<T, 3, NT>(buf, N, s, out, rb, post);
        else if (rb_bits == 2) fwht_pass<T, 2, NT>(buf, N, s, out, rb, post);
        else fwht_pass<T, 1, NT>(buf, N, s, out, rb, post);
        __syncthreads();
        s += rb_bits;
      }
      if (k == 1 && m == 0)  // n = 1: the transform is the scale
        for (int e = int(threadIdx.x); e < N; e += NT)
          if (rb.valid(e)) *rb.at(e) = (post && post[0] < 0) ? -buf[padded(e)] : buf[padded(e)];
      if constexpr (MIX) mix_pass<T, NT>(buf, rb, n, k, mixf_floats ? mixf_sh : nullptr, mix_sh, post);
    }
    __syncthreads();  // the buffer is refilled for the next row
  }
}

}  // namespace rsq::cuda::kernels
