// SPDX-License-Identifier: MIT
// nn::rms_norm on every backend: float64 RMSNorm over several widths (eps dominating or not), in place, rows with a
// stride (the columns around them untouched), rejected arguments named in the message, and on the CPU the same bits
// for 1 and 2 OpenMP threads.
#include <doctest/doctest.h>

#include <tuple>
#include <type_traits>
#include <utility>

#include <rsq/nn/rms_norm.hpp>

#include "nn/nn_support.hpp"

using namespace nn_test;

TEST_SUITE("nn.rms_norm") {
  TEST_CASE_TEMPLATE("rms_norm equals a float64 RMSNorm", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    for (auto const& item : {std::tuple<index_t, index_t, double>{1, 1, 1.0},
                                         {7, 64, 3.0},
                                         {33, 300, 1.0},
                                         {5, 4096, 0.5},
                                         {9, 172, 1e-3}}) {
      // Named copies, not a structured binding: clang 14 cannot capture one in CAPTURE's lambda.
      auto const rows = std::get<0>(item);
      auto const cols = std::get<1>(item);
      auto const sd = std::get<2>(item);
      CAPTURE(rows);
      CAPTURE(cols);
      CAPTURE(sd);
      auto const x = random_matrix(rows, cols, 1, sd);  // sd 1e-3: mean(x²) = 1e-6 < eps
      auto const g = random_matrix(1, cols, 2);
      auto const xd = upload<B>(x);
      auto const gd = upload<B>(g);
      auto yd = rsq::backend::make_matrix<float>(B{}, rows, cols);
      rsq::nn::rms_norm(B{}, rsq::view(xd), as_vector(gd), 1e-5f, rsq::view(yd));
      CHECK(max_rel(download<B>(yd), rms_norm_reference(x, g, 1e-5)) < 2e-6);
    }
  }

  TEST_CASE_TEMPLATE("rms_norm in place gives the same bits; strided rows leave the other columns alone", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    index_t const rows = 13, cols = 96;
    auto const x = random_matrix(rows, cols, 3);
    auto const g = random_matrix(1, cols, 4);
    auto const gd = upload<B>(g);
    auto const xd = upload<B>(x);
    auto yd = rsq::backend::make_matrix<float>(B{}, rows, cols);
    rsq::nn::rms_norm(B{}, rsq::view(xd), as_vector(gd), 1e-5f, rsq::view(yd));
    auto const expected = download<B>(yd);

    auto inplace = upload<B>(x);
    rsq::nn::rms_norm(B{}, rsq::view(inplace), as_vector(gd), 1e-5f, rsq::view(inplace));
    CHECK(same_bits(download<B>(inplace), expected));

    // x and y as columns [5, 5 + cols) of wider matrices.
    auto const wide = random_matrix(rows, cols + 9, 5);
    auto wide_x = wide;
    for (index_t r = 0; r < rows; ++r)
      for (index_t c = 0; c < cols; ++c) wide_x(r, 5 + c) = x(r, c);
    auto const wxd = upload<B>(wide_x);
    auto wyd = upload<B>(wide);
    rsq::nn::rms_norm(B{}, column_view(wxd, 5, cols), as_vector(gd), 1e-5f, column_view(wyd, 5, cols));
    auto const got = download<B>(wyd);
    CHECK(same_bits(columns(got, 5, cols), expected));
    CHECK(same_bits(columns(got, 0, 5), columns(wide, 0, 5)));
    CHECK(same_bits(columns(got, 5 + cols, 4), columns(wide, 5 + cols, 4)));
  }

  TEST_CASE_TEMPLATE("rms_norm rejects bad arguments, naming them", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const xd = upload<B>(random_matrix(4, 8, 6));
    auto const gd = upload<B>(random_matrix(1, 8, 7));
    auto const g7 = upload<B>(random_matrix(1, 7, 7));
    auto yd = rsq::backend::make_matrix<float>(B{}, 4, 8);
    auto y_bad = rsq::backend::make_matrix<float>(B{}, 3, 8);
    CHECK_THROWS_WITH_AS(rsq::nn::rms_norm(B{}, rsq::view(xd), as_vector(g7), 1e-5f, rsq::view(yd)),
                         doctest::Contains("rms_norm: 7 gains for rows of 8 features"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::nn::rms_norm(B{}, rsq::view(xd), as_vector(gd), 1e-5f, rsq::view(y_bad)),
                         doctest::Contains("rms_norm: y must be (4 x 8)"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::nn::rms_norm(B{}, rsq::view(xd), as_vector(gd), 0.f, rsq::view(yd)),
                         doctest::Contains("rms_norm: eps must be in (0, 1)"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::nn::rms_norm(B{}, rsq::matrix_view<const float>{}, as_vector(gd), 1e-5f, rsq::view(yd)),
                         doctest::Contains("rms_norm: x is empty"), rsq::invalid_argument);
    if constexpr (!std::is_same_v<B, rsq::backend::cpu_eigen>) {
      auto const host_x = random_matrix(4, 8, 8);
      CHECK_THROWS_WITH_AS(rsq::nn::rms_norm(B{}, rsq::view(host_x), as_vector(gd), 1e-5f, rsq::view(yd)),
                           doctest::Contains("rms_norm: x is not in the backend's memory"), rsq::invalid_argument);
    }
  }

#if defined(_OPENMP)
  TEST_CASE("rms_norm on the CPU: the same bits for 1 and 2 OpenMP threads") {
    rsq::backend::cpu_eigen const be;
    auto const x = random_matrix(4099, 64, 9);
    auto const g = random_matrix(1, 64, 10);
    CHECK(same_bits_for_1_and_2_threads([&] {
      auto y = rsq::make_matrix<float>(4099, 64);
      rsq::nn::rms_norm(be, rsq::view(x), as_vector(g), 1e-5f, rsq::view(y));
      return y;
    }));
  }
#endif
}
