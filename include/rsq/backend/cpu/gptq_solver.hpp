// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The GPTQ column solver on the CPU (spec §6), with the reference's exact semantics:
///  - per-row grids fitted on the original W (before dead columns are zeroed), dynamic groups refitted on the
///    global W when their first column is reached (completed blocks' updates only), static groups fitted up front;
///  - U = upper Cholesky factor of (H + k·damp·I)⁻¹ from one Cholesky and one triangular inverse;
///  - for each block of B columns: quantize column by column, propagate the scaled error to the rest of the block,
///    then apply the lazy update W[:, i2:] −= E·U[i1:i2, i2:].
/// Rows are independent given U, so they are solved in panels of up to 512 rows, one panel per thread at a time.
/// A panel lives column-major in a per-thread workspace (solve order, dead columns zeroed): a block's columns are then
/// contiguous, the lazy update is one GEMM into column-major storage, and the only transpositions are loading the
/// panel and storing its results (in SIMD register tiles, with the permutation folded into the tiles' lines). Inside
/// a block the columns are halved recursively (the left half's errors reach the right half in one GEMM) down to
/// leaves of 16 columns, solved by a kernel that holds 64 rows of the leaf in a local array and fuses the
/// quantization; nearly all flops run in Eigen's GEMM kernels. docs/gptq.md has the measurements behind the shapes.
/// How many rows a panel holds depends on the thread count; what a row computes does not (gptq_solve says how), so
/// the results are the same bits for every thread count.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/backend/cpu/gemm.hpp"
#include "rsq/backend/cpu/linalg.hpp"
#include "rsq/backend/cpu/scratch.hpp"
#include "rsq/backend/cpu/transpose.hpp"
#include "rsq/core/memory.hpp"
#include "rsq/gptq/factorization.hpp"
#include "rsq/gptq/preprocess.hpp"
#include "rsq/gptq/result.hpp"
#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/gptq/options.hpp"
#include "rsq/quant/grid.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace rsq::cpu::detail {

/// Columns of a leaf of the in-block recursion; wider ranges are halved with a GEMM between the halves.
inline constexpr index_t gptq_leaf_columns = 16;
/// Rows per panel: big enough for GEMM efficiency, small enough that a block of the panel stays in L2.
inline constexpr index_t gptq_panel_rows = 512;

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

/// A column-major panel seen through a pointer and a column stride.
template <class T>
struct panel_ref {
  T* data;
  index_t ld;
  [[nodiscard]] T* col(index_t j) const noexcept { return data + j * ld; }
};

/// Rows the leaf kernel works on at a time: four AVX-512 registers of floats, so four independent chains of a
/// column's quantization (two divisions deep) are in flight; with 16 rows the kernel was latency-bound at 2.3× the
/// time. Panels are padded to a multiple of it.
inline constexpr index_t gptq_leaf_rows = 64;

