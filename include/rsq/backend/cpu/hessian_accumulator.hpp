// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CPU backend of rsq::hessian_accumulator: the weighted inputs √w·x are gathered in chunks and added to the
/// running sum with a SYRK on GEMM tiles (multi-threaded through Eigen's GEMM).

#include <algorithm>
#include <cmath>
#include <vector>

#include <Eigen/Core>

#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/backend/cpu/linalg.hpp"
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
    sum_.setZero(features, features);
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
  /// Tokens gathered per SYRK: big enough for GEMM efficiency, small enough to stay a few MB.
  [[nodiscard]] index_t chunk_tokens() const noexcept {
    return std::clamp<index_t>((index_t(1) << 22) / this->features(), 256, 8192);
  }

  template <class XOf>
  void accumulate(index_t count, XOf x_of, std::vector<std::vector<double>> const& weights) {
    index_t const features = this->features(), chunk = chunk_tokens();
    cpu::eigen_row_matrix<T> buf(chunk, features);  // (tokens, features) weighted inputs
    index_t fill = 0;
    auto flush = [&] {
      if (fill == 0) return;
      cpu::syrk_lower_update<T>(sum_, buf.topRows(fill), T(1));
      fill = 0;
    };
    for (index_t j = 0; j < count; ++j) {
      auto const x = x_of(j);
      auto const& w = weights[j];
      for (index_t t = 0; t < x.rows(); ++t) {
        if (w[t] == 0) continue;
        T const s = T(std::sqrt(w[t]));
        for (index_t f = 0; f < features; ++f) buf(fill, f) = s * T(x(t, f));
        if (++fill == chunk) flush();
      }
    }
    flush();
  }

  cpu::eigen_col_matrix<T> sum_;  // (features, features) Σ w x xᵀ, lower triangle valid
};

}  // namespace rsq
