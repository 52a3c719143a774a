// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Definition of the CUDA linalg::lu_solve (<rsq/backend/cuda/lu_solve.hpp>).

#include <climits>
#include <cstdint>
#include <type_traits>

#include "rsq/backend/cuda/impl/common.cuh"
#include "rsq/backend/cuda/lu_solve.hpp"

namespace rsq::cuda::detail {

template <class T>
void lu_solve_impl(backend::cuda const& be, matrix_view<T> a, matrix_view<T> b) {
  static_assert(std::is_same_v<T, double>, "rsq: lu_solve computes in double");
  auto& ctx = context_for(be.stream);
  cudaStream_t const s = ctx.stream();
  (void)resident_here(a.data(), "lu_solve: A");
  (void)resident_here(b.data(), "lu_solve: B");
  index_t const n = a.rows(), m = b.cols();
  index_t const lda = n > 1 ? a.stride(0) : n, ldb = n > 1 ? b.stride(0) : m;
  RSQ_EXPECTS(n <= INT_MAX && m <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX, "lu_solve: sizes beyond int");
  // Scratch: B in column-major (n, m), the pivots and the info word, getrf's workspace.
  auto* bc = ctx.buffer<double>(scratch::lu_b, std::size_t(n * m));
  std::size_t dev_bytes = 0, host_bytes = 0;
  RSQ_CUSOLVER_CHECK(cusolverDnXgetrf_bufferSize(ctx.solver(), ctx.params(), n, n, CUDA_R_64F, a.data(), lda,
                                                 CUDA_R_64F, &dev_bytes, &host_bytes));
  std::size_t const pivots = (std::size_t(n) * 8 + 255) / 256 * 256;  // getrf's workspace starts 256-aligned
  auto* work = static_cast<unsigned char*>(ctx.buffer(scratch::solver_work, 256 + pivots + dev_bytes));
  int* info_d = reinterpret_cast<int*>(work);
  auto* ipiv = reinterpret_cast<std::int64_t*>(work + 256);
  void* dwork = work + 256 + pivots;
  void* hwork = ctx.host_buffer(host_bytes);
  double const one = 1, zero = 0;
  cublasHandle_t const h = ctx.blas();
  // bc (col-major n × m) = (row-major B)ᵀᵀ: B's storage is the col-major (m, n) Bᵀ; transpose it.
  RSQ_CUBLAS_CHECK(cublasDgeam(h, CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(m), &one, b.data(), int(ldb), &zero, bc,
                               int(n), bc, int(n)));
  RSQ_CUSOLVER_CHECK(cusolverDnXgetrf(ctx.solver(), ctx.params(), n, n, CUDA_R_64F, a.data(), lda, ipiv, CUDA_R_64F,
                                      dwork, dev_bytes, hwork, host_bytes, info_d));
  int const info = read_back(info_d, s);
  RSQ_EXPECTS(info >= 0, "lu_solve: cusolverDnXgetrf rejected parameter ", -info);
  // The factors are those of Aᵀ (A's storage read column-major): A·Y = B is (Aᵀ)ᵀ·Y = B.
  RSQ_CUSOLVER_CHECK(cusolverDnXgetrs(ctx.solver(), ctx.params(), CUBLAS_OP_T, n, m, CUDA_R_64F, a.data(), lda, ipiv,
                                      CUDA_R_64F, bc, n, info_d));
  RSQ_CUBLAS_CHECK(cublasDgeam(h, CUBLAS_OP_T, CUBLAS_OP_N, int(m), int(n), &one, bc, int(n), &zero, b.data(),
                               int(ldb), b.data(), int(ldb)));
  RSQ_CUDA_CHECK(cudaStreamSynchronize(s));
}

}  // namespace rsq::cuda::detail
