// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CPU backend of the activation scores (algorithm::activation_scores, <rsq/importance/activation_scores.hpp>):
/// ActNorm's ‖x_t‖₂, ActDiff's ‖x_t − x_ref,t‖₂ and TokenSim's ‖x_t − μ‖² + (1/L) Σ_j ‖x_j − μ‖². This is the one
/// implementation of these formulas: the policies' scores() (importance/actnorm.hpp, actdiff.hpp, tokensim.hpp) call
/// rsq::cpu::activation_scores with their own output type.
///
/// Determinism: every sum is taken in a fixed order whatever the number of OpenMP threads. A row's sum over the
/// features runs in feature order inside one thread (threads split the rows); a sequence's mean token is summed over
/// its tokens in token order, column by column (threads split (sequence, block of columns) items); a sequence's
/// spread is summed over its tokens in order by one thread.

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/scratch.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/core/view.hpp"
#include "rsq/importance/activation_scores_options.hpp"

namespace rsq::cpu {

namespace activation_detail {

/// Below this many elements of x a call stays on one thread (a parallel region costs more than it saves).
inline constexpr index_t parallel_elements = index_t(1) << 16;
/// Columns of one item of the mean-token loop: a block of a row is a few cache lines, read once per token.
inline constexpr index_t mean_columns = 256;

// The two sums below are kept out of line: with multiply-adds fused where the compiler chooses (GNU mode, FMA
// targets), an inlined copy may fuse differently from another, and then the front end (float scores) and the
// policies (scores in T) would not round the same float64 sums. One compiled body per type keeps them equal.

/// Σ_c a[c·sa]² in float64, in column order.
template <class A>
[[nodiscard, gnu::noinline]] double squared_norm(A const* a, index_t sa, index_t n) noexcept {
  double acc = 0;
  for (index_t c = 0; c < n; ++c) acc += double(a[c * sa]) * double(a[c * sa]);
  return acc;
}

/// Σ_c (a[c·sa] − b[c·sb])² in float64, in column order (b: the reference row, or the mean token in float64).
template <class A, class R>
[[nodiscard, gnu::noinline]] double squared_distance(A const* a, index_t sa, R const* b, index_t sb,
                                                     index_t n) noexcept {
  double acc = 0;
  for (index_t c = 0; c < n; ++c) {
    double const d = double(a[c * sa]) - double(b[c * sb]);
    acc += d * d;
  }
  return acc;
}

}  // namespace activation_detail

/// The raw scores of importance::activation_scores on the CPU, written as O (float for the front end, T for the
/// policies). x and x_ref (any strides) are checked for NaN/Inf here, x first (x_ref only for distance), with the
/// messages "<names.x> has a non-finite value (v) at row r, column c"; shapes are the caller's to check: x and x_ref
/// (sequences·seq_len, hidden), out (sequences, seq_len).
template <class T, class O>
void activation_scores(importance::activation_statistic stat, matrix_view<const T> x, matrix_view<const T> x_ref,
                       index_t seq_len, matrix_view<O> out, importance::activation_names const& names) {
  using namespace activation_detail;
  using importance::activation_statistic;
  rsq::detail::check_finite(x, names.x);
  if (stat == activation_statistic::distance) rsq::detail::check_finite(x_ref, names.x_ref);
  index_t const rows = x.rows(), d = x.cols(), L = seq_len;
  if (rows == 0) return;
  [[maybe_unused]] bool const parallel = rows * d > parallel_elements;

  if (stat != activation_statistic::spread) {
    bool const norm = stat == activation_statistic::norm;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (parallel)
#endif
    for (index_t r = 0; r < rows; ++r) {
      T const* xr = x.data() + r * x.stride(0);
      double const acc = norm ? squared_norm(xr, x.stride(1), d)
                              : squared_distance(xr, x.stride(1), x_ref.data() + r * x_ref.stride(0),
                                                 x_ref.stride(1), d);
      out(r / L, r % L) = O(std::sqrt(acc));
    }
    return;
  }

  // TokenSim: μ of each sequence, ‖x_t − μ‖² of each token, then each sequence's spread.
  index_t const sequences = rows / L, blocks = (d + mean_columns - 1) / mean_columns;
  detail::scratch_carver size;
  (void)size.take<double>(std::size_t(sequences * d));
  (void)size.take<double>(std::size_t(rows));
  detail::scratch_lease const lease(size.bytes());
  detail::scratch_carver carve(lease.data());
  double* const mean = carve.take<double>(std::size_t(sequences * d));  // (sequences, hidden)
  double* const centred = carve.take<double>(std::size_t(rows));        // ‖x_t − μ‖² // (sequences·seq_len)

#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (parallel)
#endif
  for (index_t item = 0; item < sequences * blocks; ++item) {
    index_t const j = item / blocks, c0 = item % blocks * mean_columns, c1 = std::min(d, c0 + mean_columns);
    double* const m = mean + j * d;
    std::fill(m + c0, m + c1, 0.0);
    for (index_t t = 0; t < L; ++t) {  // token order: the sum does not depend on the thread count
      T const* xr = x.data() + (j * L + t) * x.stride(0);
      for (index_t c = c0; c < c1; ++c) m[c] += double(xr[c * x.stride(1)]);
    }
    for (index_t c = c0; c < c1; ++c) m[c] /= double(L);
  }

#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (parallel)
#endif
  for (index_t r = 0; r < rows; ++r)
    centred[r] = squared_distance(x.data() + r * x.stride(0), x.stride(1), mean + (r / L) * d, index_t(1), d);

#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (parallel && sequences > 1)
#endif
  for (index_t j = 0; j < sequences; ++j) {
    double spread = 0;  // (1/L) Σ_t ‖x_t − μ‖², in token order
    for (index_t t = 0; t < L; ++t) spread += centred[j * L + t];
    spread /= double(L);
    for (index_t t = 0; t < L; ++t) out(j, t) = O(centred[j * L + t] + spread);
  }
}

}  // namespace rsq::cpu

namespace rsq::backend {

/// The CPU backend of importance::activation_scores (host memory in and out).
template <>
struct implementation<algorithm::activation_scores, cpu_eigen> {
  static constexpr bool available = true;

  template <class T>
  static void run(cpu_eigen const&, importance::activation_statistic stat, matrix_view<const T> x,
                  matrix_view<const T> x_ref, index_t seq_len, matrix_view<float> out,
                  importance::activation_names const& names) {
    cpu::activation_scores<T, float>(stat, x, x_ref, seq_len, out, names);
  }
};

}  // namespace rsq::backend
