// SPDX-License-Identifier: MIT
// The importance-weighted Hessian on every backend (TEST_CASE_TEMPLATE over RSQ_TEST_BACKENDS): the golden H of the
// reference, the float64 brute force of spec 5.1, merge; and the CUDA-only paths: device-resident inputs and
// importances, the TF32 and bf16 precisions, device-side validation.
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include <xtensor/xview.hpp>

#include <rsq/hessian/accumulator.hpp>
#include <rsq/io/npy.hpp>

#include "support/backends.hpp"
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

template <class A, class B>
double max_rel(A const& a, B const& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(double(a.data()[i]) - double(b.data()[i])));
    den = std::max(den, std::abs(double(b.data()[i])));
  }
  return num / den;
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

template <class T>
rsq::cuda::device_array<T> upload(T const* p, std::size_t n) {
  rsq::cuda::device_array<T> d{index_t(n)};
  d.upload(p);
  return d;
}

}  // namespace

TEST_SUITE("cuda.hessian") {
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
      if (std::filesystem::exists(dir / "importance.npy")) acc.add(x, rsq::io::load_npy<float, 2>(dir / "importance.npy"));
      else acc.add(x);
      CHECK(acc.sequences() == index_t(x.shape()[0]));
      CHECK(max_rel(acc.hessian(), h_ref) < 1e-5);
      ++checked;
    }
    CHECK(checked >= 4);
  }

  TEST_CASE_TEMPLATE("weighted H equals the float64 brute force of spec 5.1, for powers 1 and 2", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const x = random_inputs(5, 37, 19, 1);
    auto const r = random_importances(5, 37, 2);
    for (double p : {1.0, 2.0}) {
      rsq::hessian_accumulator<float, B> af(19, B{}, {.importance_power = p});
      rsq::hessian_accumulator<double, B> ad(19, B{}, {.importance_power = p});
      af.add(x, r);
      ad.add(x, r);
      auto const ref = brute_force(x, &r, p);
      CHECK(max_rel(af.hessian(), ref) < 1e-5);
      CHECK(max_rel(ad.hessian(), ref) < 1e-12);
    }
    // Merge of accumulators over disjoint data equals one accumulator over all of it.
    rsq::hessian_accumulator<double, B> whole(19, B{}), left(19, B{}), right(19, B{});
    whole.add(x);
    xt::xtensor<double, 3> x1 = xt::view(x, xt::range(0, 2), xt::all(), xt::all());
    xt::xtensor<double, 3> x2 = xt::view(x, xt::range(2, 5), xt::all(), xt::all());
    left.add(x1);
    right.add(x2);
    left.merge(right);
    CHECK(left.sequences() == 5);
    CHECK(left.tokens() == 185);
    CHECK(max_rel(left.hessian(), whole.hessian()) < 1e-13);
    CHECK(max_rel(whole.hessian(), brute_force(x, nullptr)) < 1e-12);
  }

  TEST_CASE("the CUDA accumulator equals the CPU one for host and device inputs, strided, weighted, chunked") {
    RSQ_NEED_DEVICE(rsq::backend::cuda);
    using acc_gpu = rsq::hessian_accumulator<double, rsq::backend::cuda>;
    rsq::backend::cuda const be{};
    auto const x = random_inputs(6, 50, 40, 7);
    auto const r = random_importances(6, 50, 8);
    rsq::hessian_accumulator<double> cpu(40);
    cpu.add(x, r);
    auto const ref = cpu.hessian();
    auto const xd = upload(x.data(), x.size());
    auto const rd = upload(r.data(), r.size());
    rsq::batch_view<const double> xv(xd.data(), {6, 50, 40});
    rsq::matrix_view<const double> rv(rd.data(), 6, 50);
    for (index_t chunk : {0, 7, 64}) {
      CAPTURE(chunk);
      acc_gpu host(40, be, {}, {.chunk_tokens = chunk}), device(40, be, {}, {.chunk_tokens = chunk});
      host.add(x, r);
      device.add(xv, rv);                // device inputs, device importances
      CHECK(device.sequences() == 6);
      CHECK(device.tokens() == 300);
      CHECK(max_rel(host.hessian(), ref) < 1e-14);
      CHECK(max_rel(device.hessian(), ref) < 1e-14);
    }
    // A strided device batch (every other feature of a wider array) and host importances.
    auto const wide = random_inputs(2, 30, 80, 9);
    auto const wd = upload(wide.data(), wide.size());
    rsq::batch_view<const double> strided(wd.data(), {2, 30, 40}, {30 * 80, 80, 2});
    xt::xtensor<double, 3> narrow = xt::view(wide, xt::all(), xt::all(), xt::range(0, 80, 2));
    auto const r2 = random_importances(2, 30, 10);
    rsq::hessian_accumulator<double> c2(40);
    c2.add(narrow, r2);
    acc_gpu g2(40, be);
    g2.add(strided, rsq::make_const_view<2>(r2));
    CHECK(max_rel(g2.hessian(), c2.hessian()) < 1e-14);
    // One sequence as a matrix view of device memory; float inputs into a double accumulator.
    xt::xtensor<float, 2> one = xt::cast<float>(xt::view(x, 0, xt::all(), xt::all()));
    auto const od = upload(one.data(), one.size());
    acc_gpu g3(40, be);
    g3.add(rsq::matrix_view<const float>(od.data(), 50, 40));
    rsq::hessian_accumulator<double> c3(40);
    c3.add(one);
    CHECK(max_rel(g3.hessian(), c3.hessian()) < 1e-14);
    // The device copy of H is what hessian() downloads.
    auto const hd = g3.hessian_device();
    auto const hh = g3.hessian();
    CHECK(hd.to_host(be) == std::vector<double>(hh.begin(), hh.end()));
  }

  TEST_CASE("TF32 and bf16 precisions stay close to the fp32 Hessian") {
    RSQ_NEED_DEVICE(rsq::backend::cuda);
    rsq::backend::cuda const be{};
    auto const x = random_inputs(4, 256, 96, 11);
    auto const r = random_importances(4, 256, 12);
    auto const ref = brute_force(x, &r);
    xt::xtensor<float, 3> xf = xt::cast<float>(x);
    auto const xd = upload(xf.data(), xf.size());
    rsq::batch_view<const float> xv(xd.data(), {4, 256, 96});
    for (auto p : {rsq::cuda::hessian_precision::strict, rsq::cuda::hessian_precision::tf32,
                   rsq::cuda::hessian_precision::bf16}) {
      CAPTURE(int(p));
      rsq::hessian_accumulator<float, rsq::backend::cuda> acc(96, be, {}, {.precision = p, .chunk_tokens = 300});
      acc.add(xv, rsq::make_const_view<2>(r));
      double const err = max_rel(acc.hessian(), ref);
      double const tol = p == rsq::cuda::hessian_precision::strict ? 1e-5 : p == rsq::cuda::hessian_precision::tf32 ? 3e-3 : 2e-2;
      CHECK(err < tol);
      if (p != rsq::cuda::hessian_precision::strict) CHECK(err > 1e-7);  // the fast paths are really used
    }
    using acc_d = rsq::hessian_accumulator<double, rsq::backend::cuda>;
    rsq::cuda::hessian_options const tf32{.precision = rsq::cuda::hessian_precision::tf32};
    CHECK_THROWS_WITH_AS(acc_d(8, be, {}, tf32), doctest::Contains("need float"), rsq::invalid_argument);
  }

  TEST_CASE("bad device inputs name what is wrong and leave the accumulator unchanged") {
    RSQ_NEED_DEVICE(rsq::backend::cuda);
    rsq::backend::cuda const be{};
    rsq::hessian_accumulator<float, rsq::backend::cuda> acc(4, be);
    auto x = random_inputs(2, 5, 4, 3);
    x(1, 3, 2) = NAN;
    xt::xtensor<float, 3> xf = xt::cast<float>(x);
    auto const xd = upload(xf.data(), xf.size());
    CHECK_THROWS_WITH_AS(acc.add(rsq::batch_view<const float>(xd.data(), {2, 5, 4})),
                         doctest::Contains("sequence 1, token 3, feature 2"), rsq::invalid_argument);
    CHECK(acc.sequences() == 0);
    CHECK_THROWS_WITH_AS(acc.add(rsq::batch_view<const float>(xd.data(), {2, 5, 3}, {20, 4, 1})),
                         doctest::Contains("3 features, expected 4"), rsq::invalid_argument);
    x(1, 3, 2) = 0.5;
    xf = xt::cast<float>(x);
    auto const xd2 = upload(xf.data(), xf.size());
    xt::xtensor<float, 2> r(typename xt::xtensor<float, 2>::shape_type{2, 5}, 1.0f);
    r(0, 4) = -1;
    auto const rd = upload(r.data(), r.size());
    CHECK_THROWS_WITH_AS(acc.add(rsq::batch_view<const float>(xd2.data(), {2, 5, 4}),
                                 rsq::matrix_view<const float>(rd.data(), 2, 5)),
                         doctest::Contains("sequence 0, token 4"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(acc.add(rsq::batch_view<const float>(xd2.data(), {2, 5, 4}),
                                 rsq::matrix_view<const float>(rd.data(), 2, 4)),
                         doctest::Contains("do not match inputs"), rsq::invalid_argument);
    CHECK(acc.sequences() == 0);
    rsq::hessian_accumulator<float, rsq::backend::cuda> other(5, be);
    CHECK_THROWS_WITH_AS(acc.merge(other), doctest::Contains("features differ (4 vs 5)"), rsq::invalid_argument);
    using acc_f = rsq::hessian_accumulator<float, rsq::backend::cuda>;
    CHECK_THROWS_WITH_AS(acc_f(0, be), doctest::Contains("features"), rsq::invalid_argument);
  }
}
