// SPDX-License-Identifier: MIT
// Every solver case of ../shared/golden reproduced: the reference's dequantized Q from the same W and H.
//  f64 cases: >= 99.9% of codes identical and proxy loss within 1e-6 relative;
//  f32 cases: >= 99% identical and proxy loss within 1%.
#include <doctest/doctest.h>

#include <rsq/gptq/proxy_loss.hpp>
#include <rsq/gptq/solve.hpp>
#include <rsq/io/npy.hpp>

#include "support/golden_case.hpp"

namespace {

template <class T>
void check_case(std::filesystem::path const& dir) {
  auto const meta = rsq_test::read_meta(dir);
  auto const w = rsq::io::load_npy<T, 2>(dir / "W.npy");
  auto const h = rsq::io::load_npy<T, 2>(dir / "H.npy");
  auto const q_ref = rsq::io::load_npy<T, 2>(dir / "Q.npy");
  rsq::gptq::options opt;
  opt.group_size = meta.groupsize;
  opt.act_order = meta.actorder;
  opt.static_groups = meta.static_groups;
  auto const res = rsq::gptq::solve(rsq::backend::cpu_eigen{}, w, h, meta.grid(), opt);
  REQUIRE(res.ok());
  CHECK(res.damp_attempts == 1);

  // Same grid point <=> same code: compare dequantized values with a tolerance far below one grid step.
  auto const& q = res.dequantized;
  REQUIRE(q.shape() == q_ref.shape());
  std::size_t same = 0;
  for (std::size_t i = 0; i < q.size(); ++i) {
    double const tol = 1e-4 * std::max(1.0, std::abs(double(q_ref.data()[i])));
    same += std::abs(double(q.data()[i]) - double(q_ref.data()[i])) <= tol;
  }
  double const frac = double(same) / double(q.size());
  double const loss = rsq::gptq::proxy_loss(w, q, h);
  double const ref_loss = rsq::gptq::proxy_loss(w, q_ref, h);
  INFO(dir.filename().string(), ": identical ", frac, ", loss ", loss, " vs reference ", ref_loss, " (meta ",
       meta.proxy_loss, ")");
  CHECK(ref_loss == doctest::Approx(meta.proxy_loss).epsilon(1e-9));
  if (meta.dtype == "f64") {
    CHECK(frac >= 0.999);
    CHECK(std::abs(loss - ref_loss) <= 1e-6 * ref_loss);
  } else {
    CHECK(frac >= 0.99);
    CHECK(std::abs(loss - ref_loss) <= 1e-2 * ref_loss);
  }
  // The dequantized weight is exactly what the codes, scales and zeros say.
  auto const deq = rsq::quant::dequantize(res.weight);
  CHECK(deq == q);
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
