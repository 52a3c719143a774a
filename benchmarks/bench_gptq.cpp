// SPDX-License-Identifier: MIT
// GPTQ on the CPU backend: factorization, column solve and Hessian accumulation, in seconds and GFLOP/s next to the
// SGEMM rate measured in the same run (docs/benchmarks.md). Usage: bench_gptq [repetitions=5]
//
// Two ratios per phase: "%SGEMM" against the 2048^3 SGEMM at the top, "%probe" against a 2048^3 SGEMM run just
// before each timed call (median over the calls; support/gemm_probe.hpp): the second is the one that holds on a
// machine whose load moves during the run.
//
// The solve is timed into a recycled result (`r = solve(..., std::move(r))`, what a layer-by-layer loop does); the
// last column times it into a fresh result, whose first touch of new pages is part of the cost (docs/gptq.md).
// Likewise the Hessian: one batch added to an existing accumulator, and in the last column to a new one.
//
// Flop counts: factorization (Cholesky of the reversed H + triangular inverse) 2/3·n³; solve rows·cols² (every
// column's error reaches every later column of its row, as rank-1 updates in a block and GEMMs between blocks); Hessian
// N·n² (the lower triangle of Xᵀ X for N tokens).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <rsq/gptq/solve.hpp>
#include <rsq/hessian/accumulator.hpp>

#include "support/gemm_probe.hpp"

namespace {

struct layer {
  rsq::matrix<float> w, h;
};

// A weight and a Hessian from correlated, outlier-heavy inputs (N tokens), like real layers.
layer make_layer(rsq::index_t rows, rsq::index_t cols, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd;
  layer l;
  l.w = rsq::make_matrix<float>(rows, cols);
  for (auto& v : l.w) v = nd(rng);
  rsq::index_t const tokens = std::max<rsq::index_t>(2 * cols, 2048);
  xt::xtensor<float, 2> x(xt::xtensor<float, 2>::shape_type{std::size_t(tokens), std::size_t(cols)});
  for (rsq::index_t t = 0; t < tokens; ++t) {
    float prev = 0;
    for (rsq::index_t c = 0; c < cols; ++c) x(t, c) = prev = 0.5f * prev + nd(rng) * (c % 97 == 0 ? 6.f : 1.f);
  }
  rsq::hessian_accumulator<float> acc(cols);
  acc.add(x);
  l.h = acc.hessian();
  return l;
}

}  // namespace

