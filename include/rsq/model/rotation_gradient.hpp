// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The next-token cross-entropy of a Llama-architecture model as a function of its rotations R1 (dim × dim, the
/// residual stream, shared by all layers) and R2 (head_dim × head_dim per layer, V/O), and its gradient with respect
/// to both, through the rotated and fake-quantized weights: the objective SpinQuant (arXiv 2405.16406) minimises.
///
/// The weights as functions of the rotations (model/learned_rotation.hpp; A = the norm-fused weights):
///   E·R1, C·R1, Aq·R1, Ak·R1, A1·R1, A3·R1, (I ⊗ R2ᵀ)·Av·R1, R1ᵀ·Ao·(I ⊗ R2), R1ᵀ·A2.
/// These are what quantize_model() quantizes after folding in the online Hadamards F (across heads for wo, on
/// down_proj's input for w2): N = M·Fᵀ. Fake quantization rounds N to the grid (RTN at the target bits and group
/// size) and the forward pass runs on the dequantized Q(N) with F folded back, W̃ = Q(N)·F, so that it needs no
/// online transform and the same code serves the unquantized objective (W̃ = M). The rounding is a straight-through
/// estimator: dQ(N)/dN = I. Since F is orthogonal, the gradient with respect to M is then exactly the gradient with
/// respect to W̃, and the chain rule to R1 and R2 is the one of the unquantized model:
///   ∂R1 = Aqᵀ G_q + Akᵀ G_k + A1ᵀ G_1 + A3ᵀ G_3 + Avᵀ (I ⊗ R2) G_v + Ao(I ⊗ R2) G_oᵀ + A2 G_2ᵀ + Cᵀ G_C + E[tok]ᵀ G_x0
///   ∂R2 = Σ_g (Av R1)_g (G_v)_gᵀ + Σ_h (Ao)_hᵀ (R1 G_o)_h     (g: KV heads' rows, h: heads' columns).
/// The gradients G of the weights come from a hand-written reverse pass of the decoder: embedding, RMSNorm (gains
/// of ones after the fusion), RoPE, causal GQA attention, SwiGLU, classifier and the mean cross-entropy. Every
/// product is a linalg::gemm on the backend and every other step a piece of <rsq/nn/reverse.hpp>, so the whole
/// objective runs on the backend that holds the problem (the CPU in float or double, CUDA in float with cuBLAS),
/// and its result is the same bits for any thread count and from run to run. The attention probabilities are
/// recomputed in the reverse pass rather than stored: the tape of a layer is its activations, O(tokens · width).
///
/// Memory on the backend: the fused weights A, the forward weights W̃ and the weight gradients G of every layer
/// (three copies of the model's linears in T), the tape of one chunk of sequences per layer, and the logits of a
/// chunk (tokens × vocab). `rotation_loss_options::chunk_sequences` bounds the last two.
///
/// `rotation_problem` holds the fixed parts (the fused weights in T = float or double in the backend's memory, the
/// online Hadamards); rotation_loss() and rotation_loss_and_gradient() evaluate the objective at a learned_rotation.
/// For tests, `quantization_offsets` freezes the rounding: W = N(R) + D with D = Q(N(R0)) − N(R0) held constant, a
/// smooth function whose gradient at R0 the STE gradient must equal.

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "rsq/backend/memory.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/precision.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/linalg/elementwise.hpp"
#include "rsq/linalg/gemm.hpp"
#include "rsq/model/learned_rotation.hpp"
#include "rsq/model/llama.hpp"
#include "rsq/model/rotate.hpp"
#include "rsq/nn/options.hpp"
#include "rsq/nn/reverse.hpp"
#include "rsq/quant/grid.hpp"
#include "rsq/quant/rtn.hpp"

namespace rsq::model {

/// Options of the rotation objective.
struct rotation_loss_options {
  /// The grid the weights are fake-quantized on (RTN, straight-through); empty: no quantization (the objective is
  /// then constant on orthogonal R, up to float rounding).
  std::optional<quant::grid_spec> grid = std::nullopt;
  index_t group_size = -1;      ///< −1: per row
  index_t chunk_sequences = 4;  ///< sequences per forward/backward pass (bounds the stored activations)
  /// Inputs of every matrix product (the rotations of the weights, the linears, the attention, the classifier and
  /// the chain rule): fp32, or bf16 as an opt-in (tensor cores on the GPU; the CPU computes fp32 either way).
  matmul_precision precision = matmul_precision::fp32;

  void validate() const {
    if (grid) grid->validate();
    RSQ_EXPECTS(group_size == -1 || group_size > 0, "rotation loss: group_size must be -1 (per row) or positive, got ",
                group_size);
    RSQ_EXPECTS(chunk_sequences > 0, "rotation loss: chunk_sequences must be positive, got ", chunk_sequences);
  }
};

/// The seven weights of a decoder layer in T, in backend B's memory.
template <std::floating_point T, backend_tag B = backend::cpu_eigen>
struct dense_layer {
  backend::matrix<T, B> wq, wk, wv, wo, w1, w2, w3;

