// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CUDA backend of AttnCon (algorithm::attncon, <rsq/importance/attncon.hpp>, spec §4.2):
/// s_t = Σ_h Σ_{i ≥ t} A_h[i, t], from causal attention probabilities or straight from queries and keys (after RoPE),
/// with the conventions of the CPU: causal mask, logits scaled by softmax_scale (0: 1/√head_dim), GQA with query head
/// h reading KV head h div (heads / kv_heads), sums in double. From Q/K, the logits of a block of queries against the
/// keys they see are one strided-batched cuBLAS GEMM per KV group (never an L x L matrix per head beyond the block);
/// row maxima and sums, then the column sums of exp(S − max)/sum, are kernels.
/// Declarations only; definitions in <rsq/backend/cuda/impl/attncon.cuh>.

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/core/view.hpp"
#include "rsq/importance/attncon_options.hpp"

namespace rsq::cuda::detail {

/// The definitions behind implementation<algorithm::attncon, cuda> (impl/attncon.cuh); @p out in device memory.
template <class T>
void attncon_probabilities_impl(backend::cuda const& be, tensor_view<const T, 3> a, vector_view<T> out,
                                importance::attncon_options const& opt);
template <class T>
void attncon_queries_keys_impl(backend::cuda const& be, tensor_view<const T, 3> q, tensor_view<const T, 3> k,
                               vector_view<T> out, importance::attncon_options const& opt);

#define RSQ_CUDA_ATTNCON_EXTERN(T)                                                                                 \
  extern template void attncon_probabilities_impl<T>(backend::cuda const&, tensor_view<const T, 3>, vector_view<T>, \
                                                     importance::attncon_options const&);                         \
  extern template void attncon_queries_keys_impl<T>(backend::cuda const&, tensor_view<const T, 3>,                 \
                                                    tensor_view<const T, 3>, vector_view<T>,                       \
                                                    importance::attncon_options const&);
RSQ_CUDA_ATTNCON_EXTERN(float)
RSQ_CUDA_ATTNCON_EXTERN(double)
#undef RSQ_CUDA_ATTNCON_EXTERN

}  // namespace rsq::cuda::detail

namespace rsq::backend {

template <>
struct implementation<algorithm::attncon, cuda> {
  static constexpr bool available = true;

  template <class T>
  static void from_probabilities(cuda const& be, tensor_view<const T, 3> a, vector_view<T> out,
                                 importance::attncon_options const& opt) {
    rsq::cuda::detail::attncon_probabilities_impl<T>(be, a, out, opt);
  }
  template <class T>
  static void from_queries_keys(cuda const& be, tensor_view<const T, 3> q, tensor_view<const T, 3> k,
                                vector_view<T> out, importance::attncon_options const& opt) {
    rsq::cuda::detail::attncon_queries_keys_impl<T>(be, q, k, out, opt);
  }
};

}  // namespace rsq::backend
