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


#include "rsq/backend/cuda/impl/attncon.cuh"
#include "rsq/backend/cuda/impl/gptq_solver.cuh"
#include "rsq/backend/cuda/impl/hadamard.cuh"
#include "rsq/backend/cuda/impl/hessian_accumulator.cuh"
#include "rsq/backend/cuda/impl/pack.cuh"
#include "rsq/backend/cuda/impl/runtime.cuh"

namespace rsq::cuda::detail {
template struct runtime_api<void>;

template gptq::factorization<float, backend::cuda> factor_impl<float>(backend::cuda const&, matrix_view<const float>,
                                                                      gptq::options const&, factor_options const&,
                                                                      bool);
template gptq::factorization<double, backend::cuda> factor_impl<double>(backend::cuda const&,
                                                                        matrix_view<const double>,
                                                                        gptq::options const&, factor_options const&,
                                                                        bool);
template device_result<float> solve_device_impl<float>(backend::cuda const&, matrix_view<const float>,
                                                       gptq::factorization<float, backend::cuda> const&,
                                                       quant::grid_spec const&, gptq::options const&, bool);
template device_result<double> solve_device_impl<double>(backend::cuda const&, matrix_view<const double>,
                                                         gptq::factorization<double, backend::cuda> const&,
                                                         quant::grid_spec const&, gptq::options const&, bool);
}  // namespace rsq::cuda::detail

namespace rsq::cuda {
template struct device_result<float>;
template struct device_result<double>;
template pack::gptq_tensors device_gptq_tensors::to_host<backend::cuda>(backend::cuda const&) const;
template device_gptq_tensors pack_gptq_device<float>(backend::cuda const&, device_result<float> const&,
                                                     pack::zero_format);
template void hadamard_transform<float>(backend::cuda const&, matrix_view<float>, rotation::hadamard_options const&,
                                        std::span<std::int8_t const>, std::span<std::int8_t const>, bool);
template void hadamard_transform<double>(backend::cuda const&, matrix_view<double>, rotation::hadamard_options const&,
                                         std::span<std::int8_t const>, std::span<std::int8_t const>, bool);
template rsq::vector<float> attncon_scores<float>(backend::cuda const&, tensor_view<const float, 3>,
                                                  attncon_options const&);
template rsq::vector<double> attncon_scores<double>(backend::cuda const&, tensor_view<const double, 3>,
                                                    attncon_options const&);
template rsq::vector<float> attncon_scores_qk<float>(backend::cuda const&, tensor_view<const float, 3>,
                                                     tensor_view<const float, 3>, attncon_options const&);
template rsq::vector<double> attncon_scores_qk<double>(backend::cuda const&, tensor_view<const double, 3>,
                                                       tensor_view<const double, 3>, attncon_options const&);
template device_gptq_tensors pack_gptq_device<double>(backend::cuda const&, device_result<double> const&,
                                                      pack::zero_format);
}  // namespace rsq::cuda

namespace rsq {
template class hessian_accumulator<float, backend::cuda>;
template class hessian_accumulator<double, backend::cuda>;
template void hessian_accumulator<float, backend::cuda>::add_device<float, float>(batch_view<const float>,
                                                                                 matrix_view<const float>);
template void hessian_accumulator<float, backend::cuda>::add_device<float, double>(batch_view<const float>,
                                                                                  matrix_view<const double>);
template void hessian_accumulator<float, backend::cuda>::add_device<double, float>(batch_view<const double>,
                                                                                  matrix_view<const float>);
template void hessian_accumulator<float, backend::cuda>::add_device<double, double>(batch_view<const double>,
                                                                                   matrix_view<const double>);
template void hessian_accumulator<double, backend::cuda>::add_device<float, float>(batch_view<const float>,
                                                                                  matrix_view<const float>);
template void hessian_accumulator<double, backend::cuda>::add_device<float, double>(batch_view<const float>,
                                                                                   matrix_view<const double>);
template void hessian_accumulator<double, backend::cuda>::add_device<double, float>(batch_view<const double>,
                                                                                   matrix_view<const float>);
template void hessian_accumulator<double, backend::cuda>::add_device<double, double>(batch_view<const double>,
                                                                                    matrix_view<const double>);
}  // namespace rsq


// The CUDA translation unit stays Eigen-free (nvcc and Eigen do not mix well; docs/design.md).
#ifdef EIGEN_WORLD_VERSION
static_assert(false, "rsq_cuda.cu must not include Eigen");
#endif
