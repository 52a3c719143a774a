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
/// to rounding (‖XᵀX − I‖ ~ 1e-14 after hundreds of steps) without the QR. The products (linalg::gemm) and the solve
/// (linalg::lu_solve) run on the backend the caller names, the CPU by default; the element-wise steps on the host.
/// The same bits for any thread count, and from run to run on the GPU.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numbers>
#include <vector>

#include "rsq/backend/memory.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/linalg/gemm.hpp"
#include "rsq/linalg/lu_solve.hpp"

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

/// A host matrix in backend @p be's memory (moved there: the CPU backend's memory is the host's).
template <backend_tag B>
[[nodiscard]] backend::matrix<double, B> to(B const& be, rsq::matrix<double> const& m) {
  return backend::to_backend(be, matrix_view<const double>(rsq::view(m)));
}

/// op(A)·op(B) of backend matrices, in host memory.
template <backend_tag B, class M>
[[nodiscard]] rsq::matrix<double> mul(B const& be, M const& a, linalg::op oa, M const& b, linalg::op ob) {
  auto const c = linalg::product(be, matrix_view<const double>(rsq::view(a)), oa, matrix_view<const double>(rsq::view(b)), ob);
  return backend::to_host(be, matrix_view<const double>(rsq::view(c)));
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
    return step(backend::cpu_eigen{}, index, x, grad, lr);
  }

  /// step() with the products and the solve on backend @p be (the parameters stay in host memory; for n in the
  /// thousands the n³ work belongs on the GPU, the element-wise steps are O(n²) on the host).
  template <backend_tag B>
  cayley_status step(B const& be, std::size_t index, rsq::matrix<double>& x, rsq::matrix<double> const& grad,
                     double lr) {
    using cayley_detail::mul;
    using cayley_detail::to;
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
    auto const xd = to(be, x);
    auto const mx = mul(be, to(be, v), op::none, xd, op::none);                                   // V X
    auto const xxmx = mul(be, xd, op::transpose, to(be, mul(be, xd, op::none, to(be, mx), op::none)), op::none);
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
    auto const plus_d = to(be, plus);
    auto yd = linalg::product(be, matrix_view<const double>(rsq::view(plus_d)), op::none,
                              matrix_view<const double>(rsq::view(xd)), op::transpose);  // (I + α/2 W) Xᵀ
    auto ad = to(be, a);
    linalg::lu_solve(be, rsq::view(ad), rsq::view(yd));
    auto const y = backend::to_host(be, matrix_view<const double>(rsq::view(yd)));
    buf = mul(be, to(be, w), op::none, xd, op::transpose);  // the new momentum: W Xᵀ at the old X
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
