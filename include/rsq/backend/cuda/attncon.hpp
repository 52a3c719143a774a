// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// AttnCon (spec §4.2) on the GPU: s_t = Σ_h Σ_{i ≥ t} A_h[i, t], from causal attention probabilities or straight from
/// queries and keys (after RoPE), with the conventions of rsq::importance::attncon_scores / attncon_scores_qk
/// (<rsq/importance/attncon.hpp>): causal mask, logits scaled by softmax_scale (0: 1/√head_dim), GQA with query head h
/// reading KV head h div (heads / kv_heads), sums in double. From Q/K, the logits of a block of queries against the
/// keys they see are one strided-batched cuBLAS GEMM per KV group (never an L x L matrix per head beyond the block);
/// row maxima and sums, then the column sums of exp(S − max)/sum, are kernels.
/// Declarations only; definitions in <rsq/backend/cuda/impl/attncon.cuh>.

#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"

namespace rsq::cuda {

/// Options of the GPU AttnCon (the fields of importance::attncon_options that apply, with the same defaults).
struct attncon_options {
  /// Softmax scale of the logits q·k; 0 means 1/√head_dim.
  double softmax_scale = 0;
  /// Given probabilities: every row's causal part must sum to 1 within this.
  double row_sum_tolerance = 1e-2;
  /// Device memory for the logits of one block of queries (all heads of a KV group).
  index_t block_bytes = index_t(256) << 20;
};

/// AttnCon raw scores of one sequence from causal attention probabilities @p attention (heads, tokens, tokens) in
/// host or device memory (only the causal part is read). @returns scores // (tokens), in host memory
/// @throws rsq::invalid_argument for a bad shape, a NaN/Inf or negative probability, or a row whose causal part does
///         not sum to 1 within row_sum_tolerance (naming head and row)
template <class T>
[[nodiscard]] rsq::vector<T> attncon_scores(backend::cuda const& be, tensor_view<const T, 3> attention,
                                            attncon_options const& opt = {});

/// AttnCon raw scores from @p queries (heads, tokens, head_dim) and @p keys (kv_heads, tokens, head_dim), host or
/// device memory. @returns scores // (tokens), in host memory
/// @throws rsq::invalid_argument for shapes that do not match, heads not a multiple of kv_heads, NaN/Inf
///
/// Example: `auto s = rsq::cuda::attncon_scores_qk(be, q_view, k_view); auto r = rsq::importance::normalize(s);`
template <class T>
[[nodiscard]] rsq::vector<T> attncon_scores_qk(backend::cuda const& be, tensor_view<const T, 3> queries,
                                               tensor_view<const T, 3> keys, attncon_options const& opt = {});

extern template rsq::vector<float> attncon_scores<float>(backend::cuda const&, tensor_view<const float, 3>,
                                                         attncon_options const&);
extern template rsq::vector<double> attncon_scores<double>(backend::cuda const&, tensor_view<const double, 3>,
                                                           attncon_options const&);
extern template rsq::vector<float> attncon_scores_qk<float>(backend::cuda const&, tensor_view<const float, 3>,
                                                            tensor_view<const float, 3>, attncon_options const&);
extern template rsq::vector<double> attncon_scores_qk<double>(backend::cuda const&, tensor_view<const double, 3>,
                                                              tensor_view<const double, 3>, attncon_options const&);

}  // namespace rsq::cuda
