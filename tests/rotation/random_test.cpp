// SPDX-License-Identifier: MIT
// The seeded RNG of rsq/core/random.hpp against values derived independently from the documented algorithm
// (SplitMix64 as published, Box–Muller as documented; computed with Python integers and math.log/cos/sin).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <rsq/core/random.hpp>

using rsq::index_t;
namespace rnd = rsq::random;

static_assert(std::uniform_random_bit_generator<rnd::splitmix64>);

TEST_SUITE("rotation.random") {
  TEST_CASE("SplitMix64 reproduces the published test vector and its counter-based form") {
    // Vigna's splitmix64.c seeded with 1234567 (the sequence quoted with the reference implementation).
    std::uint64_t const expected[] = {6457827717110365317ULL, 3203168211198807973ULL, 9817491932198370423ULL,
                                      4593380528125082431ULL, 16408922859458223821ULL};
    rnd::splitmix64 g(1234567);
    for (int i = 0; i < 5; ++i) {
      CAPTURE(i);
      CHECK(g() == expected[i]);
      CHECK(rnd::splitmix64::at(1234567, std::uint64_t(i)) == expected[i]);
    }
    // Seed 0.
    CHECK(rnd::splitmix64::at(0, 0) == 0xe220a8397b1dcdafULL);
    CHECK(rnd::splitmix64::at(0, 1) == 0x6e789e6aa1b965f4ULL);
    CHECK(rnd::splitmix64::at(0, 2) == 0x06c45d188009454fULL);
    CHECK(rnd::splitmix64::at(0, 3) == 0xf88bb8a8724c81ecULL);
    // Sequential and counter-based access agree far into the stream.
    rnd::splitmix64 h(99);
    for (std::uint64_t i = 0; i < 1000; ++i) REQUIRE(h() == rnd::splitmix64::at(99, i));
    CHECK(h.state() == 99 + 1000 * rnd::splitmix64::gamma);
  }

  TEST_CASE("signs are bit 63 of each output: hand-derived values for seed 42") {
    int const expected[] = {-1, 1, 1, 1, 1, -1, 1, -1, 1, -1, 1, 1, -1, -1, -1, 1};
    auto const s = rnd::signs(42, 16);
    REQUIRE(s.size() == 16);
    for (int i = 0; i < 16; ++i) {
      CAPTURE(i);
      CHECK(int(s(std::size_t(i))) == expected[i]);
      CHECK(rnd::sign_at(42, std::uint64_t(i)) == expected[i]);
    }
    // A longer stream is balanced (binomial: 4 sigma = 0.02 at n = 1e4... use 1e5 for a tighter check).
    auto const many = rnd::signs(7, 100000);
    long sum = 0;
    for (auto v : many) sum += v;
    CHECK(std::abs(double(sum)) / 100000.0 < 0.0127);  // 4 sigma
    CHECK(rnd::signs(3, 0).size() == 0);
  }

  TEST_CASE("Gaussians by documented Box–Muller: hand-derived values for seed 7, moments of a long stream") {
    double const expected[] = {1.3649922974572282, 0.14452122126941494, -0.39652397525381783,
                               -0.22759631143286652, 0.004498526159832091, 1.259433058588588};
    for (int i = 0; i < 6; ++i) {
      CAPTURE(i);
      CHECK(rnd::gaussian_at(7, std::uint64_t(i)) == doctest::Approx(expected[i]).epsilon(1e-14));
    }
    auto const g = rnd::gaussian_matrix(7, 2, 3);  // row-major: element (i, j) is value i*3 + j
    for (int i = 0; i < 6; ++i) CHECK(g(std::size_t(i / 3), std::size_t(i % 3)) == doctest::Approx(expected[i]).epsilon(1e-14));
    // An odd count drops the last sine but keeps every value in place.
    auto const odd = rnd::gaussian_matrix(7, 1, 5);
    for (int i = 0; i < 5; ++i) CHECK(odd(0, std::size_t(i)) == g(std::size_t(i / 3), std::size_t(i % 3)));
    // Moments.
    auto const big = rnd::gaussian_matrix(11, 400, 500);
    double mean = 0, m2 = 0, m4 = 0;
    for (double v : big) mean += v;
    mean /= double(big.size());
    for (double v : big) {
      m2 += (v - mean) * (v - mean);
      m4 += std::pow(v - mean, 4);
    }
    m2 /= double(big.size());
    m4 /= double(big.size());
    CHECK(std::abs(mean) < 0.01);  // 5 sigma at n = 2e5
    CHECK(m2 == doctest::Approx(1.0).epsilon(0.02));
    CHECK(m4 / (m2 * m2) == doctest::Approx(3.0).epsilon(0.05));  // kurtosis of a normal
  }

  TEST_CASE("uniforms use the top 53 bits exactly") {
    CHECK(rnd::uniform_of(0) == 0.0);
    CHECK(rnd::uniform_of(~std::uint64_t(0)) == 1.0 - 0x1.0p-53);
    CHECK(rnd::uniform_of(std::uint64_t(1) << 63) == 0.5);
    CHECK(rnd::sign_of(std::uint64_t(1) << 63) == -1);
    CHECK(rnd::sign_of((std::uint64_t(1) << 63) - 1) == 1);
  }

  TEST_CASE("bad arguments") {
    CHECK_THROWS_WITH_AS((void)rnd::signs(1, -1), doctest::Contains("n must be >= 0, got -1"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)rnd::gaussian_matrix(1, -2, 3), doctest::Contains("(-2 x 3)"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)rnd::gaussian_matrix(1, 2, -3), doctest::Contains("non-negative"),
                         rsq::invalid_argument);
  }
}
