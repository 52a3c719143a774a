// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The GPTQ column solver on the CPU (spec §6), with the reference's exact semantics:
///  - per-row grids fitted on the original W (before dead columns are zeroed), dynamic groups refitted on the
///    global W when their first column is reached (completed blocks' updates only), static groups fitted up front;
///  - U = upper Cholesky factor of (H + k·damp·I)⁻¹ from one Cholesky and one triangular inverse;
///  - for each block of B columns: quantize column by column, propagate the scaled error to the rest of the block,
///    then apply the lazy update W[:, i2:] −= E·U[i1:i2, i2:].
/// Rows are independent given U, so the rows are split across threads and each thread runs the whole column loop on
/// its rows; inside a block the error is propagated by rank-1 updates within sub-blocks of 16 columns and by small
/// GEMMs between sub-blocks, so nearly all flops run in Eigen's GEMM kernels.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/backend/cpu/linalg.hpp"
#include "rsq/gptq/factorization.hpp"
#include "rsq/gptq/preprocess.hpp"
#include "rsq/gptq/result.hpp"
#include "rsq/gptq/solve_api.hpp"
#include "rsq/quant/grid.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace rsq::cpu::detail {

/// Columns per sub-block of the in-block error propagation (rank-1 updates inside, GEMMs between).
inline constexpr index_t gptq_sub_block = 16;

}  // namespace rsq::cpu::detail

namespace rsq::gptq {

/// CPU factorization: U in a column-major Eigen matrix (cols, cols), solve order.
template <class T>
class factorization<T, backend::cpu_eigen> : public factorization_info {
 public:
  cpu::eigen_col_matrix<T> u;
};

}  // namespace rsq::gptq

namespace rsq::cpu::detail {

/// Quantizes one column of a block for all rows of a chunk (spec §6 step 7): q = s·(code − z) with
/// code = clamp(round(x/s) + z, 0, max_code), the scaled error (x − q)/d, and Σ(x − q)²/(2d²). Written as one
/// vectorizable loop (nearbyint vectorizes under `omp simd`); the arithmetic is the reference's, operation by operation.
template <class T>
double quantize_column(T const* __restrict x, T const* __restrict scale, T const* __restrict zero, T max_code, T d,
                       index_t n, T* __restrict q, T* __restrict code, T* __restrict err) {
  T acc = T(0);
#if defined(_OPENMP)
#pragma omp simd reduction(+ : acc)
#endif
  for (index_t r = 0; r < n; ++r) {
    T c = std::nearbyint(x[r] / scale[r]) + zero[r];
    c = c < T(0) ? T(0) : (c > max_code ? max_code : c);
    T const qr = scale[r] * (c - zero[r]);
    T const diff = x[r] - qr;
    q[r] = qr;
    code[r] = c;
    err[r] = diff / d;
    acc += diff * diff;
  }
  return double(acc) / (2.0 * double(d) * double(d));
}

template <class T>
gptq::factorization<T, backend::cpu_eigen> gptq_factor(matrix_view<const T> h, gptq::options const& opt) {
  auto plan = gptq::detail::plan_factorization(h, opt);
  index_t const cols = h.cols();
  auto const& perm = plan.info.perm;
  gptq::factorization<T, backend::cpu_eigen> f;
  f.u.resize(cols, cols);
  // Attempt k factors a fresh copy of the permuted H with damping k·damp; only the lower triangle is read. The copy
  // goes tile by tile: element by element down a column of a row-major H is one TLB miss per element (0.5 s at
  // n = 4096, longer than the factorization).
  constexpr index_t tile = 64;
  index_t const tiles = (cols + tile - 1) / tile;
  gptq::detail::escalate(plan, opt, [&](T damp) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1)
#endif
    for (index_t jt = 0; jt < tiles; ++jt) {
      index_t const j0 = jt * tile, j1 = std::min(cols, j0 + tile);
      for (index_t i = j0; i < cols; ++i) {
        index_t const hi = perm[std::size_t(i)];
        for (index_t j = j0; j < std::min(j1, i + 1); ++j) f.u(i, j) = h(hi, perm[std::size_t(j)]);
      }
    }
    for (index_t i = 0; i < cols; ++i) f.u(i, i) = plan.diag[perm[i]] + damp;
    return upper_cholesky_of_inverse_inplace<T>(f.u);
  });
  static_cast<gptq::factorization_info&>(f) = std::move(plan.info);
  if (!f.ok()) f.u.resize(0, 0);
  return f;
}

