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
#include <utility>
#include <vector>

#include "rsq/core/checks.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/gptq/factorization.hpp"
#include "rsq/gptq/options.hpp"
#include "rsq/gptq/result.hpp"
#include "rsq/quant/grid.hpp"

namespace rsq::gptq::detail {

/// The checks of validate_weight() that do not read the weight's values (for weights in device memory, whose
/// finiteness a backend checks where they live).
template <class T>
void validate_weight_shape(matrix_view<const T> w, quant::grid_spec const& grid, options const& opt) {
  grid.validate();
  opt.validate();
  RSQ_EXPECTS(w.rows() > 0 && w.cols() > 0, "gptq::solve: weight is empty ", rsq::detail::shape_string(w));
  RSQ_EXPECTS(w.cols() < (index_t(1) << 31) && w.rows() < (index_t(1) << 31), "gptq::solve: weight too large");
  quant::check_group_layout(grid, w.cols(), opt.group_size, opt.act_order, opt.static_groups, "gptq::solve");
  RSQ_EXPECTS(std::fegetround() == FE_TONEAREST,
              "gptq::solve: the floating-point rounding mode must be FE_TONEAREST (round half to even)");
}

/// Throws rsq::invalid_argument for a weight solve() cannot work with (empty, non-finite, too large), a bad grid or
/// options, or a non-default rounding mode.
template <class T>
void validate_weight(matrix_view<const T> w, quant::grid_spec const& grid, options const& opt) {
  validate_weight_shape(w, grid, opt);
  rsq::detail::check_finite(w, "gptq::solve: weight");
}

/// The checks of validate_hessian() that do not read H's values (for a Hessian in device memory).
template <class T>
void validate_hessian_shape(matrix_view<const T> h) {
  RSQ_EXPECTS(h.rows() > 0 && h.rows() == h.cols(), "gptq: Hessian must be square and non-empty, got ",
              rsq::detail::shape_string(h));
  RSQ_EXPECTS(h.cols() < (index_t(1) << 31), "gptq: Hessian too large");
}

/// Throws rsq::invalid_argument for a Hessian that is empty, not square, not finite or not symmetric. Only the lower
/// triangle is factored, so an asymmetric H means the caller passed something else than a Hessian.
template <class T>
void validate_hessian(matrix_view<const T> h) {
  validate_hessian_shape(h);
  rsq::detail::check_finite(h, "gptq::solve: Hessian");
  double max_diag = 0, max_asym = 0;
  index_t ai = 0, aj = 0;
  index_t const n = h.cols();
  for (index_t j = 0; j < n; ++j) max_diag = std::max(max_diag, std::abs(double(h(j, j))));
  // H(i, j) against H(j, i) tile by tile, so that both tiles stay in cache whatever H's storage order.
  constexpr index_t tile = 64;
  for (index_t j0 = 0; j0 < n; j0 += tile)
    for (index_t i0 = j0; i0 < n; i0 += tile)
      for (index_t i = i0; i < std::min(n, i0 + tile); ++i)
        for (index_t j = j0; j < std::min({n, j0 + tile, i}); ++j) {
          double const a = std::abs(double(h(i, j)) - double(h(j, i)));
          if (a > max_asym) {
            max_asym = a;
            ai = i;
            aj = j;
          }
        }
  RSQ_EXPECTS(max_asym <= 1e-3 * max_diag, "gptq::solve: Hessian is not symmetric: H(", ai, ", ", aj, ") = ",
              h(ai, aj), " but H(", aj, ", ", ai, ") = ", h(aj, ai));
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

/// The backend-independent steps of factor(): dead columns, the solve order and the base damping. The diagonal
/// returned has dead entries replaced by 1.
template <class T>
struct factor_plan {
  factorization_info info;
  std::vector<T> diag;
  T damp = T(0);
};

template <class T>
[[nodiscard]] factor_plan<T> plan_factorization(matrix_view<const T> h, options const& opt) {
  factor_plan<T> p;
  auto d = diagonal_with_dead_columns(h);
  p.info.cols = h.cols();
  p.info.act_order = opt.act_order;
  p.info.perm = column_order(d.diag, opt.act_order);
  p.info.dead = std::move(d.dead);
  p.diag = std::move(d.diag);
  p.damp = base_damping(p.diag, opt.damp_percent);
  return p;
}

/// The escalation ladder (options::max_damp_attempts): attempt k calls @p try_factor(k·damp), which factors a fresh
/// copy of the permuted H with that damping and returns −1 or the failing pivot (in solve order). Records the outcome
/// in @p p.info.
template <class T, class TryFactor>
void escalate(factor_plan<T>& p, options const& opt, TryFactor&& try_factor) {
  // Outcomes known before any factorization, neither attempted (the damping reported stays 0): no live column (the
  // layer saw only zero inputs; quantizing it would give a zero layer), and a mean diagonal ≤ 0, whose damping
  // k·damp_percent·mean(diag H) would be negative and only make H less definite.
  p.info.damp_attempts = 0;
  p.info.damp_used = 0;
  p.info.damp_percent_used = 0;
  if (std::all_of(p.info.dead.begin(), p.info.dead.end(), [](bool d) { return d; })) {
    p.info.info = status::no_live_columns;
    p.info.failed_column = -1;
    return;
  }
  if (!(p.damp > T(0)) && opt.damp_percent > 0) {
    p.info.info = status::not_positive_definite;
    auto const first = std::find_if(p.diag.begin(), p.diag.end(), [](T v) { return !(v > T(0)); });
    p.info.failed_column = first == p.diag.end() ? -1 : index_t(first - p.diag.begin());
    return;
  }
  for (int k = 1; k <= opt.max_damp_attempts; ++k) {
    T const damp = T(k) * p.damp;
    index_t const pivot = try_factor(damp);
    p.info.damp_attempts = k;
    p.info.damp_used = double(damp);
    p.info.damp_percent_used = double(k) * opt.damp_percent;
    if (pivot < 0) {
      p.info.info = status::ok;
      p.info.failed_column = -1;
      return;
    }
    p.info.failed_column = p.info.perm[std::size_t(pivot)];
  }
  p.info.info = status::not_positive_definite;
}

/// The result a solve starts from: the factorization's outcome (every outcome, failure included) and permutation in
/// @p recycled, whose arrays the solve then overwrites, or, when the factorization failed, in a result without arrays.
template <class T, class B>
[[nodiscard]] result<T, B> start_result(factorization_info const& f, result<T, B>&& recycled) {
  result<T, B> r = f.ok() ? std::move(recycled) : result<T, B>{};
  r.info = f.info;
  r.damp_used = f.damp_used;
  r.damp_percent_used = f.damp_percent_used;
  r.damp_attempts = f.damp_attempts;
  r.failed_column = f.failed_column;
  rsq::reshape_for_overwrite(r.perm, f.cols);
  std::copy(f.perm.begin(), f.perm.end(), r.perm.begin());
  return r;
}

}  // namespace rsq::gptq::detail
