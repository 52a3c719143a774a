// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Definition of the CUDA linalg::gemm (<rsq/backend/cuda/gemm.hpp>).
///
/// Row-major views onto column-major cuBLAS: a row-major (r, c) matrix with row stride ld is the column-major (c, r)
/// matrix with leading dimension ld, i.e. its transpose. So C = op(A)·op(B) is computed as Cᵀ = op(B)ᵀ·op(A)ᵀ with
/// cuBLAS's m = cols(C), n = rows(C), k = the inner dimension; Bᵀ is B's storage read as is (CUBLAS_OP_N when
/// op_b = none) or transposed back (CUBLAS_OP_T when op_b = transpose), and the same for A.

#include <cuda_bf16.h>

#include <climits>
#include <type_traits>

#include "rsq/backend/cuda/gemm.hpp"
#include "rsq/backend/cuda/impl/common.cuh"
#include "rsq/backend/cuda/kernels/nn.cuh"
#include "rsq/core/error.hpp"

namespace rsq::cuda::detail {

/// Elements from one row of a row-major view to the next, as cuBLAS's leading dimension: a single row gets its width
/// (xtensor gives such a view the row stride 0, which cuBLAS rejects).
template <class T>
[[nodiscard]] inline index_t leading_dimension(matrix_view<T> m) {
  return m.rows() > 1 ? m.stride(0) : (m.cols() > 0 ? m.cols() : 1);
}

/// Throws unless @p m's rows do not overlap (row stride ≥ width), as cuBLAS's leading dimension needs.
template <class T>
void expect_rows_apart(matrix_view<T> m, char const* who, char const* what) {
  RSQ_EXPECTS(m.rows() <= 1 || m.stride(0) >= m.cols(), who, ": the rows of ", what, " overlap (row stride ",
              m.stride(0), " < ", m.cols(), " columns)");
}

/// Throws unless @p v fits cuBLAS's int arguments.
inline void expect_int(index_t v, char const* who) {
  RSQ_EXPECTS(v >= 0 && v <= index_t(INT_MAX), who, ": a size or leading dimension (", v,
              ") is beyond cuBLAS's int range");
}

[[nodiscard]] inline cublasOperation_t blas_op(linalg::op o) {
  return o == linalg::op::none ? CUBLAS_OP_N : CUBLAS_OP_T;
}

template <class T>
void gemm_impl(backend::cuda const& be, matrix_view<const T> a, linalg::op op_a, matrix_view<const T> b,
               linalg::op op_b, matrix_view<T> c, linalg::gemm_options const& opt) {
  auto& ctx = context_for(be.stream);
  cudaStream_t const s = ctx.stream();
  index_t const M = c.rows(), N = c.cols(), K = op_a == linalg::op::none ? a.cols() : a.rows();
  if (M == 0 || N == 0) return;
  (void)resident_here(c.data(), "gemm: C");
  expect_rows_apart(c, "gemm", "C");
  T const alpha = T(opt.alpha), beta = T(opt.beta);
  index_t const ldc = leading_dimension(c);
  for (index_t v : {M, N, K, ldc}) expect_int(v, "gemm");
  if (K == 0) {  // C = β·C (cuBLAS is not asked to handle k = 0)
    kernels::scale_rows_kernel<T><<<kernels::grid_2d(M, N), threads_1d, 0, s>>>(c.data(), ldc, M, N, beta);
    RSQ_CUDA_CHECK_LAUNCH("scale_rows_kernel");
    return;
  }
  (void)resident_here(a.data(), "gemm: A");
  (void)resident_here(b.data(), "gemm: B");
  expect_rows_apart(a, "gemm", "A");
  expect_rows_apart(b, "gemm", "B");
  index_t const lda = leading_dimension(a), ldb = leading_dimension(b);
  expect_int(lda, "gemm");
  expect_int(ldb, "gemm");
  cublasHandle_t const h = ctx.blas();
  int const m = int(N), n = int(M), k = int(K);
  if constexpr (std::is_same_v<T, float>) {
    if (opt.precision == matmul_precision::bf16) {
      // Both operands rounded to bf16 into contiguous scratch (leading dimension = width), fp32 accumulation.
      auto* const a16 = ctx.buffer<__nv_bfloat16>(scratch::gemm_a16, std::size_t(a.rows() * a.cols()));
      auto* const b16 = ctx.buffer<__nv_bfloat16>(scratch::gemm_b16, std::size_t(b.rows() * b.cols()));
      kernels::convert_rows_kernel<float, __nv_bfloat16><<<kernels::grid_2d(a.rows(), a.cols()), threads_1d, 0, s>>>(
          a.data(), lda, a.rows(), a.cols(), a16, a.cols());
      RSQ_CUDA_CHECK_LAUNCH("convert_rows_kernel");
      kernels::convert_rows_kernel<float, __nv_bfloat16><<<kernels::grid_2d(b.rows(), b.cols()), threads_1d, 0, s>>>(
          b.data(), ldb, b.rows(), b.cols(), b16, b.cols());
      RSQ_CUDA_CHECK_LAUNCH("convert_rows_kernel");
      RSQ_CUBLAS_CHECK(cublasGemmEx(h, blas_op(op_b), blas_op(op_a), m, n, k, &alpha, b16, CUDA_R_16BF, int(b.cols()),
                                    a16, CUDA_R_16BF, int(a.cols()), &beta, c.data(), CUDA_R_32F, int(ldc),
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      return;
    }
    // Strict fp32: the context's handle uses CUBLAS_DEFAULT_MATH (no TF32).
    RSQ_CUBLAS_CHECK(cublasSgemm(h, blas_op(op_b), blas_op(op_a), m, n, k, &alpha, b.data(), int(ldb), a.data(),
                                 int(lda), &beta, c.data(), int(ldc)));
  } else {
    RSQ_CUBLAS_CHECK(cublasDgemm(h, blas_op(op_b), blas_op(op_a), m, n, k, &alpha, b.data(), int(ldb), a.data(),
                                 int(lda), &beta, c.data(), int(ldc)));
  }
}

}  // namespace rsq::cuda::detail
