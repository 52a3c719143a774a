// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Definitions of the CUDA reverse-pass pieces (<rsq/backend/cuda/reverse.hpp>). Shapes and residency were checked
/// by the front ends (<rsq/nn/reverse.hpp>); here every device pointer is checked to be on the current device, sizes
/// are checked against cuBLAS's int arguments, and every launch and library call is checked.
///
/// The attention's products, row-major views onto column-major cuBLAS (as impl/gemm.cuh explains): a row-major
/// (L, d) block of a sequence and head with row stride ld is the column-major (d × L) matrix with leading dimension
/// ld. With P, dP stored row-major (L, L) with leading dimension pld:
///   logits  Pᵀ(j, i) = Σ_c K(j, c) Q(i, c)·scale      A = K (op T), B = Q (op N), m = n = L, k = d
///   output  outᵀ(c, i) = Σ_j V(j, c) P(i, j)          A = V (op N), B = P (op N), m = d, n = k = L
///   dv      dvᵀ(c, j) = Σ_i dO(i, c) P(i, j)          A = dO (op N), B = P (op T)
///   dP      dPᵀ(j, i) = Σ_c V(j, c) dO(i, c)          A = V (op T), B = dO (op N)
///   dq      dqᵀ(c, i) = Σ_j K(j, c) dS(i, j)·scale    A = K (op N), B = dS (op N)
///   dk      dkᵀ(c, j) = Σ_i Q(i, c) dS(i, j)·scale    A = Q (op N), B = dS (op T)
/// each one cublasGemmStridedBatchedEx over the sequences of a sub-batch (strides L·ld).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "rsq/backend/cuda/impl/common.cuh"
#include "rsq/backend/cuda/impl/gemm.cuh"
#include "rsq/backend/cuda/impl/nn.cuh"
#include "rsq/backend/cuda/kernels/reverse.cuh"
#include "rsq/backend/cuda/reverse.hpp"

