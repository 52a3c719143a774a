// SPDX-License-Identifier: MIT
// Throughput of GPTQ checkpoint packing (rsq::pack::pack_gptq / unpack_gptq) for a 4096 x 4096 weight at 3 and 4
// bits, with group size 128 and an act-order g_idx. Baselines measured in the same run: a memcpy of the codes
// (the memory-bound floor of one pass), and a per-value packer built on read_value/write_value.
//
// Each operation returns fresh arrays (16–64 MiB here). On a VM a first touch of fresh pages is expensive and can
// cost more than the work itself, so the table shows the first call (cold: fresh pages from the OS) and the median
// of the following calls with glibc told to keep freed memory (warm: the steady state of a quantization run that
// packs layer after layer).
//
// Usage: bench_pack [rows cols reps]   (defaults 4096 4096 5)
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <numeric>
#include <random>
#include <vector>

#include <rsq/pack/gptq_format.hpp>

namespace {

using clock_type = std::chrono::steady_clock;

struct timing {
  double cold_ms;  // first call
  double warm_ms;  // median of the next reps calls
};

template <class F>
timing time_it(int reps, F&& f) {
  auto once = [&] {
    auto const t0 = clock_type::now();
    f();
    return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
  };
  double const cold = once();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) t.push_back(once());
  std::sort(t.begin(), t.end());
  return {cold, t[t.size() / 2]};
}

volatile std::uint64_t sink = 0;  // keeps results alive

}  // namespace

int main(int argc, char** argv) {
  std::size_t const rows = argc > 1 ? std::size_t(std::atol(argv[1])) : 4096;
  std::size_t const cols = argc > 2 ? std::size_t(std::atol(argv[2])) : 4096;
  int const reps = std::max(1, argc > 3 ? std::atoi(argv[3]) : 5);
#if defined(__GLIBC__)
  // Keep freed blocks in the heap instead of returning them to the OS, so repeated calls reuse warm pages.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
  std::size_t const group = 128, groups = (cols + group - 1) / group;

  std::mt19937 gen(1);
  std::vector<std::size_t> perm(cols);
  std::iota(perm.begin(), perm.end(), std::size_t{0});
  std::shuffle(perm.begin(), perm.end(), gen);
  auto g_idx = rsq::vector<std::int32_t>::from_shape({cols});
  for (std::size_t j = 0; j < cols; ++j) g_idx(perm[j]) = std::int32_t(j / group);  // act-order

  // Baseline 1: copying the codes once (16 MiB at 4096 x 4096).
  auto codes = rsq::matrix<std::uint8_t>::from_shape({rows, cols});
  auto copy = rsq::matrix<std::uint8_t>::from_shape({rows, cols});
  for (auto& c : codes) c = std::uint8_t(gen() & 7u);
  double const memcpy_ms = time_it(reps, [&] {
    std::memcpy(copy.data(), codes.data(), codes.size());
    sink = sink + copy(rows - 1, cols - 1);
  }).warm_ms;

  std::printf("GPTQ packing, %zu x %zu weight, group %zu, act-order g_idx; warm = median of %d calls\n", rows, cols,
              group, reps);
  std::printf("memcpy of the codes (%.1f MiB, warm): %.2f ms\n\n", double(codes.size()) / (1 << 20), memcpy_ms);
  std::printf("| bits | operation                | cold ms | warm ms | warm Gcodes/s | warm / memcpy |\n");
  std::printf("|------|--------------------------|---------|---------|---------------|---------------|\n");
  double const n = double(rows) * double(cols);
  auto row = [&](int bits, char const* op, timing t) {
    std::printf("| %4d | %-24s | %7.2f | %7.2f | %13.2f | %13.1f |\n", bits, op, t.cold_ms, t.warm_ms,
                n / t.warm_ms / 1e6, t.warm_ms / memcpy_ms);
  };

  for (int bits : {3, 4}) {
    std::uint32_t const maxq = (1u << bits) - 1u;
    for (auto& c : codes) c = std::uint8_t(gen() & maxq);
    auto scales = rsq::matrix<float>::from_shape({rows, groups});
    auto zeros = rsq::matrix<float>::from_shape({rows, groups});
    for (auto& s : scales) s = 1e-3f * float(1 + gen() % 100);
    for (auto& z : zeros) z = float(1 + gen() % maxq);

    rsq::pack::gptq_tensors t;
    timing const pack_ms = time_it(reps, [&] {
      t = rsq::pack::pack_gptq(codes, scales, zeros, g_idx, bits);
      sink = sink + std::uint32_t(t.qweight(0, 0));
    });
    rsq::pack::unpacked_weight u;
    timing const unpack_ms = time_it(reps, [&] {
      u = rsq::pack::unpack_gptq(t);
      sink = sink + u.codes(rows - 1, cols - 1);
    });
    if (!(u.codes == codes)) {
      std::printf("round trip mismatch at %d bits\n", bits);
      return 1;
    }
    rsq::matrix<float> w;
    timing const deq_ms = time_it(reps, [&] {
      w = rsq::pack::dequantize(u);
      sink = sink + std::uint64_t(w(0, 0) > 0);
    });
    auto sorted = u;  // g_idx[c] = c / group: no act-order (or act-order with static groups)
    for (std::size_t c = 0; c < cols; ++c) sorted.g_idx(c) = std::int32_t(c / group);
    timing const deq_sorted_ms = time_it(reps, [&] {
      w = rsq::pack::dequantize(sorted);
      sink = sink + std::uint64_t(w(0, 0) > 0);
    });
    // Baseline 2: the same packing one value at a time through the layout's reference functions.
    std::vector<std::uint32_t> naive(cols * std::size_t(bits) / 32 * rows);
    std::vector<std::uint32_t> run(cols * std::size_t(bits) / 32 + 1);
    timing const naive_ms = time_it(reps, [&] {
      for (std::size_t r = 0; r < rows; ++r) {
        std::fill(run.begin(), run.end(), 0u);
        for (std::size_t c = 0; c < cols; ++c) rsq::pack::write_value(run.data(), bits, std::int64_t(c), codes(r, c));
        for (std::size_t w = 0; w + 1 < run.size(); ++w) naive[w * rows + r] = run[w];
      }
      sink = sink + naive[0];
    });
    if (std::uint32_t(t.qweight(1, 2)) != naive[1 * rows + 2]) {
      std::printf("naive packer disagrees at %d bits\n", bits);
      return 1;
    }
    row(bits, "pack_gptq", pack_ms);
    row(bits, "per-value write_value", naive_ms);
    row(bits, "unpack_gptq", unpack_ms);
    row(bits, "dequantize, act-order", deq_ms);
    row(bits, "dequantize, sorted g_idx", deq_sorted_ms);
  }
  return 0;
}
