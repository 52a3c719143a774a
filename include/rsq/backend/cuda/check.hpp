// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// RSQ_CUDA_CHECK, RSQ_CUBLAS_CHECK, RSQ_CUSOLVER_CHECK: every CUDA runtime, cuBLAS and cuSOLVER call of the backend
/// goes through one of them. The macros only stringify the call and forward to an inline function, which throws
/// rsq::cuda_error naming the call, the status and the place. Internal: this header includes the CUDA headers and is
/// meant for the CUDA translation unit (rsq_cuda.cu) and CUDA programs, not for the public, host-only headers.

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include "rsq/backend/cuda/error.hpp"
#include "rsq/core/error.hpp"

namespace rsq::cuda::detail {

/// cuSOLVER has no function that names a status.
[[nodiscard]] inline char const* cusolver_status_name(cusolverStatus_t s) noexcept {
  switch (s) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED: return "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "CUSOLVER_STATUS_<unknown>";
  }
}

/// Throws rsq::cuda_error for a failed runtime call. The sticky-free last error is cleared first (as Thrust does),
/// so that a later, unrelated check does not report this failure again.
inline void check_cuda(cudaError_t e, char const* call, char const* file, int line) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();
  throw cuda_error(cuda_error::source::runtime, int(e),
                   rsq::detail::concat("rsq: CUDA call ", call, " failed with ", cudaGetErrorName(e), " (",
                                       cudaGetErrorString(e), ") at ", file, ":", line));
}

inline void check_cublas(cublasStatus_t s, char const* call, char const* file, int line) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  (void)cudaGetLastError();
  throw cuda_error(cuda_error::source::cublas, int(s),
                   rsq::detail::concat("rsq: cuBLAS call ", call, " failed with ", cublasGetStatusName(s), " (",
                                       cublasGetStatusString(s), ") at ", file, ":", line));
}

inline void check_cusolver(cusolverStatus_t s, char const* call, char const* file, int line) {
  if (s == CUSOLVER_STATUS_SUCCESS) return;
  (void)cudaGetLastError();
  throw cuda_error(cuda_error::source::cusolver, int(s),
                   rsq::detail::concat("rsq: cuSOLVER call ", call, " failed with ", cusolver_status_name(s),
                                       " at ", file, ":", line));
}

}  // namespace rsq::cuda::detail

/// Checks a CUDA runtime call; throws rsq::cuda_error naming it.
#define RSQ_CUDA_CHECK(call) ::rsq::cuda::detail::check_cuda((call), #call, __FILE__, __LINE__)
/// Checks a cuBLAS call; throws rsq::cuda_error naming it.
#define RSQ_CUBLAS_CHECK(call) ::rsq::cuda::detail::check_cublas((call), #call, __FILE__, __LINE__)
/// Checks a cuSOLVER call; throws rsq::cuda_error naming it.
#define RSQ_CUSOLVER_CHECK(call) ::rsq::cuda::detail::check_cusolver((call), #call, __FILE__, __LINE__)
/// Checks that the last kernel launch was accepted (a bad configuration, too much shared memory, ...).
#define RSQ_CUDA_CHECK_LAUNCH(name) \
  ::rsq::cuda::detail::check_cuda(cudaGetLastError(), "launch of " name, __FILE__, __LINE__)
