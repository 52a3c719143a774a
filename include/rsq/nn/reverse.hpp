// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The pieces of the Llama forward pass in the form reverse-mode differentiation needs, and their reverses: what
/// model/rotation_gradient.hpp chains into the gradient of the next-token loss with respect to a model's rotations.
/// The forward pieces of rsq::nn (<rsq/nn/*.hpp>) are fused and blocked for a quantization pipeline that never
/// differentiates; these keep what the reverse reads (RMSNorm's 1/rms per row) and take T = float or double (the
/// finite-difference tests run in double). Activations are (tokens, features) row-major matrices with contiguous
/// rows, the tokens of the sequences one after another.
///
/// An implementation of algorithm::reverse_pass provides (arguments checked by the front ends below, every array in
/// the backend's memory except the token ids, which are in host memory):
///   template <class T> static void fill(B const&, matrix_view<T> m, T value);
///   template <class T> static void gather_rows(B const&, matrix_view<const std::int32_t> ids,
///                                              matrix_view<const T> table, matrix_view<T> out);
///   template <class T> static void rms_forward(B const&, matrix_view<const T> x, float eps, matrix_view<T> y,
///                                              vector_view<T> r);
///   template <class T> static void rms_backward(B const&, matrix_view<const T> y, vector_view<const T> r,
///                                               matrix_view<const T> dy, matrix_view<T> dx);
///   template <class T> static void rope(B const&, matrix_view<T> x, matrix_view<const T> cos,
///                                       matrix_view<const T> sin, index_t head_dim, bool reverse);
///   template <class T> static void attention_forward(B const&, matrix_view<const T> q, matrix_view<const T> k,
///                                                    matrix_view<const T> v, matrix_view<T> out,
///                                                    attention_options const&);
///   template <class T> static void attention_backward(B const&, matrix_view<const T> q, matrix_view<const T> k,
///                                                     matrix_view<const T> v, matrix_view<const T> d_out,
///                                                     matrix_view<T> dq, matrix_view<T> dk, matrix_view<T> dv,
///                                                     attention_options const&);
///   template <class T> static void swiglu_forward(B const&, matrix_view<const T> a, matrix_view<const T> b,
///                                                 matrix_view<T> u);
///   template <class T> static void swiglu_backward(B const&, matrix_view<T> a, matrix_view<T> b,
///                                                  matrix_view<const T> du);
///   template <class T> static double cross_entropy(B const&, matrix_view<T> logits,
///                                                  matrix_view<const std::int32_t> ids, index_t predictions,
///                                                  bool gradient);
/// A backend may implement T = float only (the CUDA backend does): a double call then fails to compile.
///
/// Determinism: every result is the same bits for any number of threads and from run to run (no float atomics; sums
/// that cross rows are taken in a fixed order).

#include <cstdint>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/reverse.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/nn/checks.hpp"
#include "rsq/nn/options.hpp"

