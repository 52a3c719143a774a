// SPDX-License-Identifier: MIT
// Tests of rsq::cpu::cholesky_lower_inplace and upper_cholesky_of_inverse_inplace against float64 references
// (Eigen's LLT, brute-force products) and exact failure positions of matrices built to fail at a known pivot.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive in Eigen's AVX-512 GEMM kernels
#endif
#include <doctest/doctest.h>

#include <limits>
#include <vector>

#include <rsq/backend/cpu/linalg.hpp>

#include "linalg/linalg_support.hpp"

using namespace linalg_test;

namespace {
// Sizes around the recursion leaves (64, 128) and splits; 1000 is not a multiple of anything used inside.
std::vector<Eigen::Index> const sizes = {1, 2, 7, 16, 63, 64, 65, 129, 300, 1000};

/// J A J: A with rows and columns in reverse order.
matd reversed(matd const& a) { return a.reverse(); }
}  // namespace

TEST_SUITE("linalg.cholesky") {
  TEST_CASE_TEMPLATE("cholesky_lower_inplace factors random SPD matrices like Eigen's LLT in float64", T, float,
                     double) {
    for (Eigen::Index n : sizes) {
      CAPTURE(n);
      matd const a0 = random_spd(n, 100 + std::uint64_t(n));
      mat<T> a = a0.cast<T>();
      poison_upper(a);  // only the lower triangle may be read
      REQUIRE(rsq::cpu::cholesky_lower_inplace(a) == -1);
      CHECK(a.template triangularView<Eigen::StrictlyUpper>().toDenseMatrix().isZero(0));
      CHECK((a.diagonal().array() > T(0)).all());
      matd const l = a.template cast<double>();
      // Backward error ||L L^T - A|| / ||A|| of a stable Cholesky is a small multiple of n eps; the float input
      // itself is rounded by eps_f.
      CHECK(rel_diff(matd(l * l.transpose()), a0) < 2 * eps<T>() * (1 + std::sqrt(double(n)) / 8));
      matd const ref = Eigen::LLT<matd>(a0).matrixL();
      // cond(A) < 15 here, so L is determined to a few eps.
      CHECK(rel_diff(l, ref) < 10 * eps<T>());
    }
  }

  TEST_CASE("cholesky_lower_inplace works on blocks and maps with an outer stride, touching nothing else") {
    Eigen::Index const n = 150;
    matd const a0 = random_spd(n, 7);
    matd big = matd::Constant(n + 9, n + 13, -3.0);
    big.block(4, 6, n, n) = a0;
    matd const before = big;
    REQUIRE(rsq::cpu::cholesky_lower_inplace<double>(big.block(4, 6, n, n)) == -1);
    matd const l = big.block(4, 6, n, n);
    CHECK(rel_diff(l, matd(Eigen::LLT<matd>(a0).matrixL())) < 1e-13);
    big.block(4, 6, n, n) = before.block(4, 6, n, n);
    CHECK(big == before);

    std::vector<float> buf(std::size_t(n * n));
    Eigen::Map<Eigen::MatrixXf> m(buf.data(), n, n);
    m = a0.cast<float>();
    REQUIRE(rsq::cpu::cholesky_lower_inplace<float>(m) == -1);
    CHECK(rel_diff(m.cast<double>(), matd(Eigen::LLT<matd>(a0).matrixL())) < 1e-5);
  }

  TEST_CASE_TEMPLATE("cholesky_lower_inplace returns exactly the pivot that is made negative", T, float, double) {
    // A = L0 L0^T has pivots L0(k,k)^2; lowering A(k,k) by L0(k,k)^2 + 0.5 makes pivot k equal to -0.5 and leaves
    // the leading k x k block (hence all earlier pivots) untouched.
    Eigen::Index const n = 300;
    matd const l0 = Eigen::LLT<matd>(random_spd(n, 11)).matrixL();
    matd const a0 = l0 * l0.transpose();
    for (Eigen::Index k : {0, 1, 40, 63, 64, 65, 100, 127, 128, 129, 200, 299}) {
      CAPTURE(k);
      matd bad = a0;
      bad(k, k) -= l0(k, k) * l0(k, k) + 0.5;
      mat<T> a = bad.cast<T>();
      CHECK(rsq::cpu::cholesky_lower_inplace(a) == k);
    }
  }

  TEST_CASE_TEMPLATE("cholesky_lower_inplace reports singular and indefinite matrices", T, float, double) {
    mat<T> ones = mat<T>::Ones(2, 2);  // pivot 1 is exactly 0
    CHECK(rsq::cpu::cholesky_lower_inplace(ones) == 1);
    mat<T> zero = mat<T>::Zero(5, 5);
    CHECK(rsq::cpu::cholesky_lower_inplace(zero) == 0);
    mat<T> neg = -mat<T>::Identity(70, 70);
    CHECK(rsq::cpu::cholesky_lower_inplace(neg) == 0);
    mat<T> d = mat<T>::Identity(200, 200);
    d(150, 150) = T(-1);
    CHECK(rsq::cpu::cholesky_lower_inplace(d) == 150);
    // An indefinite matrix with a positive diagonal: [[1, 2], [2, 1]] has eigenvalues 3 and -1.
    mat<T> indef(2, 2);
    indef << 1, 2, 2, 1;
    CHECK(rsq::cpu::cholesky_lower_inplace(indef) == 1);
    // A 1 x 1 matrix.
    mat<T> one = mat<T>::Constant(1, 1, T(4));
    CHECK(rsq::cpu::cholesky_lower_inplace(one) == -1);
    CHECK(one(0, 0) == T(2));
    one(0, 0) = T(-4);
    CHECK(rsq::cpu::cholesky_lower_inplace(one) == 0);
  }

  TEST_CASE_TEMPLATE("NaN or Inf in the lower triangle is reported at its row; the upper triangle is ignored", T, float,
                     double) {
    // Entry (i, j), i >= j, enters pivot i and no earlier one, so the failure is reported exactly at i.
    Eigen::Index const n = 300;
    matd const a0 = random_spd(n, 13);
    struct pos {
      Eigen::Index i, j;
    };
    for (T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                  -std::numeric_limits<T>::infinity()}) {
      for (pos p : {pos{0, 0}, pos{64, 0}, pos{65, 64}, pos{128, 128}, pos{299, 150}, pos{200, 3}, pos{299, 299}}) {
        CAPTURE(bad);
        CAPTURE(p.i);
        CAPTURE(p.j);
        mat<T> a = a0.cast<T>();
        a(p.i, p.j) = bad;
        CHECK(rsq::cpu::cholesky_lower_inplace(a) == p.i);
      }
      mat<T> a = a0.cast<T>();
      a(3, 250) = bad;  // upper triangle: not read
      CHECK(rsq::cpu::cholesky_lower_inplace(a) == -1);
      CHECK(a.allFinite());
    }
  }

  TEST_CASE("cholesky_lower_inplace rejects non-square and empty matrices") {
    Eigen::MatrixXf rect = Eigen::MatrixXf::Identity(3, 4);
    CHECK_THROWS_WITH_AS((void)rsq::cpu::cholesky_lower_inplace(rect), doctest::Contains("a must be square, got (3 x 4)"),
                         rsq::invalid_argument);
    Eigen::MatrixXd empty(0, 0);
    CHECK_THROWS_WITH_AS((void)rsq::cpu::cholesky_lower_inplace(empty), doctest::Contains("is empty"),
                         rsq::invalid_argument);
  }
}

