// SPDX-License-Identifier: MIT
#pragma once
// Shared by the tests of rsq/backend/cpu/linalg.hpp: seeded random matrices (platform-independent: mt19937_64 bits
// mapped by hand, no std distributions), SPD matrices with a known spectrum, and float64 references.

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include <Eigen/Dense>

#include <rsq/core/tensor.hpp>

namespace linalg_test {

using matd = Eigen::MatrixXd;
template <class T>
using mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
template <class T>
using row_mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Uniform in [-1, 1) from the top 53 bits of a mt19937_64 draw.
inline double uniform(std::mt19937_64& g) { return double(g() >> 11) * 0x1p-52 - 1.0; }

/// A row-major rsq::matrix of uniform values in [-1, 1), drawn in memory order.
template <class T>
rsq::matrix<T> uniform_matrix(rsq::index_t rows, rsq::index_t cols, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  auto m = rsq::make_matrix_for_overwrite<T>(rows, cols);
  for (auto& v : m) v = T(uniform(g));
  return m;
}

inline matd random_matrix(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  matd m(rows, cols);
  for (Eigen::Index j = 0; j < cols; ++j)
    for (Eigen::Index i = 0; i < rows; ++i) m(i, j) = uniform(g);
  return m;
}

/// G G^T / n + shift I for G uniform in [-1, 1): SPD with eigenvalues in about [shift, 4/3 + shift].
inline matd random_spd(Eigen::Index n, std::uint64_t seed, double shift = 0.1) {
  matd const g = random_matrix(n, n, seed);
  matd a = g * g.transpose() / double(n);
  a.diagonal().array() += shift;
  return a;
}

/// Q diag(lambda) Q^T with Q a random orthogonal matrix and lambda log-spaced in [1/cond, 1].
inline matd spd_with_condition(Eigen::Index n, double cond, std::uint64_t seed) {
  matd const q = Eigen::HouseholderQR<matd>(random_matrix(n, n, seed)).householderQ();
  Eigen::VectorXd lambda(n);
  for (Eigen::Index i = 0; i < n; ++i) lambda(i) = std::pow(cond, -double(i) / double(std::max<Eigen::Index>(n - 1, 1)));
  matd a = q * lambda.asDiagonal() * q.transpose();
  return (a + a.transpose()) / 2;
}

/// ||a - b||_F / ||b||_F
template <class A, class B>
double rel_diff(A const& a, B const& b) {
  return (a - b).norm() / b.norm();
}

/// The reference of GPTQ (spec §6 step 6), in float64 with Eigen: chol(H), H^-1 from it, chol(H^-1) upper.
inline matd reference_upper_cholesky_of_inverse(matd const& h) {
  Eigen::LLT<matd> llt(h);
  matd const hinv = llt.solve(matd::Identity(h.rows(), h.cols()));
  return Eigen::LLT<matd, Eigen::Upper>(hinv).matrixU();
}

/// Fills the strict upper triangle with NaN: routines that read only the lower triangle must not care.
template <class M>
void poison_upper(M& m) {
  m.template triangularView<Eigen::StrictlyUpper>().setConstant(std::numeric_limits<typename M::Scalar>::quiet_NaN());
}

/// Machine epsilon of T, as a double: tolerances are multiples of it.
template <class T>
constexpr double eps() {
  return double(std::numeric_limits<T>::epsilon());
}

}  // namespace linalg_test
