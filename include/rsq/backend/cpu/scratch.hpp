// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Scratch memory of the CPU backend: one block per calling thread, kept between calls. Fresh pages are costly on
/// the machines rsq is developed on (a first touch costs about 10 µs per 4 KiB page): the GPTQ solve of a
/// 4096 × 1024 layer took 0.035–0.045 s with freshly allocated panel workspaces against 0.021 s with warm ones, and
/// a Hessian is accumulated batch by batch. Large blocks are 2 MiB-aligned and hinted for transparent huge pages, so
/// that even their first touch faults once per 2 MiB. The block only grows (its contents are not kept when it does);
/// `release_scratch()` gives it back.

#include <cstddef>
#include <cstdlib>
#include <new>

#include "rsq/core/memory.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace rsq::cpu {

namespace detail {

/// A block of scratch memory; one per thread (`thread_scratch`), and a private one for a nested lease.
class scratch_block {
 public:
  scratch_block() = default;
  scratch_block(scratch_block const&) = delete;
  scratch_block& operator=(scratch_block const&) = delete;
  ~scratch_block() { release(); }

  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  /// Leased by an operation of this thread; `release_later` frees it when that ends.
  bool busy = false, release_later = false;

  /// At least @p bytes, 64-byte aligned (2 MiB-aligned from rsq::detail::huge_page_hint_bytes up); uninitialized.
  [[nodiscard]] std::byte* reserve(std::size_t bytes) {
    if (bytes <= size_) return data_;
    release();
    std::size_t const align = bytes >= rsq::detail::huge_page_hint_bytes ? std::size_t(2) << 20 : 64;
    std::size_t const rounded = (bytes + align - 1) / align * align;
    data_ = static_cast<std::byte*>(std::aligned_alloc(align, rounded));
    if (data_ == nullptr) throw std::bad_alloc();
    rsq::detail::advise_huge_pages(data_, rounded);
    size_ = rounded;
    return data_;
  }

  void release() noexcept {
    std::free(data_);
    data_ = nullptr;
    size_ = 0;
  }

 private:
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

[[nodiscard]] inline scratch_block& thread_scratch() noexcept {
  static thread_local scratch_block block;
  return block;
}

/// The calling thread's packing buffers of Eigen's products (cpu/gemm.hpp): apart from the operation's scratch,
/// because every thread of a parallel operation runs products of its own.
[[nodiscard]] inline scratch_block& packing_block() noexcept {
  static thread_local scratch_block block;
  return block;
}

/// The calling thread's scratch block for one operation. A nested lease on the same thread (an rsq call made from
/// inside a callback of another) gets a block of its own, freed when it ends, instead of the one in use.
class scratch_lease {
 public:
  explicit scratch_lease(std::size_t bytes) : block_(thread_scratch().busy ? nested_ : thread_scratch()) {
    data_ = block_.reserve(bytes);
    block_.busy = true;
  }
  scratch_lease(scratch_lease const&) = delete;
  scratch_lease& operator=(scratch_lease const&) = delete;
  ~scratch_lease() {
    block_.busy = false;
    if (block_.release_later) {
      block_.release();
      packing_block().release();
    }
    block_.release_later = false;
  }

  [[nodiscard]] std::byte* data() const noexcept { return data_; }
  template <class T>
  [[nodiscard]] T* as() const noexcept {
    return reinterpret_cast<T*>(data_);
  }

 private:
  scratch_block nested_;
  scratch_block& block_;
  std::byte* data_;
};

/// Bytes of @p count elements of T rounded up to whole 64-byte lines: what an array cut from scratch memory takes, so
/// that the next one starts on a line.
template <class T>
[[nodiscard]] constexpr std::size_t line_bytes(std::size_t count) noexcept {
  return (count * sizeof(T) + 63) / 64 * 64;
}

/// Carves 64-byte-aligned arrays out of a block in order; with a null base it only counts the bytes (the same
/// sequence of `take` calls sizes the block and then cuts it).
class scratch_carver {
 public:
  explicit scratch_carver(std::byte* base = nullptr) noexcept : base_(base) {}
  template <class T>
  T* take(std::size_t count) noexcept {
    T* const p = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += line_bytes<T>(count);
    return p;
  }
  [[nodiscard]] std::size_t bytes() const noexcept { return used_; }

 private:
  std::byte* base_;
  std::size_t used_ = 0;
};

}  // namespace detail

/// Bytes of scratch memory that the calling thread keeps: the largest block any of its CPU calls needed so far, and
/// the packing buffers of the largest product it ran.
[[nodiscard]] inline std::size_t scratch_bytes() noexcept {
  return detail::thread_scratch().size() + detail::packing_block().size();
}

/// Frees the calling thread's scratch memory, and outside a parallel region the packing buffers of the OpenMP
/// threads it starts; the next call that needs them allocates them again. From inside a callback of an operation
/// that holds the calling thread's scratch, the calling thread's memory is freed when that operation ends.
inline void release_scratch() noexcept {
  auto& block = detail::thread_scratch();
  if (block.busy) {
    block.release_later = true;
    return;
  }
  block.release();
  detail::packing_block().release();
#if defined(_OPENMP)
  if (!omp_in_parallel()) {
#pragma omp parallel
    detail::packing_block().release();
  }
#endif
}

}  // namespace rsq::cpu
