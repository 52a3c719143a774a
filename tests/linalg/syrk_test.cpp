// SPDX-License-Identifier: MIT
// Tests of rsq::cpu::syrk_lower_update and symmetrize_from_lower against a float64 brute-force X^T X.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive in Eigen's AVX-512 GEMM kernels
#endif
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include <rsq/backend/cpu/linalg.hpp>
#include <rsq/backend/cpu/scratch.hpp>

#include "linalg/linalg_support.hpp"

using namespace linalg_test;

namespace {
/// Brute-force float64 reference of c0_lower + alpha x^T x, entry by entry (no Eigen product).
matd brute_force(matd const& c0, matd const& x, double alpha) {
  matd r = c0;
  for (Eigen::Index j = 0; j < x.cols(); ++j)
    for (Eigen::Index i = j; i < x.cols(); ++i) {
      double s = 0;
      for (Eigen::Index t = 0; t < x.rows(); ++t) s += x(t, i) * x(t, j);
      r(i, j) += alpha * s;
    }
  return r;
}

/// Checks lower(c) against lower(ref) relative to the size of the update, and that the strict upper is as before.
template <class T>
void check_update(mat<T> const& c, matd const& ref, mat<T> const& before, matd const& x, double tol) {
  matd const lower = c.template cast<double>().template triangularView<Eigen::Lower>();
  matd const ref_lower = ref.triangularView<Eigen::Lower>();
  // Each entry is a sum of `tokens` products: its error is about tokens * eps * sum |x_ti x_tj|.
  double const scale = (x.transpose().cwiseAbs() * x.cwiseAbs()).norm() + 1.0;
  CHECK((lower - ref_lower).norm() / scale < tol);
  mat<T> const up = c.template triangularView<Eigen::StrictlyUpper>();
  mat<T> const up0 = before.template triangularView<Eigen::StrictlyUpper>();
  CHECK((up.array() == up0.array()).all());
}
}  // namespace

