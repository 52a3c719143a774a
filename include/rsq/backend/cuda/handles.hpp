// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// cuBLAS and cuSOLVER handles and reusable device workspaces, cached per (thread, device, stream). Handles are
/// owned by std::unique_ptr with deleters; a context is created on first use and lives until its thread ends.
/// Internal (includes the CUDA headers): used by the CUDA translation unit.

#include <cstddef>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "rsq/backend/cuda/check.hpp"
#include "rsq/backend/cuda/memory.hpp"

namespace rsq::cuda::detail {

struct cublas_deleter {
  void operator()(cublasContext* h) const noexcept { (void)cublasDestroy(h); }
};
struct cusolver_deleter {
  void operator()(cusolverDnContext* h) const noexcept { (void)cusolverDnDestroy(h); }
};
struct cusolver_params_deleter {
  void operator()(cusolverDnParams* p) const noexcept { (void)cusolverDnDestroyParams(p); }
};
struct device_deleter {
  void operator()(void* p) const noexcept {
    if (cudaFree(p) != cudaSuccess) (void)cudaGetLastError();
  }
};

using cublas_handle = std::unique_ptr<cublasContext, cublas_deleter>;
using cusolver_handle = std::unique_ptr<cusolverDnContext, cusolver_deleter>;
using cusolver_params = std::unique_ptr<cusolverDnParams, cusolver_params_deleter>;
using device_buffer = std::unique_ptr<void, device_deleter>;

/// Named scratch buffers that only grow; work on one stream is ordered, so a buffer may be reused by the next call
/// as soon as this one has queued its work.
enum class scratch { solver_work, host_work, info, factor, hessian_stage, hessian_weights, hessian_upload, gptq_e, gptq_w1,
                     reduce,
                     gemm_a16, gemm_b16,  // linalg::gemm: bf16 copies of A and B
                     nn_logits, nn_probs16, nn_operands16, nn_partial, nn_pointers, nn_rows, nn_ids,  // forward pass
                     activation_mean, activation_rows,  // importance::activation_scores: μ per sequence, ‖x_t − μ‖²
                     reverse_probs, reverse_grads, reverse_losses,  // reverse pass: P and dP of a sub-batch, row losses
                     lu_b,  // linalg::lu_solve: B in column-major
                     count_ };

/// What the backend keeps per (thread, device, stream).
class context {
 public:
  context(int device, cudaStream_t stream) : device_(device), stream_(stream) {
    cublasHandle_t b = nullptr;
    RSQ_CUBLAS_CHECK(cublasCreate(&b));
    blas_.reset(b);
    RSQ_CUBLAS_CHECK(cublasSetStream(b, stream));
    // Strict IEEE fp32 GEMMs unless a caller asks for TF32 explicitly (cublasGemmEx with a TF32 compute type).
    RSQ_CUBLAS_CHECK(cublasSetMathMode(b, CUBLAS_DEFAULT_MATH));
    cusolverDnHandle_t s = nullptr;
    RSQ_CUSOLVER_CHECK(cusolverDnCreate(&s));
    solver_.reset(s);
    RSQ_CUSOLVER_CHECK(cusolverDnSetStream(s, stream));
    cusolverDnParams_t p = nullptr;
    RSQ_CUSOLVER_CHECK(cusolverDnCreateParams(&p));
    params_.reset(p);
  }

  [[nodiscard]] cublasHandle_t blas() const noexcept { return blas_.get(); }
  [[nodiscard]] cusolverDnHandle_t solver() const noexcept { return solver_.get(); }
  [[nodiscard]] cusolverDnParams_t params() const noexcept { return params_.get(); }
  [[nodiscard]] cudaStream_t stream() const noexcept { return stream_; }
  [[nodiscard]] int device() const noexcept { return device_; }

  /// A device buffer of at least @p bytes for @p slot (contents undefined).
  void* buffer(scratch slot, std::size_t bytes) {
    auto& b = buffers_[std::size_t(slot)];
    if (bytes > b.second || !b.first) {
      if (b.first) RSQ_CUDA_CHECK(cudaStreamSynchronize(stream_));  // work queued on the old buffer must finish
      b.first.reset();
      b.first.reset(runtime_api<>::allocate(bytes > 0 ? bytes : 1));
      b.second = bytes;
    }
    return b.first.get();
  }
  template <class T>
  T* buffer(scratch slot, std::size_t count) {
    return static_cast<T*>(buffer(slot, count * sizeof(T)));
  }

  /// A host buffer of at least @p bytes (cuSOLVER's host workspace).
  void* host_buffer(std::size_t bytes) {
    if (bytes > host_.size()) host_.resize(bytes);
    return host_.empty() ? nullptr : host_.data();
  }

 private:
  int device_;
  cudaStream_t stream_;
  cublas_handle blas_;
  cusolver_handle solver_;
  cusolver_params params_;
  std::pair<device_buffer, std::size_t> buffers_[std::size_t(scratch::count_)]{};
  std::vector<unsigned char> host_;
};

/// The context of the calling thread for the current device and @p stream. A stream (or device) left in an error
/// state by earlier work is reported here, before this call queues anything: rsq::cuda_error naming the error.
inline context& context_for(cudaStream_t stream) {
  thread_local std::map<std::pair<int, cudaStream_t>, std::unique_ptr<context>> contexts;
  int device = 0;
  RSQ_CUDA_CHECK(cudaGetDevice(&device));
  if (cudaError_t const e = cudaStreamQuery(stream); e != cudaSuccess && e != cudaErrorNotReady) {
    (void)cudaGetLastError();
    throw cuda_error(cuda_error::source::runtime, int(e),
                     rsq::detail::concat("rsq: the backend's stream is in an error state before the call: ",
                                         cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"));
  }
  auto& c = contexts[{device, stream}];
  if (!c) c = std::make_unique<context>(device, stream);
  return *c;
}

}  // namespace rsq::cuda::detail
