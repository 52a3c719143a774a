// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The weights of a Llama-architecture model, as the forward pass (model/forward.hpp) and the llama2c reader and
/// writer (model/llama2c.hpp) see them: a config, the token embedding, one `decoder_layer` per layer (plain owned
/// matrices that a quantization pipeline can swap for quantized ones), the final RMSNorm gains and the classifier.
///
/// Weights are (out_features, in_features), row-major, as everywhere in rsq. Linear names follow llama2c:
/// w1 = gate, w3 = up, w2 = down.

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/nn/options.hpp"
#include "rsq/rotation/hadamard.hpp"

namespace rsq::model {

/// The seven linear layers of a decoder layer, in llama2c's file order.
enum class linear_id { wq, wk, wv, wo, w1, w2, w3 };

namespace detail {

/// The one of @p wq ... @p w3 that linear @p l names (the accessors of the weight and bias sets share it).
template <class T>
[[nodiscard]] constexpr T& select_linear(linear_id l, T& wq, T& wk, T& wv, T& wo, T& w1, T& w2, T& w3) noexcept {
  switch (l) {
    case linear_id::wq: return wq;
    case linear_id::wk: return wk;
    case linear_id::wv: return wv;
    case linear_id::wo: return wo;
    case linear_id::w1: return w1;
    case linear_id::w2: return w2;
    case linear_id::w3: return w3;
  }
  return wq;
}

}  // namespace detail

/// Hyperparameters of a Llama-architecture model: the seven fields of a llama2c header plus the constants of the
/// forward pass.
struct llama_config {
  int dim = 0;            ///< width of the residual stream
  int hidden_dim = 0;     ///< width of the SwiGLU FFN (rows of w1 and w3)
  int n_layers = 0;       ///< number of decoder layers
  int n_heads = 0;        ///< query heads
  int n_kv_heads = 0;     ///< key/value heads (GQA: n_heads is a multiple of it)
  int vocab_size = 0;     ///< always positive here (the sign trick of the llama2c header is undone when reading)
  int seq_len = 0;        ///< maximum sequence length (length of the RoPE tables in a llama2c file)
  float norm_eps = 1e-5f;       ///< RMSNorm epsilon
  double rope_theta = 10000.0;  ///< RoPE base: frequency of pair i is rope_theta^(-2i/head_size)
  nn::rope_scaling rope_scaling = {};  ///< Llama-3's frequency scaling (none by default)
  bool qkv_bias = false;               ///< q, k and v have biases (Qwen2): decoder_layer::bq, bk, bv
  bool o_bias = false;                 ///< wo has a bias (Llama's attention_bias): decoder_layer::bo
  bool mlp_bias = false;               ///< w1, w3 and w2 have biases (Llama's mlp_bias): decoder_layer::b1, b3, b2
  /// Width of each attention head; 0 means dim / n_heads. Mistral-Nemo's heads are wider than dim / n_heads, so that
  /// wq is (q_dim, dim) with q_dim = n_heads · head_dim != dim, and wo is (dim, q_dim).
  int head_dim = 0;

  [[nodiscard]] int head_size() const noexcept { return head_dim > 0 ? head_dim : n_heads > 0 ? dim / n_heads : 0; }
  /// Width of the queries and of the attention output: n_heads · head_size().
  [[nodiscard]] int q_dim() const noexcept { return n_heads * head_size(); }
  [[nodiscard]] int kv_dim() const noexcept { return n_kv_heads * head_size(); }
  /// True when linear @p l has a bias under this config.
  [[nodiscard]] bool has_bias(linear_id l) const noexcept;
  /// Query heads per KV head: query head h reads KV head h / kv_group().
  [[nodiscard]] int kv_group() const noexcept { return n_kv_heads > 0 ? n_heads / n_kv_heads : 0; }

