// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Definitions of the CUDA forward-pass pieces (<rsq/backend/cuda/nn.hpp>). Shapes and residency were checked by the
/// front ends (<rsq/nn/*.hpp>); here every device pointer is checked to be on the current device, sizes are checked
/// against cuBLAS's int arguments, and every launch and library call is checked.

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "rsq/backend/cuda/impl/common.cuh"
#include "rsq/backend/cuda/impl/gemm.cuh"
#include "rsq/backend/cuda/kernels/nn.cuh"
#include "rsq/backend/cuda/nn.hpp"

namespace rsq::cuda::detail {

/// Warps per block of the warp-per-row kernels.
inline constexpr int rows_per_block = threads_1d / 32;

/// a rounded up to a multiple of b.
[[nodiscard]] constexpr index_t round_up(index_t a, index_t b) noexcept { return (a + b - 1) / b * b; }

/// Blocks of threads_1d threads for @p rows rows handled one warp each (grid-stride beyond the cap).
[[nodiscard]] inline unsigned warp_row_blocks(index_t rows) { return kernels::blocks_for(rows, rows_per_block); }

/// A grid dimension for @p n items of @p per items per block, capped for grid-stride loops (y: 65535).
[[nodiscard]] inline unsigned grid_dim(index_t n, index_t per, index_t cap) {
  return unsigned(std::clamp<index_t>((n + per - 1) / per, 1, cap));
}

/// The device's cos/sin tables of RoPE, (positions, head_dim / 2) each, computed on the host in float64 and rounded
/// to float, as the CPU backend does (so that both use the same tables). Kept per thread and device for each
/// (head_dim, theta), grown to the longest sequence seen.
struct rope_device_tables {
  int device = -1;
  index_t head_dim = 0, positions = 0;
  double theta = 0;
  nn::rope_scaling scaling;
  device_array<float> table;  // cos (positions, half), then sin (positions, half)
};

/// (cos, sin) tables on the device for positions [0, @p positions) at least, rows of head_dim / 2 values.
inline std::pair<float const*, float const*> rope_tables_on_device(context& ctx, index_t positions,
                                                                   nn::rope_options const& opt) {
  index_t const head_dim = opt.head_dim;
  double const theta = opt.theta;
  thread_local std::vector<std::unique_ptr<rope_device_tables>> cache;
  rope_device_tables* entry = nullptr;
  for (auto& e : cache)
    if (e->device == ctx.device() && e->head_dim == head_dim && e->theta == theta && e->scaling == opt.scaling)
      entry = e.get();
  index_t const half = head_dim / 2;
  if (entry == nullptr) {
    cache.push_back(std::make_unique<rope_device_tables>());
    entry = cache.back().get();
  } else if (entry->positions < positions) {
    // Kernels queued earlier (on any stream of this thread) may still read the old table.
    RSQ_CUDA_CHECK(cudaDeviceSynchronize());
  }
  if (entry->positions < positions) {
    std::vector<float> host(std::size_t(2 * positions * half));  // cos then sin, (positions, half) each
    for (index_t i = 0; i < half; ++i) {
      double const freq = nn::rope_inverse_frequency(theta, head_dim, opt.scaling, i);
      for (index_t p = 0; p < positions; ++p) {
        host[std::size_t(p * half + i)] = float(std::cos(double(p) * freq));
        host[std::size_t((positions + p) * half + i)] = float(std::sin(double(p) * freq));
      }
    }
    entry->positions = 0;  // stays consistent if the allocation throws
    entry->table = device_array<float>(2 * positions * half);
    RSQ_CUDA_CHECK(cudaMemcpyAsync(entry->table.data(), host.data(), host.size() * sizeof(float),
                                   cudaMemcpyHostToDevice, ctx.stream()));
    RSQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));  // before `host` goes away
    entry->device = ctx.device();
    entry->head_dim = head_dim;
    entry->theta = theta;
    entry->scaling = opt.scaling;
    entry->positions = positions;
  }
  float const* const t = entry->table.data();
  return {t, t + entry->positions * half};
}

