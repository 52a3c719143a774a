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
/// One class for every backend: `hessian_accumulator<T, B>` checks the arguments, counts, and computes the token
/// weights; the sum lives in backend B's memory. Inputs in host memory are checked and weighted on the host; inputs
/// in the memory of a device backend are checked (NaN/Inf named by sequence, token and feature, as on the host) and
/// weighted there.
///
/// An implementation of algorithm::hessian_accumulation provides a class `accumulator<T>` with
///   accumulator(B const&, index_t features, hessian::options const&);           // all zeros
///   template <class XOf> void accumulate(index_t count, XOf x_of, std::vector<std::vector<double>> const& w);
///       // host sequences x_of(j) (tokens, features), checked, with token weights w[j] (w = 0: skip the token)
///   void merge(accumulator const& other);
///   rsq::matrix<T> hessian(T scale) const;                      // scale·S, symmetric, host memory
///   backend::matrix<T, B> hessian_resident(T scale) const;      // the same in the backend's memory
/// and, for a backend with memory of its own,
///   template <class X, class R> void add_resident(batch_view<const X> x, matrix_view<const R> r,
///                                                 hessian::weighting const&, index_t first_sequence);

#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/hessian_accumulator.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/memory.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/hessian/options.hpp"
#include "rsq/hessian/weights.hpp"

namespace rsq {

/// Accumulates the Hessian of a layer with `features` inputs, in precision T (float or double), on backend B.
///
/// Example:
///   rsq::hessian_accumulator<float> acc(in_features);                 // CPU
///   acc.add(x, importance);   // x: (sequences, tokens, in), importance: (sequences, tokens)
///   rsq::hessian_accumulator<float, rsq::backend::cuda> gpu(4096, rsq::backend::cuda{stream}, {},
///                                                            {.precision = rsq::hessian::precision::bf16});
///   gpu.add(x_device_view);                                           // (sequences, tokens, 4096) on the device
///   auto h = gpu.hessian_resident();                                  // stays on the device
template <class T = float, class B = backend::cpu_eigen>
class hessian_accumulator {
  static_assert(std::is_floating_point_v<T>, "hessian_accumulator accumulates in float or double");
  using state_type = typename backend::implementation_t<algorithm::hessian_accumulation, B>::template accumulator<T>;

 public:
  using value_type = T;
  using backend_type = B;

  /// An empty accumulator for inputs of @p features features on @p be.
  /// @throws rsq::invalid_argument for features ≤ 0, a bad weighting, TF32/bf16 with T = double, chunk_tokens < 0
  explicit hessian_accumulator(index_t features, B be = {}, hessian::weighting wt = {}, hessian::options opt = {})
      : be_(be), features_(check_features(features)), weighting_(check(wt, opt)), options_(opt),
        state_(be_, features_, opt) {}

  /// Adds one sequence: @p x (tokens, features) and optional token importances @p r (tokens).
  /// @throws rsq::invalid_argument for a shape mismatch, an empty sequence, NaN/Inf in x or r (naming the sequence
  ///         and token), negative importances or importances that are all zero; the accumulator is then unchanged.
  template <class X, class R = float>
  void add(matrix_view<const X> x, vector_view<const R> r = {}) {
    add(batch_view<const X>(x.data(), {1, x.rows(), x.cols()}, {x.rows() * x.stride(0), x.stride(0), x.stride(1)}),
        r.data() ? matrix_view<const R>(r.data(), {1, r.extent(0)}, {r.extent(0) * r.stride(0), r.stride(0)})
                 : matrix_view<const R>{});
  }

