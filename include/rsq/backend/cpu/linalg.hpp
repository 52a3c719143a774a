// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Dense linear algebra of the CPU backend, built on Eigen's GEMM: Cholesky, triangular inverse, the upper Cholesky
/// factor of H^-1 that GPTQ needs (spec §6 step 6), and a lower-triangle SYRK for Hessians (spec §5).
///
/// Eigen 3.4's LLT and `rankUpdate` run on one thread. Here nearly all flops are matrix products:
///  - matrices of at least two tiles are cut into tiles and every tile operation (tile Cholesky, tile solve, tile
///    GEMM) is an OpenMP task with its dependences, run by one thread with the sequential recursion; the whole
///    factorization is one parallel region with one barrier at its end, on `Eigen::nbThreads()` threads;
///  - smaller ones, and builds without OpenMP, run the recursive (Gustavson-style) algorithms that split each
///    matrix in halves, so that most of the work is a few large GEMMs.
/// Which of the two runs depends on the size alone, never on the thread count, and every product gives the same bits
/// on any number of threads (cpu/gemm.hpp): results are identical for every OMP_NUM_THREADS.
///
/// All matrices are column-major `Eigen::Ref`s (plain matrices, maps and blocks bind without a copy). Square
/// matrices work in place; only the lower triangle is read.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/backend/cpu/gemm.hpp"
#include "rsq/backend/cpu/scratch.hpp"
#include "rsq/backend/cpu/transpose.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/view.hpp"

