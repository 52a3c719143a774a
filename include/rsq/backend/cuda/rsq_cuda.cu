// SPDX-License-Identifier: MIT
/// @file
/// The one translation unit of rsq's CUDA backend: it gathers the definitions (kernels, cuBLAS and cuSOLVER calls)
/// and instantiates them for float and double. Compile it once with nvcc into the program that uses the backend:
/// the CMake target rsq::cuda adds it to every target that links it (header-only from the user's side), or compile
/// it yourself: `nvcc -std=c++20 -arch=sm_90 -DRSQ_WITH_CUDA=1 -I<rsq>/include -I<xtensor, xtl> -c rsq_cuda.cu`.
/// It must never include Eigen (checked at the end).

#ifndef RSQ_WITH_CUDA
#define RSQ_WITH_CUDA 1
#endif

#include "rsq/backend/cuda/impl/activation_scores.cuh"
#include "rsq/backend/cuda/impl/attncon.cuh"
#include "rsq/backend/cuda/impl/elementwise.cuh"
#include "rsq/backend/cuda/impl/gemm.cuh"
#include "rsq/backend/cuda/impl/gptq_solver.cuh"
#include "rsq/backend/cuda/impl/hadamard_transform.cuh"
#include "rsq/backend/cuda/impl/hessian_accumulator.cuh"
#include "rsq/backend/cuda/impl/lu_solve.cuh"
#include "rsq/backend/cuda/impl/nn.cuh"
#include "rsq/backend/cuda/impl/pack.cuh"
#include "rsq/backend/cuda/impl/reverse.cuh"
#include "rsq/backend/cuda/impl/rtn.cuh"
#include "rsq/backend/cuda/impl/runtime.cuh"

