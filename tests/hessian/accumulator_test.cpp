// SPDX-License-Identifier: MIT
// The importance-weighted Hessian against the golden H of the reference and a float64 brute force.
#include <doctest/doctest.h>

#include <random>

#include <xtensor/xview.hpp>

#include <rsq/hessian/accumulator.hpp>
#include <rsq/io/npy.hpp>

#include "support/golden_case.hpp"

namespace {

// H = (2/N) Σ_j Σ_t w_jt x x^T with w = L r^p / Σ r^p, straight from spec §5.1 in float64.
rsq::matrix<double> brute_force(xt::xtensor<double, 3> const& x, xt::xtensor<double, 2> const* r, double p = 1) {
  auto const n = rsq::index_t(x.shape()[0]), l = rsq::index_t(x.shape()[1]), d = rsq::index_t(x.shape()[2]);
  auto h = rsq::make_matrix<double>(d, d);
  for (rsq::index_t j = 0; j < n; ++j) {
    double sum = 0;
    for (rsq::index_t t = 0; t < l; ++t) sum += r ? std::pow((*r)(j, t), p) : 1.0;
    for (rsq::index_t t = 0; t < l; ++t) {
      double const w = (r ? std::pow((*r)(j, t), p) : 1.0) * double(l) / sum;
      for (rsq::index_t a = 0; a < d; ++a)
        for (rsq::index_t b = 0; b < d; ++b) h(a, b) += 2.0 / double(n) * w * x(j, t, a) * x(j, t, b);
    }
  }
  return h;
}

double max_rel(rsq::matrix<double> const& a, rsq::matrix<double> const& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(a.data()[i] - b.data()[i]));
    den = std::max(den, std::abs(b.data()[i]));
  }
  return num / den;
}

xt::xtensor<double, 3> random_inputs(rsq::index_t n, rsq::index_t l, rsq::index_t d, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd;
  xt::xtensor<double, 3> x(typename xt::xtensor<double, 3>::shape_type{std::size_t(n), std::size_t(l), std::size_t(d)});
  for (auto& v : x) v = nd(rng);
  return x;
}

}  // namespace