namespace rsq::cuda::detail {

/// One operand of the attention's products: the (L, d) block of sequence s0 of a sub-batch and of one head, its
/// leading dimension, and the elements from one sequence to the next.
struct sequence_operand {
  float const* data;
  index_t ld, stride;
};

/// The head's block of @p m: rows of sequence @p s0 on, columns [head·d, head·d + d).
[[nodiscard]] inline sequence_operand head_block(matrix_view<const float> m, index_t s0, index_t L, index_t head,
                                                 index_t d) {
  index_t const ld = leading_dimension(m);
  return {m.data() + s0 * L * ld + head * d, ld, L * ld};
}

/// C ← α·op(A)·op(B) + β·C for each of @p batch sequences (column-major cuBLAS conventions, fp32 storage), computed
/// as @p compute says (CUBLAS_COMPUTE_32F: strict fp32, the handle's math mode has no TF32).
inline void sequence_gemm(context& ctx, cublasComputeType_t compute, cublasOperation_t ta, cublasOperation_t tb,
                          index_t m, index_t n, index_t k, float alpha, sequence_operand a, sequence_operand b,
                          float beta, float* c, index_t ldc, index_t c_stride, index_t batch) {
  using ll = long long;
  RSQ_CUBLAS_CHECK(cublasGemmStridedBatchedEx(ctx.blas(), ta, tb, int(m), int(n), int(k), &alpha, a.data, CUDA_R_32F,
                                              int(a.ld), ll(a.stride), b.data, CUDA_R_32F, int(b.ld), ll(b.stride),
                                              &beta, c, CUDA_R_32F, int(ldc), ll(c_stride), int(batch), compute,
                                              CUBLAS_GEMM_DEFAULT));
}

/// The sizes of one attention call: the leading dimension of P and dP and the sequences per sub-batch. The forward
/// and the reverse choose the same (from the reverse's scratch, P and dP), so that the reverse recomputes P with the
/// very same cuBLAS calls: the same bits.
struct reverse_attention_plan {
  index_t ld = 0, sequences = 0;
};

[[nodiscard]] inline reverse_attention_plan plan_reverse_attention(index_t L, index_t sequences) {
  reverse_attention_plan p;
  p.ld = round_up(L, 8);  // rows of 32 bytes
  index_t const per_sequence = 2 * L * p.ld * index_t(sizeof(float));
  p.sequences = std::clamp<index_t>(reverse_pass_tuning().attention_bytes / per_sequence, 1, sequences);
  return p;
}

/// What the attention's pieces share: the shapes, the scale rounded to float (as the CPU's), the compute type.
struct attention_call {
  index_t L, H, KV, d, group, S;
  float scale;
  cublasComputeType_t compute;
  reverse_attention_plan plan;
};

[[nodiscard]] inline attention_call prepare_attention(matrix_view<const float> q, nn::attention_options const& opt,
                                                      char const* who) {
  attention_call a{};
  a.L = opt.seq_len;
  a.H = opt.heads;
  a.KV = opt.kv_heads;
  a.d = opt.head_dim;
  a.group = a.H / a.KV;
  a.S = q.rows() / a.L;
  a.scale = float(opt.softmax_scale > 0 ? opt.softmax_scale : 1.0 / std::sqrt(double(a.d)));
  a.compute = opt.precision == matmul_precision::bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
  a.plan = plan_reverse_attention(a.L, a.S);
  for (index_t n : {a.L, a.d, a.plan.ld, a.plan.sequences}) expect_int(n, who);
  return a;
}

/// Checks a device operand of the attention (on this device, rows apart, leading dimension within int).
template <class T>
void expect_attention_operand(matrix_view<T> m, char const* who, char const* what) {
  (void)resident_here(m.data(), rsq::detail::concat(who, ": ", what).c_str());
  expect_rows_apart(m, who, what);
  expect_int(leading_dimension(m), who);
}

/// P ← causal_softmax(q_h k_gᵀ·scale) for sequences [s0, s0 + ns) into @p p (ns·L rows of leading dimension
/// plan.ld).
inline void attention_probabilities(context& ctx, attention_call const& a, matrix_view<const float> q,
                                    matrix_view<const float> k, index_t s0, index_t ns, index_t h, float* p) {
  index_t const L = a.L, ld = a.plan.ld, g = h / a.group;
  sequence_operand const kg = head_block(k, s0, L, g, a.d), qh = head_block(q, s0, L, h, a.d);
  sequence_gemm(ctx, a.compute, CUBLAS_OP_T, CUBLAS_OP_N, L, L, a.d, a.scale, kg, qh, 0.f, p, ld, L * ld, ns);
  kernels::causal_softmax_kernel<<<warp_row_blocks(ns * L), threads_1d, 0, ctx.stream()>>>(p, ld, ns * L, L);
  RSQ_CUDA_CHECK_LAUNCH("causal_softmax_kernel");
}

}  // namespace rsq::cuda::detail

