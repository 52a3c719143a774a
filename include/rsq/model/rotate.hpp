// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Whole-model rotation of a Llama-architecture model as QuaRot and RSQ do it (spec §2), function-preserving in
/// exact arithmetic, on any backend:
///  1. **norm fusion** (§2.1): the RMSNorm gains move into the linears that read the normalised stream
///     (q/k/v ← W·diag(γ_att), w1/w3 ← W·diag(γ_ffn), classifier ← W·diag(γ_final)); the gains become ones;
///  2. optional **embedding centring** (§2.1, off by default): E ← E − mean over the hidden axis. The reference does
///     it for every model, but for RMSNorm models it is *not* function-preserving (it is a LayerNorm/SliceGPT
///     legacy), so rsq leaves it off unless asked;
///  3. **residual rotation** Q (§2.2), randomized Hadamard or Haar random orthogonal: E ← E·Q, q/k/v/w1/w3/classifier
///     ← W·Q, o/w2 ← Qᵀ·W. RMSNorm without gains commutes with Q, so the hidden states become h·Q;
///  4. **fixed Hadamards** (§2.3): w2 gets the offline `had_in` (W2 ← W2·Hᵀ, H = M_I/√I) and an *online* Hadamard
///     H on its input; wv gets H_{h_d}/√h_d on each head's output features, so every head's attention output is
///     multiplied by it, and wo gets the matching offline fold plus an online Hadamard across heads,
///     (M_{n_h}/√n_h ⊗ I_{h_d}) (the reference's "partial" online transform). The online parts are the model's
///     `online` transforms, which the forward pass applies on every backend (the Hessians of w2 and wo are built from
///     the transformed inputs, as in the reference).
/// Every weight is rotated in float64 and rounded to float once. plan_rotation() plans everything up front (an
/// unsupported size fails before any weight changes); rotate_layer() and rotate_embeddings() rotate a layer's or the
/// embeddings' weights where they are (the model pipeline rotates each layer on its backend as it gets there);
/// rotate_model() does the whole host model.
///
/// `fold_online_transforms` multiplies the online transforms back into wo and w2, which gives a plain model (no
/// online transforms, still rotated) that an unmodified llama2c runner computes.

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "rsq/backend/memory.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/linalg/elementwise.hpp"
#include "rsq/model/llama.hpp"
#include "rsq/rotation/any_rotation.hpp"
#include "rsq/rotation/hadamard.hpp"
#include "rsq/rotation/random_orthogonal.hpp"
#include "rsq/rotation/randomized_hadamard.hpp"

