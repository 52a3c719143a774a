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

namespace rsq {
/// A type that names a backend (rsq::backend::cpu_eigen, rsq::backend::cuda).
template <class B>
concept backend_tag = backend::is_backend_v<std::remove_cvref_t<B>>;
}  // namespace rsq
