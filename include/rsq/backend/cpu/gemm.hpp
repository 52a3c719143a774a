// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The matrix products of the CPU backend's kernels: Eigen's GEMM kernels, with their packing buffers kept per
/// thread. Eigen allocates a product's packing buffers (mc·kc and kc·nc elements: 0.25–1 MiB for the tiles used
/// here) on the heap for every product; glibc gives that memory back to the system when it is freed, and the next
/// product faults it in again, 4 KiB at a time. Measured on the development machine: an 8192-token Hessian update at
/// 1024 features into a kept accumulator took 0.055–0.062 s with about 2400 page faults, against 0.040–0.047 s once
/// the buffers are kept (docs/linalg.md). Here they come from a block per thread (cpu/scratch.hpp) that stays between calls.
///
/// This reaches into Eigen 3.4's internal product API (`general_matrix_matrix_product`,
/// `general_matrix_matrix_triangular_product`, `level3_blocking`); with another Eigen version, and outside a
/// parallel region when Eigen has several threads (its own multi-threaded product is the better one there), the
/// products are plain Eigen expressions.

#include <cstddef>

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
    std::size_t const a_bytes = (std::size_t(this->m_mc * this->m_kc) * sizeof(T) + 63) / 64 * 64;
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

}  // namespace rsq::cpu::detail
