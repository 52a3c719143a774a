// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The forward pass of a Llama-architecture model on any backend, built from the pieces of rsq::nn (RMSNorm, linear
/// layers, RoPE, causal attention, SwiGLU, the language-model head), batched over equal-length sequences, with hooks
/// that hand a quantizer what it needs:
///  - the input of every linear layer, (tokens, in_features), exactly what multiplies Wᵀ (after any online
///    transform), for the Hessians (spec §5);
///  - every layer's causal attention probabilities, (heads, L, L) per sequence, for AttnCon from probabilities
///    (spec §4.2; materialised on the host: meant for tests and small models);
///  - the post-RoPE queries and keys, per sequence, for a streaming AttnCon that never materialises them.
///
/// The model: x = embedding[token]; per layer x += wo(attn(rope(wq n), rope(wk n), wv n)) with n = RMSNorm(x),
/// then x += w2(silu(w1 n) ⊙ w3 n) with n = RMSNorm(x); logits = classifier(RMSNorm(x)). RMSNorm(x) =
/// g ⊙ x / sqrt(mean(x²) + eps); RoPE rotates the adjacent pairs (2i, 2i+1) of each head by pos·theta^(-2i/hs);
/// query head h attends with KV head h / (n_heads / n_kv_heads); scores are scaled by 1/sqrt(head_size) and
/// causally masked. Positions start at 0 in every sequence. A rotated model applies its online Hadamards
/// (llama_model::online) to the inputs of wo and w2.
///
/// Activations live in the backend's memory as (tokens, features) row-major matrices, the tokens of the sequences one
/// after another. The pieces a layer-by-layer quantization pipeline needs are separate calls (attention_inputs,
/// attention_output, ffn_input, ffn_hidden); forward_layer chains them. The host functions at the end (embed,
/// forward_layer, final_logits, hidden_loss, forward, next_token_loss on xtensor activations) run the same code on
/// the CPU backend.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "rsq/backend/cpu/memory.hpp"
#include "rsq/backend/memory.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/precision.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/importance/attncon.hpp"
#include "rsq/model/llama.hpp"
#include "rsq/nn/attention.hpp"
#include "rsq/nn/embedding.hpp"
#include "rsq/nn/linear.hpp"
#include "rsq/nn/loss.hpp"
#include "rsq/nn/rms_norm.hpp"
#include "rsq/nn/rope.hpp"
#include "rsq/nn/swiglu.hpp"

namespace rsq::model {

/// Activations of a batch on the host: (sequences, tokens, features).
using activations = xt::xtensor<float, 3>;

/// Where a linear-input hook is called from.
struct linear_site {
  int layer = 0;              ///< decoder layer index
  linear_id linear{};         ///< which weight the input multiplies
  index_t sequences = 0;      ///< the rows of the input are `sequences` blocks of `tokens` rows, sequence-major
  index_t tokens = 0;         ///< tokens per sequence (L)
};

/// Where an attention hook is called from.
struct attention_site {
  int layer = 0;          ///< decoder layer index
  index_t sequence = 0;   ///< sequence within the batch
};

/// Callbacks of the forward pass. Empty ones cost nothing; they are called from the calling thread, in order, with
/// views of the backend's memory (device memory for CUDA).
struct forward_hooks {
  /// The input @p x of a linear layer, (sequences * tokens, in_features): what multiplies Wᵀ, after the online
  /// transforms (wo, w2). wq, wk and wv get the same input, as do w1 and w3: one call per linear.
  std::function<void(linear_site const&, rsq::matrix_view<const float> x)> linear_input;
  /// Causal softmax attention @p probs of one sequence, (n_heads, L, L) in host memory: probs(h, query, key), zero
  /// above the diagonal, rows summing to 1. Computed from the post-RoPE queries and keys on the host.
  std::function<void(attention_site const&, rsq::batch_view<const float> probs)> attention_probs;
  /// Post-RoPE queries @p q, (n_heads, L, head_size), and keys @p k, (n_kv_heads, L, head_size), of one sequence
  /// (strided views into the layer's buffers). probs(h) = causal_softmax(q(h) k(h / kv_group)ᵀ / sqrt(head_size)).
  std::function<void(attention_site const&, rsq::batch_view<const float> q, rsq::batch_view<const float> k)> rope_qk;
};

/// Mean next-token loss over a batch.
struct loss_result {
  double sum = 0;          ///< Σ −log p(token[t+1] | tokens[..t]) over every sequence and t < L−1, in float64
  index_t count = 0;       ///< number of predictions: sequences · (L − 1)
  double mean = 0;         ///< sum / count
  double perplexity = 0;   ///< exp(mean)
};

/// Options of the forward pass.
struct forward_options {
  /// Inputs of the matrix products (linear layers, attention, the classifier): fp32, or bf16 as an opt-in.
  matmul_precision precision = matmul_precision::fp32;
};

/// The weights of a decoder layer as views of host memory or of the memory of the backend that runs it.
struct layer_weights {
  vector_view<const float> rms_att;  ///< (dim)
  vector_view<const float> rms_ffn;  ///< (dim)
  matrix_view<const float> wq, wk, wv, wo, w1, w2, w3;
  /// Biases (decoder_layer::bias); empty where the config has none.
  vector_view<const float> bq = {}, bk = {}, bv = {}, bo = {}, b1 = {}, b2 = {}, b3 = {};

