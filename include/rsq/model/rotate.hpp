// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Whole-model rotation of a Llama-architecture model as QuaRot and RSQ do it (spec §2), function-preserving in
/// exact arithmetic:
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
///     (M_{n_h}/√n_h ⊗ I_{h_d}) (the reference's "partial" online transform). The online parts are attached to the
///     model as `decoder_layer::w2_input_transform` and `wo_input_transform`, so the forward pass and its hooks see
///     the transformed inputs (the Hessians of w2 and wo are built from them, as in the reference).
/// Everything is computed in float64 and cast to float once.
///
/// `fold_online_transforms` multiplies the online transforms back into wo and w2, which gives a plain model (no
/// input transforms, still rotated) that an unmodified llama2c runner computes.

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include <Eigen/Core>

#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
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

/// Options of rotate_model().
struct rotate_options {
  residual_rotation kind = residual_rotation::randomized_hadamard;
  std::uint64_t seed = 0;          ///< seed of Q (SplitMix64 streams of rsq/core/random.hpp)
  bool center_embeddings = false;  ///< §2.1 embedding centring: NOT function-preserving for RMSNorm models
  rotation::hadamard_options hadamard{};  ///< construction of every Hadamard (Q, w2's H_I, the head Hadamards)
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
};

/// The online transform of wo's input in a rotated model: each token's (n_heads, head_dim) block x ← H x with
/// H = M_{n_h}/√n_h (spec §2.3 "partial" online Hadamard; mixes heads, not features within a head).
class heads_online_hadamard {
 public:
  heads_online_hadamard(index_t heads, index_t head_dim, rotation::hadamard_options const& opt = {})
      : h_(std::make_shared<rotation::hadamard const>(heads, opt)), heads_(heads), head_dim_(head_dim) {
    RSQ_EXPECTS(head_dim > 0, "heads_online_hadamard: head_dim must be positive, got ", head_dim);
  }

  /// x (tokens, heads · head_dim), in place.
  template <std::floating_point T>
  void operator()(matrix_view<T> x) const {
    RSQ_EXPECTS(x.cols() == heads_ * head_dim_, "heads_online_hadamard: the input has ", x.cols(),
                " features, expected heads x head_dim = ", heads_ * head_dim_);
    index_t const n = x.rows();
    if (n == 0) return;
    // Gather to (tokens · head_dim, heads) so that every transform runs on a contiguous row.
    std::vector<T> buf(std::size_t(n * heads_ * head_dim_));
    for (index_t t = 0; t < n; ++t)
      for (index_t h = 0; h < heads_; ++h)
        for (index_t j = 0; j < head_dim_; ++j) buf[std::size_t((t * head_dim_ + j) * heads_ + h)] = x(t, h * head_dim_ + j);
    h_->apply(matrix_view<T>(buf.data(), n * head_dim_, heads_));
    for (index_t t = 0; t < n; ++t)
      for (index_t h = 0; h < heads_; ++h)
        for (index_t j = 0; j < head_dim_; ++j) x(t, h * head_dim_ + j) = buf[std::size_t((t * head_dim_ + j) * heads_ + h)];
  }

  [[nodiscard]] rotation::hadamard const& transform() const noexcept { return *h_; }

 private:
  std::shared_ptr<rotation::hadamard const> h_;
  index_t heads_;
  index_t head_dim_;
};

/// The online transform of w2's input in a rotated model: each row x ← H x with H = M_I/√I (spec §2.3).
class down_online_hadamard {
 public:
  explicit down_online_hadamard(index_t hidden, rotation::hadamard_options const& opt = {})
      : h_(std::make_shared<rotation::hadamard const>(hidden, opt)) {}

  /// x (tokens, hidden), in place.
  template <std::floating_point T>
  void operator()(matrix_view<T> x) const {
    if (x.rows() == 0) return;
    h_->apply(x);
  }

  [[nodiscard]] rotation::hadamard const& transform() const noexcept { return *h_; }

 private:
  std::shared_ptr<rotation::hadamard const> h_;
};

