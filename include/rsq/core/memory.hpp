// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Large fresh buffers: a hint that lets Linux back them with transparent huge pages. On the sandboxed machines rsq is
/// developed on, a first touch costs about 10 µs per 4 KiB page (zeroing a 64 MiB Hessian: 170 ms, a fifth of its
/// whole accumulation); with 2 MiB pages the same memory faults 512 times less often. Only a hint: where huge pages
/// are off, unavailable or unknown to the system, nothing changes.

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace rsq::detail {

/// Below this size the hint is not worth a system call.
inline constexpr std::size_t huge_page_hint_bytes = std::size_t(4) << 20;

/// Asks for huge pages for the whole pages inside [p, p + bytes). Call it before the first touch.
inline void advise_huge_pages(void* p, std::size_t bytes) noexcept {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (p == nullptr || bytes < huge_page_hint_bytes) return;
  constexpr std::uintptr_t page = 4096;
  auto const begin = (reinterpret_cast<std::uintptr_t>(p) + page - 1) & ~(page - 1);
  auto const end = (reinterpret_cast<std::uintptr_t>(p) + bytes) & ~(page - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

/// Maps every page of [p, p + bytes) in one system call (MADV_POPULATE_WRITE for fresh memory about to be written,
/// MADV_POPULATE_READ for a file mapping about to be read) instead of one page fault per page: on these VMs a fault
/// costs a trip through the hypervisor, and a 29 MB model read page by page spent most of its time there. Only a
/// hint: before Linux 5.14, or where it fails, the pages fault in as they are touched.
inline void prefault(void const* p, std::size_t bytes, bool for_write) noexcept {
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
  constexpr std::uintptr_t page = 4096;
  if (p == nullptr || bytes < 4 * page) return;
  // Outward for a read (the mapping covers whole pages), inward for a write (the neighbours' pages are not ours).
  auto const a = reinterpret_cast<std::uintptr_t>(p), z = a + bytes;
  auto const begin = for_write ? (a + page - 1) & ~(page - 1) : a & ~(page - 1);
  auto const end = for_write ? z & ~(page - 1) : (z + page - 1) & ~(page - 1);
  if (end > begin)
    (void)madvise(reinterpret_cast<void*>(begin), end - begin, for_write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
#else
  (void)p;
  (void)bytes;
  (void)for_write;
#endif
}

}  // namespace rsq::detail
