// SPDX-License-Identifier: MIT
// Every solver case of ../shared/golden reproduced on every backend (TEST_CASE_TEMPLATE over RSQ_TEST_BACKENDS): the
// reference's dequantized Q from the same W and H.
//  f64 cases: >= 99.9% of codes identical and proxy loss within 1e-6 relative;
//  f32 cases: >= 99% identical and proxy loss within 1%;
// and, on a backend other than the CPU, the CPU backend's result (gptq/gptq_support.hpp: double identical codes,
// float >= 99% identical codes and proxy loss within 1%).
#include <doctest/doctest.h>

#include <rsq/gptq/solve.hpp>

#include "gptq/gptq_support.hpp"
#include "support/backend_data.hpp"
#include "support/backends.hpp"
#include "support/golden_solver_case.hpp"

namespace {

template <class T, class B>
void check_case(std::filesystem::path const& dir) {
  auto const c = rsq_test::load_golden_solver_case<T>(dir);
  auto const res = rsq::gptq::solve(B{}, c.w, c.h, c.meta.grid(), c.opt);
  rsq_test::check_against_reference(dir, c, res);
  if constexpr (!rsq_test::is_cpu<B>) gptq_test::check_against_cpu(res, c.w, c.h, c.meta.grid(), c.opt);
}

}  // namespace

TEST_SUITE("gptq.golden") {
  TEST_CASE_TEMPLATE("gptq::solve reproduces every golden solver case", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    RSQ_NEED_SHARED(shared);
    auto const cases = rsq_test::solver_cases(shared / "golden");
    REQUIRE(cases.size() >= 15);
    for (auto const& name : cases) {
      CAPTURE(name);
      auto const dir = shared / "golden" / name;
      if (rsq_test::read_meta(dir).dtype == "f64") check_case<double, B>(dir);
      else check_case<float, B>(dir);
    }
  }
}
