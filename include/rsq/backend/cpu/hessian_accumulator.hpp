// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CPU backend of rsq::hessian_accumulator: the weighted inputs √w·x are gathered in chunks and added to the
/// running sum with a SYRK on GEMM tiles (multi-threaded, the gathering of one chunk beside the products of the one
/// before: cpu::syrk_lower_update_gathered).

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/backend/cpu/linalg.hpp"
#include "rsq/core/memory.hpp"
#include "rsq/hessian/accumulator_api.hpp"

namespace rsq {

/// CPU backend of the importance-weighted Hessian (see <rsq/hessian/accumulator_api.hpp>).
template <class T>
class hessian_accumulator<T, backend::cpu_eigen>
    : public hessian::detail::accumulator_base<hessian_accumulator<T, backend::cpu_eigen>, T> {
  using base = hessian::detail::accumulator_base<hessian_accumulator<T, backend::cpu_eigen>, T>;
  friend base;

 public:
  using backend_type = backend::cpu_eigen;

  /// An empty accumulator for inputs of @p features features.
  explicit hessian_accumulator(index_t features, backend::cpu_eigen = {}, hessian::weighting wt = {})
      : base(features, wt) {
    // Zeroed by columns in parallel: first touches of fresh pages, not the zeroing, are the cost (64 MB at 4096
    // features: 170 ms on one core of the development machines).
    sum_.resize(features, features);
    rsq::detail::advise_huge_pages(sum_.data(), std::size_t(sum_.size()) * sizeof(T));
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (features >= 512)
#endif
    for (index_t j = 0; j < features; ++j) sum_.col(j).setZero();
  }

  /// Adds everything @p other accumulated (disjoint data): the result equals one accumulator over all of it.
  void merge(hessian_accumulator const& other) {
    this->merge_counts(other);
    sum_ += other.sum_;
  }

  /// H = (2 / sequences) · Σ w x xᵀ (features, features), symmetric. All zeros before the first add.
  [[nodiscard]] rsq::matrix<T> hessian() const {
    index_t const n = this->features();
    auto h = rsq::make_matrix<T>(n, n);
    T const scale = this->hessian_scale();
    for (index_t i = 0; i < n; ++i)
      for (index_t j = 0; j <= i; ++j) h(i, j) = h(j, i) = scale * sum_(i, j);
    return h;
  }

 private:
  /// A token to add: its inputs (@p stride apart) and √w.
  template <class X>
  struct pending_token {
    X const* x;
    index_t stride;
    T root_weight;
  };

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

}  // namespace rsq
