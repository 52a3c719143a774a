// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The backend-independent front end of the GPTQ solver: gptq::factor() and gptq::solve(). Each backend supplies a
/// specialization of detail::solver<B> (CPU: <rsq/backend/cpu/gptq_solver.hpp>, pulled in by <rsq/gptq/solve.hpp>;
/// CUDA: <rsq/cuda.hpp>). Eigen-free, so CUDA translation units can include it.

#include <utility>

#include "rsq/backend/tags.hpp"
#include "rsq/core/view.hpp"
#include "rsq/gptq/factorization.hpp"
#include "rsq/gptq/options.hpp"
#include "rsq/gptq/preprocess.hpp"
#include "rsq/gptq/result.hpp"
#include "rsq/quant/grid.hpp"

namespace rsq::gptq {

namespace detail {

/// The GPTQ implementation of backend B, with two static members:
///   factorization<T, B> factor(B const&, matrix_view<const T> h, options const&);
///   result<T> solve(B const&, matrix_view<const T> w, factorization<T, B> const&, quant::grid_spec const&,
///                   options const&, result<T>&& recycled);
/// Arguments arrive validated, except the weight's values for a solver that declares
/// `static constexpr bool checks_weight_values = true`: it throws rsq::invalid_argument for a NaN or Inf in W itself,
/// as validate_weight() would, where it reads W anyway. `recycled` is a result whose arrays may be reused (empty when
/// there is none). The primary template is a readable dead end.
template <class B>
struct solver {
  static_assert(sizeof(B) == 0,
                "rsq: no GPTQ solver for this backend; include <rsq/gptq/solve.hpp> (CPU) or <rsq/cuda.hpp> (CUDA)");
};

/// Whether solver<B> checks the weight's values itself (see solver).
template <class B>
inline constexpr bool solver_checks_weight_values = requires { requires solver<B>::checks_weight_values; };

/// Throws unless @p f can be used to solve a weight with @p cols columns under @p opt.
inline void check_factorization(factorization_info const& f, index_t cols, options const& opt) {
  RSQ_EXPECTS(f.cols == cols, "gptq::solve: the factorization is for ", f.cols, " columns, the weight has ", cols);
  RSQ_EXPECTS(f.act_order == opt.act_order, "gptq::solve: the factorization was made with act_order = ",
              f.act_order, " but the options say ", opt.act_order);
}

}  // namespace detail

/// Factors the Hessian @p h (cols, cols) once for every weight that shares it (spec §6 steps 2, 4–6): dead columns,
/// act-order permutation, damping with the escalation ladder of options::max_damp_attempts, and U, the upper Cholesky
/// factor of the damped inverse (one Cholesky of the reversed H and one triangular inverse).
/// A Hessian that stays not positive definite gives a factorization whose `info` is status::not_positive_definite;
/// solving with it returns that status.
/// @throws rsq::invalid_argument for an H that is empty, not square, not finite or not symmetric, or bad options
template <backend_tag B, class T>
[[nodiscard]] factorization<T, B> factor(B const& backend, matrix_view<const T> h, options const& opt = {}) {
  opt.validate();
  detail::validate_hessian(h);
  return detail::solver<B>::template factor<T>(backend, h, opt);
}

/// factor() for any viewable H (Eigen, xtensor, views).
template <backend_tag B, viewable<2> HA>
[[nodiscard]] auto factor(B const& backend, HA const& h, options const& opt = {}) {
  auto const hv = make_const_view<2>(h);
  using T = typename decltype(hv)::value_type;
  return factor<B, T>(backend, hv, opt);
}

/// Quantizes @p w (rows, cols) = (out_features, in_features) with the GPTQ column solver, given the factored Hessian
/// @p f of the layer's inputs, on backend @p backend (spec §6 steps 1, 3, 7–9).
/// @throws rsq::invalid_argument for an empty or non-finite W, a factorization of another width or act-order, a bad
///         grid or options
template <backend_tag B, class T>
[[nodiscard]] result<T> solve(B const& backend, matrix_view<const T> w, factorization<T, B> const& f,
                              quant::grid_spec const& grid, options const& opt = {}) {
  return solve<B, T>(backend, w, f, grid, opt, result<T>{});
}

/// solve() with a factorization, writing into the arrays of a result the caller no longer needs:
/// `r = gptq::solve(backend, w, f, grid, opt, std::move(r));` solving layer after layer. The returned result is
/// the same as solve(backend, w, f, grid, opt)'s; only the memory differs: arrays whose sizes match are reused
/// instead of allocated, which saves the first touch of fresh pages (on the development machines ≈ 10 µs per
/// 4 KiB: 0.01–0.02 s for a 4096 × 1024 float weight, whose solve takes 0.02 s; docs/gptq.md).
/// @throws as solve(); @p recycled is consumed either way
template <backend_tag B, class T>
[[nodiscard]] result<T> solve(B const& backend, matrix_view<const T> w, factorization<T, B> const& f,
                              quant::grid_spec const& grid, options const& opt, result<T>&& recycled) {
  if constexpr (detail::solver_checks_weight_values<B>)
    detail::validate_weight_shape(w, grid, opt);
  else
    detail::validate_weight(w, grid, opt);
  detail::check_factorization(f, w.cols(), opt);
  return detail::solver<B>::template solve<T>(backend, w, f, grid, opt, std::move(recycled));
}

/// Quantizes @p w (rows, cols) = (out_features, in_features) with the GPTQ column solver, given the Hessian
/// @p h (cols, cols) of the layer's inputs: `solve(backend, w, factor(backend, h, opt), grid, opt)`.
///
/// Behaves like the reference `fasterquant()` (spec §6), with one difference: a Hessian that is not positive definite
/// is retried from the original H with damping k·damp (k ≤ opt.max_damp_attempts) and then reported as
/// `status::not_positive_definite`, never used un-inverted.
///
/// @param backend `rsq::backend::cpu_eigen{}` or `rsq::backend::cuda{stream}` (with <rsq/cuda.hpp>)
/// @param w    weight, any layout (Eigen matrix, xtensor array or pointer view), not modified
/// @param h    symmetric Hessian, e.g. from rsq::hessian_accumulator; H_ii = 0 marks a dead column
/// @param grid quantization grid (bits, symmetry, convention, clip search)
/// @param opt  block size, damping, groups, act-order, escalation
/// @returns codes, scales, zeros, g_idx, dequantized weight, permutation, losses and status
/// @throws rsq::invalid_argument for empty, mismatched or non-finite inputs, an asymmetric H, bad grid or options
///
/// Example: `auto r = rsq::gptq::solve(rsq::backend::cpu_eigen{}, W, H, {.bits = 4}, {.group_size = 128});`
template <backend_tag B, class T>
[[nodiscard]] result<T> solve(B const& backend, matrix_view<const T> w, matrix_view<const T> h,
                              quant::grid_spec const& grid, options const& opt = {}) {
  detail::validate_weight(w, grid, opt);
  RSQ_EXPECTS(h.rows() == w.cols() && h.cols() == w.cols(), "gptq::solve: Hessian must be (cols x cols) = (",
              w.cols(), " x ", w.cols(), ") for a weight ", rsq::detail::shape_string(w), ", got ",
              rsq::detail::shape_string(h));
  return solve<B, T>(backend, w, factor<B, T>(backend, h, opt), grid, opt);
}

/// solve() for any viewable arguments (Eigen, xtensor, views); the scalar type is the weight's.
template <backend_tag B, viewable<2> WA, viewable<2> HA>
[[nodiscard]] auto solve(B const& backend, WA const& w, HA const& h, quant::grid_spec const& grid,
                         options const& opt = {}) {
  auto const wv = make_const_view<2>(w);
  using T = typename decltype(wv)::value_type;
  return solve<B, T>(backend, wv, matrix_view<const T>(make_const_view<2>(h)), grid, opt);
}

/// solve() with a factorization for any viewable weight.
template <backend_tag B, viewable<2> WA, class T>
[[nodiscard]] result<T> solve(B const& backend, WA const& w, factorization<T, B> const& f,
                              quant::grid_spec const& grid, options const& opt = {}) {
  return solve<B, T>(backend, matrix_view<const T>(make_const_view<2>(w)), f, grid, opt, result<T>{});
}

/// solve() with a factorization and a recycled result for any viewable weight.
template <backend_tag B, viewable<2> WA, class T>
[[nodiscard]] result<T> solve(B const& backend, WA const& w, factorization<T, B> const& f,
                              quant::grid_spec const& grid, options const& opt, result<T>&& recycled) {
  return solve<B, T>(backend, matrix_view<const T>(make_const_view<2>(w)), f, grid, opt, std::move(recycled));
}

/// solve() on rsq::backend::default_backend (cpu_eigen unless RSQ_DEFAULT_BACKEND_CUDA is defined).
template <viewable<2> WA, viewable<2> HA>
[[nodiscard]] auto solve(WA const& w, HA const& h, quant::grid_spec const& grid, options const& opt = {}) {
  return solve(backend::default_backend{}, w, h, grid, opt);
}

}  // namespace rsq::gptq
