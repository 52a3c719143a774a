// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The matrix products of the CPU backend: Eigen's GEMM kernels, with their packing buffers kept per thread, tiled
/// over the threads so that the result does not depend on their number, and the CPU implementation of
/// rsq::linalg::gemm (algorithm::gemm, at the end).
///
/// Packing buffers: Eigen allocates a product's packing buffers (mc·kc and kc·nc elements: 0.25–1 MiB for the tiles
/// used here) on the heap for every product; glibc gives that memory back to the system when it is freed, and the
/// next product faults it in again, 4 KiB at a time. Measured on the development machine: an 8192-token Hessian
/// update at 1024 features into a kept accumulator took 0.055–0.062 s with about 2400 page faults, against
/// 0.040–0.047 s once the buffers are kept (docs/linalg.md). Here they come from a block per thread (cpu/scratch.hpp)
/// that stays between calls. Below them, packed_rows packs a block of a SYRK's factor once for all the tile products
/// that read it.
///
/// Threads: Eigen's own multi-threaded product sums in an order that depends on the thread count (tiled_product says
/// why), so that a quantization changed with OMP_NUM_THREADS. Products here are cut into tiles by shape alone, one
/// thread per tile, and give the bits of one single-threaded product over the whole matrix for any thread count.
///
/// This reaches into Eigen 3.4's internal product API (`general_matrix_matrix_product`,
/// `general_matrix_matrix_triangular_product`, `level3_blocking`, `gebp_traits`); with another Eigen version the
/// tiles are plain Eigen expressions, still independent of the thread count but no longer equal to one product.

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/backend/cpu/scratch.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/core/precision.hpp"
#include "rsq/core/view.hpp"
#include "rsq/linalg/gemm_options.hpp"

#if EIGEN_VERSION_AT_LEAST(3, 4, 0) && !EIGEN_VERSION_AT_LEAST(3, 4, 90)
#define RSQ_EIGEN_KEPT_PACKING 1
#else
#define RSQ_EIGEN_KEPT_PACKING 0
#endif

