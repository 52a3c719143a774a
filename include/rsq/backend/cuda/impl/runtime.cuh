// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Definitions of detail::runtime_api (see <rsq/backend/cuda/memory.hpp>).

#include "rsq/backend/cuda/check.hpp"
#include "rsq/backend/cuda/memory.hpp"

namespace rsq::cuda::detail {

template <class D>
void* runtime_api<D>::allocate(std::size_t bytes) {
  void* p = nullptr;
  cudaError_t const e = cudaMalloc(&p, bytes);
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    std::size_t free = 0, total = 0;
    int device = -1;
    (void)cudaGetDevice(&device);
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) (void)cudaGetLastError();
    throw cuda_error(cuda_error::source::runtime, int(e),
                     rsq::detail::concat("rsq: device ", device, " cannot hold ", bytes, " more bytes (",
                                         double(bytes) / double(1 << 20), " MiB asked for, ",
                                         double(free) / double(1 << 20), " MiB free of ",
                                         double(total) / double(1 << 20), " MiB)"));
  }
  RSQ_CUDA_CHECK(e);
  return p;
}

template <class D>
void runtime_api<D>::release(void* p) noexcept {
  // Destructors must not throw; a failing cudaFree here means the context is already gone (process exit).
  if (cudaFree(p) != cudaSuccess) (void)cudaGetLastError();
}

template <class D>
void* runtime_api<D>::allocate_pinned(std::size_t bytes) {
  void* p = nullptr;
  cudaError_t const e = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    throw cuda_error(cuda_error::source::runtime, int(e),
                     rsq::detail::concat("rsq: cannot allocate ", bytes, " bytes (", double(bytes) / double(1 << 20),
                                         " MiB) of pinned host memory: ", cudaGetErrorString(e)));
  }
  return p;
}

template <class D>
void runtime_api<D>::release_pinned(void* p) noexcept {
  if (p != nullptr && cudaFreeHost(p) != cudaSuccess) (void)cudaGetLastError();
}

template <class D>
memory_space runtime_api<D>::where(void const* p) {
  if (p == nullptr) return memory_space::host;
  cudaPointerAttributes a{};
  cudaError_t const e = cudaPointerGetAttributes(&a, p);
  if (e == cudaErrorInvalidValue) {  // some drivers report unregistered host memory this way
    (void)cudaGetLastError();
    return memory_space::host;
  }
  RSQ_CUDA_CHECK(e);
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged ? memory_space::device
                                                                           : memory_space::host;
}

template <class D>
int runtime_api<D>::device_of(void const* p) {
  if (p == nullptr) return -1;
  cudaPointerAttributes a{};
  cudaError_t const e = cudaPointerGetAttributes(&a, p);
  if (e == cudaErrorInvalidValue) {
    (void)cudaGetLastError();
    return -1;
  }
  RSQ_CUDA_CHECK(e);
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged ? a.device : -1;
}

template <class D>
void runtime_api<D>::copy(void* dst, void const* src, std::size_t bytes, CUstream_st* stream) {
  if (bytes == 0) return;
  RSQ_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream));
  RSQ_CUDA_CHECK(cudaStreamSynchronize(stream));
}

template <class D>
void runtime_api<D>::copy_2d(void* dst, std::size_t dpitch, void const* src, std::size_t spitch, std::size_t width,
                             std::size_t height, CUstream_st* stream) {
  if (width == 0 || height == 0) return;
  RSQ_CUDA_CHECK(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, cudaMemcpyDefault, stream));
  RSQ_CUDA_CHECK(cudaStreamSynchronize(stream));
}

template <class D>
void runtime_api<D>::fill_zero(void* dst, std::size_t bytes, CUstream_st* stream) {
  if (bytes == 0) return;
  RSQ_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream));
}

template <class D>
void runtime_api<D>::synchronize(CUstream_st* stream) {
  RSQ_CUDA_CHECK(cudaStreamSynchronize(stream));
}

template <class D>
int runtime_api<D>::device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

template <class D>
std::size_t runtime_api<D>::bytes_in_use() {
  std::size_t free = 0, total = 0;
  RSQ_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return total - free;
}

template <class D>
std::size_t runtime_api<D>::bytes_free() {
  std::size_t free = 0, total = 0;
  RSQ_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return free;
}

template <class D>
int runtime_api<D>::current_device() {
  int d = 0;
  RSQ_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

}  // namespace rsq::cuda::detail
