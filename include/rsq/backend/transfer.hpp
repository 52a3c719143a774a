// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Copies of results from a backend's memory to ordinary host memory that finish while the backend goes on with the
/// next work: the whole-model pipeline hands each quantized weight to a download queue and quantizes the next linear
/// at once (on a GPU, copying a layer's results to pageable host memory took a fifth of the layer's time).
///
/// An implementation of algorithm::host_downloads provides
///   class queue {
///     queue(B const&, std::size_t staging_bytes);       // staging_bytes: a hint for how much may be in flight
///     void push(void* host_dst, void const* src, std::size_t bytes);  // src in the backend's memory (or host);
///                                                       // src may be reused or freed when push returns, host_dst
///                                                       // may be read only after wait()
///     void wait();                                      // every push has landed in host memory
///   };
/// The queue's destructor waits as well, so that no copy outlives the memory it writes.

#include <cstddef>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/transfer.hpp"  // host memory is always there: the CPU backend's (immediate) copies
#include "rsq/backend/dispatch.hpp"
#include "rsq/core/view.hpp"

namespace rsq::backend {

/// Downloads from backend @p B's memory into pageable host memory, in the order pushed. On the CPU backend a push is
/// the copy itself; on the CUDA backend the device side runs at once into pinned staging memory (at full bus speed,
/// on the backend's stream) and a worker thread copies on into the destination while the caller goes on.
template <backend_tag B>
class download_queue {
 public:
  /// @param staging_bytes how many bytes may wait in staging memory before a push waits for the worker (a hint;
  ///        the CUDA backend allocates that much pinned memory once)
  explicit download_queue(B const& be, std::size_t staging_bytes = std::size_t(256) << 20) : q_(be, staging_bytes) {}

  /// Queues a copy of @p n elements from @p src (the backend's memory, or host memory) to host memory @p dst.
  /// @p src may be overwritten or freed when this returns; @p dst may be read after wait().
  template <class T>
  void push(T* dst, T const* src, index_t n) {
    if (n > 0) q_.push(dst, src, std::size_t(n) * sizeof(T));
  }

  /// Waits until every queued copy has landed in host memory.
  void wait() { q_.wait(); }

 private:
  typename implementation_t<algorithm::host_downloads, B>::queue q_;
};

}  // namespace rsq::backend
