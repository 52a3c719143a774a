// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// SGD on the Stiefel manifold with the Cayley transform (Li, Fuxin and Todorovic, "Efficient Riemannian
/// optimization on the Stiefel manifold via the Cayley transform", ICLR 2020): the optimizer SpinQuant learns its
/// rotations with (`SGDG(stiefel=True)`), for square orthogonal parameters X (n, n).
///
/// One step with gradient G and learning rate η, momentum β, momentum buffer V (zero at first):
///   V ← β·V − Gᵀ                              (n, n), in the transposed (Xᵀ) frame of the reference
///   Ŵ = V·X − ½·Xᵀ·X·V·X,  W = Ŵ − Ŵᵀ        the skew generator (= ½(V X − Xᵀ Vᵀ) for orthogonal X)
///   α = min(η, 1 / (‖W‖₁ + ε))               the step never exceeds the generator's scale (‖·‖₁: max column sum)
///   Xᵀ ← (I − α/2·W)⁻¹ (I + α/2·W) Xᵀ          the Cayley retraction
///   V ← W·Xᵀ (old X)                          the momentum lives in the tangent space
/// For orthogonal X the first-order change is dX = (α/2)(−G + X Gᵀ X), a descent direction: ⟨G, dX⟩ ≤ 0.
///
/// The reference approximates the Cayley transform by five fixed-point iterations and re-orthonormalises X by QR
/// before every step; here it is solved exactly (LU with partial pivoting, in float64), so that X stays orthogonal
/// to rounding (‖XᵀX − I‖ ~ 1e-14 after hundreds of steps) without the QR. Every product is linalg::gemm on the CPU
/// backend and the solve is a fixed sequence of loops: the same bits for any thread count.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numbers>
#include <vector>

#include "rsq/backend/tags.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/linalg/gemm.hpp"

namespace rsq::rotation {

/// Options of cayley_sgd.
struct cayley_sgd_options {
  double momentum = 0.0;   ///< β; SpinQuant's SGDG is created without momentum (0)
  double epsilon = 1e-8;   ///< ε of the step cap α = min(η, 1/(‖W‖₁ + ε))

  void validate() const {
    RSQ_EXPECTS(std::isfinite(momentum) && momentum >= 0 && momentum < 1, "cayley_sgd: momentum must be in [0, 1), got ",
                momentum);
    RSQ_EXPECTS(std::isfinite(epsilon) && epsilon > 0, "cayley_sgd: epsilon must be positive, got ", epsilon);
  }
};

/// What a step did.
enum class cayley_status {
  ok,
  not_finite,  ///< the gradient (or the generator) holds NaN or Inf: the parameter and the momentum are unchanged
};

/// The cosine learning-rate decay of SpinQuant's schedule (Hugging Face's "cosine", no warm-up): η_t = η·½(1 +
/// cos(π t / steps)) for step t = 0 .. steps − 1.
[[nodiscard]] inline double cosine_learning_rate(double base, std::ptrdiff_t step, std::ptrdiff_t steps) {
  RSQ_EXPECTS(steps > 0 && step >= 0 && step < steps, "cosine_learning_rate: step ", step, " outside [0, ", steps, ")");
  return base * 0.5 * (1.0 + std::cos(std::numbers::pi * double(step) / double(steps)));
}

namespace cayley_detail {

[[nodiscard]] inline rsq::matrix<double> mul(rsq::matrix<double> const& a, linalg::op oa, rsq::matrix<double> const& b,
                                             linalg::op ob) {
  return linalg::product(backend::cpu_eigen{}, matrix_view<const double>(rsq::view(a)), oa,
                         matrix_view<const double>(rsq::view(b)), ob);
}

/// Solves A·Y = B in place (B becomes Y) for square A (overwritten by its LU factors), by Gaussian elimination with
/// partial pivoting in a fixed order. A = I − (α/2)W with W skew is never singular: its eigenvalues are 1 − iαλ/2.
inline void solve_in_place(rsq::matrix<double>& a, rsq::matrix<double>& b) {
  std::size_t const n = a.shape()[0], m = b.shape()[1];
  for (std::size_t k = 0; k < n; ++k) {
    std::size_t piv = k;
    for (std::size_t i = k + 1; i < n; ++i)
      if (std::abs(a(i, k)) > std::abs(a(piv, k))) piv = i;
    if (piv != k) {
      for (std::size_t j = 0; j < n; ++j) std::swap(a(k, j), a(piv, j));
      for (std::size_t j = 0; j < m; ++j) std::swap(b(k, j), b(piv, j));
    }
    double const inv = 1.0 / a(k, k);
    for (std::size_t i = k + 1; i < n; ++i) {
      double const f = a(i, k) * inv;
      if (f == 0) continue;
      a(i, k) = f;
      for (std::size_t j = k + 1; j < n; ++j) a(i, j) -= f * a(k, j);
      for (std::size_t j = 0; j < m; ++j) b(i, j) -= f * b(k, j);
    }
  }
  for (std::size_t kk = n; kk-- > 0;) {
    for (std::size_t i = kk + 1; i < n; ++i) {
      double const f = a(kk, i);
      if (f == 0) continue;
      for (std::size_t j = 0; j < m; ++j) b(kk, j) -= f * b(i, j);
    }
    double const inv = 1.0 / a(kk, kk);
    for (std::size_t j = 0; j < m; ++j) b(kk, j) *= inv;
  }
}

}  // namespace cayley_detail

/// Cayley SGD with momentum over a fixed list of square orthogonal parameters (see the file comment); the momentum
/// buffers are kept per parameter index.
class cayley_sgd {
 public:
  explicit cayley_sgd(cayley_sgd_options const& opt = {}) : opt_(opt) { opt_.validate(); }

