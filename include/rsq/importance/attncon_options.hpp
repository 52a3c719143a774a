// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Options of the AttnCon scores (importance::attncon_scores, attncon_scores_qk), shared by every backend (Eigen-free
/// and CUDA-free).

#include "rsq/core/view.hpp"

namespace rsq::importance {

/// Options of the AttnCon score computation.
struct attncon_options {
  /// Queries per block when working from queries and keys on the CPU: the working set is query_block × L logits per
  /// thread.
  index_t query_block = 64;
  /// Softmax scale of the logits q·k; 0 means 1/√head_dim, as in LLaMA/Mistral/Qwen attention.
  double softmax_scale = 0;
  /// Given probabilities: every row's causal part Σ_{k ≤ i} A[h, i, k] must be within this of 1. The default
  /// accepts probabilities rounded to bf16 (as the reference's are) and rejects logits or non-causal attention.
  double row_sum_tolerance = 1e-2;
  /// Device memory for the logits of one block of queries (all heads of a KV group) on a GPU backend.
  index_t block_bytes = index_t(256) << 20;
};

}  // namespace rsq::importance