TEST_SUITE("linalg.upper_cholesky_of_inverse") {
  TEST_CASE_TEMPLATE("U is upper with a positive diagonal, U^T U = H^-1, and equals the reference's chol(inv(H))", T,
                     float, double) {
    for (Eigen::Index n : sizes) {
      CAPTURE(n);
      matd const h0 = random_spd(n, 200 + std::uint64_t(n));
      mat<T> h = h0.cast<T>();
      poison_upper(h);
      REQUIRE(rsq::cpu::upper_cholesky_of_inverse_inplace(h) == -1);
      CHECK(h.template triangularView<Eigen::StrictlyLower>().toDenseMatrix().isZero(0));
      CHECK((h.diagonal().array() > T(0)).all());
      matd const u = h.template cast<double>();
      matd const i = matd::Identity(n, n);
      CHECK((u.transpose() * u * h0 - i).norm() / std::sqrt(double(n)) < 40 * eps<T>());
      CHECK(rel_diff(u, reference_upper_cholesky_of_inverse(h0)) < 20 * eps<T>());
    }
  }

  TEST_CASE("upper_cholesky_of_inverse_inplace matches the reference trio to 1e-10 on ill-conditioned H (float64)") {
    for (double cond : {1e4, 1e6}) {
      for (Eigen::Index n : {100, 300}) {
        CAPTURE(cond);
        CAPTURE(n);
        matd const h0 = spd_with_condition(n, cond, 17);
        matd h = h0;
        REQUIRE(rsq::cpu::upper_cholesky_of_inverse_inplace(h) == -1);
        // Both computations are backward stable; their difference is bounded by about cond * eps.
        CHECK(rel_diff(h, reference_upper_cholesky_of_inverse(h0)) < 1e-10);
      }
    }
  }

  TEST_CASE_TEMPLATE("a failure is reported in H's own numbering", T, float, double) {
    Eigen::Index const n = 300;
    // Pivot k of chol(J H J) fails for H = J A J with A built to fail at k: reported as n - 1 - k.
    matd const l0 = Eigen::LLT<matd>(random_spd(n, 19)).matrixL();
    matd const a0 = l0 * l0.transpose();
    for (Eigen::Index k : {0, 63, 64, 65, 150, 299}) {
      CAPTURE(k);
      matd bad = a0;
      bad(k, k) -= l0(k, k) * l0(k, k) + 0.5;
      mat<T> h = reversed(bad).cast<T>();
      CHECK(rsq::cpu::upper_cholesky_of_inverse_inplace(h) == n - 1 - k);
    }
    // A negative diagonal entry p of a diagonal H.
    mat<T> d = mat<T>::Identity(n, n);
    d(77, 77) = T(-2);
    CHECK(rsq::cpu::upper_cholesky_of_inverse_inplace(d) == 77);
    // NaN at H(i, j), i > j, sits in row n-1-j of J H J: reported as j.
    matd const h0 = random_spd(n, 23);
    for (Eigen::Index j : {0, 10, 64, 200}) {
      mat<T> h = h0.cast<T>();
      h(j + 50, j) = std::numeric_limits<T>::quiet_NaN();
      CHECK(rsq::cpu::upper_cholesky_of_inverse_inplace(h) == j);
    }
    mat<T> ones = mat<T>::Ones(3, 3);
    CHECK(rsq::cpu::upper_cholesky_of_inverse_inplace(ones) == 1);  // pivot 1 of J H J is exactly 0
  }

  TEST_CASE("upper_cholesky_of_inverse_inplace on a block, and its argument checks") {
    Eigen::Index const n = 90;
    matd const h0 = random_spd(n, 29);
    matd big = matd::Constant(n + 2, n + 5, 9.0);
    big.block(1, 2, n, n) = h0;
    REQUIRE(rsq::cpu::upper_cholesky_of_inverse_inplace<double>(big.block(1, 2, n, n)) == -1);
    CHECK(rel_diff(matd(big.block(1, 2, n, n)), reference_upper_cholesky_of_inverse(h0)) < 1e-12);
    CHECK(big.col(0).isConstant(9.0));
    CHECK(big.row(n + 1).isConstant(9.0));

    Eigen::MatrixXd rect(5, 4);
    CHECK_THROWS_WITH_AS((void)rsq::cpu::upper_cholesky_of_inverse_inplace(rect),
                         doctest::Contains("h must be square, got (5 x 4)"), rsq::invalid_argument);
    Eigen::MatrixXf empty(0, 0);
    CHECK_THROWS_WITH_AS((void)rsq::cpu::upper_cholesky_of_inverse_inplace(empty), doctest::Contains("empty"),
                         rsq::invalid_argument);
  }
}

