// SPDX-License-Identifier: MIT
// The importance-weighted Hessian on every backend (TEST_CASE_TEMPLATE over RSQ_TEST_BACKENDS): the golden H of the
// reference, the float64 brute force of spec §5.1 (powers 1 and 2, float and double, a batch or one sequence at a
// time), strided inputs, uniform importances, merge; inputs and importances in the backend's memory (device memory
// for CUDA: strided, chunked, float into a double accumulator) against the CPU accumulator, the resident H; the
// precision options (TF32 and bf16 on CUDA; the CPU computes them strictly); bad inputs, in host or backend memory,
// named and leaving the accumulator unchanged.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <type_traits>

#include <xtensor/xview.hpp>

#include <rsq/hessian/accumulator.hpp>
#include <rsq/io/npy.hpp>

#include "support/backend_data.hpp"
#include "support/backends.hpp"
#include "support/compare.hpp"
#include "support/golden_case.hpp"

namespace {

using rsq::index_t;

// H = (2/N) Σ_j Σ_t w_jt x x^T with w = L r^p / Σ r^p, straight from spec §5.1 in float64.
rsq::matrix<double> brute_force(xt::xtensor<double, 3> const& x, xt::xtensor<double, 2> const* r, double p = 1) {
  auto const n = index_t(x.shape()[0]), l = index_t(x.shape()[1]), d = index_t(x.shape()[2]);
  auto h = rsq::make_matrix<double>(d, d);
  for (index_t j = 0; j < n; ++j) {
    double sum = 0;
    for (index_t t = 0; t < l; ++t) sum += r ? std::pow((*r)(j, t), p) : 1.0;
    for (index_t t = 0; t < l; ++t) {
      double const w = (r ? std::pow((*r)(j, t), p) : 1.0) * double(l) / sum;
      for (index_t a = 0; a < d; ++a)
        for (index_t b = 0; b < d; ++b) h(a, b) += 2.0 / double(n) * w * x(j, t, a) * x(j, t, b);
    }
  }
  return h;
}


xt::xtensor<double, 3> random_inputs(index_t n, index_t l, index_t d, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd;
  xt::xtensor<double, 3> x(typename xt::xtensor<double, 3>::shape_type{std::size_t(n), std::size_t(l), std::size_t(d)});
  for (auto& v : x) v = nd(rng);
  return x;
}

xt::xtensor<double, 2> random_importances(index_t n, index_t l, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> ud(0.005, 1.0);
  xt::xtensor<double, 2> r(typename xt::xtensor<double, 2>::shape_type{std::size_t(n), std::size_t(l)});
  for (auto& v : r) v = ud(rng);
  return r;
}

}  // namespace