  friend bool operator==(llama_config const&, llama_config const&) = default;
};

inline bool llama_config::has_bias(linear_id l) const noexcept {
  switch (l) {
    case linear_id::wq:
    case linear_id::wk:
    case linear_id::wv: return qkv_bias;
    case linear_id::wo: return o_bias;
    case linear_id::w1:
    case linear_id::w2:
    case linear_id::w3: return mlp_bias;
  }
  return false;
}

/// Throws rsq::invalid_argument unless @p c describes a well-formed model (positive sizes, dim divisible by
/// n_heads unless head_dim is given, n_heads divisible by n_kv_heads, even head size for the RoPE pairs, finite
/// positive eps and theta).
inline void validate(llama_config const& c) {
  RSQ_EXPECTS(c.dim > 0, "llama_config: dim must be positive, got ", c.dim);
  RSQ_EXPECTS(c.hidden_dim > 0, "llama_config: hidden_dim must be positive, got ", c.hidden_dim);
  RSQ_EXPECTS(c.n_layers > 0, "llama_config: n_layers must be positive, got ", c.n_layers);
  RSQ_EXPECTS(c.n_heads > 0, "llama_config: n_heads must be positive, got ", c.n_heads);
  RSQ_EXPECTS(c.n_kv_heads > 0, "llama_config: n_kv_heads must be positive, got ", c.n_kv_heads);
  RSQ_EXPECTS(c.vocab_size > 0, "llama_config: vocab_size must be positive, got ", c.vocab_size);
  RSQ_EXPECTS(c.seq_len > 0, "llama_config: seq_len must be positive, got ", c.seq_len);
  RSQ_EXPECTS(c.head_dim >= 0, "llama_config: head_dim must be positive (or 0: dim / n_heads), got ", c.head_dim);
  RSQ_EXPECTS(c.head_dim > 0 || c.dim % c.n_heads == 0, "llama_config: dim (", c.dim,
              ") is not divisible by n_heads (", c.n_heads, ") and no head_dim is given");
  RSQ_EXPECTS(c.n_heads % c.n_kv_heads == 0, "llama_config: n_heads (", c.n_heads,
              ") is not divisible by n_kv_heads (", c.n_kv_heads, ")");
  RSQ_EXPECTS(c.head_size() % 2 == 0, "llama_config: the head size must be even for RoPE pairs, got ",
              c.head_size());
  RSQ_EXPECTS(c.norm_eps > 0.f && c.norm_eps < 1.f, "llama_config: norm_eps must be in (0, 1), got ", c.norm_eps);
  RSQ_EXPECTS(c.rope_theta > 1.0 && c.rope_theta < 1e12, "llama_config: rope_theta must be in (1, 1e12), got ",
              c.rope_theta);
  auto const& s = c.rope_scaling;
  RSQ_EXPECTS(s.factor >= 1.0 && s.original_max_positions > 0 && s.low_freq_factor > 0 &&
                  s.high_freq_factor > s.low_freq_factor,
              "llama_config: RoPE scaling needs factor >= 1, original_max_positions > 0 and high_freq_factor > "
              "low_freq_factor > 0");
}

/// All linear ids, in file order.
inline constexpr linear_id all_linears[] = {linear_id::wq, linear_id::wk, linear_id::wv, linear_id::wo,
                                            linear_id::w1, linear_id::w2, linear_id::w3};

/// llama2c name of a linear layer ("wq", ..., "w3").
[[nodiscard]] constexpr std::string_view name(linear_id l) noexcept {
  switch (l) {
    case linear_id::wq: return "wq";
    case linear_id::wk: return "wk";
    case linear_id::wv: return "wv";
    case linear_id::wo: return "wo";
    case linear_id::w1: return "w1";
    case linear_id::w2: return "w2";
    case linear_id::w3: return "w3";
  }
  return "?";
}

/// Hugging Face name of a linear layer ("q_proj", ..., "gate_proj", "down_proj", "up_proj").
[[nodiscard]] constexpr std::string_view hf_name(linear_id l) noexcept {
  switch (l) {
    case linear_id::wq: return "q_proj";
    case linear_id::wk: return "k_proj";
    case linear_id::wv: return "v_proj";
    case linear_id::wo: return "o_proj";
    case linear_id::w1: return "gate_proj";
    case linear_id::w2: return "down_proj";
    case linear_id::w3: return "up_proj";
  }
  return "?";
}

/// The online Hadamards of a rotated model (spec §2.3), the same for every layer, applied by the forward pass on every
/// backend before the matmul of wo (o_proj) and w2 (down_proj); the linear-input hooks and the Hessians see the
/// transformed inputs. Empty pointers: none (a plain model).
struct online_transforms {
  /// H = M_{n_h}/√n_h across the heads of wo's input: with each token's input x as (n_heads, head_dim), x ← H x.
  std::shared_ptr<rotation::hadamard const> heads;
  /// H = M_I/√I on every row of w2's input, x ← H x (I = hidden_dim).
  std::shared_ptr<rotation::hadamard const> down;