  /// One step on parameter @p index: @p x (n, n) orthogonal, @p grad (n, n) the Euclidean gradient ∂loss/∂x,
  /// @p lr the learning rate η of this step.
  /// @returns not_finite (and changes nothing) when the gradient holds NaN or Inf
  /// @throws rsq::invalid_argument for shapes that differ or a non-positive learning rate
  cayley_status step(std::size_t index, rsq::matrix<double>& x, rsq::matrix<double> const& grad, double lr) {
    using cayley_detail::mul;
    using linalg::op;
    RSQ_EXPECTS(x.dimension() == 2 && x.shape()[0] == x.shape()[1] && x.shape()[0] > 0,
                "cayley_sgd: the parameter must be square, got ", rsq::detail::shape_string(rsq::view(x)));
    RSQ_EXPECTS(grad.shape() == x.shape(), "cayley_sgd: gradient ", rsq::detail::shape_string(rsq::view(grad)),
                " for a parameter ", rsq::detail::shape_string(rsq::view(x)));
    RSQ_EXPECTS(std::isfinite(lr) && lr > 0, "cayley_sgd: the learning rate must be positive, got ", lr);
    for (double v : grad)
      if (!std::isfinite(v)) return cayley_status::not_finite;
    std::size_t const n = x.shape()[0];
    if (buffers_.size() <= index) buffers_.resize(index + 1);
    auto& buf = buffers_[index];
    if (buf.size() != x.size()) buf = rsq::make_matrix<double>(index_t(n), index_t(n));
    // V ← βV − Gᵀ (a new buffer: the old one is kept until the step is known to be finite).
    auto v = rsq::make_matrix_for_overwrite<double>(index_t(n), index_t(n));
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < n; ++j) v(i, j) = opt_.momentum * buf(i, j) - grad(j, i);
    auto const mx = mul(v, op::none, x, op::none);                                    // V X
    auto const xxmx = mul(x, op::transpose, mul(x, op::none, mx, op::none), op::none);  // Xᵀ X V X
    auto w = rsq::make_matrix_for_overwrite<double>(index_t(n), index_t(n));
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < n; ++j)
        w(i, j) = (mx(i, j) - 0.5 * xxmx(i, j)) - (mx(j, i) - 0.5 * xxmx(j, i));
    double norm1 = 0;  // max column sum of |W|
    for (std::size_t j = 0; j < n; ++j) {
      double s = 0;
      for (std::size_t i = 0; i < n; ++i) s += std::abs(w(i, j));
      norm1 = std::max(norm1, s);
    }
    if (!std::isfinite(norm1)) return cayley_status::not_finite;
    double const alpha = std::min(lr, 1.0 / (norm1 + opt_.epsilon));
    last_alpha_ = alpha;
    // Xᵀ ← (I − α/2 W)⁻¹ (I + α/2 W) Xᵀ.
    auto a = rsq::make_matrix_for_overwrite<double>(index_t(n), index_t(n));
    auto plus = rsq::make_matrix_for_overwrite<double>(index_t(n), index_t(n));
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < n; ++j) {
        double const d = i == j ? 1.0 : 0.0;
        a(i, j) = d - 0.5 * alpha * w(i, j);
        plus(i, j) = d + 0.5 * alpha * w(i, j);
      }
    auto y = mul(plus, op::none, x, op::transpose);  // (I + α/2 W) Xᵀ
    cayley_detail::solve_in_place(a, y);
    buf = mul(w, op::none, x, op::transpose);  // the new momentum: W Xᵀ at the old X
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < n; ++j) x(i, j) = y(j, i);
    return cayley_status::ok;
  }

  /// The step size α the last step took (after the cap).
  [[nodiscard]] double last_step_size() const noexcept { return last_alpha_; }
  [[nodiscard]] cayley_sgd_options const& options() const noexcept { return opt_; }

 private:
  cayley_sgd_options opt_;
  std::vector<rsq::matrix<double>> buffers_;
  double last_alpha_ = 0;
};

}  // namespace rsq::rotation