TEST_SUITE("linalg.threads") {
  TEST_CASE("one thread and three give the same bits, close to the sequential recursion, and the same failing pivot") {
    int const saved = Eigen::nbThreads();
    for (Eigen::Index n : {300, 1000}) {
      CAPTURE(n);
      matd const a0 = random_spd(n, 400 + std::uint64_t(n));
      matd const l0 = Eigen::LLT<matd>(a0).matrixL();
      matd chol[2], inv[2], u[2];
      for (int threads : {1, 3}) {
        Eigen::setNbThreads(threads);
        int const s = threads == 1 ? 0 : 1;
        chol[s] = a0;
        REQUIRE(rsq::cpu::cholesky_lower_inplace(chol[s]) == -1);
        inv[s] = l0;
        rsq::cpu::invert_lower_triangular_inplace(inv[s]);
        u[s] = a0;
        REQUIRE(rsq::cpu::upper_cholesky_of_inverse_inplace(u[s]) == -1);
        matd bad = a0;
        bad(n / 2 + 1, n / 2 + 1) -= l0(n / 2 + 1, n / 2 + 1) * l0(n / 2 + 1, n / 2 + 1) + 0.5;
        CHECK(rsq::cpu::cholesky_lower_inplace(bad) == n / 2 + 1);
        matd nan = a0;
        nan(n - 5, 3) = std::numeric_limits<double>::quiet_NaN();
        CHECK(rsq::cpu::cholesky_lower_inplace(nan) == n - 5);
        nan = a0;
        nan(n - 5, 3) = std::numeric_limits<double>::quiet_NaN();
        CHECK(rsq::cpu::upper_cholesky_of_inverse_inplace(nan) == 3);
      }
      // The algorithm (tile tasks from two tiles up, else the recursion) depends on the size alone.
      CHECK(chol[1] == chol[0]);
      CHECK(inv[1] == inv[0]);
      CHECK(u[1] == u[0]);
      matd rec = a0;
      REQUIRE(rsq::cpu::detail::linalg::cholesky_recursive<double>(rec) == -1);
      rec.triangularView<Eigen::StrictlyUpper>().setZero();
      CHECK(rel_diff(chol[0], rec) < 1e-14);
    }
    Eigen::setNbThreads(saved);
  }
}
