// SPDX-License-Identifier: MIT
#pragma once
// The tools' report of quantize_options::choice (--importance-choice): the α each linear kept (α·H_policy +
// (1 − α)·H_uniform, chosen by the output error on held-out calibration windows), per layer and in total.

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>

#include <rsq/model/quantize.hpp>

namespace rsq_cli {

/// "q 1, k 1, v 0.5, o 0, gate 1, up 1, down 0.25": the α of each linear of @p r that kept one, named by @p name_of.
template <class NameOf>
[[nodiscard]] std::string alphas_of(rsq::model::layer_report const& r, NameOf name_of) {
  std::string s;
  for (auto const& l : r.linears) {
    if (!l.importance_alpha) continue;
    char v[32];
    std::snprintf(v, sizeof v, "%g", *l.importance_alpha);
    s += (s.empty() ? "" : ", ") + std::string(name_of(l.linear)) + " " + v;
  }
  return s;
}

/// One line: the choice, the windows held out, and how many linears kept each α with their mean, e.g.
/// "importance choice blend: 16 of 64 windows held out; alpha kept by 56 linears: 0 x12, 0.5 x4, 1 x40 (mean 0.75)".
/// Empty without a choice.
[[nodiscard]] inline std::string choice_summary(rsq::model::quantized_model const& q) {
  if (q.choice == rsq::model::importance_choice::off) return {};
  std::map<double, int> count;
  double sum = 0;
  int n = 0;
  for (auto const& r : q.layers)
    for (auto const& l : r.linears)
      if (l.importance_alpha) {
        ++count[*l.importance_alpha];
        sum += *l.importance_alpha;
        ++n;
      }
  rsq::index_t const expand = std::max<rsq::index_t>(1, q.expand_factor);
  char head[160];
  std::snprintf(head, sizeof head, "importance choice %s: %td of %td windows held out; alpha kept by %d linears:",
                std::string(to_string(q.choice)).c_str(), q.held_out_sequences / expand,
                q.calibration_sequences / expand, n);
  std::string s = head;
  for (auto const& [alpha, k] : count) {
    char v[48];
    std::snprintf(v, sizeof v, " %g x%d", alpha, k);
    s += v;
  }
  char tail[48];
  std::snprintf(tail, sizeof tail, " (mean %.2f)", n > 0 ? sum / n : 0.0);
  return s + tail;
}

}  // namespace rsq_cli
