// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Per-token Hessian weights from token importances (spec §5.1, §5.3): w_t = L · r_t^p / Σ_s r_s^p for one sequence of
/// L tokens, i.e. importance raised to the power p and renormalised to mean 1 within the sequence, as RSQ's
/// `add_batch` does (p = 1 reproduces the released code; p = 2 is the paper's formula).

#include <cmath>
#include <vector>

#include "rsq/core/error.hpp"
#include "rsq/core/view.hpp"

namespace rsq::hessian {

/// How token importances become Hessian weights.
struct weighting {
  /// w ∝ r^importance_power (spec §5.3).
  double importance_power = 1.0;
};

/// The weights w (mean 1) of one sequence from its importances @p r, for sequence number @p sequence (for messages).
/// An empty @p r gives w ≡ 1.
/// @throws rsq::invalid_argument for a negative or non-finite importance (naming sequence and token), or when all
///         importances of the sequence are zero.
template <class R>
[[nodiscard]] std::vector<double> token_weights(vector_view<const R> r, index_t tokens, weighting const& wt,
                                                index_t sequence) {
  std::vector<double> w(std::size_t(tokens), 1.0);
  if (r.data() == nullptr) return w;
  RSQ_EXPECTS(r.extent(0) == tokens, "hessian: sequence ", sequence, " has ", tokens, " tokens but ", r.extent(0),
              " importance values");
  RSQ_EXPECTS(std::isfinite(wt.importance_power) && wt.importance_power > 0,
              "hessian: importance_power must be positive, got ", wt.importance_power);
  double sum = 0;
  for (index_t t = 0; t < tokens; ++t) {
    double const v = double(r(t));
    RSQ_EXPECTS(std::isfinite(v) && v >= 0, "hessian: importance of sequence ", sequence, ", token ", t,
                " is ", v, " (must be finite and >= 0)");
    w[t] = wt.importance_power == 1.0 ? v : std::pow(v, wt.importance_power);
    sum += w[t];
  }
  RSQ_EXPECTS(sum > 0, "hessian: all importances of sequence ", sequence, " are zero");
  for (auto& v : w) v *= double(tokens) / sum;
  return w;
}

}  // namespace rsq::hessian