namespace rsq::cuda::detail {
template struct runtime_api<void>;

#define RSQ_CUDA_INSTANTIATE(T)                                                                                     \
  template gptq::factorization<T, backend::cuda> factor_impl<T>(backend::cuda const&, matrix_view<const T>,        \
                                                                gptq::options const&);                             \
  template gptq::result<T, backend::cuda> solve_impl<T>(backend::cuda const&, matrix_view<const T>,                \
                                                        gptq::factorization<T, backend::cuda> const&,              \
                                                        quant::grid_spec const&, gptq::options const&);            \
  template gptq::result<T> to_host_impl<T>(backend::cuda const&, gptq::result<T, backend::cuda> const&,            \
                                           gptq::result<T>&&);                                                     \
  template pack::basic_gptq_tensors<backend::cuda> pack_impl<T>(                                                   \
      backend::cuda const&, matrix_view<const std::uint8_t>, matrix_view<const T>, matrix_view<const T>,           \
      vector_view<const std::int32_t>, int, pack::zero_format);                                                    \
  template void hadamard_transform_impl<T>(backend::cuda const&, rotation::hadamard_plan const&,                   \
                                           rotation::hadamard_scaling, tensor_view<T, 3>, bool,                       \
                                           std::span<std::int8_t const>, std::span<std::int8_t const>);            \
  template void attncon_probabilities_impl<T>(backend::cuda const&, tensor_view<const T, 3>, vector_view<T>,       \
                                              importance::attncon_options const&);                                 \
  template void attncon_queries_keys_impl<T>(backend::cuda const&, tensor_view<const T, 3>, tensor_view<const T, 3>, \
                                             vector_view<T>, importance::attncon_options const&);                  \
  template quant::quantized_weight<T, backend::cuda> rtn_impl<T>(backend::cuda const&, matrix_view<const T>,       \
                                                                 quant::grid_spec const&, index_t);               \
  template void fake_quantize_impl<T>(backend::cuda const&, matrix_view<T>, quant::grid_spec const&, index_t);      \
  template void activation_scores_impl<T>(backend::cuda const&, importance::activation_statistic,                  \
                                          matrix_view<const T>, matrix_view<const T>, index_t, matrix_view<float>, \
                                          importance::activation_names const&);
RSQ_CUDA_INSTANTIATE(float)
RSQ_CUDA_INSTANTIATE(double)
#undef RSQ_CUDA_INSTANTIATE

template void axpy_impl<float>(backend::cuda const&, float, matrix_view<const float>, matrix_view<float>);
template void axpy_impl<double>(backend::cuda const&, double, matrix_view<const double>, matrix_view<double>);
template double dot_impl<float>(backend::cuda const&, matrix_view<const float>, matrix_view<const float>);
template double dot_impl<double>(backend::cuda const&, matrix_view<const double>, matrix_view<const double>);
template void convert_impl<float, double>(backend::cuda const&, matrix_view<const float>, matrix_view<double>);
template void convert_impl<double, float>(backend::cuda const&, matrix_view<const double>, matrix_view<float>);
template void convert_impl<float, float>(backend::cuda const&, matrix_view<const float>, matrix_view<float>);
template void convert_impl<double, double>(backend::cuda const&, matrix_view<const double>, matrix_view<double>);
template void scale_columns_impl<double, float>(backend::cuda const&, matrix_view<double>, vector_view<const float>);
template void scale_columns_impl<float, float>(backend::cuda const&, matrix_view<float>, vector_view<const float>);
template void add_to_rows_impl<float>(backend::cuda const&, matrix_view<float>, vector_view<const float>);
template void add_to_rows_impl<double>(backend::cuda const&, matrix_view<double>, vector_view<const double>);
template pack::gptq_tensors packed_to_host<backend::cuda>(backend::cuda const&,
                                                          pack::basic_gptq_tensors<backend::cuda> const&);
template void gemm_impl<float>(backend::cuda const&, matrix_view<const float>, linalg::op, matrix_view<const float>,
                               linalg::op, matrix_view<float>, linalg::gemm_options const&);
template void gemm_impl<double>(backend::cuda const&, matrix_view<const double>, linalg::op,
                                matrix_view<const double>, linalg::op, matrix_view<double>,
                                linalg::gemm_options const&);
template struct nn_api<void>;
template void lu_solve_impl<double>(backend::cuda const&, matrix_view<double>, matrix_view<double>);
template struct reverse_api<void>;
}  // namespace rsq::cuda::detail

namespace rsq::backend {
#define RSQ_CUDA_INSTANTIATE_HESSIAN(T)                                                                             \
  template class implementation<algorithm::hessian_accumulation, cuda>::accumulator<T>;                            \
  template void implementation<algorithm::hessian_accumulation, cuda>::accumulator<T>::add_resident<float, float>( \
      batch_view<const float>, matrix_view<const float>, hessian::weighting const&, index_t);                      \
  template void implementation<algorithm::hessian_accumulation, cuda>::accumulator<T>::add_resident<float, double>( \
      batch_view<const float>, matrix_view<const double>, hessian::weighting const&, index_t);                     \
  template void implementation<algorithm::hessian_accumulation, cuda>::accumulator<T>::add_resident<double, float>( \
      batch_view<const double>, matrix_view<const float>, hessian::weighting const&, index_t);                     \
  template void implementation<algorithm::hessian_accumulation, cuda>::accumulator<T>::add_resident<double,        \
                                                                                                   double>(        \
      batch_view<const double>, matrix_view<const double>, hessian::weighting const&, index_t);
RSQ_CUDA_INSTANTIATE_HESSIAN(float)
RSQ_CUDA_INSTANTIATE_HESSIAN(double)
#undef RSQ_CUDA_INSTANTIATE_HESSIAN
}  // namespace rsq::backend

// The CUDA translation unit stays Eigen-free (nvcc and Eigen do not mix well; docs/design.md).
#ifdef EIGEN_WORLD_VERSION
static_assert(false, "rsq_cuda.cu must not include Eigen");
#endif
