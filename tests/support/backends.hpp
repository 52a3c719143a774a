// SPDX-License-Identifier: MIT
#pragma once
// The backend list of the backend-generic tests: one TEST_CASE_TEMPLATE body runs on every backend of the build
// (style.md §10.7). CUDA backends need a device at run time: a test case calls RSQ_NEED_DEVICE(B) first, which skips
// it visibly (a doctest MESSAGE "SKIPPED ...") on a machine without one.

#include <doctest/doctest.h>

#include <rsq/backend/tags.hpp>

#include <string>
#include <type_traits>

#if defined(RSQ_WITH_CUDA) && RSQ_WITH_CUDA
#include <rsq/cuda.hpp>
#define RSQ_TEST_BACKENDS rsq::backend::cpu_eigen, rsq::backend::cuda
#else
#define RSQ_TEST_BACKENDS rsq::backend::cpu_eigen
#endif

namespace rsq_test {

/// True when backend B can run here (always for the CPU; a CUDA device for the CUDA backend).
template <class B>
inline bool backend_available() {
#if defined(RSQ_WITH_CUDA) && RSQ_WITH_CUDA
  if constexpr (std::is_same_v<B, rsq::backend::cuda>) return rsq::cuda::device_count() > 0;
#endif
  return true;
}

template <class B>
inline std::string backend_name() {
#if defined(RSQ_WITH_CUDA) && RSQ_WITH_CUDA
  if constexpr (std::is_same_v<B, rsq::backend::cuda>) return "cuda";
#endif
  return "cpu_eigen";
}

}  // namespace rsq_test

#define RSQ_NEED_DEVICE(B)                                                                            \
  if (!::rsq_test::backend_available<B>()) {                                                         \
    MESSAGE("SKIPPED: no CUDA device for backend ", ::rsq_test::backend_name<B>());                   \
    return;                                                                                          \
  }