namespace rsq::cpu::detail {

template <class X>
inline constexpr int storage_order_of =
    (Eigen::internal::traits<X>::Flags & Eigen::RowMajorBit) ? Eigen::RowMajor : Eigen::ColMajor;

#if RSQ_EIGEN_KEPT_PACKING

/// Eigen's single-threaded blocking (what gemm_blocking_space computes) with its buffers in the calling thread's
/// packing block. Without column blocking (the triangular product) every column of the right factor is packed. With
/// column blocking, row blocks smaller than the rows are whole register panels (mr rows): then every row of C goes
/// through the same path of Eigen's kernel however the rows are blocked (tiled_product relies on it).
template <class T>
class kept_blocking : public Eigen::internal::level3_blocking<T, T> {
 public:
  kept_blocking(index_t rows, index_t cols, index_t depth, bool column_blocking) {
    this->m_mc = rows;
    this->m_nc = cols;
    this->m_kc = depth;
    index_t unblocked = cols;
    Eigen::internal::computeProductBlockingSizes<T, T, 1>(this->m_kc, this->m_mc,
                                                          column_blocking ? this->m_nc : unblocked, index_t(1));
    constexpr index_t mr = Eigen::internal::gebp_traits<T, T>::mr;
    if (column_blocking && this->m_mc < rows && this->m_mc % mr != 0)
      this->m_mc = std::max(mr, this->m_mc / mr * mr);  // Eigen leaves a block of fewer than mr rows as it is
    std::size_t const a_bytes = line_bytes<T>(std::size_t(this->m_mc * this->m_kc));
    std::byte* const p = packing_block().reserve(a_bytes + std::size_t(this->m_kc * this->m_nc) * sizeof(T));
    this->m_blockA = reinterpret_cast<T*>(p);
    this->m_blockB = reinterpret_cast<T*>(p + a_bytes);
  }
};

/// Operands of the internal products: any direct-access expression with unit inner stride.
template <class A, class B>
constexpr void check_operands() {
  static_assert(Eigen::internal::inner_stride_at_compile_time<A>::ret == 1 &&
                    Eigen::internal::inner_stride_at_compile_time<B>::ret == 1,
                "gemm operands need a unit inner stride");
}

/// C += alpha · A · B on one thread with Eigen 3.4's blocked algorithm and kernels (general_matrix_matrix_product),
/// its packing buffers kept: C (m, n) column-major, A (m, k) and B (k, n) stored in @p LhsOrder / @p RhsOrder with
/// leading dimensions @p lda / @p ldb.
template <class T, int LhsOrder, int RhsOrder>
void sequential_product(index_t m, index_t n, index_t k, T const* a, index_t lda, T const* b, index_t ldb, T* c,
                        index_t ldc, T alpha) {
  kept_blocking<T> blocking(m, n, k, true);
  Eigen::internal::general_matrix_matrix_product<Eigen::Index, T, LhsOrder, false, T, RhsOrder, false,
                                                 Eigen::ColMajor, 1>::run(m, n, k, a, lda, b, ldb, c, 1, ldc, alpha,
                                                                          blocking);
}

#endif

/// Threads a product started here may use: one inside an active parallel region (the caller's threads are busy with
/// products of their own), Eigen's thread count elsewhere.
[[nodiscard]] inline int product_threads() {
#if defined(_OPENMP)
  return omp_get_active_level() > 0 ? 1 : std::max(1, Eigen::nbThreads());
#else
  return 1;
#endif
}

/// The tiles of a tiled product: C (m, n) in blocks of rows x cols, from the shape alone.
struct product_tiles {
  index_t rows, cols;          // rows a multiple of the kernel's mr, cols of its nr, except in the last tiles
  index_t row_tiles, col_tiles;
  [[nodiscard]] index_t count() const noexcept { return row_tiles * col_tiles; }
};

/// Tiles of about @p target_rows x @p target_cols (whole register panels of Eigen's kernel) for C (m, n); one tile
/// when the product is too small to be worth splitting.
template <class T>
[[nodiscard]] product_tiles tiles_for(index_t m, index_t n, index_t k) {
  // Tiles are independent products that pack their own blocks of A and B: 1/(2·cols) + 1/(2·rows) packed elements
  // per flop (0.33 % at these sizes), against enough tiles for a balanced dynamic schedule (bench_gemm).
  constexpr index_t target_rows = 384, target_cols = 256;
#if RSQ_EIGEN_KEPT_PACKING
  constexpr index_t mr = Eigen::internal::gebp_traits<T, T>::mr, nr = Eigen::internal::gebp_traits<T, T>::nr;
#else
  constexpr index_t mr = 16, nr = 4;
#endif
  if (double(m) * double(n) * double(k) < double(1 << 21)) return {m, n, 1, 1};
  // Equal shares of about the target, rounded up to whole panels.
  auto const split = [](index_t extent, index_t target, index_t unit) {
    index_t const parts = (extent + target - 1) / target;
    index_t const size = ((extent + parts - 1) / parts + unit - 1) / unit * unit;
    return std::pair<index_t, index_t>(size, (extent + size - 1) / size);
  };
  auto const [rb, rt] = split(m, target_rows, mr);
  auto const [cb, ct] = split(n, target_cols, nr);
  return {rb, cb, rt, ct};
}

/// C += alpha · A · B (C (m, n) column-major; A (m, k), B (k, n) in storage orders @p LhsOrder, @p RhsOrder), the
/// same bits for every thread count: outside a parallel region C is cut into tiles whose bounds depend on the shape
/// alone, each tile one sequential product on one thread; inside one (or on one thread) the whole product is one
/// sequential product.
///
/// Why the two agree bit for bit: Eigen's kernel sums each element of C over k in slabs of kc, and kc depends on k
/// alone (computeProductBlockingSizes on one thread). Within a slab, the order of the sum depends on the path an
/// element takes through the kernel: its row is in a panel of 3, 2 or 1 packets, a half or a quarter packet or
/// alone (the 1-packet panels alternate two accumulators over k), its column in a panel of nr columns or alone. The
/// paths are fixed by the row's position relative to the last whole mr panel of the rows the kernel is given, and
/// the column's relative to the last whole nr panel. Tiles start at multiples of mr and nr and end there or at the
/// matrix's edge, and the sequential product's own row and column blocks (kept_blocking) do too, so every element
/// takes the path it takes in one product over the whole matrix. Eigen's own parallel product (Parallelizer.h)
/// caps kc at 320 with several threads and hands each thread a row range of its own: its sums change with the
/// thread count once k > 320 (or where its row ranges end in a partial panel).
template <class T, int LhsOrder, int RhsOrder>
void tiled_product(index_t m, index_t n, index_t k, T const* a, index_t lda, T const* b, index_t ldb, T* c,
                   index_t ldc, T alpha) {
  if (m == 0 || n == 0 || k == 0) return;
#if RSQ_EIGEN_KEPT_PACKING
  auto const tiles = tiles_for<T>(m, n, k);
  int const threads = product_threads();
  if (threads == 1 || tiles.count() == 1) return sequential_product<T, LhsOrder, RhsOrder>(m, n, k, a, lda, b, ldb,
                                                                                            c, ldc, alpha);
  index_t const count = tiles.count();
#if defined(_OPENMP)
#pragma omp parallel for num_threads(int(std::min<index_t>(threads, count))) schedule(dynamic, 1)
#endif
  for (index_t t = 0; t < count; ++t) {
    // Column tiles outermost: neighbouring tasks share their columns of B.
    index_t const i0 = (t % tiles.row_tiles) * tiles.rows, j0 = (t / tiles.row_tiles) * tiles.cols;
    index_t const mt = std::min(tiles.rows, m - i0), nt = std::min(tiles.cols, n - j0);
    T const* const at = a + (LhsOrder == Eigen::ColMajor ? i0 : i0 * lda);
    T const* const bt = b + (RhsOrder == Eigen::ColMajor ? j0 * ldb : j0);
    sequential_product<T, LhsOrder, RhsOrder>(mt, nt, k, at, lda, bt, ldb, c + i0 + j0 * ldc, ldc, alpha);
  }
#else
  // Other Eigen versions: Eigen's products on the same tiles, each on one thread (inside the parallel region): the
  // same bits for every thread count, though not those of one product over the whole matrix.
  using lhs_map = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, LhsOrder>, 0, Eigen::OuterStride<>>;
  using rhs_map = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, RhsOrder>, 0, Eigen::OuterStride<>>;
  auto const tiles = tiles_for<T>(m, n, k);
  index_t const count = tiles.count();
  lhs_map const am(a, m, k, Eigen::OuterStride<>(lda));
  rhs_map const bm(b, k, n, Eigen::OuterStride<>(ldb));
  Eigen::Map<eigen_col_matrix<T>, 0, Eigen::OuterStride<>> cm(c, m, n, Eigen::OuterStride<>(ldc));
#if defined(_OPENMP)
  // A team of two at least: Eigen runs a product on its calling thread only in a team of several.
#pragma omp parallel for num_threads(int(std::min<index_t>(std::max(2, product_threads()), count))) \
    schedule(dynamic, 1)
#endif
  for (index_t t = 0; t < count; ++t) {
    index_t const i0 = (t % tiles.row_tiles) * tiles.rows, j0 = (t / tiles.row_tiles) * tiles.cols;
    index_t const mt = std::min(tiles.rows, m - i0), nt = std::min(tiles.cols, n - j0);
    cm.block(i0, j0, mt, nt).noalias() += (alpha * am.middleRows(i0, mt)) * bm.middleCols(j0, nt);
  }
#endif
}

/// C += alpha · A · B, C column-major; A and B any direct-access blocks (transposes included) with unit inner stride.
/// The same bits for every thread count, inside or outside a parallel region (tiled_product).
template <class T, class A, class B>
void gemm_update(Eigen::Ref<eigen_col_matrix<T>> c, Eigen::MatrixBase<A> const& a, Eigen::MatrixBase<B> const& b,
                 T alpha) {
  if (c.rows() == 0 || c.cols() == 0 || a.cols() == 0) return;
#if RSQ_EIGEN_KEPT_PACKING
  check_operands<A, B>();
#endif
  tiled_product<T, storage_order_of<A>, storage_order_of<B>>(c.rows(), c.cols(), a.cols(), a.derived().data(),
                                                              a.derived().outerStride(), b.derived().data(),
                                                              b.derived().outerStride(), c.data(), c.outerStride(),
                                                              alpha);
}

/// gemm_update for C whose rows are a multiple of 16 (the GPTQ solver's panels), such that each row of C gets the
/// same bits whatever the number of rows: with Eigen 3.4, rows m = 3p·q + p (p = rows of one packet) would leave the
/// last p rows to the kernel's 1-packet panel, which alternates two accumulators over k where the 3- and 2-packet
/// panels sum in order; those products are split so that the last 4p rows go as two 2-packet panels. The solver's
/// panels hold a number of rows that depends on the thread count, and its rows then still do not.
template <class T, class A, class B>
void gemm_update_row_independent(Eigen::Ref<eigen_col_matrix<T>> c, Eigen::MatrixBase<A> const& a,
                                 Eigen::MatrixBase<B> const& b, T alpha) {
#if RSQ_EIGEN_KEPT_PACKING
  using traits = Eigen::internal::gebp_traits<T, T>;
  constexpr index_t p = traits::LhsProgress;
  index_t const m = c.rows();
  if (traits::mr == 3 * p && m % p == 0 && m % (3 * p) == p && m >= 4 * p) {
    index_t const head = m - 4 * p;  // a multiple of 3p
    gemm_update<T>(c.topRows(head), a.topRows(head), b, alpha);
    gemm_update<T>(c.middleRows(head, 2 * p), a.middleRows(head, 2 * p), b, alpha);
    gemm_update<T>(c.bottomRows(2 * p), a.bottomRows(2 * p), b, alpha);
    return;
  }
#endif
  gemm_update<T>(c, a, b, alpha);
}

/// The lower triangle of C += alpha · A · B (C square, column-major; its strict upper part is not touched).
template <class T, class A, class B>
void gemm_update_lower(Eigen::Ref<eigen_col_matrix<T>> c, Eigen::MatrixBase<A> const& a,
                       Eigen::MatrixBase<B> const& b, T alpha) {
  if (c.rows() == 0 || a.cols() == 0) return;
#if RSQ_EIGEN_KEPT_PACKING
  {  // Eigen's triangular product runs on one thread in any case; this one keeps its packing buffers
    check_operands<A, B>();
    kept_blocking<T> blocking(c.rows(), c.cols(), a.cols(), false);
    Eigen::internal::general_matrix_matrix_triangular_product<Eigen::Index, T, storage_order_of<A>, false, T,
                                                              storage_order_of<B>, false, Eigen::ColMajor, 1,
                                                              Eigen::Lower>::
        run(c.rows(), a.cols(), a.derived().data(), a.derived().outerStride(), b.derived().data(),
            b.derived().outerStride(), c.data(), 1, c.outerStride(), alpha, blocking);
    return;
  }
#endif
  c.template triangularView<Eigen::Lower>() += (alpha * a) * b;
}

#if RSQ_EIGEN_KEPT_PACKING

/// Rows of a factor A (rows x depth) packed once in the layouts of Eigen's GEMM kernel, both as a left operand (A)
/// and as a right one (Aᵀ), in slabs of the depth that Eigen's blocking picks: the tiled SYRK reads every block of
/// rows in several tile products (a 256-row block of a 1024-feature Hessian in four; a 512-row block at 4096 features
/// in eight), and Eigen's product would pack it again for each (docs/linalg.md). Slab s holds the left packing, then
/// the right one, each 64-byte aligned. The products are Eigen 3.4's kernels (`gebp_kernel`, `tribb_kernel`), as its
/// `general_matrix_matrix_product` and triangular product run them.
template <class T>
class packed_rows {
 public:
  /// Slab depth of rows x cols products of depth @p depth (Eigen's single-threaded blocking).
  [[nodiscard]] static index_t slab_depth(index_t rows, index_t cols, index_t depth) {
    index_t kc = depth, mc = rows, nc = cols;
    Eigen::internal::computeProductBlockingSizes<T, T, 1>(kc, mc, nc, index_t(1));
    return kc;
  }
  /// Bytes of a packing of @p rows rows of depth up to @p depth in slabs of @p slab.
  [[nodiscard]] static std::size_t bytes(index_t rows, index_t depth, index_t slab) {
    return std::size_t((depth + slab - 1) / slab) * 2 * line_bytes<T>(std::size_t(rows * slab));
  }