  [[nodiscard]] backend::matrix<T, B>& weight(linear_id l) noexcept {
    return detail::select_linear(l, wq, wk, wv, wo, w1, w2, w3);
  }
  [[nodiscard]] backend::matrix<T, B> const& weight(linear_id l) const noexcept {
    return const_cast<dense_layer&>(*this).weight(l);
  }
};

/// Rounding offsets D = Q(N) − N of every linear (pipeline domain, see the file comment), per layer.
template <std::floating_point T, backend_tag B = backend::cpu_eigen>
using quantization_offsets = std::vector<dense_layer<T, B>>;

/// The fixed parts of the objective: the norm-fused weights A, E and C in T in backend B's memory, the online
/// Hadamards.
template <std::floating_point T, backend_tag B = backend::cpu_eigen>
struct rotation_problem {
  B be{};                           ///< the backend whose memory holds the weights (and whose stream runs the pass)
  llama_config config;
  backend::matrix<T, B> embedding;   ///< (vocab, dim) E
  backend::matrix<T, B> classifier;  ///< (vocab, dim) C·diag(γ_final)
  std::vector<dense_layer<T, B>> layers;
  online_transforms online;         ///< those quantize_model() attaches under the same rotate_options
};

namespace rotation_detail {

/// The read-only view of a backend matrix.
template <class M>
[[nodiscard]] auto cv(M const& m) {
  return rsq::view(m);
}

template <class M>
[[nodiscard]] index_t rows_of(M const& m) {
  return cv(m).rows();
}
template <class M>
[[nodiscard]] index_t cols_of(M const& m) {
  return cv(m).cols();
}

/// The element type of a backend matrix M.
template <class M>
using element_t = typename decltype(rsq::view(std::declval<M&>()))::value_type;

/// Makes @p m (r, c), reusing its memory when the shape is already that (buffers are kept from step to step: a
/// fresh page costs about 10 µs at its first touch, more than the arithmetic on it).
template <backend_tag B, class M>
void ensure(B const& be, M& m, index_t r, index_t c) {
  if (rows_of(m) != r || cols_of(m) != c) m = backend::make_matrix<element_t<M>>(be, r, c);
}

template <backend_tag B, class M>
void fill_zero(B const& be, M& m, index_t r, index_t c) {
  ensure(be, m, r, c);
  nn::fill(be, rsq::view(m), element_t<M>(0));
}

/// Columns [c0, c0 + n) of @p m as a view.
template <class T>
[[nodiscard]] matrix_view<T> columns(matrix_view<T> m, index_t c0, index_t n) {
  return matrix_view<T>(m.data() + c0 * m.stride(1), {m.rows(), n}, {m.stride(0), m.stride(1)});
}
/// Rows [r0, r0 + n) of @p m as a view.
template <class T>
[[nodiscard]] matrix_view<T> rows(matrix_view<T> m, index_t r0, index_t n) {
  return matrix_view<T>(m.data() + r0 * m.stride(0), {n, m.cols()}, {m.stride(0), m.stride(1)});
}
/// A (1, n) matrix as the vector of its n values.
template <class T>
[[nodiscard]] vector_view<T> as_vector(matrix_view<T> m) {
  return vector_view<T>(m.data(), m.cols());
}
template <class M>
[[nodiscard]] auto vector_of(M const& m) {
  return as_vector(cv(m));
}

/// The products of the objective on backend B at one precision.
template <class T, backend_tag B>
struct products {
  B be;
  matmul_precision precision = matmul_precision::fp32;