/// The leaf of the in-block recursion: columns [c0, c0 + nl) of a panel (nl ≤ gptq_leaf_columns), every earlier
/// column's error already applied to them. Each column is quantized (spec §6 step 7: code = clamp(round(x/s) + z,
/// 0, max_code), q = s·(code − z), scaled error (x − q)/d, loss Σ(x − q)²/(2d²), the reference's arithmetic operation
/// by operation) and its error propagated to the leaf's later columns. Left-looking, in registers: for each group of
/// rows, column i is loaded once, the errors of the leaf's columns before it are applied (in column order, as the
/// reference applies them), and it is quantized before it is stored: one load per update instead of the two loads
/// and a store of updating every later column in memory (docs/gptq.md). @p rows is a multiple of gptq_leaf_rows.
/// On return the columns hold q; the codes and scaled errors (error column e0 + i for column c0 + i) are written, and
/// the loss of column c0 + i over rows [64 c, 64 c + 64) of the panel goes to loss[c · loss_ld + i]: sums over fixed
/// chunks of rows, added up in row order at the end, so that the column losses do not depend on how many rows a
/// panel holds (which depends on the thread count). With @p Offset (an offset grid, llama.cpp Q4_1) the zeros hold the
/// offsets m: code = clamp(round((x − m)/s), 0, max_code), q = fl(s·code) + m (quant::encode_offset, decode_offset).
template <bool Offset, class T>
void solve_leaf(panel_ref<T> wk, panel_ref<std::uint8_t> codes, panel_ref<T> err, index_t rows, index_t c0,
                index_t e0, index_t nl, T const* const* scale, T const* const* zero, panel_ref<const T> u, T max_code,
                double* loss, index_t loss_ld) {
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"  // packet types as template arguments (as in transpose.hpp)
#endif
  using namespace Eigen::internal;
  using Packet = packet_of<T>;
  constexpr index_t P = unpacket_traits<Packet>::size;
  // Packets per group of rows: independent chains for the updates' FMAs and the quantization's divisions.
  constexpr index_t K = std::min<index_t>(4, gptq_leaf_rows / P), G = K * P;
  static_assert(gptq_leaf_rows % G == 0);
  constexpr index_t L = gptq_leaf_columns;
  Packet sq[L][K];  // per-lane Σ (x − q)² of each column over the current chunk of gptq_leaf_rows rows
  for (index_t i = 0; i < nl; ++i)
    for (index_t k = 0; k < K; ++k) sq[i][k] = pzero(Packet{});
  Packet const lo = pzero(Packet{}), hi = pset1<Packet>(max_code);
  for (index_t r0 = 0; r0 < rows; r0 += G) {
    for (index_t i = 0; i < nl; ++i) {
      T* x = wk.col(c0 + i) + r0;
      Packet a[K];
      for (index_t k = 0; k < K; ++k) a[k] = ploadu<Packet>(x + k * P);
      for (index_t j = 0; j < i; ++j) {  // x −= e_j · U(j, i), fused where there is FMA (as in the GEMMs)
        Packet const minus_u = pset1<Packet>(-u.col(c0 + i)[c0 + j]);
        T const* ej = err.col(e0 + j) + r0;
        for (index_t k = 0; k < K; ++k) a[k] = pmadd(ploadu<Packet>(ej + k * P), minus_u, a[k]);
      }
      T const* s = scale[i] + r0;
      T const* z = zero[i] + r0;
      Packet const d = pset1<Packet>(u.col(c0 + i)[c0 + i]);
      T* ev = err.col(e0 + i) + r0;
      alignas(64) T cv[G];
      for (index_t k = 0; k < K; ++k) {
        Packet const sk = ploadu<Packet>(s + k * P), zk = ploadu<Packet>(z + k * P);
        // clamp(round(x/s) + z, 0, max_code); a NaN (only from overflow: W is checked) clamps to 0, so that the
        // conversion of codes to bytes below is always defined.
        Packet c, q;
        if constexpr (Offset) {
          c = pmin(pmax<Eigen::PropagateNumbers>(print(pdiv(psub(a[k], zk), sk)), lo), hi);
          // The product rounded on its own, as the file's reader computes it (the compiler may fuse a packet
          // multiply and add).
          alignas(64) T cq[P];
          pstore(cq, c);
          for (index_t l = 0; l < P; ++l)
            cq[l] = quant::decode_offset(static_cast<std::uint8_t>(cq[l]), s[k * P + l], z[k * P + l]);
          q = pload<Packet>(cq);
        } else {
          c = pmin(pmax<Eigen::PropagateNumbers>(padd(print(pdiv(a[k], sk)), zk), lo), hi);
          q = pmul(sk, psub(c, zk));
        }
        Packet const diff = psub(a[k], q);
        pstoreu(x + k * P, q);
        pstoreu(ev + k * P, pdiv(diff, d));
        pstore(cv + k * P, c);
        sq[i][k] = pmadd(diff, diff, sq[i][k]);
      }
      std::uint8_t* code = codes.col(c0 + i) + r0;
      for (index_t r = 0; r < G; ++r) code[r] = static_cast<std::uint8_t>(cv[r]);
    }
    if ((r0 + G) % gptq_leaf_rows == 0) {  // the end of a chunk: its loss per column
      double* const chunk = loss + (r0 / gptq_leaf_rows) * loss_ld;
      for (index_t i = 0; i < nl; ++i) {
        Packet acc = sq[i][0];
        for (index_t k = 1; k < K; ++k) acc = padd(acc, sq[i][k]);
        double const d = double(u.col(c0 + i)[c0 + i]);
        chunk[i] = double(predux(acc)) / (2.0 * d * d);
        for (index_t k = 0; k < K; ++k) sq[i][k] = pzero(Packet{});
      }
    }
  }
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
}

