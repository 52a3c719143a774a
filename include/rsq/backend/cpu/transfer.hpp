// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CPU backend's download queue (algorithm::host_downloads, <rsq/backend/transfer.hpp>): the backend's memory is
/// host memory, so a download is the copy itself (nothing when source and destination are the same array).

#include <cstddef>
#include <cstring>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/tags.hpp"

namespace rsq::backend {

template <>
struct implementation<algorithm::host_downloads, cpu_eigen> {
  static constexpr bool available = true;

  class queue {
   public:
    queue(cpu_eigen const&, std::size_t) noexcept {}
    void push(void* dst, void const* src, std::size_t bytes) noexcept {
      if (dst != src) std::memmove(dst, src, bytes);
    }
    void wait() noexcept {}
  };
};

}  // namespace rsq::backend