  [[nodiscard]] bool any() const noexcept { return heads != nullptr || down != nullptr; }
};

/// The weights of one decoder layer. A quantization pipeline swaps a weight by assigning a new matrix of the same
/// shape (e.g. `layer.wq = dequantized;`). RMSNorm without gains (a rotated model) is expressed with gains of ones.
struct decoder_layer {
  rsq::vector<float> rms_att;  ///< (dim) gains of the attention RMSNorm
  rsq::matrix<float> wq;       ///< (q_dim, dim) = (n_heads * head_size, dim)
  rsq::matrix<float> wk;       ///< (kv_dim, dim)
  rsq::matrix<float> wv;       ///< (kv_dim, dim)
  rsq::matrix<float> wo;       ///< (dim, q_dim)
  rsq::vector<float> rms_ffn;  ///< (dim) gains of the FFN RMSNorm
  rsq::matrix<float> w1;       ///< (hidden_dim, dim) gate
  rsq::matrix<float> w2;       ///< (dim, hidden_dim) down
  rsq::matrix<float> w3;       ///< (hidden_dim, dim) up
  /// Biases of q (q_dim), k and v (kv_dim) when config.qkv_bias, of wo (dim) when config.o_bias, of w1 and w3
  /// (hidden_dim) and w2 (dim) when config.mlp_bias; empty otherwise.
  rsq::vector<float> bq, bk, bv, bo, b1, b2, b3;

  /// The weight of linear @p l.
  [[nodiscard]] rsq::matrix<float>& weight(linear_id l) noexcept {
    return detail::select_linear(l, wq, wk, wv, wo, w1, w2, w3);
  }
  [[nodiscard]] rsq::matrix<float> const& weight(linear_id l) const noexcept {
    return const_cast<decoder_layer&>(*this).weight(l);
  }

