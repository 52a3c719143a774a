// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Options of the forward-pass pieces (rsq::nn), shared by every backend. Eigen-free and CUDA-free, so that the
/// backends' implementations include it. The pieces work on activations stored as (tokens, features) row-major
/// float matrices, the tokens of `sequences` sequences of `seq_len` tokens one after another (sequence-major).

#include <cstdint>

#include "rsq/core/precision.hpp"
#include "rsq/core/view.hpp"

namespace rsq::nn {

/// Options of nn::linear.
struct linear_options {
  bool accumulate = false;                           ///< y += x·Wᵀ instead of y = x·Wᵀ (the residual connection)
  matmul_precision precision = matmul_precision::fp32;
};

/// Options of nn::rope: rotary position embedding of Llama as llama2c and Meta's code write it, on adjacent pairs
/// (2i, 2i+1) of each head, rotated by pos·theta^(−2i/head_dim); pos = row mod seq_len.
struct rope_options {
  index_t seq_len = 0;     ///< tokens per sequence
  index_t head_dim = 0;    ///< features per head (even)
  double theta = 10000.0;  ///< RoPE base
};

/// Options of nn::causal_attention: query head h attends with KV head h div (heads / kv_heads); logits are scaled
/// by softmax_scale (0: 1/√head_dim) and causally masked; each sequence starts at position 0.
struct attention_options {
  index_t seq_len = 0;   ///< tokens per sequence
  index_t heads = 0;     ///< query heads
  index_t kv_heads = 0;  ///< key/value heads (divides heads)
  index_t head_dim = 0;  ///< features per head
  double softmax_scale = 0;
  matmul_precision precision = matmul_precision::fp32;
};

/// Options of nn::next_token_loss.
struct loss_options {
  index_t seq_len = 0;    ///< tokens per sequence; position t predicts token t + 1 of its sequence
  float norm_eps = 1e-5f; ///< epsilon of the final RMSNorm
  matmul_precision precision = matmul_precision::fp32;
};

/// Σ −log p(next token) over `count` predictions, summed in float64.
struct loss_sum {
  double sum = 0;
  index_t count = 0;
};

}  // namespace rsq::nn