  [[nodiscard]] matrix_view<const float> weight(linear_id l) const noexcept {
    return detail::select_linear(l, wq, wk, wv, wo, w1, w2, w3);
  }
  [[nodiscard]] vector_view<const float> bias(linear_id l) const noexcept {
    return detail::select_linear(l, bq, bk, bv, bo, b1, b2, b3);
  }
};

/// Views of the weights of a host layer (the CPU backend computes on them directly).
[[nodiscard]] inline layer_weights weights_of(decoder_layer const& l) {
  auto const bias = [](rsq::vector<float> const& b) {
    return b.size() ? vector_view<const float>(b.data(), index_t(b.size())) : vector_view<const float>{};
  };
  return {rsq::view(l.rms_att), rsq::view(l.rms_ffn), rsq::view(l.wq), rsq::view(l.wk), rsq::view(l.wv),
          rsq::view(l.wo),      rsq::view(l.w1),      rsq::view(l.w2), rsq::view(l.w3), bias(l.bq),
          bias(l.bk),           bias(l.bv),           bias(l.bo),      bias(l.b1),      bias(l.b2),
          bias(l.b3)};
}

/// Buffers of the forward pass in backend B's memory, kept from call to call: they only grow, so that a pipeline
/// that runs a layer over and over neither reallocates nor touches fresh pages (the first touch of host memory costs
/// about 10 µs per 4 KiB on the development machines).
template <backend_tag B>
class forward_workspace {
 public:
  /// The named buffers of a layer.
  enum class buffer { norm, q, k, v, attention, gate, up, scores, count_ };

  explicit forward_workspace(B const& be) : be_(be) {}

  /// A (rows, cols) buffer (contents unspecified; the same memory as the last call for that buffer when it fits).
  [[nodiscard]] matrix_view<float> get(buffer b, index_t rows, index_t cols) {
    auto& slot = slots_[std::size_t(b)];
    if (rows * cols > slot.capacity) {
      slot.data = backend::make_matrix<float>(be_, 1, rows * cols);
      slot.capacity = rows * cols;
    }
    return matrix_view<float>(rsq::view(slot.data).data(), rows, cols);
  }

  [[nodiscard]] B const& backend() const noexcept { return be_; }

