// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The kernels of the GPTQ solver (spec §6) and of its factorization. Layouts: weights are row-major (rows, cols) on
/// the device, which cuBLAS sees as column-major (cols, rows); U is column-major (cols, cols).

#include <cstdint>

#include "rsq/backend/cuda/kernels/common.cuh"
#include "rsq/backend/cuda/kernels/quant.cuh"

namespace rsq::cuda::kernels {

// ---------------------------------------------------------------------------------------------------------------
// Grid fits (spec §7): one warp per (row, segment); lanes split the segment, min/max and clip-search errors are warp
// reductions (the errors are summed in double, as on the CPU).

/// Fits segments s = 0..seg_count−1 of every row: columns [seg_start + s·seg_len, +seg_len) ∩ [0, cols) of the
/// row-major @p x; writes scales/zeros (rows, groups) at group g0 + s.
template <class T>
__global__ void fit_kernel(T const* __restrict__ x, index_t ld, index_t rows, index_t cols, index_t seg_start,
                           index_t seg_len, index_t seg_count, index_t g0, device_grid g, T* __restrict__ scales,
                           T* __restrict__ zeros, index_t groups) {
  index_t const task = index_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  int const lane = int(threadIdx.x % 32);
  if (task >= rows * seg_count) return;  // the whole warp leaves together
  index_t const r = task / seg_count, s = task % seg_count;
  index_t const c0 = seg_start + s * seg_len;
  index_t const n = seg_len < cols - c0 ? seg_len : cols - c0;
  T const* row = x + r * ld + c0;
  T lo = T(0), hi = T(0);  // the range always contains 0
  for (index_t k = lane; k < n; k += 32) {
    T const v = row[k];
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  lo = warp_min(lo);
  hi = warp_max(hi);
  T scale, zero;
  initial_params(g, lo, hi, scale, zero);
  if (g.clip) {
    double best = __longlong_as_double(0x7ff0000000000000ll);  // +inf
    T const norm = T(g.clip_norm);
    for (int i = 0; i < g.clip_steps; ++i) {
      T const p = shrink_factor<T>(g, i);
      T cs, cz;
      params_from_range(g, p * lo, p * hi, cs, cz);
      double err = 0;
      for (index_t k = lane; k < n; k += 32) {
        T const v = row[k];
        T const d = fabs(decode(encode(v, cs, cz, g.max_code, g.offset), cs, cz, g.offset) - v);
        err += double(pow(d, norm));
      }
      err = warp_sum(err);
      if (err < best) {  // strictly better, as in the reference
        best = err;
        scale = cs;
        zero = cz;
      }
    }
  }
  if (lane == 0) {
    scales[r * groups + g0 + s] = scale;
    zeros[r * groups + g0 + s] = zero;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The column loop of one sub-block (spec §6 step 7, spec §10 "GPTQ on CUDA"): rows in parallel, TPR threads per row,
// thread l of a row holding columns l, l+TPR, l+2·TPR, ... of the sub-block in registers; the tile U1 in shared
// memory. Column i: every thread quantizes its own slot i/TPR (only the owner lane i % TPR holds column i, the
// others compute and discard), the owner's scaled error is broadcast by a shuffle, and each thread updates its
// columns j > i with e·U1[i, j]. Both loops are unrolled, so the register arrays are indexed by constants.

template <class T>
struct block_kernel_config;
template <>
struct block_kernel_config<float> {
  static constexpr int sub = 128, tpr = 8, threads = 128;
  static constexpr int threads_large = 256;  // for many rows: twice the warps per SM at the same shared memory
};
template <>
struct block_kernel_config<double> {
  static constexpr int sub = 64, tpr = 8, threads = 128;
  static constexpr int threads_large = 256;
};

template <class T, int SUB, int TPR, int NT>
[[nodiscard]] constexpr std::size_t block_kernel_smem() {
  return std::size_t(SUB) * (SUB + 1) * sizeof(T) + std::size_t(NT / 32) * SUB * sizeof(double) +
         std::size_t(SUB + 1) * sizeof(int) + std::size_t(SUB) * sizeof(T) + 16;
}

/// One sub-block of nbs ≤ SUB columns. Pointers are offset to the sub-block: w1 (rows, ·) with ld_w1 the current
/// working columns, u at U(c0, c0) with ld_u, gcol/codes/loss at the sub-block's first solve-order column, e_out at
/// the sub-block's first column of E. Writes codes, E and one row of per-column loss partials per CTA.
template <class T, int SUB, int TPR, int NT>
__global__ void __launch_bounds__(NT) gptq_block_kernel(
    T const* __restrict__ w1, index_t ld_w1, T const* __restrict__ u, index_t ld_u, int nbs, index_t rows,
    T const* __restrict__ scales, T const* __restrict__ zeros, index_t groups, int const* __restrict__ gcol,
    int max_code, bool offset, std::uint8_t* __restrict__ codes, index_t ld_codes, T* __restrict__ e_out, index_t ld_e,
    double* __restrict__ loss_partial, index_t ld_loss) {
  constexpr int C = SUB / TPR;
  constexpr int P = SUB + 1;  // padded pitch: the transposing tile load does not hit one bank
  constexpr int ROWS = NT / TPR;
  constexpr int WARPS = NT / 32;
  static_assert(32 % TPR == 0 && SUB % TPR == 0 && NT % 32 == 0, "bad block kernel configuration");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* u1 = reinterpret_cast<T*>(smem_raw);                     // (SUB, P): u1[i·P + j] = U(c0 + i, c0 + j)
  double* loss_sh = reinterpret_cast<double*>(u1 + SUB * P);  // (WARPS, SUB)
  int* g_sh = reinterpret_cast<int*>(loss_sh + WARPS * SUB);  // (SUB)
  T* dinv_sh = reinterpret_cast<T*>(g_sh + SUB + (SUB % 2));    // (SUB): 1 / U(c0 + i, c0 + i)

  int const tid = int(threadIdx.x);
  for (int idx = tid; idx < SUB * SUB; idx += NT) {
    int const i = idx % SUB, j = idx / SUB;  // consecutive threads read down a column of the column-major U
    u1[i * P + j] = (i < nbs && j < nbs && i <= j) ? u[i + index_t(j) * ld_u] : T(0);
  }
  for (int j = tid; j < SUB; j += NT) {
    g_sh[j] = j < nbs ? gcol[j] : 0;
    dinv_sh[j] = j < nbs ? T(1) / u[j + index_t(j) * ld_u] : T(0);
  }
  __syncthreads();

  int const l = tid % TPR;
  index_t const r = index_t(blockIdx.x) * ROWS + tid / TPR;
  bool const active = r < rows;
  T w[C], ek[C], lk[C];
  unsigned ck[C];
#pragma unroll
  for (int k = 0; k < C; ++k) {
    int const j = l + TPR * k;
    w[k] = (active && j < nbs) ? w1[r * ld_w1 + j] : T(0);
    ek[k] = T(0);
    lk[k] = T(0);
    ck[k] = 0;
  }
  int gcur = -1;
  T s = T(1), z = T(0);
#pragma unroll
  for (int i = 0; i < SUB; ++i) {
    if (i < nbs) {
      int const g = g_sh[i];
      if (g != gcur) {  // the same for every thread: group boundaries are per column
        gcur = g;
        if (active) {
          s = scales[r * groups + g];
          z = zeros[r * groups + g];
        }
      }
      int const o = i % TPR, ki = i / TPR;
      T const x = w[ki];
      unsigned const code = encode(x, s, z, max_code, offset);
      T const q = decode(code, s, z, offset);
      // e = (w − q)/d as a product with 1/d (one rounding away from the quotient, and off the division latency of
      // the serial chain); the loss (w − q)²/d² = e².
      T e = (x - q) * dinv_sh[i];
      if (l == o) {
        ck[ki] = code;
        ek[ki] = e;
        lk[ki] = e * e;
      }
      e = __shfl_sync(full_mask, e, o, TPR);
#pragma unroll
      for (int k = 0; k < C; ++k) {
        if (TPR * k + TPR - 1 <= i) continue;  // all of this slot's columns are ≤ i (resolved at compile time)
        // U1[i, j] = 0 for j < i, so the columns ≤ i of the boundary slot stay as they are (j == i is not read again).
        w[k] -= e * u1[i * P + l + TPR * k];
      }
    }
  }

#pragma unroll
  for (int k = 0; k < C; ++k) {
    int const j = l + TPR * k;
    if (active && j < nbs) {
      codes[r * ld_codes + j] = static_cast<std::uint8_t>(ck[k]);
      e_out[r * ld_e + j] = ek[k];
    }
  }

  // Column losses: a fixed reduction order (lanes of a warp by a butterfly over its rows, then warps in order), so
  // that repeated runs give identical losses.
  int const warp = tid / 32, lane = tid % 32;
#pragma unroll
  for (int k = 0; k < C; ++k) {
    double v = active ? double(lk[k]) : 0.0;
#pragma unroll
    for (int off = TPR; off < 32; off <<= 1) v += __shfl_xor_sync(full_mask, v, off);
    if (lane < TPR) loss_sh[warp * SUB + lane + TPR * k] = v;
  }
  __syncthreads();
  for (int j = tid; j < nbs; j += NT) {
    double t = 0;
#pragma unroll
    for (int wi = 0; wi < WARPS; ++wi) t += loss_sh[wi * SUB + j];
    loss_partial[index_t(blockIdx.x) * ld_loss + j] = t;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Element-wise steps.

/// Zeroes the columns c of the row-major @p w with dead[c] != 0 (spec §6 step 2).
template <class T>
__global__ void zero_dead_kernel(T* __restrict__ w, index_t rows, index_t cols, std::uint8_t const* __restrict__ dead) {
  RSQ_FOR_ROWS(r, rows) RSQ_FOR_COLS(c, cols) if (dead[c]) w[r * cols + c] = T(0);
}

/// wp(r, j) = w(r, perm[j]): the weight in solve order (spec §6 step 4).
template <class T>
__global__ void permute_columns_kernel(T const* __restrict__ w, index_t rows, index_t cols,
                                       int const* __restrict__ perm, T* __restrict__ wp) {
  RSQ_FOR_ROWS(r, rows) RSQ_FOR_COLS(j, cols) wp[r * cols + j] = w[r * cols + perm[j]];
}

/// Codes back in original column order and the dequantized weight (spec §6 step 8):
/// codes(r, c) = codes_solve(r, invperm[c]), deq(r, c) = scales(r, g_idx[c])·(code − zeros(r, g_idx[c])).
template <class T>
__global__ void finalize_kernel(std::uint8_t const* __restrict__ codes_solve, int const* __restrict__ invperm,
                                int const* __restrict__ g_idx, T const* __restrict__ scales,
                                T const* __restrict__ zeros, index_t groups, bool offset, index_t rows, index_t cols,
                                std::uint8_t* __restrict__ codes, T* __restrict__ deq) {
  RSQ_FOR_ROWS(r, rows) RSQ_FOR_COLS(c, cols) {
    std::uint8_t const code = codes_solve[r * cols + (invperm ? invperm[c] : c)];
    index_t const g = g_idx[c];
    codes[r * cols + c] = code;
    deq[r * cols + c] = decode(unsigned(code), scales[r * groups + g], zeros[r * groups + g], offset);
  }
}

/// column_loss(perm[j]) = T(Σ_cta partial(cta, j) / 2), summed in CTA order.
template <class T>
__global__ void loss_reduce_kernel(double const* __restrict__ partial, index_t ctas, index_t cols,
                                   int const* __restrict__ perm, T* __restrict__ loss) {
  for (index_t j = index_t(blockIdx.x) * blockDim.x + threadIdx.x; j < cols; j += index_t(gridDim.x) * blockDim.x) {
    double s = 0;
    for (index_t b = 0; b < ctas; ++b) s += partial[b * cols + j];
    loss[perm ? perm[j] : j] = T(s / 2);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Factorization (spec §6 steps 4–6, docs/performance.md): F = J·P(H + damp·I)Pᵀ·J, lower triangle, column-major, in
// the factor precision F; after potrf and trtri, U = J·F⁻¹·J.

/// F(i, j) for i ≥ j = H(perm[n−1−j], perm[n−1−i]) (the lower triangle of the permuted H, read as the CPU reads it),
/// F(i, i) = diag[perm[n−1−i]] + damp in T (dead diagonals are 1), zero above the diagonal.
template <class T, class F>
__global__ void build_factor_input_kernel(T const* __restrict__ h, index_t ldh, index_t n, int const* __restrict__ perm,
                                          T const* __restrict__ diag, T damp, F* __restrict__ out) {
  RSQ_FOR_ROWS(j, n) RSQ_FOR_COLS(i, n) {  // column j of the column-major output: consecutive threads down a column
    F v = F(0);
    if (i == j) v = F(diag[perm[n - 1 - i]] + damp);
    else if (i > j) v = F(h[index_t(perm[n - 1 - j]) * ldh + perm[n - 1 - i]]);
    out[i + j * n] = v;
  }
}

/// u(i, j) = Finv(n−1−i, n−1−j) for i ≤ j, 0 below (column-major both).
template <class F, class T>
__global__ void extract_u_kernel(F const* __restrict__ finv, index_t n, T* __restrict__ u) {
  RSQ_FOR_ROWS(j, n) RSQ_FOR_COLS(i, n) u[i + j * n] = i <= j ? T(finv[(n - 1 - i) + (n - 1 - j) * n]) : T(0);
}

/// Sets the column-major (n, n) @p a to the identity.
template <class F>
__global__ void identity_kernel(F* __restrict__ a, index_t n) {
  RSQ_FOR_ROWS(j, n) RSQ_FOR_COLS(i, n) a[i + j * n] = i == j ? F(1) : F(0);
}

// ---------------------------------------------------------------------------------------------------------------
// Validation of device-resident inputs (the checks of gptq/preprocess.hpp and core/checks.hpp, on the device).

/// Result record of the validation kernels.
struct validation_record {
  unsigned long long first_bad;  ///< smallest row-major index of a NaN/Inf (ULLONG_MAX: none)
  unsigned long long max_asym;   ///< magnitude_key of the largest |H(i, j) − H(j, i)|, i > j
  unsigned long long max_diag;   ///< magnitude_key of the largest |H(j, j)|
};

/// Finite check of a strided (rows, cols) matrix: records the first bad element in row-major order.
template <class T>
__global__ void finite_kernel(T const* __restrict__ a, index_t s0, index_t s1, index_t rows, index_t cols,
                              validation_record* rec) {
  RSQ_FOR_ROWS(r, rows) RSQ_FOR_COLS(c, cols) {
    if (!isfinite(a[r * s0 + c * s1])) atomicMin(&rec->first_bad, static_cast<unsigned long long>(r * cols + c));
  }
}

/// Symmetry and diagonal of a contiguous row-major (n, n) H, by 32 x 32 tiles read coalesced through shared memory.
template <class T>
__global__ void symmetry_kernel(T const* __restrict__ h, index_t n, validation_record* rec) {
  __shared__ T tile[32][33];
  index_t const bi = blockIdx.y, bj = blockIdx.x;  // tile row, tile column
  if (bj > bi) return;                              // pairs (i > j) live in tiles with bi ≥ bj
  int const tx = int(threadIdx.x), ty = int(threadIdx.y);  // (32, 8)
  // tile = H[bj·32 + ·, bi·32 + ·] (the mirrored tile), stored transposed.
  for (int yy = ty; yy < 32; yy += 8) {
    index_t const r = bj * 32 + yy, c = bi * 32 + tx;
    tile[tx][yy] = (r < n && c < n) ? h[r * n + c] : T(0);
  }
  __syncthreads();
  double local = -1;
  index_t where = 0;
  for (int yy = ty; yy < 32; yy += 8) {
    index_t const i = bi * 32 + yy, j = bj * 32 + tx;
    if (i < n && j < n) {
      T const a = h[i * n + j];   // H(i, j)
      T const b = tile[yy][tx];   // H(j, i)
      if (i == j) atomicMax(&rec->max_diag, magnitude_key(fabs(double(a)), 0));
      else if (i > j) {
        double const d = fabs(double(a) - double(b));
        if (d > local) {
          local = d;
          where = i * n + j;
        }
      }
    }
  }
  // One atomic per block: a warp butterfly on the (magnitude, index) keys, then the block's warps in shared memory.
  unsigned long long key = local > 0 ? magnitude_key(local, static_cast<unsigned long long>(where)) : 0ull;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    unsigned long long const o = __shfl_xor_sync(full_mask, key, off);
    key = o > key ? o : key;
  }
  __shared__ unsigned long long keys[8];
  int const warp = (ty * 32 + tx) / 32;
  if ((tx & 31) == 0) keys[warp] = key;
  __syncthreads();
  if (ty == 0 && tx == 0) {
    unsigned long long best = 0;
    for (int w = 0; w < 8; ++w) best = keys[w] > best ? keys[w] : best;
    if (best > 0) atomicMax(&rec->max_asym, best);
  }
}

}  // namespace rsq::cuda::kernels
