// SPDX-License-Identifier: MIT
// Hadamard transform throughput (float) against a memory copy of the same array, measured in the same run.
// GB/s counts bytes read + written (2 x rows x n x 4). Median of several repetitions after a warm-up.
//
//   bench_hadamard [rows=2048] [reps=7]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <rsq/rotation/hadamard.hpp>
#include <rsq/rotation/randomized_hadamard.hpp>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "support/median_seconds.hpp"

namespace {

using rsq::index_t;
using clock_type = std::chrono::steady_clock;

}  // namespace

int main(int argc, char** argv) {
  index_t const rows = argc > 1 ? std::atol(argv[1]) : 2048;
  int const reps = argc > 2 ? std::atoi(argv[2]) : 7;
  int threads = 1;
#ifdef _OPENMP
  threads = omp_get_max_threads();
#endif
  std::printf("Hadamard transform, float, %ld rows, %d threads, median of %d (GB/s = bytes read + written)\n\n",
              long(rows), threads, reps);
  std::printf("%-7s %-22s %10s %10s %12s %10s %12s %10s\n", "n", "construction", "copy GB/s", "H GB/s", "H time/copy",
              "W·Q GB/s", "Qᵀ·W GB/s", "ms (H)");
  for (index_t const n : {index_t(4096), index_t(14336), index_t(11008)}) {
    std::size_t const count = std::size_t(rows * n);
    std::vector<float> a(count), b(count);
    for (std::size_t i = 0; i < count; ++i) a[i] = float(std::sin(0.001 * double(i)));
    double const bytes = 2.0 * double(count) * sizeof(float);

    // Baseline: a row-parallel copy with the same threading as the transform.
    double const t_copy = rsq_bench::median_seconds(reps, [&] {
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
      for (index_t r = 0; r < rows; ++r)
        std::memcpy(b.data() + r * n, a.data() + r * n, std::size_t(n) * sizeof(float));
    });

    rsq::rotation::hadamard const h(n);
    rsq::matrix_view<float> view(a.data(), rows, n);
    double const t_had = rsq_bench::median_seconds(reps, [&] { h.apply(view); });

    auto const q = rsq::rotation::randomized_hadamard(n, 0);
    double const t_right = rsq_bench::median_seconds(reps, [&] { q.apply_right(view); });
    // Output side: W (n, rows) <- Qᵀ W, the transform along columns of a row-major matrix.
    rsq::matrix_view<float> tall(b.data(), n, rows);
    double const t_left = rsq_bench::median_seconds(reps, [&] { q.apply_left_transpose(tall); });

    std::printf("%-7ld %-22s %10.2f %10.2f %12.2f %10.2f %12.2f %10.2f\n", long(n), h.plan().to_string().c_str(),
                bytes / t_copy * 1e-9, bytes / t_had * 1e-9, t_had / t_copy, bytes / t_right * 1e-9,
                bytes / t_left * 1e-9, t_had * 1e3);
  }
  return 0;
}
