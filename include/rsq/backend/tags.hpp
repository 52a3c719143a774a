// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Backend tags: the first argument of every algorithm that has more than one implementation. The backend is
/// chosen at compile time by the tag's type (overload resolution), as Thrust policies and Kokkos execution spaces do.
/// `rsq::backend::cuda` is declared in <rsq/backend/cuda/tag.hpp> and only exists in builds that link `rsq::cuda`.

#include <type_traits>

namespace rsq::backend {

/// The CPU backend: Eigen matrix products (multi-threaded through OpenMP when rsq::rsq links it).
struct cpu_eigen {};

/// True for backend tag types; each backend header adds its specialization.
template <class B>
inline constexpr bool is_backend_v = false;
template <>
inline constexpr bool is_backend_v<cpu_eigen> = true;

}  // namespace rsq::backend

#if defined(RSQ_WITH_CUDA) && RSQ_WITH_CUDA
struct CUstream_st;  // = cudaStream_t's pointee; declared here so that this header needs no CUDA header

namespace rsq::backend {
/// The CUDA backend (cuBLAS, cuSOLVER and rsq's kernels) on @p stream (nullptr: the legacy default stream).
/// Its implementations come with <rsq/cuda.hpp>; builds must link rsq::cuda.
struct cuda {
  CUstream_st* stream = nullptr;
};
template <>
inline constexpr bool is_backend_v<cuda> = true;
}  // namespace rsq::backend
#endif

namespace rsq::backend {
/// The backend used by the overloads without a backend argument: rsq::backend::cpu_eigen, or rsq::backend::cuda
/// when RSQ_DEFAULT_BACKEND_CUDA is defined in a build that links rsq::cuda.
#if defined(RSQ_WITH_CUDA) && RSQ_WITH_CUDA && defined(RSQ_DEFAULT_BACKEND_CUDA)
using default_backend = cuda;
#else
using default_backend = cpu_eigen;
#endif
}  // namespace rsq::backend

namespace rsq {
/// A type that names a backend (rsq::backend::cpu_eigen, rsq::backend::cuda).
template <class B>
concept backend_tag = backend::is_backend_v<std::remove_cvref_t<B>>;
}  // namespace rsq