  /// A packing of @p rows rows of depth @p depth (in slabs of @p slab) in @p storage (packed_rows::bytes, 64-byte
  /// aligned); its slabs are filled by pack_slab or pack_slab_direct.
  packed_rows(std::byte* storage, index_t rows, index_t depth, index_t slab)
      : storage_(storage), rows_(rows), depth_(depth), slab_(slab) {}

  [[nodiscard]] index_t rows() const noexcept { return rows_; }
  [[nodiscard]] index_t slabs() const noexcept { return (depth_ + slab_ - 1) / slab_; }
  /// Depth of slab @p s: the slab depth, less in the last slab.
  [[nodiscard]] index_t depth_of(index_t s) const noexcept { return std::min(slab_, depth_ - s * slab_); }

  /// Packs slab @p s from its rows x depth_of(s) elements, column-major with column stride @p ld.
  void pack_slab(index_t s, T const* src, index_t ld) const {
    typename kernels::lhs_mapper const lhs(src, ld);
    typename kernels::rhs_mapper const rhs(src, ld);  // the same elements read as Aᵀ, row-major
    typename kernels::pack_lhs()(lhs_of(s), lhs, depth_of(s), rows_);
    typename kernels::pack_rhs()(rhs_of(s), rhs, depth_of(s), rows_);
  }

