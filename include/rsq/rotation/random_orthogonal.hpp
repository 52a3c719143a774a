// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Haar-random orthogonal rotation (spec §2.2, rotate_mode "random"): G (n, n) with standard normal entries from
/// the SplitMix64 stream of the seed (element (i, j) is Gaussian i*n + j, rsq/core/random.hpp), its Householder QR
/// G = Q0 R in float64, and the sign fix Q = Q0 diag(sign(R_jj)) that makes the distribution Haar (Mezzadri 2007).
///
/// Reproducibility: G is the same everywhere up to the last ulp of libm's log/cos/sin; the QR adds rounding of
/// order n·eps, so Q agrees across platforms to ~1e-13, not bit for bit (the Hadamard rotations are bit-exact).
/// Q is dense: applying it costs a GEMM (2 rows n² flops), building it O(n³) (a few seconds at n = 4096).

#include <concepts>
#include <cstdint>
#include <type_traits>

#include <Eigen/Core>
#include <Eigen/QR>

#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/random.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/rotation/rotation.hpp"

namespace rsq::rotation {

/// A dense Haar-random orthogonal Q (see the file comment); models rotation_for<float/double>.
class random_orthogonal {
 public:
  /// Q of size @p n from @p seed.
  random_orthogonal(index_t n, std::uint64_t seed) : d_{rotation_kind::random_orthogonal, n, seed, 0, {}, {}} {
    RSQ_EXPECTS(n > 0, "random_orthogonal: n must be positive, got ", n);
    auto const g = random::gaussian_matrix(seed, n, n);  // (n, n)
    Eigen::MatrixXd a = cpu::as_eigen(rsq::view(g));
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(a);
    Eigen::MatrixXd q0 = qr.householderQ() * Eigen::MatrixXd::Identity(n, n);
    for (index_t j = 0; j < n; ++j)
      if (qr.matrixQR()(j, j) < 0) q0.col(j) = -q0.col(j);  // sign(R_jj); R_jj = 0 has probability 0
    q_ = rsq::matrix<double>::from_shape({std::size_t(n), std::size_t(n)});
    cpu::as_eigen(rsq::view(q_)) = q0;
  }

  /// Size n of Q.
  [[nodiscard]] index_t size() const noexcept { return d_.n; }

  /// W <- W Q.
  template <std::floating_point T>
  void apply_right(matrix_view<T> w) const {
    detail::check_side(w, size(), true, "random_orthogonal", "apply_right");
    auto m = cpu::as_eigen(w);
    cpu::eigen_row_matrix<T> const r = m * q<T>();
    m = r;
  }
  /// W <- W Qᵀ.
  template <std::floating_point T>
  void apply_right_transpose(matrix_view<T> w) const {
    detail::check_side(w, size(), true, "random_orthogonal", "apply_right_transpose");
    auto m = cpu::as_eigen(w);
    cpu::eigen_row_matrix<T> const r = m * q<T>().transpose();
    m = r;
  }
  /// W <- Qᵀ W.
  template <std::floating_point T>
  void apply_left_transpose(matrix_view<T> w) const {
    detail::check_side(w, size(), false, "random_orthogonal", "apply_left_transpose");
    auto m = cpu::as_eigen(w);
    cpu::eigen_row_matrix<T> const r = q<T>().transpose() * m;
    m = r;
  }
  /// W <- Q W.
  template <std::floating_point T>
  void apply_left(matrix_view<T> w) const {
    detail::check_side(w, size(), false, "random_orthogonal", "apply_left");
    auto m = cpu::as_eigen(w);
    cpu::eigen_row_matrix<T> const r = q<T>() * m;
    m = r;
  }

  /// Q (n, n) in float64 (a copy).
  [[nodiscard]] rsq::matrix<double> dense() const { return q_; }
  /// Q (n, n) in float64, without a copy.
  [[nodiscard]] rsq::matrix<double> const& matrix() const noexcept { return q_; }
  /// kind random_orthogonal, n, seed.
  [[nodiscard]] rotation_descriptor const& descriptor() const noexcept { return d_; }

 private:
  // Q as an Eigen expression of T (a cast for float, a map for double).
  template <class T>
  [[nodiscard]] auto q() const {
    auto const map = cpu::as_eigen(rsq::view(q_));
    if constexpr (std::is_same_v<T, double>)
      return map;
    else
      return cpu::eigen_row_matrix<T>(map.template cast<T>());
  }

  rsq::matrix<double> q_;  // (n, n)
  rotation_descriptor d_;
};

}  // namespace rsq::rotation