namespace rsq::cpu {

/// A writable column-major matrix argument (matrix, map or block with unit inner stride), without copy.
template <class T>
using col_ref = Eigen::Ref<eigen_col_matrix<T>>;

namespace detail::linalg {

// Why tasks rather than Eigen's parallel GEMM: Eigen's parallel product synchronises its threads with spin-waits
// at every depth step, and a fork-join step per recursion level waits for every thread at every step. On the 2-core
// machines shared with other processes, a thread that is not scheduled then stalls everyone for a scheduler time
// slice, many times per factorization (measured: 30x slower at n = 1024). With tasks, a thread that is not running
// simply takes no tasks; the others run them.

// Leaf sizes of the sequential recursions: below them Eigen's other kernels beat further splitting.
inline constexpr index_t cholesky_leaf = 64;  // unblocked left-looking Cholesky (a GEMV per column)
inline constexpr index_t trsm_leaf = 64;      // Eigen's blocked triangular solve
inline constexpr index_t inverse_leaf = 64;   // Eigen's triangular solve against the identity
inline constexpr index_t syrk_leaf = 128;     // Eigen's triangular-destination product (no wasted upper half)

/// Tile size of the task-parallel factorizations: large enough for efficient single-threaded GEMMs, small enough
/// to give every thread several tiles per step (docs/linalg.md has the measurements).
[[nodiscard]] inline index_t factor_tile(index_t n) { return n >= 3072 ? 384 : n >= 1536 ? 256 : 192; }
/// Tile size of the task-parallel SYRK (its tiles are independent and deep: tokens x tile). Every tile re-packs its
/// two feature blocks, so wide matrices take wider tiles: at n = 4096 with 1024-token chunks (the Hessian
/// accumulator's), 512 ran at 205-221 GFLOP/s against 169-183 for 256; at n = 1024, 256 stayed ahead (172-181 vs
/// 167-175) on 2 threads.
[[nodiscard]] inline index_t syrk_tile(index_t n) { return n >= 2048 ? 512 : 256; }

/// Rounds up to a multiple of 16, so that split points keep column segments aligned to SIMD packets.
[[nodiscard]] inline constexpr index_t round16(index_t i) { return (i + 15) / 16 * 16; }

/// Where to split a dimension of n > 1: about half, rounded to a multiple of 16 when that leaves both parts
/// non-empty.
[[nodiscard]] inline index_t split(index_t n) {
  index_t const h = round16(n / 2);
  return h < n ? h : n / 2;
}

/// Threads available to a parallel region started here: one inside somebody else's parallel region.
[[nodiscard]] inline int available_threads() {
#if defined(_OPENMP)
  if (omp_in_parallel()) return 1;
  return std::max(1, Eigen::nbThreads());
#else
  return 1;
#endif
}

// ---- sequential kernels: recursions of two half-size calls around one GEMM ---------------------------------------
// Inside a parallel region Eigen runs every product on the calling thread, so these are what one task runs.

/// B <- B L^{-T}: solves X L^T = B for L (k x k) lower, B (m x k). The Cholesky panel step.
template <class T>
void trsm_right_lower_trans(Eigen::Ref<const eigen_col_matrix<T>> l, col_ref<T> b) {
  index_t const k = l.rows();
  if (k <= trsm_leaf) {
    l.transpose().template triangularView<Eigen::Upper>().template solveInPlace<Eigen::OnTheRight>(b);
    return;
  }
  index_t const k1 = split(k), k2 = k - k1;
  // X L^T = [X1 L11^T, X1 L21^T + X2 L22^T]
  trsm_right_lower_trans<T>(l.topLeftCorner(k1, k1), b.leftCols(k1));
  gemm_update<T>(b.rightCols(k2), b.leftCols(k1), l.bottomLeftCorner(k2, k1).transpose(), T(-1));
  trsm_right_lower_trans<T>(l.bottomRightCorner(k2, k2), b.rightCols(k2));
}

/// B <- B L^{-1}: solves X L = B for L (k x k) lower, B (m x k).
template <class T>
void trsm_right_lower(Eigen::Ref<const eigen_col_matrix<T>> l, col_ref<T> b) {
  index_t const k = l.rows();
  if (k <= trsm_leaf) {
    l.template triangularView<Eigen::Lower>().template solveInPlace<Eigen::OnTheRight>(b);
    return;
  }
  index_t const k1 = split(k), k2 = k - k1;
  // X L = [X1 L11 + X2 L21, X2 L22]: the right half first.
  trsm_right_lower<T>(l.bottomRightCorner(k2, k2), b.rightCols(k2));
  gemm_update<T>(b.leftCols(k1), b.rightCols(k2), l.bottomLeftCorner(k2, k1), T(-1));
  trsm_right_lower<T>(l.topLeftCorner(k1, k1), b.leftCols(k1));
}

/// B <- L^{-1} B: solves L X = B for L (k x k) lower, B (k x m).
template <class T>
void trsm_left_lower(Eigen::Ref<const eigen_col_matrix<T>> l, col_ref<T> b) {
  index_t const k = l.rows();
  if (k <= trsm_leaf) {
    l.template triangularView<Eigen::Lower>().solveInPlace(b);
    return;
  }
  index_t const k1 = split(k), k2 = k - k1;
  // L X = [L11 X1; L21 X1 + L22 X2]
  trsm_left_lower<T>(l.topLeftCorner(k1, k1), b.topRows(k1));
  gemm_update<T>(b.bottomRows(k2), l.bottomLeftCorner(k2, k1), b.topRows(k1), T(-1));
  trsm_left_lower<T>(l.bottomRightCorner(k2, k2), b.bottomRows(k2));
}

/// Read-only view of the SYRK factor A (n x k) in its own storage order (Plain: a column- or row-major matrix
/// type); blocks of it bind without a copy, and the recursion instantiates only this one type.
template <class Plain>
using factor_ref = Eigen::Ref<const Plain, 0, Eigen::OuterStride<>>;

/// C_lower += alpha A A^T: C11 (rec), C21 += alpha A2 A1^T (GEMM), C22 (rec). C's strict upper part is kept.
template <class T, class Plain>
void syrk_lower(col_ref<T> c, factor_ref<Plain> const& a, T alpha) {
  index_t const n = c.rows();
  if (n <= syrk_leaf) {
    // Eigen's triangular-destination product computes only the lower half.
    gemm_update_lower<T>(c, a, a.transpose(), alpha);
    return;
  }
  index_t const n1 = split(n), n2 = n - n1;
  syrk_lower<T, Plain>(c.topLeftCorner(n1, n1), a.topRows(n1), alpha);
  gemm_update<T>(c.bottomLeftCorner(n2, n1), a.bottomRows(n2), a.topRows(n1).transpose(), alpha);
  syrk_lower<T, Plain>(c.bottomRightCorner(n2, n2), a.bottomRows(n2), alpha);
}

/// Unblocked left-looking Cholesky of a small matrix (lower triangle); -1 or the first bad pivot.
template <class T>
index_t cholesky_unblocked(col_ref<T> a) {
  index_t const n = a.rows();
  for (index_t j = 0; j < n; ++j) {
    index_t const m = n - j;
    if (j > 0) a.col(j).tail(m).noalias() -= a.bottomLeftCorner(m, j) * a.row(j).head(j).transpose();
    T const d = a(j, j);
    // `!(d > 0)` also catches NaN. Any NaN/Inf in row j of the lower triangle ends up in this pivot.
    if (!(d > T(0)) || !std::isfinite(d)) return j;
    T const r = std::sqrt(d);
    a(j, j) = r;
    a.col(j).tail(m - 1) /= r;
  }
  return -1;
}

/// Recursive Cholesky: chol(A11), A21 <- A21 L11^{-T} (TRSM), A22 -= A21 A21^T (SYRK), chol(A22).
/// Pivots are taken in order, so the first failing one is reported. The strict upper triangle is not written.
template <class T>
index_t cholesky_recursive(col_ref<T> a) {
  index_t const n = a.rows();
  if (n <= cholesky_leaf) return cholesky_unblocked<T>(a);
  index_t const n1 = split(n), n2 = n - n1;
  if (index_t const info = cholesky_recursive<T>(a.topLeftCorner(n1, n1)); info >= 0) return info;
  trsm_right_lower_trans<T>(a.topLeftCorner(n1, n1), a.bottomLeftCorner(n2, n1));
  syrk_lower<T, eigen_col_matrix<T>>(a.bottomRightCorner(n2, n2), a.bottomLeftCorner(n2, n1), T(-1));
  if (index_t const info = cholesky_recursive<T>(a.bottomRightCorner(n2, n2)); info >= 0) return n1 + info;
  return -1;
}

/// Recursive in-place inverse of a lower-triangular matrix (lower triangle only):
/// inv([L11 0; L21 L22]) = [L11^-1 0; -L22^-1 L21 L11^-1, L22^-1], the off-diagonal block by two TRSMs.
template <class T>
void invert_lower_recursive(col_ref<T> l) {
  index_t const n = l.rows();
  if (n <= inverse_leaf) {
    eigen_col_matrix<T> inv = eigen_col_matrix<T>::Identity(n, n);
    l.template triangularView<Eigen::Lower>().solveInPlace(inv);
    l.template triangularView<Eigen::Lower>() = inv;
    return;
  }
  index_t const n1 = split(n), n2 = n - n1;
  trsm_right_lower<T>(l.topLeftCorner(n1, n1), l.bottomLeftCorner(n2, n1));     // L21 L11^-1
  trsm_left_lower<T>(l.bottomRightCorner(n2, n2), l.bottomLeftCorner(n2, n1));  // L22^-1 (L21 L11^-1)
  l.bottomLeftCorner(n2, n1) *= T(-1);
  invert_lower_recursive<T>(l.topLeftCorner(n1, n1));
  invert_lower_recursive<T>(l.bottomRightCorner(n2, n2));
}

/// Tokens per chunk of the gathered SYRK: chunk buffers of at most 2M elements (8 MB in float) each, a multiple of
/// 256 tokens (at least 256), never more than there are.
[[nodiscard]] inline index_t gathered_chunk(index_t n, index_t tokens) {
  return std::min(tokens, std::max<index_t>(256, (index_t(1) << 21) / n / 256 * 256));
}

// ---- task-parallel versions ----------------------------------------------------------------------------------------
#if defined(_OPENMP)

/// Tiled Cholesky (if @p factor) followed by the tiled inverse of the lower-triangular result (if @p invert), as
/// one OpenMP task graph: tile (i, j) is the nb x nb block at (i nb, j nb), and each task names the tiles it reads
/// (`in`) and writes (`inout`). Creation order is a valid sequential order, so the runtime only reorders what the
/// dependences allow; every pivot is still taken after all updates of its tile, in order.
/// @returns -1, or the first failing pivot of the Cholesky (the tasks after a failure do nothing).
template <class T>
index_t factor_invert_tasks(col_ref<T> a, bool factor, bool invert, int threads) {
  index_t const n = a.rows(), nb = factor_tile(n), nt = (n + nb - 1) / nb;
  auto tile = [&a, n, nb](index_t i, index_t j) {
    return a.block(i * nb, j * nb, std::min(nb, n - i * nb), std::min(nb, n - j * nb));
  };
  std::vector<char> dep_storage(std::size_t(nt * nt));  // one address per tile, named by the depend clauses
  char* const dep = dep_storage.data();
  std::atomic<index_t> failed{-1};
  auto const go = [&failed] { return failed.load(std::memory_order_acquire) < 0; };

#pragma omp parallel num_threads(threads)
#pragma omp single
  {
    if (factor) {
      // Right-looking tiled Cholesky (LAPACK potrf with one task per tile operation).
      for (index_t k = 0; k < nt; ++k) {
#pragma omp task default(shared) firstprivate(k) depend(inout : dep[k * nt + k])
        if (go())
          if (index_t const info = cholesky_recursive<T>(tile(k, k)); info >= 0)
            failed.store(k * nb + info, std::memory_order_release);
        for (index_t i = k + 1; i < nt; ++i) {
#pragma omp task default(shared) firstprivate(i, k) depend(in : dep[k * nt + k]) depend(inout : dep[i * nt + k])
          if (go()) trsm_right_lower_trans<T>(tile(k, k), tile(i, k));
        }
        for (index_t i = k + 1; i < nt; ++i) {
#pragma omp task default(shared) firstprivate(i, k) depend(in : dep[i * nt + k]) depend(inout : dep[i * nt + i])
          if (go()) syrk_lower<T, eigen_col_matrix<T>>(tile(i, i), tile(i, k), T(-1));
          for (index_t j = k + 1; j < i; ++j) {
#pragma omp task default(shared) firstprivate(i, j, k) depend(in : dep[i * nt + k], dep[j * nt + k]) \
    depend(inout : dep[i * nt + j])
            if (go()) gemm_update<T>(tile(i, j), tile(i, k), tile(j, k).transpose(), T(-1));
          }
        }
      }
    }
    if (invert) {
      // Right-looking tiled inverse (PLASMA's trtri): after step k, block column k holds -L_mk L_kk^-1 (rows
      // below k), the blocks left of column k are updated with it, row k is multiplied by L_kk^-1 from the left,
      // and L_kk is inverted last (the solves above need it as it was).
      for (index_t k = 0; k < nt; ++k) {
        for (index_t m = k + 1; m < nt; ++m) {
#pragma omp task default(shared) firstprivate(m, k) depend(in : dep[k * nt + k]) depend(inout : dep[m * nt + k])
          if (go()) {
            trsm_right_lower<T>(tile(k, k), tile(m, k));
            tile(m, k) *= T(-1);
          }
        }
        for (index_t m = k + 1; m < nt; ++m)
          for (index_t j = 0; j < k; ++j) {
#pragma omp task default(shared) firstprivate(m, j, k) depend(in : dep[m * nt + k], dep[k * nt + j]) \
    depend(inout : dep[m * nt + j])
            if (go()) gemm_update<T>(tile(m, j), tile(m, k), tile(k, j), T(1));
          }
        for (index_t j = 0; j < k; ++j) {
#pragma omp task default(shared) firstprivate(j, k) depend(in : dep[k * nt + k]) depend(inout : dep[k * nt + j])
          if (go()) trsm_left_lower<T>(tile(k, k), tile(k, j));
        }
#pragma omp task default(shared) firstprivate(k) depend(inout : dep[k * nt + k])
        if (go()) invert_lower_recursive<T>(tile(k, k));
      }
    }
  }
  return failed.load();
}

/// Tiled SYRK: the lower tiles of C are independent; each is one GEMM (or a sequential SYRK on the diagonal),
/// handed out dynamically, the costly off-diagonal tiles first.
template <class T, class Plain>
void syrk_lower_tasks(col_ref<T> c, factor_ref<Plain> const& a, T alpha, int threads) {
  index_t const n = c.rows(), nb = syrk_tile(n), nt = (n + nb - 1) / nb;
  std::vector<std::pair<index_t, index_t>> tiles;
  for (index_t i = 0; i < nt; ++i)
    for (index_t j = 0; j < i; ++j) tiles.emplace_back(i, j);
  for (index_t i = 0; i < nt; ++i) tiles.emplace_back(i, i);
  index_t const count = index_t(tiles.size());
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (index_t t = 0; t < count; ++t) {
    auto const [i, j] = tiles[std::size_t(t)];
    index_t const r0 = i * nb, c0 = j * nb, rb = std::min(nb, n - r0), cb = std::min(nb, n - c0);
    if (i == j)
      syrk_lower<T, Plain>(c.block(r0, r0, rb, rb), a.middleRows(r0, rb), alpha);
    else
      gemm_update<T>(c.block(r0, c0, rb, cb), a.middleRows(r0, rb), a.middleRows(c0, cb).transpose(), alpha);
  }
}

/// Tiled SYRK for a factor A (n x tokens) that is gathered chunk by chunk: fill(dst, ld, r0, rb, q0, kq) writes
/// A(r0 + f, q0 + k) to dst[f + k * ld]. The copies are tasks, one per chunk and block of features, and overlap the
/// tile products of the chunk before. Dependences: a tile waits for the copies of its two feature blocks; the copy
/// of a block into a buffer waits for the tiles of the chunk before that still read it; the chunks' updates of one
/// tile of C are serialised. With Eigen 3.4 a copy task gathers its block slab by slab into a buffer of its thread
/// that stays in cache, and packs it there for Eigen's kernel (cpu::detail::packed_rows), once for all the tiles
/// that read it, or with @p columns (see syrk_lower_gathered) packs it straight from A's columns; otherwise the tiles
/// are Eigen products of the gathered chunk.
template <class T, class Fill, class Columns = std::nullptr_t>
void syrk_lower_tasks_gathered(col_ref<T> c, index_t tokens, Fill const& fill, T alpha, int threads,
                               Columns const& columns = nullptr) {
  index_t const n = c.rows(), nb = syrk_tile(n), nt = (n + nb - 1) / nb, kc = gathered_chunk(n, tokens);
  // Declared out here: deferred tasks must not refer to objects of a loop iteration that has ended.
#if RSQ_EIGEN_KEPT_PACKING
  index_t const rows = std::min(nb, n), slab = packed_rows<T>::slab_depth(rows, rows, kc);
  std::size_t const block_bytes = packed_rows<T>::bytes(rows, kc, slab);
  std::size_t const gather_bytes = line_bytes<T>(std::size_t(rows * slab));
  // Two chunks of packed blocks, and a gathering buffer per thread (not the thread's packing block: a fill may
  // call products of its own).
  scratch_lease const lease(2 * std::size_t(nt) * block_bytes + std::size_t(threads) * gather_bytes);
  auto const block = [&](index_t b, index_t p, index_t kq) {  // feature block p of chunk buffer b
    return packed_rows<T>(lease.data() + std::size_t(b * nt + p) * block_bytes, std::min(nb, n - p * nb), kq, slab);
  };
  std::byte* const gather_buffers = lease.data() + 2 * std::size_t(nt) * block_bytes;
  auto const fill_task = [&](index_t b, index_t p, index_t q0, index_t kq) {
    auto const a = block(b, p, kq);
    if constexpr (!std::is_null_pointer_v<Columns>) {
      if (packed_rows<T>::direct_packing()) {
        for (index_t s = 0; s < a.slabs(); ++s)
          a.pack_slab_direct(s, [&](index_t k) {
            auto const [x, scale] = columns(q0 + s * slab + k);
            return std::pair<T const*, T>(x + p * nb, scale);
          });
        return;
      }
    }
    T* const gathered = reinterpret_cast<T*>(gather_buffers + std::size_t(omp_get_thread_num()) * gather_bytes);
    for (index_t s = 0; s < a.slabs(); ++s) {
      fill(gathered, a.rows(), p * nb, a.rows(), q0 + s * slab, a.depth_of(s));
      a.pack_slab(s, gathered, a.rows());
    }
  };
  auto const tile_task = [&](index_t i, index_t j, index_t b, index_t kq) {
    auto const a = block(b, i, kq);
    if (i == j) return a.syrk_update(c.block(i * nb, i * nb, a.rows(), a.rows()), alpha);
    auto const bt = block(b, j, kq);
    a.gemm_update(c.block(i * nb, j * nb, a.rows(), bt.rows()), bt, alpha);
  };
#else
  scratch_lease const lease(std::size_t(2 * n * kc) * sizeof(T));
  T* const buf = lease.as<T>();  // chunk buffer b: (n, kc) column-major
  auto const fill_task = [&](index_t b, index_t p, index_t q0, index_t kq) {
    fill(buf + b * n * kc + p * nb, n, p * nb, std::min(nb, n - p * nb), q0, kq);
  };
  auto const tile_task = [&](index_t i, index_t j, index_t b, index_t kq) {
    Eigen::Map<const eigen_col_matrix<T>> const ab(buf + b * n * kc, n, kq);
    index_t const r0 = i * nb, c0 = j * nb, rb = std::min(nb, n - r0), cb = std::min(nb, n - c0);
    if (i == j)
      syrk_lower<T, eigen_col_matrix<T>>(c.block(r0, r0, rb, rb), ab.middleRows(r0, rb), alpha);
    else
      gemm_update<T>(c.block(r0, c0, rb, cb), ab.middleRows(r0, rb), ab.middleRows(c0, cb).transpose(), alpha);
  };
#endif
  std::vector<char> dep_storage(std::size_t(2 * nt + nt * nt));
  char* const bdep = dep_storage.data();  // feature block p of buffer b: bdep[b * nt + p]
  char* const cdep = bdep + 2 * nt;       // tile (i, j) of C

#pragma omp parallel num_threads(threads)
#pragma omp single
  for (index_t q0 = 0, q = 0; q0 < tokens; q0 += kc, ++q) {
    index_t const kq = std::min(kc, tokens - q0), b = q % 2;
    char* const dep = bdep + b * nt;
    for (index_t p = 0; p < nt; ++p) {
#pragma omp task default(shared) firstprivate(p, q0, kq, b) depend(inout : dep[p])
      fill_task(b, p, q0, kq);
    }
    for (index_t i = 0; i < nt; ++i) {
      for (index_t j = 0; j < i; ++j) {
#pragma omp task default(shared) firstprivate(i, j, kq, b) depend(in : dep[i], dep[j]) \
    depend(inout : cdep[i * nt + j])
        tile_task(i, j, b, kq);
      }
#pragma omp task default(shared) firstprivate(i, kq, b) depend(in : dep[i]) depend(inout : cdep[i * nt + i])
      tile_task(i, i, b, kq);
    }
  }
}

#endif  // _OPENMP

/// Runs the Cholesky and/or the inverse on the available threads: tasks when there are at least two tiles per
/// dimension, otherwise the sequential recursions. The choice depends on the size alone, one thread included: the
/// tile algorithm sums in another order than the recursion, and a factorization must not change with the thread
/// count (the tasks' order on each tile is fixed by their dependences, and each runs sequentially).
template <class T>
index_t factor_invert(col_ref<T> a, bool factor, bool invert) {
#if defined(_OPENMP)
  if (a.rows() >= 2 * factor_tile(a.rows()))
    return factor_invert_tasks<T>(a, factor, invert, available_threads());
#endif
  if (factor)
    if (index_t const info = cholesky_recursive<T>(a); info >= 0) return info;
  if (invert) invert_lower_recursive<T>(a);
  return -1;
}

/// C_lower += alpha A A^T on the available threads: tiles above one tile's size (one thread included, so that the
/// order of the sums does not depend on the thread count), else the sequential recursion.
template <class T, class Plain>
void syrk_lower_parallel(col_ref<T> c, factor_ref<Plain> const& a, T alpha) {
#if defined(_OPENMP)
  int const threads = available_threads();
  if (c.rows() > syrk_tile(c.rows())) {
    if constexpr (std::is_same_v<Plain, eigen_col_matrix<T>>) {
      if (a.cols() >= 1024) {  // A's columns are contiguous tokens: packed straight from them, or copied first
        return syrk_lower_tasks_gathered<T>(
            c, a.cols(),
            [&](T* dst, index_t ld, index_t r0, index_t rb, index_t q0, index_t kq) {
              Eigen::Map<eigen_col_matrix<T>, 0, Eigen::OuterStride<>>(dst, rb, kq, Eigen::OuterStride<>(ld)) =
                  a.block(r0, q0, rb, kq);
            },
            alpha, threads, [&](index_t k) { return std::pair<T const*, T>(a.col(k).data(), T(1)); });
      }
    }
    return syrk_lower_tasks<T, Plain>(c, a, alpha, threads);
  }
#endif
  syrk_lower<T, Plain>(c, a, alpha);
}

/// C_lower += alpha A A^T for a gathered A (see syrk_lower_tasks_gathered) on the available threads, one included;
/// without OpenMP chunk by chunk: the whole chunk gathered, then its SYRK. Where A's columns are contiguous vectors
/// of T times a factor, @p columns(k) may give them ({pointer, factor}), and the packing reads them without a copy.
template <class T, class Fill, class Columns = std::nullptr_t>
void syrk_lower_gathered(col_ref<T> c, index_t tokens, Fill const& fill, T alpha, Columns const& columns = nullptr) {
  if (tokens == 0) return;
#if defined(_OPENMP)
  syrk_lower_tasks_gathered<T>(c, tokens, fill, alpha, available_threads(), columns);
#else
  (void)columns;
  index_t const n = c.rows(), kc = gathered_chunk(n, tokens);
  scratch_lease const lease(std::size_t(n * kc) * sizeof(T));
  T* const buf = lease.as<T>();
  for (index_t q0 = 0; q0 < tokens; q0 += kc) {
    index_t const kq = std::min(kc, tokens - q0);
    fill(buf, n, 0, n, q0, kq);
    syrk_lower<T, eigen_col_matrix<T>>(c, Eigen::Map<const eigen_col_matrix<T>>(buf, n, kq), alpha);
  }
#endif
}

template <class T>
void expect_square(col_ref<T> const& a, char const* fn, char const* name) {
  RSQ_EXPECTS(a.rows() == a.cols(), fn, ": ", name, " must be square, got (", a.rows(), " x ", a.cols(), ")");
  RSQ_EXPECTS(a.rows() > 0, fn, ": ", name, " is empty (0 x 0)");
}

#if defined(RSQ_EXTERN_TEMPLATES)
// The blocked Cholesky and triangular inverse for float and double live in the translation unit that includes
// <rsq/instantiate.hpp> (docs/configuration.md).
extern template index_t factor_invert<float>(col_ref<float>, bool, bool);
extern template index_t factor_invert<double>(col_ref<double>, bool, bool);
#endif

}  // namespace detail::linalg

/// Copies the strict lower triangle of the square matrix @p c onto its strict upper triangle (c becomes symmetric).
/// @throws rsq::invalid_argument if c is not square or is empty
template <class T>
void symmetrize_from_lower(col_ref<T> c) {
  detail::linalg::expect_square<T>(c, "symmetrize_from_lower", "c");
  // Block by block (64 wide): the strict upper part of block column j0 is the transpose of block row j0.
  constexpr index_t b = 64;
  index_t const n = c.rows(), ld = c.outerStride();
  T* const p = c.data();
  for (index_t j0 = 0; j0 < n; j0 += b) {
    index_t const jb = std::min(b, n - j0);
    // rows [j0, j0+jb) x columns [0, j0) of the lower part -> rows [0, j0) x columns [j0, j0+jb)
    detail::transpose_copy(p + j0, ld, p + j0 * ld, ld, jb, j0);
    for (index_t j = j0; j < j0 + jb; ++j)
      for (index_t i = j0; i < j; ++i) p[i + j * ld] = p[j + i * ld];
  }
}
/// Overload that deduces T, for plain column-major matrices (eigen_col_matrix<T>).
template <class T>
void symmetrize_from_lower(Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& c) {
  symmetrize_from_lower<T>(col_ref<T>(c));
}

/// In-place Cholesky A = L L^T of a symmetric positive-definite n x n matrix.
///
/// Reads only the lower triangle of @p a; on success leaves L in the lower triangle and zeros above it.
/// @tparam T float or double
/// @returns -1 on success, otherwise the index of the first pivot that is not positive or not finite (NaN or Inf
///          anywhere in the lower triangle is reported this way); @p a's content is then unspecified.
/// @throws rsq::invalid_argument if @p a is not square or is empty
template <class T>
[[nodiscard]] index_t cholesky_lower_inplace(col_ref<T> a) {
  static_assert(std::is_floating_point_v<T>, "rsq: cholesky_lower_inplace needs a floating-point matrix");
  detail::linalg::expect_square<T>(a, "cholesky_lower_inplace", "a");
  index_t const info = detail::linalg::factor_invert<T>(a, true, false);
  if (info < 0) a.template triangularView<Eigen::StrictlyUpper>().setZero();
  return info;
}
/// Overload that deduces T, for plain column-major matrices (eigen_col_matrix<T>).
template <class T>
[[nodiscard]] index_t cholesky_lower_inplace(Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& a) {
  return cholesky_lower_inplace<T>(col_ref<T>(a));
}

/// In-place inverse of a lower-triangular matrix with a non-zero, finite diagonal.
///
/// Reads and writes only the lower triangle (the strict upper triangle is left as it is).
/// @throws rsq::invalid_argument if @p l is not square, empty, or has a zero or non-finite diagonal element
template <class T>
void invert_lower_triangular_inplace(col_ref<T> l) {
  static_assert(std::is_floating_point_v<T>, "rsq: invert_lower_triangular_inplace needs a floating-point matrix");
  detail::linalg::expect_square<T>(l, "invert_lower_triangular_inplace", "l");
  for (index_t i = 0; i < l.rows(); ++i)
    RSQ_EXPECTS(l(i, i) != T(0) && std::isfinite(l(i, i)),
                "invert_lower_triangular_inplace: l must have a non-zero finite diagonal, got ", l(i, i),
                " at diagonal index ", i);
  (void)detail::linalg::factor_invert<T>(l, false, true);
}
/// Overload that deduces T, for plain column-major matrices (eigen_col_matrix<T>).
template <class T>
void invert_lower_triangular_inplace(Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& l) {
  invert_lower_triangular_inplace<T>(col_ref<T>(l));
}

/// U, the upper-triangular Cholesky factor of H^{-1} (H^{-1} = U^T U, positive diagonal), as GPTQ uses it (spec §6
/// step 6), with one Cholesky and one triangular inverse instead of the reference's chol -> cholesky_inverse ->
/// chol: with J the reversal permutation, L~ = chol(J H J) and U = J L~^{-1} J (2/3 n^3 flops instead of 4/3).
///
/// Reads only the lower triangle of @p h and overwrites all of it with U (zeros below the diagonal).
/// @returns -1 on success, otherwise the index (in H's own numbering) of the pivot at which the Cholesky of J H J
///          failed, i.e. the *last* index i for which the trailing block H[i:, i:] is not positive definite given
///          the blocks after it; NaN/Inf in H is reported this way. @p h's content is then unspecified.
/// @throws rsq::invalid_argument if @p h is not square or is empty
template <class T>
[[nodiscard]] index_t upper_cholesky_of_inverse_inplace(col_ref<T> h) {
  static_assert(std::is_floating_point_v<T>, "rsq: upper_cholesky_of_inverse_inplace needs a floating-point matrix");
  detail::linalg::expect_square<T>(h, "upper_cholesky_of_inverse_inplace", "h");
  index_t const n = h.rows();
  symmetrize_from_lower<T>(h);
  h.reverseInPlace();  // J H J: rows and columns in reverse order
  // L~ = chol(J H J), then L~^{-1} (its diagonal is positive and finite: no checks needed), in one task graph.
  if (index_t const info = detail::linalg::factor_invert<T>(h, true, true); info >= 0) return n - 1 - info;
  h.template triangularView<Eigen::StrictlyUpper>().setZero();
  h.reverseInPlace();  // J L~^{-1} J: the lower triangle becomes the upper one
  return -1;
}
/// Overload that deduces T, for plain column-major matrices (eigen_col_matrix<T>).
template <class T>
[[nodiscard]] index_t upper_cholesky_of_inverse_inplace(Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& h) {
  return upper_cholesky_of_inverse_inplace<T>(col_ref<T>(h));
}

/// SYRK: the lower triangle of @p c (n x n) += alpha * x^T x, for @p x (tokens x n) any Eigen expression of either
/// storage order (plain matrices, maps and blocks are used without a copy; other expressions are evaluated once).
///
/// Only the lower triangle is computed, on GEMM tiles; the strict upper triangle of c is not touched (use
/// symmetrize_from_lower() afterwards for a full matrix). x with 0 rows is a no-op. NaN/Inf in x propagate to c.
/// T is deduced from @p alpha, so `syrk_lower_update(h, x, 1.0f)` works for a float `h`.
/// @throws rsq::invalid_argument if c is not square, is empty, or x.cols() != c.rows()
template <class T, class X>
void syrk_lower_update(Eigen::Ref<eigen_col_matrix<std::type_identity_t<T>>> c, Eigen::MatrixBase<X> const& x,
                       T alpha) {
  static_assert(std::is_floating_point_v<T>, "rsq: syrk_lower_update needs a floating-point matrix");
  detail::linalg::expect_square<T>(c, "syrk_lower_update", "c");
  RSQ_EXPECTS(x.cols() == c.rows(), "syrk_lower_update: x must have as many columns as c has rows, got x (",
              x.rows(), " x ", x.cols(), ") and c (", c.rows(), " x ", c.cols(), ")");
  if (x.rows() == 0) return;
  if constexpr ((int(X::Flags) & Eigen::DirectAccessBit) != 0 && std::is_same_v<typename X::Scalar, T>) {
    // x^T (n x tokens) in x's own storage: no copy for matrices, maps and blocks.
    using xt_plain = std::conditional_t<bool(X::IsRowMajor), eigen_col_matrix<T>, eigen_row_matrix<T>>;
    detail::linalg::syrk_lower_parallel<T, xt_plain>(c, x.transpose(), alpha);
  } else {
    // Evaluated once anyway: into the layout that Eigen's GEMM reads fastest (tokens contiguous).
    detail::linalg::syrk_lower_parallel<T, eigen_row_matrix<T>>(c, x.transpose().template cast<T>(), alpha);
  }
}

/// SYRK for inputs that are never stored as one matrix (tokens gathered from several places, weights applied on the
/// way): the lower triangle of @p c (n x n) += alpha Σ_k a_k a_kᵀ over @p tokens vectors a_k of n features, where
/// fill(dst, ld, f0, nf, k0, kn) writes feature f0 + f of token k0 + k to dst[f + k * ld] for f < nf, k < kn.
///
/// The tokens are gathered in chunks (a few MB, in the calling thread's scratch block: cpu/scratch.hpp), with the
/// copies of one chunk running beside the tile products of the one before; fill is called concurrently, for disjoint
/// blocks of features and tokens. The strict upper triangle of c is not touched. @p tokens = 0 is a no-op.
/// @throws rsq::invalid_argument if c is not square or is empty, or tokens < 0
template <class T, class Fill>
void syrk_lower_update_gathered(col_ref<T> c, index_t tokens, Fill const& fill, T alpha) {
  static_assert(std::is_floating_point_v<T>, "rsq: syrk_lower_update_gathered needs a floating-point matrix");
  detail::linalg::expect_square<T>(c, "syrk_lower_update_gathered", "c");
  RSQ_EXPECTS(tokens >= 0, "syrk_lower_update_gathered: tokens must not be negative, got ", tokens);
  if (tokens > 0) detail::linalg::syrk_lower_gathered<T>(c, tokens, fill, alpha);
}

}  // namespace rsq::cpu
