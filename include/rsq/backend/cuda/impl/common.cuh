// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Host-side helpers of the CUDA implementation: typed cuBLAS wrappers, CUDA data types, moving views of host or
/// device memory into contiguous device arrays, device-side validation with host-side messages.

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <type_traits>
#include <vector>

#include "rsq/backend/cuda/check.hpp"
#include "rsq/backend/cuda/gptq_solver.hpp"
#include "rsq/backend/cuda/handles.hpp"
#include "rsq/backend/cuda/kernels/gptq.cuh"
#include "rsq/backend/cuda/memory.hpp"
#include "rsq/core/checks.hpp"

namespace rsq::cuda::detail {

inline constexpr int threads_1d = 256;

template <class T>
inline constexpr cudaDataType_t data_type = std::is_same_v<T, double> ? CUDA_R_64F : CUDA_R_32F;

/// C = alpha·op(A)·op(B) + beta·C (column-major, cuBLAS conventions), in T.
template <class T>
void gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, index_t m, index_t n, index_t k, T alpha,
          T const* a, index_t lda, T const* b, index_t ldb, T beta, T* c, index_t ldc) {
  if (m == 0 || n == 0 || k == 0) return;
  if constexpr (std::is_same_v<T, float>)
    RSQ_CUBLAS_CHECK(cublasSgemm(h, ta, tb, int(m), int(n), int(k), &alpha, a, int(lda), b, int(ldb), &beta, c,
                                 int(ldc)));
  else
    RSQ_CUBLAS_CHECK(cublasDgemm(h, ta, tb, int(m), int(n), int(k), &alpha, a, int(lda), b, int(ldb), &beta, c,
                                 int(ldc)));
}

/// Solves op(A)·X = alpha·B in place of B (A triangular), in T.
template <class T>
void trsm(cublasHandle_t h, cublasSideMode_t side, cublasFillMode_t uplo, cublasOperation_t trans,
          cublasDiagType_t diag, index_t m, index_t n, T alpha, T const* a, index_t lda, T* b, index_t ldb) {
  if constexpr (std::is_same_v<T, float>)
    RSQ_CUBLAS_CHECK(cublasStrsm(h, side, uplo, trans, diag, int(m), int(n), &alpha, a, int(lda), b, int(ldb)));
  else
    RSQ_CUBLAS_CHECK(cublasDtrsm(h, side, uplo, trans, diag, int(m), int(n), &alpha, a, int(lda), b, int(ldb)));
}

/// A contiguous row-major copy of @p v (host or device memory, any strides) in device memory, as T.
template <class T, class S>
[[nodiscard]] device_array<T> to_device_matrix(matrix_view<const S> v, bool on_device, cudaStream_t s) {
  index_t const rows = v.rows(), cols = v.cols();
  device_array<T> out(rows * cols);
  if (rows * cols == 0) return out;
  constexpr bool same = std::is_same_v<T, S>;
  if (on_device) {
    if (same && v.is_contiguous()) {
      RSQ_CUDA_CHECK(cudaMemcpyAsync(out.data(), v.data(), std::size_t(rows * cols) * sizeof(T),
                                     cudaMemcpyDeviceToDevice, s));
    } else {
      kernels::gather_kernel<<<kernels::grid_2d(rows, cols), 256, 0, s>>>(
          v.data(), v.stride(0), v.stride(1), rows, cols, out.data());
      RSQ_CUDA_CHECK_LAUNCH("gather_kernel");
    }
    return out;
  }
  if (same && v.is_contiguous()) {
    RSQ_CUDA_CHECK(cudaMemcpyAsync(out.data(), v.data(), std::size_t(rows * cols) * sizeof(T),
                                   cudaMemcpyHostToDevice, s));
    RSQ_CUDA_CHECK(cudaStreamSynchronize(s));  // pageable source: keep the caller's memory valid semantics simple
    return out;
  }
  std::vector<T> packed(static_cast<std::size_t>(rows * cols));  // (rows, cols)
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) packed[std::size_t(r * cols + c)] = T(v(r, c));
  RSQ_CUDA_CHECK(cudaMemcpyAsync(out.data(), packed.data(), packed.size() * sizeof(T), cudaMemcpyHostToDevice, s));
  RSQ_CUDA_CHECK(cudaStreamSynchronize(s));
  return out;
}