  /// Adds a batch of sequences: @p x (sequences, tokens, features), optional importances @p r (sequences, tokens).
  template <class X, class R = float>
  void add(batch_view<const X> x, matrix_view<const R> r = {}) {
    if (r.data() != nullptr)
      RSQ_EXPECTS(r.rows() == x.extent(0) && r.cols() == x.extent(1), "hessian_accumulator: importances ",
                  rsq::detail::shape_string(r), " do not match inputs ", rsq::detail::shape_string(x),
                  " (expected sequences x tokens)");
    if constexpr (requires { state_.add_resident(x, r, weighting_, index_t(0)); }) {
      if (x.extent(0) > 0 && backend::resident(be_, x.data())) {
        RSQ_EXPECTS(x.extent(2) == features_, "hessian_accumulator: sequence ", sequences_, " has ", x.extent(2),
                    " features, expected ", features_);
        RSQ_EXPECTS(x.extent(1) > 0, "hessian_accumulator: sequence ", sequences_, " has no tokens");
        state_.add_resident(x, r, weighting_, sequences_);
        sequences_ += x.extent(0);
        tokens_ += x.extent(0) * x.extent(1);
        return;
      }
    }
    add_host(
        x.extent(0), [&](index_t j) { return x[j]; },
        [&](index_t j) { return r.data() ? r[j] : vector_view<const R>{}; });
  }

  /// Writable views are read only.
  template <class X, std::size_t N>
    requires(!std::is_const_v<X> && (N == 2 || N == 3))
  void add(tensor_view<X, N> x) {
    add(tensor_view<const X, N>(x));
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

  /// Adds everything @p other accumulated (disjoint data): the result equals one accumulator over all of it.
  void merge(hessian_accumulator const& other) {
    RSQ_EXPECTS(other.features_ == features_, "hessian_accumulator::merge: features differ (", features_, " vs ",
                other.features_, ")");
    state_.merge(other.state_);
    sequences_ += other.sequences_;
    tokens_ += other.tokens_;
  }

  /// H = (2 / sequences) · Σ w x xᵀ (features, features), symmetric, in host memory. All zeros before the first add.
  [[nodiscard]] rsq::matrix<T> hessian() const { return state_.hessian(scale()); }
  /// The same H in the backend's memory (device memory for CUDA), e.g. for gptq::factor on that backend.
  [[nodiscard]] backend::matrix<T, B> hessian_resident() const { return state_.hessian_resident(scale()); }

  [[nodiscard]] index_t features() const noexcept { return features_; }
  /// Number of sequences added (the reference's `nsamples`).
  [[nodiscard]] index_t sequences() const noexcept { return sequences_; }
  [[nodiscard]] index_t tokens() const noexcept { return tokens_; }
  [[nodiscard]] hessian::weighting const& weighting() const noexcept { return weighting_; }
  [[nodiscard]] hessian::options const& options() const noexcept { return options_; }
  [[nodiscard]] B const& backend() const noexcept { return be_; }

 private:
  static index_t check_features(index_t features) {
    RSQ_EXPECTS(features > 0, "hessian_accumulator: features must be positive, got ", features);
    return features;
  }
  static hessian::weighting check(hessian::weighting wt, hessian::options const& opt) {
    RSQ_EXPECTS(std::isfinite(wt.importance_power) && wt.importance_power > 0,
                "hessian_accumulator: importance_power must be positive, got ", wt.importance_power);
    RSQ_EXPECTS((std::is_same_v<T, float> || opt.precision == hessian::precision::strict),
                "hessian_accumulator<double>: TF32 and bf16 precisions need float; double accumulates in fp64");
    RSQ_EXPECTS(opt.chunk_tokens >= 0, "hessian_accumulator: chunk_tokens must be >= 0 (0: automatic), got ",
                opt.chunk_tokens);
    return wt;
  }

  /// 2 / sequences, the factor between the accumulated sum and H (0 before the first add).
  [[nodiscard]] T scale() const noexcept { return sequences_ > 0 ? T(2.0 / double(sequences_)) : T(0); }

  /// Host sequences: every check runs before anything is added, so that a bad sequence leaves the accumulator
  /// unchanged.
  template <class XOf, class ROf>
  void add_host(index_t count, XOf x_of, ROf r_of) {
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
      weights[std::size_t(j)] = hessian::token_weights(r_of(j), x.rows(), weighting_, sequences_ + j);
      tokens += x.rows();
    }
    state_.accumulate(count, x_of, weights);
    tokens_ += tokens;
    sequences_ += count;
  }

  B be_;
  index_t features_;
  hessian::weighting weighting_;
  hessian::options options_;
  state_type state_;
  index_t sequences_ = 0;
  index_t tokens_ = 0;
};

}  // namespace rsq
