// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The GPTQ solver (spec §6): gptq::factor() once per distinct Hessian, gptq::solve() for every weight that shares it,
/// on any backend (the first argument: rsq::backend::cpu_eigen{}, rsq::backend::cuda{stream} with <rsq/cuda.hpp>).
/// Inputs may be in host memory or in the backend's own memory (device memory for CUDA: engines' tensors stay where
/// they are); gptq::solve returns a host result, gptq::solve_resident leaves it in the backend's memory.
///
/// An implementation of algorithm::gptq provides (shapes and options arrive checked; the implementation checks the
/// values, NaN/Inf and symmetry, where they live, with the messages of gptq/preprocess.hpp):
///   template <class T> static gptq::factorization<T, B> factor(B const&, matrix_view<const T> h, options const&);
///   template <class T> static gptq::result<T, B> solve(B const&, matrix_view<const T> w,
///                                                      gptq::factorization<T, B> const&, quant::grid_spec const&,
///                                                      options const&, gptq::result<T, B>&& recycled);
///   template <class T> static gptq::result<T> to_host(B const&, gptq::result<T, B> const&, gptq::result<T>&&);
/// `recycled` is a result whose arrays may be reused (empty when there is none).

#include <type_traits>
#include <utility>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/gptq_solver.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/view.hpp"
#include "rsq/gptq/factorization.hpp"
#include "rsq/gptq/options.hpp"
#include "rsq/gptq/preprocess.hpp"
#include "rsq/gptq/result.hpp"
#include "rsq/quant/grid.hpp"

