// SPDX-License-Identifier: MIT
// rsq::linalg::gemm on the CPU (tiled, the same bits for every thread count: backend/cpu/gemm.hpp) against Eigen
// 3.4's own product on the same threads, whose sums change with the thread count. LLM shapes: nn::linear's
// y = x·Wᵀ and plain products, square, tall-skinny and short-wide, float and double.
//
//   bench_gemm [repetitions=7]
//
// The two run alternately, call after call, so that a change of load on the shared 2-core machine hits both; the
// table gives each one's median seconds and GFLOP/s, and the median of the per-pair ratios rsq / Eigen (time; below
// 1 is faster). "same bits" says whether rsq's result with this thread count equals its result on one thread (it
// must), "Eigen same" whether Eigen's does.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive in Eigen's AVX-512 GEMM kernels
#endif
#include <Eigen/Core>
#include <rsq/linalg/gemm.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

using rsq::index_t;
using clock_type = std::chrono::steady_clock;
template <class T>
using row_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class T>
row_matrix<T> random_matrix(index_t rows, index_t cols, unsigned seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  row_matrix<T> m(rows, cols);
  for (index_t i = 0; i < m.size(); ++i) m.data()[i] = T(u(g));
  return m;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double seconds_of(auto&& f) {
  auto const t0 = clock_type::now();
  f();
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

template <class T>
rsq::matrix_view<const T> cview(row_matrix<T> const& m) {
  return rsq::matrix_view<const T>(m.data(), m.rows(), m.cols());
}
template <class T>
rsq::matrix_view<T> mview(row_matrix<T>& m) {
  return rsq::matrix_view<T>(m.data(), m.rows(), m.cols());
}


/// One row: C (m, n) = op(A) · op(B) with depth k; transpose_b is nn::linear's x·Wᵀ.
template <class T>
void row(char const* what, index_t m, index_t n, index_t k, bool transpose_b, int reps) {
  row_matrix<T> const a = random_matrix<T>(m, k, 1);
  row_matrix<T> const b = transpose_b ? random_matrix<T>(n, k, 2) : random_matrix<T>(k, n, 2);
  row_matrix<T> c_rsq(m, n), c_eigen(m, n), c_one(m, n), c_eigen_one(m, n);
  auto const op_b = transpose_b ? rsq::linalg::op::transpose : rsq::linalg::op::none;
  auto const run_rsq = [&](row_matrix<T>& c) {
    rsq::linalg::gemm(rsq::backend::cpu_eigen{}, cview(a), rsq::linalg::op::none, cview(b), op_b, mview(c));
  };
  auto const run_eigen = [&](row_matrix<T>& c) {
    if (transpose_b)
      c.noalias() = a * b.transpose();
    else
      c.noalias() = a * b;
  };
  int threads = 1;
#if defined(_OPENMP)
  threads = omp_get_max_threads();
  omp_set_num_threads(1);
  Eigen::setNbThreads(1);
#endif
  run_rsq(c_one);
  run_eigen(c_eigen_one);
#if defined(_OPENMP)
  omp_set_num_threads(threads);
  Eigen::setNbThreads(threads);
#endif
  run_rsq(c_rsq);  // warm-up (packing buffers, pages)
  run_eigen(c_eigen);
  std::vector<double> t_rsq, t_eigen, ratio;
  for (int r = 0; r < reps; ++r) {
    double const tr = seconds_of([&] { run_rsq(c_rsq); });
    double const te = seconds_of([&] { run_eigen(c_eigen); });
    t_rsq.push_back(tr);
    t_eigen.push_back(te);
    ratio.push_back(tr / te);
  }
  double const flops = 2.0 * double(m) * double(n) * double(k);
  double const sr = median(t_rsq), se = median(t_eigen);
  std::printf("| %-30s | %5ld | %5ld | %5ld | %9.4f | %7.1f | %9.4f | %7.1f | %6.3f | %-9s | %-9s |\n", what, long(m),
              long(n), long(k), sr, flops / sr * 1e-9, se, flops / se * 1e-9, median(ratio),
              c_rsq == c_one ? "yes" : "NO", c_eigen == c_eigen_one ? "yes" : "no");
}

}  // namespace

int main(int argc, char** argv) {
  int const reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 7;
  int threads = 1;
#if defined(_OPENMP)
  threads = omp_get_max_threads();
#endif
  std::printf("bench_gemm: rsq::linalg::gemm (CPU) vs Eigen %d.%d.%d's product, %d threads, median of %d\n\n",
              EIGEN_WORLD_VERSION, EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION, threads, reps);
  std::printf("| %-30s | %5s | %5s | %5s | %9s | %7s | %9s | %7s | %6s | %-9s | %-9s |\n", "C = op(A) op(B)", "m", "n",
              "k", "rsq s", "GFLOP/s", "Eigen s", "GFLOP/s", "ratio", "same bits", "Eigen same");
  std::printf("|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n", std::string(32, '-').c_str(), std::string(7, '-').c_str(),
              std::string(7, '-').c_str(), std::string(7, '-').c_str(), std::string(11, '-').c_str(),
              std::string(9, '-').c_str(), std::string(11, '-').c_str(), std::string(9, '-').c_str(),
              std::string(8, '-').c_str(), std::string(11, '-').c_str(), std::string(11, '-').c_str());
  row<float>("x W^T (linear)", 2048, 4096, 1024, true, reps);
  row<float>("A B", 2048, 4096, 1024, false, reps);
  row<float>("x W^T, FFN down", 2048, 1024, 4096, true, reps);
  row<float>("A B, k = 64", 8192, 512, 64, false, reps);
  row<float>("x W^T, tall-skinny (8 out)", 8192, 8, 4096, true, reps);
  row<float>("x W^T, tall-skinny (64 out)", 8192, 64, 1024, true, reps);
  row<float>("x W^T, short-wide (16 tokens)", 16, 4096, 4096, true, reps);
  row<float>("A B, square", 1024, 1024, 1024, false, reps);
  row<float>("A B, odd", 1000, 777, 1500, false, reps);
  row<double>("A B, double", 1024, 1024, 1024, false, reps);
  row<double>("x W^T (linear), double", 2048, 2048, 1024, true, reps);
  return 0;
}
