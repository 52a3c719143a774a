// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Causal softmax attention of Llama (GQA), with the AttnCon scores of RSQ (spec §4.2) computed on the way:
///   out_h = softmax(q_h k_gᵀ · scale, causal) v_g,  g = h div (heads / kv_heads),
///   s_t = Σ_h Σ_{i ≥ t} P_h[i, t]   (the attention each key token receives, per sequence).
/// Implementations work in blocks of queries, so that no (L, L) probability matrix is ever held for a whole head.
///
/// An implementation of algorithm::causal_attention provides
///   static void run(B const&, matrix_view<const float> q, matrix_view<const float> k, matrix_view<const float> v,
///                   matrix_view<float> out, attention_options const&, matrix_view<float> scores);
/// (arguments checked; v and out both empty: scores only; scores empty: none; column sums in float64, in an order
/// that does not depend on the number of threads).

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/nn.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/nn/checks.hpp"
#include "rsq/nn/options.hpp"

namespace rsq::nn {

/// Causal attention of @p q (sequences·L, heads·head_dim) after RoPE with @p k, @p v (sequences·L,
/// kv_heads·head_dim) into @p out (sequences·L, heads·head_dim), and optionally the raw AttnCon scores of each
/// sequence into @p scores (sequences, L). With @p v and @p out empty only the scores are computed (the
/// importances of RSQ need the probabilities, not the output). Every array in @p be's memory, rows contiguous.
/// @throws rsq::invalid_argument for shapes that do not match the options, heads not a multiple of kv_heads
template <backend_tag B>
void causal_attention(B const& be, matrix_view<const float> q, matrix_view<const float> k, matrix_view<const float> v,
                      matrix_view<float> out, attention_options const& opt, matrix_view<float> scores = {}) {
  RSQ_EXPECTS(opt.seq_len > 0 && opt.heads > 0 && opt.kv_heads > 0 && opt.head_dim > 0,
              "causal_attention: seq_len, heads, kv_heads and head_dim must be positive");
  RSQ_EXPECTS(opt.heads % opt.kv_heads == 0, "causal_attention: the ", opt.heads,
              " query heads are not a multiple of the ", opt.kv_heads, " KV heads");
  RSQ_EXPECTS(opt.softmax_scale >= 0 && opt.softmax_scale < 1e30,
              "causal_attention: softmax_scale must be >= 0 (0: 1/sqrt(head_dim)), got ", opt.softmax_scale);
  detail::expect_operand(be, q, "causal_attention", "q");
  detail::expect_operand(be, k, "causal_attention", "k");
  RSQ_EXPECTS(q.rows() % opt.seq_len == 0, "causal_attention: ", q.rows(),
              " rows are not whole sequences of seq_len = ", opt.seq_len);
  index_t const tokens = q.rows(), sequences = tokens / opt.seq_len;
  detail::expect_shape(q, tokens, opt.heads * opt.head_dim, "causal_attention", "q");
  detail::expect_shape(k, tokens, opt.kv_heads * opt.head_dim, "causal_attention", "k");
  bool const with_output = v.data() != nullptr || out.data() != nullptr;
  if (with_output) {
    detail::expect_operand(be, v, "causal_attention", "v");
    detail::expect_operand(be, out, "causal_attention", "out");
    detail::expect_shape(v, tokens, opt.kv_heads * opt.head_dim, "causal_attention", "v");
    detail::expect_shape(out, tokens, opt.heads * opt.head_dim, "causal_attention", "out");
  }
  if (scores.data() != nullptr) {
    detail::expect_operand(be, scores, "causal_attention", "scores");
    detail::expect_shape(scores, sequences, opt.seq_len, "causal_attention", "scores");
  }
  RSQ_EXPECTS(with_output || scores.data() != nullptr, "causal_attention: nothing to compute (no output, no scores)");
  backend::implementation_t<algorithm::causal_attention, B>::run(be, q, k, v, out, opt, scores);
}

}  // namespace rsq::nn
