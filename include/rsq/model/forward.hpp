// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// CPU forward pass of a Llama-architecture model (Eigen GEMMs; OpenMP through Eigen and over attention heads),
/// batched over equal-length sequences, with hooks that hand a quantizer what it needs:
///  - the input of every linear layer, (tokens, in_features), exactly what multiplies Wᵀ (after any input
///    transform), for the Hessians (spec §5);
///  - every layer's causal attention probabilities, (heads, L, L) per sequence, for AttnCon (spec §4.2);
///  - the post-RoPE queries and keys, per sequence, for a streaming AttnCon that never materialises the
///    probabilities.
///
/// The pieces a layer-by-layer quantization pipeline needs are separate calls: embed(), forward_layer() (one
/// decoder layer on (sequences, L, dim) inputs), final_logits() / hidden_loss() (final RMSNorm + classifier), and
/// the whole forward() / next_token_loss().
///
/// The model: x = embedding[token]; per layer x += wo(attn(rope(wq n), rope(wk n), wv n)) with n = RMSNorm(x),
/// then x += w2(silu(w1 n) ⊙ w3 n) with n = RMSNorm(x); logits = classifier(RMSNorm(x)). RMSNorm(x) =
/// g ⊙ x / sqrt(mean(x²) + eps); RoPE rotates the adjacent pairs (2i, 2i+1) of each head by pos·theta^(-2i/hs);
/// query head h attends with KV head h / (n_heads / n_kv_heads); scores are scaled by 1/sqrt(head_size) and
/// causally masked. Positions start at 0 in every sequence.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/model/llama.hpp"

