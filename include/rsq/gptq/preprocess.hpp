// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The backend-independent steps of the GPTQ solver (spec §6): argument checks, dead columns, the act-order
/// permutation, g_idx, and the damping of each escalation attempt. Plain loops over views, no Eigen, so that the CUDA
/// backend shares them.

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "rsq/core/checks.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/gptq/options.hpp"
#include "rsq/quant/grid.hpp"

namespace rsq::gptq::detail {

/// Throws rsq::invalid_argument for anything solve() cannot work with: empty or non-finite W, an H that is not
/// (cols, cols), non-finite or not symmetric, bad grid or options, a non-default rounding mode.
template <class T>
void validate_arguments(matrix_view<const T> w, matrix_view<const T> h, quant::grid_spec const& grid,
                        options const& opt) {
  grid.validate();
  opt.validate();
  RSQ_EXPECTS(w.rows() > 0 && w.cols() > 0, "gptq::solve: weight is empty ", rsq::detail::shape_string(w));
  RSQ_EXPECTS(h.rows() == w.cols() && h.cols() == w.cols(), "gptq::solve: Hessian must be (cols x cols) = (",
              w.cols(), " x ", w.cols(), ") for a weight ", rsq::detail::shape_string(w), ", got ",
              rsq::detail::shape_string(h));
  RSQ_EXPECTS(w.cols() < (index_t(1) << 31) && w.rows() < (index_t(1) << 31), "gptq::solve: weight too large");
  RSQ_EXPECTS(std::fegetround() == FE_TONEAREST,
              "gptq::solve: the floating-point rounding mode must be FE_TONEAREST (round half to even)");
  rsq::detail::check_finite(w, "gptq::solve: weight");
  rsq::detail::check_finite(h, "gptq::solve: Hessian");
  // Only the lower triangle is factored; an asymmetric H means the caller passed something else than a Hessian.
  double max_diag = 0, max_asym = 0;
  index_t ai = 0, aj = 0;
  for (index_t j = 0; j < h.cols(); ++j) {
    max_diag = std::max(max_diag, std::abs(double(h(j, j))));
    for (index_t i = j + 1; i < h.rows(); ++i) {
      double const a = std::abs(double(h(i, j)) - double(h(j, i)));
      if (a > max_asym) {
        max_asym = a;
        ai = i;
        aj = j;
      }
    }
  }
  RSQ_EXPECTS(max_asym <= 1e-3 * max_diag, "gptq::solve: Hessian is not symmetric: H(", ai, ", ", aj, ") = ", h(ai, aj),
              " but H(", aj, ", ", ai, ") = ", h(aj, ai));
}

/// diag(H) with dead entries (H_ii == 0) replaced by 1, and the dead flags (spec §6 step 2).
template <class T>
struct diagonal_info {
  std::vector<T> diag;
  std::vector<char> dead;
};

template <class T>
[[nodiscard]] diagonal_info<T> diagonal_with_dead_columns(matrix_view<const T> h) {
  diagonal_info<T> d;
  index_t const n = h.rows();
  d.diag.resize(std::size_t(n));
  d.dead.resize(std::size_t(n));
  for (index_t i = 0; i < n; ++i) {
    d.dead[i] = h(i, i) == T(0);
    d.diag[i] = d.dead[i] ? T(1) : h(i, i);
  }
  return d;
}

/// perm(j) = original column quantized j-th: by decreasing diag(H) with act-order (stable for ties), else identity.
template <class T>
[[nodiscard]] std::vector<std::int32_t> column_order(std::vector<T> const& diag, bool act_order) {
  std::vector<std::int32_t> perm(diag.size());
  std::iota(perm.begin(), perm.end(), 0);
  if (act_order)
    std::stable_sort(perm.begin(), perm.end(), [&](std::int32_t a, std::int32_t b) { return diag[a] > diag[b]; });
  return perm;
}

/// Number of groups of a weight with @p cols columns.
[[nodiscard]] inline index_t group_count(index_t cols, index_t group_size) {
  return group_size > 0 ? (cols + group_size - 1) / group_size : 1;
}

/// g_idx in the AutoGPTQ convention (spec §6 step 9): ⌊c/G⌋ without act-order or with static groups, and
/// g_idx[perm[j]] = ⌊j/G⌋ with act-order and dynamic groups; all zeros when quantizing whole rows.
[[nodiscard]] inline rsq::vector<std::int32_t> group_index(std::vector<std::int32_t> const& perm,
                                                           options const& opt) {
  auto const cols = perm.size();
  auto g = rsq::make_vector<std::int32_t>(index_t(cols));
  for (std::size_t j = 0; j < cols; ++j) {
    if (opt.group_size <= 0) g(perm[j]) = 0;
    else if (opt.act_order && !opt.static_groups) g(perm[j]) = std::int32_t(index_t(j) / opt.group_size);
    else g(j) = std::int32_t(index_t(j) / opt.group_size);
  }
  return g;
}

/// damp = damp_percent · mean(diag H) (after the dead-column fix), as the reference computes it in precision T.
template <class T>
[[nodiscard]] T base_damping(std::vector<T> const& diag, double damp_percent) {
  double s = 0;
  for (auto v : diag) s += double(v);
  return T(damp_percent) * T(s / double(diag.size()));
}

}  // namespace rsq::gptq::detail
