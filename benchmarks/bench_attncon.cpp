// SPDX-License-Identifier: MIT
// AttnCon scores (spec §4.2) straight from queries and keys (streamed: per head and block of queries, logits of the
// block, row log-sum-exp, column sums of exp(S − lse)) against the materialised route (all heads × L × L softmax
// probabilities, then the sum over heads and queries). Prints seconds (median of a few runs after a warm-up) and the
// memory each route needs.
//
// Usage: bench_attncon [L=2048] [heads=8] [kv_heads=8] [head_dim=64] [repeats=3]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include <rsq/importance/attncon.hpp>

#include "support/median_seconds.hpp"

namespace imp = rsq::importance;

namespace {

double mib(double bytes) { return bytes / (1024.0 * 1024.0); }

}  // namespace

int main(int argc, char** argv) {
  auto arg = [&](int i, long def) { return argc > i ? std::atol(argv[i]) : def; };
  std::size_t const L = std::size_t(arg(1, 2048)), H = std::size_t(arg(2, 8)), KV = std::size_t(arg(3, 8)),
                    D = std::size_t(arg(4, 64));
  int const repeats = int(arg(5, 3));

  std::mt19937 gen(0);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto q = xt::xtensor<float, 3>::from_shape({H, L, D});
  auto k = xt::xtensor<float, 3>::from_shape({KV, L, D});
  for (auto& v : q) v = nd(gen);
  for (auto& v : k) v = nd(gen);
  int const threads = imp::detail::max_threads();

  std::printf("AttnCon from Q/K, float32: L = %zu, heads = %zu, kv_heads = %zu, head_dim = %zu, %d thread(s)\n", L, H,
              KV, D, threads);
  std::printf("%-34s %10s %12s %14s\n", "route", "seconds", "vs material.", "memory (MiB)");

  // Materialised: probabilities (heads, L, L) then the sum; the probabilities dominate the memory.
  xt::xtensor<float, 3> probs;
  rsq::vector<float> s_mat;
  double const t_probs = rsq_bench::median_seconds(repeats, [&] { probs = imp::causal_attention(q, k); });
  double const t_sum = rsq_bench::median_seconds(repeats, [&] { s_mat = imp::attncon_scores(probs); });
  double const mem_mat = double(H * L * L) * sizeof(float)  // probabilities
                         + double(threads) * (64.0 * double(L) + 2.0 * double(L * D)) * sizeof(float)  // workspace
                         + double(H * L) * sizeof(double);  // per-head partial sums of the summation
  double const t_mat = t_probs + t_sum;
  std::printf("%-34s %10.4f %12s %14.1f\n", "materialised: softmax probs", t_probs, "", mib(double(H * L * L) * 4.0));
  std::printf("%-34s %10.4f %12s %14s\n", "materialised: sum (checks rows)", t_sum, "", "");
  std::printf("%-34s %10.4f %12.2f %14.1f\n", "materialised: total", t_mat, 1.0, mib(mem_mat));
  probs = xt::xtensor<float, 3>();  // free before the streamed runs
  // Baseline for the materialised route: only writing zeros into a fresh buffer of the same size (first touch of
  // its pages). On machines where page faults are slow this is most of the materialised time.
  double const t_touch = rsq_bench::median_seconds(repeats, [&] {
    auto buf = xt::xtensor<float, 3>::from_shape({H, L, L});
    std::fill(buf.begin(), buf.end(), 0.f);
  });
  std::printf("%-34s %10.4f %12s %14.1f\n", "(zero-fill of a fresh probs buffer)", t_touch, "",
              mib(double(H * L * L) * 4.0));

  for (rsq::index_t block : {32, 64, 128, 256}) {
    rsq::vector<float> s;
    double const t = rsq_bench::median_seconds(repeats, [&] { s = imp::attncon_scores_qk(q, k, {.query_block = block}); });
    double const mem =
        double(threads) * (double(block) * double(L) + double(L) + 2.0 * double(L * D)) * sizeof(float) +
        double(H * L) * sizeof(double) + double(L) * sizeof(float);
    double err = 0;
    for (std::size_t i = 0; i < L; ++i) err = std::max(err, double(std::abs(s(i) - s_mat(i)) / std::abs(s_mat(i))));
    char name[64];
    std::snprintf(name, sizeof name, "streamed: query_block = %ld", long(block));
    std::printf("%-34s %10.4f %12.2f %14.2f   (max rel. diff %.1e)\n", name, t, t_mat / t, mib(mem), err);
  }
  std::printf("memory: probabilities = heads*L*L*4 B; streamed = threads*(block*L + L + 2*L*head_dim)*4 B"
              " + heads*L*8 B + L*4 B\n");
  return 0;
}
