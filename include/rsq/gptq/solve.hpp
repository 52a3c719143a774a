// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// gptq::solve(): quantize a weight column by column with the GPTQ solver (spec §6), given its Hessian.

#include "rsq/backend/cpu/gptq_solver.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/view.hpp"
#include "rsq/gptq/options.hpp"
#include "rsq/gptq/preprocess.hpp"
#include "rsq/gptq/result.hpp"
#include "rsq/quant/grid.hpp"

namespace rsq::gptq {

/// Quantizes @p w (rows, cols) = (out_features, in_features) with the GPTQ column solver, given the Hessian
/// @p h (cols, cols) of the layer's inputs, on the CPU backend.
///
/// Behaves like the reference `fasterquant()` (spec §6), with one difference: a Hessian that is not positive definite
/// is retried from the original H with damping k·damp (k ≤ opt.max_damp_attempts) and then reported as
/// `status::not_positive_definite`, never used un-inverted.
///
/// @param w    weight, any layout (Eigen matrix, xtensor array or pointer view), not modified
/// @param h    symmetric Hessian, e.g. from rsq::hessian_accumulator; H_ii = 0 marks a dead column
/// @param grid quantization grid (bits, symmetry, convention, clip search)
/// @param opt  block size, damping, groups, act-order, escalation
/// @returns codes, scales, zeros, g_idx, dequantized weight, permutation, losses and status
/// @throws rsq::invalid_argument for empty, mismatched or non-finite inputs, an asymmetric H, bad grid or options
///
/// Example: `auto r = rsq::gptq::solve(rsq::backend::cpu_eigen{}, W, H, {.bits = 4}, {.group_size = 128});`
template <class T>
[[nodiscard]] result<T> solve(backend::cpu_eigen const&, matrix_view<const T> w, matrix_view<const T> h,
                              quant::grid_spec const& grid, options const& opt = {}) {
  detail::validate_arguments(w, h, grid, opt);
  return cpu::detail::gptq_solve(w, h, grid, opt);
}

/// solve() for any viewable arguments (Eigen, xtensor, views); the scalar type is the weight's.
template <backend_tag B, viewable<2> WA, viewable<2> HA>
[[nodiscard]] auto solve(B const& backend, WA const& w, HA const& h, quant::grid_spec const& grid,
                         options const& opt = {}) {
  auto const wv = make_const_view<2>(w);
  using T = typename decltype(wv)::value_type;
  return solve<T>(backend, wv, matrix_view<const T>(make_const_view<2>(h)), grid, opt);
}

/// solve() on the default backend (rsq::backend::cpu_eigen unless configured otherwise).
template <viewable<2> WA, viewable<2> HA>
[[nodiscard]] auto solve(WA const& w, HA const& h, quant::grid_spec const& grid, options const& opt = {}) {
  return solve(backend::cpu_eigen{}, w, h, grid, opt);
}

}  // namespace rsq::gptq
