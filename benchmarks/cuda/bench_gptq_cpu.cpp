// SPDX-License-Identifier: MIT
// The CPU side of the side-by-side comparison (issue 5): the CPU backend on the shapes of bench_gptq_cuda scaled to
// 1024–4096 columns, 4-bit asym, block 128, per row and group 128 with act-order, H given (factor + solve, as
// fasterquant does), plus the Hessian of 8192 tokens at 4096 features. Run it with 2 threads (OMP_NUM_THREADS=2,
// taskset) next to bench_gptq_reference.py --device cpu --threads 2; includes a 2-thread SGEMM ceiling.
//
// usage: bench_gptq_cpu [--reps R] [--out results.md]
#include <Eigen/Dense>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <rsq/gptq/solve.hpp>
#include <rsq/hessian/accumulator.hpp>

#if defined(_OPENMP)
#include <omp.h>

#include "../support/median_seconds.hpp"
#include "../support/report.hpp"
#endif

namespace {

using rsq::index_t;

Eigen::MatrixXf random_matrix(index_t rows, index_t cols, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  Eigen::MatrixXf m(rows, cols);
  for (index_t i = 0; i < m.size(); ++i) m.data()[i] = nd(rng);
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 3;
  std::string out;
  for (int i = 1; i < argc; ++i) {
    std::string const s = argv[i];
    if (s == "--reps" && i + 1 < argc) reps = std::stoi(argv[++i]);
    else if (s == "--out" && i + 1 < argc) out = argv[++i];
  }
  rsq_bench::open_report(out);
  using rsq_bench::emit;
  int threads = 1;
#if defined(_OPENMP)
  threads = omp_get_max_threads();
#endif
  emit("# bench_gptq_cpu: rsq CPU backend, %d threads, median of %d\n\n", threads, reps);
  {
    auto const a = random_matrix(2048, 2048, 1), b = random_matrix(2048, 2048, 2);
    Eigen::MatrixXf c(2048, 2048);
    double const t = rsq_bench::median_seconds(reps, [&] { c.noalias() = a * b; });
    emit("SGEMM ceiling (Eigen, 2048^3): %.1f GFLOP/s\n\n", 2.0 * 2048.0 * 2048.0 * 2048.0 / t / 1e9);
  }
  emit("| weight | config | seconds (factor + solve) | factor s | solve s |\n|---|---|---|---|---|\n");
  struct shape {
    char const* name;
    index_t rows, cols;
  };
  for (auto const& sh : {shape{"1024x1024", 1024, 1024}, shape{"4096x1024", 4096, 1024}, shape{"1024x4096", 1024, 4096}}) {
    index_t const tokens = std::max<index_t>(8192, 2 * sh.cols);
    Eigen::MatrixXf x = random_matrix(tokens, sh.cols, 3);
    for (index_t c = 0; c < sh.cols; c += 7) x.col(c) *= 4;
    Eigen::MatrixXf const h = 2.0f / float(tokens) * (x.transpose() * x);
    Eigen::MatrixXf const w = random_matrix(sh.rows, sh.cols, 4);
    for (int cfg = 0; cfg < 2; ++cfg) {
      rsq::gptq::options const o = cfg == 0 ? rsq::gptq::options{} : rsq::gptq::options{.group_size = 128, .act_order = true};
      double tf = 0, ts = 0;
      double const total = rsq_bench::median_seconds(reps, [&] {
        auto const t0 = std::chrono::steady_clock::now();
        auto const fct = rsq::gptq::factor(rsq::backend::cpu_eigen{}, h, o);
        auto const t1 = std::chrono::steady_clock::now();
        auto const r = rsq::gptq::solve(rsq::backend::cpu_eigen{}, w, fct, {.bits = 4}, o);
        tf = std::chrono::duration<double>(t1 - t0).count();
        ts = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
        if (!r.ok()) std::printf("solve failed\n");
      });
      emit("| %s | %s | %.3f | %.3f | %.3f |\n", sh.name, cfg == 0 ? "per row" : "g128 act", total, tf, ts);
    }
  }
  {
    auto const x = random_matrix(8192, 4096, 5);
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> const xr = x;
    double const t = rsq_bench::median_seconds(reps, [&] {
      rsq::hessian_accumulator<float> acc(4096);
      acc.add(rsq::make_const_view<2>(xr));
      (void)acc.hessian();
    });
    emit("\nHessian of 8192 tokens at in = 4096: %.3f s\n\n", t);
  }
  rsq_bench::close_report();
  return 0;
}
