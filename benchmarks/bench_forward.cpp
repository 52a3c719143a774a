// SPDX-License-Identifier: MIT
// Throughput of the CPU forward pass (rsq::model) on stories260K: a batch of token sequences through the whole
// model (logits), the same with the quantizer hooks attached, and the mean loss; tokens/s, and GFLOP/s next to an
// Eigen SGEMM of the same work measured in the same run (the baseline on a shared 2-core machine).
//
// usage: bench_forward [sequences=8] [tokens=256] [repetitions=5]
// The model is read from $RSQ_SHARED_DIR/data/models/stories260K.bin (default: ../shared beside the source tree).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <rsq/model/forward.hpp>
#include <rsq/model/llama2c.hpp>

#include "support/median_seconds.hpp"

namespace {

}  // namespace

int main(int argc, char** argv) {
  using namespace rsq::model;
  long const S = argc > 1 ? std::atol(argv[1]) : 8;
  long const L = argc > 2 ? std::atol(argv[2]) : 256;
  int const reps = argc > 3 ? std::atoi(argv[3]) : 5;
  std::filesystem::path shared = std::filesystem::path(__FILE__).parent_path() / "../../shared";
  if (char const* env = std::getenv("RSQ_SHARED_DIR")) shared = env;
  auto const path = shared / "data/models/stories260K.bin";
  if (!std::filesystem::exists(path)) {
    std::printf("SKIPPED: %s not found (set RSQ_SHARED_DIR)\n", path.string().c_str());
    return 0;
  }
  auto const m = load_llama2c_checkpoint(path);
  auto const& c = m.config;
  if (S <= 0 || L < 2 || L > c.seq_len || reps <= 0) {
    std::fprintf(stderr, "bench_forward: need sequences > 0, 2 <= tokens <= %d, repetitions > 0\n", c.seq_len);
    return 2;
  }
  std::vector<std::int32_t> tokens(std::size_t(S * L));
  std::uint32_t state = 1;
  for (auto& t : tokens) t = std::int32_t((state = state * 1664525u + 1013904223u) >> 8) % c.vocab_size;
  rsq::matrix_view<const std::int32_t> tv(tokens.data(), S, L);

  // Work per forward: 2·params·tokens for the linears and classifier, and for the causal QKᵀ and PV products
  // 2·2·dim·L(L+1)/2 per sequence and layer (the keys each query needs; the masked half is not counted).
  double const T = double(S * L);
  double const linear_params = double(c.n_layers) * (2.0 * c.dim * c.dim + 2.0 * c.kv_dim() * c.dim +
                                                     3.0 * c.hidden_dim * c.dim) + double(c.vocab_size) * c.dim;
  double const flops = 2.0 * linear_params * T + 2.0 * double(L) * double(L + 1) * c.dim * double(S) * c.n_layers;

  double sink = 0;
  double const t_fwd = rsq_bench::median_seconds(reps, [&] { sink += forward(m, tv).data()[0]; });
  forward_hooks hooks;
  double hook_sum = 0;
  hooks.linear_input = [&](linear_site const&, rsq::matrix_view<const float> x) { hook_sum += x(0, 0); };
  hooks.attention_probs = [&](attention_site const&, rsq::batch_view<const float> p) { hook_sum += p(0, 0, 0); };
  hooks.rope_qk = [&](attention_site const&, rsq::batch_view<const float> q, rsq::batch_view<const float>) {
    hook_sum += q(0, 0, 0);
  };
  double const t_hooks = rsq_bench::median_seconds(reps, [&] { sink += forward(m, tv, hooks).data()[0]; });
  double const t_loss = rsq_bench::median_seconds(reps, [&] { sink += next_token_loss(m, tv).mean; });

  // Baseline: one SGEMM with the same flop count, (T x dim) x (dim x n) with n chosen to match.
  Eigen::Index const n = std::max<Eigen::Index>(1, Eigen::Index(flops / (2.0 * T * c.dim)));
  Eigen::MatrixXf a = Eigen::MatrixXf::Random(Eigen::Index(T), c.dim), b = Eigen::MatrixXf::Random(c.dim, n), y;
  double const t_gemm = rsq_bench::median_seconds(reps, [&] {
    y.noalias() = a * b;
    sink += y(0, 0);
  });
  double const gemm_rate = 2.0 * T * c.dim * double(n) / t_gemm;

  std::printf("stories260K forward, batch %ld x %ld tokens, Eigen %d threads, median of %d\n", S, L,
              Eigen::nbThreads(), reps);
  std::printf("%-28s %10s %12s %10s %12s\n", "what", "ms", "tokens/s", "GFLOP/s", "vs SGEMM");
  auto row = [&](char const* what, double t) {
    std::printf("%-28s %10.2f %12.0f %10.2f %11.2fx\n", what, 1e3 * t, T / t, flops / t / 1e9, (flops / t) / gemm_rate);
  };
  row("forward (logits)", t_fwd);
  row("forward + all hooks", t_hooks);
  row("next_token_loss", t_loss);
  std::printf("%-28s %10.2f %12s %10.2f %12s\n", "SGEMM baseline (same flops)", 1e3 * t_gemm, "-", gemm_rate / 1e9, "1.00x");
  return sink == 12345.678 && hook_sum == 0 ? 1 : 0;
}
