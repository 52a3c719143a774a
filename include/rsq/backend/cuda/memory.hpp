// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Device memory of the CUDA backend: where a pointer lives, owned device arrays and matrices, copies. Plain
/// cudaMalloc allocations (never managed memory). Host-compilable without CUDA headers: the few runtime calls are
/// members of detail::runtime_api<>, defined in <rsq/backend/cuda/impl/runtime.cuh> and instantiated once by
/// rsq_cuda.cu.

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cuda/error.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/view.hpp"

#if !(defined(RSQ_WITH_CUDA) && RSQ_WITH_CUDA)
#error "rsq: the CUDA backend needs RSQ_WITH_CUDA=1 (link the CMake target rsq::cuda)"
#endif

namespace rsq::cuda {

/// Where the memory behind a pointer is.
enum class memory_space {
  host,    ///< ordinary (pageable or pinned) host memory, readable by the CPU
  device,  ///< device memory (cudaMalloc, or managed memory, which kernels can read as well)
};

namespace detail {

/// The CUDA runtime calls that host-side code of the backend needs. A class template with one instantiation (in
/// rsq_cuda.cu), so that the definitions may be compiled into several objects of one program without clashing.
template <class = void>
struct runtime_api {
  static void* allocate(std::size_t bytes);                // cudaMalloc; throws cuda_error naming bytes asked, free
  static void release(void* p) noexcept;                   // cudaFree
  static void* allocate_pinned(std::size_t bytes);         // cudaHostAlloc; throws cuda_error naming the bytes
  static void release_pinned(void* p) noexcept;            // cudaFreeHost
  static memory_space where(void const* p);                // cudaPointerGetAttributes
  static int device_of(void const* p);                     // the device of device memory, −1 for host memory
  static void copy(void* dst, void const* src, std::size_t bytes, CUstream_st* stream);  // cudaMemcpyAsync + sync
  static void copy_2d(void* dst, std::size_t dpitch, void const* src, std::size_t spitch, std::size_t width,
                      std::size_t height, CUstream_st* stream);  // cudaMemcpy2DAsync + sync
  static void fill_zero(void* dst, std::size_t bytes, CUstream_st* stream);  // cudaMemsetAsync
  static void synchronize(CUstream_st* stream);            // cudaStreamSynchronize
  static int device_count() noexcept;                      // 0 without a device or driver
  static std::size_t bytes_in_use();                       // cudaMemGetInfo: total − free on the current device
  static std::size_t bytes_free();                         // cudaMemGetInfo: free on the current device
  static int current_device();                             // cudaGetDevice
};
extern template struct runtime_api<void>;

}  // namespace detail

/// Number of CUDA devices (0 when there is no device or no driver; never throws).
[[nodiscard]] inline int device_count() noexcept { return detail::runtime_api<>::device_count(); }

/// Where @p p points (nullptr counts as host memory).
[[nodiscard]] inline memory_space where(void const* p) { return detail::runtime_api<>::where(p); }

/// True when @p p points to device (or managed) memory.
[[nodiscard]] inline bool is_device_pointer(void const* p) { return where(p) == memory_space::device; }

/// Waits for all work queued on the backend's stream.
inline void synchronize(backend::cuda const& be) { detail::runtime_api<>::synchronize(be.stream); }

/// An owned, uninitialised array of @p n elements of T in device memory (cudaMalloc / cudaFree). Move-only.
template <class T>
class device_array {
 public:
  device_array() = default;
  /// Allocates @p n elements on the current device. @throws rsq::cuda_error when out of memory.
  explicit device_array(index_t n) {
    RSQ_EXPECTS(n >= 0, "cuda::device_array: negative size ", n);
    if (n > 0) ptr_ = static_cast<T*>(detail::runtime_api<>::allocate(std::size_t(n) * sizeof(T)));
    size_ = n;
  }
  device_array(device_array const&) = delete;
  device_array& operator=(device_array const&) = delete;
  device_array(device_array&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  device_array& operator=(device_array&& o) noexcept {
    if (this != &o) {
      reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~device_array() { reset(); }

  /// Frees the memory (waits for the device, as cudaFree does).
  void reset() noexcept {
    if (ptr_) detail::runtime_api<>::release(ptr_);
    ptr_ = nullptr;
    size_ = 0;
  }

  [[nodiscard]] T* data() const noexcept { return ptr_; }
  [[nodiscard]] index_t size() const noexcept { return size_; }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  /// A view of the device memory (pass it to the CUDA backend's entry points; never dereference it on the host).
  [[nodiscard]] vector_view<T> view() noexcept { return vector_view<T>(ptr_, size_); }
  [[nodiscard]] vector_view<const T> view() const noexcept { return vector_view<const T>(ptr_, size_); }

  /// Copies @p host (size() elements) to the device and waits for the copy.
  void upload(T const* host, backend::cuda const& be = {}) {
    detail::runtime_api<>::copy(ptr_, host, std::size_t(size_) * sizeof(T), be.stream);
  }
  /// The elements, copied to the host (waits for the stream first).
  [[nodiscard]] std::vector<T> to_host(backend::cuda const& be = {}) const {
    std::vector<T> v(static_cast<std::size_t>(size_));
    if (size_ > 0) detail::runtime_api<>::copy(v.data(), ptr_, std::size_t(size_) * sizeof(T), be.stream);
    return v;
  }

 private:
  T* ptr_ = nullptr;
  index_t size_ = 0;
};

/// A device array with a copy of @p host.
template <class T>
[[nodiscard]] device_array<T> to_device(std::vector<T> const& host, backend::cuda const& be = {}) {
  device_array<T> d(index_t(host.size()));
  if (!host.empty()) d.upload(host.data(), be);
  return d;
}

/// An owned (rows, cols) row-major matrix in device memory.
template <class T>
class device_matrix {
 public:
  device_matrix() = default;
  device_matrix(index_t rows, index_t cols) : data_(rows * cols), rows_(rows), cols_(cols) {
    RSQ_EXPECTS(rows >= 0 && cols >= 0, "cuda::device_matrix: negative shape (", rows, " x ", cols, ")");
  }

  [[nodiscard]] index_t rows() const noexcept { return rows_; }
  [[nodiscard]] index_t cols() const noexcept { return cols_; }
  [[nodiscard]] index_t size() const noexcept { return rows_ * cols_; }
  [[nodiscard]] T* data() const noexcept { return data_.data(); }
  /// A view of the device memory (pass it to the CUDA backend's entry points; never dereference it on the host).
  [[nodiscard]] matrix_view<T> view() noexcept { return matrix_view<T>(data_.data(), rows_, cols_); }
  [[nodiscard]] matrix_view<const T> view() const noexcept { return matrix_view<const T>(data_.data(), rows_, cols_); }
  /// Row-major copy on the host (waits for the stream first).
  [[nodiscard]] std::vector<T> to_host(backend::cuda const& be = {}) const { return data_.to_host(be); }
  void reset() noexcept {
    data_.reset();
    rows_ = cols_ = 0;
  }

 private:
  device_array<T> data_;
  index_t rows_ = 0, cols_ = 0;
};

}  // namespace rsq::cuda

namespace rsq::backend {

/// The CUDA backend's memory (algorithm::memory, <rsq/backend/memory.hpp>): cudaMalloc'd device memory on the device
/// current at allocation; copies are ordered on the backend's stream.
template <>
struct implementation<algorithm::memory, cuda> {
  static constexpr bool available = true;

  template <class T>
  using array = rsq::cuda::device_array<T>;
  template <class T>
  using matrix = rsq::cuda::device_matrix<T>;

  template <class T>
  static matrix<T> make_matrix(cuda const&, index_t rows, index_t cols) {
    return matrix<T>(rows, cols);
  }
  static bool resident(cuda const&, void const* p) { return rsq::cuda::is_device_pointer(p); }
  static void copy(cuda const& be, void* dst, void const* src, std::size_t bytes) {
    rsq::cuda::detail::runtime_api<>::copy(dst, src, bytes, be.stream);
  }
  static void synchronize(cuda const& be) { rsq::cuda::synchronize(be); }
  static std::size_t bytes_in_use(cuda const&) { return rsq::cuda::detail::runtime_api<>::bytes_in_use(); }
  static std::size_t bytes_free(cuda const&) { return rsq::cuda::detail::runtime_api<>::bytes_free(); }
};

}  // namespace rsq::backend
