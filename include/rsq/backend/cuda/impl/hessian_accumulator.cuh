// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Definitions of hessian_accumulator<T, backend::cuda> (<rsq/backend/cuda/hessian_accumulator.hpp>).

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
                    T const* scale, hessian_precision prec, bool contiguous) {
  if (nt == 0) return;
  cudaStream_t const s = ctx.stream();
  cublasHandle_t const h = ctx.blas();
  int const F = int(features), K = int(nt);
  if (prec == hessian_precision::strict) {
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
    if (prec == hessian_precision::tf32) {
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

namespace rsq {

template <class T>
hessian_accumulator<T, backend::cuda>::hessian_accumulator(index_t features, backend::cuda be, hessian::weighting wt,
                                                           cuda::hessian_options opt)
    : base(features, wt), be_(be), opt_(opt) {
  RSQ_EXPECTS((std::is_same_v<T, float> || opt.precision == cuda::hessian_precision::strict),
              "hessian_accumulator<double, cuda>: TF32 and bf16 precisions need float; double accumulates in fp64");
  RSQ_EXPECTS(opt.chunk_tokens >= 0, "hessian_accumulator: chunk_tokens must be >= 0 (0: automatic), got ",
              opt.chunk_tokens);
  device_ = cuda::detail::runtime_api<>::current_device();
  auto& ctx = cuda::detail::context_for(be_.stream);
  sum_ = cuda::device_array<T>(features * features);
  RSQ_CUDA_CHECK(cudaMemsetAsync(sum_.data(), 0, std::size_t(features * features) * sizeof(T), ctx.stream()));
}

template <class T>
index_t hessian_accumulator<T, backend::cuda>::chunk_tokens() const noexcept {
  if (opt_.chunk_tokens > 0) return opt_.chunk_tokens;
  return std::clamp<index_t>((index_t(1) << 27) / this->features() / 256 * 256, 1024, 65536);
}

template <class T>
void hessian_accumulator<T, backend::cuda>::update_from_host(T const* rows, index_t tokens) {
  cuda::detail::device_guard guard(device_);
  auto& ctx = cuda::detail::context_for(be_.stream);
  index_t const features = this->features();
  T* d = ctx.buffer<T>(cuda::detail::scratch::hessian_upload, std::size_t(tokens * features));
  RSQ_CUDA_CHECK(cudaMemcpyAsync(d, rows, std::size_t(tokens * features) * sizeof(T), cudaMemcpyHostToDevice,
                                 ctx.stream()));
  cuda::kernels::batch_ref<T> x{d, tokens * features, features, 1, tokens, features};
  cuda::detail::hessian_update<T, T>(ctx, sum_.data(), features, x, 0, tokens, nullptr, opt_.precision, true);
  // The host buffer is refilled by the caller next: the copy must be done (it is, for pageable memory, but the
  // staged GEMM must also not see the upload buffer overwritten by the next chunk; both are stream-ordered).
  RSQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
}

template <class T>
template <class X, class R>
void hessian_accumulator<T, backend::cuda>::add_device(batch_view<const X> x, matrix_view<const R> r) {
  static_assert(std::is_same_v<X, float> || std::is_same_v<X, double>,
                "hessian_accumulator<T, cuda>: device inputs must be float or double");
  cuda::detail::device_guard guard(device_);
  auto& ctx = cuda::detail::context_for(be_.stream);
  cudaStream_t const s = ctx.stream();
  index_t const seqs = x.extent(0), L = x.extent(1), F = x.extent(2), features = this->features();
  if (r.data() != nullptr)
    RSQ_EXPECTS(r.rows() == seqs && r.cols() == L, "hessian_accumulator: importances ",
                rsq::detail::shape_string(r), " do not match inputs ", rsq::detail::shape_string(x),
                " (expected sequences x tokens)");
  if (seqs == 0) return;
  RSQ_EXPECTS(F == features, "hessian_accumulator: sequence ", sequences(), " has ", F, " features, expected ",
              features);
  RSQ_EXPECTS(L > 0, "hessian_accumulator: sequence ", sequences(), " has no tokens");
  cuda::kernels::batch_ref<X> ref{x.data(), x.stride(0), x.stride(1), x.stride(2), L, F};
  index_t const total = seqs * L;

  // NaN/Inf, named like the host check (first in sequence, token, feature order).
  auto* rec = cuda::detail::fresh_record(ctx);
  cuda::kernels::batch_finite_kernel<<<unsigned(std::min<index_t>(total, 65535)), cuda::detail::threads_1d, 0, s>>>(
      ref, total, rec);
  RSQ_CUDA_CHECK_LAUNCH("batch_finite_kernel");
  auto const bad = cuda::detail::read_back(rec, s).first_bad;
  if (bad != ULLONG_MAX) {
    index_t const tok = index_t(bad) / F, f = index_t(bad) % F, j = tok / L, t = tok % L;
    X const v = cuda::detail::read_back(x.data() + j * x.stride(0) + t * x.stride(1) + f * x.stride(2), s);
    rsq::detail::throw_invalid_argument("hessian_accumulator: input of sequence ", sequences() + j, ", token ", t,
                                        ", feature ", f, " is ", v);
  }

  // Token weights on the host, exactly as the host path computes them (importances copied over if needed).
  std::vector<T> scale;  // (sequences·tokens) √w in T; empty when w ≡ 1
  if (r.data() != nullptr) {
    std::vector<R> rh;
    if (cuda::is_device_pointer(r.data())) {
      auto const rd = cuda::detail::to_device_matrix<R, R>(r, true, s);
      rh = rd.to_host(be_);
    } else {
      rh.resize(std::size_t(total));
      for (index_t j = 0; j < seqs; ++j)
        for (index_t t = 0; t < L; ++t) rh[std::size_t(j * L + t)] = r(j, t);
    }
    scale.resize(std::size_t(total));
    for (index_t j = 0; j < seqs; ++j) {
      auto const w = hessian::token_weights(vector_view<const R>(rh.data() + j * L, L), L, this->weighting(),
                                            sequences() + j);
      for (index_t t = 0; t < L; ++t) scale[std::size_t(j * L + t)] = T(std::sqrt(w[std::size_t(t)]));
    }
  }
  T* scale_d = nullptr;
  if (!scale.empty()) {
    scale_d = ctx.buffer<T>(cuda::detail::scratch::hessian_weights, scale.size());
    RSQ_CUDA_CHECK(cudaMemcpyAsync(scale_d, scale.data(), scale.size() * sizeof(T), cudaMemcpyHostToDevice, s));
  }
  bool const contiguous = x.is_contiguous();
  index_t const chunk = chunk_tokens();
  for (index_t t0 = 0; t0 < total; t0 += chunk)
    cuda::detail::hessian_update<T, X>(ctx, sum_.data(), features, ref, t0, std::min(chunk, total - t0), scale_d,
                                       opt_.precision, contiguous);
  RSQ_CUDA_CHECK(cudaStreamSynchronize(s));  // `scale` (host) and the staging buffers are reused by the next call
  device_sequences_ += seqs;
  device_tokens_ += total;
}

template <class T>
void hessian_accumulator<T, backend::cuda>::merge(hessian_accumulator const& other) {
  RSQ_EXPECTS(other.features() == this->features(), "hessian_accumulator::merge: features differ (",
              this->features(), " vs ", other.features(), ")");
  index_t const n = this->features() * this->features();
  // The other accumulator's queued work must be done before its sum is read.
  {
    cuda::detail::device_guard g(other.device_);
    RSQ_CUDA_CHECK(cudaStreamSynchronize(other.be_.stream));
  }
  cuda::detail::device_guard guard(device_);
  auto& ctx = cuda::detail::context_for(be_.stream);
  T const* src = other.sum_.data();
  if (other.device_ != device_) {  // multi-GPU: bring the other sum over (peer copy, staged by the driver if needed)
    T* tmp = ctx.buffer<T>(cuda::detail::scratch::hessian_upload, std::size_t(n));
    RSQ_CUDA_CHECK(cudaMemcpyPeerAsync(tmp, device_, other.sum_.data(), other.device_, std::size_t(n) * sizeof(T),
                                       ctx.stream()));
    src = tmp;
  }
  cuda::kernels::add_kernel<<<cuda::kernels::blocks_for(n, cuda::detail::threads_1d), cuda::detail::threads_1d, 0,
                              ctx.stream()>>>(sum_.data(), src, n);
  RSQ_CUDA_CHECK_LAUNCH("add_kernel");
  RSQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
  this->merge_counts(other);
  device_sequences_ += other.device_sequences_;
  device_tokens_ += other.device_tokens_;
}

template <class T>
cuda::device_matrix<T> hessian_accumulator<T, backend::cuda>::hessian_device() const {
  cuda::detail::device_guard guard(device_);
  auto& ctx = cuda::detail::context_for(be_.stream);
  index_t const n = this->features();
  cuda::device_matrix<T> h(n, n);
  T const scale = sequences() > 0 ? T(2.0 / double(sequences())) : T(0);
  cuda::kernels::symmetrize_kernel<<<cuda::kernels::grid_2d(n, n), 256, 0, ctx.stream()>>>(sum_.data(), n, scale, h.data());
  RSQ_CUDA_CHECK_LAUNCH("symmetrize_kernel");
  return h;
}

template <class T>
rsq::matrix<T> hessian_accumulator<T, backend::cuda>::hessian() const {
  auto const hd = hessian_device();
  index_t const n = this->features();
  auto h = rsq::make_matrix<T>(n, n);
  cuda::detail::runtime_api<>::copy(h.data(), hd.data(), std::size_t(n * n) * sizeof(T), be_.stream);
  return h;
}

}  // namespace rsq
