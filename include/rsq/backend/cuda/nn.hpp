// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CUDA backend of the forward-pass pieces (rsq::nn, <rsq/nn/*.hpp>): RMSNorm, RoPE, causal attention with the
/// AttnCon scores, SwiGLU, the token embedding and the next-token loss, on device memory and the backend's stream.
///
///  - RMSNorm, RoPE, SwiGLU, embedding: one kernel each (a warp per row for RMSNorm); RoPE's cos/sin tables are
///    computed on the host in float64 and rounded to float, as on the CPU, and kept on the device per thread.
///  - Attention: per chunk of sequences and block of queries, the logits of every (sequence, head) of the chunk are
///    one cuBLAS batched GEMM (strict fp32, or bf16 operands with fp32 accumulation); a kernel forms the causal
///    softmax exp((s − max)·scale)·(1/Σ) row by row (a warp per row); the AttnCon column sums are taken in double
///    per (sequence, KV group, block) and summed over groups and blocks in a fixed order; P·V is a second batched
///    GEMM (skipped in the scores-only mode). Device scratch is bounded by forward_tuning::attention_bytes.
///  - Loss: blocks of tokens: RMSNorm → logits (block, vocab) by one GEMM → a log-sum-exp per row minus the target's
///    logit, in double → one fixed-order sum.
/// No float atomics: every result is the same from run to run.
///
/// Declarations only; definitions in <rsq/backend/cuda/impl/nn.cuh> (kernels in kernels/nn.cuh), compiled by nvcc in
/// rsq_cuda.cu. Needs no CUDA header and no Eigen.

#include <cstdint>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/precision.hpp"
#include "rsq/core/view.hpp"
#include "rsq/nn/options.hpp"

namespace rsq::cuda {

/// Sizes of the CUDA forward-pass pieces, per thread. The defaults are what the library uses; tests shrink them to
/// run every loop (several chunks of sequences, blocks of queries and of tokens).
struct forward_tuning {
  /// Queries per block of the attention (fewer when a block of the chunk would not fit attention_bytes).
  index_t query_block = 128;
  /// Device scratch of the attention: the fp32 logits of a block of queries of a chunk of sequences (all heads),
  /// their bf16 copy, the bf16 copies of the chunk's q, k, v, and the AttnCon partial sums. Sequences per chunk
  /// follow from it (at least one).
  index_t attention_bytes = index_t(384) << 20;
  /// Device scratch for the logits of a block of tokens (next_token_loss) or its normalised rows (final_logits).
  index_t loss_bytes = index_t(256) << 20;
  /// Largest bf16 copy of the classifier that a bf16 loss or final_logits makes; a larger classifier is multiplied
  /// in fp32 (more accurate than asked, as core/precision.hpp allows).
  index_t bf16_classifier_bytes = index_t(512) << 20;
};

/// The calling thread's sizes of the forward-pass pieces.
[[nodiscard]] inline forward_tuning& nn_tuning() noexcept {
  thread_local forward_tuning t;
  return t;
}

}  // namespace rsq::cuda

namespace rsq::cuda::detail {

/// The definitions behind the CUDA implementations of the forward-pass pieces (impl/nn.cuh), arguments checked by the
/// front ends. A class template with one instantiation (in rsq_cuda.cu), so that the definitions may be compiled into
/// several objects of one program.
template <class = void>
struct nn_api {
  static void rms_norm(backend::cuda const& be, matrix_view<const float> x, vector_view<const float> gains, float eps,
                       matrix_view<float> y);
  static void rope(backend::cuda const& be, matrix_view<float> x, nn::rope_options const& opt);
  static void causal_attention(backend::cuda const& be, matrix_view<const float> q, matrix_view<const float> k,
                               matrix_view<const float> v, matrix_view<float> out, nn::attention_options const& opt,
                               matrix_view<float> scores);
  static void swiglu(backend::cuda const& be, matrix_view<float> gate, matrix_view<const float> up);
  static void embedding(backend::cuda const& be, matrix_view<const std::int32_t> ids, matrix_view<const float> table,
                        matrix_view<float> x);
  static nn::loss_sum next_token_loss(backend::cuda const& be, matrix_view<const float> hidden,
                                      vector_view<const float> final_gains, matrix_view<const float> classifier,
                                      matrix_view<const std::int32_t> ids, nn::loss_options const& opt);
  static void logits(backend::cuda const& be, matrix_view<const float> hidden, vector_view<const float> final_gains,
                     matrix_view<const float> classifier, float norm_eps, matmul_precision precision,
                     matrix_view<float> logits);
};
extern template struct nn_api<void>;

}  // namespace rsq::cuda::detail