  /// C ← α op(A) op(B) + β C.
  void gemm(matrix_view<const T> a, linalg::op oa, matrix_view<const T> b, linalg::op ob, matrix_view<T> c,
            double beta = 0, double alpha = 1) const {
    linalg::gemm(be, a, oa, b, ob, c, linalg::gemm_options{.alpha = alpha, .beta = beta, .precision = precision});
  }
  /// out ← op(A)·op(B) into @p out's memory.
  void mul_into(backend::matrix<T, B>& out, matrix_view<const T> a, linalg::op oa, matrix_view<const T> b,
                linalg::op ob) const {
    index_t const r = oa == linalg::op::none ? a.rows() : a.cols();
    index_t const c = ob == linalg::op::none ? b.cols() : b.rows();
    ensure(be, out, r, c);
    gemm(a, oa, b, ob, rsq::view(out));
  }
  void copy_into(backend::matrix<T, B>& out, matrix_view<const T> a) const {
    ensure(be, out, a.rows(), a.cols());
    backend::copy(be, rsq::view(out).data(), a.data(), a.size());
  }
};

/// The layer's rotated weights M (see the file comment; M is written into the forward weights' memory) and the two
/// intermediates the chain rule reuses.
template <class T, backend_tag B>
struct rotated_layer {
  backend::matrix<T, B> v_in;   ///< Av·R1 (kv_dim, dim)
  backend::matrix<T, B> o_mid;  ///< Ao·(I ⊗ R2) (dim, q_dim)
};

template <class T, backend_tag B>
void rotate_into(products<T, B> const& pr, dense_layer<T, B>& m, rotated_layer<T, B>& out, dense_layer<T, B> const& a,
                 matrix_view<const T> r1, matrix_view<const T> r2, llama_config const& c) {
  using linalg::op;
  index_t const hd = c.head_size();
  for (linear_id id : {linear_id::wq, linear_id::wk, linear_id::w1, linear_id::w3})
    pr.mul_into(m.weight(id), cv(a.weight(id)), op::none, r1, op::none);
  pr.mul_into(m.w2, r1, op::transpose, cv(a.w2), op::none);
  pr.mul_into(out.v_in, cv(a.wv), op::none, r1, op::none);
  ensure(pr.be, m.wv, c.kv_dim(), c.dim);
  for (index_t g = 0; g < c.n_kv_heads; ++g)
    pr.gemm(r2, op::transpose, rows(cv(out.v_in), g * hd, hd), op::none, rows(rsq::view(m.wv), g * hd, hd));
  ensure(pr.be, out.o_mid, c.dim, c.q_dim());
  for (index_t h = 0; h < c.n_heads; ++h)
    pr.gemm(columns(cv(a.wo), h * hd, hd), op::none, r2, op::none, columns(rsq::view(out.o_mid), h * hd, hd));
  pr.mul_into(m.wo, r1, op::transpose, cv(out.o_mid), op::none);
}

/// N ← M·Fᵀ (fold in the online transform: each row w ← F w), or back, W ← N·F (each row w ← Fᵀ w).
template <class T, backend_tag B>
void online_fold(B const& be, online_transforms const& online, llama_config const& c, linear_id id, matrix_view<T> v,
                 bool back) {
  if (id == linear_id::wo && online.heads) {
    index_t const hd = c.head_size();
    tensor_view<T, 3> t(v.data(), {v.rows(), hd, online.heads->size()}, {v.stride(0), 1, hd});
    if (back) online.heads->apply_transpose(be, t);
    else online.heads->apply(be, t);
  }
  if (id == linear_id::w2 && online.down) {
    if (back) online.down->apply_transpose(be, tensor_view<T, 2>(v));
    else online.down->apply(be, tensor_view<T, 2>(v));
  }
}

/// n ← Q(n) on @p grid, in place (RTN through float, as the pipeline quantizes).
template <class T, backend_tag B>
void fake_quantize_through_float(B const& be, matrix_view<T> n, quant::grid_spec const& grid, index_t group) {
  if constexpr (std::is_same_v<T, float>) {
    quant::fake_quantize(be, n, grid, group);
  } else {
    auto f = backend::make_matrix<float>(be, n.rows(), n.cols());
    linalg::convert(be, matrix_view<const T>(n), rsq::view(f));
    quant::fake_quantize(be, rsq::view(f), grid, group);
    linalg::convert(be, cv(f), n);
  }
}

/// The weights the forward pass runs on, in place over M: W̃ = fold(Q(N)) or fold(N + D), or M without quantization.
/// A linear the grid cannot hold (a llama.cpp block grid and an input width not in blocks of 32: the pipeline keeps
/// it in F16) is not rounded.
template <class T, backend_tag B>
void forward_weights(B const& be, dense_layer<T, B>& w, rotation_problem<T, B> const& p,
                     rotation_loss_options const& opt, dense_layer<T, B> const* frozen) {
  if (!opt.grid && frozen == nullptr) return;
  for (linear_id id : all_linears) {
    auto const v = rsq::view(w.weight(id));
    online_fold(be, p.online, p.config, id, v, false);
    if (frozen != nullptr) linalg::axpy(be, T(1), cv(frozen->weight(id)), v);
    else if (quant::grid_holds(*opt.grid, v.cols())) fake_quantize_through_float(be, v, *opt.grid, opt.group_size);
    online_fold(be, p.online, p.config, id, v, true);
  }
}

/// Everything one decoder layer's reverse pass needs, for one chunk of tokens.
template <class T, backend_tag B>
struct layer_tape {
  backend::matrix<T, B> x, n, q, k, v, o, x1, m, a, b, u;
  backend::matrix<T, B> r_att, r_ffn;  // (1, tokens): 1/√(mean(x²) + eps) per token
};

/// Gradients of the forward weights, of the classifier and of R1 through the embedding rows, summed over chunks.
template <class T, backend_tag B>
struct weight_grads {
  std::vector<dense_layer<T, B>> layers;
  backend::matrix<T, B> classifier;    ///< (vocab, dim)
  backend::matrix<T, B> r1_embedding;  ///< (dim, dim): E[tok]ᵀ G_x0
};

/// Every buffer of the objective, kept from call to call (see ensure()).
template <class T, backend_tag B>
struct chunk_buffers {
  std::vector<layer_tape<T, B>> tape;
  backend::matrix<T, B> x, nf, rf, logits, dnf, dx, du, dm, d_o, dq, dk, dv, dn, e;
  backend::matrix<T, B> rope_cos, rope_sin;  ///< (L, head_dim / 2)
  index_t rope_len = 0;
  backend::matrix<T, B> r1, gv, g2, gco, g1;
  std::vector<backend::matrix<T, B>> r2;
  std::vector<rotated_layer<T, B>> rotated;
  std::vector<dense_layer<T, B>> weights;
  backend::matrix<T, B> emb, cls;
  weight_grads<T, B> grads;
};

/// cos/sin(pos·f_i) (nn::rope_inverse_frequency), rounded to float as the forward pass's tables are, in T on the
/// backend.
template <class T, backend_tag B>
void make_rope(B const& be, chunk_buffers<T, B>& ws, llama_config const& c, index_t L) {
  if (ws.rope_len == L) return;
  index_t const half = c.head_size() / 2;
  auto cs = rsq::make_matrix_for_overwrite<T>(L, half), sn = rsq::make_matrix_for_overwrite<T>(L, half);
  for (index_t i = 0; i < half; ++i) {
    double const f = nn::rope_inverse_frequency(c.rope_theta, c.head_size(), c.rope_scaling, i);
    for (index_t p = 0; p < L; ++p) {
      cs(p, i) = T(float(std::cos(double(p) * f)));
      sn(p, i) = T(float(std::sin(double(p) * f)));
    }
  }
  ws.rope_cos = backend::to_backend(be, rsq::view(std::as_const(cs)));
  ws.rope_sin = backend::to_backend(be, rsq::view(std::as_const(sn)));
  ws.rope_len = L;
}

/// Forward (and, with @p with_gradient, reverse) pass of one chunk of sequences @p ids (S, L) on the weights in
/// `ws.weights`; returns the chunk's summed cross-entropy.
template <class T, backend_tag B>
double run_chunk(rotation_problem<T, B> const& p, products<T, B> const& pr, chunk_buffers<T, B>& ws,
                 matrix_view<const std::int32_t> ids, index_t total_predictions, bool with_gradient) {
  using linalg::op;
  auto const& be = pr.be;
  auto const& c = p.config;
  auto const& w = ws.weights;
  index_t const S = ids.rows(), L = ids.cols(), Tn = S * L, d = c.dim;
  float const eps = c.norm_eps;
  nn::attention_options const att{.seq_len = L, .heads = c.n_heads, .kv_heads = c.n_kv_heads,
                                  .head_dim = c.head_size(), .precision = pr.precision};
  auto const cos = cv(ws.rope_cos), sin = cv(ws.rope_sin);
  ws.tape.resize(std::size_t(c.n_layers));
  auto& x = ws.x;
  ensure(be, x, Tn, d);
  nn::gather_rows(be, ids, cv(ws.emb), rsq::view(x));
  auto const rms = [&](backend::matrix<T, B> const& in, backend::matrix<T, B>& y, backend::matrix<T, B>& r) {
    ensure(be, y, Tn, cols_of(in));
    ensure(be, r, 1, Tn);
    nn::rms_forward(be, cv(in), eps, rsq::view(y), as_vector(rsq::view(r)));
  };
  for (int l = 0; l < c.n_layers; ++l) {
    // The forward alone keeps one tape, reused by every layer.
    auto& tp = ws.tape[with_gradient ? std::size_t(l) : 0];
    auto const& lw = w[std::size_t(l)];
    pr.copy_into(tp.x, cv(x));
    rms(tp.x, tp.n, tp.r_att);
    pr.mul_into(tp.q, cv(tp.n), op::none, cv(lw.wq), op::transpose);
    pr.mul_into(tp.k, cv(tp.n), op::none, cv(lw.wk), op::transpose);
    pr.mul_into(tp.v, cv(tp.n), op::none, cv(lw.wv), op::transpose);
    nn::rope(be, rsq::view(tp.q), cos, sin, c.head_size(), false);
    nn::rope(be, rsq::view(tp.k), cos, sin, c.head_size(), false);
    ensure(be, tp.o, Tn, c.q_dim());
    nn::attention_forward(be, cv(tp.q), cv(tp.k), cv(tp.v), rsq::view(tp.o), att);
    pr.gemm(cv(tp.o), op::none, cv(lw.wo), op::transpose, rsq::view(x), 1);
    pr.copy_into(tp.x1, cv(x));
    rms(tp.x1, tp.m, tp.r_ffn);
    pr.mul_into(tp.a, cv(tp.m), op::none, cv(lw.w1), op::transpose);
    pr.mul_into(tp.b, cv(tp.m), op::none, cv(lw.w3), op::transpose);
    ensure(be, tp.u, Tn, c.hidden_dim);
    nn::swiglu_forward(be, cv(tp.a), cv(tp.b), rsq::view(tp.u));
    pr.gemm(cv(tp.u), op::none, cv(lw.w2), op::transpose, rsq::view(x), 1);
  }
  rms(x, ws.nf, ws.rf);
  pr.mul_into(ws.logits, cv(ws.nf), op::none, cv(ws.cls), op::transpose);  // (tokens, vocab)
  // Cross-entropy of the predictions t < L − 1; logits become dL/dlogits = (softmax − onehot) / total_predictions.
  double const chunk_loss = nn::cross_entropy(be, rsq::view(ws.logits), ids, total_predictions, with_gradient);
  if (!with_gradient) return chunk_loss;

  // Reverse pass.
  auto& grads = ws.grads;
  pr.gemm(cv(ws.logits), op::transpose, cv(ws.nf), op::none, rsq::view(grads.classifier), 1);
  pr.mul_into(ws.dnf, cv(ws.logits), op::none, cv(ws.cls), op::none);  // (tokens, dim)
  auto& dx = ws.dx;
  fill_zero(be, dx, Tn, d);
  nn::rms_backward(be, cv(ws.nf), vector_of(ws.rf), cv(ws.dnf), rsq::view(dx));
  for (int l = c.n_layers - 1; l >= 0; --l) {
    auto& tp = ws.tape[std::size_t(l)];
    auto const& lw = w[std::size_t(l)];
    auto& g = grads.layers[std::size_t(l)];
    // FFN: x2 = x1 + u W2ᵀ.
    pr.gemm(cv(dx), op::transpose, cv(tp.u), op::none, rsq::view(g.w2), 1);
    pr.mul_into(ws.du, cv(dx), op::none, cv(lw.w2), op::none);  // (tokens, hidden)
    nn::swiglu_backward(be, rsq::view(tp.a), rsq::view(tp.b), cv(ws.du));  // a ← da, b ← db
    pr.gemm(cv(tp.a), op::transpose, cv(tp.m), op::none, rsq::view(g.w1), 1);
    pr.gemm(cv(tp.b), op::transpose, cv(tp.m), op::none, rsq::view(g.w3), 1);
    pr.mul_into(ws.dm, cv(tp.a), op::none, cv(lw.w1), op::none);
    pr.gemm(cv(tp.b), op::none, cv(lw.w3), op::none, rsq::view(ws.dm), 1);
    nn::rms_backward(be, cv(tp.m), vector_of(tp.r_ffn), cv(ws.dm), rsq::view(dx));  // dx is now dL/dx1
    // Attention: x1 = x + o Woᵀ.
    pr.gemm(cv(dx), op::transpose, cv(tp.o), op::none, rsq::view(g.wo), 1);
    pr.mul_into(ws.d_o, cv(dx), op::none, cv(lw.wo), op::none);  // (tokens, q_dim)
    ensure(be, ws.dq, Tn, c.q_dim());
    ensure(be, ws.dk, Tn, c.kv_dim());
    ensure(be, ws.dv, Tn, c.kv_dim());
    nn::attention_backward(be, cv(tp.q), cv(tp.k), cv(tp.v), cv(ws.d_o), rsq::view(ws.dq), rsq::view(ws.dk),
                           rsq::view(ws.dv), att);
    nn::rope(be, rsq::view(ws.dq), cos, sin, c.head_size(), true);
    nn::rope(be, rsq::view(ws.dk), cos, sin, c.head_size(), true);
    pr.gemm(cv(ws.dq), op::transpose, cv(tp.n), op::none, rsq::view(g.wq), 1);
    pr.gemm(cv(ws.dk), op::transpose, cv(tp.n), op::none, rsq::view(g.wk), 1);
    pr.gemm(cv(ws.dv), op::transpose, cv(tp.n), op::none, rsq::view(g.wv), 1);
    pr.mul_into(ws.dn, cv(ws.dq), op::none, cv(lw.wq), op::none);
    pr.gemm(cv(ws.dk), op::none, cv(lw.wk), op::none, rsq::view(ws.dn), 1);
    pr.gemm(cv(ws.dv), op::none, cv(lw.wv), op::none, rsq::view(ws.dn), 1);
    nn::rms_backward(be, cv(tp.n), vector_of(tp.r_att), cv(ws.dn), rsq::view(dx));  // dx is now dL/dx of layer l
  }
  // The embedding rows: x0 = E[tok]·R1, so ∂R1 += E[tok]ᵀ dx0.
  ensure(be, ws.e, Tn, d);
  nn::gather_rows(be, ids, cv(p.embedding), rsq::view(ws.e));
  pr.gemm(cv(ws.e), op::transpose, cv(dx), op::none, rsq::view(grads.r1_embedding), 1);
  return chunk_loss;
}

template <class T, backend_tag B>
void expect_tokens(rotation_problem<T, B> const& p, matrix_view<const std::int32_t> ids, char const* who) {
  RSQ_EXPECTS(ids.rows() > 0 && ids.cols() >= 2, who, ": need at least one sequence of 2 or more tokens, got ",
              rsq::detail::shape_string(ids));
  RSQ_EXPECTS(ids.cols() <= p.config.seq_len, who, ": sequences of ", ids.cols(), " tokens exceed the model's seq_len ",
              p.config.seq_len);
  for (index_t s = 0; s < ids.rows(); ++s)
    for (index_t t = 0; t < ids.cols(); ++t)
      RSQ_EXPECTS(ids(s, t) >= 0 && ids(s, t) < p.config.vocab_size, who, ": token id ", ids(s, t), " at (", s, ", ",
                  t, ") is outside the vocabulary [0, ", p.config.vocab_size, ")");
}

/// A host matrix converted to the element type of @p out, in backend memory.
template <backend_tag B, class M, class S>
void upload(B const& be, M& out, rsq::matrix<S> const& m) {
  using T = element_t<M>;
  auto t = rsq::make_matrix_for_overwrite<T>(index_t(m.shape()[0]), index_t(m.shape()[1]));
  std::transform(m.begin(), m.end(), t.begin(), [](S v) { return T(v); });
  ensure(be, out, index_t(m.shape()[0]), index_t(m.shape()[1]));
  backend::copy(be, rsq::view(out).data(), t.data(), index_t(t.size()));
}

/// A backend matrix in host float64.
template <backend_tag B, class M>
[[nodiscard]] rsq::matrix<double> download(B const& be, M const& m) {
  auto const h = backend::to_host(be, cv(m));
  auto out = rsq::make_matrix_for_overwrite<double>(index_t(h.shape()[0]), index_t(h.shape()[1]));
  std::transform(h.begin(), h.end(), out.begin(), [](auto v) { return double(v); });
  return out;
}

}  // namespace rotation_detail

/// The fixed parts of the objective for @p m in backend @p be's memory: its norms fused (in float64), converted to
/// T; the online Hadamards that quantize_model() attaches under @p rotation (none when
/// rotate_options::online_hadamards is off).
/// @throws rsq::invalid_argument for a malformed or rotated model, biases, or sizes without a Hadamard construction
template <std::floating_point T, backend_tag B>
[[nodiscard]] rotation_problem<T, B> make_rotation_problem(B const& be, llama_model const& m,
                                                           rotate_options const& rotation = {}) {
  validate(m, /*check_finite=*/true);
  expect_plain(m, "make_rotation_problem");
  auto const& c = m.config;
  RSQ_EXPECTS(!c.qkv_bias && !c.o_bias && !c.mlp_bias, "make_rotation_problem: models with biases are not supported");
  RSQ_EXPECTS(!rotation.center_embeddings, "make_rotation_problem: embedding centring is not function-preserving and "
              "is not supported with learned rotations");
  llama_model f = m;
  fuse_norms(f);
  auto const put = [&](rsq::matrix<float> const& w) {
    backend::matrix<T, B> out;
    rotation_detail::upload(be, out, w);
    return out;
  };
  rotation_problem<T, B> p;
  p.be = be;
  p.config = c;
  p.embedding = put(f.token_embedding);
  p.classifier = put(f.classifier);
  for (auto const& L : f.layers) {
    dense_layer<T, B> d;
    for (linear_id id : all_linears) d.weight(id) = put(L.weight(id));
    p.layers.push_back(std::move(d));
  }
  p.online = plan_rotation(c, rotation).online;
  return p;
}

/// make_rotation_problem() on the CPU backend (host memory).
template <std::floating_point T>
[[nodiscard]] rotation_problem<T> make_rotation_problem(llama_model const& m, rotate_options const& rotation = {}) {
  return make_rotation_problem<T>(backend::cpu_eigen{}, m, rotation);
}

/// The loss and its gradient with respect to R1 and R2 (in float64; the arithmetic in T).
struct rotation_gradient {
  double loss = 0;       ///< mean next-token cross-entropy over the batch
  index_t count = 0;     ///< predictions: sequences · (L − 1)
  learned_rotation grad; ///< ∂loss/∂R1 (dim, dim), ∂loss/∂R2 per layer (head_dim, head_dim)
};

namespace rotation_detail {

template <class T, backend_tag B>
[[nodiscard]] rotation_gradient evaluate(rotation_problem<T, B> const& p, learned_rotation const& r,
                                         matrix_view<const std::int32_t> ids, rotation_loss_options const& opt,
                                         quantization_offsets<T, B> const* frozen, bool with_gradient,
                                         chunk_buffers<T, B>& ws) {
  using linalg::op;
  auto const& c = p.config;
  auto const& be = p.be;
  opt.validate();
  // Shapes and finiteness only: the finite-difference tests evaluate off the manifold.
  validate(r, c, /*tolerance=*/std::numeric_limits<double>::infinity());
  expect_tokens(p, ids, "rotation loss");
  RSQ_EXPECTS(frozen == nullptr || frozen->size() == p.layers.size(), "rotation loss: offsets for ",
              frozen ? frozen->size() : 0, " layers, the model has ", p.layers.size());
  products<T, B> const pr{be, opt.precision};
  upload(be, ws.r1, r.r1);
  ws.r2.resize(r.r2.size());
  for (std::size_t l = 0; l < r.r2.size(); ++l) upload(be, ws.r2[l], r.r2[l]);
  ws.rotated.resize(std::size_t(c.n_layers));
  ws.weights.resize(std::size_t(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    auto const li = std::size_t(l);
    rotate_into(pr, ws.weights[li], ws.rotated[li], p.layers[li], cv(ws.r1), cv(ws.r2[li]), c);
    forward_weights(be, ws.weights[li], p, opt, frozen ? &(*frozen)[li] : nullptr);
  }
  pr.mul_into(ws.emb, cv(p.embedding), op::none, cv(ws.r1), op::none);
  pr.mul_into(ws.cls, cv(p.classifier), op::none, cv(ws.r1), op::none);
  make_rope(be, ws, c, ids.cols());
  index_t const S = ids.rows(), L = ids.cols(), total = S * (L - 1);
  auto& g = ws.grads;
  if (with_gradient) {
    g.layers.resize(std::size_t(c.n_layers));
    for (int l = 0; l < c.n_layers; ++l)
      for (linear_id id : all_linears) {
        auto const shape = weight_shape(c, id);
        fill_zero(be, g.layers[std::size_t(l)].weight(id), shape[0], shape[1]);
      }
    fill_zero(be, g.classifier, c.vocab_size, c.dim);
    fill_zero(be, g.r1_embedding, c.dim, c.dim);
  }
  double loss_sum = 0;  // chunk by chunk, in order
  for (index_t s0 = 0; s0 < S; s0 += opt.chunk_sequences) {
    index_t const n = std::min(opt.chunk_sequences, S - s0);
    matrix_view<const std::int32_t> chunk(ids.data() + s0 * ids.stride(0), {n, L}, {ids.stride(0), ids.stride(1)});
    loss_sum += run_chunk(p, pr, ws, chunk, total, with_gradient);
  }
  rotation_gradient out;
  out.count = total;
  out.loss = loss_sum / double(total);
  if (!with_gradient) return out;

  // Chain rule to R1 and R2 (file comment).
  index_t const hd = c.head_size();
  pr.mul_into(ws.g1, cv(p.classifier), op::transpose, cv(g.classifier), op::none);  // Cᵀ G_C
  linalg::axpy(be, T(1), cv(g.r1_embedding), rsq::view(ws.g1));
  ensure(be, ws.gv, c.kv_dim(), c.dim);
  for (int l = 0; l < c.n_layers; ++l) {
    auto const& a = p.layers[std::size_t(l)];
    auto const& gl = g.layers[std::size_t(l)];
    auto const& rl = ws.rotated[std::size_t(l)];
    auto const r2l = cv(ws.r2[std::size_t(l)]);
    for (linear_id id : {linear_id::wq, linear_id::wk, linear_id::w1, linear_id::w3})
      pr.gemm(cv(a.weight(id)), op::transpose, cv(gl.weight(id)), op::none, rsq::view(ws.g1), 1);
    pr.gemm(cv(a.w2), op::none, cv(gl.w2), op::transpose, rsq::view(ws.g1), 1);
    pr.gemm(cv(rl.o_mid), op::none, cv(gl.wo), op::transpose, rsq::view(ws.g1), 1);
    fill_zero(be, ws.g2, hd, hd);
    for (index_t k = 0; k < c.n_kv_heads; ++k) {  // (I ⊗ R2) G_v, and the V half of ∂R2
      pr.gemm(r2l, op::none, rows(cv(gl.wv), k * hd, hd), op::none, rows(rsq::view(ws.gv), k * hd, hd));
      pr.gemm(rows(cv(rl.v_in), k * hd, hd), op::none, rows(cv(gl.wv), k * hd, hd), op::transpose, rsq::view(ws.g2),
              1);
    }
    pr.gemm(cv(a.wv), op::transpose, cv(ws.gv), op::none, rsq::view(ws.g1), 1);
    pr.mul_into(ws.gco, cv(ws.r1), op::none, cv(gl.wo), op::none);  // R1 G_o (dim, q_dim)
    for (index_t h = 0; h < c.n_heads; ++h)
      pr.gemm(columns(cv(a.wo), h * hd, hd), op::transpose, columns(cv(ws.gco), h * hd, hd), op::none,
              rsq::view(ws.g2), 1);
    out.grad.r2.push_back(download(be, ws.g2));
  }
  out.grad.r1 = download(be, ws.g1);
  return out;
}

}  // namespace rotation_detail

/// The buffers of the objective, kept from call to call: pass the same one to every step of a learning loop and a
/// step allocates nothing after the first (the pages of fresh buffers cost more than the arithmetic on them).
template <std::floating_point T, backend_tag B = backend::cpu_eigen>
struct rotation_workspace {
  rotation_detail::chunk_buffers<T, B> buffers;
};

/// The mean next-token cross-entropy of @p ids (sequences, L; host memory) at rotation @p r, through fake-quantized
/// weights when `opt.grid` is set (or W = N(R) + D with @p frozen offsets D), on @p p's backend.
/// @throws rsq::invalid_argument for shapes that do not fit, ids outside the vocabulary, L < 2 or > seq_len
template <backend_tag B, std::floating_point T>
[[nodiscard]] double rotation_loss(B const&, rotation_problem<T, B> const& p, learned_rotation const& r,
                                   matrix_view<const std::int32_t> ids, rotation_loss_options const& opt = {},
                                   quantization_offsets<T, B> const* frozen = nullptr,
                                   rotation_workspace<T, B>* workspace = nullptr) {
  rotation_workspace<T, B> local;
  return rotation_detail::evaluate(p, r, ids, opt, frozen, false, (workspace ? *workspace : local).buffers).loss;
}

/// rotation_loss() and its gradient with respect to R1 and R2 (straight-through through the rounding).
template <backend_tag B, std::floating_point T>
[[nodiscard]] rotation_gradient rotation_loss_and_gradient(B const&, rotation_problem<T, B> const& p,
                                                           learned_rotation const& r,
                                                           matrix_view<const std::int32_t> ids,
                                                           rotation_loss_options const& opt = {},
                                                           quantization_offsets<T, B> const* frozen = nullptr,
                                                           rotation_workspace<T, B>* workspace = nullptr) {
  rotation_workspace<T, B> local;
  return rotation_detail::evaluate(p, r, ids, opt, frozen, true, (workspace ? *workspace : local).buffers);
}

/// The rounding offsets D = Q(N(R)) − N(R) of every linear at rotation @p r on `opt.grid`, for the frozen-rounding
/// objective (file comment).
template <std::floating_point T, backend_tag B>
[[nodiscard]] quantization_offsets<T, B> make_quantization_offsets(rotation_problem<T, B> const& p,
                                                                   learned_rotation const& r,
                                                                   rotation_loss_options const& opt) {
  using namespace rotation_detail;
  RSQ_EXPECTS(opt.grid.has_value(), "make_quantization_offsets: the options name no grid");
  auto const& be = p.be;
  products<T, B> const pr{be, opt.precision};
  backend::matrix<T, B> r1, r2;
  upload(be, r1, r.r1);
  quantization_offsets<T, B> out;
  for (int l = 0; l < p.config.n_layers; ++l) {
    upload(be, r2, r.r2[std::size_t(l)]);
    dense_layer<T, B> n;
    rotated_layer<T, B> scratch;
    rotate_into(pr, n, scratch, p.layers[std::size_t(l)], cv(r1), cv(r2), p.config);
    dense_layer<T, B> d;
    for (linear_id id : all_linears) {
      auto const v = rsq::view(n.weight(id));
      online_fold(be, p.online, p.config, id, v, false);
      pr.copy_into(d.weight(id), matrix_view<const T>(v));
      if (quant::grid_holds(*opt.grid, v.cols()))
        fake_quantize_through_float(be, rsq::view(d.weight(id)), *opt.grid, opt.group_size);
      linalg::axpy(be, T(-1), matrix_view<const T>(v), rsq::view(d.weight(id)));
    }
    out.push_back(std::move(d));
  }
  return out;
}

}  // namespace rsq::model