TEST_SUITE("hessian.accumulator") {
  TEST_CASE_TEMPLATE("golden H reproduced from X.npy (and importance.npy) within 1e-5 relative in float32", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    RSQ_NEED_SHARED(shared);
    int checked = 0;
    for (auto const& name : rsq_test::solver_cases(shared / "golden")) {
      auto const dir = shared / "golden" / name;
      if (!std::filesystem::exists(dir / "X.npy")) continue;
      CAPTURE(name);
      auto const x = rsq::io::load_npy<float, 3>(dir / "X.npy");  // (sequences, tokens, features)
      auto const h_ref = rsq::io::load_npy<float, 2>(dir / "H.npy");
      rsq::hessian_accumulator<float, B> acc(index_t(x.shape()[2]), B{});
      if (std::filesystem::exists(dir / "importance.npy"))
        acc.add(x, rsq::io::load_npy<float, 2>(dir / "importance.npy"));
      else
        acc.add(x);
      CHECK(acc.sequences() == index_t(x.shape()[0]));
      CHECK(rsq_test::max_norm_rel(acc.hessian(), h_ref) < 1e-5);
      ++checked;
    }
    CHECK(checked >= 4);
  }

  TEST_CASE_TEMPLATE("weighted H equals the float64 brute force of spec 5.1, for powers 1 and 2", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const x = random_inputs(5, 37, 19, 1);
    auto const r = random_importances(5, 37, 2);
    auto check_type = [&]<class T>(T) {
      CAPTURE(sizeof(T));
      double const tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
      for (double p : {1.0, 2.0}) {
        CAPTURE(p);
        rsq::hessian_accumulator<T, B> acc(19, B{}, {.importance_power = p});
        acc.add(x, r);
        CHECK(rsq_test::max_norm_rel(acc.hessian(), brute_force(x, &r, p)) < tol);
      }
      // Without importances it is plain GPTQ's (2/N) X X^T; one sequence at a time gives the same.
      rsq::hessian_accumulator<T, B> plain(19, B{}), seq(19, B{});
      plain.add(x);
      for (std::size_t j = 0; j < 5; ++j) {
        xt::xtensor<double, 2> xj = xt::view(x, j, xt::all(), xt::all());
        seq.add(xj);
      }
      CHECK(seq.sequences() == 5);
      CHECK(seq.tokens() == 185);
      CHECK(rsq_test::max_norm_rel(plain.hessian(), brute_force(x, nullptr)) < tol);
      CHECK(rsq_test::max_norm_rel(plain.hessian(), seq.hessian()) < (std::is_same_v<T, float> ? 1e-6 : 1e-14));
    };
    check_type(float{});
    check_type(double{});
  }

  TEST_CASE_TEMPLATE("strided inputs (every other feature) give the H of their contiguous copy", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    // The CPU fills its weighted chunk in register tiles from contiguous rows, element by element otherwise.
    auto const wide = random_inputs(3, 70, 40, 5);
    auto const strided = xt::view(wide, xt::all(), xt::all(), xt::range(0, 40, 2));
    xt::xtensor<double, 3> const copy = strided;
    xt::xtensor<double, 2> r(typename xt::xtensor<double, 2>::shape_type{3, 70}, 1.0);
    for (std::size_t t = 0; t < 70; ++t) r(1, t) = 1.0 + double(t % 5);
    rsq::hessian_accumulator<double, B> a(20, B{}), b(20, B{});
    a.add(rsq::make_const_view<3>(strided), rsq::make_const_view<2>(r));
    b.add(copy, r);
    CHECK(rsq_test::max_norm_rel(a.hessian(), b.hessian()) < 1e-14);
    CHECK(rsq_test::max_norm_rel(b.hessian(), brute_force(copy, &r)) < 1e-12);
  }

  TEST_CASE_TEMPLATE("uniform importances give the unweighted H; only ratios within a sequence matter", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const x = random_inputs(3, 16, 8, 5);
    xt::xtensor<double, 2> ones(typename xt::xtensor<double, 2>::shape_type{3, 16}, 1.0);
    xt::xtensor<double, 2> sevens(typename xt::xtensor<double, 2>::shape_type{3, 16}, 7.0);
    rsq::hessian_accumulator<double, B> a(8, B{}), b(8, B{}), c(8, B{});
    a.add(x);
    b.add(x, ones);
    c.add(x, sevens);
    CHECK(rsq_test::max_norm_rel(b.hessian(), a.hessian()) < 1e-14);
    CHECK(rsq_test::max_norm_rel(c.hessian(), a.hessian()) < 1e-14);
  }

  TEST_CASE_TEMPLATE("merge of accumulators over disjoint data equals one accumulator over all of it", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const x = random_inputs(6, 300, 33, 9);
    rsq::hessian_accumulator<double, B> whole(33, B{}), left(33, B{}), right(33, B{});
    whole.add(x);
    xt::xtensor<double, 3> x1 = xt::view(x, xt::range(0, 2), xt::all(), xt::all());
    xt::xtensor<double, 3> x2 = xt::view(x, xt::range(2, 6), xt::all(), xt::all());
    left.add(x1);
    right.add(x2);
    left.merge(right);
    CHECK(left.sequences() == 6);
    CHECK(left.tokens() == 1800);
    CHECK(rsq_test::max_norm_rel(left.hessian(), whole.hessian()) < 1e-13);
    CHECK(rsq_test::max_norm_rel(whole.hessian(), brute_force(x, nullptr)) < 1e-12);
  }

  TEST_CASE_TEMPLATE("inputs in the backend's memory give the H of host inputs: weighted, strided, chunked", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    using acc_b = rsq::hessian_accumulator<double, B>;
    B const be{};
    auto const x = random_inputs(6, 50, 40, 7);
    auto const r = random_importances(6, 50, 8);
    rsq::hessian_accumulator<double> cpu(40);
    cpu.add(x, r);
    auto const ref = cpu.hessian();
    auto const xd = rsq_test::upload(be, x);
    auto const rd = rsq_test::upload(be, r);
    for (index_t chunk : {0, 7, 64}) {
      CAPTURE(chunk);
      acc_b host(40, be, {}, {.chunk_tokens = chunk}), resident(40, be, {}, {.chunk_tokens = chunk});
      host.add(x, r);
      resident.add(xd.view(), rd.view());  // inputs and importances in the backend's memory
      CHECK(resident.sequences() == 6);
      CHECK(resident.tokens() == 300);
      CHECK(rsq_test::max_norm_rel(host.hessian(), ref) < 1e-14);
      CHECK(rsq_test::max_norm_rel(resident.hessian(), ref) < 1e-14);
    }
    // A strided batch in the backend's memory (every other feature of a wider array) and host importances.
    auto const wide = random_inputs(2, 30, 80, 9);
    auto const wd = rsq_test::upload(be, wide);
    rsq::batch_view<const double> strided(wd.data(), {2, 30, 40}, {30 * 80, 80, 2});
    xt::xtensor<double, 3> narrow = xt::view(wide, xt::all(), xt::all(), xt::range(0, 80, 2));
    auto const r2 = random_importances(2, 30, 10);
    rsq::hessian_accumulator<double> c2(40);
    c2.add(narrow, r2);
    acc_b g2(40, be);
    g2.add(strided, rsq::make_const_view<2>(r2));
    CHECK(rsq_test::max_norm_rel(g2.hessian(), c2.hessian()) < 1e-14);
    // One sequence as a matrix view of the backend's memory; float inputs into a double accumulator.
    xt::xtensor<float, 2> one = xt::cast<float>(xt::view(x, 0, xt::all(), xt::all()));
    auto const od = rsq_test::upload(be, one);
    acc_b g3(40, be);
    g3.add(od.view());
    rsq::hessian_accumulator<double> c3(40);
    c3.add(one);
    CHECK(rsq_test::max_norm_rel(g3.hessian(), c3.hessian()) < 1e-14);
    // The resident H is what hessian() returns.
    auto const hd = g3.hessian_resident();
    CHECK(rsq::backend::resident(be, rsq::view(hd).data()));
    CHECK(rsq_test::download(be, rsq::view(hd)) == g3.hessian());
  }

  TEST_CASE_TEMPLATE("the TF32 and bf16 precisions stay close to the fp32 Hessian (the CPU computes them strictly)", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    auto const x = random_inputs(4, 256, 96, 11);
    auto const r = random_importances(4, 256, 12);
    auto const ref = brute_force(x, &r);
    xt::xtensor<float, 3> xf = xt::cast<float>(x);
    auto const xd = rsq_test::upload(be, xf);
    using rsq::hessian::precision;
    for (auto p : {precision::strict, precision::tf32, precision::bf16}) {
      CAPTURE(int(p));
      rsq::hessian_accumulator<float, B> acc(96, be, {}, {.precision = p, .chunk_tokens = 300});
      acc.add(xd.view(), rsq::make_const_view<2>(r));
      double const err = rsq_test::max_norm_rel(acc.hessian(), ref);
      if constexpr (rsq_test::is_cpu<B>) {
        CHECK(err < 1e-5);  // no tensor cores: every precision is the strict one
      } else {
        double const tol = p == precision::strict ? 1e-5 : p == precision::tf32 ? 3e-3 : 2e-2;
        CHECK(err < tol);
        if (p != precision::strict) CHECK(err > 1e-7);  // the fast paths are really used
      }
    }
    using acc_d = rsq::hessian_accumulator<double, B>;
    rsq::hessian::options const tf32{.precision = precision::tf32};
    CHECK_THROWS_WITH_AS(acc_d(8, be, {}, tf32), doctest::Contains("need float"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(acc_d(8, be, {}, {.chunk_tokens = -1}), doctest::Contains("chunk_tokens"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(acc_d(8, be, {.importance_power = 0}), doctest::Contains("importance_power"),
                         rsq::invalid_argument);
  }

  TEST_CASE_TEMPLATE("bad inputs name what is wrong and leave the accumulator unchanged", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    rsq::hessian_accumulator<float, B> acc(4, B{});
    CHECK_THROWS_WITH_AS((rsq::hessian_accumulator<float, B>(0, B{})), doctest::Contains("features"),
                         rsq::invalid_argument);
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
    rsq::hessian_accumulator<float, B> other(5, B{});
    CHECK_THROWS_WITH_AS(acc.merge(other), doctest::Contains("features differ (4 vs 5)"), rsq::invalid_argument);
    CHECK(acc.sequences() == 0);
    auto const h = acc.hessian();
    for (auto v : h) CHECK(v == 0.0f);
  }

  TEST_CASE_TEMPLATE("bad inputs in the backend's memory are named as on the host and leave the accumulator unchanged",
                     B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    rsq::hessian_accumulator<float, B> acc(4, be);
    auto x = random_inputs(2, 5, 4, 3);
    x(1, 3, 2) = NAN;
    auto const xd = rsq_test::upload(be, xt::xtensor<float, 3>(xt::cast<float>(x)));
    CHECK_THROWS_WITH_AS(acc.add(xd.view()), doctest::Contains("sequence 1, token 3, feature 2"),
                         rsq::invalid_argument);
    CHECK(acc.sequences() == 0);
    CHECK_THROWS_WITH_AS(acc.add(rsq::batch_view<const float>(xd.data(), {2, 5, 3}, {20, 4, 1})),
                         doctest::Contains("3 features, expected 4"), rsq::invalid_argument);
    x(1, 3, 2) = 0.5;
    auto const xd2 = rsq_test::upload(be, xt::xtensor<float, 3>(xt::cast<float>(x)));
    xt::xtensor<float, 2> r(typename xt::xtensor<float, 2>::shape_type{2, 5}, 1.0f);
    r(0, 4) = -1;
    auto const rd = rsq_test::upload(be, r);
    CHECK_THROWS_WITH_AS(acc.add(xd2.view(), rd.view()), doctest::Contains("sequence 0, token 4"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(acc.add(xd2.view(), rsq::matrix_view<const float>(rd.data(), 2, 4)),
                         doctest::Contains("do not match inputs"), rsq::invalid_argument);
    CHECK(acc.sequences() == 0);
    auto const h = acc.hessian();
    for (auto v : h) CHECK(v == 0.0f);
    acc.add(xd2.view());  // and good inputs are still taken
    CHECK(acc.sequences() == 2);
  }
}