  /// The bias of linear @p l (empty when it has none).
  [[nodiscard]] rsq::vector<float>& bias(linear_id l) noexcept {
    return detail::select_linear(l, bq, bk, bv, bo, b1, b2, b3);
  }
  [[nodiscard]] rsq::vector<float> const& bias(linear_id l) const noexcept {
    return const_cast<decoder_layer&>(*this).bias(l);
  }
};

/// A whole Llama-architecture model. The classifier is always stored; when it is tied to the token embedding (a
/// llama2c header with positive vocab_size) it is a copy of it.
struct llama_model {
  llama_config config;
  rsq::matrix<float> token_embedding;  ///< (vocab_size, dim)
  std::vector<decoder_layer> layers;   ///< n_layers of them
  rsq::vector<float> rms_final;        ///< (dim) gains of the final RMSNorm
  rsq::matrix<float> classifier;       ///< (vocab_size, dim)
  online_transforms online;            ///< the online Hadamards of a rotated model (none for a plain model)
};

/// (rows, cols) that linear @p l of a layer has under config @p c.
[[nodiscard]] inline std::array<index_t, 2> weight_shape(llama_config const& c, linear_id l) noexcept {
  index_t const d = c.dim, h = c.hidden_dim, kv = c.kv_dim(), qd = c.q_dim();
  switch (l) {
    case linear_id::wq: return {qd, d};
    case linear_id::wk: return {kv, d};
    case linear_id::wv: return {kv, d};
    case linear_id::wo: return {d, qd};
    case linear_id::w1: return {h, d};
    case linear_id::w2: return {d, h};
    case linear_id::w3: return {h, d};
  }
  return {0, 0};
}

namespace detail {

inline void expect_vector(rsq::vector<float> const& v, index_t n, int layer, std::string_view what) {
  RSQ_EXPECTS(index_t(v.size()) == n, "llama_model: layer ", layer, " ", what, " must have ", n,
              " elements, got ", v.size());
}

}  // namespace detail

/// Throws rsq::invalid_argument unless @p layer has the shapes that config @p c asks for. @p index names the layer
/// in messages.
inline void validate(llama_config const& c, decoder_layer const& layer, int index) {
  detail::expect_vector(layer.rms_att, c.dim, index, "rms_att");
  detail::expect_vector(layer.rms_ffn, c.dim, index, "rms_ffn");
  for (linear_id l : all_linears)
    detail::expect_vector(layer.bias(l), c.has_bias(l) ? weight_shape(c, l)[0] : 0, index,
                          "bias of " + std::string(name(l)));
  for (linear_id l : all_linears) {
    auto const& w = layer.weight(l);
    auto const want = weight_shape(c, l);
    RSQ_EXPECTS(index_t(w.shape()[0]) == want[0] && index_t(w.shape()[1]) == want[1], "llama_model: layer ",
                index, " ", name(l), " must be (", want[0], " x ", want[1], "), got ",
                rsq::detail::shape_string(rsq::view(w)));
  }
}

/// Throws rsq::invalid_argument unless every array of @p m has the shape its config asks for.
/// With @p check_finite, also rejects NaN/Inf anywhere (naming the tensor and position).
inline void validate(llama_model const& m, bool check_finite = false) {
  auto const& c = m.config;
  validate(c);
  RSQ_EXPECTS(index_t(m.token_embedding.shape()[0]) == c.vocab_size && index_t(m.token_embedding.shape()[1]) == c.dim,
              "llama_model: token_embedding must be (", c.vocab_size, " x ", c.dim, "), got ",
              rsq::detail::shape_string(rsq::view(m.token_embedding)));
  RSQ_EXPECTS(index_t(m.classifier.shape()[0]) == c.vocab_size && index_t(m.classifier.shape()[1]) == c.dim,
              "llama_model: classifier must be (", c.vocab_size, " x ", c.dim, "), got ",
              rsq::detail::shape_string(rsq::view(m.classifier)));
  RSQ_EXPECTS(index_t(m.rms_final.size()) == c.dim, "llama_model: rms_final must have ", c.dim,
              " elements, got ", m.rms_final.size());
  RSQ_EXPECTS(m.layers.size() == std::size_t(c.n_layers), "llama_model: config has ", c.n_layers,
              " layers, the model holds ", m.layers.size());
  RSQ_EXPECTS(!m.online.heads || m.online.heads->size() == c.n_heads, "llama_model: the online Hadamard across heads "
              "has length ", m.online.heads ? m.online.heads->size() : 0, ", the model has ", c.n_heads, " heads");
  RSQ_EXPECTS(!m.online.down || m.online.down->size() == c.hidden_dim, "llama_model: the online Hadamard of w2's "
              "input has length ", m.online.down ? m.online.down->size() : 0, ", hidden_dim is ", c.hidden_dim);
  for (std::size_t i = 0; i < m.layers.size(); ++i) validate(c, m.layers[i], int(i));
  if (!check_finite) return;
  rsq::detail::check_finite(rsq::view(m.token_embedding), "llama_model: token_embedding");
  rsq::detail::check_finite(rsq::view(m.classifier), "llama_model: classifier");
  rsq::detail::check_finite(rsq::view(m.rms_final), "llama_model: rms_final");
  for (std::size_t i = 0; i < m.layers.size(); ++i) {
    auto const& L = m.layers[i];
    std::string const prefix = "llama_model: layer " + std::to_string(i) + " ";
    rsq::detail::check_finite(rsq::view(L.rms_att), prefix + "rms_att");
    rsq::detail::check_finite(rsq::view(L.rms_ffn), prefix + "rms_ffn");
    for (linear_id l : all_linears) {
      rsq::detail::check_finite(rsq::view(L.weight(l)), prefix + std::string(name(l)));
      rsq::detail::check_finite(rsq::view(L.bias(l)), prefix + "bias of " + std::string(name(l)));
    }
  }
}

}  // namespace rsq::model
