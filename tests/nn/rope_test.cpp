// SPDX-License-Identifier: MIT
// nn::rope on every backend: a float64 rotation of the adjacent pairs of every head for several sequence lengths
// (1 included), head dims 2..128 and thetas, positions restarting with every sequence; queries as a column range of
// a fused qkv matrix (the other columns untouched); rejected arguments named in the message; on the CPU the same bits
// for 1 and 2 OpenMP threads.
#include <doctest/doctest.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include <rsq/nn/rope.hpp>

#include "nn/nn_support.hpp"

using namespace nn_test;

namespace {

/// Llama-3's scaled inverse frequency from its definition (Meta's apply_scaling: wavelengths beyond
/// old_len / low_factor divided by factor, below old_len / high_factor kept, between interpolated).
double llama3_frequency(double f, rsq::nn::rope_scaling const& s) {
  double const wavelen = 2 * 3.14159265358979323846 / f;
  if (wavelen < s.original_max_positions / s.high_freq_factor) return f;
  if (wavelen > s.original_max_positions / s.low_freq_factor) return f / s.factor;
  double const t = (s.original_max_positions / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  return (1 - t) * f / s.factor + t * f;
}

/// RoPE in float64: pair (2i, 2i+1) of each head of row r rotated by (r mod L)·theta^(−2i/d) (Llama-3-scaled when
/// @p scaling is given).
std::vector<double> rope_reference(rsq::matrix<float> const& x, index_t L, index_t d, double theta,
                                   std::optional<rsq::nn::rope_scaling> scaling = {}) {
  index_t const rows = index_t(x.shape()[0]), cols = index_t(x.shape()[1]);
  std::vector<double> y(std::size_t(rows * cols));
  for (index_t r = 0; r < rows; ++r)
    for (index_t h = 0; h < cols / d; ++h)
      for (index_t i = 0; i < d / 2; ++i) {
        double f = std::pow(theta, -double(2 * i) / double(d));
        if (scaling) f = llama3_frequency(f, *scaling);
        double const angle = double(r % L) * f;
        double const a = x(r, h * d + 2 * i), b = x(r, h * d + 2 * i + 1);
        y[std::size_t(r * cols + h * d + 2 * i)] = a * std::cos(angle) - b * std::sin(angle);
        y[std::size_t(r * cols + h * d + 2 * i + 1)] = a * std::sin(angle) + b * std::cos(angle);
      }
  return y;
}

}  // namespace

TEST_SUITE("nn.rope") {
  TEST_CASE_TEMPLATE("rope equals a float64 rotation of adjacent pairs", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    for (auto const& item :
         {std::tuple<index_t, index_t, index_t, index_t, double>{1, 1, 1, 2, 1e4},
          {2, 7, 3, 8, 1e4},
          {3, 130, 2, 64, 5e5},
          {1, 300, 1, 128, 1e4},
          {2, 2048, 1, 16, 1e4}}) {
      // Named copies, not a structured binding: clang 14 cannot capture one in CAPTURE's lambda.
      auto const sequences = std::get<0>(item);
      auto const L = std::get<1>(item);
      auto const heads = std::get<2>(item);
      auto const d = std::get<3>(item);
      auto const theta = std::get<4>(item);
      CAPTURE(sequences);
      CAPTURE(L);
      CAPTURE(heads);
      CAPTURE(d);
      auto const x = random_matrix(sequences * L, heads * d, 11);
      auto xd = upload<B>(x);
      rsq::nn::rope(B{}, rsq::view(xd), {.seq_len = L, .head_dim = d, .theta = theta});
      // cos/sin are rounded to float: about 1e-7 of |x|.
      CHECK(max_rel(download<B>(xd), rope_reference(x, L, d, theta)) < 1e-6);
    }
  }

  TEST_CASE_TEMPLATE("rope with Llama-3's frequency scaling equals the scaled float64 rotation", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    // Llama-3.1's parameters, and a short original context so that the 64 pairs of a head span all three regimes.
    for (auto const& s : {rsq::nn::rope_scaling{8.0, 1.0, 4.0, 8192}, rsq::nn::rope_scaling{4.0, 1.0, 4.0, 256}}) {
      CAPTURE(s.original_max_positions);
      index_t const L = 300, d = 128;
      auto const x = random_matrix(L, 2 * d, 5);
      auto xd = upload<B>(x);
      rsq::nn::rope(B{}, rsq::view(xd), {.seq_len = L, .head_dim = d, .theta = 5e5, .scaling = s});
      CHECK(max_rel(download<B>(xd), rope_reference(x, L, d, 5e5, s)) < 1e-6);
      CHECK(max_rel(download<B>(xd), rope_reference(x, L, d, 5e5)) > 1e-3);  // the scaling matters
      int regimes[3] = {0, 0, 0};
      for (index_t i = 0; i < d / 2; ++i) {
        double const f = std::pow(5e5, -double(2 * i) / double(d)), g = rsq::nn::rope_inverse_frequency(5e5, d, s, i);
        regimes[g == f ? 0 : g == f / s.factor ? 2 : 1] += 1;
      }
      if (s.original_max_positions == 256) CHECK((regimes[0] > 0 && regimes[1] > 0 && regimes[2] > 0));
    }
  }

  TEST_CASE_TEMPLATE("rope on a column range of a fused qkv matrix leaves the other columns alone", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    index_t const L = 9, d = 16, heads = 4, kv = 2, width = (heads + 2 * kv) * d;
    auto const qkv = random_matrix(2 * L, width, 12);
    auto qkvd = upload<B>(qkv);
    rsq::nn::rope(B{}, column_view(qkvd, 0, heads * d), {.seq_len = L, .head_dim = d});
    rsq::nn::rope(B{}, column_view(qkvd, heads * d, kv * d), {.seq_len = L, .head_dim = d});
    auto const got = download<B>(qkvd);
    CHECK(max_rel(columns(got, 0, heads * d), rope_reference(columns(qkv, 0, heads * d), L, d, 1e4)) < 1e-6);
    CHECK(max_rel(columns(got, heads * d, kv * d), rope_reference(columns(qkv, heads * d, kv * d), L, d, 1e4)) < 1e-6);
    CHECK(same_bits(columns(got, (heads + kv) * d, kv * d), columns(qkv, (heads + kv) * d, kv * d)));
  }

  TEST_CASE_TEMPLATE("rope rejects bad arguments, naming them", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto xd = upload<B>(random_matrix(10, 24, 13));
    CHECK_THROWS_WITH_AS(rsq::nn::rope(B{}, rsq::view(xd), {.seq_len = 3, .head_dim = 8}),
                         doctest::Contains("rope: 10 rows are not whole sequences of seq_len = 3"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::nn::rope(B{}, rsq::view(xd), {.seq_len = 5, .head_dim = 7}),
                         doctest::Contains("rope: head_dim 7 must be even and divide the 24 features"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::nn::rope(B{}, rsq::view(xd), {.seq_len = 5, .head_dim = 16}),
                         doctest::Contains("rope: head_dim 16 must be even and divide the 24 features"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::nn::rope(B{}, rsq::view(xd), {.seq_len = 5, .head_dim = 8, .theta = 1.0}),
                         doctest::Contains("rope: theta must be in (1, 1e12)"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::nn::rope(B{}, rsq::view(xd), {.seq_len = 0, .head_dim = 8}),
                         doctest::Contains("rope: 10 rows are not whole sequences of seq_len = 0"),
                         rsq::invalid_argument);
  }

#if defined(_OPENMP)
  TEST_CASE("rope on the CPU: the same bits for 1 and 2 OpenMP threads") {
    rsq::backend::cpu_eigen const be;
    auto const x0 = random_matrix(4 * 256, 8 * 8, 14);
    CHECK(same_bits_for_1_and_2_threads([&] {
      auto x = x0;
      rsq::nn::rope(be, rsq::view(x), {.seq_len = 256, .head_dim = 8});
      return x;
    }));
  }
#endif
}
