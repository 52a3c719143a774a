// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Streaming, importance-weighted Hessian of a linear layer's inputs (spec §5.1):
///     H = (2/N) Σ_j Σ_t w_jt x_jt x_jtᵀ
/// over N sequences j with tokens t, w_jt the token weights of sequence j renormalised to mean 1 (hessian/weights.hpp;
/// w ≡ 1 without importances, which is plain GPTQ's H = (2/N) X Xᵀ). The reference keeps a running average
/// (H ← H·n/(n+1) + (2/(n+1))·Σ_t …); rsq keeps the unnormalised sum S and the sequence count n instead, which is the
/// same H up to rounding, more accurate, and makes `merge` of accumulators over disjoint data exact: the basis of
/// parallel and multi-machine accumulation.

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/backend/cpu/linalg.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/hessian/weights.hpp"

namespace rsq {

/// Accumulates the Hessian of a layer with @p features inputs, in precision T (float or double), on backend B.
template <class T = float, class B = backend::cpu_eigen>
class hessian_accumulator;

/// CPU backend: the weighted inputs are gathered in chunks and added with a SYRK on GEMM tiles.
template <class T>
class hessian_accumulator<T, backend::cpu_eigen> {
  static_assert(std::is_floating_point_v<T>, "hessian_accumulator accumulates in float or double");

 public:
  using value_type = T;
  using backend_type = backend::cpu_eigen;

  /// An empty accumulator for inputs of @p features features.
  explicit hessian_accumulator(index_t features, backend::cpu_eigen = {}, hessian::weighting wt = {})
      : features_(features), weighting_(wt) {
    RSQ_EXPECTS(features > 0, "hessian_accumulator: features must be positive, got ", features);
    RSQ_EXPECTS(std::isfinite(wt.importance_power) && wt.importance_power > 0,
                "hessian_accumulator: importance_power must be positive, got ", wt.importance_power);
    sum_.setZero(features, features);
  }

  /// Adds one sequence: @p x (tokens, features) and optional token importances @p r (tokens).
  /// @throws rsq::invalid_argument for a shape mismatch, an empty sequence, NaN/Inf in x or r (naming the sequence
  ///         and token), negative importances or importances that are all zero.
  template <class X, class R = float>
  void add(matrix_view<const X> x, vector_view<const R> r = {}) {
    add_sequences(1, [&](index_t) { return x; }, [&](index_t) { return r; });
  }

  /// Adds a batch of sequences: @p x (sequences, tokens, features) and optional importances @p r (sequences, tokens).
  template <class X, class R = float>
  void add(batch_view<const X> x, matrix_view<const R> r = {}) {
    if (r.data() != nullptr)
      RSQ_EXPECTS(r.rows() == x.extent(0) && r.cols() == x.extent(1), "hessian_accumulator: importances ",
                  rsq::detail::shape_string(r), " do not match inputs ", rsq::detail::shape_string(x),
                  " (expected sequences x tokens)");
    add_sequences(
        x.extent(0), [&](index_t j) { return x[j]; },
        [&](index_t j) { return r.data() ? r[j] : vector_view<const R>{}; });
  }

  /// Generic overloads: any viewable x (Eigen, xtensor) of rank 2 (one sequence) or 3 (a batch).
  template <class XA>
    requires viewable<XA, 2>
  void add(XA const& x) {
    add(make_const_view<2>(x), vector_view<const float>{});
  }
  template <class XA, class RA>
    requires viewable<XA, 2> && viewable<RA, 1>
  void add(XA const& x, RA const& r) {
    add(make_const_view<2>(x), make_const_view<1>(r));
  }
  template <class XA>
    requires viewable<XA, 3>
  void add(XA const& x) {
    add(make_const_view<3>(x), matrix_view<const float>{});
  }
  template <class XA, class RA>
    requires viewable<XA, 3> && viewable<RA, 2>
  void add(XA const& x, RA const& r) {
    add(make_const_view<3>(x), make_const_view<2>(r));
  }

  /// Adds everything @p other accumulated (disjoint data): the result equals one accumulator over all of it.
  void merge(hessian_accumulator const& other) {
    RSQ_EXPECTS(other.features_ == features_, "hessian_accumulator::merge: features differ (", features_, " vs ",
                other.features_, ")");
    sum_ += other.sum_;
    sequences_ += other.sequences_;
    tokens_ += other.tokens_;
  }

  [[nodiscard]] index_t features() const noexcept { return features_; }
  /// Number of sequences added (the reference's `nsamples`).
  [[nodiscard]] index_t sequences() const noexcept { return sequences_; }
  [[nodiscard]] index_t tokens() const noexcept { return tokens_; }

  /// H = (2 / sequences) · Σ w x xᵀ (features, features), symmetric. All zeros before the first add.
  [[nodiscard]] rsq::matrix<T> hessian() const {
    auto h = rsq::make_matrix<T>(features_, features_);
    T const scale = sequences_ > 0 ? T(2.0 / double(sequences_)) : T(0);
    for (index_t i = 0; i < features_; ++i)
      for (index_t j = 0; j <= i; ++j) h(i, j) = h(j, i) = scale * sum_(i, j);
    return h;
  }

 private:
  /// Tokens gathered per SYRK: big enough for GEMM efficiency, small enough to stay a few MB.
  [[nodiscard]] index_t chunk_tokens() const noexcept {
    return std::clamp<index_t>((index_t(1) << 22) / features_, 256, 8192);
  }

  template <class XOf, class ROf>
  void add_sequences(index_t count, XOf x_of, ROf r_of) {
    index_t const chunk = chunk_tokens();
    cpu::eigen_row_matrix<T> buf(chunk, features_);  // (tokens, features) weighted inputs
    index_t fill = 0;
    auto flush = [&] {
      if (fill == 0) return;
      cpu::syrk_lower_update<T>(sum_, buf.topRows(fill), T(1));
      fill = 0;
    };
    // Validate everything first, so that a bad sequence leaves the accumulator unchanged.
    std::vector<std::vector<double>> weights(static_cast<std::size_t>(count));
    for (index_t j = 0; j < count; ++j) {
      auto const x = x_of(j);
      RSQ_EXPECTS(x.cols() == features_, "hessian_accumulator: sequence ", sequences_ + j, " has ", x.cols(),
                  " features, expected ", features_);
      RSQ_EXPECTS(x.rows() > 0, "hessian_accumulator: sequence ", sequences_ + j, " has no tokens");
      for (index_t t = 0; t < x.rows(); ++t)
        for (index_t f = 0; f < features_; ++f)
          if (!std::isfinite(x(t, f)))
            rsq::detail::throw_invalid_argument("hessian_accumulator: input of sequence ", sequences_ + j, ", token ",
                                                t, ", feature ", f, " is ", x(t, f));
      weights[j] = hessian::token_weights(r_of(j), x.rows(), weighting_, sequences_ + j);
    }
    for (index_t j = 0; j < count; ++j) {
      auto const x = x_of(j);
      auto const& w = weights[j];
      for (index_t t = 0; t < x.rows(); ++t) {
        if (w[t] == 0) continue;
        T const s = T(std::sqrt(w[t]));
        for (index_t f = 0; f < features_; ++f) buf(fill, f) = s * T(x(t, f));
        if (++fill == chunk) flush();
      }
      tokens_ += x.rows();
    }
    flush();
    sequences_ += count;
  }

  index_t features_;
  hessian::weighting weighting_;
  cpu::eigen_col_matrix<T> sum_;  // (features, features) Σ w x xᵀ, lower triangle valid
  index_t sequences_ = 0;
  index_t tokens_ = 0;
};

}  // namespace rsq