namespace rsq::gptq {

namespace detail {

/// Throws unless @p f can be used to solve a weight with @p cols columns under @p opt.
inline void check_factorization(factorization_info const& f, index_t cols, options const& opt) {
  RSQ_EXPECTS(f.cols == cols, "gptq::solve: the factorization is for ", f.cols, " columns, the weight has ", cols);
  RSQ_EXPECTS(f.act_order == opt.act_order, "gptq::solve: the factorization was made with act_order = ",
              f.act_order, " but the options say ", opt.act_order);
}

template <class B>
using gptq_impl = backend::implementation_t<algorithm::gptq, B>;

}  // namespace detail

/// Factors the Hessian @p h (cols, cols) once for every weight that shares it (spec §6 steps 2, 4–6): dead columns,
/// act-order permutation, damping with the escalation ladder of options::max_damp_attempts, and U, the upper Cholesky
/// factor of the damped inverse (one Cholesky of the reversed H and one triangular inverse), kept in the backend's
/// memory. A Hessian that stays not positive definite gives a factorization whose `info` is
/// status::not_positive_definite; solving with it returns that status.
/// @param h in host memory or in the backend's memory, any strides
/// @throws rsq::invalid_argument for an H that is empty, not square, not finite or not symmetric, or bad options
template <backend_tag B, class T>
[[nodiscard]] factorization<T, B> factor(B const& backend, matrix_view<const T> h, options const& opt = {}) {
  opt.validate();
  detail::validate_hessian_shape(h);
  return detail::gptq_impl<B>::template factor<T>(backend, h, opt);
}

/// factor() for any viewable H (Eigen, xtensor, views).
template <backend_tag B, viewable<2> HA>
[[nodiscard]] auto factor(B const& backend, HA const& h, options const& opt = {}) {
  auto const hv = make_const_view<2>(h);
  using T = typename decltype(hv)::value_type;
  return factor<B, T>(backend, hv, opt);
}

/// Quantizes @p w (rows, cols) = (out_features, in_features) with the GPTQ column solver given the factored Hessian
/// @p f, leaving the result in the backend's memory (spec §6 steps 1, 3, 7–9): what an engine that goes on with the
/// weights on the GPU wants. On the CPU backend this is solve(). Arrays of @p recycled whose sizes match are reused.
/// @param w in host memory or in the backend's memory, any strides; not modified
/// @throws rsq::invalid_argument for an empty or non-finite W, a factorization of another width or act-order, a bad
///         grid or options
template <backend_tag B, class T>
[[nodiscard]] result<T, B> solve_resident(B const& backend, matrix_view<const T> w, factorization<T, B> const& f,
                                          quant::grid_spec const& grid, options const& opt = {},
                                          result<T, B>&& recycled = {}) {
  detail::validate_weight_shape(w, grid, opt);
  detail::check_factorization(f, w.cols(), opt);
  return detail::gptq_impl<B>::template solve<T>(backend, w, f, grid, opt, std::move(recycled));
}

/// A resident result in host memory (waits for the backend); the arrays of @p recycled are reused where their sizes
/// match. On the CPU backend the result is already in host memory and is moved.
template <backend_tag B, class T>
[[nodiscard]] result<T> to_host(B const& backend, result<T, B>&& r, result<T>&& recycled = {}) {
  if constexpr (std::is_same_v<result<T, B>, result<T>>) {
    (void)backend;
    (void)recycled;
    return std::move(r);
  } else {
    return detail::gptq_impl<B>::template to_host<T>(backend, r, std::move(recycled));
  }
}

/// solve_resident() followed by to_host(): the result in host memory, on every backend.
/// `r = gptq::solve(backend, w, f, grid, opt, std::move(r));` solving layer after layer reuses r's arrays (fresh
/// pages cost a first touch: ≈ 10 µs per 4 KiB on the development machines; docs/gptq.md).
template <backend_tag B, class T>
[[nodiscard]] result<T> solve(B const& backend, matrix_view<const T> w, factorization<T, B> const& f,
                              quant::grid_spec const& grid, options const& opt = {}, result<T>&& recycled = {}) {
  if constexpr (std::is_same_v<result<T, B>, result<T>>)
    return solve_resident<B, T>(backend, w, f, grid, opt, std::move(recycled));
  else
    return to_host(backend, solve_resident<B, T>(backend, w, f, grid, opt), std::move(recycled));
}

/// Quantizes @p w (rows, cols) = (out_features, in_features) with the GPTQ column solver, given the Hessian
/// @p h (cols, cols) of the layer's inputs: `solve(backend, w, factor(backend, h, opt), grid, opt)`.
///
/// Behaves like the reference `fasterquant()` (spec §6), with one difference: a Hessian that is not positive definite
/// is retried from the original H with damping k·damp (k ≤ opt.max_damp_attempts) and then reported as
/// `status::not_positive_definite`, never used un-inverted.
///
/// @param backend `rsq::backend::cpu_eigen{}` or `rsq::backend::cuda{stream}` (with <rsq/cuda.hpp>)
/// @param w    weight, any layout (Eigen matrix, xtensor array or pointer view; host or backend memory)
/// @param h    symmetric Hessian, e.g. from rsq::hessian_accumulator; H_ii = 0 marks a dead column
/// @param grid quantization grid (bits, symmetry, convention, clip search)
/// @param opt  block size, damping, groups, act-order, escalation
/// @returns codes, scales, zeros, g_idx, dequantized weight, permutation, losses and status, in host memory
/// @throws rsq::invalid_argument for empty, mismatched or non-finite inputs, an asymmetric H, bad grid or options
///
/// Example: `auto r = rsq::gptq::solve(rsq::backend::cpu_eigen{}, W, H, {.bits = 4}, {.group_size = 128});`
template <backend_tag B, class T>
[[nodiscard]] result<T> solve(B const& backend, matrix_view<const T> w, matrix_view<const T> h,
                              quant::grid_spec const& grid, options const& opt = {}) {
  detail::validate_weight_shape(w, grid, opt);
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

/// solve() with a factorization for any viewable weight (and optionally a recycled host result).
template <backend_tag B, viewable<2> WA, class T>
[[nodiscard]] result<T> solve(B const& backend, WA const& w, factorization<T, B> const& f,
                              quant::grid_spec const& grid, options const& opt = {}, result<T>&& recycled = {}) {
  return solve<B, T>(backend, matrix_view<const T>(make_const_view<2>(w)), f, grid, opt, std::move(recycled));
}

/// solve_resident() for any viewable weight.
template <backend_tag B, viewable<2> WA, class T>
[[nodiscard]] result<T, B> solve_resident(B const& backend, WA const& w, factorization<T, B> const& f,
                                          quant::grid_spec const& grid, options const& opt = {}) {
  return solve_resident<B, T>(backend, matrix_view<const T>(make_const_view<2>(w)), f, grid, opt);
}

/// solve() on rsq::backend::default_backend (cpu_eigen unless RSQ_DEFAULT_BACKEND_CUDA is defined).
template <viewable<2> WA, viewable<2> HA>
[[nodiscard]] auto solve(WA const& w, HA const& h, quant::grid_spec const& grid, options const& opt = {}) {
  return solve(backend::default_backend{}, w, h, grid, opt);
}

}  // namespace rsq::gptq