  /// Packs slab @p s straight from its columns (tokens): @p column(k) gives a pointer to the rows() contiguous
  /// elements of column k of the slab and a factor to scale them by. One pass writes both layouts, where pack_slab
  /// needs a gathered copy and two passes (the Hessian's 8192 tokens at 1024 features: gathering and packing took
  /// 13 % of the cycles, this 8 %). Only where direct_packing() holds.
  template <class Column>
  void pack_slab_direct(index_t s, Column const& column) const {
    index_t const ks = depth_of(s);
    T* const lhs = lhs_of(s);
    T* const rhs = rhs_of(s);
    constexpr index_t mr = kernels::traits::mr;
    index_t const full = rows_ / mr * mr;  // rows in panels of the full width; narrower panels after them
    for (index_t k = 0; k < ks; ++k) {
      auto const [x, scale] = column(k);
      for (index_t r = 0; r < full; r += mr) scaled_copy<mr>(x + r, scale, lhs + r * ks + k * mr);
      for (index_t r = full, w = 0; r < rows_; r += w) {
        w = lhs_width(rows_ - r);
        for (index_t i = 0; i < w; ++i) lhs[r * ks + k * w + i] = scale * x[r + i];
      }
      index_t j = 0;
      for (; j + 4 <= rows_; j += 4) scaled_copy<4>(x + j, scale, rhs + j * ks + k * 4);
      for (; j < rows_; ++j) rhs[j * ks + k] = scale * x[j];
    }
  }

