// SPDX-License-Identifier: MIT
// Benchmark of rsq/backend/cpu/linalg.hpp against Eigen 3.4 on this machine, all rates next to the SGEMM rate
// measured in the same run (docs/linalg.md; ../shared/docs/performance.md "How to measure").
//
//   bench_linalg [repetitions=3] [--double]
//
// Columns: median seconds, GFLOP/s, % of the 4096^3 SGEMM rate at the top, % of the median rate of a 2048^3 SGEMM
// probe run just before each repetition (the 2-core machine is shared: the load moves during a run).
// Flop counts: GEMM 2 m n k; Cholesky n^3/3; upper_cholesky_of_inverse 2/3 n^3 (chol + triangular inverse);
// the reference trio (LLT, inverse via LLT solve, LLT again) 4/3 n^3 at its own time; SYRK N n^2.
#include <algorithm>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive in Eigen's AVX-512 GEMM kernels
#endif
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Dense>
#include <rsq/backend/cpu/linalg.hpp>

#include "support/gemm_probe.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

// The machine is shared, so the load can change between the SGEMM at the top and a row further down. Before each
// repetition a 2048^3 SGEMM probe runs (when set), and each row also reports its rate relative to the median probe
// rate of its own repetitions.
std::function<double()> probe;  // returns GFLOP/s
double probe_median = 0;