namespace rsq::nn {

namespace detail {

template <backend_tag B>
using reverse_impl = backend::implementation_t<algorithm::reverse_pass, B>;

/// Throws unless @p ids is (sequences, L) with L ≥ 1 covering @p rows rows and every id is in [0, @p vocab).
inline void expect_ids(matrix_view<const std::int32_t> ids, index_t rows, index_t vocab, std::string_view who) {
  RSQ_EXPECTS(ids.rows() * ids.cols() == rows, who, ": ids ", rsq::detail::shape_string(ids), " do not cover the ",
              rows, " rows");
  for (index_t s = 0; s < ids.rows(); ++s)
    for (index_t t = 0; t < ids.cols(); ++t)
      RSQ_EXPECTS(ids(s, t) >= 0 && ids(s, t) < vocab, who, ": token id ", ids(s, t), " at (", s, ", ", t,
                  ") is outside [0, ", vocab, ")");
}

/// The checks every attention piece shares: q (tokens, heads·head_dim), k and v (tokens, kv_heads·head_dim).
template <backend_tag B, class T>
void expect_attention(B const& be, matrix_view<const T> q, matrix_view<const T> k, matrix_view<const T> v,
                      attention_options const& opt, std::string_view who) {
  RSQ_EXPECTS(opt.seq_len > 0 && opt.heads > 0 && opt.kv_heads > 0 && opt.head_dim > 0 &&
                  opt.heads % opt.kv_heads == 0,
              who, ": seq_len, heads, kv_heads and head_dim must be positive, heads a multiple of kv_heads");
  detail::expect_operand(be, q, who, "q");
  detail::expect_operand(be, k, who, "k");
  detail::expect_operand(be, v, who, "v");
  RSQ_EXPECTS(q.rows() % opt.seq_len == 0, who, ": ", q.rows(), " rows are not whole sequences of ", opt.seq_len);
  detail::expect_shape(q, q.rows(), opt.heads * opt.head_dim, who, "q");
  detail::expect_shape(k, q.rows(), opt.kv_heads * opt.head_dim, who, "k");
  detail::expect_shape(v, q.rows(), opt.kv_heads * opt.head_dim, who, "v");
}

}  // namespace detail

/// m ← value everywhere; @p m in @p be's memory.
template <backend_tag B, class T>
void fill(B const& be, matrix_view<T> m, T value) {
  if (m.size() == 0) return;
  detail::expect_operand(be, m, "fill", "m");
  detail::reverse_impl<B>::fill(be, m, value);
}

/// out(s·L + t) ← table(ids(s, t)): the embedding rows of @p ids (sequences, L, host memory); @p table (vocab, dim)
/// and @p out (sequences·L, dim) in @p be's memory.
template <backend_tag B, class T>
void gather_rows(B const& be, matrix_view<const std::int32_t> ids, matrix_view<const T> table, matrix_view<T> out) {
  detail::expect_operand(be, table, "gather_rows", "table");
  detail::expect_operand(be, out, "gather_rows", "out");
  detail::expect_shape(out, out.rows(), table.cols(), "gather_rows", "out");
  detail::expect_ids(ids, out.rows(), table.rows(), "gather_rows");
  detail::reverse_impl<B>::gather_rows(be, ids, table, out);
}

/// y ← x·r and r ← 1/√(mean(x²) + eps) per row: RMSNorm with gains of ones (a model with its norms fused), keeping
/// r for rms_backward.
template <backend_tag B, class T>
void rms_forward(B const& be, matrix_view<const T> x, float eps, matrix_view<T> y, vector_view<T> r) {
  detail::expect_operand(be, x, "rms_forward", "x");
  detail::expect_operand(be, y, "rms_forward", "y");
  detail::expect_operand(be, r, "rms_forward", "r");
  detail::expect_shape(y, x.rows(), x.cols(), "rms_forward", "y");
  RSQ_EXPECTS(r.extent(0) == x.rows(), "rms_forward: r has ", r.extent(0), " values for ", x.rows(), " rows");
  RSQ_EXPECTS(eps > 0.f && eps < 1.f, "rms_forward: eps must be in (0, 1), got ", eps);
  detail::reverse_impl<B>::rms_forward(be, x, eps, y, r);
}

/// dx += r·(dy − y·mean(dy ⊙ y)) per row: the reverse of rms_forward (@p y and @p r what it returned).
template <backend_tag B, class T>
void rms_backward(B const& be, matrix_view<const T> y, vector_view<const T> r, matrix_view<const T> dy,
                  matrix_view<T> dx) {
  for (auto m : {y, dy}) detail::expect_operand(be, m, "rms_backward", "an operand");
  detail::expect_operand(be, r, "rms_backward", "r");
  detail::expect_operand(be, dx, "rms_backward", "dx");
  detail::expect_shape(dy, y.rows(), y.cols(), "rms_backward", "dy");
  detail::expect_shape(dx, y.rows(), y.cols(), "rms_backward", "dx");
  RSQ_EXPECTS(r.extent(0) == y.rows(), "rms_backward: r has ", r.extent(0), " values for ", y.rows(), " rows");
  detail::reverse_impl<B>::rms_backward(be, y, r, dy, dx);
}

/// Rotates the pairs (2i, 2i+1) of every head of @p x (sequences·L, heads·head_dim) by the angle of row mod L:
/// by +angle, or by −angle with @p reverse (the reverse of the rotation is its transpose). @p cos and @p sin are
/// (L, head_dim / 2) tables (nn::rope_inverse_frequency, as the forward pass's).
template <backend_tag B, class T>
void rope(B const& be, matrix_view<T> x, matrix_view<const T> cos, matrix_view<const T> sin, index_t head_dim,
          bool reverse) {
  detail::expect_operand(be, x, "rope", "x");
  detail::expect_operand(be, cos, "rope", "cos");
  detail::expect_operand(be, sin, "rope", "sin");
  RSQ_EXPECTS(head_dim > 0 && head_dim % 2 == 0 && x.cols() % head_dim == 0, "rope: head_dim ", head_dim,
              " must be even and divide the ", x.cols(), " features");
  detail::expect_shape(cos, cos.rows(), head_dim / 2, "rope", "cos");
  detail::expect_shape(sin, cos.rows(), head_dim / 2, "rope", "sin");
  RSQ_EXPECTS(x.rows() % cos.rows() == 0, "rope: ", x.rows(), " rows are not whole sequences of ", cos.rows());
  detail::reverse_impl<B>::rope(be, x, cos, sin, head_dim, reverse);
}

/// out ← causal softmax attention (GQA) of @p q (after RoPE) with @p k and @p v; nothing is kept: the reverse
/// recomputes the probabilities (the same bits), so that no (L, L) matrix per head and layer is stored.
template <backend_tag B, class T>
void attention_forward(B const& be, matrix_view<const T> q, matrix_view<const T> k, matrix_view<const T> v,
                       matrix_view<T> out, attention_options const& opt) {
  detail::expect_attention(be, q, k, v, opt, "attention_forward");
  detail::expect_operand(be, out, "attention_forward", "out");
  detail::expect_shape(out, q.rows(), q.cols(), "attention_forward", "out");
  detail::reverse_impl<B>::attention_forward(be, q, k, v, out, opt);
}

/// The reverse of attention_forward: dq ← ∂/∂q, dk ← ∂/∂k, dv ← ∂/∂v of ⟨d_out, out⟩ (overwritten, not accumulated).
template <backend_tag B, class T>
void attention_backward(B const& be, matrix_view<const T> q, matrix_view<const T> k, matrix_view<const T> v,
                        matrix_view<const T> d_out, matrix_view<T> dq, matrix_view<T> dk, matrix_view<T> dv,
                        attention_options const& opt) {
  detail::expect_attention(be, q, k, v, opt, "attention_backward");
  detail::expect_operand(be, d_out, "attention_backward", "d_out");
  detail::expect_operand(be, dq, "attention_backward", "dq");
  detail::expect_operand(be, dk, "attention_backward", "dk");
  detail::expect_operand(be, dv, "attention_backward", "dv");
  detail::expect_shape(d_out, q.rows(), q.cols(), "attention_backward", "d_out");
  detail::expect_shape(dq, q.rows(), q.cols(), "attention_backward", "dq");
  detail::expect_shape(dk, k.rows(), k.cols(), "attention_backward", "dk");
  detail::expect_shape(dv, v.rows(), v.cols(), "attention_backward", "dv");
  detail::reverse_impl<B>::attention_backward(be, q, k, v, d_out, dq, dk, dv, opt);
}

/// u ← silu(a) ⊙ b, keeping @p a and @p b for swiglu_backward.
template <backend_tag B, class T>
void swiglu_forward(B const& be, matrix_view<const T> a, matrix_view<const T> b, matrix_view<T> u) {
  detail::expect_operand(be, a, "swiglu_forward", "a");
  detail::expect_operand(be, b, "swiglu_forward", "b");
  detail::expect_operand(be, u, "swiglu_forward", "u");
  detail::expect_shape(b, a.rows(), a.cols(), "swiglu_forward", "b");
  detail::expect_shape(u, a.rows(), a.cols(), "swiglu_forward", "u");
  detail::reverse_impl<B>::swiglu_forward(be, a, b, u);
}

/// The reverse of swiglu_forward, in place: a ← du ⊙ b ⊙ silu'(a), b ← du ⊙ silu(a).
template <backend_tag B, class T>
void swiglu_backward(B const& be, matrix_view<T> a, matrix_view<T> b, matrix_view<const T> du) {
  detail::expect_operand(be, a, "swiglu_backward", "a");
  detail::expect_operand(be, b, "swiglu_backward", "b");
  detail::expect_operand(be, du, "swiglu_backward", "du");
  detail::expect_shape(b, a.rows(), a.cols(), "swiglu_backward", "b");
  detail::expect_shape(du, a.rows(), a.cols(), "swiglu_backward", "du");
  detail::reverse_impl<B>::swiglu_backward(be, a, b, du);
}

/// Σ −log softmax(logits row s·L + t)[ids(s, t + 1)] over t < L − 1, summed in float64 in token order; with
/// @p gradient, @p logits ← (softmax − onehot(target)) / predictions on those rows (the gradient of a mean over
/// @p predictions, which may count the predictions of other chunks too) and 0 on each sequence's last row.
/// @p logits (sequences·L, vocab) in @p be's memory, @p ids (sequences, L ≥ 2) in host memory.
template <backend_tag B, class T>
[[nodiscard]] double cross_entropy(B const& be, matrix_view<T> logits, matrix_view<const std::int32_t> ids,
                                   index_t predictions, bool gradient) {
  detail::expect_operand(be, logits, "cross_entropy", "logits");
  RSQ_EXPECTS(ids.cols() >= 2, "cross_entropy: sequences of ", ids.cols(), " tokens predict nothing");
  RSQ_EXPECTS(predictions > 0, "cross_entropy: predictions must be positive, got ", predictions);
  detail::expect_ids(ids, logits.rows(), logits.cols(), "cross_entropy");
  return detail::reverse_impl<B>::cross_entropy(be, logits, ids, predictions, gradient);
}

}  // namespace rsq::nn
