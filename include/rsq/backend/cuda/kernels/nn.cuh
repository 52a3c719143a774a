// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Kernels of the CUDA forward-pass pieces (<rsq/backend/cuda/nn.hpp>) and of the bf16 GEMM. Every reduction runs in
/// a fixed order (per-thread strided partial sums, a butterfly within the warp, warps in index order), so results do
/// not change from run to run; no atomics. Products avoid contraction into FMAs where the CPU code has none to match
/// (RoPE's rotation uses __fmul_rn / __fadd_rn).

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "rsq/backend/cuda/kernels/common.cuh"

namespace rsq::cuda::kernels {

/// A reduction over the block (blockDim.x a multiple of 32, at most 1024) with @p op; every thread returns the same
/// value, formed in the same order. @p shared holds 32 values; the block may call it again right away.
template <class T, class Op>
__device__ __forceinline__ T block_reduce(T v, T* shared, Op op) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(full_mask, v, off));
  int const warp = int(threadIdx.x / 32), warps = int(blockDim.x / 32);
  if (threadIdx.x % 32 == 0) shared[warp] = v;
  __syncthreads();
  T total = shared[0];
  for (int w = 1; w < warps; ++w) total = op(total, shared[w]);
  __syncthreads();  // shared may be written again by the next call
  return total;
}

struct max_op {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return fmax(a, b);
  }
};
struct sum_op {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};

template <class O>
__device__ __forceinline__ O from_float(float v) {
  if constexpr (std::is_same_v<O, __nv_bfloat16>)
    return __float2bfloat16_rn(v);
  else
    return v;
}

/// dst(r, c) = O(src(r, c)) for a (rows, cols) matrix with row strides (rounding to nearest for bf16).
template <class S, class O>
__global__ void convert_rows_kernel(S const* __restrict__ src, index_t src_ld, index_t rows, index_t cols,
                                    O* __restrict__ dst, index_t dst_ld) {
  RSQ_FOR_ROWS(r, rows) {
    RSQ_FOR_COLS(c, cols) { dst[r * dst_ld + c] = from_float<O>(float(src[r * src_ld + c])); }
  }
}

/// C ← β·C (β = 0: zeros, whatever C held): the product with an empty inner dimension.
template <class T>
__global__ void scale_rows_kernel(T* __restrict__ c, index_t ldc, index_t rows, index_t cols, T beta) {
  RSQ_FOR_ROWS(r, rows) {
    RSQ_FOR_COLS(j, cols) { c[r * ldc + j] = beta == T(0) ? T(0) : beta * c[r * ldc + j]; }
  }
}

/// y(r) = O(g ⊙ x(r) · 1/√(mean(x(r)²) + eps)), one warp per row (the CPU's order of operations: the mean in float,
/// then (x·inv)·g). @p y may be @p x: every lane reads its elements before it writes them, and the sum is complete
/// before any lane writes.
template <class O>
__global__ void rms_norm_kernel(float const* x, index_t x_ld, float const* __restrict__ g, index_t rows, index_t cols,
                                float eps, O* y, index_t y_ld) {
  index_t const warps = blockDim.x / 32, lane = threadIdx.x % 32;
  for (index_t r = index_t(blockIdx.x) * warps + threadIdx.x / 32; r < rows; r += index_t(gridDim.x) * warps) {
    float const* xr = x + r * x_ld;
    float ss = 0.f;
    for (index_t c = lane; c < cols; c += 32) ss = fmaf(xr[c], xr[c], ss);
    ss = warp_sum(ss);
    float const inv = 1.f / sqrtf(ss / float(cols) + eps);
    O* yr = y + r * y_ld;
    for (index_t c = lane; c < cols; c += 32) yr[c] = from_float<O>(__fmul_rn(__fmul_rn(xr[c], inv), g[c]));
  }
}

/// RoPE in place: pair j = (2j, 2j+1) of row r, j = head·half + i, rotated by the tables' angle of position r mod L,
/// frequency i: (a, b) ← (a·c − b·s, a·s + b·c), each product rounded (no FMA), as the CPU loop writes it.
__global__ void rope_kernel(float* __restrict__ x, index_t ld, index_t rows, index_t pairs, index_t half, index_t L,
                            float const* __restrict__ cos_table, float const* __restrict__ sin_table) {
  RSQ_FOR_ROWS(r, rows) {
    index_t const pos = r % L;
    float* row = x + r * ld;
    RSQ_FOR_COLS(j, pairs) {
      index_t const i = j % half;
      float const c = cos_table[pos * half + i], s = sin_table[pos * half + i];
      float const a = row[2 * j], b = row[2 * j + 1];
      row[2 * j] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
      row[2 * j + 1] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
    }
  }
}

