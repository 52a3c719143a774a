// SPDX-License-Identifier: MIT
#pragma once
// Shared pieces of the CUDA benchmarks: event timing with medians, random device data, a device proxy loss, and the
// library ceilings (device copy, cuBLAS GEMMs, cuSOLVER potrf/trtri) measured in the same run.

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <rsq/backend/cuda/all.hpp>
#include <rsq/backend/cuda/check.hpp>

namespace bench {

using rsq::index_t;

/// Median wall time in ms of @p reps calls of @p f (after one warm-up call), timed with events on the default stream.
inline double median_ms(int reps, std::function<void()> const& f, bool warm_up = true) {
  if (warm_up) f();
  RSQ_CUDA_CHECK(cudaDeviceSynchronize());
  cudaEvent_t a, b;
  RSQ_CUDA_CHECK(cudaEventCreate(&a));
  RSQ_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    RSQ_CUDA_CHECK(cudaEventRecord(a));
    f();
    RSQ_CUDA_CHECK(cudaEventRecord(b));
    RSQ_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    RSQ_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  RSQ_CUDA_CHECK(cudaEventDestroy(a));
  RSQ_CUDA_CHECK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

__device__ __forceinline__ std::uint64_t mix(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// Normal(0, 1)·scale values (Box–Muller on a counter hash), every 7th column of a (·, cols) matrix 4× larger.
template <class T>
__global__ void fill_normal_kernel(T* p, std::size_t n, index_t cols, std::uint64_t seed, float scale) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x) {
    std::uint64_t const h = mix(seed ^ mix(i));
    float const u1 = (float((h >> 40) & 0xffffff) + 1.0f) / 16777217.0f, u2 = float(h & 0xffffff) / 16777216.0f;
    float v = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2) * scale;
    if (cols > 0 && (i % std::size_t(cols)) % 7 == 0) v *= 4.0f;
    p[i] = T(v);
  }
}
template <class T>
__global__ void fill_uniform_kernel(T* p, std::size_t n, std::uint64_t seed, float lo, float hi) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x) {
    std::uint64_t const h = mix(seed ^ mix(i));
    p[i] = T(lo + (hi - lo) * (float(h & 0xffffff) / 16777216.0f));
  }
}
template <class T>
inline void fill_normal(T* p, std::size_t n, index_t cols, std::uint64_t seed, float scale = 1.0f) {
  fill_normal_kernel<<<4096, 256>>>(p, n, cols, seed, scale);
  RSQ_CUDA_CHECK_LAUNCH("fill_normal_kernel");
}
template <class T>
inline void fill_uniform(T* p, std::size_t n, std::uint64_t seed, float lo, float hi) {
  fill_uniform_kernel<<<4096, 256>>>(p, n, seed, lo, hi);
  RSQ_CUDA_CHECK_LAUNCH("fill_uniform_kernel");
}

__global__ void diff_kernel(float const* w, float const* q, float* d, std::size_t n) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x)
    d[i] = w[i] - q[i];
}
__global__ void dot_kernel(float const* a, float const* b, std::size_t n, double* out) {
  double s = 0;
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x)
    s += double(a[i]) * double(b[i]);
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (threadIdx.x % 32 == 0) atomicAdd(out, s);
}

/// tr((W − Q) H (W − Q)ᵀ) on the device (fp32 GEMM, fp64 sum), W, Q (rows, cols) and H (cols, cols) row-major.
inline double proxy_loss(cublasHandle_t h, float const* w, float const* q, float const* hm, index_t rows, index_t cols) {
  rsq::cuda::device_array<float> d(rows * cols), m(rows * cols);
  rsq::cuda::device_array<double> out(1);
  diff_kernel<<<4096, 256>>>(w, q, d.data(), std::size_t(rows * cols));
  float const one = 1, zero = 0;
  // Row-major D (rows, cols) = column-major Dᵀ; M = D·H  <=>  Mᵀ = H·Dᵀ (H symmetric).
  RSQ_CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, int(cols), int(rows), int(cols), &one, hm, int(cols),
                               d.data(), int(cols), &zero, m.data(), int(cols)));
  RSQ_CUDA_CHECK(cudaMemset(out.data(), 0, sizeof(double)));
  dot_kernel<<<4096, 256>>>(d.data(), m.data(), std::size_t(rows * cols), out.data());
  return out.to_host()[0];
}

/// The ceilings of this run.
struct ceilings {
  double copy_gbs = 0;                  // device-to-device copy, bytes read + written
  double sgemm_tflops = 0;              // fp32 (no TF32), 8192³
  double sgemm_k128_tflops = 0;         // fp32, (4096 x 14336) += (4096 x 128)(128 x 14336): the lazy-update shape
  double tf32_xtx_tflops = 0;           // TF32 XᵀX, N = 32768, d = 4096 (TN)
  double bf16_xtx_tflops = 0;           // bf16 in, fp32 out, same shape
  double ssyrk_tflops = 0;              // fp32 SYRK, N = 32768, d = 4096 (counted as N·d² flops... reported as 2·N·d²/2)
  double potrf_ms[2][2] = {};           // [n = 4096, 14336][fp32, fp64]
  double trtri_ms[2][2] = {};
  double trsm_ms[2][2] = {};
};

}  // namespace bench
