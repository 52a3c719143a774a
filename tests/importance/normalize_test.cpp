// SPDX-License-Identifier: MIT
// Normalisation of raw scores into importances (spec §4.1): min-max, quantile range, causal division, transforms,
// masking, truncation, binning, the constant-score guard, and bad options.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include <rsq/importance/normalize.hpp>

namespace imp = rsq::importance;

namespace {

template <class T = double>
rsq::vector<T> make(std::vector<double> const& v) {
  auto x = rsq::vector<T>::from_shape({v.size()});
  for (std::size_t i = 0; i < v.size(); ++i) x(i) = T(v[i]);
  return x;
}

std::vector<double> random_scores(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> u(0.0, 50.0);
  std::vector<double> v(n);
  for (auto& x : v) x = u(gen);
  return v;
}

/// Brute force of §4.1 "default": r = r_min + (s − min)/(max − min)·(r_max − r_min), clamped.
std::vector<double> min_max(std::vector<double> const& s, double r_min, double r_max) {
  double const lo = *std::min_element(s.begin(), s.end()), hi = *std::max_element(s.begin(), s.end());
  std::vector<double> r(s.size());
  for (std::size_t i = 0; i < s.size(); ++i)
    r[i] = std::clamp(r_min + (s[i] - lo) / (hi - lo) * (r_max - r_min), r_min, r_max);
  return r;
}

template <class V>
void check_close(V const& got, std::vector<double> const& ref, double eps = 1e-12) {
  REQUIRE(got.size() == ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i) {
    CAPTURE(i);
    CHECK(double(got(i)) == doctest::Approx(ref[i]).epsilon(eps));
  }
}

}  // namespace

