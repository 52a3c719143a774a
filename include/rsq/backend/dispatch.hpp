// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The one dispatch mechanism of rsq. Every algorithm that runs on a backend has a tag type in rsq::algorithm
/// (<rsq/backend/algorithms.hpp>, which documents what each implementation provides), a front end in its own area
/// header that takes the backend object first and checks the arguments, and one specialization
/// `rsq::backend::implementation<Algorithm, Backend>` per backend, in `backend/<name>/`. The front end reaches the
/// implementation through `rsq::backend::implementation_t<Algorithm, Backend>`; a backend that lacks the algorithm
/// stops the compilation there with a static_assert whose note names both (as
/// `implementation<rsq::algorithm::..., rsq::backend::...>::available`).
///
/// Adding a backend (say HIP) is a tag (a struct with `is_backend_v` true), a folder `backend/<name>/` with the
/// specializations, and one line in the tests' backend list (tests/support/backends.hpp).

#include <type_traits>

#include "rsq/backend/tags.hpp"

namespace rsq::backend {

/// The implementation of @p Algorithm on @p Backend. Specializations set `available = true` and provide the static
/// members that the algorithm's tag documents. The primary template is the "not implemented" answer.
template <class Algorithm, class Backend>
struct implementation {
  static constexpr bool available = false;
};

/// True when @p Backend implements @p Algorithm in this translation unit (a capability query, as MatX's).
template <class Algorithm, class Backend>
inline constexpr bool implements_v = implementation<Algorithm, std::remove_cvref_t<Backend>>::available;

namespace detail {

template <class Algorithm, class Backend>
struct checked_implementation {
  static_assert(implementation<Algorithm, Backend>::available,
                "rsq: this backend does not implement this algorithm; the note below names both as "
                "implementation<rsq::algorithm::ALGORITHM, rsq::backend::BACKEND>. For rsq::backend::cuda include "
                "<rsq/cuda.hpp> and link rsq::cuda; a new backend specializes rsq::backend::implementation in "
                "include/rsq/backend/<name>/.");
  using type = implementation<Algorithm, Backend>;
};

}  // namespace detail

/// The implementation a front end calls: `implementation_t<algorithm::hadamard_transform, B>::run(be, ...)`.
template <class Algorithm, class Backend>
using implementation_t = typename detail::checked_implementation<Algorithm, std::remove_cvref_t<Backend>>::type;

}  // namespace rsq::backend
