// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// A seeded, platform-independent random generator: the same seed gives the same rotation on every platform.
///
/// The generator is **SplitMix64** (G. L. Steele, D. Lea, C. H. Flood, "Fast splittable pseudorandom number
/// generators", OOPSLA 2014; constants as in S. Vigna's reference `splitmix64.c`). With a 64-bit state `s`:
///
///     s  <- s + 0x9E3779B97F4A7C15            (mod 2^64)
///     z  <- s
///     z  <- (z xor (z >> 30)) * 0xBF58476D1CE4E5B9
///     z  <- (z xor (z >> 27)) * 0x94D049BB133111EB
///     out = z xor (z >> 31)
///
/// The generator is seeded with `s = seed`, so output i (0-based) is `mix(seed + (i + 1) * 0x9E3779B97F4A7C15)`:
/// any output can be computed directly from its index (`splitmix64::at`), which makes parallel fills reproducible.
/// Known values: seed 1234567 gives 6457827717110365317, 3203168211198807973, 9817491932198370423, ...
///
/// Derived quantities (all documented here because a seed must mean the same thing everywhere):
///  - **sign i** = +1 if bit 63 of output i is 0, else -1. Bit-exact on every platform.
///  - **uniform** from an output x: `(x >> 11) * 2^-53` in [0, 1) (exact in double).
///  - **Gaussian pair j** (Box–Muller) from outputs 2j and 2j+1: `u1 = ((x_2j >> 11) + 1) * 2^-53` in (0, 1],
///    `u2 = (x_2j+1 >> 11) * 2^-53`, `r = sqrt(-2 ln u1)`; value 2j is `r cos(2 pi u2)`, value 2j+1 is
///    `r sin(2 pi u2)`. These use `log`, `cos` and `sin`, so they may differ in the last ulp between libm
///    implementations; everything before that (u1, u2) is bit-exact.

#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>

#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"

namespace rsq::random {

/// The SplitMix64 generator (see the file comment for the exact algorithm). Satisfies
/// std::uniform_random_bit_generator, but use the helpers below rather than <random> distributions, whose output
/// is implementation-defined.
class splitmix64 {
 public:
  using result_type = std::uint64_t;
  static constexpr std::uint64_t gamma = 0x9E3779B97F4A7C15ULL;  ///< the Weyl-sequence increment

  /// A generator whose first output is `at(seed, 0)`.
  explicit constexpr splitmix64(std::uint64_t seed) noexcept : state_(seed) {}

  /// The next 64-bit output.
  constexpr std::uint64_t operator()() noexcept {
    state_ += gamma;
    return mix(state_);
  }

  /// Output @p i (0-based) of a generator seeded with @p seed, computed directly (counter-based access).
  [[nodiscard]] static constexpr std::uint64_t at(std::uint64_t seed, std::uint64_t i) noexcept {
    return mix(seed + (i + 1) * gamma);
  }

  /// The SplitMix64 output function (a variant of MurmurHash3's 64-bit finalizer).
  [[nodiscard]] static constexpr std::uint64_t mix(std::uint64_t z) noexcept {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

  [[nodiscard]] static constexpr std::uint64_t min() noexcept { return 0; }
  [[nodiscard]] static constexpr std::uint64_t max() noexcept { return std::numeric_limits<std::uint64_t>::max(); }

  /// The current state (the seed before the first call).
  [[nodiscard]] constexpr std::uint64_t state() const noexcept { return state_; }

 private:
  std::uint64_t state_;
};

/// +1 if bit 63 of @p bits is 0, else -1.
[[nodiscard]] constexpr int sign_of(std::uint64_t bits) noexcept { return (bits >> 63) ? -1 : 1; }

/// A uniform double in [0, 1) from the top 53 bits of @p bits (exact).
[[nodiscard]] constexpr double uniform_of(std::uint64_t bits) noexcept {
  return double(bits >> 11) * 0x1.0p-53;
}

/// Sign i of the stream of @p seed (bit-exact everywhere).
[[nodiscard]] constexpr int sign_at(std::uint64_t seed, std::uint64_t i) noexcept {
  return sign_of(splitmix64::at(seed, i));
}

/// Standard normal value i of the stream of @p seed by Box–Muller on outputs 2*(i/2) and 2*(i/2)+1.
[[nodiscard]] inline double gaussian_at(std::uint64_t seed, std::uint64_t i) noexcept {
  std::uint64_t const pair = i / 2;
  double const u1 = double((splitmix64::at(seed, 2 * pair) >> 11) + 1) * 0x1.0p-53;  // (0, 1]: log is finite
  double const u2 = uniform_of(splitmix64::at(seed, 2 * pair + 1));
  double const r = std::sqrt(-2.0 * std::log(u1));
  double const angle = 2.0 * std::numbers::pi * u2;
  return (i % 2 == 0) ? r * std::cos(angle) : r * std::sin(angle);
}

/// The first @p n signs of the stream of @p seed, as +1 / -1.
[[nodiscard]] inline rsq::vector<std::int8_t> signs(std::uint64_t seed, index_t n) {
  RSQ_EXPECTS(n >= 0, "random::signs: n must be >= 0, got ", n);
  rsq::vector<std::int8_t> s = rsq::vector<std::int8_t>::from_shape({std::size_t(n)});
  for (index_t i = 0; i < n; ++i) s(std::size_t(i)) = std::int8_t(sign_at(seed, std::uint64_t(i)));
  return s;
}

/// A (rows, cols) matrix of standard normal values; element (i, j) is `gaussian_at(seed, i * cols + j)`.
[[nodiscard]] inline rsq::matrix<double> gaussian_matrix(std::uint64_t seed, index_t rows, index_t cols) {
  RSQ_EXPECTS(rows >= 0 && cols >= 0, "random::gaussian_matrix: the shape must be non-negative, got (", rows, " x ",
              cols, ")");
  auto g = rsq::matrix<double>::from_shape({std::size_t(rows), std::size_t(cols)});  // (rows, cols)
  double* out = g.data();
  index_t const total = rows * cols;
  // Pairs are independent (counter-based), so the fill parallelises without changing any value.
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (total > (index_t(1) << 16))
#endif
  for (index_t pair = 0; pair < (total + 1) / 2; ++pair) {
    std::uint64_t const k = std::uint64_t(pair);
    double const u1 = double((splitmix64::at(seed, 2 * k) >> 11) + 1) * 0x1.0p-53;
    double const u2 = uniform_of(splitmix64::at(seed, 2 * k + 1));
    double const r = std::sqrt(-2.0 * std::log(u1));
    double const angle = 2.0 * std::numbers::pi * u2;
    out[2 * pair] = r * std::cos(angle);
    if (2 * pair + 1 < total) out[2 * pair + 1] = r * std::sin(angle);
  }
  return g;
}

}  // namespace rsq::random