namespace rsq::cuda::detail {

template <class D>
void reverse_api<D>::fill(backend::cuda const& be, matrix_view<float> m, float value) {
  auto& ctx = context_for(be.stream);
  (void)resident_here(m.data(), "fill: m");
  expect_rows_apart(m, "fill", "m");
  kernels::fill_rows_kernel<<<kernels::grid_2d(m.rows(), m.cols()), threads_1d, 0, ctx.stream()>>>(
      m.data(), leading_dimension(m), m.rows(), m.cols(), value);
  RSQ_CUDA_CHECK_LAUNCH("fill_rows_kernel");
}

template <class D>
void reverse_api<D>::gather_rows(backend::cuda const& be, matrix_view<const std::int32_t> ids,
                                 matrix_view<const float> table, matrix_view<float> out) {
  auto& ctx = context_for(be.stream);
  (void)resident_here(table.data(), "gather_rows: table");
  (void)resident_here(out.data(), "gather_rows: out");
  expect_rows_apart(out, "gather_rows", "out");
  std::int32_t const* const ids_d = upload_ids(ctx, ids);
  kernels::gather_rows_kernel<<<kernels::grid_2d(out.rows(), out.cols()), threads_1d, 0, ctx.stream()>>>(
      ids_d, table.data(), leading_dimension(table), out.rows(), out.cols(), out.data(), leading_dimension(out));
  RSQ_CUDA_CHECK_LAUNCH("gather_rows_kernel");
}

template <class D>
void reverse_api<D>::rms_forward(backend::cuda const& be, matrix_view<const float> x, float eps, matrix_view<float> y,
                                 vector_view<float> r) {
  auto& ctx = context_for(be.stream);
  (void)resident_here(x.data(), "rms_forward: x");
  (void)resident_here(y.data(), "rms_forward: y");
  (void)resident_here(r.data(), "rms_forward: r");
  expect_rows_apart(x, "rms_forward", "x");
  expect_rows_apart(y, "rms_forward", "y");
  kernels::rms_forward_kernel<<<warp_row_blocks(x.rows()), threads_1d, 0, ctx.stream()>>>(
      x.data(), leading_dimension(x), x.rows(), x.cols(), eps, y.data(), leading_dimension(y), r.data());
  RSQ_CUDA_CHECK_LAUNCH("rms_forward_kernel");
}

template <class D>
void reverse_api<D>::rms_backward(backend::cuda const& be, matrix_view<const float> y, vector_view<const float> r,
                                  matrix_view<const float> dy, matrix_view<float> dx) {
  auto& ctx = context_for(be.stream);
  (void)resident_here(y.data(), "rms_backward: y");
  (void)resident_here(r.data(), "rms_backward: r");
  (void)resident_here(dy.data(), "rms_backward: dy");
  (void)resident_here(dx.data(), "rms_backward: dx");
  expect_rows_apart(y, "rms_backward", "y");
  expect_rows_apart(dy, "rms_backward", "dy");
  expect_rows_apart(dx, "rms_backward", "dx");
  kernels::rms_backward_kernel<<<warp_row_blocks(y.rows()), threads_1d, 0, ctx.stream()>>>(
      y.data(), leading_dimension(y), r.data(), dy.data(), leading_dimension(dy), y.rows(), y.cols(), dx.data(),
      leading_dimension(dx));
  RSQ_CUDA_CHECK_LAUNCH("rms_backward_kernel");
}

template <class D>
void reverse_api<D>::rope(backend::cuda const& be, matrix_view<float> x, matrix_view<const float> cos,
                          matrix_view<const float> sin, index_t head_dim, bool reverse) {
  auto& ctx = context_for(be.stream);
  (void)resident_here(x.data(), "rope: x");
  (void)resident_here(cos.data(), "rope: cos");
  (void)resident_here(sin.data(), "rope: sin");
  expect_rows_apart(x, "rope", "x");
  expect_rows_apart(cos, "rope", "cos");
  expect_rows_apart(sin, "rope", "sin");
  index_t const pairs = x.cols() / 2;
  kernels::rope_rotate_kernel<<<kernels::grid_2d(x.rows(), pairs), threads_1d, 0, ctx.stream()>>>(
      x.data(), leading_dimension(x), x.rows(), pairs, head_dim / 2, cos.rows(), cos.data(), leading_dimension(cos),
      sin.data(), leading_dimension(sin), reverse);
  RSQ_CUDA_CHECK_LAUNCH("rope_rotate_kernel");
}

template <class D>
void reverse_api<D>::attention_forward(backend::cuda const& be, matrix_view<const float> q, matrix_view<const float> k,
                                       matrix_view<const float> v, matrix_view<float> out,
                                       nn::attention_options const& opt) {
  auto& ctx = context_for(be.stream);
  for (auto const& [m, what] : {std::pair{q, "q"}, std::pair{k, "k"}, std::pair{v, "v"}})
    expect_attention_operand(m, "attention_forward", what);
  expect_attention_operand(out, "attention_forward", "out");
  attention_call const a = prepare_attention(q, opt, "attention_forward");
  index_t const L = a.L, d = a.d, ld = a.plan.ld, ns_max = a.plan.sequences;
  auto* const p = ctx.buffer<float>(scratch::reverse_probs, std::size_t(ns_max * L * ld));  // (ns·L, ld)
  index_t const old = leading_dimension(out);
  for (index_t s0 = 0; s0 < a.S; s0 += ns_max) {
    index_t const ns = std::min(ns_max, a.S - s0);
    for (index_t h = 0; h < a.H; ++h) {
      attention_probabilities(ctx, a, q, k, s0, ns, h, p);
      sequence_gemm(ctx, a.compute, CUBLAS_OP_N, CUBLAS_OP_N, d, L, L, 1.f, head_block(v, s0, L, h / a.group, d),
                    {p, ld, L * ld}, 0.f, out.data() + s0 * L * old + h * d, old, L * old, ns);
    }
  }
}

template <class D>
void reverse_api<D>::attention_backward(backend::cuda const& be, matrix_view<const float> q,
                                        matrix_view<const float> k, matrix_view<const float> v,
                                        matrix_view<const float> d_out, matrix_view<float> dq, matrix_view<float> dk,
                                        matrix_view<float> dv, nn::attention_options const& opt) {
  auto& ctx = context_for(be.stream);
  cudaStream_t const st = ctx.stream();
  for (auto const& [m, what] : {std::pair{q, "q"}, std::pair{k, "k"}, std::pair{v, "v"}, std::pair{d_out, "d_out"}})
    expect_attention_operand(m, "attention_backward", what);
  for (auto const& [m, what] : {std::pair{dq, "dq"}, std::pair{dk, "dk"}, std::pair{dv, "dv"}})
    expect_attention_operand(m, "attention_backward", what);
  attention_call const a = prepare_attention(q, opt, "attention_backward");
  index_t const L = a.L, d = a.d, ld = a.plan.ld, ns_max = a.plan.sequences;
  auto* const p = ctx.buffer<float>(scratch::reverse_probs, std::size_t(ns_max * L * ld));  // (ns·L, ld) P
  auto* const dp = ctx.buffer<float>(scratch::reverse_grads, std::size_t(ns_max * L * ld));  // dP, then dS
  index_t const dq_ld = leading_dimension(dq), dk_ld = leading_dimension(dk), dv_ld = leading_dimension(dv);
  sequence_operand const ps{p, ld, L * ld}, ds{dp, ld, L * ld};
  for (index_t s0 = 0; s0 < a.S; s0 += ns_max) {
    index_t const ns = std::min(ns_max, a.S - s0);
    for (index_t h = 0; h < a.H; ++h) {
      index_t const g = h / a.group;
      float const beta = h == g * a.group ? 0.f : 1.f;  // the group's first head overwrites dk_g and dv_g
      attention_probabilities(ctx, a, q, k, s0, ns, h, p);
      sequence_operand const go = head_block(d_out, s0, L, h, d), vg = head_block(v, s0, L, g, d);
      sequence_operand const kg = head_block(k, s0, L, g, d), qh = head_block(q, s0, L, h, d);
      float* const dvg = dv.data() + s0 * L * dv_ld + g * d;
      float* const dkg = dk.data() + s0 * L * dk_ld + g * d;
      float* const dqh = dq.data() + s0 * L * dq_ld + h * d;
      // dv_g (+)= Pᵀ do_h
      sequence_gemm(ctx, a.compute, CUBLAS_OP_N, CUBLAS_OP_T, d, L, L, 1.f, go, ps, beta, dvg, dv_ld, L * dv_ld, ns);
      // dP = do_h v_gᵀ, then dS = P ⊙ (dP − rowsum(P ⊙ dP)) in its place
      sequence_gemm(ctx, a.compute, CUBLAS_OP_T, CUBLAS_OP_N, L, L, d, 1.f, vg, go, 0.f, dp, ld, L * ld, ns);
      kernels::causal_softmax_backward_kernel<<<warp_row_blocks(ns * L), threads_1d, 0, st>>>(p, dp, ld, ns * L, L);
      RSQ_CUDA_CHECK_LAUNCH("causal_softmax_backward_kernel");
      // dq_h = dS k_g·scale; dk_g (+)= dSᵀ q_h·scale
      sequence_gemm(ctx, a.compute, CUBLAS_OP_N, CUBLAS_OP_N, d, L, L, a.scale, kg, ds, 0.f, dqh, dq_ld, L * dq_ld, ns);
      sequence_gemm(ctx, a.compute, CUBLAS_OP_N, CUBLAS_OP_T, d, L, L, a.scale, qh, ds, beta, dkg, dk_ld, L * dk_ld,
                    ns);
    }
  }
}

template <class D>
void reverse_api<D>::swiglu_forward(backend::cuda const& be, matrix_view<const float> a, matrix_view<const float> b,
                                    matrix_view<float> u) {
  auto& ctx = context_for(be.stream);
  (void)resident_here(a.data(), "swiglu_forward: a");
  (void)resident_here(b.data(), "swiglu_forward: b");
  (void)resident_here(u.data(), "swiglu_forward: u");
  expect_rows_apart(u, "swiglu_forward", "u");
  kernels::swiglu_forward_kernel<<<kernels::grid_2d(a.rows(), a.cols()), threads_1d, 0, ctx.stream()>>>(
      a.data(), leading_dimension(a), b.data(), leading_dimension(b), u.data(), leading_dimension(u), a.rows(),
      a.cols());
  RSQ_CUDA_CHECK_LAUNCH("swiglu_forward_kernel");
}

template <class D>
void reverse_api<D>::swiglu_backward(backend::cuda const& be, matrix_view<float> a, matrix_view<float> b,
                                     matrix_view<const float> du) {
  auto& ctx = context_for(be.stream);
  (void)resident_here(a.data(), "swiglu_backward: a");
  (void)resident_here(b.data(), "swiglu_backward: b");
  (void)resident_here(du.data(), "swiglu_backward: du");
  expect_rows_apart(a, "swiglu_backward", "a");
  expect_rows_apart(b, "swiglu_backward", "b");
  kernels::swiglu_backward_kernel<<<kernels::grid_2d(a.rows(), a.cols()), threads_1d, 0, ctx.stream()>>>(
      a.data(), leading_dimension(a), b.data(), leading_dimension(b), du.data(), leading_dimension(du), a.rows(),
      a.cols());
  RSQ_CUDA_CHECK_LAUNCH("swiglu_backward_kernel");
}

template <class D>
double reverse_api<D>::cross_entropy(backend::cuda const& be, matrix_view<float> logits,
                                     matrix_view<const std::int32_t> ids, index_t predictions, bool gradient) {
  auto& ctx = context_for(be.stream);
  cudaStream_t const st = ctx.stream();
  (void)resident_here(logits.data(), "cross_entropy: logits");
  expect_rows_apart(logits, "cross_entropy", "logits");
  index_t const rows = logits.rows();
  std::int32_t const* const ids_d = upload_ids(ctx, ids);
  auto* const losses = ctx.buffer<double>(scratch::reverse_losses, std::size_t(rows));  // (rows)
  kernels::cross_entropy_kernel<<<grid_dim(rows, 1, 65535), threads_1d, 0, st>>>(
      logits.data(), leading_dimension(logits), rows, logits.cols(), ids.cols(), ids_d, predictions, gradient, losses);
  RSQ_CUDA_CHECK_LAUNCH("cross_entropy_kernel");
  std::vector<double> host(static_cast<std::size_t>(rows));
  RSQ_CUDA_CHECK(cudaMemcpyAsync(host.data(), losses, host.size() * sizeof(double), cudaMemcpyDeviceToHost, st));
  RSQ_CUDA_CHECK(cudaStreamSynchronize(st));
  double total = 0;
  for (double v : host) total += v;  // in row order, as the CPU sums
  return total;
}

}  // namespace rsq::cuda::detail
