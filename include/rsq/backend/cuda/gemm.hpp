// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CUDA backend of rsq::linalg::gemm (<rsq/linalg/gemm.hpp>): C ← α·op(A)·op(B) + β·C on row-major views of
/// device memory (rows contiguous, any row stride), mapped onto cuBLAS's column-major GEMM as Cᵀ = op(B)ᵀ·op(A)ᵀ
/// (no copy). float: strict fp32 (CUBLAS_DEFAULT_MATH, never TF32), or with matmul_precision::bf16 both operands
/// rounded to bf16 in scratch and multiplied on tensor cores with fp32 accumulation (cublasGemmEx,
/// CUBLAS_COMPUTE_32F); double: DGEMM (bf16 does not apply). Runs on the backend's stream.
/// Declarations only; the definition is in <rsq/backend/cuda/impl/gemm.cuh>, compiled by nvcc in rsq_cuda.cu. Needs no
/// CUDA header and no Eigen.

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/view.hpp"
#include "rsq/linalg/gemm_options.hpp"

namespace rsq::cuda::detail {

/// The definition behind implementation<algorithm::gemm, cuda> (impl/gemm.cuh); arguments checked by the front end.
template <class T>
void gemm_impl(backend::cuda const& be, matrix_view<const T> a, linalg::op op_a, matrix_view<const T> b,
               linalg::op op_b, matrix_view<T> c, linalg::gemm_options const& opt);

extern template void gemm_impl<float>(backend::cuda const&, matrix_view<const float>, linalg::op,
                                      matrix_view<const float>, linalg::op, matrix_view<float>,
                                      linalg::gemm_options const&);
extern template void gemm_impl<double>(backend::cuda const&, matrix_view<const double>, linalg::op,
                                       matrix_view<const double>, linalg::op, matrix_view<double>,
                                       linalg::gemm_options const&);

}  // namespace rsq::cuda::detail

namespace rsq::backend {

/// The CUDA backend of linalg::gemm.
template <>
struct implementation<algorithm::gemm, cuda> {
  static constexpr bool available = true;

  template <class T>
  static void run(cuda const& be, matrix_view<const T> a, linalg::op op_a, matrix_view<const T> b, linalg::op op_b,
                  matrix_view<T> c, linalg::gemm_options const& opt) {
    rsq::cuda::detail::gemm_impl<T>(be, a, op_a, b, op_b, c, opt);
  }
};

}  // namespace rsq::backend