  /// Whether pack_slab_direct writes what Eigen's packing routines write, for every row count: checked once against
  /// them (Eigen's layouts are internal; where they differ, callers gather and use pack_slab).
  [[nodiscard]] static bool direct_packing() {
    static bool const same = [] {
      constexpr index_t depth = 3;
      index_t const max_rows = 2 * kernels::traits::mr + 8;
      std::vector<T> src(std::size_t(max_rows * depth));
      for (std::size_t i = 0; i < src.size(); ++i) src[i] = T(i + 1);
      std::vector<std::byte, Eigen::aligned_allocator<std::byte>> eigen(bytes(max_rows, depth, depth)),
          direct(eigen.size());
      for (index_t rows = 1; rows <= max_rows; ++rows) {
        std::fill(eigen.begin(), eigen.end(), std::byte{0});
        std::fill(direct.begin(), direct.end(), std::byte{0});
        packed_rows const a(eigen.data(), rows, depth, depth), b(direct.data(), rows, depth, depth);
        a.pack_slab(0, src.data(), rows);
        b.pack_slab_direct(0, [&](index_t k) { return std::pair<T const*, T>(src.data() + k * rows, T(1)); });
        if (eigen != direct) return false;
      }
      return true;
    }();
    return same;
  }

  /// C += alpha · A · Bᵀ for A = this, B = @p b (same depth and slabs); C is rows() x b.rows(), column-major.
  void gemm_update(Eigen::Ref<eigen_col_matrix<T>> c, packed_rows const& b, T alpha) const {
    typename kernels::gebp gebp;
    for (index_t s = 0; s < slabs(); ++s)
      gebp(typename kernels::res_mapper(c.data(), c.outerStride()), lhs_of(s), b.rhs_of(s), rows_, depth_of(s),
           b.rows_, alpha);
  }