namespace pipeline_detail {

using dmatrix = rsq::matrix<double>;

[[nodiscard]] inline dmatrix to_double(rsq::matrix<float> const& w) {
  dmatrix d = dmatrix::from_shape(w.shape());
  std::copy(w.begin(), w.end(), d.begin());
  return d;
}

[[nodiscard]] inline rsq::matrix<float> to_float(dmatrix const& d) {
  rsq::matrix<float> w = rsq::matrix<float>::from_shape(d.shape());
  std::transform(d.begin(), d.end(), w.begin(), [](double v) { return float(v); });
  return w;
}

/// W ← W·diag(g) (columns scaled by the gains).
inline void scale_columns(dmatrix& w, rsq::vector<float> const& g) {
  std::size_t const rows = w.shape()[0], cols = w.shape()[1];
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t j = 0; j < cols; ++j) w(i, j) *= double(g(j));
}

[[nodiscard]] inline rsq::vector<float> ones(index_t n) {
  auto v = rsq::make_vector<float>(n);
  std::fill(v.begin(), v.end(), 1.f);
  return v;
}

inline void expect_plain(llama_model const& m, char const* who) {
  for (std::size_t l = 0; l < m.layers.size(); ++l)
    RSQ_EXPECTS(!m.layers[l].wo_input_transform && !m.layers[l].w2_input_transform, who, ": layer ", l,
                " already has online input transforms (the model is already rotated)");
}

}  // namespace pipeline_detail