TEST_SUITE("importance.normalize") {
  TEST_CASE_TEMPLATE("default min-max equals the brute-force formula", T, float, double) {
    auto s = random_scores(300, 1);
    for (auto& v : s) v = double(T(v));  // the brute force sees the same (rounded) scores
    double const eps = std::is_same_v<T, float> ? 1e-6 : 1e-13;
    check_close(imp::normalize(make<T>(s)), min_max(s, 0.005, 1.0), eps);
    check_close(imp::normalize(make<T>(s), {.r_min = 1, .r_max = 3}), min_max(s, 1, 3), eps);
    auto const r = imp::normalize(make<T>(s));
    CHECK(*std::min_element(r.begin(), r.end()) == T(0.005));
    CHECK(*std::max_element(r.begin(), r.end()) == T(1.0));
  }

  TEST_CASE("min-max is invariant under a positive affine map of the scores") {
    auto const s = random_scores(64, 2);
    std::vector<double> t(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) t[i] = 3.5 * s[i] - 17.0;
    check_close(imp::normalize(make(t)), min_max(s, 0.005, 1.0), 1e-12);
  }

  TEST_CASE("cap_peak: the highest score becomes the second highest, then min-max (the sink keeps r_max)") {
    auto s = random_scores(64, 4);
    s[0] = 1000.0;  // a sink far above every other token (the others lie in [0, 50))
    auto capped = s;
    capped[0] = *std::max_element(s.begin() + 1, s.end());
    imp::normalize_options opt;
    opt.cap_peak = true;
    check_close(imp::normalize(make(s), opt), min_max(capped, 0.005, 1.0), 1e-12);
    auto const plain = imp::normalize(make(s));
    auto const r = imp::normalize(make(s), opt);
    CHECK(r(0) == 1.0);
    double plain_sum = 0, capped_sum = 0;  // the other tokens are no longer squeezed toward r_min
    for (std::size_t i = 1; i < s.size(); ++i) {
      plain_sum += plain(i);
      capped_sum += r(i);
    }
    CHECK(capped_sum > 5 * plain_sum);
    std::vector<double> one{2.0};
    CHECK(imp::normalize(make(one), opt)(0) == 1.0);  // a single token has no second score: unchanged
  }

  TEST_CASE("reverse mirrors the importances inside [r_min, r_max]") {
    auto const s = random_scores(50, 3);
    auto const r = imp::normalize(make(s));
    auto const rr = imp::normalize(make(s), {.reverse = true});
    for (std::size_t i = 0; i < s.size(); ++i) CHECK(rr(i) == doctest::Approx(0.005 + 1.0 - r(i)).epsilon(1e-12));
  }

  TEST_CASE("constant scores give r = r_max everywhere, never NaN") {
    for (std::size_t n : {1, 2, 17}) {
      std::vector<double> s(n, 4.25);
      auto const r = imp::normalize(make(s));
      for (auto v : r) CHECK(v == 1.0);
      auto const r2 = imp::normalize(make<float>(s), {.r_min = 0.1, .r_max = 2.0});
      for (auto v : r2) CHECK(v == 2.0f);
    }
    // Reversed constants are constant too.
    for (auto v : imp::normalize(make(std::vector<double>(5, -1.0)), {.reverse = true})) CHECK(v == 1.0);
  }

  TEST_CASE("causal linear and sqrt divide token t by (L - t) and sqrt(L - t) before min-max") {
    auto const s = random_scores(40, 4);
    std::vector<double> lin(s.size()), sq(s.size());
    for (std::size_t t = 0; t < s.size(); ++t) {
      lin[t] = s[t] / double(s.size() - t);
      sq[t] = s[t] / std::sqrt(double(s.size() - t));
    }
    check_close(imp::normalize(make(s), {.causal = imp::causal_normalization::linear}), min_max(lin, 0.005, 1));
    check_close(imp::normalize(make(s), {.causal = imp::causal_normalization::sqrt}), min_max(sq, 0.005, 1));
    // Uniform attention (token t receives L − t queries' worth) becomes constant under `linear`: r ≡ r_max.
    std::vector<double> uniform_attn(10);
    for (std::size_t t = 0; t < 10; ++t) uniform_attn[t] = 2.0 * double(10 - t);
    for (auto v : imp::normalize(make(uniform_attn), {.causal = imp::causal_normalization::linear}))
      CHECK(v == doctest::Approx(1.0));
  }

  TEST_CASE("square and sqrt transforms") {
    auto const s = random_scores(30, 5);
    std::vector<double> sq(s.size()), rt(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
      sq[i] = s[i] * s[i];
      rt[i] = std::sqrt(s[i]);
    }
    check_close(imp::normalize(make(s), {.scale = imp::score_scale::square}), min_max(sq, 0.005, 1));
    check_close(imp::normalize(make(s), {.scale = imp::score_scale::sqrt}), min_max(rt, 0.005, 1));
    // scale first, then reverse: reversing square(s) mirrors the squared ranking.
    std::vector<double> neg(sq.size());
    for (std::size_t i = 0; i < sq.size(); ++i) neg[i] = -sq[i];
    check_close(imp::normalize(make(s), {.scale = imp::score_scale::square, .reverse = true}), min_max(neg, 0.005, 1));
  }

  TEST_CASE("quantile range: min and max replaced by the (1-q) and q quantiles, values clamped") {
    // s = a permutation of 0..10: with q = 0.9 the quantiles sit at positions 1 and 9, i.e. values 1 and 9.
    std::vector<double> s = {5, 0, 10, 3, 7, 1, 9, 2, 8, 4, 6};
    auto const r = imp::normalize(make(s), {.quantile = 0.9});
    auto const r_swapped = imp::normalize(make(s), {.quantile = 0.1});  // q < 0.5 is swapped, as in the reference
    for (std::size_t i = 0; i < s.size(); ++i) {
      double const ref = std::clamp(0.005 + (s[i] - 1) / 8 * 0.995, 0.005, 1.0);
      CHECK(r(i) == doctest::Approx(ref).epsilon(1e-12));
      CHECK(r_swapped(i) == doctest::Approx(r(i)).epsilon(1e-12));
    }
    // Interpolated quantile: 0..4 with q = 0.8 gives positions 0.8 and 3.2, i.e. 0.8 and 3.2.
    auto const r2 = imp::normalize(make(std::vector<double>{0, 1, 2, 3, 4}), {.r_min = 0, .r_max = 1, .quantile = 0.8});
    std::vector<double> ref2 = {0, (1 - 0.8) / 2.4, (2 - 0.8) / 2.4, (3 - 0.8) / 2.4, 1};
    check_close(r2, ref2);
    // q = 0.5: a zero-width range; tokens below the median get r_min, the others r_max (no NaN).
    auto const r3 = imp::normalize(make(std::vector<double>{3, 1, 2, 5, 4}), {.quantile = 0.5});
    check_close(r3, {1.0, 0.005, 0.005, 1.0, 1.0});
    // q = 1 is plain min-max.
    check_close(imp::normalize(make(s), {.quantile = 1.0}), min_max(s, 0.005, 1));
  }

  TEST_CASE("masking: the floor(p L) lowest tokens get 0, the others 1") {
    std::vector<double> s = {4, 8, 1, 6, 2, 7, 3, 5};
    auto const r = imp::normalize(make(s), {.masking = 0.3});  // floor(2.4) = 2 tokens: values 1 and 2
    check_close(r, {1, 1, 0, 1, 0, 1, 1, 1});
    for (auto v : imp::normalize(make(s), {.masking = 0.0})) CHECK(v == 1.0);
    for (auto v : imp::normalize(make(s), {.masking = 1.0})) CHECK(v == 0.0);
    // Ties go to the lower index.
    check_close(imp::normalize(make(std::vector<double>{2, 1, 1, 1, 3}), {.masking = 0.4}), {1, 0, 0, 1, 1});
  }

  TEST_CASE("truncate: the floor(p L) lowest tokens get 0, the others keep r") {
    auto const s = random_scores(20, 6);
    auto const base = min_max(s, 0.005, 1);
    auto const r = imp::normalize(make(s), {.truncate = 0.25});
    std::vector<std::size_t> order(s.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::sort(order.begin(), order.end(), [&](auto a, auto b) { return s[a] < s[b]; });
    auto ref = base;
    for (std::size_t i = 0; i < 5; ++i) ref[order[i]] = 0;
    check_close(r, ref);
  }

  TEST_CASE("bins: quantile binning into B equally spaced levels") {
    std::vector<double> s(100);
    std::iota(s.begin(), s.end(), 0.0);
    std::shuffle(s.begin(), s.end(), std::mt19937(7));
    auto const r = imp::normalize(make(s), {.r_min = 0.1, .r_max = 1.0, .num_bins = 4});
    // Thresholds at positions 24.75, 49.5, 74.25 of the sorted r: 25 tokens per bin, levels 0.1, 0.4, 0.7, 1.0.
    for (std::size_t i = 0; i < s.size(); ++i) {
      double const level = 0.1 + 0.3 * std::floor(s[i] / 25);
      CHECK(r(i) == doctest::Approx(level).epsilon(1e-12));
    }
    // Two bins on a two-valued input: the lower value (and the threshold itself) go to r_min.
    check_close(imp::normalize(make(std::vector<double>{0, 0, 0, 1}), {.num_bins = 2}), {0.005, 0.005, 0.005, 1.0});
  }

  TEST_CASE("bad options and scores") {
    auto const s = make(std::vector<double>{1, 2, 3});
    using imp::normalize;
    CHECK_THROWS_WITH_AS((void)normalize(s, {.r_min = 2, .r_max = 1}), doctest::Contains("r_min must be <= r_max"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)normalize(s, {.r_min = -0.1}), doctest::Contains("r_min must be >= 0, got -0.1"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)normalize(s, {.r_min = 0, .r_max = 0}), doctest::Contains("r_max must be > 0"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)normalize(s, {.r_min = std::nan("")}), doctest::Contains("must be finite"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)normalize(s, {.r_max = std::numeric_limits<double>::infinity()}),
                         doctest::Contains("must be finite"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)normalize(s, {.quantile = 1.5}),
                         doctest::Contains("quantile must be a fraction in [0, 1]"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)normalize(s, {.masking = -0.1}), doctest::Contains("masking must be a fraction"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)normalize(s, {.masking = 1.01}), doctest::Contains("masking must be a fraction"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)normalize(s, {.truncate = std::nan("")}),
                         doctest::Contains("truncate must be a fraction"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)normalize(s, {.num_bins = 1}), doctest::Contains("num_bins must be 0 (off) or >= 2"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)normalize(s, {.num_bins = -3}), doctest::Contains("num_bins"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)normalize(s, {.masking = 0.1, .truncate = 0.1}), doctest::Contains("at most one of"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)normalize(s, {.masking = 0.1, .num_bins = 3}), doctest::Contains("at most one of"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)normalize(make(std::vector<double>{1, std::nan(""), 3})),
                         doctest::Contains("scores has a non-finite value (nan) at index 1"), rsq::invalid_argument);
    auto const with_inf = make<float>(std::vector<double>{1, 2, std::numeric_limits<double>::infinity()});
    CHECK_THROWS_WITH_AS((void)normalize(with_inf),
                         doctest::Contains("at index 2"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)normalize(make(std::vector<double>{})), doctest::Contains("scores are empty"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)normalize(make(std::vector<double>{1, -2}), {.scale = imp::score_scale::sqrt}),
                         doctest::Contains("scale sqrt needs scores >= 0, got -2 at index 1"), rsq::invalid_argument);
  }
}