namespace rsq::backend {

/// RMSNorm on the GPU (<rsq/nn/rms_norm.hpp>).
template <>
struct implementation<algorithm::rms_norm, cuda> {
  static constexpr bool available = true;
  static void run(cuda const& be, matrix_view<const float> x, vector_view<const float> gains, float eps,
                  matrix_view<float> y) {
    rsq::cuda::detail::nn_api<>::rms_norm(be, x, gains, eps, y);
  }
};

/// RoPE on the GPU (<rsq/nn/rope.hpp>).
template <>
struct implementation<algorithm::rope, cuda> {
  static constexpr bool available = true;
  static void run(cuda const& be, matrix_view<float> x, nn::rope_options const& opt) {
    rsq::cuda::detail::nn_api<>::rope(be, x, opt);
  }
};

/// Causal attention and the AttnCon scores on the GPU (<rsq/nn/attention.hpp>).
template <>
struct implementation<algorithm::causal_attention, cuda> {
  static constexpr bool available = true;
  static void run(cuda const& be, matrix_view<const float> q, matrix_view<const float> k, matrix_view<const float> v,
                  matrix_view<float> out, nn::attention_options const& opt, matrix_view<float> scores) {
    rsq::cuda::detail::nn_api<>::causal_attention(be, q, k, v, out, opt, scores);
  }
};

/// SwiGLU on the GPU (<rsq/nn/swiglu.hpp>).
template <>
struct implementation<algorithm::swiglu, cuda> {
  static constexpr bool available = true;
  static void run(cuda const& be, matrix_view<float> gate, matrix_view<const float> up) {
    rsq::cuda::detail::nn_api<>::swiglu(be, gate, up);
  }
};

/// The token embedding on the GPU (<rsq/nn/embedding.hpp>): ids from host memory.
template <>
struct implementation<algorithm::embedding, cuda> {
  static constexpr bool available = true;
  static void run(cuda const& be, matrix_view<const std::int32_t> ids, matrix_view<const float> table,
                  matrix_view<float> x) {
    rsq::cuda::detail::nn_api<>::embedding(be, ids, table, x);
  }
};

/// The classifier and the next-token loss on the GPU (<rsq/nn/loss.hpp>): ids from host memory.
template <>
struct implementation<algorithm::next_token_loss, cuda> {
  static constexpr bool available = true;
  static nn::loss_sum run(cuda const& be, matrix_view<const float> hidden, vector_view<const float> final_gains,
                          matrix_view<const float> classifier, matrix_view<const std::int32_t> ids,
                          nn::loss_options const& opt) {
    return rsq::cuda::detail::nn_api<>::next_token_loss(be, hidden, final_gains, classifier, ids, opt);
  }
  static void logits(cuda const& be, matrix_view<const float> hidden, vector_view<const float> final_gains,
                     matrix_view<const float> classifier, float norm_eps, matmul_precision precision,
                     matrix_view<float> logits) {
    rsq::cuda::detail::nn_api<>::logits(be, hidden, final_gains, classifier, norm_eps, precision, logits);
  }
};

}  // namespace rsq::backend
