// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CPU backend of rsq::hessian_accumulator: the weighted inputs √w·x are gathered in chunks, transposed so that
/// each feature's tokens are contiguous, and added to the running sum with a SYRK on GEMM tiles (multi-threaded).

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/backend/cpu/linalg.hpp"
#include "rsq/backend/cpu/transpose.hpp"
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
  /// Tokens gathered per SYRK: big enough for GEMM efficiency, small enough to stay a few MB.
  [[nodiscard]] index_t chunk_tokens() const noexcept {
    return std::clamp<index_t>((index_t(1) << 22) / this->features(), 256, 8192);
  }

  /// A token waiting in the chunk: its inputs (@p stride apart) and √w.
  template <class X>
  struct pending_token {
    X const* x;
    index_t stride;
    T root_weight;
  };

  template <class XOf>
  void accumulate(index_t count, XOf x_of, std::vector<std::vector<double>> const& weights) {
    using X = std::remove_cvref_t<decltype(*x_of(0).data())>;
    index_t const features = this->features(), chunk = chunk_tokens();
    // (tokens, features) column-major: each feature's tokens contiguous, the layout in which the SYRK reads the
    // depth fastest, so the weighted inputs are transposed once, here, and not again inside the SYRK.
    cpu::eigen_col_matrix<T> buf(chunk, features);
    std::vector<pending_token<X>> pending;
    pending.reserve(static_cast<std::size_t>(chunk));
    auto flush = [&] {
      if (pending.empty()) return;
      fill_transposed(pending, buf);
      cpu::syrk_lower_update<T>(sum_, buf.topRows(index_t(pending.size())), T(1));
      pending.clear();
    };
    for (index_t j = 0; j < count; ++j) {
      auto const x = x_of(j);
      auto const& w = weights[std::size_t(j)];
      for (index_t t = 0; t < x.rows(); ++t) {
        if (w[std::size_t(t)] == 0) continue;
        pending.push_back({&x(t, 0), x.stride(1), T(std::sqrt(w[std::size_t(t)]))});
        if (index_t(pending.size()) == chunk) flush();
      }
    }
    flush();
  }

  /// buf(k, f) = √w_k · x_k(f) for the pending tokens k, blocks of features in parallel: register tiles
  /// (cpu/transpose.hpp) when every input is T with contiguous rows, element by element otherwise.
  template <class X>
  static void fill_transposed(std::vector<pending_token<X>> const& pending, cpu::eigen_col_matrix<T>& buf) {
    constexpr index_t P = cpu::detail::transpose_tile_size<T>, block = 64;
    index_t const features = buf.cols(), tokens = index_t(pending.size()), blocks = (features + block - 1) / block;
    bool const tiles =
        std::is_same_v<X, T> && std::all_of(pending.begin(), pending.end(), [](auto const& p) { return p.stride == 1; });
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (tokens * features > (index_t(1) << 16))
#endif
    for (index_t fb = 0; fb < blocks; ++fb) {
      index_t const f0 = fb * block, nf = std::min(block, features - f0);
      auto element = [&](index_t k, index_t f) {
        auto const& p = pending[std::size_t(k)];
        buf(k, f0 + f) = p.root_weight * T(p.x[(f0 + f) * p.stride]);
      };
      if constexpr (std::is_same_v<X, T>) {
        if (tiles) {  // grid (token k, feature f0 + f)
          cpu::detail::transpose_tiles<T>(
              tokens, nf, false,
              [&](index_t k0, index_t c0, T const** src, T* scale, T** dst) {
                for (index_t k = 0; k < P; ++k) {
                  auto const& p = pending[std::size_t(k0 + k)];
                  src[k] = p.x + f0 + c0;
                  scale[k] = p.root_weight;
                  dst[k] = &buf(k0, f0 + c0 + k);
                }
              },
              element);
          continue;
        }
      }
      for (index_t k = 0; k < tokens; ++k)
        for (index_t f = 0; f < nf; ++f) element(k, f);
    }
  }

  cpu::eigen_col_matrix<T> sum_;  // (features, features) Σ w x xᵀ, lower triangle valid
};

}  // namespace rsq