  /// The lower triangle of C += alpha · A · Aᵀ (C square, column-major; its strict upper part is not touched).
  void syrk_update(Eigen::Ref<eigen_col_matrix<T>> c, T alpha) const {
    typename kernels::tribb tribb;
    for (index_t s = 0; s < slabs(); ++s)
      tribb(c.data(), 1, c.outerStride(), lhs_of(s), rhs_of(s), rows_, depth_of(s), alpha);
  }

 private:
  // The instantiations of Eigen 3.4's general_matrix_matrix_product and triangular product, for a column-major A.
  struct kernels {
    using traits = Eigen::internal::gebp_traits<T, T>;
    using lhs_mapper = Eigen::internal::const_blas_data_mapper<T, Eigen::Index, Eigen::ColMajor>;
    using rhs_mapper = Eigen::internal::const_blas_data_mapper<T, Eigen::Index, Eigen::RowMajor>;
    using res_mapper = Eigen::internal::blas_data_mapper<T, Eigen::Index, Eigen::ColMajor, Eigen::Unaligned, 1>;
    using pack_lhs = Eigen::internal::gemm_pack_lhs<T, Eigen::Index, lhs_mapper, traits::mr, traits::LhsProgress,
                                                    typename traits::LhsPacket4Packing, Eigen::ColMajor>;
    using pack_rhs = Eigen::internal::gemm_pack_rhs<T, Eigen::Index, rhs_mapper, traits::nr, Eigen::RowMajor>;
    using gebp = Eigen::internal::gebp_kernel<T, T, Eigen::Index, res_mapper, traits::mr, traits::nr, false, false>;
    using tribb =
        Eigen::internal::tribb_kernel<T, T, Eigen::Index, traits::mr, traits::nr, false, false, 1, Eigen::Lower>;
  };

  /// Width of the left operand's panel that starts with @p remaining rows left: as Eigen's gemm_pack_lhs takes
  /// them, the widest of three, two and one packets, a half and a quarter packet (up to mr) that fits, else one row.
  [[nodiscard]] static index_t lhs_width(index_t remaining) {
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"  // vector types as template arguments, as in Eigen
#endif
    using packet = typename kernels::traits::LhsPacket4Packing;
    using half = typename Eigen::internal::unpacket_traits<packet>::half;
    using quarter = typename Eigen::internal::unpacket_traits<half>::half;
    constexpr index_t p = Eigen::internal::unpacket_traits<packet>::size;
    for (index_t w : {3 * p, 2 * p, p, index_t(Eigen::internal::unpacket_traits<half>::size),
                      index_t(Eigen::internal::unpacket_traits<quarter>::size)})
      if (w <= kernels::traits::mr && w <= remaining) return w;
    return 1;
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
  }

