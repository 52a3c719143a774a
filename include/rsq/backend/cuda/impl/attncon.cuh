// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Definitions of the GPU AttnCon (<rsq/backend/cuda/attncon.hpp>).

#include <cmath>
#include <vector>

#include "rsq/backend/cuda/attncon.hpp"
#include "rsq/backend/cuda/impl/common.cuh"
#include "rsq/backend/cuda/kernels/attncon.cuh"

namespace rsq::cuda::detail {

/// A contiguous device copy of a rank-3 array (host or device memory, any strides).
template <class T>
[[nodiscard]] device_array<T> to_device_3d(tensor_view<const T, 3> v, bool on_device, cudaStream_t s) {
  index_t const a = v.extent(0), b = v.extent(1), c = v.extent(2);
  if (v.is_contiguous()) {
    device_array<T> out(a * b * c);
    RSQ_CUDA_CHECK(cudaMemcpyAsync(out.data(), v.data(), std::size_t(a * b * c) * sizeof(T), cudaMemcpyDefault, s));
    RSQ_CUDA_CHECK(cudaStreamSynchronize(s));
    return out;
  }
  device_array<T> out(a * b * c);
  for (index_t i = 0; i < a; ++i) {
    auto part = to_device_matrix<T, T>(matrix_view<const T>(v.data() + i * v.stride(0), {b, c}, {v.stride(1), v.stride(2)}),
                                       on_device, s);
    RSQ_CUDA_CHECK(cudaMemcpyAsync(out.data() + i * b * c, part.data(), std::size_t(b * c) * sizeof(T),
                                   cudaMemcpyDeviceToDevice, s));
    RSQ_CUDA_CHECK(cudaStreamSynchronize(s));
  }
  return out;
}

template <class T>
void check_finite3_device(context& ctx, T const* a, index_t n0, index_t n1, index_t n2, char const* what) {
  auto* rec = fresh_record(ctx);
  kernels::finite3_kernel<<<kernels::grid_2d(n0 * n1, n2), 256, 0, ctx.stream()>>>(
      kernels::array3<T>{a, n1 * n2, n2, 1}, n0, n1, n2, rec);
  RSQ_CUDA_CHECK_LAUNCH("finite3_kernel");
  auto const bad = read_back(rec, ctx.stream()).first_bad;
  if (bad == ULLONG_MAX) return;
  index_t const i = index_t(bad) / (n1 * n2), j = index_t(bad) / n2 % n1, k = index_t(bad) % n2;
  rsq::detail::throw_invalid_argument(what, " has a non-finite value (", read_back(a + bad, ctx.stream()), ") at [",
                                      i, ", ", j, ", ", k, "]");
}

template <class T>
void gemm_strided_batched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, index_t m, index_t n, index_t k,
                          T alpha, T const* a, index_t lda, index_t sa, T const* b, index_t ldb, index_t sb, T beta, T* c,
                          index_t ldc, index_t sc, index_t batch) {
  if constexpr (std::is_same_v<T, float>)
    RSQ_CUBLAS_CHECK(cublasSgemmStridedBatched(h, ta, tb, int(m), int(n), int(k), &alpha, a, int(lda), sa, b, int(ldb),
                                               sb, &beta, c, int(ldc), sc, int(batch)));
  else
    RSQ_CUBLAS_CHECK(cublasDgemmStridedBatched(h, ta, tb, int(m), int(n), int(k), &alpha, a, int(lda), sa, b, int(ldb),
                                               sb, &beta, c, int(ldc), sc, int(batch)));
}