 private:
  struct slot_type {
    backend::matrix<float, B> data{};
    index_t capacity = 0;
  };
  B be_;
  std::array<slot_type, std::size_t(buffer::count_)> slots_{};
};

/// Everything a decoder layer's pieces need besides the activations.
template <backend_tag B>
struct layer_context {
  B be;                            ///< where it runs
  llama_config const& config;
  layer_weights weights;           ///< in be's memory
  online_transforms const& online;  ///< the model's online Hadamards
  index_t seq_len = 0;             ///< tokens per sequence
  int layer = 0;                   ///< index, for the hooks
  forward_workspace<B>& workspace;
  forward_options options{};
  forward_hooks const* hooks = nullptr;
};

namespace detail {

template <backend_tag B>
void call_linear(layer_context<B> const& ctx, linear_id l, matrix_view<const float> x) {
  if (ctx.hooks == nullptr || !ctx.hooks->linear_input) return;
  ctx.hooks->linear_input(linear_site{ctx.layer, l, x.rows() / ctx.seq_len, ctx.seq_len}, x);
}

/// (heads, L, head_dim) view of one sequence's rows of a (tokens, heads·head_dim) matrix.
inline batch_view<const float> heads_of(matrix_view<const float> m, index_t sequence, index_t seq_len,
                                        index_t head_dim) {
  return batch_view<const float>(m.data() + sequence * seq_len * m.stride(0), {m.cols() / head_dim, seq_len, head_dim},
                                 {head_dim, m.stride(0), 1});
}

template <backend_tag B>
void call_attention_hooks(layer_context<B> const& ctx, matrix_view<const float> q, matrix_view<const float> k) {
  if (ctx.hooks == nullptr || (!ctx.hooks->rope_qk && !ctx.hooks->attention_probs)) return;
  index_t const L = ctx.seq_len, hd = ctx.config.head_size(), S = q.rows() / L;
  std::vector<float> hq, hk;  // host copies for the probabilities
  for (index_t s = 0; s < S; ++s) {
    auto const qs = heads_of(q, s, L, hd), ks = heads_of(k, s, L, hd);
    if (ctx.hooks->rope_qk) ctx.hooks->rope_qk(attention_site{ctx.layer, s}, qs, ks);
    if (!ctx.hooks->attention_probs) continue;
    index_t const H = qs.extent(0), KV = ks.extent(0);
    hq.resize(std::size_t(L * q.cols()));
    hk.resize(std::size_t(L * k.cols()));
    backend::copy(ctx.be, hq.data(), q.data() + s * L * q.stride(0), L * q.cols());
    backend::copy(ctx.be, hk.data(), k.data() + s * L * k.stride(0), L * k.cols());
    auto const probs = importance::causal_attention(
        batch_view<const float>(hq.data(), {H, L, hd}, {hd, q.cols(), 1}),
        batch_view<const float>(hk.data(), {KV, L, hd}, {hd, k.cols(), 1}));  // (heads, L, L)
    ctx.hooks->attention_probs(attention_site{ctx.layer, s}, rsq::view(probs));
  }
}

}  // namespace detail

/// The attention block's inputs from the residual stream @p x (tokens, dim): n = RMSNorm(x) (the input of wq, wk and
/// wv), q = rope(n·Wqᵀ), k = rope(n·Wkᵀ) and, unless @p with_values is false, v = n·Wvᵀ, into the workspace
/// buffers norm, q, k, v. (Without values: the queries and keys an AttnCon importance needs.)
template <backend_tag B>
void attention_inputs(layer_context<B> const& ctx, matrix_view<const float> x, bool with_values = true) {
  auto const& c = ctx.config;
  auto& ws = ctx.workspace;
  using buf = typename forward_workspace<B>::buffer;
  index_t const T = x.rows();
  auto const n = ws.get(buf::norm, T, c.dim);
  nn::rms_norm(ctx.be, x, ctx.weights.rms_att, c.norm_eps, n);
  detail::call_linear(ctx, linear_id::wq, n);
  detail::call_linear(ctx, linear_id::wk, n);
  detail::call_linear(ctx, linear_id::wv, n);
  auto const q = ws.get(buf::q, T, c.q_dim()), k = ws.get(buf::k, T, c.kv_dim());
  auto const lin = [&](vector_view<const float> bias) {
    return nn::linear_options{.accumulate = false, .precision = ctx.options.precision, .bias = bias};
  };
  nn::linear(ctx.be, n, ctx.weights.wq, q, lin(ctx.weights.bq));
  nn::linear(ctx.be, n, ctx.weights.wk, k, lin(ctx.weights.bk));
  if (with_values) nn::linear(ctx.be, n, ctx.weights.wv, ws.get(buf::v, T, c.kv_dim()), lin(ctx.weights.bv));
  nn::rope_options const rope{
      .seq_len = ctx.seq_len, .head_dim = c.head_size(), .theta = c.rope_theta, .scaling = c.rope_scaling};
  nn::rope(ctx.be, q, rope);
  nn::rope(ctx.be, k, rope);
  detail::call_attention_hooks(ctx, q, k);
}

/// The options of the layer's causal attention.
template <backend_tag B>
[[nodiscard]] nn::attention_options attention_options_of(layer_context<B> const& ctx) {
  auto const& c = ctx.config;
  return {.seq_len = ctx.seq_len, .heads = c.n_heads, .kv_heads = c.n_kv_heads, .head_dim = c.head_size(),
          .softmax_scale = 0, .precision = ctx.options.precision};
}

/// The raw AttnCon scores (sequences, L) of the layer from the workspace's q and k (after attention_inputs), without
/// the attention output: the importances of RSQ (spec §4.2), in @p scores (backend memory).
template <backend_tag B>
void attncon_scores(layer_context<B> const& ctx, index_t tokens, matrix_view<float> scores) {
  using buf = typename forward_workspace<B>::buffer;
  auto& ws = ctx.workspace;
  nn::causal_attention(ctx.be, ws.get(buf::q, tokens, ctx.config.q_dim()), ws.get(buf::k, tokens, ctx.config.kv_dim()),
                       {}, {}, attention_options_of(ctx), scores);
}

/// The attention block's output before wo: softmax attention of the workspace's q, k, v (after attention_inputs),
/// then the model's online Hadamard across heads; in the workspace buffer `attention` (tokens, q_dim), which it
/// returns.
template <backend_tag B>
matrix_view<float> attention_output(layer_context<B> const& ctx, index_t tokens) {
  auto const& c = ctx.config;
  auto& ws = ctx.workspace;
  using buf = typename forward_workspace<B>::buffer;
  auto const a = ws.get(buf::attention, tokens, c.q_dim());
  nn::causal_attention(ctx.be, ws.get(buf::q, tokens, c.q_dim()), ws.get(buf::k, tokens, c.kv_dim()),
                       ws.get(buf::v, tokens, c.kv_dim()), a, attention_options_of(ctx));
  if (ctx.online.heads) {
    // Each token's (heads, head_dim) block x ← H x: the rows (t, j, ·) of the (tokens, head_dim, heads) view.
    index_t const hd = c.head_size();
    ctx.online.heads->apply(ctx.be, tensor_view<float, 3>(a.data(), {tokens, hd, index_t(c.n_heads)},
                                                          {a.stride(0), 1, hd}));
  }
  detail::call_linear(ctx, linear_id::wo, a);
  return a;
}

/// The FFN block's input from the residual stream @p x: n = RMSNorm(x), the input of w1 and w3, in the workspace
/// buffer `norm`, which it returns.
template <backend_tag B>
matrix_view<float> ffn_input(layer_context<B> const& ctx, matrix_view<const float> x) {
  using buf = typename forward_workspace<B>::buffer;
  auto const n = ctx.workspace.get(buf::norm, x.rows(), ctx.config.dim);
  nn::rms_norm(ctx.be, x, ctx.weights.rms_ffn, ctx.config.norm_eps, n);
  detail::call_linear(ctx, linear_id::w1, n);
  detail::call_linear(ctx, linear_id::w3, n);
  return n;
}

/// The input of w2 from the FFN input @p n (after ffn_input): silu(n·W1ᵀ) ⊙ n·W3ᵀ, then the model's online Hadamard;
/// in the workspace buffer `gate` (tokens, hidden_dim), which it returns.
template <backend_tag B>
matrix_view<float> ffn_hidden(layer_context<B> const& ctx, matrix_view<const float> n) {
  auto const& c = ctx.config;
  using buf = typename forward_workspace<B>::buffer;
  index_t const T = n.rows();
  auto const gate = ctx.workspace.get(buf::gate, T, c.hidden_dim), up = ctx.workspace.get(buf::up, T, c.hidden_dim);
  auto const lin = [&](vector_view<const float> bias) {
    return nn::linear_options{.accumulate = false, .precision = ctx.options.precision, .bias = bias};
  };
  nn::linear(ctx.be, n, ctx.weights.w1, gate, lin(ctx.weights.b1));
  nn::linear(ctx.be, n, ctx.weights.w3, up, lin(ctx.weights.b3));
  nn::swiglu(ctx.be, gate, up);
  if (ctx.online.down) ctx.online.down->apply(ctx.be, gate);
  detail::call_linear(ctx, linear_id::w2, gate);
  return gate;
}

/// x += in·Wᵀ + b: a residual update by the linear @p l (wo or w2) of the layer.
template <backend_tag B>
void residual_update(layer_context<B> const& ctx, linear_id l, matrix_view<const float> in, matrix_view<float> x) {
  nn::linear(ctx.be, in, ctx.weights.weight(l), x,
             {.accumulate = true, .precision = ctx.options.precision, .bias = ctx.weights.bias(l)});
}

/// One decoder layer on the residual stream @p x (sequences·seq_len, dim), in place, on ctx.be.
template <backend_tag B>
void forward_layer(layer_context<B> const& ctx, matrix_view<float> x) {
  attention_inputs(ctx, x);
  residual_update(ctx, linear_id::wo, attention_output(ctx, x.rows()), x);
  auto const n = ffn_input(ctx, x);
  residual_update(ctx, linear_id::w2, ffn_hidden(ctx, n), x);
}

// ---- Host functions on xtensor activations (the CPU backend) -------------------------------------------------------

/// The token embeddings of @p tokens, (sequences, L) ids, as (sequences, L, dim).
/// @throws rsq::invalid_argument for an empty batch or an id outside [0, vocab_size).
[[nodiscard]] inline activations embed(llama_model const& m, rsq::matrix_view<const std::int32_t> tokens) {
  RSQ_EXPECTS(tokens.rows() > 0 && tokens.cols() > 0, "embed: tokens must be a non-empty (sequences x L) array, got ",
              rsq::detail::shape_string(tokens));
  index_t const V = index_t(m.token_embedding.shape()[0]), D = index_t(m.token_embedding.shape()[1]);
  RSQ_EXPECTS(V == m.config.vocab_size && D == m.config.dim, "embed: token_embedding must be (", m.config.vocab_size,
              " x ", m.config.dim, "), got ", rsq::detail::shape_string(rsq::view(m.token_embedding)));
  activations x(activations::shape_type{std::size_t(tokens.rows()), std::size_t(tokens.cols()), std::size_t(D)});
  nn::embed(backend::cpu_eigen{}, tokens, rsq::view(m.token_embedding),
            matrix_view<float>(x.data(), tokens.rows() * tokens.cols(), D));
  return x;
}

/// One decoder layer on @p x, (sequences, L, dim): returns the layer's output (sequences, L, dim) and calls the
/// hooks with @p layer_index as the layer. Each sequence is independent and starts at position 0. Without @p online
/// transforms the layer computes a plain model's layer.
/// @throws rsq::invalid_argument if shapes do not match the config, L exceeds config.seq_len, or x has NaN/Inf.
[[nodiscard]] inline activations forward_layer(llama_config const& c, decoder_layer const& layer, int layer_index,
                                               rsq::batch_view<const float> x, forward_hooks const& hooks = {},
                                               online_transforms const& online = {}) {
  validate(c);
  validate(c, layer, layer_index);
  index_t const S = x.extent(0), L = x.extent(1), D = c.dim;
  RSQ_EXPECTS(S > 0 && L > 0 && x.extent(2) == D, "forward_layer: x must be (sequences x L x ", D,
              ") with S, L > 0, got ", rsq::detail::shape_string(x));
  RSQ_EXPECTS(L <= c.seq_len, "forward_layer: sequence length ", L, " exceeds the model's seq_len ", c.seq_len);
  activations out(activations::shape_type{std::size_t(S), std::size_t(L), std::size_t(D)});
  for (index_t s = 0; s < S; ++s)
    for (index_t t = 0; t < L; ++t)
      for (index_t j = 0; j < D; ++j) {
        float const v = x(s, t, j);
        RSQ_EXPECTS(std::isfinite(v), "forward_layer: x has a non-finite value (", v, ") at (", s, ", ", t, ", ", j,
                    ")");
        out(s, t, j) = v;
      }
  forward_workspace<backend::cpu_eigen> ws(backend::cpu_eigen{});
  layer_context<backend::cpu_eigen> const ctx{backend::cpu_eigen{}, c, weights_of(layer), online, L, layer_index, ws,
                                              {}, &hooks};
  forward_layer(ctx, matrix_view<float>(out.data(), S * L, D));
  return out;
}

/// Final RMSNorm and classifier on hidden states @p h, (sequences, L, dim): logits (sequences, L, vocab_size).
[[nodiscard]] inline activations final_logits(llama_model const& m, rsq::batch_view<const float> h) {
  auto const& c = m.config;
  RSQ_EXPECTS(h.extent(0) > 0 && h.extent(1) > 0 && h.extent(2) == c.dim,
              "final_logits: h must be (sequences x L x ", c.dim, "), got ", rsq::detail::shape_string(h));
  RSQ_EXPECTS(h.is_contiguous(), "final_logits: h must be contiguous");
  index_t const S = h.extent(0), L = h.extent(1), V = c.vocab_size;
  activations logits(activations::shape_type{std::size_t(S), std::size_t(L), std::size_t(V)});
  nn::final_logits(backend::cpu_eigen{}, matrix_view<const float>(h.data(), S * L, c.dim), rsq::view(m.rms_final),
                   rsq::view(m.classifier), c.norm_eps, matrix_view<float>(logits.data(), S * L, V));
  return logits;
}

/// Next-token loss of hidden states @p h, (sequences, L, dim), against @p tokens, (sequences, L): position t
/// predicts tokens(s, t + 1).
[[nodiscard]] inline loss_result hidden_loss(llama_model const& m, rsq::batch_view<const float> h,
                                             rsq::matrix_view<const std::int32_t> tokens) {
  RSQ_EXPECTS(tokens.rows() == h.extent(0) && tokens.cols() == h.extent(1), "hidden_loss: tokens ",
              rsq::detail::shape_string(tokens), " do not match the hidden states ", rsq::detail::shape_string(h));
  RSQ_EXPECTS(tokens.cols() >= 2, "hidden_loss: sequences need at least 2 tokens, got ", tokens.cols());
  RSQ_EXPECTS(h.is_contiguous(), "hidden_loss: h must be contiguous");
  auto const s = nn::next_token_loss(backend::cpu_eigen{}, matrix_view<const float>(h.data(), h.extent(0) * h.extent(1),
                                                                                    h.extent(2)),
                                     rsq::view(m.rms_final), rsq::view(m.classifier), tokens,
                                     {.seq_len = tokens.cols(), .norm_eps = m.config.norm_eps});
  return {s.sum, s.count, s.sum / double(s.count), std::exp(s.sum / double(s.count))};
}

/// Hidden states after the last decoder layer, (sequences, L, dim), for @p tokens (sequences, L).
[[nodiscard]] inline activations forward_hidden(llama_model const& m, rsq::matrix_view<const std::int32_t> tokens,
                                                forward_hooks const& hooks = {}) {
  validate(m);
  activations x = embed(m, tokens);
  index_t const S = tokens.rows(), L = tokens.cols();
  RSQ_EXPECTS(L <= m.config.seq_len, "forward: sequence length ", L, " exceeds the model's seq_len ",
              m.config.seq_len);
  forward_workspace<backend::cpu_eigen> ws(backend::cpu_eigen{});
  for (std::size_t l = 0; l < m.layers.size(); ++l) {
    layer_context<backend::cpu_eigen> const ctx{backend::cpu_eigen{}, m.config, weights_of(m.layers[l]), m.online,
                                                L, int(l), ws, {}, &hooks};
    forward_layer(ctx, matrix_view<float>(x.data(), S * L, m.config.dim));
  }
  return x;
}

/// The whole forward pass: logits (sequences, L, vocab_size) of @p tokens (sequences, L).
[[nodiscard]] inline activations forward(llama_model const& m, rsq::matrix_view<const std::int32_t> tokens,
                                         forward_hooks const& hooks = {}) {
  auto const h = forward_hidden(m, tokens, hooks);
  return final_logits(m, rsq::batch_view<const float>(h));
}

/// Mean next-token loss and perplexity of @p m on @p tokens (sequences, L): every position but the last predicts
/// the next token of its sequence.
[[nodiscard]] inline loss_result next_token_loss(llama_model const& m, rsq::matrix_view<const std::int32_t> tokens,
                                                 forward_hooks const& hooks = {}) {
  auto const h = forward_hidden(m, tokens, hooks);
  return hidden_loss(m, rsq::batch_view<const float>(h), tokens);
}

}  // namespace rsq::model
