// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CUDA backend of linalg::lu_solve (<rsq/linalg/lu_solve.hpp>): the row-major A is the column-major Aᵀ, which
/// cuSOLVER's getrf factors in place; B is transposed into column-major scratch (cuBLAS geam), solved by getrs with
/// the transpose flag (Aᵀᵀ = A), and transposed back. Declarations only; definitions in impl/lu_solve.cuh.

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/view.hpp"

namespace rsq::cuda::detail {

/// A template with one instantiation (in rsq_cuda.cu), so that the definition may be compiled into several objects.
template <class T>
void lu_solve_impl(backend::cuda const& be, matrix_view<T> a, matrix_view<T> b);
extern template void lu_solve_impl<double>(backend::cuda const&, matrix_view<double>, matrix_view<double>);

}  // namespace rsq::cuda::detail

namespace rsq::backend {

template <>
struct implementation<algorithm::lu_solve, cuda> {
  static constexpr bool available = true;
  static void run(cuda const& be, matrix_view<double> a, matrix_view<double> b) {
    rsq::cuda::detail::lu_solve_impl<double>(be, a, b);
  }
};

}  // namespace rsq::backend
