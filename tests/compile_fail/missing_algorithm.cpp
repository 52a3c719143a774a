// SPDX-License-Identifier: MIT
// Compiled twice by the compile_fail.missing_algorithm test (CMakeLists.txt here): as is, it must compile (a backend
// that implements nothing is still a backend tag, and the CPU backend implements the transform); with
// RSQ_SHOULD_FAIL_TO_BUILD it calls the Hadamard transform on that backend, which must stop the compilation with
// rsq::backend's readable static_assert, naming implementation<rsq::algorithm::hadamard_transform, fake_backend>.
#include <rsq/backend/dispatch.hpp>
#include <rsq/backend/tags.hpp>
#include <rsq/core/tensor.hpp>
#include <rsq/rotation/hadamard.hpp>

struct fake_backend {};
template <>
inline constexpr bool rsq::backend::is_backend_v<fake_backend> = true;

static_assert(rsq::backend_tag<fake_backend>);
static_assert(!rsq::backend::implements_v<rsq::algorithm::hadamard_transform, fake_backend>);
static_assert(rsq::backend::implements_v<rsq::algorithm::hadamard_transform, rsq::backend::cpu_eigen>);

int main() {
  auto x = rsq::make_matrix<float>(2, 8);
#if defined(RSQ_SHOULD_FAIL_TO_BUILD)
  rsq::rotation::hadamard(8).apply(fake_backend{}, rsq::view(x));
#else
  rsq::rotation::hadamard(8).apply(rsq::backend::cpu_eigen{}, rsq::view(x));
#endif
  return x(0, 0) == 0.0f ? 0 : 1;
}
