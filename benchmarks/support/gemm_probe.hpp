// SPDX-License-Identifier: MIT
// Rates measured side by side with a GEMM probe. The 2-core machines are shared: the load moves during a run, so a
// ceiling measured once at the top can be far from the one a row further down ran against. Here every timed call
// follows a 2048^3 GEMM probe, and a row's ratio is the median over its calls of (its rate / the probe's rate just
// before it).
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

#include <Eigen/Core>

namespace rsq_bench {

/// A 2048^3 GEMM in T (float: SGEMM) whose rate is taken just before each timed call.
template <class T>
class gemm_probe {
 public:
  static constexpr Eigen::Index size = 2048;

  gemm_probe() : a_(matrix::Random(size, size)), b_(matrix::Random(size, size)), c_(size, size) {
    c_.noalias() = a_ * b_;  // warm-up
  }

  /// One product; its rate in GFLOP/s.
  double gflops() {
    auto const t0 = std::chrono::steady_clock::now();
    c_.noalias() = a_ * b_;
    double const s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return 2.0 * double(size) * double(size) * double(size) / s * 1e-9;
  }

 private:
  using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  matrix a_, b_, c_;
};

/// A measurement next to its probes.
struct paired_timing {
  double seconds = 0;   // median of the timed calls
  double per_probe = 0; // median over the calls of 1 / (seconds x the probe's GFLOP/s just before)

  /// The rate of an operation of @p flops flops in percent of the probe's, call by call (median).
  [[nodiscard]] double percent_of_probe(double flops) const { return 100.0 * flops * 1e-9 * per_probe; }
};

/// One warm-up (setup, run), then @p reps times: the probe, setup (not timed), run (timed).
template <class T, class Setup, class Run>
paired_timing median_paired(int reps, gemm_probe<T>& probe, Setup&& setup, Run&& run) {
  setup();
  run();
  std::vector<double> t, r;
  for (int i = 0; i < std::max(reps, 1); ++i) {
    double const p = probe.gflops();
    setup();
    auto const t0 = std::chrono::steady_clock::now();
    run();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    r.push_back(1.0 / (t.back() * p));
  }
  std::sort(t.begin(), t.end());
  std::sort(r.begin(), r.end());
  return {t[t.size() / 2], r[r.size() / 2]};
}

}  // namespace rsq_bench
