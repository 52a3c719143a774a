// SPDX-License-Identifier: MIT
// Every solver case of ../shared/golden reproduced: the reference's dequantized Q from the same W and H.
//  f64 cases: >= 99.9% of codes identical and proxy loss within 1e-6 relative;
//  f32 cases: >= 99% identical and proxy loss within 1%.
#include <doctest/doctest.h>

#include <rsq/gptq/solve.hpp>

#include "support/golden_solver_case.hpp"

namespace {

template <class T>
void check_case(std::filesystem::path const& dir) {
  auto const c = rsq_test::load_golden_solver_case<T>(dir);
  auto const res = rsq::gptq::solve(rsq::backend::cpu_eigen{}, c.w, c.h, c.meta.grid(), c.opt);
  rsq_test::check_against_reference(dir, c, res);
}

}  // namespace

TEST_CASE("gptq::solve reproduces every golden solver case") {
  RSQ_NEED_SHARED(shared);
  auto const cases = rsq_test::solver_cases(shared / "golden");
  REQUIRE(cases.size() >= 15);
  for (auto const& name : cases) {
    CAPTURE(name);
    auto const dir = shared / "golden" / name;
    if (rsq_test::read_meta(dir).dtype == "f64") check_case<double>(dir);
    else check_case<float>(dir);
  }
}