/// The token ids (sequences, L) of host memory, row-major and contiguous, in the context's id buffer on the device.
/// The host staging vector is per thread and only grows; cudaMemcpyAsync from pageable memory has copied it out
/// by the time it returns, so the next call may overwrite it.
inline std::int32_t const* upload_ids(context& ctx, matrix_view<const std::int32_t> ids) {
  thread_local std::vector<std::int32_t> staging;
  index_t const n = ids.rows() * ids.cols();
  staging.resize(std::size_t(n));
  for (index_t s = 0; s < ids.rows(); ++s)
    for (index_t t = 0; t < ids.cols(); ++t) staging[std::size_t(s * ids.cols() + t)] = ids(s, t);
  auto* const d = ctx.buffer<std::int32_t>(scratch::nn_ids, std::size_t(n));
  RSQ_CUDA_CHECK(
      cudaMemcpyAsync(d, staging.data(), std::size_t(n) * sizeof(std::int32_t), cudaMemcpyHostToDevice, ctx.stream()));
  return d;
}

/// RMSNorm of rows [r0, r0 + rows) of @p hidden into @p out (rows, dim), leading dimension dim, as O.
template <class O>
void normalize_rows(context& ctx, matrix_view<const float> hidden, float const* gains, float eps, index_t r0,
                    index_t rows, O* out) {
  index_t const ld = leading_dimension(hidden);
  kernels::rms_norm_kernel<O><<<warp_row_blocks(rows), threads_1d, 0, ctx.stream()>>>(
      hidden.data() + r0 * ld, ld, gains, rows, hidden.cols(), eps, out, hidden.cols());
  RSQ_CUDA_CHECK_LAUNCH("rms_norm_kernel");
}

/// The classifier (vocab, dim) in bf16 in the context's operand buffer when the loss asks for bf16 and the copy fits
/// forward_tuning::bf16_classifier_bytes, else null (fp32). @p extra bf16 elements follow it (the normalised rows).
inline __nv_bfloat16* classifier_bf16(context& ctx, matrix_view<const float> w, matmul_precision precision,
                                      index_t extra) {
  index_t const bytes = w.rows() * w.cols() * index_t(sizeof(__nv_bfloat16));
  if (precision != matmul_precision::bf16 || bytes > nn_tuning().bf16_classifier_bytes) return nullptr;
  index_t const offset = round_up(w.rows() * w.cols(), 8);
  auto* const w16 = ctx.buffer<__nv_bfloat16>(scratch::nn_operands16, std::size_t(offset + extra));
  kernels::convert_rows_kernel<float, __nv_bfloat16>
      <<<kernels::grid_2d(w.rows(), w.cols()), threads_1d, 0, ctx.stream()>>>(w.data(), leading_dimension(w), w.rows(),
                                                                              w.cols(), w16, w.cols());
  RSQ_CUDA_CHECK_LAUNCH("convert_rows_kernel");
  return w16;
}

