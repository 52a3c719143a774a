// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CPU backend of rsq::hessian_accumulator (algorithm::hessian_accumulation, <rsq/hessian/accumulator.hpp>): the
/// weighted inputs √w·x are gathered in chunks and added to the running sum with a SYRK on GEMM tiles
/// (multi-threaded, the gathering of one chunk beside the products of the one before:
/// cpu::syrk_lower_update_gathered).

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/backend/cpu/linalg.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/core/memory.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/hessian/options.hpp"

namespace rsq::backend {

template <>
struct implementation<algorithm::hessian_accumulation, cpu_eigen> {
  static constexpr bool available = true;

  /// The running sum Σ w x xᵀ of a CPU accumulator (tf32 and bf16 precisions compute strict fp32 here).
  template <class T>
  class accumulator;
};

template <class T>
class implementation<algorithm::hessian_accumulation, cpu_eigen>::accumulator {
 public:
  /// An empty sum for inputs of @p features features.
  accumulator(cpu_eigen const&, index_t features, hessian::options const&) {
    // Zeroed by columns in parallel: first touches of fresh pages, not the zeroing, are the cost (64 MB at 4096
    // features: 170 ms on one core of the development machines).
    sum_.resize(features, features);
    rsq::detail::advise_huge_pages(sum_.data(), std::size_t(sum_.size()) * sizeof(T));
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (features >= 512)
#endif
    for (index_t j = 0; j < features; ++j) sum_.col(j).setZero();
  }

  /// Adds the sum of @p other (disjoint data).
  void merge(accumulator const& other) { sum_ += other.sum_; }

  /// scale · Σ w x xᵀ (features, features), symmetric.
  [[nodiscard]] rsq::matrix<T> hessian(T scale) const {
    index_t const n = sum_.rows();
    auto h = rsq::make_matrix_for_overwrite<T>(n, n);
    for (index_t i = 0; i < n; ++i)
      for (index_t j = 0; j <= i; ++j) h(i, j) = h(j, i) = scale * sum_(i, j);
    return h;
  }
  /// The same: host memory is the CPU backend's own.
  [[nodiscard]] rsq::matrix<T> hessian_resident(T scale) const { return hessian(scale); }

  /// Adds the sequences x_of(j), j < count (checked), with token weights @p weights[j].
  template <class XOf>
  void accumulate(index_t count, XOf x_of, std::vector<std::vector<double>> const& weights) {
    using X = std::remove_cvref_t<decltype(*x_of(0).data())>;
    std::vector<pending_token<X>> pending;
    for (index_t j = 0; j < count; ++j) {
      auto const x = x_of(j);
      auto const& w = weights[std::size_t(j)];
      for (index_t t = 0; t < x.rows(); ++t)
        if (w[std::size_t(t)] != 0) pending.push_back({&x(t, 0), x.stride(1), T(std::sqrt(w[std::size_t(t)]))});
    }
    auto const fill = [&](T* dst, index_t ld, index_t f0, index_t nf, index_t k0, index_t kn) {
      for (index_t k = 0; k < kn; ++k) scale_token<X>(pending[std::size_t(k0 + k)], f0, nf, dst + k * ld);
    };
    index_t const tokens = index_t(pending.size());
    if constexpr (std::is_same_v<X, T>) {
      // Contiguous inputs of the accumulator's type are packed for the products without a copy.
      if (std::all_of(pending.begin(), pending.end(), [](auto const& p) { return p.stride == 1; }))
        return cpu::detail::linalg::syrk_lower_gathered<T>(sum_, tokens, fill, T(1), [&](index_t k) {
          return std::pair<T const*, T>(pending[std::size_t(k)].x, pending[std::size_t(k)].root_weight);
        });
    }
    cpu::syrk_lower_update_gathered<T>(sum_, tokens, fill, T(1));
  }

 private:
  /// A token to add: its inputs (@p stride apart) and √w.
  template <class X>
  struct pending_token {
    X const* x;
    index_t stride;
    T root_weight;
  };

  /// dst[f] = √w · x(f0 + f) for f < nf: a token's weighted inputs as the SYRK gathers them.
  template <class X>
  static void scale_token(pending_token<X> const& token, index_t f0, index_t nf, T* dst) {
    X const* const x = token.x + f0 * token.stride;
    if (token.stride == 1) {  // vectorized
      for (index_t f = 0; f < nf; ++f) dst[f] = token.root_weight * T(x[f]);
    } else {
      for (index_t f = 0; f < nf; ++f) dst[f] = token.root_weight * T(x[f * token.stride]);
    }
  }

  cpu::eigen_col_matrix<T> sum_;  // (features, features) Σ w x xᵀ, lower triangle valid
};

}  // namespace rsq::backend
