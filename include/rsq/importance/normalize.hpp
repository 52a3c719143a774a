// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Turning raw token scores into token importances r (spec §4.1): an optional transform (square / sqrt, then
/// reverse), an optional causal division, min-max scaling to [r_min, r_max] (optionally between quantiles), then at
/// most one of masking, truncation or quantile binning.
///
/// The mean-1 renormalisation w = L·r^p / Σ r^p of §5.1 is *not* done here: the Hessian accumulator applies it.

#include <algorithm>
#include <cmath>
#include <limits>
#include <concepts>
#include <numeric>
#include <optional>
#include <string_view>
#include <type_traits>
#include <vector>

#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"

namespace rsq::importance {

/// Causal division of the scores before min-max scaling (§4.1 `normalize: linear|sqrt`): token t (0-based) can be
/// attended by L − t queries.
enum class causal_normalization {
  none,    ///< the reference's `normalize: default`
  linear,  ///< s_t / (L − t)
  sqrt,    ///< s_t / √(L − t)
};

/// Element-wise transform of the raw scores (§4.1 `scale`).
enum class score_scale {
  none,
  square,  ///< s²
  sqrt,    ///< √s (scores must be ≥ 0)
};

/// How raw scores become importances. The defaults are those of the RSQ scripts (r ∈ [0.005, 1], plain min-max).
/// At most one of `masking`, `truncate`, `num_bins` may be set (the reference applies only the first one set).
struct normalize_options {
  double r_min = 0.005;                     ///< lowest importance (≥ 0); the yaml says 1, the scripts override it
  double r_max = 1.0;                       ///< highest importance (> 0, ≥ r_min)
  causal_normalization causal = causal_normalization::none;
  score_scale scale = score_scale::none;    ///< applied first
  bool reverse = false;                     ///< s ← −s, applied after `scale`
  std::optional<double> quantile{};          ///< q ∈ [0, 1]: min/max replaced by the (1−q) and q quantiles
  std::optional<double> masking{};           ///< p ∈ [0, 1]: the ⌊p·L⌋ lowest tokens get 0, all others 1
  std::optional<double> truncate{};          ///< p ∈ [0, 1]: the ⌊p·L⌋ lowest tokens get 0, the others keep r
  index_t num_bins = 0;                     ///< B ≥ 2: quantile binning into B levels in [r_min, r_max]; 0 = off
  /// The highest transformed score is lowered to the second highest before the range is taken, so that one outlier
  /// token (AttnCon's attention sink, which receives a fifth to two fifths of some heads' attention) keeps r_max
  /// without squeezing every other token toward r_min. Not in the reference (off).
  bool cap_peak = false;
};

/// Checks @p opt and throws rsq::invalid_argument naming @p who and the bad field.
inline void validate(normalize_options const& opt, std::string_view who = "normalize") {
  RSQ_EXPECTS(std::isfinite(opt.r_min) && std::isfinite(opt.r_max), who,
              ": r_min and r_max must be finite, got r_min = ", opt.r_min, ", r_max = ", opt.r_max);
  RSQ_EXPECTS(opt.r_min >= 0, who, ": r_min must be >= 0, got ", opt.r_min);
  RSQ_EXPECTS(opt.r_max > 0, who, ": r_max must be > 0, got ", opt.r_max);
  RSQ_EXPECTS(opt.r_min <= opt.r_max, who, ": r_min must be <= r_max, got r_min = ", opt.r_min, ", r_max = ",
              opt.r_max);
  auto fraction = [&](std::optional<double> const& v, char const* name) {
    if (v) RSQ_EXPECTS(*v >= 0 && *v <= 1, who, ": ", name, " must be a fraction in [0, 1], got ", *v);
  };
  fraction(opt.quantile, "quantile");
  fraction(opt.masking, "masking");
  fraction(opt.truncate, "truncate");
  RSQ_EXPECTS(opt.num_bins == 0 || opt.num_bins >= 2, who, ": num_bins must be 0 (off) or >= 2, got ", opt.num_bins);
  int const post_steps = int(opt.masking.has_value()) + int(opt.truncate.has_value()) + int(opt.num_bins != 0);
  RSQ_EXPECTS(post_steps <= 1, who, ": set at most one of masking, truncate and num_bins");
}

namespace detail {

/// The q-quantile of ascending @p sorted with linear interpolation between order statistics (torch.quantile's
/// default): position q·(n − 1).
[[nodiscard]] inline double quantile_of_sorted(std::vector<double> const& sorted, double q) {
  RSQ_ASSERT(!sorted.empty());
  double const pos = q * double(sorted.size() - 1);
  auto const lo = std::size_t(std::floor(pos));
  auto const hi = std::min(lo + 1, sorted.size() - 1);
  double const frac = pos - double(lo);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

/// Indices of the k smallest values; ties go to the lower index so that results do not depend on the sort.
[[nodiscard]] inline std::vector<std::size_t> lowest_k(std::vector<double> const& v, std::size_t k) {
  std::vector<std::size_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), std::size_t{0});
  std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return v[a] < v[b]; });
  idx.resize(k);
  return idx;
}

/// ⌊p·L⌋ as the reference's int(len · p).
[[nodiscard]] inline std::size_t fraction_count(double p, std::size_t n) {
  return std::min(n, std::size_t(std::floor(p * double(n))));
}

}  // namespace detail

