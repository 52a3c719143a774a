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
/// of ones after the fusion), RoPE, causal GQA attention, SwiGLU, classifier and the mean cross-entropy; every
/// product is a linalg::gemm on the backend, every other step a loop over independent rows or (sequence, KV head)
/// items, so the result is the same bits for any thread count. The element-wise steps run on the host: the CPU
/// backend only for now.
///
/// `rotation_problem` holds the fixed parts (the fused weights in T = float or double, the online Hadamards);
/// rotation_loss() and rotation_loss_and_gradient() evaluate the objective at a learned_rotation. For tests,
/// `quantization_offsets` freezes the rounding: W = N(R) + D with D = Q(N(R0)) − N(R0) held constant, a smooth
/// function whose gradient at R0 the STE gradient must equal.

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <optional>
#include <vector>

#include "rsq/backend/tags.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/linalg/gemm.hpp"
#include "rsq/model/learned_rotation.hpp"
#include "rsq/model/llama.hpp"
#include "rsq/model/rotate.hpp"
#include "rsq/nn/options.hpp"
#include "rsq/quant/grid.hpp"
#include "rsq/quant/quantized_weight.hpp"
#include "rsq/quant/rtn.hpp"

namespace rsq::model {

/// Options of the rotation objective.
struct rotation_loss_options {
  /// The grid the weights are fake-quantized on (RTN, straight-through); empty: no quantization (the objective is
  /// then constant on orthogonal R, up to float rounding).
  std::optional<quant::grid_spec> grid = std::nullopt;
  index_t group_size = -1;      ///< −1: per row
  index_t chunk_sequences = 4;  ///< sequences per forward/backward pass (bounds the stored activations)

  void validate() const {
    if (grid) grid->validate();
    RSQ_EXPECTS(group_size == -1 || group_size > 0, "rotation loss: group_size must be -1 (per row) or positive, got ",
                group_size);
    RSQ_EXPECTS(chunk_sequences > 0, "rotation loss: chunk_sequences must be positive, got ", chunk_sequences);
  }
};

/// The seven weights of a decoder layer in T.
template <std::floating_point T>
struct dense_layer {
  rsq::matrix<T> wq, wk, wv, wo, w1, w2, w3;

