// SPDX-License-Identifier: MIT
#pragma once
// Helpers of the GPTQ solver tests (tests/gptq/*_test.cpp): a seeded weight with a realistic Hessian, the fraction of
// identical codes of two results, and the check of another backend's result against the CPU backend's (double:
// identical codes, scales to 1e-12, identical zeros; float: >= 99% identical codes and proxy loss within 1%).

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <type_traits>
#include <vector>

#include <rsq/gptq/proxy_loss.hpp>
#include <rsq/gptq/solve.hpp>

namespace gptq_test {

using rsq::index_t;

template <class T>
struct layer {
  rsq::matrix<T> w, h;
};

/// A weight (rows, cols) and a realistic Hessian 2/N XᵀX of N = @p tokens (default 3·cols) inputs with correlated
/// features and some heavy columns, computed in float64 and rounded to T.
template <class T>
layer<T> random_layer(index_t rows, index_t cols, unsigned seed, index_t tokens = 0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd;
  if (tokens == 0) tokens = 3 * cols;
  std::vector<double> x(std::size_t(tokens * cols));
  for (auto& v : x) v = nd(rng);
  for (index_t t = 0; t < tokens; ++t) {
    for (index_t c = cols - 1; c > 0; --c) x[std::size_t(t * cols + c)] += 0.5 * x[std::size_t(t * cols + c - 1)];
    for (index_t c = 0; c < cols; c += 7) x[std::size_t(t * cols + c)] *= 4;
  }
  layer<T> l{rsq::make_matrix<T>(rows, cols), rsq::make_matrix<T>(cols, cols)};
  for (auto& v : l.w) v = T(nd(rng));
  std::vector<double> h(std::size_t(cols * cols), 0.0);
  for (index_t t = 0; t < tokens; ++t)
    for (index_t a = 0; a < cols; ++a) {
      double const xa = x[std::size_t(t * cols + a)];
      for (index_t b = 0; b <= a; ++b) h[std::size_t(a * cols + b)] += xa * x[std::size_t(t * cols + b)];
    }
  for (index_t a = 0; a < cols; ++a)
    for (index_t b = 0; b <= a; ++b) l.h(a, b) = l.h(b, a) = T(2.0 / double(tokens) * h[std::size_t(a * cols + b)]);
  return l;
}

/// The fraction of codes that are the same in @p a and @p b (host results of the same shape).
template <class T>
double code_agreement(rsq::gptq::result<T> const& a, rsq::gptq::result<T> const& b) {
  REQUIRE(a.weight.codes.shape() == b.weight.codes.shape());
  std::size_t same = 0;
  for (std::size_t i = 0; i < a.weight.codes.size(); ++i) same += a.weight.codes.data()[i] == b.weight.codes.data()[i];
  return double(same) / double(a.weight.codes.size());
}

/// Another backend's result @p got against the CPU backend's for the same problem: double identical codes, zeros,
/// perm and g_idx, scales to 1e-12; float >= 99% identical codes and proxy loss within 1%.
template <class T, class W, class H>
void check_against_cpu(rsq::gptq::result<T> const& got, W const& w, H const& h, rsq::quant::grid_spec const& g,
                       rsq::gptq::options const& o) {
  auto const ref = rsq::gptq::solve(rsq::backend::cpu_eigen{}, w, h, g, o);
  REQUIRE(ref.ok());
  REQUIRE(got.ok());
  CHECK(got.perm == ref.perm);
  CHECK(got.weight.g_idx == ref.weight.g_idx);
  double const agree = code_agreement(got, ref);
  double const loss = rsq::gptq::proxy_loss(w, got.dequantized, h);
  double const ref_loss = rsq::gptq::proxy_loss(w, ref.dequantized, h);
  INFO("codes identical to the CPU backend: ", agree, ", proxy loss ", loss, " vs ", ref_loss);
  if constexpr (std::is_same_v<T, double>) {
    CHECK(agree == 1.0);
    // Dynamic groups are refitted on the lazily updated W, whose last bits depend on the GEMM summation order.
    double scale_err = 0;
    for (std::size_t i = 0; i < got.weight.scales.size(); ++i)
      scale_err = std::max(scale_err, std::abs(got.weight.scales.data()[i] / ref.weight.scales.data()[i] - 1));
    CHECK(scale_err < 1e-12);
    CHECK(got.weight.zeros == ref.weight.zeros);
  } else {
    CHECK(agree >= 0.99);
    CHECK(std::abs(loss - ref_loss) <= 1e-2 * ref_loss);
  }
  CHECK(got.total_loss() == doctest::Approx(ref.total_loss()).epsilon(std::is_same_v<T, double> ? 1e-9 : 1e-2));
}

}  // namespace gptq_test