/// Whether @p p is device memory of the current device (true) or host memory (false); throws rsq::invalid_argument
/// naming @p what for memory of another device, which no kernel of this call may read.
inline bool resident_here(void const* p, char const* what) {
  int const d = runtime_api<>::device_of(p);
  if (d < 0) return false;
  int const current = runtime_api<>::current_device();
  RSQ_EXPECTS(d == current, what, " is in the memory of device ", d, " but the backend runs on device ", current,
              " (make that device current, or copy the data over)");
  return true;
}

/// Copies one element of device memory to the host.
template <class T>
[[nodiscard]] T read_back(T const* p, cudaStream_t s) {
  T v{};
  RSQ_CUDA_CHECK(cudaMemcpyAsync(&v, p, sizeof(T), cudaMemcpyDeviceToHost, s));
  RSQ_CUDA_CHECK(cudaStreamSynchronize(s));
  return v;
}

/// The magnitude stored in a kernels::magnitude_key.
[[nodiscard]] inline double key_magnitude(unsigned long long key) {
  unsigned const bits = unsigned(key >> 32);
  float f = 0;
  std::memcpy(&f, &bits, sizeof f);
  return double(f);
}

/// A fresh validation record in device memory.
[[nodiscard]] inline kernels::validation_record* fresh_record(context& ctx) {
  auto* rec = ctx.buffer<kernels::validation_record>(scratch::info, 1);
  kernels::validation_record init{ULLONG_MAX, 0, 0};
  RSQ_CUDA_CHECK(cudaMemcpyAsync(rec, &init, sizeof init, cudaMemcpyHostToDevice, ctx.stream()));
  return rec;
}

/// check_finite() for a device matrix: the same message as the host check, naming the first bad element.
template <class T>
void check_finite_device(context& ctx, matrix_view<const T> m, char const* what) {
  if (m.size() == 0) return;
  auto* rec = fresh_record(ctx);
  kernels::finite_kernel<<<kernels::grid_2d(m.rows(), m.cols()), 256, 0, ctx.stream()>>>(
      m.data(), m.stride(0), m.stride(1), m.rows(), m.cols(), rec);
  RSQ_CUDA_CHECK_LAUNCH("finite_kernel");
  auto const r = read_back(rec, ctx.stream());
  if (r.first_bad == ULLONG_MAX) return;
  index_t const i = index_t(r.first_bad) / m.cols(), j = index_t(r.first_bad) % m.cols();
  T const v = read_back(m.data() + i * m.stride(0) + j * m.stride(1), ctx.stream());
  rsq::detail::throw_invalid_argument(what, " has a non-finite value (", v, ") at row ", i, ", column ", j);
}

}  // namespace rsq::cuda::detail

namespace rsq::cuda::detail {

/// Adds the wall time of a scope to a profile slot when solver_tuning::profile is on (synchronizing the stream at
/// both ends, so that the time is the device work of the scope); does nothing otherwise.
class phase_timer {
 public:
  phase_timer(cudaStream_t s, double& slot) : stream_(s), slot_(tuning().profile ? &slot : nullptr) {
    if (slot_) {
      RSQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
      t0_ = std::chrono::steady_clock::now();
    }
  }
  phase_timer(phase_timer const&) = delete;
  phase_timer& operator=(phase_timer const&) = delete;
  ~phase_timer() {
    if (!slot_) return;
    if (cudaStreamSynchronize(stream_) != cudaSuccess) (void)cudaGetLastError();
    *slot_ += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count();
  }

 private:
  cudaStream_t stream_;
  double* slot_;
  std::chrono::steady_clock::time_point t0_{};
};

/// Makes @p device current for a scope.
class device_guard {
 public:
  explicit device_guard(int device) {
    RSQ_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) RSQ_CUDA_CHECK(cudaSetDevice(device));
  }
  device_guard(device_guard const&) = delete;
  device_guard& operator=(device_guard const&) = delete;
  ~device_guard() {
    int now = 0;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) (void)cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
};

}  // namespace rsq::cuda::detail