TEST_SUITE("linalg.syrk") {
  TEST_CASE_TEMPLATE("syrk_lower_update adds alpha x^T x to the lower triangle, for x of either storage order", T, float,
                     double) {
    for (Eigen::Index n : {1, 7, 64, 129, 300, 1000}) {
      for (Eigen::Index tokens : {1, 50, 257}) {
        if (n == 1000 && tokens != 50) continue;  // keep the brute force short
        CAPTURE(n);
        CAPTURE(tokens);
        // Inputs representable in T, so that the reference sees exactly what the routine sees.
        matd const xd = random_matrix(tokens, n, std::uint64_t(n * 1000 + tokens)).cast<T>().template cast<double>();
        matd const c0 = random_matrix(n, n, 5).cast<T>().template cast<double>();
        double const alpha = 0.75;
        matd const ref = brute_force(c0, xd, alpha);
        double const tol = eps<T>() * (1 + std::sqrt(double(tokens)) / 2);
        mat<T> const before = c0.cast<T>();
        SUBCASE("row-major x (tokens, n), as activations are stored") {
          row_mat<T> const x = xd.cast<T>();
          mat<T> c = before;
          rsq::cpu::syrk_lower_update(c, x, T(alpha));
          check_update(c, ref, before, xd, tol);
        }
        SUBCASE("column-major x") {
          mat<T> const x = xd.cast<T>();
          mat<T> c = before;
          rsq::cpu::syrk_lower_update<T>(c, x, T(alpha));
          check_update(c, ref, before, xd, tol);
        }
      }
    }
  }

  TEST_CASE("syrk_lower_update takes blocks, maps, expressions, and float x into a double c") {
    Eigen::Index const n = 200, tokens = 90;
    matd const xd = random_matrix(tokens + 10, n + 7, 41);
    matd const c0 = random_matrix(n, n, 43);
    matd const ref = brute_force(c0, xd.block(3, 2, tokens, n), -1.0);
    SUBCASE("block of a larger matrix") {
      matd c = c0;
      rsq::cpu::syrk_lower_update(c, xd.block(3, 2, tokens, n), -1.0);
      check_update<double>(c, ref, c0, xd.block(3, 2, tokens, n), 1e-14);
    }
    SUBCASE("an expression is evaluated once: (2 x) with alpha / 4") {
      matd c = c0;
      rsq::cpu::syrk_lower_update(c, 2.0 * xd.block(3, 2, tokens, n), -0.25);
      check_update<double>(c, ref, c0, xd.block(3, 2, tokens, n), 1e-14);
    }
    SUBCASE("float x accumulated into a double c") {
      row_mat<float> const xf = xd.block(3, 2, tokens, n).cast<float>();
      matd c = c0;
      rsq::cpu::syrk_lower_update(c, xf, -1.0);
      check_update<double>(c, brute_force(c0, xf.cast<double>(), -1.0), c0, xd.block(3, 2, tokens, n), 1e-14);
    }
    SUBCASE("a block of c (column-major map with outer stride)") {
      matd big = matd::Constant(n + 4, n + 4, 3.0);
      big.block(2, 1, n, n) = c0;
      rsq::cpu::syrk_lower_update<double>(big.block(2, 1, n, n), xd.block(3, 2, tokens, n), -1.0);
      check_update<double>(big.block(2, 1, n, n), ref, c0, xd.block(3, 2, tokens, n), 1e-14);
      CHECK(big.topRows(2).isConstant(3.0));
      CHECK(big.col(0).isConstant(3.0));
    }
  }

  TEST_CASE_TEMPLATE("many tokens of a row-major x: chunked through the gathering buffers", T, float, double) {
    // 7000 tokens at n = 600 make three chunks (two buffers, one of them reused), on several threads.
    int const saved = Eigen::nbThreads();
    Eigen::setNbThreads(std::max(saved, 2));
    Eigen::Index const n = 600, tokens = 7000;
    matd const xd = random_matrix(tokens, n, 61).cast<T>().template cast<double>();
    matd const c0 = random_matrix(n, n, 67).cast<T>().template cast<double>();
    matd ref = c0;
    ref.noalias() += 0.5 * xd.transpose() * xd;  // float64 product
    row_mat<T> const x = xd.cast<T>();
    mat<T> const before = c0.cast<T>();
    mat<T> c = before;
    rsq::cpu::syrk_lower_update(c, x, T(0.5));
    Eigen::setNbThreads(saved);
    check_update(c, ref, before, xd, eps<T>() * (1 + std::sqrt(double(tokens)) / 2));
  }

  TEST_CASE_TEMPLATE("syrk_lower_update_gathered adds the tokens its fill writes, on one thread and on several", T,
                     float, double) {
    // Tokens gathered from every other row of a row-major source, each scaled by its own factor, as the Hessian
    // accumulator does. n = 1100 with 3000 tokens: two chunks of five feature blocks, the last one of 76 rows;
    // n = 100 and 37: one tile, whose packings end in narrower panels.
    int const saved = Eigen::nbThreads();
    for (int threads : {1, 3}) {
      for (Eigen::Index n : {37, 100, 1100}) {
        CAPTURE(threads);
        CAPTURE(n);
        Eigen::setNbThreads(threads);
        Eigen::Index const tokens = 3000;
        row_mat<T> const source = random_matrix(2 * tokens, n, 71).cast<T>();
        Eigen::VectorXd const scale = Eigen::VectorXd::Random(tokens).array() + 1.5;
        matd xd(tokens, n);  // the tokens as the fill writes them, in float64
        for (Eigen::Index k = 0; k < tokens; ++k)
          for (Eigen::Index f = 0; f < n; ++f) xd(k, f) = double(T(scale(k)) * source(2 * k, f));
        matd const c0 = random_matrix(n, n, 73).cast<T>().template cast<double>();
        mat<T> const before = c0.cast<T>();
        mat<T> c = before;
        rsq::cpu::syrk_lower_update_gathered<T>(
            c, tokens,
            [&](T* dst, Eigen::Index ld, Eigen::Index f0, Eigen::Index nf, Eigen::Index k0, Eigen::Index kn) {
              for (Eigen::Index k = 0; k < kn; ++k)
                for (Eigen::Index f = 0; f < nf; ++f) dst[f + k * ld] = T(scale(k0 + k)) * source(2 * (k0 + k), f0 + f);
            },
            T(0.5));
        matd ref = c0;
        ref.noalias() += 0.5 * xd.transpose() * xd;  // float64 product
        check_update(c, ref, before, xd, eps<T>() * (1 + std::sqrt(double(tokens)) / 2));
      }
    }
    Eigen::setNbThreads(saved);
  }

  TEST_CASE("syrk_lower_update_gathered: zero tokens change nothing, bad arguments are named") {
    Eigen::MatrixXf c = Eigen::MatrixXf::Ones(4, 4), rect(4, 5);
    int calls = 0;
    auto fill = [&](float*, Eigen::Index, Eigen::Index, Eigen::Index, Eigen::Index, Eigen::Index) { ++calls; };
    rsq::cpu::syrk_lower_update_gathered<float>(c, 0, fill, 1.0f);
    CHECK(calls == 0);
    CHECK(c.isOnes());
    CHECK_THROWS_WITH_AS(rsq::cpu::syrk_lower_update_gathered<float>(c, -1, fill, 1.0f),
                         doctest::Contains("tokens must not be negative, got -1"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::cpu::syrk_lower_update_gathered<float>(rect, 3, fill, 1.0f),
                         doctest::Contains("c must be square, got (4 x 5)"), rsq::invalid_argument);
  }

  TEST_CASE("scratch memory is kept between calls, released on request, and private to a nested call") {
    // One thread: the sequential path fills its chunk buffer from the calling thread, so a fill that calls the
    // SYRK again runs while the outer call holds the thread's scratch block.
    int const saved = Eigen::nbThreads();
    Eigen::setNbThreads(1);
    Eigen::Index const n = 64, tokens = 300;
    row_mat<float> const x = random_matrix(tokens, n, 81).cast<float>();
    matd const xd = x.cast<double>();
    auto const copy_rows = [&](row_mat<float> const& src) {
      return [&src](float* dst, Eigen::Index ld, Eigen::Index f0, Eigen::Index nf, Eigen::Index k0, Eigen::Index kn) {
        for (Eigen::Index k = 0; k < kn; ++k)
          for (Eigen::Index f = 0; f < nf; ++f) dst[f + k * ld] = src(k0 + k, f0 + f);
      };
    };
    matd const ref = xd.transpose() * xd;
    mat<float> const zero = mat<float>::Zero(n, n);

    rsq::cpu::release_scratch();
    CHECK(rsq::cpu::scratch_bytes() == 0);
    mat<float> c = zero;
    rsq::cpu::syrk_lower_update_gathered<float>(c, tokens, copy_rows(x), 1.0f);
    auto const kept = rsq::cpu::scratch_bytes();
    CHECK(kept >= std::size_t(n * tokens) * sizeof(float));  // one chunk of all the tokens
    check_update(c, ref, zero, xd, 1e-6);

    // Nested: the inner call, made from the outer fill, must not write into the outer chunk buffer; releasing the
    // scratch from inside waits for the outer call to end.
    row_mat<float> const y = random_matrix(tokens, n, 82).cast<float>();
    matd const yd = y.cast<double>();
    mat<float> outer = zero, inner = zero;
    int inner_calls = 0;
    rsq::cpu::syrk_lower_update_gathered<float>(
        outer, tokens,
        [&](float* dst, Eigen::Index ld, Eigen::Index f0, Eigen::Index nf, Eigen::Index k0, Eigen::Index kn) {
          copy_rows(x)(dst, ld, f0, nf, k0, kn);
          rsq::cpu::syrk_lower_update_gathered<float>(inner, tokens, copy_rows(y), 1.0f);
          ++inner_calls;
          rsq::cpu::release_scratch();
          CHECK(rsq::cpu::scratch_bytes() == kept);  // still held by the outer call
        },
        1.0f);
    REQUIRE(inner_calls == 1);
    check_update(outer, ref, zero, xd, 1e-6);
    check_update(inner, matd(yd.transpose() * yd), zero, yd, 1e-6);
    CHECK(rsq::cpu::scratch_bytes() == 0);  // released when the outer call ended
    Eigen::setNbThreads(saved);
  }

  TEST_CASE("two batches add up to one batch of all tokens, and zero tokens change nothing") {
    Eigen::Index const n = 160;
    Eigen::MatrixXf const x = random_matrix(300, n, 47).cast<float>();
    Eigen::MatrixXf one = Eigen::MatrixXf::Zero(n, n), two = one;
    rsq::cpu::syrk_lower_update(one, x, 1.0f);
    rsq::cpu::syrk_lower_update(two, x.topRows(120), 1.0f);
    rsq::cpu::syrk_lower_update(two, x.bottomRows(180), 1.0f);
    Eigen::MatrixXf const lo1 = one.triangularView<Eigen::Lower>(), lo2 = two.triangularView<Eigen::Lower>();
    CHECK(rel_diff(lo2, lo1) < 1e-5);
    Eigen::MatrixXf const before = two;
    rsq::cpu::syrk_lower_update(two, x.topRows(0), 1.0f);
    CHECK(two == before);
  }

  TEST_CASE("symmetrize_from_lower copies the lower triangle onto the upper one exactly") {
    for (Eigen::Index n : {1, 2, 63, 64, 65, 200}) {
      CAPTURE(n);
      Eigen::MatrixXf c = random_matrix(n, n, 53).cast<float>();
      Eigen::MatrixXf const lower = c.triangularView<Eigen::Lower>();
      rsq::cpu::symmetrize_from_lower(c);
      CHECK(c == c.transpose());
      Eigen::MatrixXf const lower_after = c.triangularView<Eigen::Lower>();
      CHECK(lower_after == lower);
    }
  }

  TEST_CASE("argument checks of syrk_lower_update and symmetrize_from_lower") {
    Eigen::MatrixXd rect(4, 5), c = Eigen::MatrixXd::Zero(4, 4), empty(0, 0);
    Eigen::MatrixXd const x = Eigen::MatrixXd::Ones(10, 3);
    CHECK_THROWS_WITH_AS(rsq::cpu::syrk_lower_update(rect, x, 1.0), doctest::Contains("c must be square, got (4 x 5)"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::cpu::syrk_lower_update(c, x, 1.0),
                         doctest::Contains("x must have as many columns as c has rows, got x (10 x 3) and c (4 x 4)"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::cpu::syrk_lower_update(empty, Eigen::MatrixXd(3, 0), 1.0), doctest::Contains("empty"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::cpu::symmetrize_from_lower(rect), doctest::Contains("c must be square, got (4 x 5)"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::cpu::symmetrize_from_lower(empty), doctest::Contains("empty"), rsq::invalid_argument);
  }
}

TEST_SUITE("linalg.threads") {
  TEST_CASE("syrk_lower_update gives the same bits on one thread and on several") {
    int const saved = Eigen::nbThreads();
    Eigen::MatrixXd const x = random_matrix(200, 700, 59);
    Eigen::MatrixXd c[2];
    for (int s : {0, 1}) {
      Eigen::setNbThreads(s == 0 ? 1 : 3);
      c[s] = Eigen::MatrixXd::Zero(700, 700);
      rsq::cpu::syrk_lower_update(c[s], x, 1.0);
    }
    Eigen::setNbThreads(saved);
    CHECK(c[1] == c[0]);
  }
}
