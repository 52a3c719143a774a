// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Kernels of the CUDA reverse-pass pieces (<rsq/backend/cuda/reverse.hpp>). Every reduction runs in a fixed order
/// (per-lane strided partial sums, a butterfly within the warp, warps in index order), so results do not change from
/// run to run; no atomics. The element-wise formulas are the CPU backend's (backend/cpu/reverse.hpp), operation by
/// operation, each product and sum rounded on its own (__fmul_rn, __fadd_rn: no contraction into FMAs that the CPU
/// code does not have). Outputs that a caller may pass in place of an input carry no __restrict__.

#include <cstdint>

#include "rsq/backend/cuda/kernels/common.cuh"
#include "rsq/backend/cuda/kernels/nn.cuh"

namespace rsq::cuda::kernels {

/// m(r, c) ← value.
__global__ void fill_rows_kernel(float* __restrict__ m, index_t ld, index_t rows, index_t cols, float value) {
  RSQ_FOR_ROWS(r, rows) {
    RSQ_FOR_COLS(c, cols) { m[r * ld + c] = value; }
  }
}

/// RMSNorm with unit gains, keeping 1/rms: per row, ss = Σ x² in double, r = 1/√(ss/cols + eps) rounded to float,
/// y = x·r. One warp per row; @p y may be @p x (every lane has read its elements before the warp's sum completes).
__global__ void rms_forward_kernel(float const* x, index_t x_ld, index_t rows, index_t cols, float eps, float* y,
                                   index_t y_ld, float* __restrict__ r) {
  index_t const warps = blockDim.x / 32, lane = threadIdx.x % 32;
  for (index_t i = index_t(blockIdx.x) * warps + threadIdx.x / 32; i < rows; i += index_t(gridDim.x) * warps) {
    float const* xr = x + i * x_ld;
    double ss = 0;
    for (index_t c = lane; c < cols; c += 32) ss += double(xr[c]) * double(xr[c]);
    ss = warp_sum(ss);
    float const ri = float(1.0 / sqrt(ss / double(cols) + double(eps)));
    if (lane == 0) r[i] = ri;
    float* yr = y + i * y_ld;
    for (index_t c = lane; c < cols; c += 32) yr[c] = __fmul_rn(xr[c], ri);
  }
}

/// The reverse of rms_forward_kernel: dx += r·(dy − y·mean(dy ⊙ y)) per row, the dot product in double, its mean
/// rounded to float. One warp per row.
__global__ void rms_backward_kernel(float const* __restrict__ y, index_t y_ld, float const* __restrict__ r,
                                    float const* dy, index_t dy_ld, index_t rows, index_t cols, float* dx,
                                    index_t dx_ld) {
  index_t const warps = blockDim.x / 32, lane = threadIdx.x % 32;
  for (index_t i = index_t(blockIdx.x) * warps + threadIdx.x / 32; i < rows; i += index_t(gridDim.x) * warps) {
    float const* yr = y + i * y_ld;
    float const* g = dy + i * dy_ld;
    double dot = 0;
    for (index_t c = lane; c < cols; c += 32) dot += double(g[c]) * double(yr[c]);
    dot = warp_sum(dot);
    float const mean = float(dot / double(cols)), ri = r[i];
    float* out = dx + i * dx_ld;
    for (index_t c = lane; c < cols; c += 32)
      out[c] = __fadd_rn(out[c], __fmul_rn(ri, __fsub_rn(g[c], __fmul_rn(yr[c], mean))));
  }
}

/// RoPE in place by +angle (or −angle with @p reverse): pair j = (2j, 2j+1) of row r, j = head·half + i, rotated by
/// the angle of position r mod L, frequency i, read from (L, half) tables with row strides:
/// (a, b) ← (a·c − b·s, a·s + b·c), each product rounded (no FMA), as the CPU loop writes it.
__global__ void rope_rotate_kernel(float* __restrict__ x, index_t ld, index_t rows, index_t pairs, index_t half,
                                   index_t L, float const* __restrict__ cos_table, index_t cos_ld,
                                   float const* __restrict__ sin_table, index_t sin_ld, bool reverse) {
  RSQ_FOR_ROWS(r, rows) {
    index_t const pos = r % L;
    float* row = x + r * ld;
    float const* cr = cos_table + pos * cos_ld;
    float const* sr = sin_table + pos * sin_ld;
    RSQ_FOR_COLS(j, pairs) {
      index_t const i = j % half;
      float const c = cr[i], s = reverse ? -sr[i] : sr[i];
      float const a = row[2 * j], b = row[2 * j + 1];
      row[2 * j] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
      row[2 * j + 1] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
    }
  }
}

/// The causal softmax of the (L, L) logits of every sequence of a sub-batch, in place: row i of a sequence over the
/// columns 0..i (max in float, exp(z − max) in double rounded to float, their sum in double, then each times the
/// float 1/Σ), zeros beyond. Rows are consecutive with leading dimension @p ld (a sequence's L rows, then the next
/// sequence's). One warp per row.
__global__ void causal_softmax_kernel(float* __restrict__ p, index_t ld, index_t rows, index_t L) {
  index_t const warps = blockDim.x / 32, lane = threadIdx.x % 32;
  for (index_t row = index_t(blockIdx.x) * warps + threadIdx.x / 32; row < rows; row += index_t(gridDim.x) * warps) {
    index_t const visible = row % L + 1;
    float* pr = p + row * ld;
    float m = -INFINITY;
    for (index_t j = lane; j < visible; j += 32) m = fmaxf(m, pr[j]);
    m = warp_max(m);
    double sum = 0;
    for (index_t j = lane; j < visible; j += 32) {
      float const e = float(exp(double(pr[j] - m)));
      pr[j] = e;
      sum += double(e);
    }
    sum = warp_sum(sum);
    float const inv = float(1.0 / sum);
    for (index_t j = lane; j < L; j += 32) pr[j] = j < visible ? __fmul_rn(pr[j], inv) : 0.f;
  }
}

/// The reverse of the causal softmax, in place of dP: per row i, dS = P ⊙ (dP − Σ_{j ≤ i} P dP) on the columns
/// 0..i (the sum in double, rounded to float) and 0 beyond. Layout as causal_softmax_kernel's. One warp per row.
__global__ void causal_softmax_backward_kernel(float const* __restrict__ p, float* __restrict__ dp, index_t ld,
                                               index_t rows, index_t L) {
  index_t const warps = blockDim.x / 32, lane = threadIdx.x % 32;
  for (index_t row = index_t(blockIdx.x) * warps + threadIdx.x / 32; row < rows; row += index_t(gridDim.x) * warps) {
    index_t const visible = row % L + 1;
    float const* pr = p + row * ld;
    float* dr = dp + row * ld;
    double dot = 0;
    for (index_t j = lane; j < visible; j += 32) dot += double(dr[j]) * double(pr[j]);
    float const d = float(warp_sum(dot));
    for (index_t j = lane; j < L; j += 32) dr[j] = j < visible ? __fmul_rn(pr[j], __fsub_rn(dr[j], d)) : 0.f;
  }
}

/// σ(x) = 1 / (1 + e^(−x)), as the CPU's sigmoid.
__device__ __forceinline__ float sigmoid(float x) { return __fdiv_rn(1.f, __fadd_rn(1.f, expf(-x))); }

/// u ← silu(a) ⊙ b = (a·σ(a))·b, element by element (u may be a or b).
__global__ void swiglu_forward_kernel(float const* a, index_t a_ld, float const* b, index_t b_ld, float* u,
                                      index_t u_ld, index_t rows, index_t cols) {
  RSQ_FOR_ROWS(r, rows) {
    RSQ_FOR_COLS(c, cols) {
      float const x = a[r * a_ld + c];
      u[r * u_ld + c] = __fmul_rn(__fmul_rn(x, sigmoid(x)), b[r * b_ld + c]);
    }
  }
}

/// The reverse of swiglu_forward_kernel, in place: a ← du·b·σ(a)·(1 + a·(1 − σ(a))), b ← du·a·σ(a).
__global__ void swiglu_backward_kernel(float* a, index_t a_ld, float* b, index_t b_ld, float const* du, index_t du_ld,
                                       index_t rows, index_t cols) {
  RSQ_FOR_ROWS(r, rows) {
    RSQ_FOR_COLS(c, cols) {
      float const x = a[r * a_ld + c], y = b[r * b_ld + c], g = du[r * du_ld + c], sg = sigmoid(x);
      a[r * a_ld + c] =
          __fmul_rn(__fmul_rn(__fmul_rn(g, y), sg), __fadd_rn(1.f, __fmul_rn(x, __fsub_rn(1.f, sg))));
      b[r * b_ld + c] = __fmul_rn(__fmul_rn(g, x), sg);
    }
  }
}

/// The next-token cross-entropy of rows of logits z (rows, vocab), row r = s·L + t predicting ids[r + 1]:
///   losses[r] = log Σ exp(z − max) + max − z[target]   (max in float, exp in double, Σ in double),
/// and 0 for the last position of a sequence. With @p gradient, z ← exp(z − max)·(1/Σ/predictions) rounded to float,
/// minus 1/predictions at the target, and 0 on the last row of a sequence. One block of threads per row.
__global__ void cross_entropy_kernel(float* __restrict__ z, index_t ldz, index_t rows, index_t vocab, index_t L,
                                     std::int32_t const* __restrict__ ids, index_t predictions, bool gradient,
                                     double* __restrict__ losses) {
  __shared__ float red_f[32];
  __shared__ double red_d[32];
  for (index_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float* zr = z + r * ldz;
    if (r % L + 1 == L) {  // the same branch for the whole block
      if (gradient)
        for (index_t j = threadIdx.x; j < vocab; j += blockDim.x) zr[j] = 0.f;
      if (threadIdx.x == 0) losses[r] = 0.0;
      continue;
    }
    index_t const target = ids[r + 1];
    float const zt = zr[target];  // read by every thread before the block_reduce barriers, so before any write
    float m = -INFINITY;
    for (index_t j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, zr[j]);
    m = block_reduce(m, red_f, max_op{});
    double sum = 0;
    for (index_t j = threadIdx.x; j < vocab; j += blockDim.x) sum += exp(double(zr[j] - m));
    sum = block_reduce(sum, red_d, sum_op{});
    if (threadIdx.x == 0) losses[r] = log(sum) + double(m) - double(zt);
    if (!gradient) continue;
    double const scale = 1.0 / sum / double(predictions);
    float const step = float(1.0 / double(predictions));
    for (index_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      float const e = float(exp(double(zr[j] - m)) * scale);
      zr[j] = j == target ? __fsub_rn(e, step) : e;
    }
  }
}

}  // namespace rsq::cuda::kernels
