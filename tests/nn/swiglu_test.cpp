// SPDX-License-Identifier: MIT
// nn::swiglu on every backend: silu(gate) ⊙ up against float64 for several shapes and magnitudes (|gate| up to ~50,
// where e^(−g) overflows float), rows with a stride (the columns around them untouched), rejected arguments named in
// the message, and on the CPU the same bits for 1 and 2 OpenMP threads.
#include <doctest/doctest.h>

#include <cmath>
#include <tuple>
#include <vector>

#include <rsq/nn/swiglu.hpp>

#include "nn/nn_support.hpp"

using namespace nn_test;

namespace {

std::vector<double> swiglu_reference(rsq::matrix<float> const& g, rsq::matrix<float> const& u) {
  std::vector<double> y(g.size());
  for (std::size_t i = 0; i < g.size(); ++i) {
    double const a = g.data()[i];
    y[i] = a / (1.0 + std::exp(-a)) * double(u.data()[i]);
  }
  return y;
}

}  // namespace

TEST_SUITE("nn.swiglu") {
  TEST_CASE_TEMPLATE("swiglu equals silu(gate) * up in float64", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    for (auto const& item : {std::tuple<index_t, index_t, double>{1, 1, 1.0},
                                         {7, 172, 1.0},
                                         {33, 1000, 3.0},
                                         {3, 14336, 1.0},
                                         {5, 40, 20.0}}) {
      // Named copies, not a structured binding: clang 14 cannot capture one in CAPTURE's lambda.
      auto const rows = std::get<0>(item);
      auto const cols = std::get<1>(item);
      auto const sd = std::get<2>(item);
      CAPTURE(rows);
      CAPTURE(cols);
      CAPTURE(sd);
      auto const g = random_matrix(rows, cols, 41, sd);
      auto const u = random_matrix(rows, cols, 42);
      auto gd = upload<B>(g);
      auto const ud = upload<B>(u);
      rsq::nn::swiglu(B{}, rsq::view(gd), rsq::view(ud));
      CHECK(max_rel(download<B>(gd), swiglu_reference(g, u)) < 1e-6);
    }
  }

  TEST_CASE_TEMPLATE("swiglu on strided rows leaves the other columns alone", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    index_t const rows = 11, cols = 50;
    auto const wide = random_matrix(rows, 2 * cols + 3, 43);  // [gate | up | 3 more]
    auto wd = upload<B>(wide);
    rsq::nn::swiglu(B{}, column_view(wd, 0, cols), column_view(wd, cols, cols));
    auto const got = download<B>(wd);
    CHECK(max_rel(columns(got, 0, cols), swiglu_reference(columns(wide, 0, cols), columns(wide, cols, cols))) < 1e-6);
    CHECK(same_bits(columns(got, cols, cols + 3), columns(wide, cols, cols + 3)));
  }

  TEST_CASE_TEMPLATE("swiglu rejects bad arguments, naming them", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto gd = upload<B>(random_matrix(4, 8, 44));
    auto const ud = upload<B>(random_matrix(4, 9, 45));
    CHECK_THROWS_WITH_AS(rsq::nn::swiglu(B{}, rsq::view(gd), rsq::view(ud)),
                         doctest::Contains("swiglu: up must be (4 x 8), got (4 x 9)"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::nn::swiglu(B{}, rsq::matrix_view<float>{}, rsq::view(ud)),
                         doctest::Contains("swiglu: gate is empty"), rsq::invalid_argument);
  }

#if defined(_OPENMP)
  TEST_CASE("swiglu on the CPU: the same bits for 1 and 2 OpenMP threads") {
    rsq::backend::cpu_eigen const be;
    auto const g0 = random_matrix(1000, 172, 46, 2.0);
    auto const u = random_matrix(1000, 172, 47);
    CHECK(same_bits_for_1_and_2_threads([&] {
      auto g = g0;
      rsq::nn::swiglu(be, rsq::view(g), rsq::view(u));
      return g;
    }));
  }
#endif
}
