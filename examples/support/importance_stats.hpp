// SPDX-License-Identifier: MIT
#pragma once
// What a layer's token importances do to its Hessian (the tools' diagnostics): RSQ weights token t of sequence s by
// w = r(s, t)^p, so these are shares of Σw.

#include <cmath>
#include <cstdint>

#include <rsq/core/view.hpp>

namespace rsq_cli {

struct importance_stats {
  double effective_tokens = 0;  ///< (Σw)²/Σw² per sequence, averaged: L for uniform weights, a handful when few count
  double position0_share = 0;   ///< share of Σw on each sequence's first position
  double bos_share = 0;         ///< share of Σw on BOS tokens (wherever they are in the window)
};

/// The statistics of importances @p r (sequences, L) raised to @p power, on the calibration windows @p tokens (the
/// same shape; empty: no BOS share) whose BOS id is @p bos.
inline importance_stats importance_stats_of(rsq::matrix_view<const float> r, double power,
                                            rsq::matrix_view<const std::int32_t> tokens = {}, std::int32_t bos = -1) {
  importance_stats out;
  double all = 0, first = 0, on_bos = 0;
  for (rsq::index_t s = 0; s < r.rows(); ++s) {
    double sum = 0, sum2 = 0;
    for (rsq::index_t t = 0; t < r.cols(); ++t) {
      double const w = std::pow(double(r(s, t)), power);
      sum += w;
      sum2 += w * w;
      if (t == 0) first += w;
      if (tokens.data() != nullptr && tokens(s, t) == bos) on_bos += w;
    }
    out.effective_tokens += sum2 > 0 ? sum * sum / sum2 : 0;
    all += sum;
  }
  out.effective_tokens /= double(r.rows());
  out.position0_share = all > 0 ? first / all : 0;
  out.bos_share = all > 0 ? on_bos / all : 0;
  return out;
}

}  // namespace rsq_cli