/// gate ← silu(gate) ⊙ up = gate / (1 + e^(−gate)) · up, element by element (up may be gate: no __restrict__).
__global__ void swiglu_kernel(float* gate, index_t gate_ld, float const* up, index_t up_ld, index_t rows,
                              index_t cols) {
  RSQ_FOR_ROWS(r, rows) {
    RSQ_FOR_COLS(c, cols) {
      float const g = gate[r * gate_ld + c];
      gate[r * gate_ld + c] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.f, expf(-g))), up[r * up_ld + c]);
    }
  }
}

/// x(r) ← table(ids[r]) (ids checked on the host).
__global__ void gather_rows_kernel(std::int32_t const* __restrict__ ids, float const* __restrict__ table,
                                   index_t table_ld, index_t rows, index_t cols, float* __restrict__ x, index_t x_ld) {
  RSQ_FOR_ROWS(r, rows) {
    float const* src = table + index_t(ids[r]) * table_ld;
    RSQ_FOR_COLS(c, cols) { x[r * x_ld + c] = src[c]; }
  }
}

/// Where the operands of one attention step live: byte offsets of a sequence, a row (token) and a head.
struct operand_layout {
  char const* base;
  index_t sequence, row, head;
};

/// The pointer arrays of the two batched GEMMs of one block of queries [i0, i0 + nq), entry e = (sequence s of the
/// chunk, query head h) = s·heads + h, KV head g = h div group:
///   k[e] = K(s, g), q[e] = Q(s, rows i0.., h), s[e] = logits of e, v[e] = V(s, g), p[e] = P of e (fp32 or bf16),
///   out[e] = out(s, rows i0.., h).
__global__ void attention_pointers_kernel(index_t entries, index_t heads, index_t group, index_t i0, operand_layout q,
                                          operand_layout k, operand_layout v, operand_layout out, char* logits,
                                          index_t logits_entry, char* probs, index_t probs_entry, void const** k_ptr,
                                          void const** q_ptr, void** s_ptr, void const** v_ptr, void const** p_ptr,
                                          void** out_ptr) {
  for (index_t e = index_t(blockIdx.x) * blockDim.x + threadIdx.x; e < entries; e += index_t(gridDim.x) * blockDim.x) {
    index_t const s = e / heads, h = e % heads, g = h / group;
    k_ptr[e] = k.base + s * k.sequence + g * k.head;
    q_ptr[e] = q.base + s * q.sequence + i0 * q.row + h * q.head;
    s_ptr[e] = logits + e * logits_entry;
    if (v.base != nullptr) {
      v_ptr[e] = v.base + s * v.sequence + g * v.head;
      p_ptr[e] = probs + e * probs_entry;
      out_ptr[e] = const_cast<char*>(out.base) + s * out.sequence + i0 * out.row + h * out.head;
    }
  }
}

/// Causal softmax of the logits of a block of queries, in place: for every entry e and row r (query i0 + r), over the
/// n = i0 + nq keys of the block, P = exp((z − max)·scale)·(1/Σ) on the visible keys t ≤ i0 + r and 0 beyond; with
/// @p p16, also P in bf16 (the right operand of the bf16 P·V). One warp per row.
__global__ void softmax_rows_kernel(float* __restrict__ z, index_t ld, index_t entry_stride, index_t entries,
                                    index_t nq, index_t i0, float scale, __nv_bfloat16* __restrict__ p16) {
  index_t const warps = blockDim.x / 32, lane = threadIdx.x % 32, n = i0 + nq;
  for (index_t row = index_t(blockIdx.x) * warps + threadIdx.x / 32; row < entries * nq;
       row += index_t(gridDim.x) * warps) {
    index_t const e = row / nq, r = row % nq, visible = i0 + r + 1;
    float* zr = z + e * entry_stride + r * ld;
    float m = -INFINITY;
    for (index_t t = lane; t < visible; t += 32) m = fmaxf(m, zr[t]);
    m = warp_max(m);
    float sum = 0.f;
    for (index_t t = lane; t < visible; t += 32) sum += expf((zr[t] - m) * scale);
    sum = warp_sum(sum);
    float const inv = 1.f / sum;
    __nv_bfloat16* pr = p16 != nullptr ? p16 + e * entry_stride + r * ld : nullptr;
    for (index_t t = lane; t < n; t += 32) {
      float const p = t < visible ? expf((zr[t] - m) * scale) * inv : 0.f;
      zr[t] = p;
      if (pr != nullptr) pr[t] = __float2bfloat16_rn(p);
    }
  }
}