TEST_SUITE("hessian.accumulator") {
  TEST_CASE("golden H reproduced from X.npy (and importance.npy) within 1e-5 relative in float32") {
    RSQ_NEED_SHARED(shared);
    int checked = 0;
    for (auto const& name : rsq_test::solver_cases(shared / "golden")) {
      auto const dir = shared / "golden" / name;
      if (!std::filesystem::exists(dir / "X.npy")) continue;
      CAPTURE(name);
      auto const x = rsq::io::load_npy<float, 3>(dir / "X.npy");  // (sequences, tokens, features)
      auto const h_ref = rsq::io::load_npy<float, 2>(dir / "H.npy");
      rsq::hessian_accumulator<float> acc(rsq::index_t(x.shape()[2]));
      if (std::filesystem::exists(dir / "importance.npy")) {
        auto const r = rsq::io::load_npy<float, 2>(dir / "importance.npy");
        acc.add(x, r);
      } else {
        acc.add(x);
      }
      CHECK(acc.sequences() == rsq::index_t(x.shape()[0]));
      auto const h = acc.hessian();
      double num = 0, den = 0;
      for (std::size_t i = 0; i < h.size(); ++i) {
        num = std::max(num, double(std::abs(h.data()[i] - h_ref.data()[i])));
        den = std::max(den, double(std::abs(h_ref.data()[i])));
      }
      CHECK(num / den < 1e-5);
      ++checked;
    }
    CHECK(checked >= 4);
  }

  TEST_CASE_TEMPLATE("weighted H equals the float64 brute force of spec 5.1, for powers 1 and 2", T, float, double) {
    auto const x = random_inputs(5, 37, 19, 1);
    std::mt19937_64 rng(2);
    std::uniform_real_distribution<double> ud(0.005, 1.0);
    xt::xtensor<double, 2> r(typename xt::xtensor<double, 2>::shape_type{5, 37});
    for (auto& v : r) v = ud(rng);
    for (double p : {1.0, 2.0}) {
      rsq::hessian_accumulator<T> acc(19, {}, {.importance_power = p});
      acc.add(x, r);
      auto const h = acc.hessian();
      rsq::matrix<double> hd = xt::cast<double>(h);
      CHECK(max_rel(hd, brute_force(x, &r, p)) < (std::is_same_v<T, float> ? 1e-5 : 1e-12));
    }
    // Without importances it is plain GPTQ's (2/N) X X^T; one sequence at a time gives the same.
    rsq::hessian_accumulator<T> plain(19), seq(19);
    plain.add(x);
    for (std::size_t j = 0; j < 5; ++j) {
      xt::xtensor<double, 2> xj = xt::view(x, j, xt::all(), xt::all());
      seq.add(xj);
    }
    rsq::matrix<double> a = xt::cast<double>(plain.hessian()), b = xt::cast<double>(seq.hessian());
    CHECK(max_rel(a, brute_force(x, nullptr)) < (std::is_same_v<T, float> ? 1e-5 : 1e-12));
    CHECK(max_rel(a, b) < (std::is_same_v<T, float> ? 1e-6 : 1e-14));
  }

  TEST_CASE("strided inputs (every other feature) give the H of their contiguous copy") {
    // The weighted chunk is filled in register tiles from contiguous rows, element by element otherwise.
    auto const wide = random_inputs(3, 70, 40, 5);
    auto const strided = xt::view(wide, xt::all(), xt::all(), xt::range(0, 40, 2));
    xt::xtensor<double, 3> const copy = strided;
    xt::xtensor<double, 2> r(typename xt::xtensor<double, 2>::shape_type{3, 70}, 1.0);
    for (std::size_t t = 0; t < 70; ++t) r(1, t) = 1.0 + double(t % 5);
    rsq::hessian_accumulator<double> a(20), b(20);
    a.add(rsq::make_const_view<3>(strided), rsq::make_const_view<2>(r));
    b.add(copy, r);
    CHECK(max_rel(a.hessian(), b.hessian()) < 1e-14);
    CHECK(max_rel(b.hessian(), brute_force(copy, &r)) < 1e-12);
  }

  TEST_CASE("uniform importances give the unweighted H; only ratios within a sequence matter") {
    auto const x = random_inputs(3, 16, 8, 5);
    xt::xtensor<double, 2> ones(typename xt::xtensor<double, 2>::shape_type{3, 16}, 1.0);
    xt::xtensor<double, 2> sevens(typename xt::xtensor<double, 2>::shape_type{3, 16}, 7.0);
    rsq::hessian_accumulator<double> a(8), b(8), c(8);
    a.add(x);
    b.add(x, ones);
    c.add(x, sevens);
    CHECK(max_rel(b.hessian(), a.hessian()) < 1e-14);
    CHECK(max_rel(c.hessian(), a.hessian()) < 1e-14);
  }

  TEST_CASE("merge of accumulators over disjoint data equals one accumulator over all of it") {
    auto const x = random_inputs(6, 300, 33, 9);
    rsq::hessian_accumulator<double> whole(33), left(33), right(33);
    whole.add(x);
    xt::xtensor<double, 3> x1 = xt::view(x, xt::range(0, 2), xt::all(), xt::all());
    xt::xtensor<double, 3> x2 = xt::view(x, xt::range(2, 6), xt::all(), xt::all());
    left.add(x1);
    right.add(x2);
    left.merge(right);
    CHECK(left.sequences() == 6);
    CHECK(left.tokens() == 1800);
    CHECK(max_rel(left.hessian(), whole.hessian()) < 1e-13);
  }

  TEST_CASE("bad inputs name what is wrong and leave the accumulator unchanged") {
    rsq::hessian_accumulator<float> acc(4);
    CHECK_THROWS_WITH_AS(rsq::hessian_accumulator<float>(0), doctest::Contains("features"), rsq::invalid_argument);
    auto x = random_inputs(2, 5, 4, 3);
    x(1, 3, 2) = NAN;
    CHECK_THROWS_WITH_AS(acc.add(x), doctest::Contains("sequence 1, token 3, feature 2"), rsq::invalid_argument);
    CHECK(acc.sequences() == 0);
    x(1, 3, 2) = 0.5;
    auto const wrong = random_inputs(1, 5, 3, 3);
    CHECK_THROWS_WITH_AS(acc.add(wrong), doctest::Contains("3 features, expected 4"), rsq::invalid_argument);
    xt::xtensor<double, 2> r(typename xt::xtensor<double, 2>::shape_type{2, 5}, 1.0);
    r(0, 4) = -1;
    CHECK_THROWS_WITH_AS(acc.add(x, r), doctest::Contains("sequence 0, token 4"), rsq::invalid_argument);
    r(0, 4) = INFINITY;
    CHECK_THROWS_WITH_AS(acc.add(x, r), doctest::Contains("sequence 0, token 4"), rsq::invalid_argument);
    xt::xtensor<double, 2> zeros(typename xt::xtensor<double, 2>::shape_type{2, 5}, 0.0);
    CHECK_THROWS_WITH_AS(acc.add(x, zeros), doctest::Contains("all importances of sequence 0 are zero"),
                         rsq::invalid_argument);
    xt::xtensor<double, 2> short_r(typename xt::xtensor<double, 2>::shape_type{2, 4}, 1.0);
    CHECK_THROWS_WITH_AS(acc.add(x, short_r), doctest::Contains("do not match"), rsq::invalid_argument);
    auto const empty = random_inputs(1, 0, 4, 3);
    CHECK_THROWS_WITH_AS(acc.add(empty), doctest::Contains("no tokens"), rsq::invalid_argument);
    rsq::hessian_accumulator<float> other(5);
    CHECK_THROWS_WITH_AS(acc.merge(other), doctest::Contains("features differ"), rsq::invalid_argument);
    CHECK(acc.sequences() == 0);
    auto const h = acc.hessian();
    for (auto v : h) CHECK(v == 0.0f);
  }
}
