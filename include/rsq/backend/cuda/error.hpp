// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// rsq::cuda_error: the fourth error channel of rsq (docs/design.md, "Errors"). A failed CUDA runtime, cuBLAS or
/// cuSOLVER call throws it, naming the call, the library's name for the status, and where it happened; the numeric
/// status is kept. This header needs no CUDA header (the checking macros that produce these errors live in
/// <rsq/backend/cuda/check.hpp>, which only the CUDA translation unit includes).

#include <stdexcept>
#include <string>

namespace rsq {

/// A CUDA runtime, cuBLAS or cuSOLVER call failed (out of memory, no device, a kernel fault, ...).
/// A Hessian that is not positive definite is not an error: it comes back as gptq::status.
class cuda_error : public std::runtime_error {
 public:
  /// Which library reported the failure.
  enum class source { runtime, cublas, cusolver };

  cuda_error(source src, int code, std::string const& message)
      : std::runtime_error(message), source_(src), code_(code) {}

  /// The library that failed.
  [[nodiscard]] source origin() const noexcept { return source_; }
  /// The numeric status: a cudaError_t, cublasStatus_t or cusolverStatus_t value, as given by origin().
  [[nodiscard]] int code() const noexcept { return code_; }

 private:
  source source_;
  int code_;
};

}  // namespace rsq
