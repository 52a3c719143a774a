// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Explicit instantiations of rsq's heaviest templates, for programs built with RSQ_EXTERN_TEMPLATES.
///
/// rsq is header-only, so every translation unit that calls the GPTQ solver compiles it (and Eigen's GEMM kernels
/// under it) again: tens of seconds per file. A program with many such files can define RSQ_EXTERN_TEMPLATES for all
/// of them (e.g. `target_compile_definitions(app PRIVATE RSQ_EXTERN_TEMPLATES)`), which turns the instantiations
/// below into `extern template` declarations, and include this header in exactly one of its translation units,
/// which then holds the code. Nothing changes in behaviour. Instantiated here, for float and double:
///  - the CPU backend's blocked Cholesky / triangular inverse and its GPTQ factor() and solve();
///  - model::quantize_model on the CPU backend.

#include "rsq/backend/cpu/gptq_solver.hpp"
#include "rsq/backend/cpu/linalg.hpp"
#include "rsq/model/quantize.hpp"

namespace rsq::cpu::detail {

namespace linalg {
template index_t factor_invert<float>(col_ref<float>, bool, bool);
template index_t factor_invert<double>(col_ref<double>, bool, bool);
}  // namespace linalg

template gptq::factorization<float, backend::cpu_eigen> gptq_factor<float>(matrix_view<const float>,
                                                                          gptq::options const&);
template gptq::factorization<double, backend::cpu_eigen> gptq_factor<double>(matrix_view<const double>,
                                                                            gptq::options const&);
template gptq::result<float> gptq_solve<float>(matrix_view<const float>,
                                               gptq::factorization<float, backend::cpu_eigen> const&,
                                               quant::grid_spec const&, gptq::options const&,
                                               gptq::result<float>);
template gptq::result<double> gptq_solve<double>(matrix_view<const double>,
                                                 gptq::factorization<double, backend::cpu_eigen> const&,
                                                 quant::grid_spec const&, gptq::options const&,
                                                 gptq::result<double>);

}  // namespace rsq::cpu::detail

namespace rsq::model {

template quantized_model quantize_model<backend::cpu_eigen>(backend::cpu_eigen const&, llama_model&&,
                                                            rsq::matrix_view<const std::int32_t>,
                                                            quantize_options const&, quantize_observer const&);

}  // namespace rsq::model
