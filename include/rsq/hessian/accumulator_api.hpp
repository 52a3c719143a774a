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
///
/// This header is backend-independent and Eigen-free: the primary template, and the argument handling every backend
/// shares. Backends specialize rsq::hessian_accumulator<T, B> (CPU: <rsq/backend/cpu/hessian_accumulator.hpp>,
/// included by <rsq/hessian/accumulator.hpp>; CUDA: <rsq/cuda.hpp>).

#include <cmath>
#include <type_traits>
#include <vector>

#include "rsq/backend/tags.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/hessian/weights.hpp"

namespace rsq {

/// Accumulates the Hessian of a layer with `features` inputs, in precision T (float or double), on backend B.
/// Every specialization offers: a constructor (features, B, hessian::weighting), add(x[, r]) for one sequence
/// (tokens, features) or a batch (sequences, tokens, features), merge(other), features(), sequences(), tokens() and
/// hessian() -> rsq::matrix<T> (features, features).
template <class T = float, class B = backend::cpu_eigen>
class hessian_accumulator;

namespace hessian::detail {

/// What every backend's accumulator shares: the counts, the argument checks (which run before anything is added, so
/// that a bad sequence leaves the accumulator unchanged), the token weights, and the overloads for every array type.
/// Derived implements `accumulate(count, x_of, weights)`, adding sequences x_of(j) with token weights weights[j].
template <class Derived, class T>
class accumulator_base {
  static_assert(std::is_floating_point_v<T>, "hessian_accumulator accumulates in float or double");

 public:
  using value_type = T;

  /// Adds one sequence: @p x (tokens, features) and optional token importances @p r (tokens).
  /// @throws rsq::invalid_argument for a shape mismatch, an empty sequence, NaN/Inf in x or r (naming the sequence
  ///         and token), negative importances or importances that are all zero.
  template <class X, class R = float>
  void add(matrix_view<const X> x, vector_view<const R> r = {}) {
    add_sequences(1, [&](index_t) { return x; }, [&](index_t) { return r; });
  }

  /// Adds a batch of sequences: @p x (sequences, tokens, features), optional importances @p r (sequences, tokens).
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

  /// Any viewable x (Eigen, xtensor) of rank 2 (one sequence) or 3 (a batch), with or without importances.
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

  [[nodiscard]] index_t features() const noexcept { return features_; }
  /// Number of sequences added (the reference's `nsamples`).
  [[nodiscard]] index_t sequences() const noexcept { return sequences_; }
  [[nodiscard]] index_t tokens() const noexcept { return tokens_; }
  [[nodiscard]] hessian::weighting const& weighting() const noexcept { return weighting_; }

 protected:
  accumulator_base(index_t features, hessian::weighting wt) : features_(features), weighting_(wt) {
    RSQ_EXPECTS(features > 0, "hessian_accumulator: features must be positive, got ", features);
    RSQ_EXPECTS(std::isfinite(wt.importance_power) && wt.importance_power > 0,
                "hessian_accumulator: importance_power must be positive, got ", wt.importance_power);
  }

  /// The counts of @p other added to this one's (for merge); throws if the widths differ.
  void merge_counts(accumulator_base const& other) {
    RSQ_EXPECTS(other.features_ == features_, "hessian_accumulator::merge: features differ (", features_, " vs ",
                other.features_, ")");
    sequences_ += other.sequences_;
    tokens_ += other.tokens_;
  }

  /// 2 / sequences, the factor between the accumulated sum and H (0 before the first add).
  [[nodiscard]] T hessian_scale() const noexcept { return sequences_ > 0 ? T(2.0 / double(sequences_)) : T(0); }

 private:
  template <class XOf, class ROf>
  void add_sequences(index_t count, XOf x_of, ROf r_of) {
    std::vector<std::vector<double>> weights(static_cast<std::size_t>(count));
    index_t tokens = 0;
    for (index_t j = 0; j < count; ++j) {
      auto const x = x_of(j);
      RSQ_EXPECTS(x.cols() == features_, "hessian_accumulator: sequence ", sequences_ + j, " has ", x.cols(),
                  " features, expected ", features_);
      RSQ_EXPECTS(x.rows() > 0, "hessian_accumulator: sequence ", sequences_ + j, " has no tokens");
      if (index_t const t = rsq::detail::first_nonfinite_row(x); t < x.rows()) {
        index_t const f = rsq::detail::first_nonfinite_column(x, t);
        rsq::detail::throw_invalid_argument("hessian_accumulator: input of sequence ", sequences_ + j, ", token ", t,
                                            ", feature ", f, " is ", x(t, f));
      }
      weights[j] = hessian::token_weights(r_of(j), x.rows(), weighting_, sequences_ + j);
      tokens += x.rows();
    }
    static_cast<Derived&>(*this).accumulate(count, x_of, weights);
    tokens_ += tokens;
    sequences_ += count;
  }

  index_t features_;
  hessian::weighting weighting_;
  index_t sequences_ = 0;
  index_t tokens_ = 0;
};

}  // namespace hessian::detail
}  // namespace rsq
