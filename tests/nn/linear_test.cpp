// SPDX-License-Identifier: MIT
// nn::linear and linalg::gemm on every backend: y = x·Wᵀ (and y += x·Wᵀ) against float64; every combination of
// op(A), op(B) with α, β and operands that are column ranges of wider matrices; float and double; β = 0 not reading
// C (NaN there does not propagate); an empty inner dimension (C = β·C); bf16 within a stated tolerance; rejected
// arguments named in the message; on the CPU the same bits for 1 and 2 OpenMP threads.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include <rsq/linalg/gemm.hpp>
#include <rsq/nn/linear.hpp>

#include "nn/nn_support.hpp"

using namespace nn_test;
using rsq::linalg::op;

namespace {

template <class T>
rsq::matrix<T> random_t(index_t rows, index_t cols, unsigned seed) {
  auto const f = random_matrix(rows, cols, seed);
  auto m = rsq::make_matrix<T>(rows, cols);
  for (std::size_t i = 0; i < f.size(); ++i) m.data()[i] = T(f.data()[i]);
  return m;
}

/// α·op(A)·op(B) + β·C0 in float64.
template <class T>
std::vector<double> gemm_reference(rsq::matrix<T> const& a, op oa, rsq::matrix<T> const& b, op ob,
                                   rsq::matrix<T> const& c0, double alpha, double beta) {
  index_t const m = index_t(c0.shape()[0]), n = index_t(c0.shape()[1]);
  index_t const k = oa == op::none ? index_t(a.shape()[1]) : index_t(a.shape()[0]);
  std::vector<double> c(std::size_t(m * n));
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) {
      double s = 0;
      for (index_t p = 0; p < k; ++p)
        s += double(oa == op::none ? a(i, p) : a(p, i)) * double(ob == op::none ? b(p, j) : b(j, p));
      c[std::size_t(i * n + j)] = alpha * s + beta * double(c0(i, j));
    }
  return c;
}

template <class T>
double max_rel_t(rsq::matrix<T> const& got, std::vector<double> const& ref) {
  double num = 0, den = 1e-30;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    num = std::max(num, std::abs(double(got.data()[i]) - ref[i]));
    den = std::max(den, std::abs(ref[i]));
  }
  return num / den;
}

}  // namespace