namespace rsq::model {

/// Activations of a batch: (sequences, tokens, features).
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

/// Callbacks of the forward pass. Empty ones cost nothing; they are called from the calling thread, in order.
struct forward_hooks {
  /// The input @p x of a linear layer, (sequences * tokens, in_features): what multiplies Wᵀ, after the layer's
  /// input transform (wo, w2). wq, wk and wv get the same input, as do w1 and w3: one call per linear.
  std::function<void(linear_site const&, rsq::matrix_view<const float> x)> linear_input;
  /// Causal softmax attention @p probs of one sequence, (n_heads, L, L): probs(h, query, key), zero above the
  /// diagonal, rows summing to 1.
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

namespace detail {

using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using row_map = Eigen::Map<row_matrix>;
using const_row_map = Eigen::Map<const row_matrix>;

inline const_row_map map(rsq::matrix<float> const& w) {
  return const_row_map(w.data(), index_t(w.shape()[0]), index_t(w.shape()[1]));
}

/// y = RMSNorm(x) row by row: g ⊙ x / sqrt(mean(x²) + eps).
template <class In>
void rms_norm(In const& x, rsq::vector<float> const& g, float eps, row_map y) {
  Eigen::Map<const Eigen::RowVectorXf> gain(g.data(), index_t(g.size()));
  for (index_t i = 0; i < x.rows(); ++i) {
    float const ms = x.row(i).squaredNorm() / float(x.cols());
    float const inv = 1.f / std::sqrt(ms + eps);
    y.row(i) = (x.row(i) * inv).cwiseProduct(gain);
  }
}

/// cos/sin of pos·theta^(-2i/head_size) for pos < L, i < head_size/2, each (L, head_size/2), computed in double.
struct rope_tables {
  row_matrix cos, sin;
};

inline rope_tables make_rope(llama_config const& c, index_t L) {
  index_t const half = c.head_size() / 2;
  rope_tables t{row_matrix(L, half), row_matrix(L, half)};
  for (index_t i = 0; i < half; ++i) {
    double const freq = std::pow(c.rope_theta, -double(2 * i) / double(c.head_size()));
    for (index_t p = 0; p < L; ++p) {
      t.cos(p, i) = float(std::cos(double(p) * freq));
      t.sin(p, i) = float(std::sin(double(p) * freq));
    }
  }
  return t;
}

/// Rotates the pairs (2i, 2i+1) of every head of x, (sequences * L, heads * head_size), in place.
inline void apply_rope(row_map x, rope_tables const& t, index_t L, index_t head_size) {
  index_t const half = head_size / 2, heads = x.cols() / head_size;
  for (index_t r = 0; r < x.rows(); ++r) {
    index_t const pos = r % L;
    float* row = x.data() + r * x.cols();
    for (index_t h = 0; h < heads; ++h) {
      float* v = row + h * head_size;
      for (index_t i = 0; i < half; ++i) {
        float const c = t.cos(pos, i), s = t.sin(pos, i);
        float const a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * c - b * s;
        v[2 * i + 1] = a * s + b * c;
      }
    }
  }
}

/// Causal softmax attention of one (sequence, query head): writes probs (L, L) and out (L, head_size).
/// Query rows go in blocks of 64 that only see keys up to the block's last row, which skips about half of the
/// masked score and PV products.
inline void head_attention(const_row_map q, const_row_map k, const_row_map v, index_t row0, index_t qcol,
                           index_t kcol, index_t L, index_t hs, float* probs, row_map out) {
  constexpr index_t block = 64;
  Eigen::Map<row_matrix> P(probs, L, L);
  float const scale = 1.f / std::sqrt(float(hs));
  for (index_t i0 = 0; i0 < L; i0 += block) {
    index_t const rows = std::min(block, L - i0), keys = i0 + rows;
    auto Pb = P.block(i0, 0, rows, keys);
    Pb.noalias() = q.block(row0 + i0, qcol, rows, hs) * k.block(row0, kcol, keys, hs).transpose();
    for (index_t r = 0; r < rows; ++r) {
      index_t const i = i0 + r;
      // Causal softmax of row i over keys 0..i (Eigen's vectorised exp); scale > 0, so the max commutes with it.
      auto seg = P.row(i).head(i + 1).array();
      float const mx = seg.maxCoeff();
      seg = ((seg - mx) * scale).exp();
      seg *= 1.f / seg.sum();
      P.row(i).tail(L - i - 1).setZero();
    }
    out.block(row0 + i0, qcol, rows, hs).noalias() = Pb * v.block(row0, kcol, keys, hs);
  }
}

inline void call_linear(forward_hooks const& hooks, int layer, linear_id l, index_t S, index_t L, row_map x) {
  if (!hooks.linear_input) return;
  hooks.linear_input(linear_site{layer, l, S, L}, rsq::matrix_view<const float>(x.data(), x.rows(), x.cols()));
}

inline void call_transform(input_transform const& f, row_map x, char const* which) {
  if (!f) return;
  f(rsq::matrix_view<float>(x.data(), x.rows(), x.cols()));
  for (index_t i = 0; i < x.size(); ++i)
    RSQ_EXPECTS(std::isfinite(x.data()[i]), "forward_layer: the ", which,
                " input transform produced a non-finite value at element ", i);
}

}  // namespace detail

/// The token embeddings of @p tokens, (sequences, L) ids, as (sequences, L, dim).
/// @throws rsq::invalid_argument for an empty batch or an id outside [0, vocab_size).
[[nodiscard]] inline activations embed(llama_model const& m, rsq::matrix_view<const std::int32_t> tokens) {
  RSQ_EXPECTS(tokens.rows() > 0 && tokens.cols() > 0, "embed: tokens must be a non-empty (sequences x L) array, got ",
              rsq::detail::shape_string(tokens));
  index_t const V = index_t(m.token_embedding.shape()[0]), D = index_t(m.token_embedding.shape()[1]);
  RSQ_EXPECTS(V == m.config.vocab_size && D == m.config.dim, "embed: token_embedding must be (", m.config.vocab_size,
              " x ", m.config.dim, "), got ", rsq::detail::shape_string(rsq::view(m.token_embedding)));
  activations x(activations::shape_type{std::size_t(tokens.rows()), std::size_t(tokens.cols()), std::size_t(D)});
  for (index_t s = 0; s < tokens.rows(); ++s)
    for (index_t t = 0; t < tokens.cols(); ++t) {
      std::int32_t const id = tokens(s, t);
      RSQ_EXPECTS(id >= 0 && index_t(id) < V, "embed: token id ", id, " at (", s, ", ", t,
                  ") is outside the vocabulary [0, ", V, ")");
      std::copy_n(m.token_embedding.data() + index_t(id) * D, D, x.data() + (s * tokens.cols() + t) * D);
    }
  return x;
}

/// One decoder layer on @p x, (sequences, L, dim): returns the layer's output (sequences, L, dim) and calls the
/// hooks with @p layer_index as the layer. Each sequence is independent and starts at position 0.
/// @throws rsq::invalid_argument if shapes do not match the config, L exceeds config.seq_len, or x has NaN/Inf.
[[nodiscard]] inline activations forward_layer(llama_config const& c, decoder_layer const& layer, int layer_index,
                                               rsq::batch_view<const float> x, forward_hooks const& hooks = {}) {
  validate(c);
  validate(c, layer, layer_index);
  index_t const S = x.extent(0), L = x.extent(1), D = c.dim;
  RSQ_EXPECTS(S > 0 && L > 0 && x.extent(2) == D, "forward_layer: x must be (sequences x L x ", D, ") with S, L > 0, got ",
              rsq::detail::shape_string(x));
  RSQ_EXPECTS(L <= c.seq_len, "forward_layer: sequence length ", L, " exceeds the model's seq_len ", c.seq_len);
  index_t const T = S * L, H = c.n_heads, hs = c.head_size(), KV = c.kv_dim(), F = c.hidden_dim,
                group = c.kv_group();

  activations out(activations::shape_type{std::size_t(S), std::size_t(L), std::size_t(D)});
  detail::row_map X(out.data(), T, D);  // (tokens, dim) the residual stream
  for (index_t s = 0; s < S; ++s)
    for (index_t t = 0; t < L; ++t)
      for (index_t j = 0; j < D; ++j) {
        float const v = x(s, t, j);
        RSQ_EXPECTS(std::isfinite(v), "forward_layer: x has a non-finite value (", v, ") at (", s, ", ", t, ", ", j,
                    ")");
        X(s * L + t, j) = v;
      }

  // Attention block.
  detail::row_matrix n(T, D);  // (tokens, dim)
  detail::row_map N(n.data(), T, D);
  detail::rms_norm(X, layer.rms_att, c.norm_eps, N);
  detail::call_linear(hooks, layer_index, linear_id::wq, S, L, N);
  detail::call_linear(hooks, layer_index, linear_id::wk, S, L, N);
  detail::call_linear(hooks, layer_index, linear_id::wv, S, L, N);
  detail::row_matrix q(T, D), k(T, KV), v(T, KV);  // (tokens, dim), (tokens, kv_dim) x2
  q.noalias() = n * detail::map(layer.wq).transpose();
  k.noalias() = n * detail::map(layer.wk).transpose();
  v.noalias() = n * detail::map(layer.wv).transpose();
  auto const rope = detail::make_rope(c, L);
  detail::apply_rope(detail::row_map(q.data(), T, D), rope, L, hs);
  detail::apply_rope(detail::row_map(k.data(), T, KV), rope, L, hs);
  if (hooks.rope_qk)
    for (index_t s = 0; s < S; ++s)
      hooks.rope_qk(attention_site{layer_index, s},
                    rsq::batch_view<const float>(q.data() + s * L * D, {H, L, hs}, {hs, D, 1}),
                    rsq::batch_view<const float>(k.data() + s * L * KV, {c.n_kv_heads, L, hs}, {hs, KV, 1}));

  detail::row_matrix att(T, D);  // (tokens, dim) concatenated head outputs
  detail::const_row_map Qm(q.data(), T, D), Km(k.data(), T, KV), Vm(v.data(), T, KV);
  detail::row_map A(att.data(), T, D);
  if (hooks.attention_probs) {
    // The hook needs every head of a sequence at once: (heads, L, L) per sequence.
    std::vector<float> probs(std::size_t(H * L * L));
    for (index_t s = 0; s < S; ++s) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
      for (index_t h = 0; h < H; ++h)
        detail::head_attention(Qm, Km, Vm, s * L, h * hs, (h / group) * hs, L, hs, probs.data() + h * L * L, A);
      hooks.attention_probs(attention_site{layer_index, s}, rsq::batch_view<const float>(probs.data(), {H, L, L}));
    }
  } else {
#if defined(_OPENMP)
#pragma omp parallel
#endif
    {
      std::vector<float> probs(std::size_t(L * L));  // per-thread scratch
#if defined(_OPENMP)
#pragma omp for schedule(dynamic)
#endif
      for (index_t sh = 0; sh < S * H; ++sh) {
        index_t const s = sh / H, h = sh % H;
        detail::head_attention(Qm, Km, Vm, s * L, h * hs, (h / group) * hs, L, hs, probs.data(), A);
      }
    }
  }
  detail::call_transform(layer.wo_input_transform, A, "wo");
  detail::call_linear(hooks, layer_index, linear_id::wo, S, L, A);
  X.noalias() += att * detail::map(layer.wo).transpose();