  [[nodiscard]] rsq::matrix<T>& weight(linear_id l) noexcept {
    return detail::select_linear(l, wq, wk, wv, wo, w1, w2, w3);
  }
  [[nodiscard]] rsq::matrix<T> const& weight(linear_id l) const noexcept {
    return const_cast<dense_layer&>(*this).weight(l);
  }
};

/// Rounding offsets D = Q(N) − N of every linear (pipeline domain, see the file comment), per layer.
template <std::floating_point T>
using quantization_offsets = std::vector<dense_layer<T>>;

/// The fixed parts of the objective: the norm-fused weights A, E and C in T, the online Hadamards.
template <std::floating_point T>
struct rotation_problem {
  llama_config config;
  rsq::matrix<T> embedding;   ///< (vocab, dim) E
  rsq::matrix<T> classifier;  ///< (vocab, dim) C·diag(γ_final)
  std::vector<dense_layer<T>> layers;
  online_transforms online;   ///< those quantize_model() attaches under the same rotate_options
};

namespace rotation_detail {

template <class T>
[[nodiscard]] matrix_view<const T> cv(rsq::matrix<T> const& m) {
  return rsq::view(m);
}


/// C ← α op(A) op(B) + β C on the CPU backend.
template <class T>
void gemm(matrix_view<const T> a, linalg::op oa, matrix_view<const T> b, linalg::op ob, matrix_view<T> c,
          double beta = 0, double alpha = 1) {
  linalg::gemm(backend::cpu_eigen{}, a, oa, b, ob, c, linalg::gemm_options{.alpha = alpha, .beta = beta});
}

/// Makes @p m (r, c), reusing its memory when the shape is already that (buffers are kept from step to step: a
/// fresh page costs about 10 µs at its first touch, more than the arithmetic on it).
template <class T>
void ensure(rsq::matrix<T>& m, index_t r, index_t c) {
  if (index_t(m.shape()[0]) != r || index_t(m.shape()[1]) != c || m.dimension() != 2)
    m = rsq::make_matrix_for_overwrite<T>(r, c);
}

template <class T>
void fill_zero(rsq::matrix<T>& m, index_t r, index_t c) {
  ensure(m, r, c);
  std::fill(m.begin(), m.end(), T(0));
}

/// out ← op(A)·op(B) into @p out's memory.
template <class T>
void mul_into(rsq::matrix<T>& out, rsq::matrix<T> const& a, linalg::op oa, rsq::matrix<T> const& b, linalg::op ob) {
  index_t const rows = oa == linalg::op::none ? index_t(a.shape()[0]) : index_t(a.shape()[1]);
  index_t const cols = ob == linalg::op::none ? index_t(b.shape()[1]) : index_t(b.shape()[0]);
  ensure(out, rows, cols);
  gemm<T>(cv(a), oa, cv(b), ob, rsq::view(out));
}

template <class T>
void copy_into(rsq::matrix<T>& out, rsq::matrix<T> const& a) {
  ensure(out, index_t(a.shape()[0]), index_t(a.shape()[1]));
  std::copy(a.begin(), a.end(), out.begin());
}

template <class T>
[[nodiscard]] rsq::matrix<T> mul(rsq::matrix<T> const& a, linalg::op oa, rsq::matrix<T> const& b, linalg::op ob) {
  index_t const rows = oa == linalg::op::none ? index_t(a.shape()[0]) : index_t(a.shape()[1]);
  index_t const cols = ob == linalg::op::none ? index_t(b.shape()[1]) : index_t(b.shape()[0]);
  auto c = rsq::make_matrix_for_overwrite<T>(rows, cols);
  gemm<T>(cv(a), oa, cv(b), ob, rsq::view(c));
  return c;
}

template <class T, class U>
[[nodiscard]] rsq::matrix<T> convert(rsq::matrix<U> const& m) {
  auto out = rsq::make_matrix_for_overwrite<T>(index_t(m.shape()[0]), index_t(m.shape()[1]));
  std::transform(m.begin(), m.end(), out.begin(), [](U v) { return T(v); });
  return out;
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

/// The layer's rotated weights M (see the file comment) and the two intermediates the chain rule reuses.
template <class T>
struct rotated_layer {
  dense_layer<T> m;
  rsq::matrix<T> v_in;   ///< Av·R1 (kv_dim, dim)
  rsq::matrix<T> o_mid;  ///< Ao·(I ⊗ R2) (dim, q_dim)
};

template <class T>
void rotate_into(rotated_layer<T>& out, dense_layer<T> const& a, rsq::matrix<T> const& r1, rsq::matrix<T> const& r2,
                 llama_config const& c) {
  using linalg::op;
  index_t const hd = c.head_size();
  mul_into(out.m.wq, a.wq, op::none, r1, op::none);
  mul_into(out.m.wk, a.wk, op::none, r1, op::none);
  mul_into(out.m.w1, a.w1, op::none, r1, op::none);
  mul_into(out.m.w3, a.w3, op::none, r1, op::none);
  mul_into(out.m.w2, r1, op::transpose, a.w2, op::none);
  mul_into(out.v_in, a.wv, op::none, r1, op::none);
  ensure(out.m.wv, c.kv_dim(), c.dim);
  for (index_t g = 0; g < c.n_kv_heads; ++g)
    gemm<T>(cv(r2), op::transpose, rows(cv(out.v_in), g * hd, hd), op::none, rows(rsq::view(out.m.wv), g * hd, hd));
  ensure(out.o_mid, c.dim, c.q_dim());
  for (index_t h = 0; h < c.n_heads; ++h)
    gemm<T>(columns(cv(a.wo), h * hd, hd), op::none, cv(r2), op::none, columns(rsq::view(out.o_mid), h * hd, hd));
  mul_into(out.m.wo, r1, op::transpose, out.o_mid, op::none);
}

template <class T>
[[nodiscard]] rotated_layer<T> rotate(dense_layer<T> const& a, rsq::matrix<T> const& r1, rsq::matrix<T> const& r2,
                                      llama_config const& c) {
  rotated_layer<T> out;
  rotate_into(out, a, r1, r2, c);
  return out;
}

/// N ← M·Fᵀ (fold in the online transform: each row w ← F w), or back, W ← N·F (each row w ← Fᵀ w).
template <class T>
void online_fold(online_transforms const& online, llama_config const& c, linear_id id, rsq::matrix<T>& w,
                 bool back) {
  backend::cpu_eigen const be{};
  if (id == linear_id::wo && online.heads) {
    index_t const hd = c.head_size();
    auto const v = rsq::view(w);
    tensor_view<T, 3> t(v.data(), {v.rows(), hd, online.heads->size()}, {v.stride(0), 1, hd});
    if (back) online.heads->apply_transpose(be, t);
    else online.heads->apply(be, t);
  }
  if (id == linear_id::w2 && online.down) {
    auto const v = rsq::view(w);
    if (back) online.down->apply_transpose(be, tensor_view<T, 2>(v));
    else online.down->apply(be, tensor_view<T, 2>(v));
  }
}

/// Q(N) on @p grid (RTN through float, as the pipeline quantizes), in T.
template <class T>
[[nodiscard]] rsq::matrix<T> fake_quantize(rsq::matrix<T> const& n, quant::grid_spec const& grid, index_t group) {
  auto const f = convert<float>(n);
  auto const q = quant::quantize_rtn(backend::cpu_eigen{}, matrix_view<const float>(rsq::view(f)), grid, group);
  return convert<T>(quant::dequantize(q));
}

/// The weights the forward pass runs on, W̃ = fold(Q(N)) or fold(N + D), or M without quantization.
template <class T>
void forward_weights_into(dense_layer<T>& w, rotated_layer<T> const& r, rotation_problem<T> const& p,
                          rotation_loss_options const& opt, dense_layer<T> const* frozen) {
  for (linear_id id : all_linears) {
    auto& out = w.weight(id);
    copy_into(out, r.m.weight(id));
    if (!opt.grid && frozen == nullptr) continue;
    online_fold(p.online, p.config, id, out, false);
    if (frozen != nullptr) {
      auto const& d = frozen->weight(id);
      std::transform(out.begin(), out.end(), d.begin(), out.begin(), [](T a, T b) { return a + b; });
    } else {
      out = fake_quantize(out, *opt.grid, opt.group_size);
    }
    online_fold(p.online, p.config, id, out, true);
  }
}

/// Everything one decoder layer's reverse pass needs, for one chunk of tokens.
template <class T>
struct layer_tape {
  rsq::matrix<T> x, n, q, k, v, probs, o, x1, m, a, b, u;
  std::vector<T> r_att, r_ffn;  // 1/√(mean(x²) + eps) per token
};

/// y ← x·r per row, r = 1/√(mean(x²) + eps) (RMSNorm with gains of ones); returns r.
template <class T>
void rms_forward(rsq::matrix<T> const& x, float eps, rsq::matrix<T>& y, std::vector<T>& r) {
  index_t const rows = index_t(x.shape()[0]), d = index_t(x.shape()[1]);
  ensure(y, rows, d);
  r.resize(std::size_t(rows));
#pragma omp parallel for schedule(static)
  for (index_t i = 0; i < rows; ++i) {
    T const* xr = x.data() + i * d;
    double ss = 0;
    for (index_t j = 0; j < d; ++j) ss += double(xr[j]) * double(xr[j]);
    T const ri = T(1.0 / std::sqrt(ss / double(d) + double(eps)));
    r[std::size_t(i)] = ri;
    for (index_t j = 0; j < d; ++j) y.data()[i * d + j] = xr[j] * ri;
  }
}

/// dx += r·(dy − y·mean(dy ⊙ y)) per row: the reverse of rms_forward.
template <class T>
void rms_backward(rsq::matrix<T> const& y, std::vector<T> const& r, rsq::matrix<T> const& dy, rsq::matrix<T>& dx) {
  index_t const rows = index_t(y.shape()[0]), d = index_t(y.shape()[1]);
#pragma omp parallel for schedule(static)
  for (index_t i = 0; i < rows; ++i) {
    T const* yr = y.data() + i * d;
    T const* g = dy.data() + i * d;
    double dot = 0;
    for (index_t j = 0; j < d; ++j) dot += double(g[j]) * double(yr[j]);
    T const mean = T(dot / double(d)), ri = r[std::size_t(i)];
    for (index_t j = 0; j < d; ++j) dx.data()[i * d + j] += ri * (g[j] - yr[j] * mean);
  }
}

/// cos/sin(pos·f_i) (nn::rope_inverse_frequency), rounded to float as the forward pass's tables are.
struct rope_table {
  std::vector<double> cos, sin;  // (L, head_dim / 2)
};

[[nodiscard]] inline rope_table make_rope(llama_config const& c, index_t L) {
  index_t const half = c.head_size() / 2;
  rope_table t;
  t.cos.resize(std::size_t(L * half));
  t.sin.resize(std::size_t(L * half));
  for (index_t i = 0; i < half; ++i) {
    double const f = nn::rope_inverse_frequency(c.rope_theta, c.head_size(), c.rope_scaling, i);
    for (index_t p = 0; p < L; ++p) {
      t.cos[std::size_t(p * half + i)] = double(float(std::cos(double(p) * f)));
      t.sin[std::size_t(p * half + i)] = double(float(std::sin(double(p) * f)));
    }
  }
  return t;
}

/// Rotates the pairs (2i, 2i+1) of every head of @p x (tokens, heads·hd) by +angle (forward) or −angle (reverse).
template <class T>
void rope(rsq::matrix<T>& x, rope_table const& t, index_t L, index_t hd, bool reverse) {
  index_t const rows = index_t(x.shape()[0]), w = index_t(x.shape()[1]), half = hd / 2;
  T const sign = reverse ? T(-1) : T(1);
#pragma omp parallel for schedule(static)
  for (index_t r = 0; r < rows; ++r) {
    double const* c = t.cos.data() + (r % L) * half;
    double const* s = t.sin.data() + (r % L) * half;
    for (index_t h = 0; h < w / hd; ++h) {
      T* v = x.data() + r * w + h * hd;
      for (index_t i = 0; i < half; ++i) {
        T const a = v[2 * i], b = v[2 * i + 1], ci = T(c[i]), si = sign * T(s[i]);
        v[2 * i] = a * ci - b * si;
        v[2 * i + 1] = a * si + b * ci;
      }
    }
  }
}

/// Causal GQA attention of every (sequence, KV head): probs (S·H, L, L) and o (tokens, q_dim).
template <class T>
void attention_forward(layer_tape<T>& tp, llama_config const& c, index_t S, index_t L) {
  using linalg::op;
  index_t const hd = c.head_size(), H = c.n_heads, KV = c.n_kv_heads, group = H / KV;
  T const scale = T(1.0 / std::sqrt(double(hd)));
  ensure(tp.probs, S * H * L, L);
  ensure(tp.o, S * L, c.q_dim());  // every head's block is written whole
#pragma omp parallel for schedule(dynamic, 1)
  for (index_t item = 0; item < S * KV; ++item) {
    index_t const s = item / KV, g = item % KV;
    auto const k = columns(rows(cv(tp.k), s * L, L), g * hd, hd);
    auto const v = columns(rows(cv(tp.v), s * L, L), g * hd, hd);
    for (index_t h = g * group; h < (g + 1) * group; ++h) {
      auto const q = columns(rows(cv(tp.q), s * L, L), h * hd, hd);
      auto const p = rows(rsq::view(tp.probs), (s * H + h) * L, L);
      gemm<T>(q, op::none, k, op::transpose, p, 0, double(scale));
      for (index_t i = 0; i < L; ++i) {
        T* row = p.data() + i * L;
        T mx = row[0];
        for (index_t j = 1; j <= i; ++j) mx = std::max(mx, row[j]);
        double sum = 0;
        for (index_t j = 0; j <= i; ++j) {
          row[j] = T(std::exp(double(row[j] - mx)));
          sum += double(row[j]);
        }
        T const inv = T(1.0 / sum);
        for (index_t j = 0; j <= i; ++j) row[j] *= inv;
        for (index_t j = i + 1; j < L; ++j) row[j] = T(0);
      }
      gemm<T>(matrix_view<const T>(p), op::none, v, op::none, columns(rows(rsq::view(tp.o), s * L, L), h * hd, hd));
    }
  }
}

/// The reverse of attention_forward: dq, dk, dv (post-RoPE q and k) from do.
template <class T>
void attention_backward(layer_tape<T> const& tp, rsq::matrix<T> const& d_o, llama_config const& c, index_t S,
                        index_t L, rsq::matrix<T>& dq, rsq::matrix<T>& dk, rsq::matrix<T>& dv, rsq::matrix<T>& dps) {
  using linalg::op;
  index_t const hd = c.head_size(), H = c.n_heads, KV = c.n_kv_heads, group = H / KV;
  T const scale = T(1.0 / std::sqrt(double(hd)));
  ensure(dq, S * L, c.q_dim());  // every head's block is written whole
  fill_zero(dk, S * L, c.kv_dim());
  fill_zero(dv, S * L, c.kv_dim());
  ensure(dps, S * KV * L, L);  // one (L, L) scratch per item
#pragma omp parallel for schedule(dynamic, 1)
  for (index_t item = 0; item < S * KV; ++item) {
    index_t const s = item / KV, g = item % KV;
    auto const k = columns(rows(cv(tp.k), s * L, L), g * hd, hd);
    auto const v = columns(rows(cv(tp.v), s * L, L), g * hd, hd);
    auto const dks = columns(rows(rsq::view(dk), s * L, L), g * hd, hd);
    auto const dvs = columns(rows(rsq::view(dv), s * L, L), g * hd, hd);
    auto const dp = rows(rsq::view(dps), item * L, L);
    for (index_t h = g * group; h < (g + 1) * group; ++h) {
      auto const q = columns(rows(cv(tp.q), s * L, L), h * hd, hd);
      auto const go = columns(rows(cv(d_o), s * L, L), h * hd, hd);
      auto const p = rows(cv(tp.probs), (s * H + h) * L, L);
      gemm<T>(p, op::transpose, go, op::none, dvs, 1);               // dv += Pᵀ do
      gemm<T>(go, op::none, v, op::transpose, dp);                  // dP = do vᵀ
      for (index_t i = 0; i < L; ++i) {                             // dS = P ⊙ (dP − Σ_j P dP)
        T* dr = dp.data() + i * L;
        T const* pr = p.data() + i * p.stride(0);
        double dot = 0;
        for (index_t j = 0; j <= i; ++j) dot += double(dr[j]) * double(pr[j]);
        for (index_t j = 0; j <= i; ++j) dr[j] = pr[j] * (dr[j] - T(dot));
        for (index_t j = i + 1; j < L; ++j) dr[j] = T(0);
      }
      gemm<T>(matrix_view<const T>(dp), op::none, k, op::none, columns(rows(rsq::view(dq), s * L, L), h * hd, hd), 0,
              double(scale));
      gemm<T>(matrix_view<const T>(dp), op::transpose, q, op::none, dks, 1, double(scale));
    }
  }
}

/// silu and its derivative.
template <class T>
[[nodiscard]] T sigmoid(T a) {
  return T(1) / (T(1) + std::exp(-a));
}

/// Gradients of the forward weights, of the classifier and of R1 through the embedding rows, summed over chunks.
template <class T>
struct weight_grads {
  std::vector<dense_layer<T>> layers;
  rsq::matrix<T> classifier;    ///< (vocab, dim)
  rsq::matrix<T> r1_embedding;  ///< (dim, dim): E[tok]ᵀ G_x0
};

/// Every buffer of the objective, kept from call to call (see ensure()).
template <class T>
struct chunk_buffers {
  std::vector<layer_tape<T>> tape;
  rsq::matrix<T> x, nf, logits, dnf, dx, du, dm, d_o, dq, dk, dv, dps, dn, e;
  std::vector<T> rf;
  std::vector<rotated_layer<T>> rotated;
  std::vector<dense_layer<T>> weights;
  rsq::matrix<T> emb, cls;
  weight_grads<T> grads;
};

/// Forward (and, with @p grads, reverse) pass of one chunk of sequences @p ids (S, L) on the weights in @p ws;
/// returns the chunk's summed cross-entropy.
template <class T>
double run_chunk(rotation_problem<T> const& p, chunk_buffers<T>& ws, matrix_view<const std::int32_t> ids,
                 rope_table const& rt, index_t total_predictions, bool with_gradient) {
  using linalg::op;
  auto const& c = p.config;
  auto const& w = ws.weights;
  index_t const S = ids.rows(), L = ids.cols(), Tn = S * L, d = c.dim, V = c.vocab_size;
  float const eps = c.norm_eps;
  ws.tape.resize(std::size_t(c.n_layers));
  auto& x = ws.x;
  ensure(x, Tn, d);
  for (index_t s = 0; s < S; ++s)
    for (index_t t = 0; t < L; ++t)
      std::copy_n(ws.emb.data() + index_t(ids(s, t)) * d, d, x.data() + (s * L + t) * d);
  for (int l = 0; l < c.n_layers; ++l) {
    // The forward alone keeps one tape, reused by every layer.
    auto& tp = ws.tape[with_gradient ? std::size_t(l) : 0];
    auto const& lw = w[std::size_t(l)];
    copy_into(tp.x, x);
    rms_forward(tp.x, eps, tp.n, tp.r_att);
    mul_into(tp.q, tp.n, op::none, lw.wq, op::transpose);
    mul_into(tp.k, tp.n, op::none, lw.wk, op::transpose);
    mul_into(tp.v, tp.n, op::none, lw.wv, op::transpose);
    rope(tp.q, rt, L, c.head_size(), false);
    rope(tp.k, rt, L, c.head_size(), false);
    attention_forward(tp, c, S, L);
    gemm<T>(cv(tp.o), op::none, cv(lw.wo), op::transpose, rsq::view(x), 1);
    copy_into(tp.x1, x);
    rms_forward(tp.x1, eps, tp.m, tp.r_ffn);
    mul_into(tp.a, tp.m, op::none, lw.w1, op::transpose);
    mul_into(tp.b, tp.m, op::none, lw.w3, op::transpose);
    ensure(tp.u, Tn, c.hidden_dim);
    for (std::size_t i = 0; i < tp.u.size(); ++i) {
      T const a = tp.a.data()[i];
      tp.u.data()[i] = a * sigmoid(a) * tp.b.data()[i];
    }
    gemm<T>(cv(tp.u), op::none, cv(lw.w2), op::transpose, rsq::view(x), 1);
  }
  auto& nf = ws.nf;
  rms_forward(x, eps, nf, ws.rf);
  auto& logits = ws.logits;
  mul_into(logits, nf, op::none, ws.cls, op::transpose);  // (tokens, vocab)
  // Cross-entropy of the predictions t < L − 1; logits become dL/dlogits = (softmax − onehot) / total_predictions.
  std::vector<double> row_loss(std::size_t(Tn), 0.0);
#pragma omp parallel for schedule(static)
  for (index_t r = 0; r < Tn; ++r) {
    T* z = logits.data() + r * V;
    index_t const s = r / L, t = r % L;
    if (t == L - 1) {
      std::fill(z, z + V, T(0));
      continue;
    }
    index_t const target = ids(s, t + 1);
    T mx = z[0];
    for (index_t j = 1; j < V; ++j) mx = std::max(mx, z[j]);
    double sum = 0;
    for (index_t j = 0; j < V; ++j) sum += std::exp(double(z[j] - mx));
    row_loss[std::size_t(r)] = std::log(sum) + double(mx) - double(z[target]);
    if (!with_gradient) continue;
    double const scale = 1.0 / sum / double(total_predictions);
    for (index_t j = 0; j < V; ++j) z[j] = T(std::exp(double(z[j] - mx)) * scale);
    z[target] -= T(1.0 / double(total_predictions));
  }
  double chunk_loss = 0;
  for (double v : row_loss) chunk_loss += v;  // in token order: the same sum for any thread count
  if (!with_gradient) return chunk_loss;

  // Reverse pass.
  auto& grads = ws.grads;
  gemm<T>(cv(logits), op::transpose, cv(nf), op::none, rsq::view(grads.classifier), 1);
  mul_into(ws.dnf, logits, op::none, ws.cls, op::none);  // (tokens, dim)
  auto& dx = ws.dx;
  fill_zero(dx, Tn, d);
  rms_backward(nf, ws.rf, ws.dnf, dx);
  for (int l = c.n_layers - 1; l >= 0; --l) {
    auto& tp = ws.tape[std::size_t(l)];
    auto const& lw = w[std::size_t(l)];
    auto& g = grads.layers[std::size_t(l)];
    // FFN: x2 = x1 + u W2ᵀ.
    gemm<T>(cv(dx), op::transpose, cv(tp.u), op::none, rsq::view(g.w2), 1);
    mul_into(ws.du, dx, op::none, lw.w2, op::none);  // (tokens, hidden)
    for (std::size_t i = 0; i < ws.du.size(); ++i) {
      T const a = tp.a.data()[i], sg = sigmoid(a), gu = ws.du.data()[i];
      tp.a.data()[i] = gu * tp.b.data()[i] * sg * (T(1) + a * (T(1) - sg));  // da
      tp.b.data()[i] = gu * a * sg;                                          // db
    }
    gemm<T>(cv(tp.a), op::transpose, cv(tp.m), op::none, rsq::view(g.w1), 1);
    gemm<T>(cv(tp.b), op::transpose, cv(tp.m), op::none, rsq::view(g.w3), 1);
    mul_into(ws.dm, tp.a, op::none, lw.w1, op::none);
    gemm<T>(cv(tp.b), op::none, cv(lw.w3), op::none, rsq::view(ws.dm), 1);
    rms_backward(tp.m, tp.r_ffn, ws.dm, dx);  // dx is now dL/dx1
    // Attention: x1 = x + o Woᵀ.
    gemm<T>(cv(dx), op::transpose, cv(tp.o), op::none, rsq::view(g.wo), 1);
    mul_into(ws.d_o, dx, op::none, lw.wo, op::none);  // (tokens, q_dim)
    attention_backward(tp, ws.d_o, c, S, L, ws.dq, ws.dk, ws.dv, ws.dps);
    rope(ws.dq, rt, L, c.head_size(), true);
    rope(ws.dk, rt, L, c.head_size(), true);
    gemm<T>(cv(ws.dq), op::transpose, cv(tp.n), op::none, rsq::view(g.wq), 1);
    gemm<T>(cv(ws.dk), op::transpose, cv(tp.n), op::none, rsq::view(g.wk), 1);
    gemm<T>(cv(ws.dv), op::transpose, cv(tp.n), op::none, rsq::view(g.wv), 1);
    mul_into(ws.dn, ws.dq, op::none, lw.wq, op::none);
    gemm<T>(cv(ws.dk), op::none, cv(lw.wk), op::none, rsq::view(ws.dn), 1);
    gemm<T>(cv(ws.dv), op::none, cv(lw.wv), op::none, rsq::view(ws.dn), 1);
    rms_backward(tp.n, tp.r_att, ws.dn, dx);  // dx is now dL/dx of layer l
  }
  // The embedding rows: x0 = E[tok]·R1, so ∂R1 += E[tok]ᵀ dx0.
  ensure(ws.e, Tn, d);
  for (index_t s = 0; s < S; ++s)
    for (index_t t = 0; t < L; ++t)
      std::copy_n(p.embedding.data() + index_t(ids(s, t)) * d, d, ws.e.data() + (s * L + t) * d);
  gemm<T>(cv(ws.e), op::transpose, cv(dx), op::none, rsq::view(grads.r1_embedding), 1);
  return chunk_loss;
}

template <class T>
void expect_tokens(rotation_problem<T> const& p, matrix_view<const std::int32_t> ids, char const* who) {
  RSQ_EXPECTS(ids.rows() > 0 && ids.cols() >= 2, who, ": need at least one sequence of 2 or more tokens, got ",
              rsq::detail::shape_string(ids));
  RSQ_EXPECTS(ids.cols() <= p.config.seq_len, who, ": sequences of ", ids.cols(), " tokens exceed the model's seq_len ",
              p.config.seq_len);
  for (index_t s = 0; s < ids.rows(); ++s)
    for (index_t t = 0; t < ids.cols(); ++t)
      RSQ_EXPECTS(ids(s, t) >= 0 && ids(s, t) < p.config.vocab_size, who, ": token id ", ids(s, t), " at (", s, ", ",
                  t, ") is outside the vocabulary [0, ", p.config.vocab_size, ")");
}

}  // namespace rotation_detail

/// The fixed parts of the objective for @p m: its norms fused (in float64), converted to T; the online Hadamards
/// that quantize_model() attaches under @p rotation (none when rotate_options::online_hadamards is off).
/// @throws rsq::invalid_argument for a malformed or rotated model, biases, or sizes without a Hadamard construction
template <std::floating_point T>
[[nodiscard]] rotation_problem<T> make_rotation_problem(llama_model const& m, rotate_options const& rotation = {}) {
  using rotation_detail::convert;
  validate(m, /*check_finite=*/true);
  expect_plain(m, "make_rotation_problem");
  auto const& c = m.config;
  RSQ_EXPECTS(!c.qkv_bias && !c.o_bias && !c.mlp_bias, "make_rotation_problem: models with biases are not supported");
  RSQ_EXPECTS(!rotation.center_embeddings, "make_rotation_problem: embedding centring is not function-preserving and "
              "is not supported with learned rotations");
  llama_model f = m;
  fuse_norms(f);
  rotation_problem<T> p;
  p.config = c;
  p.embedding = convert<T>(f.token_embedding);
  p.classifier = convert<T>(f.classifier);
  for (auto const& L : f.layers) {
    dense_layer<T> d;
    for (linear_id id : all_linears) d.weight(id) = convert<T>(L.weight(id));
    p.layers.push_back(std::move(d));
  }
  p.online = plan_rotation(c, rotation).online;
  return p;
}

/// The loss and its gradient with respect to R1 and R2 (in float64; the arithmetic in T).
struct rotation_gradient {
  double loss = 0;       ///< mean next-token cross-entropy over the batch
  index_t count = 0;     ///< predictions: sequences · (L − 1)
  learned_rotation grad; ///< ∂loss/∂R1 (dim, dim), ∂loss/∂R2 per layer (head_dim, head_dim)
};

namespace rotation_detail {

template <class T>
[[nodiscard]] rotation_gradient evaluate(rotation_problem<T> const& p, learned_rotation const& r,
                                         matrix_view<const std::int32_t> ids, rotation_loss_options const& opt,
                                         quantization_offsets<T> const* frozen, bool with_gradient,
                                         chunk_buffers<T>& ws) {
  using linalg::op;
  auto const& c = p.config;
  opt.validate();
  validate(r, c, /*tolerance=*/1e30);  // shapes only: the finite-difference tests evaluate off the manifold
  expect_tokens(p, ids, "rotation loss");
  RSQ_EXPECTS(frozen == nullptr || frozen->size() == p.layers.size(), "rotation loss: offsets for ",
              frozen ? frozen->size() : 0, " layers, the model has ", p.layers.size());
  auto const r1 = convert<T>(r.r1);
  std::vector<rsq::matrix<T>> r2;
  for (auto const& m : r.r2) r2.push_back(convert<T>(m));
  ws.rotated.resize(std::size_t(c.n_layers));
  ws.weights.resize(std::size_t(c.n_layers));
  auto const& rotated = ws.rotated;
  for (int l = 0; l < c.n_layers; ++l) {
    rotate_into(ws.rotated[std::size_t(l)], p.layers[std::size_t(l)], r1, r2[std::size_t(l)], c);
    forward_weights_into(ws.weights[std::size_t(l)], ws.rotated[std::size_t(l)], p, opt,
                         frozen ? &(*frozen)[std::size_t(l)] : nullptr);
  }
  mul_into(ws.emb, p.embedding, op::none, r1, op::none);
  mul_into(ws.cls, p.classifier, op::none, r1, op::none);
  auto const rt = make_rope(c, ids.cols());
  index_t const S = ids.rows(), L = ids.cols(), total = S * (L - 1);
  auto& g = ws.grads;
  if (with_gradient) {
    g.layers.resize(std::size_t(c.n_layers));
    for (int l = 0; l < c.n_layers; ++l)
      for (linear_id id : all_linears) {
        auto const shape = weight_shape(c, id);
        fill_zero(g.layers[std::size_t(l)].weight(id), shape[0], shape[1]);
      }
    fill_zero(g.classifier, c.vocab_size, c.dim);
    fill_zero(g.r1_embedding, c.dim, c.dim);
  }
  double loss_sum = 0;  // chunk by chunk, in order
  for (index_t s0 = 0; s0 < S; s0 += opt.chunk_sequences) {
    index_t const n = std::min(opt.chunk_sequences, S - s0);
    matrix_view<const std::int32_t> chunk(ids.data() + s0 * ids.stride(0), {n, L}, {ids.stride(0), ids.stride(1)});
    loss_sum += run_chunk(p, ws, chunk, rt, total, with_gradient);
  }
  rotation_gradient out;
  out.count = total;
  out.loss = loss_sum / double(total);
  if (!with_gradient) return out;

  // Chain rule to R1 and R2 (file comment).
  index_t const hd = c.head_size();
  auto g1 = mul(p.classifier, op::transpose, g.classifier, op::none);  // Cᵀ G_C
  std::transform(g1.begin(), g1.end(), g.r1_embedding.begin(), g1.begin(), [](T a, T b) { return a + b; });
  out.grad.r1 = rsq::make_matrix<double>(c.dim, c.dim);
  for (int l = 0; l < c.n_layers; ++l) {
    auto const& a = p.layers[std::size_t(l)];
    auto const& gl = g.layers[std::size_t(l)];
    auto const& rl = rotated[std::size_t(l)];
    auto const& r2l = r2[std::size_t(l)];
    for (linear_id id : {linear_id::wq, linear_id::wk, linear_id::w1, linear_id::w3})
      gemm<T>(cv(a.weight(id)), op::transpose, cv(gl.weight(id)), op::none, rsq::view(g1), 1);
    gemm<T>(cv(a.w2), op::none, cv(gl.w2), op::transpose, rsq::view(g1), 1);
    gemm<T>(cv(rl.o_mid), op::none, cv(gl.wo), op::transpose, rsq::view(g1), 1);
    auto gv = rsq::make_matrix<T>(c.kv_dim(), c.dim);  // (I ⊗ R2) G_v
    auto g2 = rsq::make_matrix<T>(hd, hd);
    for (index_t k = 0; k < c.n_kv_heads; ++k) {
      gemm<T>(cv(r2l), op::none, rows(cv(gl.wv), k * hd, hd), op::none, rows(rsq::view(gv), k * hd, hd));
      gemm<T>(rows(cv(rl.v_in), k * hd, hd), op::none, rows(cv(gl.wv), k * hd, hd), op::transpose, rsq::view(g2), 1);
    }
    gemm<T>(cv(a.wv), op::transpose, cv(gv), op::none, rsq::view(g1), 1);
    auto const gco = mul(r1, op::none, gl.wo, op::none);  // R1 G_o (dim, q_dim)
    for (index_t h = 0; h < c.n_heads; ++h)
      gemm<T>(columns(cv(a.wo), h * hd, hd), op::transpose, columns(cv(gco), h * hd, hd), op::none, rsq::view(g2), 1);
    out.grad.r2.push_back(convert<double>(g2));
  }
  out.grad.r1 = convert<double>(g1);
  return out;
}

}  // namespace rotation_detail

/// The buffers of the objective, kept from call to call: pass the same one to every step of a learning loop and a
/// step allocates nothing after the first (the pages of fresh buffers cost more than the arithmetic on them).
template <std::floating_point T>
struct rotation_workspace {
  rotation_detail::chunk_buffers<T> buffers;
};

/// The mean next-token cross-entropy of @p ids (sequences, L) at rotation @p r, through fake-quantized weights when
/// `opt.grid` is set (or W = N(R) + D with @p frozen offsets D).
/// @throws rsq::invalid_argument for shapes that do not fit, ids outside the vocabulary, L < 2 or > seq_len
template <backend_tag B, std::floating_point T>
[[nodiscard]] double rotation_loss(B const&, rotation_problem<T> const& p, learned_rotation const& r,
                                   matrix_view<const std::int32_t> ids, rotation_loss_options const& opt = {},
                                   quantization_offsets<T> const* frozen = nullptr,
                                   rotation_workspace<T>* workspace = nullptr) {
  static_assert(std::is_same_v<B, backend::cpu_eigen>, "rotation_loss: the reverse pass runs on the CPU backend only");
  rotation_workspace<T> local;
  return rotation_detail::evaluate(p, r, ids, opt, frozen, false, (workspace ? *workspace : local).buffers).loss;
}

/// rotation_loss() and its gradient with respect to R1 and R2 (straight-through through the rounding).
template <backend_tag B, std::floating_point T>
[[nodiscard]] rotation_gradient rotation_loss_and_gradient(B const&, rotation_problem<T> const& p,
                                                           learned_rotation const& r,
                                                           matrix_view<const std::int32_t> ids,
                                                           rotation_loss_options const& opt = {},
                                                           quantization_offsets<T> const* frozen = nullptr,
                                                           rotation_workspace<T>* workspace = nullptr) {
  static_assert(std::is_same_v<B, backend::cpu_eigen>,
                "rotation_loss_and_gradient: the reverse pass runs on the CPU backend only");
  rotation_workspace<T> local;
  return rotation_detail::evaluate(p, r, ids, opt, frozen, true, (workspace ? *workspace : local).buffers);
}

/// The rounding offsets D = Q(N(R)) − N(R) of every linear at rotation @p r on `opt.grid`, for the frozen-rounding
/// objective (file comment).
template <std::floating_point T>
[[nodiscard]] quantization_offsets<T> make_quantization_offsets(rotation_problem<T> const& p, learned_rotation const& r,
                                                                rotation_loss_options const& opt) {
  using namespace rotation_detail;
  RSQ_EXPECTS(opt.grid.has_value(), "make_quantization_offsets: the options name no grid");
  auto const r1 = convert<T>(r.r1);
  quantization_offsets<T> out;
  for (int l = 0; l < p.config.n_layers; ++l) {
    auto const rl = rotate(p.layers[std::size_t(l)], r1, convert<T>(r.r2[std::size_t(l)]), p.config);
    dense_layer<T> d;
    for (linear_id id : all_linears) {
      auto n = rl.m.weight(id);
      online_fold(p.online, p.config, id, n, false);
      auto q = fake_quantize(n, *opt.grid, opt.group_size);
      std::transform(q.begin(), q.end(), n.begin(), q.begin(), [](T a, T b) { return a - b; });
      d.weight(id) = std::move(q);
    }
    out.push_back(std::move(d));
  }
  return out;
}

}  // namespace rsq::model
