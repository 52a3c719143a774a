// SPDX-License-Identifier: MIT
#pragma once
// A golden solver case of ../shared/golden (W, H, the reference's Q, meta.json) and the core issue's check of a
// solve against it: f64 >= 99.9% identical values and proxy loss within 1e-6, f32 >= 99% and 1%.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include <rsq/gptq/options.hpp>
#include <rsq/gptq/proxy_loss.hpp>
#include <rsq/gptq/result.hpp>
#include <rsq/io/npy.hpp>
#include <rsq/quant/quantized_weight.hpp>

#include "support/golden_case.hpp"

namespace rsq_test {

template <class T>
struct golden_solver_case {
  golden_meta meta;
  rsq::matrix<T> w, h, q_ref;
  rsq::gptq::options opt;
};

template <class T>
golden_solver_case<T> load_golden_solver_case(std::filesystem::path const& dir) {
  golden_solver_case<T> c{read_meta(dir), rsq::io::load_npy<T, 2>(dir / "W.npy"), rsq::io::load_npy<T, 2>(dir / "H.npy"),
                          rsq::io::load_npy<T, 2>(dir / "Q.npy"), {}};
  c.opt.group_size = c.meta.groupsize;
  c.opt.act_order = c.meta.actorder;
  c.opt.static_groups = c.meta.static_groups;
  return c;
}

/// Same grid point <=> same code: the dequantized values are compared with a tolerance far below one grid step.
template <class T>
void check_against_reference(std::filesystem::path const& dir, golden_solver_case<T> const& c,
                             rsq::gptq::result<T> const& res) {
  REQUIRE(res.ok());
  CHECK(res.damp_attempts == 1);
  auto const& q = res.dequantized;
  REQUIRE(q.shape() == c.q_ref.shape());
  std::size_t same = 0;
  for (std::size_t i = 0; i < q.size(); ++i) {
    double const ref = double(c.q_ref.data()[i]);
    same += std::abs(double(q.data()[i]) - ref) <= 1e-4 * std::max(1.0, std::abs(ref));
  }
  double const frac = double(same) / double(q.size());
  double const loss = rsq::gptq::proxy_loss(c.w, q, c.h);
  double const ref_loss = rsq::gptq::proxy_loss(c.w, c.q_ref, c.h);
  INFO(dir.filename().string(), ": identical ", frac, ", loss ", loss, " vs reference ", ref_loss, " (meta ",
       c.meta.proxy_loss, ")");
  CHECK(ref_loss == doctest::Approx(c.meta.proxy_loss).epsilon(1e-9));
  if (c.meta.dtype == "f64") {
    CHECK(frac >= 0.999);
    CHECK(std::abs(loss - ref_loss) <= 1e-6 * ref_loss);
  } else {
    CHECK(frac >= 0.99);
    CHECK(std::abs(loss - ref_loss) <= 1e-2 * ref_loss);
  }
  // The dequantized weight is exactly what the codes, scales and zeros say.
  CHECK(rsq::quant::dequantize(res.weight) == q);
}

}  // namespace rsq_test
