// SPDX-License-Identifier: MIT
// Tests of rsq::cpu::invert_lower_triangular_inplace against float64 references (Eigen's triangular solve, the
// product L X = I) and exactly invertible cases.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive in Eigen's AVX-512 GEMM kernels
#endif
#include <doctest/doctest.h>

#include <limits>

#include <rsq/backend/cpu/linalg.hpp>

#include "linalg/linalg_support.hpp"

using namespace linalg_test;

TEST_SUITE("linalg.triangular_inverse") {
  TEST_CASE_TEMPLATE("invert_lower_triangular_inplace inverts Cholesky factors like Eigen's solve in float64", T, float,
                     double) {
    for (Eigen::Index n : {1, 2, 7, 63, 64, 65, 129, 300, 1000}) {
      CAPTURE(n);
      matd const l0 = Eigen::LLT<matd>(random_spd(n, 300 + std::uint64_t(n))).matrixL();  // cond(L) < 4
      mat<T> x = l0.cast<T>();
      x.template triangularView<Eigen::StrictlyUpper>().setConstant(T(7));  // must stay untouched
      rsq::cpu::invert_lower_triangular_inplace(x);
      CHECK((x.template triangularView<Eigen::StrictlyUpper>().toDenseMatrix().array() ==
             mat<T>(mat<T>::Constant(n, n, T(7)).template triangularView<Eigen::StrictlyUpper>()).array())
                .all());
      matd const xi = x.template cast<double>().template triangularView<Eigen::Lower>();
      matd const id = matd::Identity(n, n);
      CHECK((l0 * xi - id).norm() / std::sqrt(double(n)) < 10 * eps<T>());
      matd const ref = l0.triangularView<Eigen::Lower>().solve(id);
      CHECK(rel_diff(xi, ref) < 10 * eps<T>());
    }
  }

  TEST_CASE_TEMPLATE("exact cases: diagonal matrices and a unit bidiagonal matrix", T, float, double) {
    Eigen::Index const n = 130;
    mat<T> d = mat<T>::Zero(n, n);
    for (Eigen::Index i = 0; i < n; ++i) d(i, i) = T(i % 2 ? -4 : 2) * T(1 + i % 3);  // powers of two times 1..3
    mat<T> x = d;
    rsq::cpu::invert_lower_triangular_inplace(x);
    for (Eigen::Index i = 0; i < n; ++i) CHECK(x(i, i) == T(1) / d(i, i));
    CHECK(x.template triangularView<Eigen::StrictlyLower>().toDenseMatrix().isZero(0));
    // I - E (E the subdiagonal of ones) has the inverse with ones on and below the diagonal: all exact.
    mat<T> b = mat<T>::Identity(n, n);
    for (Eigen::Index i = 1; i < n; ++i) b(i, i - 1) = T(-1);
    rsq::cpu::invert_lower_triangular_inplace(b);
    mat<T> const expected = mat<T>(mat<T>::Ones(n, n).template triangularView<Eigen::Lower>());
    CHECK(b == expected);
  }

  TEST_CASE("invert_lower_triangular_inplace works on a block with an outer stride") {
    Eigen::Index const n = 100;
    matd const l0 = Eigen::LLT<matd>(random_spd(n, 31)).matrixL();
    matd big = matd::Constant(n + 3, n + 3, 5.0);
    big.block(3, 0, n, n) = l0;
    rsq::cpu::invert_lower_triangular_inplace<double>(big.block(3, 0, n, n));
    matd const xi = big.block(3, 0, n, n);
    CHECK((l0 * xi - matd::Identity(n, n)).norm() < 1e-13);
    CHECK(big.topRows(3).isConstant(5.0));
    CHECK(big.rightCols(3).bottomRows(n).isConstant(5.0));
  }

  TEST_CASE_TEMPLATE("invert_lower_triangular_inplace rejects zero or non-finite diagonals and bad shapes", T, float,
                     double) {
    mat<T> l = mat<T>::Identity(10, 10);
    l(5, 5) = T(0);
    CHECK_THROWS_WITH_AS(rsq::cpu::invert_lower_triangular_inplace(l),
                         doctest::Contains("non-zero finite diagonal, got 0 at diagonal index 5"),
                         rsq::invalid_argument);
    l(5, 5) = std::numeric_limits<T>::quiet_NaN();
    CHECK_THROWS_WITH_AS(rsq::cpu::invert_lower_triangular_inplace(l), doctest::Contains("at diagonal index 5"),
                         rsq::invalid_argument);
    l(5, 5) = T(1);
    l(9, 9) = -std::numeric_limits<T>::infinity();
    CHECK_THROWS_WITH_AS(rsq::cpu::invert_lower_triangular_inplace(l), doctest::Contains("at diagonal index 9"),
                         rsq::invalid_argument);
    mat<T> rect = mat<T>::Identity(4, 3);
    CHECK_THROWS_WITH_AS(rsq::cpu::invert_lower_triangular_inplace(rect),
                         doctest::Contains("l must be square, got (4 x 3)"), rsq::invalid_argument);
    mat<T> empty(0, 0);
    CHECK_THROWS_WITH_AS(rsq::cpu::invert_lower_triangular_inplace(empty), doctest::Contains("empty"),
                         rsq::invalid_argument);
  }
}