  template <index_t N>
  static void scaled_copy(T const* x, T scale, T* dst) {
    for (index_t i = 0; i < N; ++i) dst[i] = scale * x[i];
  }

  [[nodiscard]] T* lhs_of(index_t s) const {
    return reinterpret_cast<T*>(storage_ + std::size_t(2 * s) * line_bytes<T>(std::size_t(rows_ * slab_)));
  }
  [[nodiscard]] T* rhs_of(index_t s) const {
    return reinterpret_cast<T*>(storage_ + std::size_t(2 * s + 1) * line_bytes<T>(std::size_t(rows_ * slab_)));
  }

  std::byte* storage_;
  index_t rows_, depth_, slab_;
};

#endif

}  // namespace rsq::cpu::detail

namespace rsq::backend {

/// linalg::gemm on the CPU (<rsq/linalg/gemm.hpp>): C ← α·op(A)·op(B) + β·C as the column-major product
/// Cᵀ += α·op(B)ᵀ·op(A)ᵀ on Eigen's kernels, tiled over the available threads (cpu::detail::tiled_product): the
/// same bits for every thread count. matmul_precision::bf16 computes in fp32 here (the CPU has no bf16 products;
/// fp32 is the more accurate answer, as <rsq/core/precision.hpp> allows).
template <>
struct implementation<algorithm::gemm, cpu_eigen> {
  static constexpr bool available = true;

  template <class T>
  static void run(cpu_eigen const&, matrix_view<const T> a, linalg::op op_a, matrix_view<const T> b, linalg::op op_b,
                  matrix_view<T> c, linalg::gemm_options const& opt) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "rsq: gemm computes in float or double");
    index_t const m = c.rows(), n = c.cols(), k = op_a == linalg::op::none ? a.cols() : a.rows();
    scale(c, T(opt.beta));
    if (k == 0 || opt.alpha == 0) return;  // A and B are not read (BLAS)
    // Row-major C (m, n) is the column-major Cᵀ (n, m) with leading dimension C's row stride; op(B)ᵀ (n, k) is B
    // read column-major where op_b is none and row-major where it is transpose; op(A)ᵀ (k, m) likewise. A single
    // row may come with row stride 0 (xtensor): any leading dimension serves a single column.
    auto const ld = [](auto const& v, index_t at_least) { return v.rows() > 1 ? v.stride(0) : at_least; };
    T const* const pa = a.data();
    T const* const pb = b.data();
    index_t const lda = ld(a, a.cols()), ldb = ld(b, b.cols()), ldc = ld(c, n);
    T const alpha = T(opt.alpha);
    bool const ta = op_a == linalg::op::transpose, tb = op_b == linalg::op::transpose;
    using cpu::detail::tiled_product;
    constexpr int col = Eigen::ColMajor, row = Eigen::RowMajor;
    if (!tb && !ta) tiled_product<T, col, col>(n, m, k, pb, ldb, pa, lda, c.data(), ldc, alpha);
    if (!tb && ta) tiled_product<T, col, row>(n, m, k, pb, ldb, pa, lda, c.data(), ldc, alpha);
    if (tb && !ta) tiled_product<T, row, col>(n, m, k, pb, ldb, pa, lda, c.data(), ldc, alpha);
    if (tb && ta) tiled_product<T, row, row>(n, m, k, pb, ldb, pa, lda, c.data(), ldc, alpha);
  }

 private:
  /// C ← β·C, rows in parallel; β = 0 writes zeros without reading C (its NaNs do not propagate).
  template <class T>
  static void scale(matrix_view<T> c, T beta) {
    if (beta == T(1)) return;
    index_t const rows = c.rows(), cols = c.cols();
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (c.size() >= (index_t(1) << 16) && cpu::detail::product_threads() > 1)
#endif
    for (index_t i = 0; i < rows; ++i) {
      T* const row = c.data() + i * c.stride(0);  // contiguous (a single column: its one element)
      if (beta == T(0))
        std::fill_n(row, cols, T(0));
      else
        for (index_t j = 0; j < cols; ++j) row[j] *= beta;
    }
  }
};

}  // namespace rsq::backend
