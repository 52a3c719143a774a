// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Definitions of the CUDA Hessian accumulator (<rsq/backend/cuda/hessian_accumulator.hpp>).

#include <algorithm>
#include <climits>
#include <cmath>
#include <type_traits>
#include <vector>

#include "rsq/backend/cuda/hessian_accumulator.hpp"
#include "rsq/backend/cuda/impl/common.cuh"
#include "rsq/backend/cuda/kernels/hessian.cuh"
#include "rsq/hessian/weights.hpp"

namespace rsq::cuda::detail {

/// sum(lower) += Σ_{t0 ≤ t < t0+nt} (scale_t·x_t)(scale_t·x_t)ᵀ in the requested arithmetic.
template <class T, class X>
void hessian_update(context& ctx, T* sum, index_t features, kernels::batch_ref<X> x, index_t t0, index_t nt,
                    T const* scale, hessian::precision prec, bool contiguous) {
  if (nt == 0) return;
  cudaStream_t const s = ctx.stream();
  cublasHandle_t const h = ctx.blas();
  int const F = int(features), K = int(nt);
  if (prec == hessian::precision::strict) {
    T const* a = nullptr;
    if (contiguous && std::is_same_v<X, T> && scale == nullptr) {
      a = reinterpret_cast<T const*>(x.data) + t0 * features;  // (nt, features) rows as they are
    } else {
      T* stage = ctx.buffer<T>(scratch::hessian_stage, std::size_t(nt * features));
      kernels::stage_rows_kernel<<<unsigned(std::min<index_t>(nt, 65535)), threads_1d, 0, s>>>(x, t0, nt, scale,
                                                                                               stage);
      RSQ_CUDA_CHECK_LAUNCH("stage_rows_kernel");
      a = stage;
    }
    // Row-major (nt, F) = column-major A (F × nt): sum += A·Aᵀ, lower triangle.
    T const one = T(1);
    if constexpr (std::is_same_v<T, float>)
      RSQ_CUBLAS_CHECK(cublasSsyrk(h, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, F, K, &one, a, F, &one, sum, F));
    else
      RSQ_CUBLAS_CHECK(cublasDsyrk(h, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, F, K, &one, a, F, &one, sum, F));
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    // The staged tokens are padded with zeros to a multiple of 32: leading dimensions that are multiples of 8
    // keep cuBLAS on its tensor-core kernels (an odd one drops to a much slower path).
    index_t const ld = (nt + 31) / 32 * 32;
    int const KP = int(ld);
    dim3 const block(32, 8), grid(unsigned(ld / 32), unsigned((features + 31) / 32));
    float const one = 1.0f;
    if (prec == hessian::precision::tf32) {
      float* stage = ctx.buffer<float>(scratch::hessian_stage, std::size_t(ld * features));  // (F, ld)
      kernels::stage_columns_kernel<X, float, float><<<grid, block, 0, s>>>(x, t0, nt, scale, stage, ld);
      RSQ_CUDA_CHECK_LAUNCH("stage_columns_kernel");
      // Column-major A' (ld × F): sum += A'ᵀ·A' (TN GEMM, both triangles written; the padding adds zeros).
      RSQ_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, F, F, KP, &one, stage, CUDA_R_32F, KP, stage,
                                    CUDA_R_32F, KP, &one, sum, CUDA_R_32F, F, CUBLAS_COMPUTE_32F_FAST_TF32,
                                    CUBLAS_GEMM_DEFAULT));
    } else {
      auto* stage = ctx.buffer<__nv_bfloat16>(scratch::hessian_stage, std::size_t(ld * features));  // (F, ld)
      kernels::stage_columns_kernel<X, float, __nv_bfloat16><<<grid, block, 0, s>>>(x, t0, nt, scale, stage, ld);
      RSQ_CUDA_CHECK_LAUNCH("stage_columns_kernel");
      RSQ_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, F, F, KP, &one, stage, CUDA_R_16BF, KP, stage,
                                    CUDA_R_16BF, KP, &one, sum, CUDA_R_32F, F, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
    }
  }
}

}  // namespace rsq::cuda::detail