/// Fuses the RMSNorm gains into the linears that follow them (spec §2.1; in float64): wq, wk, wv ← W·diag(rms_att),
/// w1, w3 ← W·diag(rms_ffn), classifier ← W·diag(rms_final); every gain becomes 1. Function-preserving.
/// @throws rsq::invalid_argument for a malformed model or NaN/Inf weights.
inline void fuse_norms(llama_model& m) {
  validate(m, /*check_finite=*/true);
  using namespace pipeline_detail;
  for (auto& L : m.layers) {
    for (linear_id id : {linear_id::wq, linear_id::wk, linear_id::wv, linear_id::w1, linear_id::w3}) {
      auto w = to_double(L.weight(id));
      scale_columns(w, id == linear_id::w1 || id == linear_id::w3 ? L.rms_ffn : L.rms_att);
      L.weight(id) = to_float(w);
    }
    L.rms_att = ones(m.config.dim);
    L.rms_ffn = ones(m.config.dim);
  }
  auto c = to_double(m.classifier);
  scale_columns(c, m.rms_final);
  m.classifier = to_float(c);
  m.rms_final = ones(m.config.dim);
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

/// Attaches the online Hadamards that @p r describes to every layer of @p m (wo and w2 input transforms).
inline void attach_online_transforms(llama_model& m, rotation_record const& r) {
  auto const& c = m.config;
  RSQ_EXPECTS(r.down_online.n == c.hidden_dim && r.heads_online.n == c.n_heads && r.head_dim == c.head_size(),
              "attach_online_transforms: the rotation record does not match the model (hidden ", c.hidden_dim,
              ", heads ", c.n_heads, ", head size ", c.head_size(), ")");
  down_online_hadamard const down(c.hidden_dim, r.down_online.hadamard);
  heads_online_hadamard const heads(c.n_heads, c.head_size(), r.heads_online.hadamard);
  RSQ_EXPECTS(down.transform().plan().to_string() == r.down_online.construction &&
                  heads.transform().plan().to_string() == r.heads_online.construction,
              "attach_online_transforms: the recorded Hadamard constructions differ from what this rsq builds");
  for (auto& L : m.layers) {
    L.w2_input_transform = [down](rsq::matrix_view<float> x) { down(x); };
    L.wo_input_transform = [heads](rsq::matrix_view<float> x) { heads(x); };
  }
}

/// Rotates @p m in place (see the file comment: norm fusion, optional embedding centring, residual rotation Q, the
/// fixed Hadamards with their online parts attached as input transforms). The rotated model computes the same
/// function as @p m (to float rounding) unless `center_embeddings` is set.
/// @returns what was done, for the manifest and for attach_online_transforms()
/// @throws rsq::invalid_argument for a malformed or already rotated model, or a hidden_dim / head count / head size
///         without a Hadamard construction (see rsq/rotation/hadamard_plan.hpp)
inline rotation_record rotate_model(llama_model& m, rotate_options const& opt = {}) {
  using namespace pipeline_detail;
  validate(m, /*check_finite=*/true);
  expect_plain(m, "rotate_model");
  auto const& c = m.config;
  index_t const d = c.dim, hd = c.head_size();

  // Plan everything first, so that an unsupported size leaves the model untouched.
  rotation::any_rotation q = opt.kind == residual_rotation::randomized_hadamard
                                 ? rotation::any_rotation(rotation::randomized_hadamard(d, opt.seed, opt.hadamard))
                                 : rotation::any_rotation(rotation::random_orthogonal(d, opt.seed));
  auto const down = rotation::exact_hadamard(c.hidden_dim, opt.hadamard);
  auto const heads = rotation::exact_hadamard(c.n_heads, opt.hadamard);
  auto const v_heads = rotation::per_head_hadamard(c.n_kv_heads, hd, opt.hadamard);
  auto const o_heads = rotation::per_head_hadamard(c.n_heads, hd, opt.hadamard);
  heads_online_hadamard const heads_online(c.n_heads, hd, opt.hadamard);
  down_online_hadamard const down_online(c.hidden_dim, opt.hadamard);

  rotation_record rec{opt.kind,        rotation::descriptor_of(q), down.descriptor(), heads.descriptor(),
                      v_heads.descriptor(), c.n_heads,              hd,                opt.center_embeddings};

  fuse_norms(m);
  if (opt.center_embeddings) center_embeddings(m);

  auto right = [&](dmatrix& w) { std::visit([&](auto const& r) { r.apply_right(rsq::view(w)); }, q); };
  auto left_t = [&](dmatrix& w) { std::visit([&](auto const& r) { r.apply_left_transpose(rsq::view(w)); }, q); };

  auto e = to_double(m.token_embedding);  // (vocab, dim)
  right(e);
  m.token_embedding = to_float(e);
  auto cls = to_double(m.classifier);  // (vocab, dim)
  right(cls);
  m.classifier = to_float(cls);

  for (auto& L : m.layers) {
    for (linear_id id : {linear_id::wq, linear_id::wk, linear_id::w1, linear_id::w3}) {
      auto w = to_double(L.weight(id));
      right(w);
      L.weight(id) = to_float(w);
    }
    auto wv = to_double(L.wv);  // (kv_dim, dim)
    right(wv);
    v_heads.apply_left_transpose(rsq::view(wv));  // each head's output features ← H_hd/√hd · (...)
    L.wv = to_float(wv);

    auto wo = to_double(L.wo);  // (dim, dim)
    left_t(wo);
    // wo ← wo·Aᵀ with A = (M_nh/√nh ⊗ I)(I ⊗ H_hd/√hd): each row w ← A w.
    o_heads.apply_right(rsq::view(wo));
    heads_online(rsq::view(wo));
    L.wo = to_float(wo);

    auto w2 = to_double(L.w2);  // (dim, hidden)
    left_t(w2);
    down_online(rsq::view(w2));  // had_in: each row w ← H w
    L.w2 = to_float(w2);
  }
  attach_online_transforms(m, rec);
  return rec;
}

/// Multiplies every layer's online input transforms back into its weights (wo, w2) and removes them: the result is a
/// plain model (rotated weights, gains of ones) that computes the same function with an unmodified forward pass.
/// Works for any input transform: its matrix is probed by applying it to the identity (in float), and W ← W·Fᵀ with
/// F = transform(I) is computed in float64.
inline void fold_online_transforms(llama_model& m) {
  using namespace pipeline_detail;
  auto fold = [](rsq::matrix<float>& w, input_transform& f) {
    if (!f) return;
    index_t const n = index_t(w.shape()[1]);
    auto probe = rsq::make_matrix<float>(n, n);  // (n, n) identity, then F
    for (index_t i = 0; i < n; ++i) probe(i, i) = 1.f;
    f(rsq::view(probe));
    Eigen::MatrixXd const fm = cpu::as_eigen(rsq::view(std::as_const(probe))).cast<double>();
    auto wd = to_double(w);
    Eigen::MatrixXd const folded = cpu::as_eigen(rsq::view(std::as_const(wd))) * fm.transpose();
    cpu::as_eigen(rsq::view(wd)) = folded;
    w = to_float(wd);
    f = nullptr;
  };
  for (auto& L : m.layers) {
    fold(L.wo, L.wo_input_transform);
    fold(L.w2, L.w2_input_transform);
  }
}

}  // namespace rsq::model
