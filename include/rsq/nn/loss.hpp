// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The language-model head and its next-token loss: logits = classifier · RMSNorm(h), and
/// Σ_t −log softmax(logits_t)[id_{t+1}] over every position but the last of each sequence.
///
/// An implementation of algorithm::next_token_loss provides
///   static loss_sum run(B const&, matrix_view<const float> hidden, vector_view<const float> final_gains,
///                       matrix_view<const float> classifier, matrix_view<const std::int32_t> ids,
///                       loss_options const&);            // arguments checked, ids in host memory
///   static void logits(B const&, matrix_view<const float> hidden, vector_view<const float> final_gains,
///                      matrix_view<const float> classifier, float norm_eps, matmul_precision,
///                      matrix_view<float> logits);    // arguments checked
/// Implementations work on blocks of tokens, so that at most a (block, vocab) matrix of logits exists at a time; the
/// sum is taken in float64 in an order that does not depend on the number of threads.

#include <cstdint>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/nn.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/nn/checks.hpp"
#include "rsq/nn/options.hpp"

namespace rsq::nn {

/// Σ −log p(ids(s, t+1) | h(s, ..t)) and the number of predictions, for hidden states @p hidden (sequences·L, dim)
/// after the last decoder layer; @p final_gains (dim) and @p classifier (vocab, dim) in @p be's memory, @p ids
/// (sequences, L) in host memory.
/// @throws rsq::invalid_argument for shapes that do not match, L < 2, an id outside the vocabulary
template <backend_tag B>
[[nodiscard]] loss_sum next_token_loss(B const& be, matrix_view<const float> hidden,
                                       vector_view<const float> final_gains, matrix_view<const float> classifier,
                                       matrix_view<const std::int32_t> ids, loss_options const& opt) {
  detail::expect_operand(be, hidden, "next_token_loss", "hidden");
  detail::expect_operand(be, final_gains, "next_token_loss", "final_gains");
  detail::expect_operand(be, classifier, "next_token_loss", "classifier");
  RSQ_EXPECTS(opt.seq_len >= 2 && ids.cols() == opt.seq_len && ids.rows() * ids.cols() == hidden.rows(),
              "next_token_loss: ids ", rsq::detail::shape_string(ids), " must be (sequences x seq_len) with seq_len = ",
              opt.seq_len, " >= 2 and cover the ", hidden.rows(), " hidden rows");
  RSQ_EXPECTS(final_gains.extent(0) == hidden.cols() && classifier.cols() == hidden.cols(),
              "next_token_loss: final_gains (", final_gains.extent(0), ") and classifier ",
              rsq::detail::shape_string(classifier), " must match the hidden width ", hidden.cols());
  RSQ_EXPECTS(opt.norm_eps > 0.f && opt.norm_eps < 1.f, "next_token_loss: norm_eps must be in (0, 1), got ",
              opt.norm_eps);
  for (index_t s = 0; s < ids.rows(); ++s)
    for (index_t t = 1; t < ids.cols(); ++t)
      RSQ_EXPECTS(ids(s, t) >= 0 && index_t(ids(s, t)) < classifier.rows(), "next_token_loss: token id ", ids(s, t),
                  " at (", s, ", ", t, ") is outside the vocabulary [0, ", classifier.rows(), ")");
  return backend::implementation_t<algorithm::next_token_loss, B>::run(be, hidden, final_gains, classifier, ids, opt);
}

/// logits (tokens, vocab) ← RMSNorm(hidden; final_gains) · classifierᵀ, every array in @p be's memory.
/// @throws rsq::invalid_argument for shapes that do not match
template <backend_tag B>
void final_logits(B const& be, matrix_view<const float> hidden, vector_view<const float> final_gains,
                  matrix_view<const float> classifier, float norm_eps, matrix_view<float> logits,
                  matmul_precision precision = matmul_precision::fp32) {
  detail::expect_operand(be, hidden, "final_logits", "hidden");
  detail::expect_operand(be, final_gains, "final_logits", "final_gains");
  detail::expect_operand(be, classifier, "final_logits", "classifier");
  detail::expect_operand(be, logits, "final_logits", "logits");
  RSQ_EXPECTS(final_gains.extent(0) == hidden.cols() && classifier.cols() == hidden.cols(),
              "final_logits: final_gains and classifier must match the hidden width ", hidden.cols());
  detail::expect_shape(logits, hidden.rows(), classifier.rows(), "final_logits", "logits");
  backend::implementation_t<algorithm::next_token_loss, B>::logits(be, hidden, final_gains, classifier, norm_eps,
                                                                   precision, logits);
}

}  // namespace rsq::nn