namespace rsq::backend {

template <class T>
using cuda_accumulator = implementation<algorithm::hessian_accumulation, cuda>::accumulator<T>;

template <class T>
cuda_accumulator<T>::accumulator(cuda const& be, index_t features, hessian::options const& opt)
    : be_(be), opt_(opt), features_(features) {
  device_ = rsq::cuda::detail::runtime_api<>::current_device();
  auto& ctx = rsq::cuda::detail::context_for(be_.stream);
  sum_ = rsq::cuda::device_array<T>(features * features);
  RSQ_CUDA_CHECK(cudaMemsetAsync(sum_.data(), 0, std::size_t(features * features) * sizeof(T), ctx.stream()));
}

template <class T>
index_t cuda_accumulator<T>::chunk_tokens() const noexcept {
  if (opt_.chunk_tokens > 0) return opt_.chunk_tokens;
  return std::clamp<index_t>((index_t(1) << 27) / features_ / 256 * 256, 1024, 65536);
}

template <class T>
void cuda_accumulator<T>::update_from_host(T const* rows, index_t tokens) {
  rsq::cuda::detail::device_guard guard(device_);
  auto& ctx = rsq::cuda::detail::context_for(be_.stream);
  index_t const features = features_;
  T* d = ctx.buffer<T>(rsq::cuda::detail::scratch::hessian_upload, std::size_t(tokens * features));
  RSQ_CUDA_CHECK(cudaMemcpyAsync(d, rows, std::size_t(tokens * features) * sizeof(T), cudaMemcpyHostToDevice,
                                 ctx.stream()));
  rsq::cuda::kernels::batch_ref<T> x{d, tokens * features, features, 1, tokens, features};
  rsq::cuda::detail::hessian_update<T, T>(ctx, sum_.data(), features, x, 0, tokens, nullptr, opt_.precision, true);
  // The host buffer is refilled by the caller next: the upload and the staged product must be done with it.
  RSQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
}

template <class T>
template <class X, class R>
void cuda_accumulator<T>::add_resident(batch_view<const X> x, matrix_view<const R> r, hessian::weighting const& wt,
                                       index_t first_sequence) {
  static_assert(std::is_same_v<X, float> || std::is_same_v<X, double>,
                "hessian_accumulator<T, cuda>: device inputs must be float or double");
  namespace cd = rsq::cuda::detail;
  (void)cd::resident_here(x.data(), "hessian_accumulator: the inputs");
  cd::device_guard guard(device_);
  auto& ctx = cd::context_for(be_.stream);
  cudaStream_t const s = ctx.stream();
  index_t const seqs = x.extent(0), L = x.extent(1), F = x.extent(2), features = features_;
  rsq::cuda::kernels::batch_ref<X> ref{x.data(), x.stride(0), x.stride(1), x.stride(2), L, F};
  index_t const total = seqs * L;

  // NaN/Inf, named like the host check (first in sequence, token, feature order).
  auto* rec = cd::fresh_record(ctx);
  rsq::cuda::kernels::batch_finite_kernel<<<unsigned(std::min<index_t>(total, 65535)), cd::threads_1d, 0, s>>>(
      ref, total, rec);
  RSQ_CUDA_CHECK_LAUNCH("batch_finite_kernel");
  auto const bad = cd::read_back(rec, s).first_bad;
  if (bad != ULLONG_MAX) {
    index_t const tok = index_t(bad) / F, f = index_t(bad) % F, j = tok / L, t = tok % L;
    X const v = cd::read_back(x.data() + j * x.stride(0) + t * x.stride(1) + f * x.stride(2), s);
    rsq::detail::throw_invalid_argument("hessian_accumulator: input of sequence ", first_sequence + j, ", token ", t,
                                        ", feature ", f, " is ", v);
  }

  // Token weights on the host, exactly as the host path computes them (importances copied over if needed).
  std::vector<T> scale;  // (sequences·tokens) √w in T; empty when w ≡ 1
  if (r.data() != nullptr) {
    std::vector<R> rh;
    if (cd::resident_here(r.data(), "hessian_accumulator: the importances")) {
      auto const rd = cd::to_device_matrix<R, R>(r, true, s);
      rh = rd.to_host(be_);
    } else {
      rh.resize(std::size_t(total));
      for (index_t j = 0; j < seqs; ++j)
        for (index_t t = 0; t < L; ++t) rh[std::size_t(j * L + t)] = r(j, t);
    }
    scale.resize(std::size_t(total));
    for (index_t j = 0; j < seqs; ++j) {
      auto const w = hessian::token_weights(vector_view<const R>(rh.data() + j * L, L), L, wt, first_sequence + j);
      for (index_t t = 0; t < L; ++t) scale[std::size_t(j * L + t)] = T(std::sqrt(w[std::size_t(t)]));
    }
  }
  T* scale_d = nullptr;
  if (!scale.empty()) {
    scale_d = ctx.buffer<T>(cd::scratch::hessian_weights, scale.size());
    RSQ_CUDA_CHECK(cudaMemcpyAsync(scale_d, scale.data(), scale.size() * sizeof(T), cudaMemcpyHostToDevice, s));
  }
  bool const contiguous = x.is_contiguous();
  index_t const chunk = chunk_tokens();
  for (index_t t0 = 0; t0 < total; t0 += chunk)
    cd::hessian_update<T, X>(ctx, sum_.data(), features, ref, t0, std::min(chunk, total - t0), scale_d,
                             opt_.precision, contiguous);
  RSQ_CUDA_CHECK(cudaStreamSynchronize(s));  // `scale` (host) and the staging buffers are reused by the next call
}

template <class T>
void cuda_accumulator<T>::merge(accumulator const& other) {
  namespace cd = rsq::cuda::detail;
  index_t const n = features_ * features_;
  // The other accumulator's queued work must be done before its sum is read.
  {
    cd::device_guard g(other.device_);
    RSQ_CUDA_CHECK(cudaStreamSynchronize(other.be_.stream));
  }
  cd::device_guard guard(device_);
  auto& ctx = cd::context_for(be_.stream);
  T const* src = other.sum_.data();
  if (other.device_ != device_) {  // multi-GPU: bring the other sum over (peer copy, staged by the driver if needed)
    T* tmp = ctx.buffer<T>(cd::scratch::hessian_upload, std::size_t(n));
    RSQ_CUDA_CHECK(cudaMemcpyPeerAsync(tmp, device_, other.sum_.data(), other.device_, std::size_t(n) * sizeof(T),
                                       ctx.stream()));
    src = tmp;
  }
  rsq::cuda::kernels::add_kernel<<<rsq::cuda::kernels::blocks_for(n, cd::threads_1d), cd::threads_1d, 0,
                                   ctx.stream()>>>(sum_.data(), src, n);
  RSQ_CUDA_CHECK_LAUNCH("add_kernel");
  RSQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
}

template <class T>
rsq::cuda::device_matrix<T> cuda_accumulator<T>::hessian_resident(T scale) const {
  rsq::cuda::detail::device_guard guard(device_);
  auto& ctx = rsq::cuda::detail::context_for(be_.stream);
  index_t const n = features_;
  rsq::cuda::device_matrix<T> h(n, n);
  rsq::cuda::kernels::symmetrize_kernel<<<rsq::cuda::kernels::grid_2d(n, n), 256, 0, ctx.stream()>>>(sum_.data(), n,
                                                                                                     scale, h.data());
  RSQ_CUDA_CHECK_LAUNCH("symmetrize_kernel");
  return h;
}

template <class T>
rsq::matrix<T> cuda_accumulator<T>::hessian(T scale) const {
  auto const hd = hessian_resident(scale);
  index_t const n = features_;
  auto h = rsq::make_matrix_for_overwrite<T>(n, n);
  rsq::cuda::detail::runtime_api<>::copy(h.data(), hd.data(), std::size_t(n * n) * sizeof(T), be_.stream);
  return h;
}

}  // namespace rsq::backend
