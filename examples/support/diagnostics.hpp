// SPDX-License-Identifier: MIT
#pragma once
// The tools' diagnostics of what rotation and quantization do (issue 18): crest factors of the weights before and
// after the rotation, the crest of each layer input's channel energies (from the Hessian the solver gets), and the
// evaluation loss in each quarter of the window positions, before and after quantization.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include <rsq/core/view.hpp>
#include <rsq/model/llama.hpp>
#include <rsq/model/quantize.hpp>

namespace rsq_cli {

/// max|w| / rms(w) over a whole weight: 1 when every entry has the same magnitude, √n for a single spike. Rotation
/// spreads outliers, which lowers it.
inline double crest(rsq::matrix<float> const& w) {
  double peak = 0, sum2 = 0;
  for (float v : w) {
    peak = std::max(peak, double(std::abs(v)));
    sum2 += double(v) * double(v);
  }
  return sum2 > 0 ? peak / std::sqrt(sum2 / double(w.size())) : 0;
}

/// Per layer, the mean crest factor of its seven linears.
inline std::vector<double> weight_crest(rsq::model::llama_model const& m) {
  std::vector<double> out;
  for (auto const& layer : m.layers) {
    double s = 0;
    for (auto id : rsq::model::all_linears) s += crest(layer.weight(id));
    out.push_back(s / double(std::size(rsq::model::all_linears)));
  }
  return out;
}

/// The crest of a layer input's channel energies from its Hessian H ∝ Σ w x xᵀ: max_c √H_cc / √(mean_c H_cc). 1 when
/// the energy is spread evenly over the channels; large where a few channels carry massive activations.
inline double channel_crest(rsq::matrix<double> const& h) {
  double peak = 0, sum = 0;
  auto const n = h.shape()[0];
  for (std::size_t c = 0; c < n; ++c) {
    peak = std::max(peak, h(c, c));
    sum += h(c, c);
  }
  return sum > 0 ? std::sqrt(peak / (sum / double(n))) : 0;
}

/// The mean next-token loss of @p m on @p windows in each quarter of the predicted positions (position t predicts
/// token t + 1; quarter ⌊4t/(L − 1)⌋), on backend @p be, four windows at a time.
template <class B>
std::array<double, 4> quarter_losses(B const& be, rsq::model::llama_model const& m,
                                     rsq::matrix_view<const std::int32_t> windows) {
  std::array<double, 4> sum{}, count{};
  rsq::index_t const S = windows.rows(), L = windows.cols();
  for (rsq::index_t s0 = 0; s0 < S; s0 += 4) {
    rsq::index_t const n = std::min<rsq::index_t>(4, S - s0);
    auto const logits = rsq::model::forward(
        be, m, rsq::matrix_view<const std::int32_t>(&windows(s0, 0), {n, L}, windows.strides()));
    auto const V = rsq::index_t(logits.shape()[2]);
    for (rsq::index_t s = 0; s < n; ++s)
      for (rsq::index_t t = 0; t + 1 < L; ++t) {
        float const* z = &logits(std::size_t(s), std::size_t(t), 0);
        double const top = *std::max_element(z, z + V);
        double e = 0;
        for (rsq::index_t v = 0; v < V; ++v) e += std::exp(double(z[v]) - top);
        double const nll = top + std::log(e) - double(z[windows(s0 + s, t + 1)]);
        auto const q = std::size_t(4 * t / (L - 1));
        sum[q] += nll;
        count[q] += 1;
      }
  }
  for (std::size_t q = 0; q < 4; ++q) sum[q] = count[q] > 0 ? sum[q] / count[q] : 0;
  return sum;
}

}  // namespace rsq_cli
