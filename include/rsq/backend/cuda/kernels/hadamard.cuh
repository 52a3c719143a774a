// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The Hadamard kernels (spec §3; docs/cuda-hadamard-notes.md has the design, the predictions and the measurements).
///
/// **Float rows (the fast path).** Two kernels that read and write each row once, with every shared-memory access
/// free of bank conflicts by construction (a 3-bit XOR swizzle chosen per layout, `had::find_swizzle`):
///  - `had::fwht_kernel<M, NT, STRIDED>` (K = 1, n = 2^M, 256 <= n <= 32768): a CTA of NT threads transforms a tile
///    of NT·32 elements (one row, or 32·NT/n short rows) held as 32 values per thread. Phase 0 loads 8 chunks of 16
///    bytes per thread and runs 5 Sylvester stages in registers; each further phase reads 32 values per thread from
///    the swizzled tile in shared memory along a 5-bit "window" of the element index, runs up to 5 stages and writes
///    them back (or, in the last phase, stores them to global memory with the post-signs): 2 or 3 phases in all.
///    The next tile is copied into a staging area with cp.async while the current one is transformed (n = 32768:
///    6 of 8 chunks per thread staged, 2 in registers), so that each SM keeps loads in flight through the compute.
///  - `had::mix_kernel<MB, NB, SPLIT>` (K > 1, n = K·2^m, 32 <= 2^m <= 1024): the Sylvester stages over the fast
///    index b as above (one or two phases per slice of 2^m), then the K x K mix of every column on the tensor cores:
///    mma.m16n8k16 with op(hadK) as the A operand (±1, exact in bf16 and f16) and the data split into 3 bf16 parts
///    (exact: x = hi + mid + lo) or 2 f16 parts after a per-row power-of-two scaling (about 2^-22 relative), fp32
///    accumulation. Warps own MB x NB tiles of 16 outputs x 8 columns; the post-signs and the stores come straight
///    from the accumulators.
///
/// **Legacy kernel** (double rows, unaligned or strided rows that are not 16-byte aligned, n < 256, 2^m < 32,
/// K > 256): `hadamard_kernel`, one CTA per row (grid-stride over rows), the row in shared memory with one padding
/// word per 32, scale and pre-signs applied on the load, radix-8 passes (three stages in registers per element
/// loaded), the last pass storing straight to global memory when K = 1; for K > 1, every thread mixes one column b of
/// the (K, p) view: 16 outputs at a time, each a ±sum of the K inputs read from shared memory (hadK, or hadKᵀ).

#include <algorithm>
#include <cstddef>
#include <cstdint>

#ifdef RSQ_HADAMARD_EMULATE
// A CPU emulation harness (outside the library) compiles the float kernels as host code: it defines the CUDA
// keywords, threadIdx/blockIdx, barriers, warp collectives, cp.async and mma before including this header, so that
// their index arithmetic, swizzles, barriers and fragment layouts are checked against the CPU transform without a GPU.
#include "rsq/core/view.hpp"
#else
#include <cuda_fp16.h>

#include "rsq/backend/cuda/kernels/common.cuh"
#endif

#ifndef RSQ_HADAMARD_EMULATE
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
#endif  // RSQ_HADAMARD_EMULATE

// =====================================================================================================================
// The float kernels.
// =====================================================================================================================

#ifdef RSQ_HADAMARD_EMULATE
#define RSQ_HAD_SMEM(name) unsigned char* const name = ::rsq_emu::shared_memory()
#else
#define RSQ_HAD_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace rsq::cuda::kernels::had {