/// logits (vocab × rows, column-major, leading dimension ldz) = W (vocab, dim) · n (rows, dim)ᵀ, i.e. row-major
/// (rows, vocab) logits: cuBLAS m = vocab, n = rows, k = dim, A = W's storage transposed, B = n's storage.
inline void classifier_product(context& ctx, matrix_view<const float> w, __nv_bfloat16 const* w16, void const* n,
                               index_t rows, float* z, index_t ldz) {
  float const one = 1.f, zero = 0.f;
  int const V = int(w.rows()), R = int(rows), D = int(w.cols());
  if (w16 != nullptr)
    RSQ_CUBLAS_CHECK(cublasGemmEx(ctx.blas(), CUBLAS_OP_T, CUBLAS_OP_N, V, R, D, &one, w16, CUDA_R_16BF, D, n,
                                  CUDA_R_16BF, D, &zero, z, CUDA_R_32F, int(ldz), CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
  else
    RSQ_CUBLAS_CHECK(cublasSgemm(ctx.blas(), CUBLAS_OP_T, CUBLAS_OP_N, V, R, D, &one, w.data(),
                                 int(leading_dimension(w)), static_cast<float const*>(n), D, &zero, z, int(ldz)));
}

/// Sizes of one attention call: queries per block, sequences per chunk, and the scratch they take.
struct attention_plan {
  index_t qb = 0, blocks = 0, ld = 0, sequences = 0;
  index_t logits_elems = 0, probs16_elems = 0, operands16_elems = 0, partial_elems = 0;
};

/// The blocks and chunks are chosen as if the output and the scores were both asked for, so that the scores of the
/// scores-only mode come from the very same products (the same batches, the same cuBLAS kernels): the same bits.
inline attention_plan plan_attention(nn::attention_options const& opt, index_t sequences, bool with_output,
                                     bool with_scores, bool bf16) {
  auto const& tune = nn_tuning();
  index_t const L = opt.seq_len, H = opt.heads, KV = opt.kv_heads, d = opt.head_dim;
  attention_plan p;
  p.ld = round_up(L, 8);  // logits rows of 32 bytes (fp32) / 16 bytes (bf16)
  auto const per_sequence = [&](index_t qb) {
    index_t const blocks = (L + qb - 1) / qb;
    index_t bytes = H * qb * p.ld * 4 + KV * blocks * L * 8;          // fp32 logits / P, AttnCon partial sums
    if (bf16) bytes += H * qb * p.ld * 2 + L * (H + 2 * KV) * d * 2;  // bf16 P; bf16 q, k, v
    return bytes;
  };
  p.qb = std::clamp<index_t>(tune.query_block, 1, L);
  while (p.qb > 16 && per_sequence(p.qb) > tune.attention_bytes) p.qb /= 2;
  p.blocks = (L + p.qb - 1) / p.qb;
  p.sequences = std::clamp<index_t>(tune.attention_bytes / per_sequence(p.qb), 1, sequences);
  index_t const entries = p.sequences * H;
  p.logits_elems = entries * p.qb * p.ld;
  p.probs16_elems = bf16 && with_output ? p.logits_elems : 0;
  p.operands16_elems = bf16 ? p.sequences * L * (H + (with_output ? 2 : 1) * KV) * d + 16 : 0;  // + alignment
  p.partial_elems = with_scores ? p.sequences * KV * p.blocks * L : 0;
  return p;
}

}  // namespace rsq::cuda::detail

namespace rsq::cuda::detail {

template <class D>
void nn_api<D>::rms_norm(backend::cuda const& be, matrix_view<const float> x, vector_view<const float> gains, float eps,
                         matrix_view<float> y) {
  auto& ctx = context_for(be.stream);
  (void)resident_here(x.data(), "rms_norm: x");
  (void)resident_here(gains.data(), "rms_norm: gains");
  (void)resident_here(y.data(), "rms_norm: y");
  expect_rows_apart(x, "rms_norm", "x");
  expect_rows_apart(y, "rms_norm", "y");
  kernels::rms_norm_kernel<float><<<warp_row_blocks(x.rows()), threads_1d, 0, ctx.stream()>>>(
      x.data(), leading_dimension(x), gains.data(), x.rows(), x.cols(), eps, y.data(), leading_dimension(y));
  RSQ_CUDA_CHECK_LAUNCH("rms_norm_kernel");
}

template <class D>
void nn_api<D>::rope(backend::cuda const& be, matrix_view<float> x, nn::rope_options const& opt) {
  auto& ctx = context_for(be.stream);
  (void)resident_here(x.data(), "rope: x");
  expect_rows_apart(x, "rope", "x");
  auto const [cos_table, sin_table] = rope_tables_on_device(ctx, opt.seq_len, opt);
  index_t const pairs = x.cols() / 2;
  kernels::rope_kernel<<<kernels::grid_2d(x.rows(), pairs), threads_1d, 0, ctx.stream()>>>(
      x.data(), leading_dimension(x), x.rows(), pairs, opt.head_dim / 2, opt.seq_len, cos_table, sin_table);
  RSQ_CUDA_CHECK_LAUNCH("rope_kernel");
}

template <class D>
void nn_api<D>::swiglu(backend::cuda const& be, matrix_view<float> gate, matrix_view<const float> up) {
  auto& ctx = context_for(be.stream);
  (void)resident_here(gate.data(), "swiglu: gate");
  (void)resident_here(up.data(), "swiglu: up");
  expect_rows_apart(gate, "swiglu", "gate");
  kernels::swiglu_kernel<<<kernels::grid_2d(gate.rows(), gate.cols()), threads_1d, 0, ctx.stream()>>>(
      gate.data(), leading_dimension(gate), up.data(), leading_dimension(up), gate.rows(), gate.cols());
  RSQ_CUDA_CHECK_LAUNCH("swiglu_kernel");
}

template <class D>
void nn_api<D>::embedding(backend::cuda const& be, matrix_view<const std::int32_t> ids, matrix_view<const float> table,
                          matrix_view<float> x) {
  auto& ctx = context_for(be.stream);
  (void)resident_here(table.data(), "embed: the embedding table");
  (void)resident_here(x.data(), "embed: x");
  expect_rows_apart(x, "embed", "x");
  std::int32_t const* const ids_d = upload_ids(ctx, ids);
  kernels::gather_rows_kernel<<<kernels::grid_2d(x.rows(), x.cols()), threads_1d, 0, ctx.stream()>>>(
      ids_d, table.data(), leading_dimension(table), x.rows(), x.cols(), x.data(), leading_dimension(x));
  RSQ_CUDA_CHECK_LAUNCH("gather_rows_kernel");
}

template <class D>
void nn_api<D>::causal_attention(backend::cuda const& be, matrix_view<const float> q, matrix_view<const float> k,
                                 matrix_view<const float> v, matrix_view<float> out, nn::attention_options const& opt,
                                 matrix_view<float> scores) {
  auto& ctx = context_for(be.stream);
  cudaStream_t const st = ctx.stream();
  bool const with_output = out.data() != nullptr, with_scores = scores.data() != nullptr;
  bool const bf16 = opt.precision == matmul_precision::bf16;
  (void)resident_here(q.data(), "causal_attention: q");
  (void)resident_here(k.data(), "causal_attention: k");
  expect_rows_apart(q, "causal_attention", "q");
  expect_rows_apart(k, "causal_attention", "k");
  if (with_output) {
    (void)resident_here(v.data(), "causal_attention: v");
    (void)resident_here(out.data(), "causal_attention: out");
    expect_rows_apart(v, "causal_attention", "v");
    expect_rows_apart(out, "causal_attention", "out");
  }
  if (with_scores) (void)resident_here(scores.data(), "causal_attention: scores");
  index_t const L = opt.seq_len, H = opt.heads, KV = opt.kv_heads, d = opt.head_dim, group = H / KV;
  index_t const S = q.rows() / L;
  float const scale = opt.softmax_scale > 0 ? float(opt.softmax_scale) : 1.f / std::sqrt(float(d));
  attention_plan const plan = plan_attention(opt, S, with_output, with_scores, bf16);
  index_t const qld = leading_dimension(q), kld = leading_dimension(k);
  index_t const vld = with_output ? leading_dimension(v) : 0, old = with_output ? leading_dimension(out) : 0;
  for (index_t n : {plan.ld, plan.sequences * H, qld, kld, vld, old, H * d}) expect_int(n, "causal_attention");

  // Scratch, each slot asked for once (a slot that grows frees its old memory).
  auto* const logits = ctx.buffer<float>(scratch::nn_logits, std::size_t(plan.logits_elems));  // (entries, qb, ld)
  auto* const probs16 = plan.probs16_elems > 0
                            ? ctx.buffer<__nv_bfloat16>(scratch::nn_probs16, std::size_t(plan.probs16_elems))
                            : nullptr;  // (entries, qb, ld)
  auto* const ops16 = plan.operands16_elems > 0
                          ? ctx.buffer<__nv_bfloat16>(scratch::nn_operands16, std::size_t(plan.operands16_elems))
                          : nullptr;
  auto* const partial =
      with_scores ? ctx.buffer<double>(scratch::nn_partial, std::size_t(plan.partial_elems)) : nullptr;
  index_t const max_entries = plan.sequences * H;
  void** const ptrs = ctx.buffer<void*>(scratch::nn_pointers, std::size_t(6 * max_entries));
  auto const k_ptr = const_cast<void const**>(ptrs), q_ptr = const_cast<void const**>(ptrs + max_entries);
  void** const s_ptr = ptrs + 2 * max_entries;
  auto const v_ptr = const_cast<void const**>(ptrs + 3 * max_entries);
  auto const p_ptr = const_cast<void const**>(ptrs + 4 * max_entries);
  void** const out_ptr = ptrs + 5 * max_entries;

  index_t const entry_stride = plan.qb * plan.ld;  // elements from one entry's logits (and bf16 P) to the next
  float const one = 1.f, zero = 0.f;
  cublasHandle_t const h = ctx.blas();
  for (index_t s0 = 0; s0 < S; s0 += plan.sequences) {
    index_t const ns = std::min(plan.sequences, S - s0), entries = ns * H;
    constexpr index_t f4 = sizeof(float), b2 = sizeof(__nv_bfloat16);
    kernels::operand_layout ql{}, kl{}, vl{}, ol{};
    index_t q_ld = qld, k_ld = kld, v_ld = vld;
    if (bf16) {
      // The chunk's q, k (and v) rounded to bf16, contiguous: (ns·L, H·d), (ns·L, KV·d), (ns·L, KV·d).
      __nv_bfloat16* const q16 = ops16;
      __nv_bfloat16* const k16 = q16 + round_up(ns * L * H * d, 8);  // each array on a 16-byte boundary
      __nv_bfloat16* const v16 = k16 + round_up(ns * L * KV * d, 8);
      auto const convert = [&](float const* src, index_t ld, index_t cols, __nv_bfloat16* dst) {
        kernels::convert_rows_kernel<float, __nv_bfloat16>
            <<<kernels::grid_2d(ns * L, cols), threads_1d, 0, st>>>(src + s0 * L * ld, ld, ns * L, cols, dst, cols);
        RSQ_CUDA_CHECK_LAUNCH("convert_rows_kernel");
      };
      convert(q.data(), qld, H * d, q16);
      convert(k.data(), kld, KV * d, k16);
      if (with_output) convert(v.data(), vld, KV * d, v16);
      q_ld = H * d;
      k_ld = v_ld = KV * d;
      ql = {reinterpret_cast<char const*>(q16), L * q_ld * b2, q_ld * b2, d * b2};
      kl = {reinterpret_cast<char const*>(k16), L * k_ld * b2, k_ld * b2, d * b2};
      if (with_output) vl = {reinterpret_cast<char const*>(v16), L * v_ld * b2, v_ld * b2, d * b2};
    } else {
      ql = {reinterpret_cast<char const*>(q.data() + s0 * L * qld), L * qld * f4, qld * f4, d * f4};
      kl = {reinterpret_cast<char const*>(k.data() + s0 * L * kld), L * kld * f4, kld * f4, d * f4};
      if (with_output) vl = {reinterpret_cast<char const*>(v.data() + s0 * L * vld), L * vld * f4, vld * f4, d * f4};
    }
    if (with_output) ol = {reinterpret_cast<char const*>(out.data() + s0 * L * old), L * old * f4, old * f4, d * f4};
    char* const p_base = bf16 ? reinterpret_cast<char*>(probs16) : reinterpret_cast<char*>(logits);
    index_t const p_entry = entry_stride * (bf16 ? b2 : f4);

    for (index_t b = 0; b < plan.blocks; ++b) {
      index_t const i0 = b * plan.qb, nq = std::min(plan.qb, L - i0), n = i0 + nq;  // queries, keys they see
      kernels::attention_pointers_kernel<<<kernels::blocks_for(entries, threads_1d), threads_1d, 0, st>>>(
          entries, H, group, i0, ql, kl, vl, ol, reinterpret_cast<char*>(logits), entry_stride * f4, p_base, p_entry,
          k_ptr, q_ptr, s_ptr, v_ptr, p_ptr, out_ptr);
      RSQ_CUDA_CHECK_LAUNCH("attention_pointers_kernel");
      // Logits, column-major (n × nq) per entry: C(t, r) = Σ_c K(t, c)·Q(i0 + r, c) = (Kᵀ)ᵀ·Qᵀ with K and Q's rows
      // read as column-major (d × ·) matrices.
      if (bf16)
        RSQ_CUBLAS_CHECK(cublasGemmBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(nq), int(d), &one, k_ptr,
                                             CUDA_R_16BF, int(k_ld), q_ptr, CUDA_R_16BF, int(q_ld), &zero, s_ptr,
                                             CUDA_R_32F, int(plan.ld), int(entries), CUBLAS_COMPUTE_32F,
                                             CUBLAS_GEMM_DEFAULT));
      else
        RSQ_CUBLAS_CHECK(cublasSgemmBatched(h, CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(nq), int(d), &one,
                                            reinterpret_cast<float const* const*>(k_ptr), int(k_ld),
                                            reinterpret_cast<float const* const*>(q_ptr), int(q_ld), &zero,
                                            reinterpret_cast<float* const*>(s_ptr), int(plan.ld), int(entries)));
      kernels::softmax_rows_kernel<<<warp_row_blocks(entries * nq), threads_1d, 0, st>>>(
          logits, plan.ld, entry_stride, entries, nq, i0, scale, bf16 && with_output ? probs16 : nullptr);
      RSQ_CUDA_CHECK_LAUNCH("softmax_rows_kernel");
      if (with_scores) {
        dim3 const grid(grid_dim(n, threads_1d, 1024), grid_dim(ns * KV, 1, 65535));
        kernels::attention_columns_kernel<<<grid, threads_1d, 0, st>>>(logits, plan.ld, entry_stride, nq, i0, ns, H, KV,
                                                                       group, plan.blocks, b, L, partial);
        RSQ_CUDA_CHECK_LAUNCH("attention_columns_kernel");
      }
      if (with_output) {
        // out rows i0.., column-major (d × nq) per entry: C(c, r) = Σ_t V(t, c)·P(r, t) = Vᵀ·Pᵀ, both as stored.
        if (bf16)
          RSQ_CUBLAS_CHECK(cublasGemmBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, int(d), int(nq), int(n), &one, v_ptr,
                                               CUDA_R_16BF, int(v_ld), p_ptr, CUDA_R_16BF, int(plan.ld), &zero, out_ptr,
                                               CUDA_R_32F, int(old), int(entries), CUBLAS_COMPUTE_32F,
                                               CUBLAS_GEMM_DEFAULT));
        else
          RSQ_CUBLAS_CHECK(cublasSgemmBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, int(d), int(nq), int(n), &one,
                                              reinterpret_cast<float const* const*>(v_ptr), int(v_ld),
                                              reinterpret_cast<float const* const*>(p_ptr), int(plan.ld), &zero,
                                              reinterpret_cast<float* const*>(out_ptr), int(old), int(entries)));
      }
    }
    if (with_scores) {
      dim3 const grid(grid_dim(L, threads_1d, 1024), grid_dim(ns, 1, 65535));
      kernels::attention_scores_kernel<<<grid, threads_1d, 0, st>>>(partial, ns, KV, plan.blocks, plan.qb, L,
                                                                    scores.data() + s0 * scores.stride(0),
                                                                    scores.stride(0), scores.stride(1));
      RSQ_CUDA_CHECK_LAUNCH("attention_scores_kernel");
    }
  }
}

