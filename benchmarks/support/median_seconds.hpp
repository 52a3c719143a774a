// SPDX-License-Identifier: MIT
// The timing rule of every CPU benchmark: one warm-up call (page faults, OpenMP thread start), then the median of
// `reps` timed calls on the steady clock.
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

namespace rsq_bench {

template <class F>
double median_seconds(int reps, F&& f) {
  f();
  std::vector<double> t;
  for (int r = 0; r < std::max(reps, 1); ++r) {
    auto const t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace rsq_bench