TEST_SUITE("nn.linear") {
  TEST_CASE_TEMPLATE("linear: y = x·Wᵀ and y += x·Wᵀ equal float64", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    for (auto const& item :
         {std::tuple<index_t, index_t, index_t>{1, 1, 1}, {5, 64, 172}, {130, 300, 200}, {33, 1024, 48}}) {
      // Named copies, not a structured binding: clang 14 cannot capture one in CAPTURE's lambda.
      auto const tokens = std::get<0>(item);
      auto const in = std::get<1>(item);
      auto const out = std::get<2>(item);
      CAPTURE(tokens);
      CAPTURE(in);
      CAPTURE(out);
      auto const x = random_matrix(tokens, in, 71);
      auto const w = random_matrix(out, in, 72);
      auto const y0 = random_matrix(tokens, out, 73);
      auto const xd = upload<B>(x);
      auto const wd = upload<B>(w);
      auto yd = upload<B>(y0);
      rsq::nn::linear(B{}, rsq::view(xd), rsq::view(wd), rsq::view(yd));
      CHECK(max_rel(download<B>(yd), gemm_reference(x, op::none, w, op::transpose, y0, 1.0, 0.0)) < 1e-5);
      auto acc = upload<B>(y0);
      rsq::nn::linear(B{}, rsq::view(xd), rsq::view(wd), rsq::view(acc), {.accumulate = true});
      CHECK(max_rel(download<B>(acc), gemm_reference(x, op::none, w, op::transpose, y0, 1.0, 1.0)) < 1e-5);
      auto half = upload<B>(y0);
      rsq::nn::linear(B{}, rsq::view(xd), rsq::view(wd), rsq::view(half), {.precision = rsq::matmul_precision::bf16});
      // bf16 keeps 8 bits of each input: about 0.4% per product, averaging over the sum.
      CHECK(max_rel(download<B>(half), gemm_reference(x, op::none, w, op::transpose, y0, 1.0, 0.0)) < 1e-2);
      // With a bias b (out): y = x·Wᵀ + b on every row, and y += x·Wᵀ + b.
      auto const b = random_matrix(1, out, 74);
      auto const bd = upload<B>(b);
      rsq::vector_view<const float> const bias(rsq::view(bd).data(), out);
      auto with_bias = [&](double beta) {
        auto ref = gemm_reference(x, op::none, w, op::transpose, y0, 1.0, beta);
        for (index_t r = 0; r < tokens; ++r)
          for (index_t c = 0; c < out; ++c) ref[std::size_t(r * out + c)] += double(b(0, c));
        return ref;
      };
      auto yb = upload<B>(y0);
      rsq::nn::linear(B{}, rsq::view(xd), rsq::view(wd), rsq::view(yb), {.bias = bias});
      CHECK(max_rel(download<B>(yb), with_bias(0.0)) < 1e-5);
      auto accb = upload<B>(y0);
      rsq::nn::linear(B{}, rsq::view(xd), rsq::view(wd), rsq::view(accb), {.accumulate = true, .bias = bias});
      CHECK(max_rel(download<B>(accb), with_bias(1.0)) < 1e-5);
      if (out > 1)
        CHECK_THROWS_WITH_AS(rsq::nn::linear(B{}, rsq::view(xd), rsq::view(wd), rsq::view(yb),
                                             {.bias = rsq::vector_view<const float>(bias.data(), out - 1)}),
                             doctest::Contains("a bias of"), rsq::invalid_argument);
    }
  }

  TEST_CASE_TEMPLATE("gemm: every op combination, alpha and beta, float and double", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const check = [](auto tag, index_t m, index_t n, index_t k, double tol) {
      using T = decltype(tag);
      for (op const oa : {op::none, op::transpose})
        for (op const ob : {op::none, op::transpose}) {
          CAPTURE(int(oa));
          CAPTURE(int(ob));
          auto const a = oa == op::none ? random_t<T>(m, k, 74) : random_t<T>(k, m, 74);
          auto const b = ob == op::none ? random_t<T>(k, n, 75) : random_t<T>(n, k, 75);
          auto const c0 = random_t<T>(m, n, 76);
          auto const ad = upload<B>(a);
          auto const bd = upload<B>(b);
          auto cd = upload<B>(c0);
          rsq::linalg::gemm(B{}, rsq::matrix_view<const T>(rsq::view(ad)), oa, rsq::matrix_view<const T>(rsq::view(bd)),
                            ob, rsq::view(cd), {.alpha = -0.75, .beta = 0.5});
          CHECK(max_rel_t(download<B>(cd), gemm_reference(a, oa, b, ob, c0, -0.75, 0.5)) < tol);
        }
    };
    for (auto const& item : {std::tuple<index_t, index_t, index_t>{7, 9, 13}, {65, 130, 300}, {1, 40, 1}}) {
      // Named copies, not a structured binding: clang 14 cannot capture one in CAPTURE's lambda.
      auto const m = std::get<0>(item);
      auto const n = std::get<1>(item);
      auto const k = std::get<2>(item);
      CAPTURE(m);
      CAPTURE(n);
      CAPTURE(k);
      check(float{}, m, n, k, 1e-5);
      check(double{}, m, n, k, 1e-13);
    }
  }

  TEST_CASE_TEMPLATE("gemm: operands as column ranges; beta = 0 does not read C; an empty inner dimension", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    index_t const m = 20, n = 30, k = 40;
    auto const wide_a = random_matrix(m, k + 5, 77), wide_b = random_matrix(n, k + 3, 78);
    auto c0 = random_matrix(m, n + 4, 79);
    c0(3, 2) = std::numeric_limits<float>::quiet_NaN();  // inside the range written with beta = 0
    auto const ad = upload<B>(wide_a);
    auto const bd = upload<B>(wide_b);
    auto cd = upload<B>(c0);
    rsq::linalg::gemm(B{}, rsq::matrix_view<const float>(column_view(ad, 2, k)), op::none,
                      rsq::matrix_view<const float>(column_view(bd, 1, k)), op::transpose, column_view(cd, 4, n));
    auto const got = download<B>(cd);
    auto const zero = rsq::make_matrix<float>(m, n);  // (m, n) zeros: beta = 0 ignores C
    CHECK(max_rel(columns(got, 4, n), gemm_reference(columns(wide_a, 2, k), op::none, columns(wide_b, 1, k),
                                                     op::transpose, zero, 1.0, 0.0)) < 1e-5);
    CHECK(same_bits(columns(got, 0, 4), columns(c0, 0, 4)));

    // k = 0: C = beta·C.
    auto const empty_a = rsq::backend::make_matrix<float>(B{}, m, 0);
    auto const empty_b = rsq::backend::make_matrix<float>(B{}, 0, n);
    auto const c1 = random_matrix(m, n, 80);
    auto c1d = upload<B>(c1);
    rsq::linalg::gemm(B{}, rsq::matrix_view<const float>(rsq::view(empty_a)), op::none,
                      rsq::matrix_view<const float>(rsq::view(empty_b)), op::none, rsq::view(c1d), {.beta = 2.0});
    auto twice = c1;
    for (auto& v : twice) v *= 2.f;
    CHECK(same_bits(download<B>(c1d), twice));
  }

  TEST_CASE_TEMPLATE("linear and gemm reject bad arguments, naming them", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const xd = upload<B>(random_matrix(4, 8, 81));
    auto const wd = upload<B>(random_matrix(6, 7, 82));
    auto const w_ok = upload<B>(random_matrix(6, 8, 83));
    auto yd = rsq::backend::make_matrix<float>(B{}, 4, 6);
    auto y_bad = rsq::backend::make_matrix<float>(B{}, 4, 5);
    CHECK_THROWS_WITH_AS(rsq::nn::linear(B{}, rsq::view(xd), rsq::view(wd), rsq::view(yd)),
                         doctest::Contains("(in_features differ)"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::nn::linear(B{}, rsq::view(xd), rsq::view(w_ok), rsq::view(y_bad)),
                         doctest::Contains("linear: y must be (4 x 6)"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::linalg::gemm(B{}, rsq::matrix_view<const float>(rsq::view(xd)), op::none,
                                           rsq::matrix_view<const float>(rsq::view(w_ok)), op::none, rsq::view(yd)),
                         doctest::Contains("gemm: op(A) 4 x 8 times op(B) 6 x 8 does not give C"),
                         rsq::invalid_argument);
  }

#if defined(_OPENMP)
  TEST_CASE("linear on the CPU: the same bits for 1 and 2 OpenMP threads (depth past 320)") {
    rsq::backend::cpu_eigen const be;
    auto const x = random_matrix(500, 700, 84);
    auto const w = random_matrix(300, 700, 85);
    CHECK(same_bits_for_1_and_2_threads([&] {
      auto y = rsq::make_matrix<float>(500, 300);
      rsq::nn::linear(be, rsq::view(x), rsq::view(w), rsq::view(y));
      return y;
    }));
  }
#endif
}
