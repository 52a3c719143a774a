// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CUDA backend of the activation scores (algorithm::activation_scores, <rsq/importance/activation_scores.hpp>):
/// ActNorm's ‖x_t‖₂, ActDiff's ‖x_t − x_ref,t‖₂ and TokenSim's ‖x_t − μ‖² + (1/L) Σ_j ‖x_j − μ‖² of a batch of
/// sequences in device memory, sums in double, with fixed reduction trees (one block per row or per sequence, no
/// floating-point atomics): the same bits from run to run. Declarations only; definitions in
/// <rsq/backend/cuda/impl/activation_scores.cuh>.

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/core/view.hpp"
#include "rsq/importance/activation_scores_options.hpp"

namespace rsq::cuda::detail {

/// The definition behind implementation<algorithm::activation_scores, cuda> (impl/activation_scores.cuh): arguments
/// checked by the front end; x, x_ref and out in device memory; queued on be.stream.
template <class T>
void activation_scores_impl(backend::cuda const& be, importance::activation_statistic stat, matrix_view<const T> x,
                            matrix_view<const T> x_ref, index_t seq_len, matrix_view<float> out,
                            importance::activation_names const& names);

#define RSQ_CUDA_ACTIVATION_SCORES_EXTERN(T)                                                                       \
  extern template void activation_scores_impl<T>(backend::cuda const&, importance::activation_statistic,          \
                                                 matrix_view<const T>, matrix_view<const T>, index_t,             \
                                                 matrix_view<float>, importance::activation_names const&);
RSQ_CUDA_ACTIVATION_SCORES_EXTERN(float)
RSQ_CUDA_ACTIVATION_SCORES_EXTERN(double)
#undef RSQ_CUDA_ACTIVATION_SCORES_EXTERN

}  // namespace rsq::cuda::detail

namespace rsq::backend {

template <>
struct implementation<algorithm::activation_scores, cuda> {
  static constexpr bool available = true;

  template <class T>
  static void run(cuda const& be, importance::activation_statistic stat, matrix_view<const T> x,
                  matrix_view<const T> x_ref, index_t seq_len, matrix_view<float> out,
                  importance::activation_names const& names) {
    rsq::cuda::detail::activation_scores_impl<T>(be, stat, x, x_ref, seq_len, out, names);
  }
};

}  // namespace rsq::backend