/// AttnCon partial sums of one block: for every sequence s of the chunk and KV group g (blockIdx.y),
///   partial[((s·kv_heads + g)·blocks + block)·L + t] = Σ_{h in g} Σ_{r ≥ t − i0} P[s·heads + h][r][t]   (t < i0 + nq),
/// in double, heads then rows in order. Threads along t read consecutive keys.
__global__ void attention_columns_kernel(float const* __restrict__ p, index_t ld, index_t entry_stride, index_t nq,
                                         index_t i0, index_t sequences, index_t heads, index_t kv_heads, index_t group,
                                         index_t blocks, index_t block, index_t L, double* __restrict__ partial) {
  index_t const n = i0 + nq;
  for (index_t sg = blockIdx.y; sg < sequences * kv_heads; sg += gridDim.y) {
    index_t const s = sg / kv_heads, g = sg % kv_heads;
    float const* pg = p + (s * heads + g * group) * entry_stride;
    double* out = partial + (sg * blocks + block) * L;
    for (index_t t = index_t(blockIdx.x) * blockDim.x + threadIdx.x; t < n; t += index_t(gridDim.x) * blockDim.x) {
      double acc = 0;
      index_t const r0 = t > i0 ? t - i0 : 0;  // rows before r0 do not see key t (their P is 0)
      for (index_t b = 0; b < group; ++b)
        for (index_t r = r0; r < nq; ++r) acc += double(pg[b * entry_stride + r * ld + t]);
      out[t] = acc;
    }
  }
}

/// scores(s, t) = float(Σ_g Σ_{block ≥ t div qb} partial[((s·kv_heads + g)·blocks + block)·L + t]), groups then
/// blocks in order (a block's partial sums exist for the keys it saw, t < (block + 1)·qb).
__global__ void attention_scores_kernel(double const* __restrict__ partial, index_t sequences, index_t kv_heads,
                                        index_t blocks, index_t qb, index_t L, float* __restrict__ scores,
                                        index_t scores_ld, index_t scores_step) {
  for (index_t s = blockIdx.y; s < sequences; s += gridDim.y)
    for (index_t t = index_t(blockIdx.x) * blockDim.x + threadIdx.x; t < L; t += index_t(gridDim.x) * blockDim.x) {
      double sum = 0;
      for (index_t g = 0; g < kv_heads; ++g)
        for (index_t b = t / qb; b < blocks; ++b) sum += partial[((s * kv_heads + g) * blocks + b) * L + t];
      scores[s * scores_ld + t * scores_step] = float(sum);
    }
}

/// Loss terms of a block of rows of logits z (rows, vocab): for token = r0 + r at position t = token mod L,
///   terms[token] = max + log Σ exp(z − max) − z[ids[token + 1]]   (double; the exponentials in float),
/// and 0 for the last position of a sequence (it predicts nothing). One block of threads per row.
__global__ void lse_rows_kernel(float const* __restrict__ z, index_t ldz, index_t rows, index_t vocab, index_t r0,
                                index_t L, std::int32_t const* __restrict__ ids, double* __restrict__ terms) {
  __shared__ float red_f[32];
  __shared__ double red_d[32];
  for (index_t r = blockIdx.x; r < rows; r += gridDim.x) {
    index_t const token = r0 + r;
    if (token % L + 1 == L) {  // the same branch for the whole block
      if (threadIdx.x == 0) terms[token] = 0.0;
      continue;
    }
    float const* zr = z + r * ldz;
    float m = -INFINITY;
    for (index_t j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, zr[j]);
    m = block_reduce(m, red_f, max_op{});
    double sum = 0;
    for (index_t j = threadIdx.x; j < vocab; j += blockDim.x) sum += double(expf(zr[j] - m));
    sum = block_reduce(sum, red_d, sum_op{});
    if (threadIdx.x == 0) terms[token] = double(m) + log(sum) - double(zr[ids[token + 1]]);
  }
}

/// out[0] = Σ_i terms[i] in double, in a fixed order (one block).
__global__ void sum_terms_kernel(double const* __restrict__ terms, index_t n, double* __restrict__ out) {
  __shared__ double red[32];
  double acc = 0;
  for (index_t i = threadIdx.x; i < n; i += blockDim.x) acc += terms[i];
  acc = block_reduce(acc, red, sum_op{});
  if (threadIdx.x == 0) out[0] = acc;
}

}  // namespace rsq::cuda::kernels
