// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CUDA backend's download queue (algorithm::host_downloads, <rsq/backend/transfer.hpp>). A copy from device
/// memory to pageable host memory runs at a fraction of the bus speed and holds the stream; into pinned memory it runs
/// at full speed. So a push copies the bytes into a ring of pinned staging memory on the backend's stream (waiting for
/// that copy only: a few milliseconds for a large weight) and a worker thread copies them on into the destination
/// while the caller queues the next device work. The worker makes no CUDA calls.

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/tags.hpp"

namespace rsq::cuda {

/// Pinned host memory (cudaHostAlloc / cudaFreeHost). Move-only.
class pinned_buffer {
 public:
  pinned_buffer() = default;
  explicit pinned_buffer(std::size_t bytes)
      : ptr_(static_cast<std::byte*>(detail::runtime_api<>::allocate_pinned(bytes))), bytes_(bytes) {}
  pinned_buffer(pinned_buffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  pinned_buffer& operator=(pinned_buffer&& o) noexcept {
    if (this != &o) {
      detail::runtime_api<>::release_pinned(ptr_);
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  pinned_buffer(pinned_buffer const&) = delete;
  pinned_buffer& operator=(pinned_buffer const&) = delete;
  ~pinned_buffer() { detail::runtime_api<>::release_pinned(ptr_); }

  [[nodiscard]] std::byte* data() const noexcept { return ptr_; }
  [[nodiscard]] std::size_t size() const noexcept { return bytes_; }

 private:
  std::byte* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

/// Downloads through a ring of pinned staging memory, drained into the destinations by one worker thread in the order
/// pushed. A push waits only while the ring is full.
class staged_downloads {
 public:
  staged_downloads(backend::cuda const& be, std::size_t staging_bytes)
      : be_(be), ring_(std::max<std::size_t>(staging_bytes, std::size_t(1) << 20)), worker_([this] { drain(); }) {}
  staged_downloads(staged_downloads const&) = delete;
  staged_downloads& operator=(staged_downloads const&) = delete;
  ~staged_downloads() {
    {
      std::lock_guard lock(m_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();  // the worker finishes every queued copy first
  }

  void push(void* dst, void const* src, std::size_t bytes) {
    auto* to = static_cast<std::byte*>(dst);
    auto const* from = static_cast<std::byte const*>(src);
    std::size_t const piece = ring_.size() / 4;  // pieces small enough for the ring to hold several
    while (bytes > 0) {
      std::size_t const n = std::min(bytes, piece);
      std::unique_lock lock(m_);
      // Contiguous space at the head, else at the ring's start (the tail end stays unused until the worker passes).
      std::size_t at = 0, footprint = 0;
      for (;;) {
        if (used_ == 0) head_ = 0;
        bool const wrap = head_ + n > ring_.size();
        footprint = n + (wrap ? ring_.size() - head_ : 0);
        at = wrap ? 0 : head_;
        if (used_ + footprint <= ring_.size()) break;
        cv_.wait(lock);
      }
      std::size_t const old_head = head_;
      head_ = at + n;
      used_ += footprint;
      // The device side now, outside the lock (the worker only touches pieces already queued).
      lock.unlock();
      try {
        detail::runtime_api<>::copy(ring_.data() + at, from, n, be_.stream);
      } catch (...) {
        lock.lock();
        head_ = old_head;
        used_ -= footprint;
        throw;
      }
      lock.lock();
      tasks_.push_back({to, at, n, footprint});
      lock.unlock();
      cv_.notify_all();
      to += n;
      from += n;
      bytes -= n;
    }
  }

  void wait() {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return tasks_.empty() && !busy_; });
  }

 private:
  struct task {
    std::byte* dst;
    std::size_t at, bytes, footprint;  // footprint: bytes plus the tail end skipped before it
  };

  void drain() {
    std::unique_lock lock(m_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !tasks_.empty(); });
      if (tasks_.empty()) return;  // stop_ with nothing left
      task const t = tasks_.front();
      tasks_.pop_front();
      busy_ = true;
      lock.unlock();
      std::memcpy(t.dst, ring_.data() + t.at, t.bytes);
      lock.lock();
      busy_ = false;
      used_ -= t.footprint;
      cv_.notify_all();
    }
  }

  backend::cuda be_;
  pinned_buffer ring_;
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<task> tasks_;
  std::size_t head_ = 0, used_ = 0;
  bool busy_ = false, stop_ = false;
  std::thread worker_;  // last: it starts when every member above is ready
};

}  // namespace rsq::cuda

namespace rsq::backend {

template <>
struct implementation<algorithm::host_downloads, cuda> {
  static constexpr bool available = true;

  class queue {
   public:
    queue(cuda const& be, std::size_t staging_bytes) : q_(be, staging_bytes) {}
    void push(void* dst, void const* src, std::size_t bytes) {
      if (rsq::cuda::is_device_pointer(src)) {
        q_.push(dst, src, bytes);
      } else if (dst != src) {
        std::memmove(dst, src, bytes);  // host to host: nothing to overlap
      }
    }
    void wait() { q_.wait(); }

   private:
    rsq::cuda::staged_downloads q_;
  };
};

}  // namespace rsq::backend