/// A thread's workspace for the panels it solves, cut from scratch memory (kept between calls: cpu/scratch.hpp,
/// since fresh pages cost more than the solve of a small layer): the panel in solve order, a block's scaled errors,
/// the panel's grids (column g: group g), a dynamic group's per-row range, and the panel's codes.
template <class T>
struct panel_workspace {
  using col_map = Eigen::Map<eigen_col_matrix<T>, Eigen::Aligned64>;
  using vec_map = Eigen::Map<eigen_vector<T>, Eigen::Aligned64>;
  col_map pan, e, scale, zero;
  vec_map range_lo, range_hi;
  Eigen::Map<eigen_col_matrix<std::uint8_t>, Eigen::Aligned64> codes;

  panel_workspace(scratch_carver& c, index_t rows, index_t cols, index_t e_cols, index_t groups)
      : pan(c.take<T>(std::size_t(rows * cols)), rows, cols),
        e(c.take<T>(std::size_t(rows * e_cols)), rows, e_cols),
        scale(c.take<T>(std::size_t(rows * groups)), rows, groups),
        zero(c.take<T>(std::size_t(rows * groups)), rows, groups),
        range_lo(c.take<T>(std::size_t(rows)), rows),
        range_hi(c.take<T>(std::size_t(rows)), rows),
        codes(c.take<std::uint8_t>(std::size_t(rows * cols)), rows, cols) {}
};

/// Rows [r0, r0 + n) of W into a column-major panel in solve order: pan(r, position[c]) = W(r0 + r, c); the panel's
/// remaining rows zero (dead columns are zeroed by the caller, after the per-row grids are fitted). Register tiles
/// (cpu/transpose.hpp) walk along W's rows, or with a column permutation (@p permuted) down the panel's columns; the
/// edges and strided weights go element by element. Returns whether the rows are finite: W's values are checked
/// here, as they pass through registers, rather than in a separate read of W (1.4 % of a 1024 × 1024 solve).
template <class T, class Pan>
[[nodiscard]] bool load_panel(matrix_view<const T> w, index_t r0, index_t n, std::vector<index_t> const& position,
                              bool permuted, Pan& pan) {
  constexpr index_t P = transpose_tile_size<T>;
  index_t const cols = w.cols();
  pan.bottomRows(pan.rows() - n).setZero();  // rows past the last one solve to zero
  bool edges_finite = true;
  auto element = [&](index_t r, index_t c) {
    T const v = w(r0 + r, c);
    edges_finite &= bool(std::isfinite(v));
    pan(r, position[std::size_t(c)]) = v;
  };
  if (w.stride(1) == 1) {  // grid (panel row r, W column c)
    // Timed on a cold 512-row panel: along W's rows 0.28–0.31 ms in solve order, 0.37–0.44 ms permuted (the tiles
    // then write to scattered columns of the panel); down the panel's columns, permuted, 0.26–0.28 ms.
    bool const tiles_finite = transpose_tiles<T, true>(
        n, cols, !permuted,
        [&](index_t rt, index_t c0, T const** src, T** dst) {
          for (index_t k = 0; k < P; ++k) {
            src[k] = &w(r0 + rt + k, c0);
            dst[k] = &pan(rt, position[std::size_t(c0 + k)]);
            // Along the rows, P rows are read side by side, more streams than the hardware prefetcher follows: each
            // row's line four tiles ahead is asked for (0.21–0.25 ms instead of 0.28–0.31 ms).
            if (!permuted && c0 + 4 * P < cols) Eigen::internal::prefetch(src[k] + 4 * P);
            // Down the columns, the same lines four tiles further down (cold 512-row panel, five alternating runs:
            // medians 0.29–0.31 ms instead of 0.30–0.36 ms).
            if (permuted && rt + 5 * P <= n) Eigen::internal::prefetch(&w(r0 + rt + 4 * P + k, c0));
          }
        },
        element);
    return tiles_finite && edges_finite;
  }
  for (index_t r = 0; r < n; ++r)  // strided weights: no whole packet in a row
    for (index_t c = 0; c < cols; ++c) element(r, c);
  return edges_finite;
}

