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

/// Writes the permuted column-major @p src (rows, cols) into row-major @p dst with dst(r, perm[j]) = src(r, j), in
/// cache-sized tiles.
template <class S, class D>
void scatter_columns(S const& src, std::vector<std::int32_t> const& perm, D& dst) {
  index_t const rows = src.rows(), cols = src.cols();
  constexpr index_t tile = 64;
  for (index_t r0 = 0; r0 < rows; r0 += tile)
    for (index_t j0 = 0; j0 < cols; j0 += tile)
      for (index_t j = j0; j < std::min(j0 + tile, cols); ++j)
        for (index_t r = r0; r < std::min(r0 + tile, rows); ++r) dst(r, perm[j]) = src(r, j);
}

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

template <class T>
gptq::factorization<T, backend::cpu_eigen> gptq_factor(matrix_view<const T> h, gptq::options const& opt) {
  auto plan = gptq::detail::plan_factorization(h, opt);
  index_t const cols = h.cols();
  auto const& perm = plan.info.perm;
  gptq::factorization<T, backend::cpu_eigen> f;
  f.u.resize(cols, cols);
  // Attempt k factors a fresh copy of the permuted H with damping k·damp; only the lower triangle is read.
  gptq::detail::escalate(plan, opt, [&](T damp) {
    for (index_t j = 0; j < cols; ++j)
      for (index_t i = j; i < cols; ++i) f.u(i, j) = h(perm[i], perm[j]);
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
  using col_matrix = eigen_col_matrix<T>;
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

  // Per-row grids come from the original W: the reference fits them before zeroing dead columns.
  std::vector<quant::affine_params<T>> row_params;
  if (opt.group_size <= 0) {
    row_params.resize(std::size_t(rows));
    for (index_t r = 0; r < rows; ++r) row_params[r] = quant::fit(grid, &w(r, 0), cols, w.stride(1));
  }

  col_matrix wd = as_eigen(w);  // (rows, cols) working copy, original column order
  for (index_t c = 0; c < cols; ++c)
    if (f.dead[c]) wd.col(c).setZero();

  // Static groups: one grid per (group, row), fitted on W after the dead-column step, original column order.
  std::vector<quant::affine_params<T>> static_params;
  if (opt.static_groups) {
    static_params.resize(std::size_t(groups * rows));
    eigen_row_matrix<T> tile;
    for (index_t g = 0; g < groups; ++g) {
      index_t const c0 = g * group, n = std::min(group, cols - c0);
      tile = wd.middleCols(c0, n);
      for (index_t r = 0; r < rows; ++r) static_params[g * rows + r] = quant::fit(grid, tile.row(r).data(), n);
    }
  }

  col_matrix wp(rows, cols);  // (rows, cols) in solve order
  for (index_t j = 0; j < cols; ++j) wp.col(j) = wd.col(perm[j]);
  wd.resize(0, 0);

  quant::quantized_weight<T>& qw = res.weight;
  qw.bits = grid.bits;
  qw.scales = rsq::make_matrix<T>(rows, groups);
  qw.zeros = rsq::make_matrix<T>(rows, groups);
  qw.g_idx = gptq::detail::group_index(perm, opt);
  if (opt.group_size <= 0)
    for (index_t r = 0; r < rows; ++r) {
      qw.scales(r, 0) = row_params[r].scale;
      qw.zeros(r, 0) = row_params[r].zero;
    }
  else if (opt.static_groups)
    for (index_t g = 0; g < groups; ++g)
      for (index_t r = 0; r < rows; ++r) {
        qw.scales(r, g) = static_params[g * rows + r].scale;
        qw.zeros(r, g) = static_params[g * rows + r].zero;
      }

  col_matrix qp(rows, cols);                                          // dequantized, solve order
  Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic> cp(rows, cols);  // codes, solve order

  // Split rows over threads; each chunk runs the whole column loop with single-threaded GEMMs.
  int threads = 1;
#if defined(_OPENMP)
  threads = omp_get_max_threads();
#endif
  index_t const chunks = std::max<index_t>(1, std::min<index_t>(threads, rows / 32));
  std::vector<std::vector<double>> chunk_loss(static_cast<std::size_t>(chunks), std::vector<double>(static_cast<std::size_t>(cols), 0.0));

#if defined(_OPENMP)
#pragma omp parallel for schedule(static, 1) num_threads(int(chunks))
#endif
  for (index_t ch = 0; ch < chunks; ++ch) {
    index_t const r0 = rows * ch / chunks, n = rows * (ch + 1) / chunks - r0;
    auto wc = wp.middleRows(r0, n);  // (n, cols) this chunk's rows, updated in place
    std::vector<T> scale(static_cast<std::size_t>(n)), zero(static_cast<std::size_t>(n));
    if (opt.group_size <= 0)
      for (index_t r = 0; r < n; ++r) {
        scale[r] = row_params[r0 + r].scale;
        zero[r] = row_params[r0 + r].zero;
      }
    col_matrix w1, e;
    eigen_row_matrix<T> tile;
    auto& loss = chunk_loss[std::size_t(ch)];
    for (index_t i1 = 0; i1 < cols; i1 += opt.block_size) {
      index_t const i2 = std::min(i1 + opt.block_size, cols), nb = i2 - i1;
      w1 = wc.middleCols(i1, nb);  // (n, nb) the block, updated column by column
      e.resize(n, nb);             // (n, nb) scaled errors
      for (index_t s0 = 0; s0 < nb; s0 += gptq_sub_block) {
        index_t const s1 = std::min(s0 + gptq_sub_block, nb);
        for (index_t i = s0; i < s1; ++i) {
          index_t const col = i1 + i;
          if (dynamic_groups && col % group == 0) {
            // The reference refits on the global W: completed blocks' updates, none of this block's.
            index_t const len = std::min(group, cols - col);
            tile = wc.middleCols(col, len);
            for (index_t r = 0; r < n; ++r) {
              auto const p = quant::fit(grid, tile.row(r).data(), len);
              scale[r] = p.scale;
              zero[r] = p.zero;
              qw.scales(r0 + r, col / group) = p.scale;
              qw.zeros(r0 + r, col / group) = p.zero;
            }
          } else if (opt.static_groups && (col == 0 || perm[col] / group != perm[col - 1] / group)) {
            index_t const g = perm[col] / group;
            for (index_t r = 0; r < n; ++r) {
              scale[r] = static_params[g * rows + r0 + r].scale;
              zero[r] = static_params[g * rows + r0 + r].zero;
            }
          }
          T const d = u(col, col);
          T* wcol = w1.col(i).data();
          T* ecol = e.col(i).data();
          T* qcol = qp.col(col).data() + r0;
          std::uint8_t* ccol = cp.col(col).data() + r0;
          double col_loss = 0;
          for (index_t r = 0; r < n; ++r) {
            std::uint8_t const code = quant::encode(wcol[r], scale[r], zero[r], max_code);
            T const q = quant::decode(code, scale[r], zero[r]);
            T const diff = wcol[r] - q;
            ccol[r] = code;
            qcol[r] = q;
            ecol[r] = diff / d;
            col_loss += double(diff * diff / (d * d));
          }
          loss[col] += col_loss / 2;
          for (index_t j = i + 1; j < s1; ++j) w1.col(j) -= u(col, i1 + j) * e.col(i);
        }
        if (s1 < nb)
          w1.middleCols(s1, nb - s1).noalias() -=
              e.middleCols(s0, s1 - s0) * u.block(i1 + s0, i1 + s1, s1 - s0, nb - s1);
      }
      if (i2 < cols) wc.middleCols(i2, cols - i2).noalias() -= e * u.block(i1, i2, nb, cols - i2);
    }
  }

  res.column_loss = rsq::make_vector<T>(cols);
  for (index_t j = 0; j < cols; ++j) {
    double s = 0;
    for (auto const& l : chunk_loss) s += l[j];
    res.column_loss(perm[j]) = T(s);
  }
  res.dequantized = rsq::make_matrix<T>(rows, cols);
  qw.codes = rsq::make_matrix<std::uint8_t>(rows, cols);
  scatter_columns(qp, perm, res.dequantized);
  scatter_columns(cp, perm, qw.codes);
  return res;
}

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