int main(int argc, char** argv) {
  int const reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 5;
  std::printf("rsq GPTQ CPU benchmark: %d Eigen threads, median of %d\n\n", Eigen::nbThreads(), reps);

  // The ceiling: an SGEMM of 2048^3 with Eigen, at the top of this run and before every timed call.
  rsq_bench::gemm_probe<float> probe;
  std::vector<double> rates;
  for (int i = 0; i < reps; ++i) rates.push_back(probe.gflops());
  std::sort(rates.begin(), rates.end());
  double const sgemm_rate = rates[rates.size() / 2];
  std::printf("SGEMM 2048^3: %.1f GFLOP/s (the %%SGEMM columns)\n\n", sgemm_rate);
  auto percent = [&](double flops, rsq_bench::paired_timing const& m) {
    return 100 * flops / m.seconds / 1e9 / sgemm_rate;
  };

  std::printf("%-13s %-15s %9s %8s %6s %6s %9s %8s %6s %6s %9s %9s\n", "rows x cols", "options", "factor s", "GFLOP/s",
              "%SGEMM", "%probe", "solve s", "GFLOP/s", "%SGEMM", "%probe", "total s", "fresh s");
  struct shape {
    rsq::index_t rows, cols;
  };
  for (auto const sh : {shape{1024, 1024}, shape{4096, 1024}, shape{1024, 4096}}) {
    auto const l = make_layer(sh.rows, sh.cols, 1);
    for (int variant = 0; variant < 2; ++variant) {
      rsq::gptq::options opt;
      if (variant == 1) {
        opt.group_size = 128;
        opt.act_order = true;
      }
      rsq::quant::grid_spec const grid{.bits = 4};
      rsq::backend::cpu_eigen const cpu;
      auto f = rsq::gptq::factor(cpu, l.h, opt);
      auto const tf = rsq_bench::median_paired(reps, probe, [] {}, [&] { f = rsq::gptq::factor(cpu, l.h, opt); });
      // The solve into a recycled result (steady state of a layer-by-layer loop), and into a fresh one, whose pages
      // are touched for the first time.
      rsq::gptq::result<float> r;
      auto const ts = rsq_bench::median_paired(reps, probe, [] {}, [&] {
        r = rsq::gptq::solve(cpu, l.w, f, grid, opt, std::move(r));
      });
      auto const tfresh =
          rsq_bench::median_paired(reps, probe, [] {}, [&] { r = rsq::gptq::solve(cpu, l.w, f, grid, opt); });
      if (!r.ok()) {
        std::printf("solve failed: %s\n", std::string(rsq::gptq::to_string(r.info)).c_str());
        return 1;
      }
      double const n = double(sh.cols);
      double const ff = 2.0 / 3.0 * n * n * n, fs = double(sh.rows) * n * n;
      char dims[32];
      std::snprintf(dims, sizeof dims, "%td x %td", sh.rows, sh.cols);
      std::printf("%-13s %-15s %9.4f %8.1f %5.0f%% %5.0f%% %9.4f %8.1f %5.0f%% %5.0f%% %9.4f %9.4f\n", dims,
                  variant ? "g128 act-order" : "per row", tf.seconds, ff / tf.seconds / 1e9, percent(ff, tf),
                  tf.percent_of_probe(ff), ts.seconds, fs / ts.seconds / 1e9, percent(fs, ts),
                  ts.percent_of_probe(fs), tf.seconds + ts.seconds, tfresh.seconds);
    }
  }

  std::printf("\n%-28s %9s %8s %6s %6s %9s\n", "Hessian accumulation", "seconds", "GFLOP/s", "%SGEMM", "%probe",
              "fresh s");
  for (rsq::index_t cols : {1024, 4096}) {
    constexpr rsq::index_t tokens = 8192;
    std::mt19937_64 rng(2);
    std::normal_distribution<float> nd;
    xt::xtensor<float, 3> x(xt::xtensor<float, 3>::shape_type{4, std::size_t(tokens / 4), std::size_t(cols)});
    for (auto& v : x) v = nd(rng);
    xt::xtensor<float, 2> r(xt::xtensor<float, 2>::shape_type{4, std::size_t(tokens / 4)});
    std::uniform_real_distribution<float> ud(0.005f, 1.f);
    for (auto& v : r) v = ud(rng);
    for (bool weighted : {false, true}) {
      auto add = [&](rsq::hessian_accumulator<float>& acc) {
        if (weighted) acc.add(x, r);
        else acc.add(x);
      };
      // One batch into an accumulator that exists (the steady state of a calibration loop, which adds batch after
      // batch), and into a fresh one, whose (features x features) sum is zeroed on fresh pages first.
      rsq::hessian_accumulator<float> kept(cols);
      auto const m = rsq_bench::median_paired(reps, probe, [] {}, [&] { add(kept); });
      auto const mfresh = rsq_bench::median_paired(reps, probe, [] {}, [&] {
        rsq::hessian_accumulator<float> acc(cols);
        add(acc);
      });
      double const fl = double(tokens) * double(cols) * double(cols);
      char what[64];
      std::snprintf(what, sizeof what, "%td tokens x %td%s", tokens, cols, weighted ? " weighted" : "");
      std::printf("%-28s %9.4f %8.1f %5.0f%% %5.0f%% %9.4f\n", what, m.seconds, fl / m.seconds / 1e9, percent(fl, m),
                  m.percent_of_probe(fl), mfresh.seconds);
    }
  }
  std::printf("\nReference for scale (docs/performance.md): PyTorch fasterquant, 2 CPU threads of another machine,\n"
              "per row / g128 act-order: 1024x1024 0.26 / 0.23 s, 4096x1024 0.53 / 0.66 s, 1024x4096 2.64 / 3.16 s;\n"
              "Hessian of 8192 tokens at 4096: 1.28 s.\n");
  return 0;
}