template <class Setup, class Run>
double median_seconds(int reps, Setup const& setup, Run const& run) {
  std::vector<double> t, p;
  for (int r = 0; r < reps; ++r) {
    if (probe) p.push_back(probe());
    setup();
    auto const t0 = clock_type::now();
    run();
    t.push_back(std::chrono::duration<double>(clock_type::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  std::sort(p.begin(), p.end());
  probe_median = p.empty() ? 0 : p[p.size() / 2];
  return t[t.size() / 2];
}

template <class T>
using mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
template <class T>
using row_mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Symmetric, diagonally dominant (hence SPD) test matrix; cheap to build at n = 4096.
template <class T>
mat<T> spd(Eigen::Index n, unsigned seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  mat<T> a(n, n);
  for (Eigen::Index j = 0; j < n; ++j)
    for (Eigen::Index i = j; i < n; ++i) a(i, j) = a(j, i) = T(u(g));
  a.diagonal().array() += T(n);
  return a;
}

template <class M>
M random_matrix(Eigen::Index r, Eigen::Index c, unsigned seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  M m(r, c);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = typename M::Scalar(u(g));
  return m;
}

// Alternative schedules for comparison, all fork-join: the sequential kernels of linalg.hpp called outside a
// parallel region, so that every product in them is split over the threads: rsq's tiled GEMM (cpu/gemm.hpp) in the
// recursions and the right-looking one, Eigen's own parallel GEMM in the left-looking update.

/// Blocked right-looking Cholesky with a fixed panel width (LAPACK potrf style).
template <class T>
rsq::index_t cholesky_blocked_right(Eigen::Ref<mat<T>> a, Eigen::Index nb) {
  namespace d = rsq::cpu::detail::linalg;
  Eigen::Index const n = a.rows();
  for (Eigen::Index k = 0; k < n; k += nb) {
    Eigen::Index const kb = std::min(nb, n - k), m = n - k - kb;
    if (auto info = d::cholesky_recursive<T>(a.block(k, k, kb, kb)); info >= 0) return k + info;
    if (m == 0) break;
    d::trsm_right_lower_trans<T>(a.block(k, k, kb, kb), a.block(k + kb, k, m, kb));
    d::syrk_lower<T, mat<T>>(a.block(k + kb, k + kb, m, m), a.block(k + kb, k, m, kb), T(-1));
  }
  return -1;
}

/// Blocked left-looking Cholesky: one GEMM brings each panel up to date, then the panel is factored.
template <class T>
rsq::index_t cholesky_blocked_left(Eigen::Ref<mat<T>> a, Eigen::Index nb) {
  namespace d = rsq::cpu::detail::linalg;
  Eigen::Index const n = a.rows();
  for (Eigen::Index k = 0; k < n; k += nb) {
    Eigen::Index const kb = std::min(nb, n - k), m = n - k - kb;
    if (k > 0) a.block(k, k, n - k, kb).noalias() -= a.block(k, 0, n - k, k) * a.block(k, 0, kb, k).transpose();
    if (auto info = d::cholesky_recursive<T>(a.block(k, k, kb, kb)); info >= 0) return k + info;
    if (m > 0) d::trsm_right_lower_trans<T>(a.block(k, k, kb, kb), a.block(k + kb, k, m, kb));
  }
  return -1;
}

double gemm_rate = 0;  // GFLOP/s of the GEMM of this precision, 4096^3

void row(char const* op, Eigen::Index n, double seconds, double flops) {
  double const gf = flops / seconds * 1e-9;
  std::printf("| %-44s | %5ld | %9.4f | %8.1f | %6.1f%% | %6.1f%% |\n", op, long(n), seconds, gf, 100.0 * gf / gemm_rate,
              probe_median > 0 ? 100.0 * gf / probe_median : 100.0);
}

volatile double sink = 0;  // keeps results alive

template <class T>
void run(int reps) {
  char const* tn = sizeof(T) == 4 ? "float" : "double";
  std::printf("\n### %s, %d threads (Eigen::nbThreads), median of %d\n\n", tn, Eigen::nbThreads(), reps);
  std::printf("| %-44s | %5s | %9s | %8s | %7s | %7s |\n", "operation", "n", "seconds", "GFLOP/s", "% GEMM",
              "% probe");
  std::printf("|%s|%s|%s|%s|%s|%s|\n", std::string(46, '-').c_str(), std::string(7, '-').c_str(),
              std::string(11, '-').c_str(), std::string(10, '-').c_str(), std::string(9, '-').c_str(),
              std::string(9, '-').c_str());
  {
    Eigen::Index const n = 4096;
    mat<T> a = random_matrix<mat<T>>(n, n, 1), b = random_matrix<mat<T>>(n, n, 2), c(n, n);
    c.noalias() = a * b;  // warm-up
    double const s = median_seconds(reps, [] {}, [&] { c.noalias() = a * b; });
    gemm_rate = 2.0 * double(n) * n * n / s * 1e-9;
    row("GEMM C = A B (4096^3)", n, s, 2.0 * double(n) * n * n);
    sink = sink + double(c(1, 2));
  }
  rsq_bench::gemm_probe<T> gemm;
  probe = [&] { return gemm.gflops(); };
  for (Eigen::Index n : {1024, 2048, 4096}) {
    mat<T> const a0 = spd<T>(n, unsigned(n));
    double const nd = double(n), chol_flops = nd * nd * nd / 3;
    mat<T> a;
    auto setup = [&] { a = a0; };
    {
      Eigen::LLT<mat<T>, Eigen::Lower> llt(n);
      double const s = median_seconds(reps, setup, [&] { llt.compute(a); });
      row("Eigen LLT", n, s, chol_flops);
    }
    {
      double const s = median_seconds(reps, setup, [&] { sink = sink + double(rsq::cpu::cholesky_lower_inplace(a)); });
      row("rsq cholesky_lower_inplace", n, s, chol_flops);
    }
    {
      double const s = median_seconds(
          reps, setup, [&] { sink = sink + double(rsq::cpu::detail::linalg::cholesky_recursive<T>(a)); });
      row("  recursive, fork-join (tiled GEMM)", n, s, chol_flops);
      int const threads = Eigen::nbThreads();
      Eigen::setNbThreads(1);
      double const s1 = median_seconds(
          reps, setup, [&] { sink = sink + double(rsq::cpu::detail::linalg::cholesky_recursive<T>(a)); });
      Eigen::setNbThreads(threads);
      row("  recursive, one thread", n, s1, chol_flops);
      double const s2 = median_seconds(reps, setup, [&] { sink = sink + double(cholesky_blocked_right<T>(a, 256)); });
      row("  right-looking 256, fork-join (tiled GEMM)", n, s2, chol_flops);
      double const s3 = median_seconds(reps, setup, [&] { sink = sink + double(cholesky_blocked_left<T>(a, 256)); });
      row("  left-looking 256, fork-join (Eigen GEMM)", n, s3, chol_flops);
    }
    {
      mat<T> l = a0;
      (void)rsq::cpu::cholesky_lower_inplace(l);
      double const s = median_seconds(reps, [&] { a = l; }, [&] { rsq::cpu::invert_lower_triangular_inplace(a); });
      row("rsq invert_lower_triangular_inplace", n, s, chol_flops);
    }
    double const s_rsq = median_seconds(
        reps, setup, [&] { sink = sink + double(rsq::cpu::upper_cholesky_of_inverse_inplace(a)); });
    row("rsq upper_cholesky_of_inverse (2/3 n^3)", n, s_rsq, 2 * chol_flops);
    double const s_ref = median_seconds(reps, setup, [&] {
      // The reference: L = chol(H), Hinv = cholesky_inverse(L), U = chol(Hinv).upper (spec §6 step 6).
      Eigen::LLT<mat<T>, Eigen::Lower> llt(a);
      mat<T> hinv = llt.solve(mat<T>::Identity(n, n));
      Eigen::LLT<mat<T>, Eigen::Upper> llt2(hinv);
      sink = sink + double(llt2.matrixU()(0, 0));
    });
    row("Eigen trio LLT, solve(I), LLT (4/3 n^3)", n, s_ref, 4 * chol_flops);
    std::printf("| %-44s | %5ld | %9s | %8s | %6.2fx | %7s |\n", "  -> speed-up of upper_cholesky_of_inverse", long(n),
                "", "", s_ref / s_rsq, "");
  }
  Eigen::Index const tokens = 8192;
  for (Eigen::Index n : {1024, 4096}) {
    double const flops = double(tokens) * n * n;
    row_mat<T> const x = random_matrix<row_mat<T>>(tokens, n, 7);  // (tokens, in_features), as activations come
    mat<T> const xc = x;
    mat<T> c(n, n);
    auto zero = [&] { c.setZero(); };
    {
      double const s = median_seconds(reps, zero, [&] { c.template selfadjointView<Eigen::Lower>().rankUpdate(x.transpose(), T(1)); });
      row("Eigen rankUpdate, N = 8192 (N n^2)", n, s, flops);
    }
    {
      double const s = median_seconds(reps, zero, [&] { rsq::cpu::syrk_lower_update(c, x, T(1)); });
      row("rsq syrk_lower_update, x row-major", n, s, flops);
    }
    {
      double const s = median_seconds(reps, zero, [&] { rsq::cpu::syrk_lower_update(c, xc, T(1)); });
      row("rsq syrk_lower_update, x col-major", n, s, flops);
    }
    {
      rsq::cpu::detail::linalg::factor_ref<mat<T>> const xt(x.transpose());
      double const s = median_seconds(
          reps, zero, [&] { rsq::cpu::detail::linalg::syrk_lower<T, mat<T>>(c, xt, T(1)); });
      row("  recursive, fork-join (tiled GEMM)", n, s, flops);
    }
    if (n <= 1024) {
      double const s = median_seconds(reps, zero, [&] { c.noalias() += x.transpose() * x; });
      row("Eigen GEMM C += X^T X (full, 2 N n^2)", n, s, 2 * flops);
    }
    sink = sink + double(c(0, 0));
  }
  probe = nullptr;
}

}  // namespace

/// The 1-minute load average (Linux), printed with the table: these 2 cores are shared, and a loaded machine
/// slows every multi-threaded row.
std::string load_average() {
  std::FILE* f = std::fopen("/proc/loadavg", "r");
  if (!f) return "n/a";
  char buf[64] = {};
  std::string s = std::fgets(buf, sizeof buf, f) ? std::string(buf, std::strcspn(buf, " ")) : "n/a";
  std::fclose(f);
  return s;
}

int main(int argc, char** argv) {
  int reps = 3;
  bool dbl = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--double") == 0)
      dbl = true;
    else
      reps = std::max(1, std::atoi(argv[i]));
  }
  std::printf("bench_linalg: rsq CPU linear algebra vs Eigen %d.%d.%d\n", EIGEN_WORLD_VERSION, EIGEN_MAJOR_VERSION,
              EIGEN_MINOR_VERSION);
  std::printf("load average at start: %s\n", load_average().c_str());
  run<float>(reps);
  if (dbl) run<double>(reps);
  std::printf("\nload average at end: %s\n", load_average().c_str());
  return sink == 12345.678 ? 1 : 0;
}