  // FFN block.
  detail::rms_norm(X, layer.rms_ffn, c.norm_eps, N);
  detail::call_linear(hooks, layer_index, linear_id::w1, S, L, N);
  detail::call_linear(hooks, layer_index, linear_id::w3, S, L, N);
  detail::row_matrix gate(T, F), up(T, F);  // (tokens, hidden) x2
  gate.noalias() = n * detail::map(layer.w1).transpose();
  up.noalias() = n * detail::map(layer.w3).transpose();
  // SwiGLU: silu(gate) ⊙ up, with silu(g) = g / (1 + exp(-g)).
  gate = (gate.array() / (1.f + (-gate.array()).exp()) * up.array()).matrix();
  detail::row_map G(gate.data(), T, F);
  detail::call_transform(layer.w2_input_transform, G, "w2");
  detail::call_linear(hooks, layer_index, linear_id::w2, S, L, G);
  X.noalias() += gate * detail::map(layer.w2).transpose();
  return out;
}

/// Final RMSNorm and classifier on hidden states @p h, (sequences, L, dim): logits (sequences, L, vocab_size).
[[nodiscard]] inline activations final_logits(llama_model const& m, rsq::batch_view<const float> h) {
  auto const& c = m.config;
  RSQ_EXPECTS(h.extent(0) > 0 && h.extent(1) > 0 && h.extent(2) == c.dim,
              "final_logits: h must be (sequences x L x ", c.dim, "), got ", rsq::detail::shape_string(h));
  RSQ_EXPECTS(index_t(m.rms_final.size()) == c.dim, "final_logits: rms_final must have ", c.dim, " elements, got ",
              m.rms_final.size());
  RSQ_EXPECTS(index_t(m.classifier.shape()[0]) == c.vocab_size && index_t(m.classifier.shape()[1]) == c.dim,
              "final_logits: classifier must be (", c.vocab_size, " x ", c.dim, "), got ",
              rsq::detail::shape_string(rsq::view(m.classifier)));
  index_t const S = h.extent(0), L = h.extent(1), D = c.dim, V = c.vocab_size;
  detail::row_matrix x(S * L, D);  // (tokens, dim)
  for (index_t s = 0; s < S; ++s)
    for (index_t t = 0; t < L; ++t)
      for (index_t j = 0; j < D; ++j) x(s * L + t, j) = h(s, t, j);
  detail::row_matrix n(S * L, D);
  detail::rms_norm(detail::const_row_map(x.data(), S * L, D), m.rms_final, c.norm_eps, detail::row_map(n.data(), S * L, D));
  activations logits(activations::shape_type{std::size_t(S), std::size_t(L), std::size_t(V)});
  detail::row_map(logits.data(), S * L, V).noalias() = n * detail::map(m.classifier).transpose();
  return logits;
}

/// Next-token loss of hidden states @p h, (sequences, L, dim), against @p tokens, (sequences, L): position t
/// predicts tokens(s, t + 1). The classifier runs one sequence at a time, so (L, vocab) is the largest buffer.
[[nodiscard]] inline loss_result hidden_loss(llama_model const& m, rsq::batch_view<const float> h,
                                             rsq::matrix_view<const std::int32_t> tokens) {
  RSQ_EXPECTS(tokens.rows() == h.extent(0) && tokens.cols() == h.extent(1), "hidden_loss: tokens ",
              rsq::detail::shape_string(tokens), " do not match the hidden states ", rsq::detail::shape_string(h));
  RSQ_EXPECTS(tokens.cols() >= 2, "hidden_loss: sequences need at least 2 tokens, got ", tokens.cols());
  loss_result r;
  index_t const S = h.extent(0), L = h.extent(1), V = m.config.vocab_size;
  for (index_t s = 0; s < S; ++s) {
    auto const logits = final_logits(m, rsq::batch_view<const float>(h.data() + s * h.stride(0), {1, L, h.extent(2)},
                                                                     {h.stride(0), h.stride(1), h.stride(2)}));
    for (index_t t = 0; t + 1 < L; ++t) {
      std::int32_t const target = tokens(s, t + 1);
      RSQ_EXPECTS(target >= 0 && target < V, "hidden_loss: token id ", target, " at (", s, ", ", t + 1,
                  ") is outside the vocabulary [0, ", V, ")");
      // log-sum-exp with the max subtracted (float, vectorised), accumulated in double.
      Eigen::Map<const Eigen::ArrayXf> z(logits.data() + t * V, V);
      float const mx = z.maxCoeff();
      double const sum = double((z - mx).exp().sum());
      r.sum += double(mx) + std::log(sum) - double(z(target));
      ++r.count;
    }
  }
  r.mean = r.sum / double(r.count);
  r.perplexity = std::exp(r.mean);
  return r;
}

/// Hidden states after the last decoder layer, (sequences, L, dim), for @p tokens (sequences, L).
[[nodiscard]] inline activations forward_hidden(llama_model const& m, rsq::matrix_view<const std::int32_t> tokens,
                                                forward_hooks const& hooks = {}) {
  validate(m);
  activations x = embed(m, tokens);
  for (std::size_t l = 0; l < m.layers.size(); ++l)
    x = forward_layer(m.config, m.layers[l], int(l), rsq::batch_view<const float>(x), hooks);
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