template <class T>
gptq::result<T> gptq_solve(matrix_view<const T> w, gptq::factorization<T, backend::cpu_eigen> const& f,
                           quant::grid_spec const& grid, gptq::options const& opt) {
  index_t const rows = w.rows(), cols = w.cols();
  index_t const group = opt.group_size > 0 ? opt.group_size : cols;
  index_t const groups = gptq::detail::group_count(cols, opt.group_size);
  bool const dynamic_groups = opt.group_size > 0 && !opt.static_groups;
  int const max_code = grid.max_code();
  auto const& perm = f.perm;
  auto const& u = f.u;

  gptq::result<T> res;
  gptq::detail::copy_factorization_info(f, res);
  if (!f.ok()) return res;

  quant::quantized_weight<T>& qw = res.weight;
  qw.bits = grid.bits;
  qw.scales = rsq::make_matrix<T>(rows, groups);
  qw.zeros = rsq::make_matrix<T>(rows, groups);
  qw.g_idx = gptq::detail::group_index(perm, opt);
  qw.codes = rsq::make_matrix_for_overwrite<std::uint8_t>(rows, cols);
  res.dequantized = rsq::make_matrix_for_overwrite<T>(rows, cols);

  // Working copy, row-major in solve order, dead columns zeroed (spec §6 steps 2 and 4): every later access is
  // row-local, so the permutation costs nothing extra. Per-row grids come from the original W: the reference fits
  // them before zeroing dead columns. (Rows in parallel: first touches of fresh memory are a large part of the cost.)
  eigen_row_matrix<T> wp(rows, cols);  // (rows, cols)
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (index_t r = 0; r < rows; ++r) {
    for (index_t j = 0; j < cols; ++j) wp(r, j) = f.dead[perm[j]] ? T(0) : w(r, perm[j]);
    if (opt.group_size <= 0) {
      auto const p = quant::fit(grid, &w(r, 0), cols, w.stride(1));
      qw.scales(r, 0) = p.scale;
      qw.zeros(r, 0) = p.zero;
    }
  }

  // Static groups: one grid per (group, row), fitted on W after the dead-column step, original column order.
  if (opt.static_groups) {
    std::vector<index_t> position(static_cast<std::size_t>(cols));  // original column -> solve position
    for (index_t j = 0; j < cols; ++j) position[perm[j]] = j;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
    for (index_t r = 0; r < rows; ++r) {
      std::vector<T> seg(static_cast<std::size_t>(group));
      for (index_t g = 0; g < groups; ++g) {
        index_t const c0 = g * group, n = std::min(group, cols - c0);
        for (index_t k = 0; k < n; ++k) seg[k] = wp(r, position[c0 + k]);
        auto const p = quant::fit(grid, seg.data(), n);
        qw.scales(r, g) = p.scale;
        qw.zeros(r, g) = p.zero;
      }
    }
  }

  // Split rows over threads; each chunk runs the whole column loop with single-threaded GEMMs.
  int threads = 1;
#if defined(_OPENMP)
  threads = omp_get_max_threads();
#endif
  index_t const chunks = std::max<index_t>(1, std::min<index_t>(threads, rows / 32));
  std::vector<std::vector<double>> chunk_loss(static_cast<std::size_t>(chunks),
                                              std::vector<double>(static_cast<std::size_t>(cols), 0.0));

#if defined(_OPENMP)
#pragma omp parallel for schedule(static, 1) num_threads(int(chunks))
#endif
  for (index_t ch = 0; ch < chunks; ++ch) {
    index_t const r0 = rows * ch / chunks, n = rows * (ch + 1) / chunks - r0;
    auto wc = wp.middleRows(r0, n);  // (n, cols) this chunk's rows, updated in place
    std::vector<T> scale(static_cast<std::size_t>(n)), zero(static_cast<std::size_t>(n));
    for (index_t r = 0; r < n; ++r) {
      scale[r] = qw.scales(r0 + r, 0);
      zero[r] = qw.zeros(r0 + r, 0);
    }
    eigen_col_matrix<T> w1, e, q1, c1;  // (n, nb) block, scaled errors, dequantized values, codes
    auto& loss = chunk_loss[std::size_t(ch)];
    for (index_t i1 = 0; i1 < cols; i1 += opt.block_size) {
      index_t const i2 = std::min(i1 + opt.block_size, cols), nb = i2 - i1;
      w1 = wc.middleCols(i1, nb);
      e.resize(n, nb);
      q1.resize(n, nb);
      c1.resize(n, nb);
      for (index_t s0 = 0; s0 < nb; s0 += gptq_sub_block) {
        index_t const s1 = std::min(s0 + gptq_sub_block, nb);
        for (index_t i = s0; i < s1; ++i) {
          index_t const col = i1 + i;
          if (dynamic_groups && col % group == 0) {
            // The reference refits on the global W: completed blocks' updates, none of this block's.
            index_t const len = std::min(group, cols - col);
            for (index_t r = 0; r < n; ++r) {
              auto const p = quant::fit(grid, &wc(r, col), len);
              scale[r] = qw.scales(r0 + r, col / group) = p.scale;
              zero[r] = qw.zeros(r0 + r, col / group) = p.zero;
            }
          } else if (opt.static_groups && (col == 0 || perm[col] / group != perm[col - 1] / group)) {
            index_t const g = perm[col] / group;
            for (index_t r = 0; r < n; ++r) {
              scale[r] = qw.scales(r0 + r, g);
              zero[r] = qw.zeros(r0 + r, g);
            }
          }
          loss[col] += quantize_column(w1.col(i).data(), scale.data(), zero.data(), T(max_code), u(col, col), n,
                                       q1.col(i).data(), c1.col(i).data(), e.col(i).data());
          for (index_t j = i + 1; j < s1; ++j) w1.col(j) -= u(col, i1 + j) * e.col(i);
        }
        if (s1 < nb)
          w1.middleCols(s1, nb - s1).noalias() -=
              e.middleCols(s0, s1 - s0) * u.block(i1 + s0, i1 + s1, s1 - s0, nb - s1);
      }
      if (i2 < cols) wc.middleCols(i2, cols - i2).noalias() -= e * u.block(i1, i2, nb, cols - i2);
      // The block's results go to their original columns (row-local writes).
      for (index_t r = 0; r < n; ++r) {
        T* qrow = &res.dequantized(r0 + r, 0);
        std::uint8_t* crow = &qw.codes(r0 + r, 0);
        for (index_t i = 0; i < nb; ++i) {
          qrow[perm[i1 + i]] = q1(r, i);
          crow[perm[i1 + i]] = static_cast<std::uint8_t>(c1(r, i));
        }
      }
    }
  }

  res.column_loss = rsq::make_vector<T>(cols);
  for (index_t j = 0; j < cols; ++j) {
    double s = 0;
    for (auto const& l : chunk_loss) s += l[j];
    res.column_loss(perm[j]) = T(s);
  }
  return res;
}