template <class D>
nn::loss_sum nn_api<D>::next_token_loss(backend::cuda const& be, matrix_view<const float> hidden,
                                        vector_view<const float> final_gains, matrix_view<const float> classifier,
                                        matrix_view<const std::int32_t> ids, nn::loss_options const& opt) {
  auto& ctx = context_for(be.stream);
  cudaStream_t const st = ctx.stream();
  (void)resident_here(hidden.data(), "next_token_loss: hidden");
  (void)resident_here(final_gains.data(), "next_token_loss: final_gains");
  (void)resident_here(classifier.data(), "next_token_loss: classifier");
  expect_rows_apart(hidden, "next_token_loss", "hidden");
  expect_rows_apart(classifier, "next_token_loss", "the classifier");
  index_t const T = hidden.rows(), dim = hidden.cols(), V = classifier.rows(), L = opt.seq_len;
  index_t const ldz = round_up(V, 8);
  index_t const block = std::clamp<index_t>(nn_tuning().loss_bytes / (ldz * index_t(sizeof(float))), 1, T);
  for (index_t n : {V, dim, ldz, block, leading_dimension(classifier)}) expect_int(n, "next_token_loss");
  std::int32_t const* const ids_d = upload_ids(ctx, ids);
  __nv_bfloat16* const w16 = classifier_bf16(ctx, classifier, opt.precision, block * dim);
  auto* const z = ctx.buffer<float>(scratch::nn_logits, std::size_t(block * ldz));  // (block, ld) logits
  void* const normed = w16 != nullptr
                           ? static_cast<void*>(w16 + round_up(V * dim, 8))
                           : static_cast<void*>(ctx.buffer<float>(scratch::nn_rows,
                                                                  std::size_t(block * dim)));  // (block, dim)
  auto* const terms = ctx.buffer<double>(scratch::nn_partial, std::size_t(T + 1));  // (T) terms, then their sum
  for (index_t r0 = 0; r0 < T; r0 += block) {
    index_t const rows = std::min(block, T - r0);
    if (w16 != nullptr)
      normalize_rows(ctx, hidden, final_gains.data(), opt.norm_eps, r0, rows, static_cast<__nv_bfloat16*>(normed));
    else
      normalize_rows(ctx, hidden, final_gains.data(), opt.norm_eps, r0, rows, static_cast<float*>(normed));
    classifier_product(ctx, classifier, w16, normed, rows, z, ldz);
    kernels::lse_rows_kernel<<<grid_dim(rows, 1, 65535), threads_1d, 0, st>>>(z, ldz, rows, V, r0, L, ids_d, terms);
    RSQ_CUDA_CHECK_LAUNCH("lse_rows_kernel");
  }
  kernels::sum_terms_kernel<<<1, threads_1d, 0, st>>>(terms, T, terms + T);
  RSQ_CUDA_CHECK_LAUNCH("sum_terms_kernel");
  return {read_back(terms + T, st), (T / L) * (L - 1)};
}