/// The inverse of load_panel for a panel's results (dequantized values or codes): out(r0 + r, c) = pan(r,
/// position[c]) for r < n, out row-major with row stride @p ld_out, in register tiles along the output's rows.
template <class Pan>
void store_panel(Pan const& pan, index_t r0, index_t n, std::vector<index_t> const& position,
                 typename Pan::Scalar* out, index_t ld_out) {
  using T = typename Pan::Scalar;
  constexpr index_t P = transpose_tile_size<T>;
  transpose_tiles<T>(
      n, pan.cols(), true,
      [&](index_t rt, index_t c0, T const** src, T** dst) {
        for (index_t k = 0; k < P; ++k) {
          src[k] = &pan(rt, position[std::size_t(c0 + k)]);
          dst[k] = out + (r0 + rt + k) * ld_out + c0;
        }
      },
      [&](index_t r, index_t c) { out[(r0 + r) * ld_out + c] = pan(r, position[std::size_t(c)]); });
}

template <class T>
gptq::factorization<T, backend::cpu_eigen> gptq_factor(matrix_view<const T> h, gptq::options const& opt) {
  auto plan = gptq::detail::plan_factorization(h, opt);
  index_t const cols = h.cols();
  auto const& perm = plan.info.perm;
  gptq::factorization<T, backend::cpu_eigen> f;
  f.u.resize(cols, cols);
  rsq::detail::advise_huge_pages(f.u.data(), std::size_t(f.u.size()) * sizeof(T));
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

/// The solve; the arrays of @p res (a result the caller no longer needs, or an empty one) are reused where their
/// sizes match (rsq::reshape_for_overwrite), and every field is overwritten.
template <class T>
gptq::result<T> gptq_solve(matrix_view<const T> w, gptq::factorization<T, backend::cpu_eigen> const& f,
                           quant::grid_spec const& grid, gptq::options const& opt, gptq::result<T> res) {
  index_t const rows = w.rows(), cols = w.cols();
  index_t const group = opt.group_size > 0 ? opt.group_size : cols;
  index_t const groups = gptq::detail::group_count(cols, opt.group_size);
  bool const dynamic_groups = opt.group_size > 0 && !opt.static_groups;
  int const max_code = grid.max_code();
  auto const& perm = f.perm;
  auto const& u = f.u;

  res = gptq::detail::start_result(f, std::move(res));
  if (!f.ok()) {  // no panel is loaded: W is checked here (a bad W is reported before a failed factorization)
    rsq::detail::check_finite(w, "gptq::solve: weight");
    return res;
  }

  // Every element of these is written below.
  quant::quantized_weight<T>& qw = res.weight;
  qw.bits = grid.bits;
  qw.offset = grid.offset_form();
  rsq::reshape_for_overwrite(qw.scales, rows, groups);
  rsq::reshape_for_overwrite(qw.zeros, rows, groups);
  qw.g_idx = gptq::detail::group_index(perm, opt);
  rsq::reshape_for_overwrite(qw.codes, rows, cols);
  rsq::reshape_for_overwrite(res.dequantized, rows, cols);
  rsq::detail::advise_huge_pages(qw.codes.data(), qw.codes.size());
  rsq::detail::advise_huge_pages(res.dequantized.data(), res.dequantized.size() * sizeof(T));

  // Static groups: one grid per (row, group) of original columns, after the dead-column step, fitted up front (rows
  // in parallel; a NaN or Inf only makes grids that are never used: its panel's load reports it). Per-row grids and
  // dynamic groups are fitted panel by panel, below, from panels whose load found them finite.
  if (opt.static_groups) {
#if defined(_OPENMP)
#pragma omp parallel
#endif
    {
      std::vector<T> seg(static_cast<std::size_t>(group));
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
      for (index_t r = 0; r < rows; ++r) {
        for (index_t g = 0; g < groups; ++g) {
          index_t const c0 = g * group, len = std::min(group, cols - c0);
          for (index_t k = 0; k < len; ++k) seg[std::size_t(k)] = f.dead[std::size_t(c0 + k)] ? T(0) : w(r, c0 + k);
          auto const p = quant::fit(grid, seg.data(), len);
          qw.scales(r, g) = p.scale;
          qw.zeros(r, g) = p.zero;
        }
      }
    }
  }

  int threads = 1;
#if defined(_OPENMP)
  threads = omp_get_max_threads();
#endif
  // At least one panel per thread; panel rows a multiple of the leaf kernel's chunk.
  constexpr index_t row_align = gptq_leaf_rows;
  index_t const per_thread = (rows + threads - 1) / threads;
  index_t const panel_rows = std::min(gptq_panel_rows, (per_thread + row_align - 1) / row_align * row_align);
  index_t const panels = (rows + panel_rows - 1) / panel_rows;
  // The panels' rows, and so the panels' sizes, depend on the thread count; each row's arithmetic must not. The
  // leaf kernel treats every row alike, the GEMMs go through gemm_update_row_independent, and the losses are kept
  // per chunk of gptq_leaf_rows rows (panels start at multiples of it) and summed in row order at the end: results
  // do not depend on the thread count or the schedule.
  index_t const loss_chunks = (rows + gptq_leaf_rows - 1) / gptq_leaf_rows;
  std::vector<double> chunk_loss(static_cast<std::size_t>(loss_chunks * cols));  // (chunks, cols), solve order
  std::vector<char> panel_finite(static_cast<std::size_t>(panels), 1);  // a NaN or Inf found by the panel's load
  // The grid that quantizes solve-order column j.
  auto grid_of = [&](index_t j) -> index_t {
    return opt.group_size <= 0 ? 0 : (opt.static_groups ? perm[std::size_t(j)] / group : j / group);
  };
  panel_ref<const T> const u_ref{u.data(), u.outerStride()};
  std::vector<index_t> position(static_cast<std::size_t>(cols));  // original column -> solve position
  for (index_t j = 0; j < cols; ++j) position[std::size_t(perm[std::size_t(j)])] = j;
  bool const permuted = !std::is_sorted(position.begin(), position.end());  // sorted: the identity

  // Per-thread workspaces, reused across panels, cut from the calling thread's scratch block.
  index_t const e_cols = std::min(opt.block_size, cols);
  int const team = int(std::min<index_t>(threads, panels));
  std::size_t const per_thread_bytes = [&] {
    scratch_carver sizing;
    (void)panel_workspace<T>(sizing, panel_rows, cols, e_cols, groups);
    return sizing.bytes();
  }();
  scratch_lease const lease(per_thread_bytes * std::size_t(team));

#if defined(_OPENMP)
#pragma omp parallel num_threads(team)
#endif
  {
    int thread = 0;
#if defined(_OPENMP)
    thread = omp_get_thread_num();
#endif
    scratch_carver carver(lease.data() + per_thread_bytes * std::size_t(thread));
    panel_workspace<T> ws(carver, panel_rows, cols, e_cols, groups);
    auto &pan = ws.pan, &e = ws.e, &pscale = ws.scale, &pzero = ws.zero;
    auto &range_lo = ws.range_lo, &range_hi = ws.range_hi;
    auto& pan_codes = ws.codes;
    T const* leaf_scale[gptq_leaf_columns];
    T const* leaf_zero[gptq_leaf_columns];
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (index_t pi = 0; pi < panels; ++pi) {
      index_t const r0 = pi * panel_rows, n = std::min(panel_rows, rows - r0);
      index_t const n_pad = (n + gptq_leaf_rows - 1) / gptq_leaf_rows * gptq_leaf_rows;  // padded rows stay zero
      double* const loss = chunk_loss.data() + (r0 / gptq_leaf_rows) * cols;  // this panel's chunks
      // The grid of group g for the panel's rows from its solve-order columns [col, col + len): each row's range,
      // scanned down the columns (vectorized over rows), then the grid per row. The clip search reads the values
      // again, from @p x (row r at x + r·ld, step @p step), in the order the reference sums them.
      auto fit_rows = [&](index_t g, index_t col, index_t len, T const* x, index_t ld, index_t step) {
        range_lo.setZero();
        range_hi.setZero();
        for (index_t c = col; c < col + len; ++c) {
          T const* v = &pan(0, c);
          for (index_t r = 0; r < n; ++r) {
            range_lo[r] = v[r] < range_lo[r] ? v[r] : range_lo[r];
            range_hi[r] = v[r] > range_hi[r] ? v[r] : range_hi[r];
          }
        }
        for (index_t r = 0; r < n; ++r) {
          auto const p = quant::fit_range(grid, range_lo[r], range_hi[r], x + r * ld, len, step);
          pscale(r, g) = p.scale;
          pzero(r, g) = p.zero;
        }
      };
      if (!load_panel(w, r0, n, position, permuted, pan)) {
        panel_finite[std::size_t(pi)] = 0;  // reported below, where an exception may leave the parallel region
        continue;
      }
      pscale.bottomRows(panel_rows - n).setOnes();
      pzero.bottomRows(panel_rows - n).setZero();
      if (opt.group_size <= 0)  // per row: on the original W, before dead columns are zeroed (as the reference)
        fit_rows(0, 0, cols, &w(r0, 0), w.stride(0), w.stride(1));
      if (opt.static_groups)
        for (index_t g = 0; g < groups; ++g)
          for (index_t r = 0; r < n; ++r) {
            pscale(r, g) = qw.scales(r0 + r, g);
            pzero(r, g) = qw.zeros(r0 + r, g);
          }
      for (index_t c = 0; c < cols; ++c)
        if (f.dead[std::size_t(c)]) pan.col(position[std::size_t(c)]).head(n).setZero();
      auto wk = pan.topRows(n_pad);  // updated in place; a finished column holds its dequantized values
      panel_ref<T> const wk_ref{pan.data(), pan.outerStride()}, e_ref{e.data(), e.outerStride()};
      panel_ref<std::uint8_t> const codes_ref{pan_codes.data(), pan_codes.outerStride()};

      for (index_t i1 = 0; i1 < cols; i1 += opt.block_size) {
        index_t const i2 = std::min(i1 + opt.block_size, cols), nb = i2 - i1;
        auto eb = e.topLeftCorner(n_pad, nb);
        // Dynamic groups starting in this block are refitted now, on W with the completed blocks' updates and none
        // of this block's: what the reference sees when it reaches each group's first column.
        if (dynamic_groups)
          for (index_t col = (i1 + group - 1) / group * group; col < i2; col += group)
            fit_rows(col / group, col, std::min(group, cols - col), &pan(0, col), 1, pan.outerStride());
        // Halves recursively: the left half's errors reach the right half in one GEMM.
        auto solve_range = [&](auto&& self, index_t s0, index_t s1) -> void {
          if (s1 - s0 <= gptq_leaf_columns) {
            for (index_t i = s0; i < s1; ++i) {
              leaf_scale[i - s0] = pscale.col(grid_of(i1 + i)).data();
              leaf_zero[i - s0] = pzero.col(grid_of(i1 + i)).data();
            }
            auto const leaf = grid.offset_form() ? solve_leaf<true, T> : solve_leaf<false, T>;
            leaf(wk_ref, codes_ref, e_ref, n_pad, i1 + s0, s0, s1 - s0, leaf_scale, leaf_zero, u_ref, T(max_code),
                 loss + i1 + s0, cols);
            return;
          }
          index_t const mid = s0 + ((s1 - s0) / 2 + gptq_leaf_columns - 1) / gptq_leaf_columns * gptq_leaf_columns;
          self(self, s0, mid);
          gemm_update_row_independent<T>(wk.middleCols(i1 + mid, s1 - mid), eb.middleCols(s0, mid - s0),
                                         u.block(i1 + s0, i1 + mid, mid - s0, s1 - mid), T(-1));
          self(self, mid, s1);
        };
        solve_range(solve_range, 0, nb);
        if (i2 < cols)
          gemm_update_row_independent<T>(wk.middleCols(i2, cols - i2), eb, u.block(i1, i2, nb, cols - i2), T(-1));
      }
      store_panel(wk, r0, n, position, res.dequantized.data(), cols);
      store_panel(pan_codes, r0, n, position, qw.codes.data(), cols);
      if (!opt.static_groups)
        for (index_t g = 0; g < groups; ++g)
          for (index_t r = 0; r < n; ++r) {
            qw.scales(r0 + r, g) = pscale(r, g);
            qw.zeros(r0 + r, g) = pzero(r, g);
          }
    }
  }

  if (std::find(panel_finite.begin(), panel_finite.end(), 0) != panel_finite.end()) {
    rsq::detail::check_finite(w, "gptq::solve: weight");  // throws, naming the first NaN or Inf
    rsq::detail::throw_invalid_argument("gptq::solve: weight has a non-finite value (it changed during the solve)");
  }
  rsq::reshape_for_overwrite(res.column_loss, cols);
  for (index_t j = 0; j < cols; ++j) {
    double s = 0;
    for (index_t c = 0; c < loss_chunks; ++c) s += chunk_loss[std::size_t(c * cols + j)];
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
                                                      quant::grid_spec const&, gptq::options const&,
                                                      gptq::result<float>);
extern template gptq::result<double> gptq_solve<double>(matrix_view<const double>,
                                                        gptq::factorization<double, backend::cpu_eigen> const&,
                                                        quant::grid_spec const&, gptq::options const&,
                                                        gptq::result<double>);
#endif

}  // namespace rsq::cpu::detail

namespace rsq::backend {

/// The CPU backend of gptq::factor() and gptq::solve() (<rsq/gptq/solve.hpp>): H is validated here, W as the solver
/// loads its panels (the first NaN or Inf is named by position either way).
template <>
struct implementation<algorithm::gptq, cpu_eigen> {
  static constexpr bool available = true;

  template <class T>
  static gptq::factorization<T, cpu_eigen> factor(cpu_eigen const&, matrix_view<const T> h,
                                                  gptq::options const& opt) {
    gptq::detail::validate_hessian(h);
    return cpu::detail::gptq_factor(h, opt);
  }
  template <class T>
  static gptq::result<T> solve(cpu_eigen const&, matrix_view<const T> w, gptq::factorization<T, cpu_eigen> const& f,
                               quant::grid_spec const& grid, gptq::options const& opt, gptq::result<T>&& recycled) {
    return cpu::detail::gptq_solve(w, f, grid, opt, std::move(recycled));
  }
};

}  // namespace rsq::backend