template <class T>
void attncon_probabilities_impl(backend::cuda const& be, tensor_view<const T, 3> a, vector_view<T> out,
                                importance::attncon_options const& opt) {
  auto& ctx = context_for(be.stream);
  cudaStream_t const s = ctx.stream();
  index_t const heads = a.extent(0), L = a.extent(1);
  bool const on_device = resident_here(a.data(), "attncon: the attention probabilities");
  device_array<T> copy;
  kernels::array3<T> ref{a.data(), a.stride(0), a.stride(1), a.stride(2)};
  if (!on_device) {
    copy = to_device_3d(a, false, s);
    ref = {copy.data(), L * L, L, 1};
  }
  auto* rec = fresh_record(ctx);
  device_array<double> row_sums(heads * L), partial(heads * L);
  kernels::probs_rows_kernel<<<unsigned((heads * L + 7) / 8), 256, 0, s>>>(ref, heads, L, row_sums.data(), rec);
  RSQ_CUDA_CHECK_LAUNCH("probs_rows_kernel");
  auto const bad = read_back(rec, s).first_bad;
  if (bad != ULLONG_MAX) {
    index_t const h = index_t(bad) / (L * L), i = index_t(bad) / L % L, k = index_t(bad) % L;
    T const v = read_back(ref.data + h * ref.s0 + i * ref.s1 + k * ref.s2, s);
    rsq::detail::throw_invalid_argument("attncon: attention probabilities must be finite and >= 0, got ", v, " at [",
                                        h, ", ", i, ", ", k, "]");
  }
  auto const sums = row_sums.to_host(be);
  for (index_t r = 0; r < heads * L; ++r)
    if (!(std::abs(sums[std::size_t(r)] - 1.0) <= opt.row_sum_tolerance))
      rsq::detail::throw_invalid_argument("attncon: attention row [", r / L, ", ", r % L, "] sums to ",
                                          sums[std::size_t(r)], " over keys 0..", r % L, " (causal part), not 1 within ",
                                          opt.row_sum_tolerance, ": expected causal softmax probabilities");
  kernels::probs_columns_kernel<<<dim3(unsigned((L + 255) / 256), unsigned(heads)), 256, 0, s>>>(ref, L,
                                                                                              partial.data());
  RSQ_CUDA_CHECK_LAUNCH("probs_columns_kernel");
  kernels::heads_sum_kernel<<<kernels::blocks_for(L, 256), 256, 0, s>>>(partial.data(), heads, L, out.data());
  RSQ_CUDA_CHECK_LAUNCH("heads_sum_kernel");
  RSQ_CUDA_CHECK(cudaStreamSynchronize(s));  // the temporaries are freed on return
}

template <class T>
void attncon_queries_keys_impl(backend::cuda const& be, tensor_view<const T, 3> q, tensor_view<const T, 3> k,
                               vector_view<T> out, importance::attncon_options const& opt) {
  auto& ctx = context_for(be.stream);
  cudaStream_t const s = ctx.stream();
  index_t const heads = q.extent(0), kv = k.extent(0), L = q.extent(1), d = q.extent(2), group = heads / kv;
  // Contiguous device copies (the checks run on them, with the host messages).
  auto const qd = to_device_3d(q, resident_here(q.data(), "attncon: the queries"), s);
  auto const kd = to_device_3d(k, resident_here(k.data(), "attncon: the keys"), s);
  check_finite3_device(ctx, qd.data(), heads, L, d, "attncon: queries");
  check_finite3_device(ctx, kd.data(), kv, L, d, "attncon: keys");
  T const scale = T(opt.softmax_scale > 0 ? opt.softmax_scale : 1.0 / std::sqrt(double(d)));
  // Queries per block: the logits of a block, (group, qb, L), fit in block_bytes.
  index_t qb = opt.block_bytes / (group * L * index_t(sizeof(T)));
  qb = std::clamp<index_t>(qb / 32 * 32, 32, L);
  T* sbuf = ctx.buffer<T>(scratch::hessian_stage, std::size_t(group * qb * L));
  T* stats = ctx.buffer<T>(scratch::hessian_weights, std::size_t(2 * group * qb));
  device_array<double> partial(heads * L);
  RSQ_CUDA_CHECK(cudaMemsetAsync(partial.data(), 0, std::size_t(heads * L) * sizeof(double), s));
  for (index_t g = 0; g < kv; ++g)
    for (index_t i0 = 0; i0 < L; i0 += qb) {
      index_t const nq = std::min(qb, L - i0), n = i0 + nq;  // queries of the block, keys they see
      // S[b][r][t] = scale·q_{i0+r}·k_t for the group's heads b (column-major C(t, r) = Σ_c K[t][c]·Q[i0+r][c]).
      gemm_strided_batched<T>(ctx.blas(), CUBLAS_OP_T, CUBLAS_OP_N, n, nq, d, scale, kd.data() + g * L * d, d,
                                      0, qd.data() + g * group * L * d + i0 * d, d, L * d, T(0), sbuf, L, qb * L,
                                      group);
      kernels::softmax_stats_kernel<<<dim3(unsigned(nq), unsigned(group)), 256, 0, s>>>(sbuf, L, qb * L, nq, i0, stats,
                                                                                       stats + group * qb);
      RSQ_CUDA_CHECK_LAUNCH("softmax_stats_kernel");
      kernels::softmax_columns_kernel<<<dim3(unsigned((n + 255) / 256), unsigned(group)), 256, 0, s>>>(
          sbuf, L, qb * L, nq, i0, stats, stats + group * qb, g * group, L, partial.data());
      RSQ_CUDA_CHECK_LAUNCH("softmax_columns_kernel");
    }
  kernels::heads_sum_kernel<<<kernels::blocks_for(L, 256), 256, 0, s>>>(partial.data(), heads, L, out.data());
  RSQ_CUDA_CHECK_LAUNCH("heads_sum_kernel");
  RSQ_CUDA_CHECK(cudaStreamSynchronize(s));  // the temporaries are freed on return
}

}  // namespace rsq::cuda::detail
