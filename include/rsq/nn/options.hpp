// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Options of the forward-pass pieces (rsq::nn), shared by every backend. Eigen-free and CUDA-free, so that the
/// backends' implementations include it. The pieces work on activations stored as (tokens, features) row-major
/// float matrices, the tokens of `sequences` sequences of `seq_len` tokens one after another (sequence-major).

#include <cmath>
#include <cstdint>

#include "rsq/core/precision.hpp"
#include "rsq/core/view.hpp"

namespace rsq::nn {

/// Options of nn::linear.
struct linear_options {
  bool accumulate = false;                           ///< y += x·Wᵀ instead of y = x·Wᵀ (the residual connection)
  matmul_precision precision = matmul_precision::fp32;
  vector_view<const float> bias = {};                ///< (out_features) added to every row; none when empty
};

/// Llama-3's frequency-dependent RoPE scaling (Hugging Face `rope_type: "llama3"`): wavelengths longer than
/// original_max_positions / low_freq_factor are stretched by `factor`, those shorter than original_max_positions /
/// high_freq_factor kept, those between interpolated. factor 1 changes nothing (the default: no scaling).
struct rope_scaling {
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  double original_max_positions = 8192;

  [[nodiscard]] bool enabled() const noexcept { return factor != 1.0; }
  friend bool operator==(rope_scaling const&, rope_scaling const&) = default;
};

/// Options of nn::rope: rotary position embedding of Llama as llama2c and Meta's code write it, on adjacent pairs
/// (2i, 2i+1) of each head, rotated by pos·f_i with f_i = rope_inverse_frequency(theta, head_dim, scaling, i);
/// pos = row mod seq_len.
struct rope_options {
  index_t seq_len = 0;     ///< tokens per sequence
  index_t head_dim = 0;    ///< features per head (even)
  double theta = 10000.0;  ///< RoPE base
  rope_scaling scaling = {};
};

/// The angle per position of RoPE pair @p i: theta^(−2i/head_dim), then Llama-3's scaling (in float64; both backends
/// build their cos/sin tables from it).
[[nodiscard]] inline double rope_inverse_frequency(double theta, index_t head_dim, rope_scaling const& s, index_t i) {
  double const f = std::pow(theta, -double(2 * i) / double(head_dim));
  if (!s.enabled()) return f;
  double const two_pi = 6.283185307179586476925;
  double const wavelength = two_pi / f;
  double const long_wavelength = s.original_max_positions / s.low_freq_factor;    // beyond: divided by factor
  double const short_wavelength = s.original_max_positions / s.high_freq_factor;  // below: unchanged
  if (wavelength > long_wavelength) return f / s.factor;
  if (wavelength < short_wavelength) return f;
  double const smooth = (s.original_max_positions / wavelength - s.low_freq_factor) /
                        (s.high_freq_factor - s.low_freq_factor);
  return (1 - smooth) * f / s.factor + smooth * f;
}

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