/// Applies the score transforms (scale, then reverse) and the causal division of §4.1 in double precision.
/// @returns the transformed scores, one per token
template <class T>
[[nodiscard]] std::vector<double> transform_scores(vector_view<T> scores, normalize_options const& opt) {
  auto const n = scores.extent(0);
  std::vector<double> s(static_cast<std::size_t>(n));  // (tokens)
  for (index_t t = 0; t < n; ++t) {
    double v = double(scores(t));
    switch (opt.scale) {
      case score_scale::none: break;
      case score_scale::square: v = v * v; break;
      case score_scale::sqrt:
        RSQ_EXPECTS(v >= 0, "normalize: scale sqrt needs scores >= 0, got ", v, " at index ", t);
        v = std::sqrt(v);
        break;
    }
    // The reference's MagnitudeWeighting reverses *before* `scale`, so reverse + sqrt gives NaN there; the other
    // classes reverse after `scale`, which is the order used here.
    if (opt.reverse) v = -v;
    double const queries = double(n - t);  // causal queries that see token t
    if (opt.causal == causal_normalization::linear) v /= queries;
    if (opt.causal == causal_normalization::sqrt) v /= std::sqrt(queries);
    s[std::size_t(t)] = v;
  }
  return s;
}

/// Normalises raw scores into importances r (§4.1): transform, causal division, min-max scaling to
/// [r_min, r_max] with clamping, then masking / truncation / binning.
///
/// A constant score vector (or a quantile range of zero width) does not give NaN as in the reference: tokens at or
/// above the degenerate range get r_max, tokens below it r_min, so constant scores give r ≡ r_max (uniform).
/// @param scores raw scores, finite, at least one token // (tokens)
/// @returns importances // (tokens)
template <class T>
  requires std::floating_point<std::remove_const_t<T>>
[[nodiscard]] rsq::vector<std::remove_const_t<T>> normalize(vector_view<T> scores, normalize_options const& opt = {}) {
  using value_type = std::remove_const_t<T>;
  validate(opt);
  auto const n = scores.extent(0);
  RSQ_EXPECTS(n >= 1, "normalize: the scores are empty");
  rsq::detail::check_finite(scores, "normalize: scores");
  std::vector<double> s = transform_scores(scores, opt);  // (tokens)
  if (opt.cap_peak && s.size() >= 2) {
    auto const peak = std::max_element(s.begin(), s.end());  // the first of equal peaks
    double second = -std::numeric_limits<double>::infinity();
    for (auto it = s.begin(); it != s.end(); ++it)
      if (it != peak) second = std::max(second, *it);
    *peak = second;
  }

  // Min-max range, or the (1−q, q) quantiles (swapped when q < 0.5, as the reference does).
  double lo = 0, hi = 0;
  if (opt.quantile) {
    std::vector<double> sorted = s;
    std::sort(sorted.begin(), sorted.end());
    double const q_lo = std::min(1 - *opt.quantile, *opt.quantile);
    double const q_hi = std::max(1 - *opt.quantile, *opt.quantile);
    lo = detail::quantile_of_sorted(sorted, q_lo);
    hi = detail::quantile_of_sorted(sorted, q_hi);
  } else {
    auto const [mn, mx] = std::minmax_element(s.begin(), s.end());
    lo = *mn;
    hi = *mx;
  }
  std::vector<double> r(s.size());  // (tokens)
  double const width = opt.r_max - opt.r_min;
  for (std::size_t t = 0; t < s.size(); ++t) {
    double v = 0;
    if (hi > lo) {
      v = opt.r_min + (s[t] - lo) / (hi - lo) * width;
    } else {
      v = s[t] < lo ? opt.r_min : opt.r_max;  // guard for the reference's 0/0
    }
    r[t] = std::clamp(v, opt.r_min, opt.r_max);
  }

  // Post-processing (§4.1): masking, truncate and bins are exclusive.
  if (opt.masking) {
    auto const k = detail::fraction_count(*opt.masking, r.size());
    auto const low = detail::lowest_k(r, k);
    std::fill(r.begin(), r.end(), 1.0);
    for (auto i : low) r[i] = 0;
  } else if (opt.truncate) {
    auto const k = detail::fraction_count(*opt.truncate, r.size());
    for (auto i : detail::lowest_k(r, k)) r[i] = 0;
  } else if (opt.num_bins >= 2) {
    // B−1 thresholds at the quantiles i/B of r; level i = r_min + i·(r_max − r_min)/(B−1). A value equal to a
    // threshold falls into the lower bin, as in the reference.
    auto const bins = std::size_t(opt.num_bins);
    std::vector<double> sorted = r;
    std::sort(sorted.begin(), sorted.end());
    std::vector<double> thresholds(bins - 1);
    for (std::size_t i = 1; i < bins; ++i)
      thresholds[i - 1] = detail::quantile_of_sorted(sorted, double(i) / double(bins));
    for (auto& v : r) {
      auto const bin = std::size_t(std::lower_bound(thresholds.begin(), thresholds.end(), v) - thresholds.begin());
      v = opt.r_min + double(bin) * width / double(bins - 1);
    }
  }

  auto out = rsq::vector<value_type>::from_shape({std::size_t(n)});  // (tokens)
  for (std::size_t t = 0; t < r.size(); ++t) out(t) = value_type(r[t]);
  return out;
}

/// Overload for owned vectors.
template <std::floating_point T>
[[nodiscard]] rsq::vector<T> normalize(rsq::vector<T> const& scores, normalize_options const& opt = {}) {
  return normalize(vector_view<const T>(scores), opt);
}

}  // namespace rsq::importance
