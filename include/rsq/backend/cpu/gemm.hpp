// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The matrix products of the CPU backend's kernels: Eigen's GEMM kernels, with their packing buffers kept per
/// thread. Eigen allocates a product's packing buffers (mc·kc and kc·nc elements: 0.25–1 MiB for the tiles used
/// here) on the heap for every product; glibc gives that memory back to the system when it is freed, and the next
/// product faults it in again, 4 KiB at a time. Measured on the development machine: an 8192-token Hessian update at
/// 1024 features into a kept accumulator took 0.055–0.062 s with about 2400 page faults, against 0.040–0.047 s once
/// the buffers are kept (docs/linalg.md). Here they come from a block per thread (cpu/scratch.hpp) that stays
/// between calls. Below them, packed_rows packs a block of a SYRK's factor once for all the tile products that read it.
///
/// This reaches into Eigen 3.4's internal product API (`general_matrix_matrix_product`,
/// `general_matrix_matrix_triangular_product`, `level3_blocking`); with another Eigen version, and outside a
/// parallel region when Eigen has several threads (its own multi-threaded product is the better one there), the
/// products are plain Eigen expressions.

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

#include <Eigen/Core>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/backend/cpu/scratch.hpp"
#include "rsq/core/view.hpp"

#if EIGEN_VERSION_AT_LEAST(3, 4, 0) && !EIGEN_VERSION_AT_LEAST(3, 4, 90)
#define RSQ_EIGEN_KEPT_PACKING 1
#else
#define RSQ_EIGEN_KEPT_PACKING 0
#endif

namespace rsq::cpu::detail {

#if RSQ_EIGEN_KEPT_PACKING

template <class X>
inline constexpr int storage_order_of =
    (Eigen::internal::traits<X>::Flags & Eigen::RowMajorBit) ? Eigen::RowMajor : Eigen::ColMajor;

/// Eigen's single-threaded blocking (what gemm_blocking_space computes) with its buffers in the calling thread's
/// packing block. Without column blocking (the triangular product) every column of the right factor is packed.
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

#endif

/// True where Eigen's own product should run: outside a parallel region, with several Eigen threads.
[[nodiscard]] inline bool eigen_threads_product() {
#if defined(_OPENMP)
  return !omp_in_parallel() && Eigen::nbThreads() > 1;
#else
  return false;
#endif
}

/// C += alpha · A · B, C column-major; A and B any direct-access blocks (transposes included) with unit inner stride.
template <class T, class A, class B>
void gemm_update(Eigen::Ref<eigen_col_matrix<T>> c, Eigen::MatrixBase<A> const& a, Eigen::MatrixBase<B> const& b,
                 T alpha) {
  if (c.rows() == 0 || c.cols() == 0 || a.cols() == 0) return;
#if RSQ_EIGEN_KEPT_PACKING
  if (!eigen_threads_product()) {
    check_operands<A, B>();
    kept_blocking<T> blocking(c.rows(), c.cols(), a.cols(), true);
    Eigen::internal::general_matrix_matrix_product<Eigen::Index, T, storage_order_of<A>, false, T,
                                                   storage_order_of<B>, false, Eigen::ColMajor, 1>::
        run(c.rows(), c.cols(), a.cols(), a.derived().data(), a.derived().outerStride(), b.derived().data(),
            b.derived().outerStride(), c.data(), 1, c.outerStride(), alpha, blocking);
    return;
  }
#endif
  c.noalias() += (alpha * a) * b;
}

/// The lower triangle of C += alpha · A · B (C square, column-major; its strict upper part is not touched).
template <class T, class A, class B>
void gemm_update_lower(Eigen::Ref<eigen_col_matrix<T>> c, Eigen::MatrixBase<A> const& a,
                       Eigen::MatrixBase<B> const& b, T alpha) {
  if (c.rows() == 0 || a.cols() == 0) return;
#if RSQ_EIGEN_KEPT_PACKING
  if (!eigen_threads_product()) {
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
