// SPDX-License-Identifier: MIT
// Throughput of the CUDA Hadamard transform (in place, rows of length n, float) against a device-to-device copy of
// the same bytes measured in the same run (bytes read + written): 2^m and K·2^m of real models.
//
// usage: bench_hadamard_cuda [--bytes B] [--reps R] [--out results.md]
#include <cstdarg>
#include <cstdio>
#include <string>
#include <vector>

#include "../support/report.hpp"
#include "bench_common.cuh"

int main(int argc, char** argv) {
  std::size_t bytes = std::size_t(1) << 29;
  int reps = 7;
  std::string out;
  for (int i = 1; i < argc; ++i) {
    std::string const s = argv[i];
    if (s == "--bytes" && i + 1 < argc) bytes = std::stoull(argv[++i]);
    else if (s == "--reps" && i + 1 < argc) reps = std::stoi(argv[++i]);
    else if (s == "--out" && i + 1 < argc) out = argv[++i];
  }
  if (rsq::cuda::device_count() == 0) return 1;
  rsq_bench::open_report(out);
  using rsq_bench::emit;
  cudaDeviceProp prop{};
  RSQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  emit("# bench_hadamard_cuda on %s: %zu MB of float rows, in place, median of %d\n\n", prop.name, bytes >> 20, reps);
  emit("| n | construction | rows | transform ms | GB/s (read + write) | copy GB/s | vs copy | + signs GB/s |\n");
  emit("|---|---|---|---|---|---|---|---|\n");
  rsq::backend::cuda const be{};
  std::vector<rsq::index_t> sizes = {256, 1024, 4096, 8192, 16384, 32768, 28 * 512, 28 * 1024, 148 * 128, 108 * 256,
                                     172 * 64, 40 * 128, 12 * 1024};
  rsq::cuda::device_array<float> x{rsq::index_t(bytes / sizeof(float))}, y{rsq::index_t(bytes / sizeof(float))};
  bench::fill_normal(x.data(), bytes / sizeof(float), 0, 1);
  std::vector<std::string> threads_scan;
  for (auto n : sizes) {
    rsq::index_t const rows = rsq::index_t(bytes / sizeof(float)) / n;
    std::size_t const used = std::size_t(rows * n) * sizeof(float);
    rsq::matrix_view<float> v(x.data(), rows, n);
    auto const plan = rsq::rotation::plan_hadamard(n);
    double t = bench::median_ms(reps, [&] { rsq::cuda::hadamard_transform(be, v); });
    // Threads per CTA: the automatic choice against each fixed one (the table keeps the automatic time).
    std::string scan;
    for (int nt : {256, 512, 1024}) {
      rsq::cuda::tuning().hadamard_threads = nt;
      double const tn = bench::median_ms(reps, [&] { rsq::cuda::hadamard_transform(be, v); });
      // Appended piecewise (GCC 12 warns falsely on "literal" + std::string, -Wrestrict).
      scan.append(" ").append(std::to_string(nt)).append(":").append(
          std::to_string(int(2.0 * double(used) / (tn * 1e-3) / 1e9)));
    }
    rsq::cuda::tuning().hadamard_threads = 0;
    threads_scan.push_back(std::to_string(n).append(scan));
    auto const signs = std::vector<std::int8_t>(std::size_t(n), 1);
    double const ts = bench::median_ms(reps, [&] { rsq::cuda::hadamard_transform(be, v, {}, signs); });
    double const tc = bench::median_ms(reps, [&] {
      RSQ_CUDA_CHECK(cudaMemcpyAsync(y.data(), x.data(), used, cudaMemcpyDeviceToDevice));
    });
    double const gbs = 2.0 * double(used) / (t * 1e-3) / 1e9, cgbs = 2.0 * double(used) / (tc * 1e-3) / 1e9;
    emit("| %ld | %s | %ld | %.3f | %.0f | %.0f | %.0f%% | %.0f |\n", long(n), plan.to_string().c_str(), long(rows), t, gbs,
         cgbs, 100.0 * gbs / cgbs, 2.0 * double(used) / (ts * 1e-3) / 1e9);
  }
  emit("\nGB/s by threads per CTA (n threads:GB/s ...):\n\n");
  for (auto const& line : threads_scan) emit("    %s\n", line.c_str());
  rsq_bench::close_report();
  return 0;
}
