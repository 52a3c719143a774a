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

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <type_traits>

#include <Eigen/Core>
#include <Eigen/QR>

#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/backend/memory.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/random.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/linalg/gemm.hpp"
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

  /// W <- W Q on backend @p be (W in host memory or the backend's memory).
  template <backend_tag B, std::floating_point T>
  void apply_right(B const& be, matrix_view<T> w) const {
    detail::check_side(w, size(), true, "random_orthogonal", "apply_right");
    product(be, w, w, linalg::op::none, q<B, T>(be), linalg::op::none);
  }
  /// W <- W Qᵀ.
  template <backend_tag B, std::floating_point T>
  void apply_right_transpose(B const& be, matrix_view<T> w) const {
    detail::check_side(w, size(), true, "random_orthogonal", "apply_right_transpose");
    product(be, w, w, linalg::op::none, q<B, T>(be), linalg::op::transpose);
  }
  /// W <- Qᵀ W.
  template <backend_tag B, std::floating_point T>
  void apply_left_transpose(B const& be, matrix_view<T> w) const {
    detail::check_side(w, size(), false, "random_orthogonal", "apply_left_transpose");
    product(be, w, q<B, T>(be), linalg::op::transpose, w, linalg::op::none);
  }
  /// W <- Q W.
  template <backend_tag B, std::floating_point T>
  void apply_left(B const& be, matrix_view<T> w) const {
    detail::check_side(w, size(), false, "random_orthogonal", "apply_left");
    product(be, w, q<B, T>(be), linalg::op::none, w, linalg::op::none);
  }
  /// The same four on the CPU backend.
  template <std::floating_point T>
  void apply_right(matrix_view<T> w) const {
    apply_right(backend::cpu_eigen{}, w);
  }
  template <std::floating_point T>
  void apply_right_transpose(matrix_view<T> w) const {
    apply_right_transpose(backend::cpu_eigen{}, w);
  }
  template <std::floating_point T>
  void apply_left_transpose(matrix_view<T> w) const {
    apply_left_transpose(backend::cpu_eigen{}, w);
  }
  template <std::floating_point T>
  void apply_left(matrix_view<T> w) const {
    apply_left(backend::cpu_eigen{}, w);
  }

  /// Q (n, n) in float64 (a copy).
  [[nodiscard]] rsq::matrix<double> dense() const { return q_; }
  /// Q (n, n) in float64, without a copy.
  [[nodiscard]] rsq::matrix<double> const& matrix() const noexcept { return q_; }
  /// kind random_orthogonal, n, seed.
  [[nodiscard]] rotation_descriptor const& descriptor() const noexcept { return d_; }

 private:
  // Q as T in the backend's memory.
  template <class B, class T>
  [[nodiscard]] backend::matrix<T, B> q(B const& be) const {
    auto qt = rsq::make_matrix_for_overwrite<T>(size(), size());  // (n, n)
    std::transform(q_.begin(), q_.end(), qt.begin(), [](double v) { return T(v); });
    return backend::to_backend(be, matrix_view<const T>(rsq::view(qt)));
  }

  // W ← op(A)·op(C) with W one of the factors: the product goes to a copy first. A host W on a device backend is
  // copied over and back.
  template <class B, class T, class A, class C>
  static void product(B const& be, matrix_view<T> w, A const& a, linalg::op op_a, C const& c, linalg::op op_c) {
    auto const wb = backend::to_backend(be, matrix_view<const T>(w));  // (rows, cols) contiguous copy
    auto const view_of = [&](auto const& m) -> matrix_view<const T> {
      if constexpr (std::is_same_v<std::remove_cvref_t<decltype(m)>, matrix_view<T>>) return rsq::view(wb);
      else return rsq::view(m);
    };
    auto out = backend::make_matrix<T>(be, w.rows(), w.cols());
    linalg::gemm(be, view_of(a), op_a, view_of(c), op_c, rsq::view(out));
    if (backend::resident(be, w.data()) && w.is_contiguous()) {
      backend::copy(be, w.data(), rsq::view(out).data(), w.size());
    } else {
      auto const host = backend::to_host(be, matrix_view<const T>(rsq::view(out)));
      for (index_t i = 0; i < w.rows(); ++i)
        for (index_t j = 0; j < w.cols(); ++j) w(i, j) = host(i, j);
    }
  }

  rsq::matrix<double> q_;  // (n, n)
  rotation_descriptor d_;
};

}  // namespace rsq::rotation