template <class D>
void nn_api<D>::logits(backend::cuda const& be, matrix_view<const float> hidden, vector_view<const float> final_gains,
                       matrix_view<const float> classifier, float norm_eps, matmul_precision precision,
                       matrix_view<float> logits) {
  auto& ctx = context_for(be.stream);
  (void)resident_here(hidden.data(), "final_logits: hidden");
  (void)resident_here(final_gains.data(), "final_logits: final_gains");
  (void)resident_here(classifier.data(), "final_logits: classifier");
  (void)resident_here(logits.data(), "final_logits: logits");
  expect_rows_apart(hidden, "final_logits", "hidden");
  expect_rows_apart(classifier, "final_logits", "the classifier");
  expect_rows_apart(logits, "final_logits", "logits");
  index_t const T = hidden.rows(), dim = hidden.cols(), V = classifier.rows(), ldl = leading_dimension(logits);
  index_t const block = std::clamp<index_t>(nn_tuning().loss_bytes / (dim * index_t(sizeof(float))), 1, T);
  for (index_t n : {V, dim, ldl, block, leading_dimension(classifier)}) expect_int(n, "final_logits");
  __nv_bfloat16* const w16 = classifier_bf16(ctx, classifier, precision, block * dim);
  void* const normed = w16 != nullptr
                           ? static_cast<void*>(w16 + round_up(V * dim, 8))
                           : static_cast<void*>(ctx.buffer<float>(scratch::nn_rows,
                                                                  std::size_t(block * dim)));  // (block, dim)
  for (index_t r0 = 0; r0 < T; r0 += block) {
    index_t const rows = std::min(block, T - r0);
    if (w16 != nullptr)
      normalize_rows(ctx, hidden, final_gains.data(), norm_eps, r0, rows, static_cast<__nv_bfloat16*>(normed));
    else
      normalize_rows(ctx, hidden, final_gains.data(), norm_eps, r0, rows, static_cast<float*>(normed));
    classifier_product(ctx, classifier, w16, normed, rows, logits.data() + r0 * ldl, ldl);
  }
}

}  // namespace rsq::cuda::detail