namespace rsq::model {

/// The residual-stream rotation Q (spec §2.2 `--rotate_mode`).
enum class residual_rotation {
  randomized_hadamard,  ///< Q = D·M_dᵀ/√d with seeded random signs D (the reference default, "hadamard")
  random_orthogonal,    ///< Haar-random Q from the QR of a seeded Gaussian matrix ("random")
};

/// "hadamard" or "random" (the reference's names).
[[nodiscard]] constexpr std::string_view to_string(residual_rotation r) noexcept {
  return r == residual_rotation::randomized_hadamard ? "hadamard" : "random";
}

struct learned_rotation;  // model/learned_rotation.hpp

/// Options of rotate_model().
struct rotate_options {
  residual_rotation kind = residual_rotation::randomized_hadamard;
  std::uint64_t seed = 0;          ///< seed of Q (SplitMix64 streams of rsq/core/random.hpp)
  bool center_embeddings = false;  ///< §2.1 embedding centring: NOT function-preserving for RMSNorm models
  /// Construction of every Hadamard (Q, w2's H_I, the head Hadamards). Where an order has no Hadamard construction
  /// (6 heads, as lm16m; 14, as Qwen2.5-0.5B; the reference code asserts there) the block-diagonal fallback gives an
  /// orthogonal substitute (Hadamards of the largest supported sizes on the diagonal: 6 = 4 + 2), so that the rotation
  /// still preserves the function; substitutes() names each one. hadamard_fallback::none refuses such a model.
  rotation::hadamard_options hadamard{.fallback = rotation::hadamard_fallback::block_diagonal};
  /// false: only the rotations that fold entirely into the weights (norm fusion, Q, the per-head V/O Hadamard), no
  /// w2 Hadamard and no Hadamard across heads: the result is a plain model that any engine runs, at some cost in
  /// quantization error (the w2 input keeps its outliers; docs/results.md).
  bool online_hadamards = true;
  /// A learned R1/R2 (model/learned_rotation.hpp, e.g. from learn_rotation()) that quantize_model() rotates by
  /// instead of Q and the per-head Hadamard; the online Hadamards stay. Empty: the fixed rotation above.
  std::shared_ptr<learned_rotation const> learned = nullptr;
};

/// What rotate_model() did, so that an engine can run the rotated model (written into the packed manifest).
struct rotation_record {
  residual_rotation kind = residual_rotation::randomized_hadamard;
  /// Q of the residual stream (n = dim).
  rotation::rotation_descriptor residual;
  /// H = M_I/√I: the online transform of w2's input, each row x ← H x (I = hidden_dim); W2 holds W2·Hᵀ.
  rotation::rotation_descriptor down_online;
  /// H = M_{n_h}/√n_h applied across the heads of wo's input: with x (n_h, h_d) per token, x ← H x.
  rotation::rotation_descriptor heads_online;
  /// I ⊗ H_{h_d}/√h_d folded into wv's output features (n = kv_dim), offline only.
  rotation::rotation_descriptor value_heads;
  index_t n_heads = 0;
  index_t head_dim = 0;
  bool centered_embeddings = false;
  /// false (rotate_options::online_hadamards off): no online transforms; down_online and heads_online are unused.
  bool online = true;
};

/// One line per Hadamard of @p r that is a block-diagonal substitute (an order without a Hadamard construction), e.g.
/// "the online Hadamard across the 6 heads: no Hadamard of order 6; block_diagonal[H4,H2] (orthogonal) instead";
/// empty when every Hadamard is exact. For the tools' output and for research code that must know.
[[nodiscard]] inline std::vector<std::string> substitutes(rotation_record const& r) {
  std::vector<std::string> out;
  auto const note = [&](index_t n, rotation::hadamard_options const& o, std::string const& what) {
    auto const plan = rotation::plan_hadamard(n, o);
    if (plan.kind == rotation::hadamard_kind::block_diagonal)
      out.push_back(what + ": no Hadamard of order " + std::to_string(n) + "; " + plan.to_string() +
                    " (orthogonal) instead");
  };
  if (r.kind == residual_rotation::randomized_hadamard) note(r.residual.n, r.residual.hadamard, "the residual rotation");
  if (r.online) {
    note(r.down_online.n, r.down_online.hadamard, "the online Hadamard of down_proj's input");
    note(r.heads_online.n, r.heads_online.hadamard, "the online Hadamard across the " + std::to_string(r.n_heads) + " heads");
  }
  note(r.head_dim, r.value_heads.hadamard, "the per-head V/O Hadamard");
  return out;
}

/// Everything a model's rotation needs, planned up front from the config (rotate_options): the residual Q, the fixed
/// Hadamards and the online transforms.
struct rotation_plan {
  rotation_record record;
  rotation::any_rotation residual;            ///< Q (n = dim)
  rotation::hadamard_rotation down;           ///< W2 ← W2·Hᵀ row by row: had_in of spec §2.3 (n = hidden_dim)
  rotation::hadamard_rotation value_heads;    ///< I ⊗ H_{h_d}ᵀ/√h_d, folded into wv's output features
  rotation::hadamard_rotation output_heads;   ///< I ⊗ H_{h_d}ᵀ/√h_d, folded into wo's input features
  online_transforms online;                   ///< the online Hadamards the rotated model runs with
};

/// Plans the rotation of a model with config @p c (nothing is changed yet).
/// @throws rsq::invalid_argument for a hidden_dim / head count / head size without a Hadamard construction (see
///         rsq/rotation/hadamard_plan.hpp)
[[nodiscard]] inline rotation_plan plan_rotation(llama_config const& c, rotate_options const& opt = {}) {
  index_t const d = c.dim, hd = c.head_size();
  rotation::any_rotation q = opt.kind == residual_rotation::randomized_hadamard
                                 ? rotation::any_rotation(rotation::randomized_hadamard(d, opt.seed, opt.hadamard))
                                 : rotation::any_rotation(rotation::random_orthogonal(d, opt.seed));
  auto down = rotation::exact_hadamard(c.hidden_dim, opt.hadamard);
  auto const heads = rotation::exact_hadamard(c.n_heads, opt.hadamard);
  auto v_heads = rotation::per_head_hadamard(c.n_kv_heads, hd, opt.hadamard);
  auto o_heads = rotation::per_head_hadamard(c.n_heads, hd, opt.hadamard);
  online_transforms online;
  if (opt.online_hadamards)
    online = {std::make_shared<rotation::hadamard const>(heads.transform()),
              std::make_shared<rotation::hadamard const>(down.transform())};
  rotation_record rec{opt.kind, rotation::descriptor_of(q), down.descriptor(), heads.descriptor(),
                      v_heads.descriptor(), c.n_heads, hd, opt.center_embeddings, opt.online_hadamards};
  return {std::move(rec), std::move(q), std::move(down), std::move(v_heads), std::move(o_heads), std::move(online)};
}

/// The writable weights of one decoder layer, in host memory or a backend's memory.
struct layer_weights_mut {
  vector_view<float> rms_att, rms_ffn;
  matrix_view<float> wq, wk, wv, wo, w1, w2, w3;
  /// Biases (decoder_layer::bias); empty where the config has none.
  vector_view<float> bq = {}, bk = {}, bv = {}, bo = {}, b1 = {}, b2 = {}, b3 = {};
};

/// Writable views of a host layer.
[[nodiscard]] inline layer_weights_mut writable_weights_of(decoder_layer& l) {
  auto const bias = [](rsq::vector<float>& b) {
    return b.size() ? vector_view<float>(b.data(), index_t(b.size())) : vector_view<float>{};
  };
  return {rsq::view(l.rms_att), rsq::view(l.rms_ffn), rsq::view(l.wq), rsq::view(l.wk), rsq::view(l.wv),
          rsq::view(l.wo),      rsq::view(l.w1),      rsq::view(l.w2), rsq::view(l.w3), bias(l.bq),
          bias(l.bk),           bias(l.bv),           bias(l.bo),      bias(l.b1),      bias(l.b2),
          bias(l.b3)};
}

namespace pipeline_detail {

/// W ← f(W) computed in float64: W (float, @p be's memory) widened, transformed by @p f, rounded back once.
template <backend_tag B, class F>
void in_double(B const& be, matrix_view<float> w, F&& f) {
  auto d = backend::make_matrix<double>(be, w.rows(), w.cols());
  linalg::convert(be, matrix_view<const float>(w), rsq::view(d));
  f(rsq::view(d));
  linalg::convert(be, matrix_view<const double>(rsq::view(d)), w);
}

/// Every gain 1 (RMSNorm without gains after the fusion).
template <backend_tag B>
void set_ones(B const& be, vector_view<float> g) {
  std::vector<float> ones(static_cast<std::size_t>(g.extent(0)), 1.f);
  backend::copy(be, g.data(), ones.data(), g.extent(0));
}

/// A bias as a (n, 1) matrix: a column that the transforms of a weight's output features apply to as to W.
[[nodiscard]] inline matrix_view<float> as_column(vector_view<float> b) {
  return matrix_view<float>(b.data(), {b.extent(0), 1}, {b.stride(0), 1});
}

/// Each row of @p w (rows, heads·head_dim), seen as (heads, head_dim), ← (H ⊗ I) row: the transform across heads.
template <backend_tag B, class T>
void across_heads(B const& be, rotation::hadamard const& h, matrix_view<T> w, index_t head_dim) {
  h.apply(be, tensor_view<T, 3>(w.data(), {w.rows(), head_dim, h.size()}, {w.stride(0), w.stride(1), head_dim * w.stride(1)}));
}

}  // namespace pipeline_detail

/// Rotates one decoder layer's weights @p w (float, in @p be's memory) as @p p plans it (file comment, steps 1, 3, 4),
/// in float64; the gains become ones.
template <backend_tag B>
void rotate_layer(B const& be, rotation_plan const& p, llama_config const& c, layer_weights_mut const& w) {
  using pipeline_detail::in_double;
  auto const right = [&](matrix_view<double> m) { std::visit([&](auto const& r) { r.apply_right(be, m); }, p.residual); };
  auto const left_t = [&](matrix_view<double> m) {
    std::visit([&](auto const& r) { r.apply_left_transpose(be, m); }, p.residual);
  };
  auto const fused = [&](vector_view<float> gains) {
    return [&, gains](matrix_view<double> m) {
      linalg::scale_columns(be, m, vector_view<const float>(gains));
      right(m);
    };
  };
  in_double(be, w.wq, fused(w.rms_att));
  in_double(be, w.wk, fused(w.rms_att));
  in_double(be, w.wv, [&](matrix_view<double> m) {
    fused(w.rms_att)(m);
    p.value_heads.apply_left_transpose(be, m);  // each head's output features ← H_hd/√hd · (...)
  });
  // y = Wx + b: a transform of y's features applies to b as to W's rows (v: the per-head Hadamard; wo and w2 write
  // the residual stream: Qᵀ). w1 and w3's outputs are not rotated, nor are their biases.
  if (w.bv.data())
    in_double(be, pipeline_detail::as_column(w.bv), [&](matrix_view<double> m) { p.value_heads.apply_left_transpose(be, m); });
  if (w.bo.data()) in_double(be, pipeline_detail::as_column(w.bo), left_t);
  if (w.b2.data()) in_double(be, pipeline_detail::as_column(w.b2), left_t);
  in_double(be, w.w1, fused(w.rms_ffn));
  in_double(be, w.w3, fused(w.rms_ffn));
  in_double(be, w.wo, [&](matrix_view<double> m) {
    left_t(m);
    // wo ← wo·Aᵀ with A = (M_nh/√nh ⊗ I)(I ⊗ H_hd/√hd): each row w ← A w.
    p.output_heads.apply_right(be, m);
    if (p.online.heads) pipeline_detail::across_heads(be, *p.online.heads, m, c.head_size());
  });
  in_double(be, w.w2, [&](matrix_view<double> m) {
    left_t(m);
    if (p.online.down) p.down.apply_right(be, m);  // had_in: each row w ← H w, undone by the online H
  });
  pipeline_detail::set_ones(be, w.rms_att);
  pipeline_detail::set_ones(be, w.rms_ffn);
}

/// Rotates the token embedding (E ← E·Q) and the classifier (W ← W·diag(γ_final)·Q) in @p be's memory; the final
/// gains become ones.
template <backend_tag B>
void rotate_embeddings(B const& be, rotation_plan const& p, matrix_view<float> embedding,
                       matrix_view<float> classifier, vector_view<float> rms_final) {
  auto const right = [&](matrix_view<double> m) { std::visit([&](auto const& r) { r.apply_right(be, m); }, p.residual); };
  pipeline_detail::in_double(be, embedding, right);
  pipeline_detail::in_double(be, classifier, [&](matrix_view<double> m) {
    linalg::scale_columns(be, m, vector_view<const float>(rms_final));
    right(m);
  });
  pipeline_detail::set_ones(be, rms_final);
}

/// Fuses the RMSNorm gains into the linears that follow them (spec §2.1; in float64): wq, wk, wv ← W·diag(rms_att),
/// w1, w3 ← W·diag(rms_ffn), classifier ← W·diag(rms_final); every gain becomes 1. Function-preserving.
/// @throws rsq::invalid_argument for a malformed model or NaN/Inf weights.
inline void fuse_norms(llama_model& m) {
  validate(m, /*check_finite=*/true);
  backend::cpu_eigen const be{};
  auto const scaled = [&](vector_view<float> g) {
    return [g, &be](matrix_view<double> w) { linalg::scale_columns(be, w, vector_view<const float>(g)); };
  };
  for (auto& L : m.layers) {
    for (linear_id id : {linear_id::wq, linear_id::wk, linear_id::wv})
      pipeline_detail::in_double(be, rsq::view(L.weight(id)), scaled(rsq::view(L.rms_att)));
    for (linear_id id : {linear_id::w1, linear_id::w3})
      pipeline_detail::in_double(be, rsq::view(L.weight(id)), scaled(rsq::view(L.rms_ffn)));
    pipeline_detail::set_ones(be, rsq::view(L.rms_att));
    pipeline_detail::set_ones(be, rsq::view(L.rms_ffn));
  }
  pipeline_detail::in_double(be, rsq::view(m.classifier), scaled(rsq::view(m.rms_final)));
  pipeline_detail::set_ones(be, rsq::view(m.rms_final));
}

/// E ← E − mean over the hidden axis, per token (spec §2.1). NOT function-preserving for RMSNorm models: the model
/// computes different logits afterwards. Off by default in rotate_model().
inline void center_embeddings(llama_model& m) {
  validate(m);
  std::size_t const V = m.token_embedding.shape()[0], D = m.token_embedding.shape()[1];
  for (std::size_t i = 0; i < V; ++i) {
    double mean = 0;
    for (std::size_t j = 0; j < D; ++j) mean += double(m.token_embedding(i, j));
    mean /= double(D);
    for (std::size_t j = 0; j < D; ++j) m.token_embedding(i, j) = float(double(m.token_embedding(i, j)) - mean);
  }
}

/// Sets the online Hadamards that @p r describes on @p m (the model's `online` transforms).
inline void attach_online_transforms(llama_model& m, rotation_record const& r) {
  if (!r.online) {
    m.online = {};
    return;
  }
  auto const& c = m.config;
  RSQ_EXPECTS(r.down_online.n == c.hidden_dim && r.heads_online.n == c.n_heads && r.head_dim == c.head_size(),
              "attach_online_transforms: the rotation record does not match the model (hidden ", c.hidden_dim,
              ", heads ", c.n_heads, ", head size ", c.head_size(), ")");
  auto down = std::make_shared<rotation::hadamard const>(c.hidden_dim, r.down_online.hadamard);
  auto heads = std::make_shared<rotation::hadamard const>(c.n_heads, r.heads_online.hadamard);
  RSQ_EXPECTS(down->plan().to_string() == r.down_online.construction &&
                  heads->plan().to_string() == r.heads_online.construction,
              "attach_online_transforms: the recorded Hadamard constructions differ from what this rsq builds");
  m.online = {std::move(heads), std::move(down)};
}

/// Throws unless @p m is a plain model (no online transforms: not rotated yet).
inline void expect_plain(llama_model const& m, char const* who) {
  RSQ_EXPECTS(!m.online.any(), who, ": the model already has online transforms (it is already rotated)");
}

/// Rotates @p m in place (see the file comment: norm fusion, optional embedding centring, residual rotation Q, the
/// fixed Hadamards, the online Hadamards set as the model's online transforms). The rotated model computes the same
/// function as @p m (to float rounding) unless `center_embeddings` is set.
/// @returns what was done, for the manifest and for attach_online_transforms()
/// @throws rsq::invalid_argument for a malformed or already rotated model, or a hidden_dim / head count / head size
///         without a Hadamard construction (see rsq/rotation/hadamard_plan.hpp)
inline rotation_record rotate_model(llama_model& m, rotate_options const& opt = {}) {
  validate(m, /*check_finite=*/true);
  expect_plain(m, "rotate_model");
  RSQ_EXPECTS(opt.learned == nullptr, "rotate_model: a learned rotation is applied by apply_learned_rotation() "
              "(model/learned_rotation.hpp) before rotate_model(), or by quantize_model()");
  auto const p = plan_rotation(m.config, opt);  // an unsupported size fails here, with the model untouched
  backend::cpu_eigen const be{};
  if (opt.center_embeddings) center_embeddings(m);
  rotate_embeddings(be, p, rsq::view(m.token_embedding), rsq::view(m.classifier), rsq::view(m.rms_final));
  for (auto& L : m.layers) rotate_layer(be, p, m.config, writable_weights_of(L));
  m.online = p.online;
  return p.record;
}

/// Multiplies the online transforms back into every layer's wo and w2 (in float64) and removes them: the result is
/// a plain model (rotated weights, gains of ones) that computes the same function with an unmodified forward pass.
/// With x ← F x applied before W, W·F x = (W·F) x: each row w of W becomes Fᵀ w.
inline void fold_online_transforms(llama_model& m) {
  backend::cpu_eigen const be{};
  for (auto& L : m.layers) {
    if (m.online.heads)
      pipeline_detail::in_double(be, rsq::view(L.wo), [&](matrix_view<double> w) {
        index_t const hd = m.config.head_size();
        m.online.heads->apply_transpose(
            be, tensor_view<double, 3>(w.data(), {w.rows(), hd, m.online.heads->size()}, {w.stride(0), 1, hd}));
      });
    if (m.online.down)
      pipeline_detail::in_double(be, rsq::view(L.w2), [&](matrix_view<double> w) { m.online.down->apply_transpose(be, w); });
  }
  m.online = {};
}

}  // namespace rsq::model
