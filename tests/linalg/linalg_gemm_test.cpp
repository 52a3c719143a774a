// SPDX-License-Identifier: MIT
// rsq::linalg::gemm on every backend (TEST_CASE_TEMPLATE over RSQ_TEST_BACKENDS) against a float64 brute force: every
// combination of op(A) and op(B), α and β (β = 0 ignores NaN in C, k = 0 and α = 0 only scale C), operands and C
// with row strides wider than their rows (the padding untouched), sizes from 1 x 1 x 1 to ones that the CPU backend
// cuts into tiles and a depth past Eigen's 320-deep slabs on several threads, float and double; on the CPU, bf16 is
// computed in fp32 (the same bits).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <utility>

#include <rsq/core/tensor.hpp>
#include <rsq/linalg/gemm.hpp>

#include "linalg/linalg_support.hpp"
#include "support/backend_data.hpp"
#include "support/backends.hpp"

namespace {

using rsq::index_t;
using rsq::linalg::op;

using linalg_test::uniform_matrix;

/// A (rows, cols) operand inside a (rows, cols + pad) host array: the view has row stride cols + pad.
template <class T>
struct padded {
  rsq::matrix<T> storage;  // (rows, cols + pad)
  index_t rows, cols;
  [[nodiscard]] T operator()(index_t i, index_t j) const { return storage(i, j); }
};

template <class T>
padded<T> make_padded(index_t rows, index_t cols, index_t pad, std::uint64_t seed) {
  return {uniform_matrix<T>(rows, cols + pad, seed), rows, cols};
}

struct gemm_case {
  index_t m, n, k;
  op op_a, op_b;
  double alpha, beta;
  index_t pad;  // extra elements at the end of every row of A, B and C
};

std::string describe(gemm_case const& c) {
  return std::to_string(c.m) + "x" + std::to_string(c.n) + "x" + std::to_string(c.k) + " op_a " +
         std::to_string(int(c.op_a)) + " op_b " + std::to_string(int(c.op_b)) + " alpha " +
         std::to_string(c.alpha) + " beta " + std::to_string(c.beta) + " pad " + std::to_string(c.pad);
}

/// Runs one case on backend B and checks every element of C against the float64 product, within the rounding
/// bound of a sum of k + 2 terms in any order, and the padding of C untouched.
template <class B, class T>
void check_case(gemm_case const& g, rsq::matmul_precision precision = rsq::matmul_precision::fp32) {
  B const be{};
  auto const a = g.op_a == op::none ? make_padded<T>(g.m, g.k, g.pad, 1) : make_padded<T>(g.k, g.m, g.pad, 1);
  auto const b = g.op_b == op::none ? make_padded<T>(g.k, g.n, g.pad, 2) : make_padded<T>(g.n, g.k, g.pad, 2);
  auto c0 = make_padded<T>(g.m, g.n, g.pad, 3);
  if (g.beta == 0)  // β = 0: C is not read, its NaNs do not propagate
    for (index_t i = 0; i < g.m; ++i)
      for (index_t j = 0; j < g.n; ++j) c0.storage(i, j) = std::numeric_limits<T>::quiet_NaN();
  auto const up_a = rsq_test::upload(be, rsq::view(a.storage));
  auto const up_b = rsq_test::upload(be, rsq::view(b.storage));
  auto up_c = rsq_test::upload(be, rsq::view(c0.storage));
  auto const inner = [](auto const& up, auto const& p) {
    using V = std::remove_const_t<std::remove_pointer_t<decltype(up.data())>>;
    return rsq::matrix_view<const V>(up.data(), {p.rows, p.cols}, {index_t(p.storage.shape()[1]), 1});
  };
  rsq::matrix_view<T> const c_view(up_c.data(), {g.m, g.n}, {index_t(c0.storage.shape()[1]), 1});
  rsq::linalg::gemm(be, inner(up_a, a), g.op_a, inner(up_b, b), g.op_b, c_view,
                    {.alpha = g.alpha, .beta = g.beta, .precision = precision});
  auto const c = rsq_test::download(be, up_c.view());  // (m, n + pad)

  double const eps = double(std::numeric_limits<T>::epsilon());
  double worst = 0;  // largest |error| / bound
  for (index_t i = 0; i < g.m; ++i)
    for (index_t j = 0; j < g.n; ++j) {
      double sum = 0, mag = 0;
      for (index_t q = 0; q < g.k; ++q) {
        double const x = double(g.op_a == op::none ? a(i, q) : a(q, i));
        double const y = double(g.op_b == op::none ? b(q, j) : b(j, q));
        sum += x * y;
        mag += std::abs(x * y);
      }
      double const old = g.beta == 0 ? 0.0 : double(c0(i, j));
      double const expected = g.alpha * sum + g.beta * old;
      double const bound = double(g.k + 2) * eps * (std::abs(g.alpha) * mag + std::abs(g.beta * old)) + 1e-300;
      worst = std::max(worst, std::abs(double(c(i, j)) - expected) / bound);
    }
  CHECK_MESSAGE(worst <= 1.0, describe(g), ": error ", worst, " x the rounding bound");
  bool padding_kept = true;
  for (index_t i = 0; i < g.m; ++i)
    for (index_t j = g.n; j < g.n + g.pad; ++j) padding_kept = padding_kept && c(i, j) == c0.storage(i, j);
  CHECK_MESSAGE(padding_kept, describe(g), ": wrote into the padding of C's rows");
}

TEST_SUITE("linalg") {

TEST_CASE_TEMPLATE("linalg::gemm matches a float64 product for every op, alpha, beta and stride", B, RSQ_TEST_BACKENDS) {
  RSQ_NEED_DEVICE(B);
  for (op oa : {op::none, op::transpose})
    for (op ob : {op::none, op::transpose})
      for (auto const& [alpha, beta] : {std::pair{1.0, 0.0}, {0.75, -1.5}, {-2.0, 1.0}, {0.0, 2.0}})
        for (index_t pad : {0, 3}) {
          check_case<B, float>({1, 1, 1, oa, ob, alpha, beta, pad});
          check_case<B, float>({5, 3, 7, oa, ob, alpha, beta, pad});
          check_case<B, float>({67, 45, 333, oa, ob, alpha, beta, pad});
          check_case<B, double>({31, 70, 401, oa, ob, alpha, beta, pad});
        }
}

TEST_CASE_TEMPLATE("linalg::gemm: products large enough to be tiled, vectors, and an empty depth", B,
                   RSQ_TEST_BACKENDS) {
  RSQ_NEED_DEVICE(B);
  for (op oa : {op::none, op::transpose})
    for (op ob : {op::none, op::transpose}) {
      check_case<B, float>({613, 523, 97, oa, ob, 1.0, 0.0, 1});   // several tiles each way, partial ones at the end
      check_case<B, double>({200, 301, 350, oa, ob, -0.5, 0.25, 0});
      check_case<B, float>({1, 700, 900, oa, ob, 1.0, 1.0, 2});   // a row vector times a matrix
      check_case<B, float>({700, 1, 900, oa, ob, 1.0, 1.0, 2});   // a matrix times a vector
      check_case<B, float>({40, 50, 0, oa, ob, 1.0, 0.5, 1});     // k = 0: C = βC
    }
}

TEST_CASE("linalg::gemm on the CPU: bf16 inputs are computed in fp32") {
  auto const a = uniform_matrix<float>(130, 400, 4), b = uniform_matrix<float>(90, 400, 5);
  auto fp32 = rsq::make_matrix<float>(130, 90), bf16 = rsq::make_matrix<float>(130, 90);
  rsq::linalg::gemm(rsq::backend::cpu_eigen{}, rsq::view(a), op::none, rsq::view(b), op::transpose, rsq::view(fp32));
  rsq::linalg::gemm(rsq::backend::cpu_eigen{}, rsq::view(a), op::none, rsq::view(b), op::transpose, rsq::view(bf16),
                    {.precision = rsq::matmul_precision::bf16});
  CHECK(fp32 == bf16);
}

}  // TEST_SUITE

}  // namespace