#if defined(RSQ_EXTERN_TEMPLATES)
// The CPU solver for float and double lives in the translation unit that includes <rsq/instantiate.hpp>.
extern template gptq::factorization<float, backend::cpu_eigen> gptq_factor<float>(matrix_view<const float>,
                                                                                 gptq::options const&);
extern template gptq::factorization<double, backend::cpu_eigen> gptq_factor<double>(matrix_view<const double>,
                                                                                   gptq::options const&);
extern template gptq::result<float> gptq_solve<float>(matrix_view<const float>,
                                                      gptq::factorization<float, backend::cpu_eigen> const&,
                                                      quant::grid_spec const&, gptq::options const&);
extern template gptq::result<double> gptq_solve<double>(matrix_view<const double>,
                                                        gptq::factorization<double, backend::cpu_eigen> const&,
                                                        quant::grid_spec const&, gptq::options const&);
#endif

}  // namespace rsq::cpu::detail

namespace rsq::gptq::detail {

/// The CPU backend of gptq::factor() and gptq::solve().
template <>
struct solver<backend::cpu_eigen> {
  template <class T>
  static factorization<T, backend::cpu_eigen> factor(backend::cpu_eigen const&, matrix_view<const T> h,
                                                     options const& opt) {
    return cpu::detail::gptq_factor(h, opt);
  }
  template <class T>
  static result<T> solve(backend::cpu_eigen const&, matrix_view<const T> w,
                         factorization<T, backend::cpu_eigen> const& f, quant::grid_spec const& grid,
                         options const& opt) {
    return cpu::detail::gptq_solve(w, f, grid, opt);
  }
};

}  // namespace rsq::gptq::detail
