// SPDX-License-Identifier: MIT
// Cayley SGD on the Stiefel manifold (rotation/cayley_sgd.hpp): orthogonality kept, descent on a problem with a
// known optimum (max tr(AᵀX) over orthogonal X: the sum of A's singular values), momentum, the cosine schedule, and
// non-finite gradients reported as a status.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <cmath>
#include <limits>

#include <rsq/backend/cpu/eigen_map.hpp>
#include <rsq/rotation/cayley_sgd.hpp>
#include <rsq/rotation/random_orthogonal.hpp>

using rsq::index_t;
using namespace rsq::rotation;

namespace {

double orthogonality_error(rsq::matrix<double> const& x) {
  Eigen::MatrixXd const m = rsq::cpu::as_eigen(rsq::view(x));
  return (m.transpose() * m - Eigen::MatrixXd::Identity(m.rows(), m.cols())).cwiseAbs().maxCoeff();
}

/// f(X) = −tr(AᵀX), ∂f/∂X = −A.
double objective(rsq::matrix<double> const& a, rsq::matrix<double> const& x) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s -= a.data()[i] * x.data()[i];
  return s;
}

rsq::matrix<double> negated(rsq::matrix<double> const& a) {
  rsq::matrix<double> g = a;
  for (auto& v : g) v = -v;
  return g;
}

}  // namespace

TEST_SUITE("cayley_sgd") {
  TEST_CASE("descends to the optimum of max tr(AᵀX) and keeps X orthogonal, with and without momentum") {
    index_t const n = 24;
    auto const a = random_orthogonal(n, 5).dense();  // an orthogonal A scaled below: optimum −tr(AᵀA)/... = −n·s
    rsq::matrix<double> scaled = a;
    for (auto& v : scaled) v *= 0.1;
    double const optimum = -0.1 * double(n);
    for (double momentum : {0.0, 0.5}) {
      CAPTURE(momentum);
      auto x = random_orthogonal(n, 9).dense();
      cayley_sgd sgd({.momentum = momentum});
      double const start = objective(scaled, x);
      double previous = start;
      int increases = 0;
      for (int step = 0; step < 200; ++step) {
        REQUIRE(sgd.step(0, x, negated(scaled), cosine_learning_rate(1.5, step, 200)) == cayley_status::ok);
        double const f = objective(scaled, x);
        increases += f > previous + 1e-12;
        previous = f;
      }
      CHECK(orthogonality_error(x) < 1e-12);
      CHECK(previous < start);
      CHECK(previous - optimum < 1e-3 * std::abs(optimum));
      if (momentum == 0) CHECK(increases == 0);
    }
  }

  TEST_CASE("the step size is capped by 1/‖W‖₁ and the learning rate") {
    auto x = random_orthogonal(8, 1).dense();
    auto g = random_orthogonal(8, 2).dense();
    for (auto& v : g) v *= 100;
    cayley_sgd sgd;
    REQUIRE(sgd.step(0, x, g, 1.5) == cayley_status::ok);
    CHECK(sgd.last_step_size() < 0.1);
    for (auto& v : g) v *= 1e-6;
    REQUIRE(sgd.step(0, x, g, 0.25) == cayley_status::ok);
    CHECK(sgd.last_step_size() == 0.25);
    CHECK(orthogonality_error(x) < 1e-13);
  }

  TEST_CASE("cosine schedule") {
    CHECK(cosine_learning_rate(1.5, 0, 100) == 1.5);
    CHECK(cosine_learning_rate(1.5, 50, 100) == doctest::Approx(0.75));
    CHECK(cosine_learning_rate(1.5, 99, 100) == doctest::Approx(1.5 * 0.5 * (1 + std::cos(M_PI * 0.99))));
    CHECK_THROWS_AS((void)cosine_learning_rate(1.5, 100, 100), rsq::invalid_argument);
  }

  TEST_CASE("a non-finite gradient is a status and changes nothing; bad shapes and rates are refused") {
    auto x = random_orthogonal(6, 1).dense();
    auto const before = x;
    auto g = rsq::make_matrix<double>(6, 6);
    g(2, 3) = std::numeric_limits<double>::quiet_NaN();
    cayley_sgd sgd;
    CHECK(sgd.step(0, x, g, 1.0) == cayley_status::not_finite);
    CHECK(x == before);
    auto const small = rsq::make_matrix<double>(5, 5);
    CHECK_THROWS_WITH_AS(sgd.step(0, x, small, 1.0), doctest::Contains("gradient"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(sgd.step(0, x, rsq::make_matrix<double>(6, 6), 0.0), doctest::Contains("learning rate"),
                         rsq::invalid_argument);
    auto rect = rsq::make_matrix<double>(4, 6);
    CHECK_THROWS_WITH_AS(sgd.step(1, rect, rsq::make_matrix<double>(4, 6), 1.0), doctest::Contains("square"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(cayley_sgd({.momentum = 1.0}), doctest::Contains("momentum"), rsq::invalid_argument);
  }
}