#ifndef RSQ_HADAMARD_EMULATE
/// 16 bytes global -> shared without a register round trip (cp.async, cached in L2 only); zero-filled when !valid
/// (src-size 0: nothing is read). Completion: cp_async_wait_all() in the issuing thread, then a barrier.
__device__ __forceinline__ void cp_async16(void* dst, void const* src, bool valid) {
  unsigned const d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

/// d += A·B, mma.m16n8k16 with fp32 accumulation: bf16 inputs (SPLIT 0) or f16 inputs (SPLIT 1). A: 4 registers of
/// 2 values (rows g and g+8, columns 2t, 2t+1 and 2t+8, 2t+9 of the 16 x 16 tile; g = lane/4, t = lane%4), B: 2
/// registers (rows 2t, 2t+1 and 2t+8, 2t+9, column g of the 16 x 8 tile), D: rows g, g+8, columns 2t, 2t+1.
template <int SPLIT>
__device__ __forceinline__ void mma16816(float (&d)[4], uint4 const& a, unsigned b0, unsigned b1) {
  if constexpr (SPLIT == 0)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
  else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
}

/// Two floats rounded to f16 (to nearest), packed with @p lo in the low half; and back.
__device__ __forceinline__ unsigned pack_f16x2(float lo, float hi) {
  unsigned r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
__device__ __forceinline__ void unpack_f16x2(unsigned u, float& lo, float& hi) {
  asm("{\n .reg .f16 l, h;\n mov.b32 {l, h}, %2;\n cvt.f32.f16 %0, l;\n cvt.f32.f16 %1, h;\n}\n"
      : "=f"(lo), "=f"(hi)
      : "r"(u));
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}
#endif

// ---------------------------------------------------------------------------------------------------------------------
// Conflict-free shared-memory layouts.

/// The shared-memory word of element i of a tile: phys(i) = i ^ (z(i) << 2), z(i) the XOR of the 3-bit vectors f[k]
/// over the set bits k >= 5 of i. It only permutes the 16-byte chunks inside each 128-byte line (XOR on bits 2..4 of
/// the word index; bits 0, 1 stay, so 16-byte chunks stay whole), so it is a bijection on any tile of whole lines,
/// and it is linear over GF(2): phys(i | j) = phys(i) ^ phys(j) for i, j without common bits.
struct swizzle {
  std::uint8_t f[24] = {};
  __host__ __device__ constexpr unsigned z(unsigned i) const {
    unsigned r = 0;
    for (int k = 5; k < 24; ++k)
      if ((i >> k) & 1u) r ^= f[k];
    return r;
  }
  __host__ __device__ constexpr unsigned phys(unsigned i) const { return i ^ (z(i) << 2); }
};

/// The lanes of one shared-memory access: lane bit j moves element-index bit pos[j]. Scalar accesses (n = 5) are
/// conflict free when the 32 lanes hit 32 banks (word index mod 32); 16-byte accesses (n = 3: the 8 lanes of a quarter
/// warp) when they hit the 8 slots of 16 bytes (word index bits 2..4).
struct lane_set {
  int n = 0;
  int pos[5] = {};
};

__host__ __device__ constexpr int gf2_rank(unsigned (&v)[5], int n) {
  int rank = 0;
  for (int bit = 0; bit < 5; ++bit) {
    int piv = -1;
    for (int j = rank; j < n; ++j)
      if ((v[j] >> bit) & 1u) {
        piv = j;
        break;
      }
    if (piv < 0) continue;
    unsigned const t = v[piv];
    v[piv] = v[rank];
    v[rank] = t;
    for (int j = 0; j < n; ++j)
      if (j != rank && ((v[j] >> bit) & 1u)) v[j] ^= t;
    ++rank;
  }
  return rank;
}

/// Whether the access @p c hits distinct banks (scalar) or 16-byte slots (vector) under @p s: over GF(2), the bank of
/// an element is linear in its index bits (bits 0..4 for themselves, bit k >= 5 through f[k] on bits 2..4).
__host__ __device__ constexpr bool conflict_free(swizzle const& s, lane_set const& c) {
  unsigned v[5] = {};
  for (int j = 0; j < c.n; ++j) {
    int const p = c.pos[j];
    if (c.n == 5) v[j] = p < 5 ? (1u << p) : (unsigned(s.f[p]) << 2);
    else v[j] = p < 2 ? 0u : p < 5 ? (1u << (p - 2)) : unsigned(s.f[p]);
  }
  return gf2_rank(v, c.n) == c.n;
}

__host__ __device__ constexpr int max_pos(lane_set const& c) {
  int m = -1;
  for (int j = 0; j < c.n; ++j) m = c.pos[j] > m ? c.pos[j] : m;
  return m;
}

/// Depth-first search of f[k], k = 5..23, so that every access of @p cs is conflict free (each constraint is checked
/// as soon as all its positions have a vector; positions in no constraint keep 0). Tries the 3-periodic fold first.
__host__ __device__ constexpr bool search_swizzle(swizzle& s, lane_set const* cs, int nc, int k) {
  if (k == 24) return true;
  bool used = false;
  for (int c = 0; c < nc; ++c)
    for (int j = 0; j < cs[c].n; ++j) used = used || cs[c].pos[j] == k;
  if (!used) {
    s.f[k] = 0;
    return search_swizzle(s, cs, nc, k + 1);
  }
  unsigned const fold = 1u << ((k - 5) % 3);
  for (int t = 0; t < 9; ++t) {
    unsigned const val = t == 0 ? fold : unsigned(t - 1);
    if (t > 0 && val == fold) continue;
    s.f[k] = std::uint8_t(val);
    bool ok = true;
    for (int c = 0; c < nc && ok; ++c)
      if (max_pos(cs[c]) == k) ok = conflict_free(s, cs[c]);
    if (ok && search_swizzle(s, cs, nc, k + 1)) return true;
  }
  s.f[k] = 0;
  return false;
}

/// A swizzle under which every access of @p cs is conflict free, or the 3-periodic fold (correct, maybe conflicts)
/// when none exists (constraints on bits < 5 only cannot be helped).
__host__ __device__ constexpr swizzle find_swizzle(lane_set const* cs, int nc) {
  swizzle s;
  if (search_swizzle(s, cs, nc, 5)) return s;
  swizzle fold;
  for (int k = 5; k < 24; ++k) fold.f[k] = std::uint8_t(1u << ((k - 5) % 3));
  return fold;
}

/// The @p count lowest positions of [a0, a1) ∪ [b0, ...) (the index bits that the lanes of an access move).
__host__ __device__ constexpr lane_set lowest_positions(int count, int a0, int a1, int b0) {
  lane_set c;
  c.n = count;
  int p = a0, j = 0;
  while (j < count) {
    if (p == a1) p = b0;
    c.pos[j++] = p++;
  }
  return c;
}

/// v's bits deposited into the positions [a0, a1), the rest from position b0 on (a thread's element index).
__host__ __device__ constexpr unsigned deposit2(unsigned v, int a0, int a1, int b0) {
  unsigned const na = unsigned(a1 - a0);
  return ((v & ((1u << na) - 1u)) << a0) | ((v >> na) << b0);
}

/// One radix-2 Sylvester stage over bit B of the register index.
template <int E, int B>
__device__ __forceinline__ void butterfly(float (&v)[E]) {
#pragma unroll
  for (int q = 0; q < E; ++q)
    if (!(q & (1 << B))) {
      float const x = v[q], y = v[q | (1 << B)];
      v[q] = x + y;
      v[q | (1 << B)] = x - y;
    }
}

/// The stages over the register-index bits set in MASK (a compile-time 5-bit mask).
template <unsigned MASK>
__device__ __forceinline__ void butterflies(float (&v)[32]) {
  if constexpr ((MASK & 1u) != 0) butterfly<32, 0>(v);
  if constexpr ((MASK & 2u) != 0) butterfly<32, 1>(v);
  if constexpr ((MASK & 4u) != 0) butterfly<32, 2>(v);
  if constexpr ((MASK & 8u) != 0) butterfly<32, 3>(v);
  if constexpr ((MASK & 16u) != 0) butterfly<32, 4>(v);
}

/// v with its sign flipped when bit @p b of @p mask is set (the random signs: one XOR on the sign bit).
__device__ __forceinline__ float flip(float v, unsigned mask, int b) {
  return __uint_as_float(__float_as_uint(v) ^ ((mask >> b) << 31));
}

/// Makes @p v unknown to the optimizer (no instruction): values derived from it are not hoisted out of a loop.
__device__ __forceinline__ void opaque(unsigned& v) {
#ifndef RSQ_HADAMARD_EMULATE
  asm volatile("" : "+r"(v));
#endif
}

/// The sign bits of 4 consecutive ±1 bytes (bit j set when byte j is negative): bit 7 of each byte, gathered by one
/// multiplication (the four partial products land on bits 28..31 without carries).
__device__ __forceinline__ unsigned sign_nibble(unsigned w) { return (((w >> 7) & 0x01010101u) * 0x10204080u) >> 28; }

/// Word addresses base ^ c for constants c whose bits other than 2..4 are zero in base (the window or chunk bits of a
/// thread's values): one base per value of c's bits 2..4, so that every access is a register plus an immediate
/// instead of a register per access (which had cost the 64-register kernels their spills).
struct xor_bases {
  unsigned b[8];
  __device__ __forceinline__ explicit xor_bases(unsigned base) {
#pragma unroll
    for (int s = 0; s < 8; ++s) b[s] = base ^ (unsigned(s) << 2);
  }
  __device__ __forceinline__ unsigned at(unsigned c) const { return b[(c >> 2) & 7u] + (c & ~28u); }
};

// ---------------------------------------------------------------------------------------------------------------------
// K = 1: fwht_kernel.

/// How the fwht kernel covers the M stages of a tile of 2^T elements (rows of 2^M). Phase 0 holds, per thread, the
/// element-index bits {0, 1} (the 4 floats of a 16-byte chunk) and [h, h+3) (8 chunks); contiguous (h = 2: 32
/// consecutive elements, every load 128 contiguous bytes per thread) or strided (h = M-3: chunk f of thread t at
/// t + NT·f, so that the first 6 chunks of every thread form a contiguous prefix of the row that a staging area of
/// 3/4 row holds). The other bits are covered by windows of 5 bits [lo, lo+5) (one phase each: 32 values per thread,
/// the lanes moving the 5 lowest bits outside the window); `mask` says which window bits still need their stage.
struct fwht_layout {
  int m = 0, t = 0, h = 2, nw = 0;
  int lo[2] = {};
  unsigned mask[2] = {};
  swizzle sw;
};

__host__ __device__ constexpr fwht_layout make_fwht_layout(int m, int t, bool strided) {
  fwht_layout l;
  l.m = m;
  l.t = t;
  l.h = strided ? m - 3 : 2;
  // Bits still to transform: [first, last) = [2, m-3) when strided, [5, m) when contiguous.
  int const first = strided ? 2 : 5, last = strided ? m - 3 : m;
  int const bits = last - first;
  if (bits > 0 && bits <= 5) {
    l.nw = 1;
    l.lo[0] = strided ? 2 : last - 5;
    for (int j = 0; j < 5; ++j)
      if (l.lo[0] + j >= first && l.lo[0] + j < last) l.mask[0] |= 1u << j;
  } else if (bits > 5) {
    l.nw = 2;
    l.lo[0] = first;
    l.mask[0] = 31u;
    l.lo[1] = last - 5;
    for (int j = 0; j < 5; ++j)
      if (l.lo[1] + j >= first + 5) l.mask[1] |= 1u << j;
  }
  // Accesses: phase 0 stores 16-byte chunks (lanes: the lowest 3 item bits); each window loads and stores words.
  lane_set cs[3] = {lowest_positions(3, 2, l.h, l.h + 3)};
  int nc = 1;
  for (int w = 0; w < l.nw; ++w) cs[nc++] = lowest_positions(5, 0, l.lo[w], l.lo[w] + 5);
  l.sw = find_swizzle(cs, nc);
  return l;
}

/// The word offsets of a thread's values inside its phase (compile-time): phys of the bits that the register index
/// moves. Phase 0: chunk f (f << h); window w: value q (q << lo).
struct fwht_offsets {
  unsigned chunk[8] = {};
  unsigned win[2][32] = {};
};
__host__ __device__ constexpr fwht_offsets make_fwht_offsets(fwht_layout const& l) {
  fwht_offsets o;
  for (int f = 0; f < 8; ++f) o.chunk[f] = l.sw.phys(unsigned(f) << l.h);
  for (int w = 0; w < l.nw; ++w)
    for (int q = 0; q < 32; ++q) o.win[w][q] = l.sw.phys(unsigned(q) << l.lo[w]);
  return o;
}

struct fwht_args {
  float* x;
  index_t ld, rows, tiles;  ///< tiles of 2^T elements: ceil(rows / rows per tile)
  float scale;
  std::int8_t const* pre;   ///< device, n values ±1, or null
  std::int8_t const* post;
  int prefetch;             ///< 1: the next tile is copied into the staging area during the current one
};

/// K = 1, n = 2^M (see the file comment). Shared memory: the tile (2^T floats) then, with prefetch, the staging area
/// (2^T floats contiguous; 6·NT chunks strided).
template <int M, int NT, bool STRIDED>
__global__ void __launch_bounds__(NT, 1024 / NT) fwht_kernel(fwht_args a) {
  constexpr int T = (NT == 256 ? 8 : NT == 512 ? 9 : 10) + 5, N = 1 << M, RB = T - M;
  static_assert(T >= M && M >= 8 && M <= 15 && (NT == 256 || NT == 512 || NT == 1024));
  static_assert(!STRIDED || (NT == 1024 && M == 15));
  constexpr fwht_layout L = make_fwht_layout(M, T, STRIDED);
  constexpr fwht_offsets O = make_fwht_offsets(L);
  constexpr int H = L.h;
  RSQ_HAD_SMEM(smem);
  float* const work = reinterpret_cast<float*>(smem);
  float4* const stage = reinterpret_cast<float4*>(smem + (sizeof(float) << T));
  unsigned const t = threadIdx.x;

  // This thread's elements: phase 0 i0 | f << H | v; window w: iw[w] | q << lo[w]. Windows stay inside a row.
  unsigned const i0 = deposit2(t, 2, H, H + 3);
  unsigned const p0 = L.sw.phys(i0), r0 = i0 >> M, c0 = i0 & (N - 1);
  unsigned iw[2] = {}, pw[2] = {};
#pragma unroll
  for (int w = 0; w < L.nw; ++w) {
    iw[w] = deposit2(t, 0, L.lo[w], L.lo[w] + 5);
    pw[w] = L.sw.phys(iw[w]);
  }
  constexpr int LAST = L.nw - 1, LO = L.lo[LAST];
  unsigned const rl = iw[LAST] >> M, cl = iw[LAST] & (N - 1);

  // The staging copy of tile `tile` (chunks c = t + NT·k, contiguous; this thread's chunks f < 6, strided) and, when
  // strided, the last two chunks of this thread into registers.
  float4 held[2] = {};
  auto fetch = [&](index_t tile) {
    index_t const rbase = tile << RB;
    if constexpr (!STRIDED) {
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        unsigned const c = t + unsigned(NT * k), e = c << 2;
        index_t const r = rbase + index_t(e >> M);
        bool const ok = r < a.rows;
        cp_async16(stage + (c ^ ((c >> 3) & 7u)), a.x + (ok ? r * a.ld + index_t(e & (N - 1)) : 0), ok);
      }
    } else {
      index_t const r = rbase + index_t(r0);
      bool const ok = r < a.rows;
      float const* src = a.x + (ok ? r * a.ld + index_t(c0) : 0);
#pragma unroll
      for (int f = 0; f < 6; ++f) cp_async16(stage + f * NT + int(t), src + (f << H), ok);
#pragma unroll
      for (int f = 6; f < 8; ++f)
        held[f - 6] = ok ? *reinterpret_cast<float4 const*>(src + (f << H)) : float4{0.f, 0.f, 0.f, 0.f};
    }
    cp_async_commit();
  };

  index_t tile = blockIdx.x;
  if (a.prefetch && tile < a.tiles) fetch(tile);
  // Sign bits, once per CTA, while the first copy is in flight: pre for the 32 phase-0 values (bit 4f + v: 4 bytes
  // per chunk), post for the 32 last-window values (bit q; in batches of 8 loads, so that no registers spill).
  unsigned pre = 0, post = 0;
  if (a.pre)
#pragma unroll
    for (int f = 0; f < 8; ++f)
      pre |= sign_nibble(*reinterpret_cast<unsigned const*>(a.pre + c0 + (unsigned(f) << H))) << (4 * f);
  if (a.post)
#pragma unroll 1
    for (int q0 = 0; q0 < 32; q0 += 8)
#pragma unroll
      for (int q = 0; q < 8; ++q) post |= unsigned(a.post[cl + (unsigned(q0 + q) << LO)] < 0) << (q0 + q);
  for (; tile < a.tiles; tile += gridDim.x) {
    index_t const rbase = tile << RB;
    opaque(pre);  // else the 64 per-value sign masks are hoisted out of the loop into 64 registers
    opaque(post);
    float v[32];
    // Phase 0: 8 chunks, scale and pre-signs, stages on bits {0, 1} ∪ [H, H+3), into the tile.
    if (a.prefetch) {
      cp_async_wait_all();
      __syncthreads();
#pragma unroll
      for (int f = 0; f < 8; ++f) {
        float4 c;
        if constexpr (!STRIDED) c = stage[8 * t + (unsigned(f) ^ (t & 7u))];
        else c = f < 6 ? stage[f * NT + int(t)] : held[f - 6 < 0 ? 0 : f - 6];
        v[4 * f] = c.x, v[4 * f + 1] = c.y, v[4 * f + 2] = c.z, v[4 * f + 3] = c.w;
      }
    } else {
      index_t const r = rbase + index_t(r0);
      bool const ok = r < a.rows;
      float const* src = a.x + (ok ? r * a.ld + index_t(c0) : 0);
#pragma unroll
      for (int f = 0; f < 8; ++f) {
        float4 const c = ok ? *reinterpret_cast<float4 const*>(src + (f << H)) : float4{0.f, 0.f, 0.f, 0.f};
        v[4 * f] = c.x, v[4 * f + 1] = c.y, v[4 * f + 2] = c.z, v[4 * f + 3] = c.w;
      }
    }
#pragma unroll
    for (int r = 0; r < 32; ++r) v[r] = flip(v[r] * a.scale, pre, r);
    butterflies<31u>(v);
    {
      xor_bases const ba(p0);
#pragma unroll
      for (int f = 0; f < 8; ++f)
        *reinterpret_cast<float4*>(work + ba.at(O.chunk[f])) = float4{v[4 * f], v[4 * f + 1], v[4 * f + 2], v[4 * f + 3]};
    }
    __syncthreads();
    if (a.prefetch && tile + index_t(gridDim.x) < a.tiles) fetch(tile + gridDim.x);  // in flight until the next tile
    // A middle window: 32 words, 5 stages, back in place.
    if constexpr (L.nw == 2) {
      xor_bases const ba(pw[0]);
#pragma unroll
      for (int q = 0; q < 32; ++q) v[q] = work[ba.at(O.win[0][q])];
      butterflies<L.mask[0]>(v);
#pragma unroll
      for (int q = 0; q < 32; ++q) work[ba.at(O.win[0][q])] = v[q];
      __syncthreads();
    }
    // The last window: its stages, the post-signs, to global memory (the 32 values of a thread are in one row).
    {
      xor_bases const ba(pw[LAST]);
#pragma unroll
      for (int q = 0; q < 32; ++q) v[q] = work[ba.at(O.win[LAST][q])];
    }
    butterflies<L.mask[LAST]>(v);
    if (index_t const r = rbase + index_t(rl); r < a.rows) {
      float* const dst = a.x + r * a.ld + index_t(cl);
#pragma unroll
      for (int q = 0; q < 32; ++q) dst[q << LO] = flip(v[q], post, q);
    }
    __syncthreads();  // the tile is rewritten by the next phase 0
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// K > 1: mix_kernel.

/// The launch of the mix kernel for one construction (host side; shared with the emulation harness).
struct mix_plan {
  int k = 0, m = 0, mt = 0;       ///< K, log2 p, ceil(K/16) tiles of 16 outputs (and 16 inputs)
  int mb = 0, nb = 0, mc = 0;     ///< a warp task: mb output tiles x nb column tiles of 8; mc = ceil(mt/mb) chunks
  int ng = 0, tasks = 0;          ///< column groups of 8·nb, tasks = mc·ng
  int split = 0;                  ///< 0: 3 bf16 parts, 1: 2 f16 parts
  int nt = 0;                     ///< threads per CTA
  int rows_buf = 0;               ///< rows of 2^m in the tile buffer (16·mt when phase 1 crosses slices)
  int items0 = 0, items1 = 0;     ///< 32-element items of phase 0 (K·p/32) and phase 1 (rows_buf·p/32; 0: none)
  int staged = 0;                 ///< phase-0 items copied ahead with cp.async (the rest are loaded directly)
  swizzle sw;
  unsigned off_work = 0, off_stage = 0, off_lut = 0, off_pre = 0, off_post = 0, off_wmax = 0, smem = 0;  ///< bytes
};

/// The plan for n = k·2^m; smem = 0 when the tile does not fit in @p smem_limit bytes. @p prefetch: stage as many
/// phase-0 items of the next row as the shared memory left over holds. @p threads: 0 (by the task count) or forced.
inline mix_plan plan_mix(int k, int m, int split, bool prefetch, int threads, unsigned smem_limit) {
  mix_plan pl;
  pl.k = k;
  pl.m = m;
  pl.split = split;
  int const p = 1 << m;
  pl.mt = (k + 15) / 16;
  pl.mc = (pl.mt + 3) / 4;
  pl.mb = (pl.mt + pl.mc - 1) / pl.mc;
  pl.nb = pl.mc * (p / 32) >= 8 ? 4 : 2;
  pl.ng = p / (8 * pl.nb);
  pl.tasks = pl.mc * pl.ng;
  pl.nt = threads > 0 ? threads : (pl.tasks > 8 ? 512 : 256);
  pl.rows_buf = (m > 5 && m < 10) ? 16 * pl.mt : k;
  pl.items0 = k * p / 32;
  pl.items1 = m > 5 ? pl.rows_buf * p / 32 : 0;
  // Accesses: phase-0 16-byte stores (lanes: item bits 0..2 = element bits 5..7), phase-1 words (lanes: bits 0..4,
  // always free), the B fragments (lanes: column bits 0..2 and input bits 1, 2 = element bits m+1, m+2).
  lane_set const cs[2] = {lane_set{3, {5, 6, 7}}, lane_set{5, {0, 1, 2, m + 1, m + 2}}};
  pl.sw = find_swizzle(cs, 2);
  unsigned const words = unsigned(pl.items0);  // n/32 sign words
  unsigned off = unsigned(pl.mt * pl.mt) * 512u;
  pl.off_work = off;
  off += unsigned(pl.rows_buf * p) * 4u;
  pl.off_lut = off;
  off += 2048u;
  pl.off_pre = off;
  off += (words * 4u + 15u) / 16u * 16u;
  pl.off_post = off;
  off += (words * 4u + 15u) / 16u * 16u;
  pl.off_wmax = off;
  off += 128u;
  pl.off_stage = off;
  if (off > smem_limit) return pl;  // smem stays 0: does not fit
  if (prefetch) pl.staged = std::min<int>(pl.items0, int((smem_limit - off) / 128u));
  pl.smem = off + unsigned(pl.staged) * 128u;
  return pl;
}

/// The A fragments of op(hadK) for mix_kernel (host side): (mt, mt, 32 lanes, 4 words), word w of lane
/// (g = lane/4, t = lane%4) of tile (mi, ki) holds rows 16·mi + g + 8·(w & 1), columns 16·ki + 2t + 8·(w >> 1) and
/// the next column (the lower column in the low half), as bf16 or f16 ±1 (0 outside the K x K matrix).
/// @p op(a, b) is op(hadK)[a][b] in {+1, -1} (a: output, b: input, both < k).
template <class Op>
void a_fragments(int k, Op const& op, bool f16, std::uint32_t* out) {
  int const mt = (k + 15) / 16;
  auto half = [&](int r, int c) -> std::uint32_t {
    if (r >= k || c >= k) return 0u;
    int const v = op(r, c);
    return f16 ? (v > 0 ? 0x3C00u : 0xBC00u) : (v > 0 ? 0x3F80u : 0xBF80u);
  };
  for (int mi = 0; mi < mt; ++mi)
    for (int ki = 0; ki < mt; ++ki)
      for (int lane = 0; lane < 32; ++lane)
        for (int w = 0; w < 4; ++w) {
          int const r = 16 * mi + lane / 4 + 8 * (w & 1), c = 16 * ki + 2 * (lane % 4) + 8 * (w >> 1);
          out[((mi * mt + ki) * 32 + lane) * 4 + w] = half(r, c) | (half(r, c + 1) << 16);
        }
}

struct mix_args {
  float* x;
  index_t ld, rows;
  int k, m, mt, rows_buf, items0, items1, staged, tasks, ng;
  float scale;
  std::int8_t const* pre;  ///< device, n values ±1, or null
  std::int8_t const* post;
  uint4 const* frag;       ///< (mt, mt, 32 lanes) A fragments of op(hadK) (bf16 for SPLIT 0, f16 for SPLIT 1)
  swizzle sw;
  unsigned off_work, off_stage, off_lut, off_pre, off_post, off_wmax;
};

/// The data split for the B operand: x0 (row 2t or 2t+8) and x1 (the next row) of one column into PARTS packed pairs.
/// SPLIT 0: x = hi + mid + lo exactly, each part the top 16 bits of a float (truncation keeps 8 significant bits, so
/// the last remainder has at most 8 and is a bf16 exactly). SPLIT 1: x·2^s = hi + lo in f16 (round to nearest; the
/// remainder is exact in fp32), 22 significant bits for every element within 2^17 of the row's largest.
template <int SPLIT>
__device__ __forceinline__ void split_pair(float x0, float x1, float sup, unsigned (&out)[SPLIT == 0 ? 3 : 2]) {
  if constexpr (SPLIT == 0) {
    unsigned const h0 = __float_as_uint(x0) & 0xffff0000u, h1 = __float_as_uint(x1) & 0xffff0000u;
    float const r0 = x0 - __uint_as_float(h0), r1 = x1 - __uint_as_float(h1);
    unsigned const m0 = __float_as_uint(r0) & 0xffff0000u, m1 = __float_as_uint(r1) & 0xffff0000u;
    float const l0 = r0 - __uint_as_float(m0), l1 = r1 - __uint_as_float(m1);
    out[0] = __byte_perm(h0, h1, 0x7632);
    out[1] = __byte_perm(m0, m1, 0x7632);
    out[2] = __byte_perm(__float_as_uint(l0), __float_as_uint(l1), 0x7632);
  } else {
    float const s0 = x0 * sup, s1 = x1 * sup;
    unsigned const hi = pack_f16x2(s0, s1);
    float h0, h1;
    unpack_f16x2(hi, h0, h1);
    out[0] = hi;
    out[1] = pack_f16x2(s0 - h0, s1 - h1);
  }
}

/// K > 1 (see the file comment and mix_plan). One row per CTA iteration, persistent over rows.
template <int MB, int NB, int SPLIT>
__global__ void __launch_bounds__(512) mix_kernel(mix_args a) {
  constexpr int PARTS = SPLIT == 0 ? 3 : 2;
  RSQ_HAD_SMEM(smem);
  uint4* const frag = reinterpret_cast<uint4*>(smem);
  float* const work = reinterpret_cast<float*>(smem + a.off_work);
  float4* const stage = reinterpret_cast<float4*>(smem + a.off_stage);
  unsigned char* const lut = smem + a.off_lut;  // lut[x] = z(x << 5)
  unsigned* const prebits = reinterpret_cast<unsigned*>(smem + a.off_pre);
  unsigned* const postbits = reinterpret_cast<unsigned*>(smem + a.off_post);
  float* const wmax = reinterpret_cast<float*>(smem + a.off_wmax);
  int const tid = int(threadIdx.x), nt = int(blockDim.x), lane = tid & 31, warp = tid >> 5, nwarps = nt >> 5;
  int const m = a.m, p = 1 << m;

  // Once per CTA: the fragments, the swizzle table, the sign bits, zeros in the padding rows of the tile.
  for (int i = tid; i < a.mt * a.mt * 32; i += nt) frag[i] = a.frag[i];
  for (int x = tid; x < 2048; x += nt) lut[x] = std::uint8_t(a.sw.z(unsigned(x) << 5));
  for (int w = tid; w < a.items0; w += nt) {
    unsigned pb = 0, qb = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (a.pre) pb |= sign_nibble(reinterpret_cast<unsigned const*>(a.pre)[8 * w + j]) << (4 * j);
      if (a.post) qb |= sign_nibble(reinterpret_cast<unsigned const*>(a.post)[8 * w + j]) << (4 * j);
    }
    prebits[w] = pb;
    postbits[w] = qb;
  }
  for (int i = a.k * p + tid; i < a.rows_buf * p; i += nt) work[i] = 0.f;
  __syncthreads();

  auto fetch = [&](index_t row) {
    float const* src = a.x + row * a.ld;
    for (int c = tid; c < a.staged * 8; c += nt) cp_async16(stage + (c ^ ((c >> 3) & 7)), src + 4 * c, true);
    cp_async_commit();
  };
  // The B-fragment rows of this lane (input a' = 16·ki + 2t + {0, 1, 8, 9}): their swizzle terms.
  int const g = lane >> 2, t4 = lane & 3;
  unsigned zt[4];
#pragma unroll
  for (int d = 0; d < 4; ++d) zt[d] = lut[((2 * t4 + (d & 1) + 8 * (d >> 1)) << m) >> 5];
  unsigned wz[5];
#pragma unroll
  for (int j = 0; j < 5; ++j) wz[j] = unsigned(lut[1 << j]) << 2;

  index_t row = blockIdx.x;
  if (a.staged && row < a.rows) fetch(row);
  for (; row < a.rows; row += gridDim.x) {
    float* const y = a.x + row * a.ld;
    if (a.staged) {
      cp_async_wait_all();
      __syncthreads();
    }
    float mx = 0.f;
    // Phase 0: items of 32 consecutive elements (one slice), stages on bits 0..4, into the tile (16-byte stores).
    for (int it = tid; it < a.items0; it += nt) {
      float v[32];
#pragma unroll
      for (int f = 0; f < 8; ++f) {
        float4 const c = it < a.staged ? stage[8 * it + (f ^ (it & 7))]
                                       : reinterpret_cast<float4 const*>(y + 32 * index_t(it))[f];
        v[4 * f] = c.x, v[4 * f + 1] = c.y, v[4 * f + 2] = c.z, v[4 * f + 3] = c.w;
      }
      unsigned const pm = prebits[it];
#pragma unroll
      for (int r = 0; r < 32; ++r) v[r] = flip(v[r] * a.scale, pm, r);
      butterflies<31u>(v);
      if constexpr (SPLIT == 1)
        if (m == 5)
#pragma unroll
          for (int r = 0; r < 32; ++r) mx = fmaxf(mx, fabsf(v[r]));
      unsigned const base = (unsigned(it) << 5) ^ (unsigned(lut[it]) << 2);
#pragma unroll
      for (int f = 0; f < 8; ++f)
        *reinterpret_cast<float4*>(work + (base ^ (unsigned(f) << 2))) =
            float4{v[4 * f], v[4 * f + 1], v[4 * f + 2], v[4 * f + 3]};
    }
    __syncthreads();
    if (a.staged && row + index_t(gridDim.x) < a.rows) fetch(row + gridDim.x);  // in flight during the mix
    // Phase 1: the window of element bits [5, 10) (stages on the in-slice bits [5, m)); for m < 10 it spans 2^(10-m)
    // slices of the padded tile.
    for (int it = tid; it < a.items1; it += nt) {
      unsigned const ib = (unsigned(it) & 31u) | ((unsigned(it) >> 5) << 10);
      unsigned const base = ib ^ (unsigned(lut[ib >> 5]) << 2);
      float v[32];
      unsigned idx[32];
#pragma unroll
      for (int q = 0; q < 32; ++q) {
        unsigned zq = 0;
#pragma unroll
        for (int j = 0; j < 5; ++j)
          if (q & (1 << j)) zq ^= wz[j];
        idx[q] = (base ^ zq) + (unsigned(q) << 5);
        v[q] = work[idx[q]];
      }
      if (m > 5) butterfly<32, 0>(v);
      if (m > 6) butterfly<32, 1>(v);
      if (m > 7) butterfly<32, 2>(v);
      if (m > 8) butterfly<32, 3>(v);
      if (m > 9) butterfly<32, 4>(v);
#pragma unroll
      for (int q = 0; q < 32; ++q) {
        if constexpr (SPLIT == 1) mx = fmaxf(mx, fabsf(v[q]));
        work[idx[q]] = v[q];
      }
    }
    if constexpr (SPLIT == 1) {
      mx = warp_max(mx);
      if (lane == 0) wmax[warp] = mx;
    }
    __syncthreads();
    // The mix: per row scale 2^s (f16: the largest |x| to [2^14, 2^15)).
    float sup = 1.f, sdown = 1.f;
    if constexpr (SPLIT == 1) {
      float big = 0.f;
      for (int w = 0; w < nwarps; ++w) big = fmaxf(big, wmax[w]);
      int const e = big > 0.f ? int((__float_as_uint(big) >> 23) & 255u) - 127 : 0;
      int s = 14 - e;
      s = s < -100 ? -100 : s > 100 ? 100 : s;
      sup = __uint_as_float(unsigned(127 + s) << 23);
      sdown = __uint_as_float(unsigned(127 - s) << 23);
    }
    for (int task = warp; task < a.tasks; task += nwarps) {
      int const mc = task / a.ng, n0 = (task - mc * a.ng) * 8 * NB;
      float acc[MB][NB][4];
#pragma unroll
      for (int i = 0; i < MB; ++i)
#pragma unroll
        for (int j = 0; j < NB; ++j)
#pragma unroll
          for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;
      unsigned zn[NB];
#pragma unroll
      for (int j = 0; j < NB; ++j) zn[j] = lut[(n0 + 8 * j) >> 5];
      for (int ki = 0; ki < a.mt; ++ki) {
        unsigned const zk = lut[(16 * ki) << (m - 5)];
        unsigned bf[NB][2][PARTS];
#pragma unroll
        for (int j = 0; j < NB; ++j) {
          float xv[4];
#pragma unroll
          for (int d = 0; d < 4; ++d) {
            int const ar = 16 * ki + 2 * t4 + (d & 1) + 8 * (d >> 1);
            unsigned const e = (unsigned(ar) << m) + unsigned(n0 + 8 * j + g);
            xv[d] = ar < a.k ? work[e ^ ((zk ^ zt[d] ^ zn[j]) << 2)] : 0.f;
          }
          split_pair<SPLIT>(xv[0], xv[1], sup, bf[j][0]);
          split_pair<SPLIT>(xv[2], xv[3], sup, bf[j][1]);
        }
#pragma unroll
        for (int i = 0; i < MB; ++i) {
          int const mi = mc * MB + i;
          if (mi < a.mt) {
            uint4 const af = frag[(mi * a.mt + ki) * 32 + lane];
#pragma unroll
            for (int j = 0; j < NB; ++j)
#pragma unroll
              for (int s = 0; s < PARTS; ++s) mma16816<SPLIT>(acc[i][j], af, bf[j][0][s], bf[j][1][s]);
          }
        }
      }
      // Outputs: row 16·mi + g (+8), columns n0 + 8j + 2t, +1; post-signs from the row's sign word.
#pragma unroll
      for (int i = 0; i < MB; ++i) {
        int const mi = mc * MB + i;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          int const ar = 16 * mi + g + 8 * h;
          if (mi < a.mt && ar < a.k) {
            unsigned const pw = postbits[((ar << m) + n0) >> 5];
#pragma unroll
            for (int j = 0; j < NB; ++j) {
              int const b = n0 + 8 * j + 2 * t4;
              float y0 = acc[i][j][2 * h], y1 = acc[i][j][2 * h + 1];
              if constexpr (SPLIT == 1) y0 *= sdown, y1 *= sdown;
              *reinterpret_cast<float2*>(y + (index_t(ar) << m) + b) =
                  float2{flip(y0, pw, b & 31), flip(y1, pw, (b + 1) & 31)};
            }
          }
        }
      }
    }
    __syncthreads();  // the tile is rewritten by the next phase 0
  }
}

}  // namespace rsq::cuda::kernels::had
