// SPDX-License-Identifier: MIT
// The CUDA forward-pass pieces (rsq/backend/cuda/nn.hpp) and linalg::gemm at Llama-3-8B's shapes (hidden 4096, 32
// query and 8 KV heads of 128, intermediate 14336, vocabulary 128256) on a calibration batch (default 128 sequences
// of 2048 tokens), fp32 against bf16: one decoder layer's attention with the AttnCon scores, the scores alone,
// RMSNorm, RoPE, SwiGLU, the q projection, and the loss of a few sequences. Each row is the median of --reps calls
// after a warm-up. A cheap check runs first: every query's probabilities sum to 1, so every sequence's AttnCon scores
// sum to heads·L.
//
// usage: bench_nn_cuda [--sequences S] [--seq-len L] [--loss-sequences N] [--reps R] [--out results.md]
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../support/report.hpp"
#include "bench_common.cuh"

namespace {

using rsq::index_t;
using rsq_bench::emit;
namespace algo = rsq::algorithm;
using be_t = rsq::backend::cuda;
template <class A>
using impl = rsq::backend::implementation<A, be_t>;

rsq::matrix_view<float> mview(rsq::cuda::device_array<float>& a, index_t rows, index_t cols) {
  return rsq::matrix_view<float>(a.data(), rows, cols);
}
rsq::matrix_view<const float> cview(rsq::cuda::device_array<float> const& a, index_t rows, index_t cols) {
  return rsq::matrix_view<const float>(a.data(), rows, cols);
}

}  // namespace

int main(int argc, char** argv) {
  index_t S = 128, L = 2048, loss_sequences = 2;
  int reps = 3;
  std::string out_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string const a = argv[i];
    if (a == "--sequences") S = std::atol(argv[i + 1]);
    else if (a == "--seq-len") L = std::atol(argv[i + 1]);
    else if (a == "--loss-sequences") loss_sequences = std::atol(argv[i + 1]);
    else if (a == "--reps") reps = std::atoi(argv[i + 1]);
    else if (a == "--out") out_path = argv[i + 1];
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (rsq::cuda::device_count() == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 0;
  }
  rsq_bench::open_report(out_path);
  index_t const H = 32, KV = 8, d = 128, dim = H * d, hidden = 14336, vocab = 128256, T = S * L;
  cudaDeviceProp prop{};
  RSQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  emit("# bench_nn_cuda on %s (%d SMs): Llama-3-8B shapes, %ld sequences of %ld tokens, median of %d calls\n\n",
       prop.name, prop.multiProcessorCount, long(S), long(L), reps);

  be_t const be{};
  rsq::cuda::device_array<float> q(T * dim), k(T * KV * d), v(T * KV * d), out(T * dim), scores(S * L);
  rsq::cuda::device_array<float> x(T * dim), y(T * dim), gains(dim), w(dim * dim);
  bench::fill_normal(q.data(), std::size_t(q.size()), 0, 1);
  bench::fill_normal(k.data(), std::size_t(k.size()), 0, 2);
  bench::fill_normal(v.data(), std::size_t(v.size()), 0, 3);
  bench::fill_normal(x.data(), std::size_t(x.size()), dim, 4);
  bench::fill_uniform(gains.data(), std::size_t(dim), 5, 0.5f, 1.5f);
  bench::fill_normal(w.data(), std::size_t(w.size()), 0, 6, 1.f / 64);
  RSQ_CUDA_CHECK(cudaDeviceSynchronize());

  auto const attn = [&](rsq::matmul_precision p) {
    return rsq::nn::attention_options{.seq_len = L, .heads = H, .kv_heads = KV, .head_dim = d, .precision = p};
  };
  auto const gb = [](double bytes, double ms) { return bytes / (ms * 1e6); };

  // Check: Σ_t scores(s, t) = heads·L for every sequence (rows of P sum to 1).
  for (auto const p : {rsq::matmul_precision::fp32, rsq::matmul_precision::bf16}) {
    impl<algo::causal_attention>::run(be, cview(q, T, dim), cview(k, T, KV * d), cview(v, T, KV * d),
                                      mview(out, T, dim), attn(p), mview(scores, S, L));
    auto const s = scores.to_host(be);
    double worst = 0;
    for (index_t sq = 0; sq < S; ++sq) {
      double sum = 0;
      for (index_t t = 0; t < L; ++t) sum += s[std::size_t(sq * L + t)];
      worst = std::max(worst, std::abs(sum - double(H * L)) / double(H * L));
    }
    emit("check (%s): max over sequences of |Σ_t s_t − heads·L| / (heads·L) = %.2e\n",
         p == rsq::matmul_precision::fp32 ? "fp32" : "bf16", worst);
  }
  emit("\n| piece | shape | precision | ms | throughput |\n|---|---|---|---|---|\n");

  for (auto const p : {rsq::matmul_precision::fp32, rsq::matmul_precision::bf16}) {
    char const* const name = p == rsq::matmul_precision::fp32 ? "fp32" : "bf16";
    // Causal attention: 2·(L²/2)·d multiply-adds per head for q·kᵀ and as many for P·V.
    double const flops = 2.0 * 2.0 * double(S * H) * double(L) * double(L + 1) / 2.0 * double(d);
    double const ms = bench::median_ms(reps, [&] {
      impl<algo::causal_attention>::run(be, cview(q, T, dim), cview(k, T, KV * d), cview(v, T, KV * d),
                                        mview(out, T, dim), attn(p), mview(scores, S, L));
    });
    emit("| attention + AttnCon scores | %ld x %ld, %ld/%ld heads of %ld | %s | %.1f | %.0f TFLOP/s |\n", long(S),
         long(L), long(H), long(KV), long(d), name, ms, flops / (ms * 1e9));
    double const ms_scores = bench::median_ms(reps, [&] {
      impl<algo::causal_attention>::run(be, cview(q, T, dim), cview(k, T, KV * d), {}, {}, attn(p),
                                        mview(scores, S, L));
    });
    emit("| AttnCon scores only | %ld x %ld, %ld/%ld heads of %ld | %s | %.1f | %.0f TFLOP/s |\n", long(S), long(L),
         long(H), long(KV), long(d), name, ms_scores, flops / 2 / (ms_scores * 1e9));
    double const ms_linear = bench::median_ms(reps, [&] {
      impl<algo::gemm>::run<float>(be, cview(x, T, dim), rsq::linalg::op::none, cview(w, dim, dim),
                                   rsq::linalg::op::transpose, mview(y, T, dim), {.precision = p});
    });
    emit("| q projection (gemm) | %ld x %ld x %ld | %s | %.1f | %.0f TFLOP/s |\n", long(T), long(dim), long(dim), name,
         ms_linear, 2.0 * double(T) * double(dim) * double(dim) / (ms_linear * 1e9));
  }

  double const ms_norm = bench::median_ms(reps, [&] {
    impl<algo::rms_norm>::run(be, cview(x, T, dim), rsq::vector_view<const float>(gains.data(), dim), 1e-5f,
                              mview(y, T, dim));
  });
  emit("| rms_norm | %ld x %ld | fp32 | %.2f | %.0f GB/s |\n", long(T), long(dim), ms_norm,
       gb(2.0 * double(T * dim) * 4, ms_norm));
  double const ms_rope = bench::median_ms(reps, [&] {
    impl<algo::rope>::run(be, mview(q, T, dim), {.seq_len = L, .head_dim = d, .theta = 500000.0});
  });
  emit("| rope (q) | %ld x %ld | fp32 | %.2f | %.0f GB/s |\n", long(T), long(dim), ms_rope,
       gb(2.0 * double(T * dim) * 4, ms_rope));
  {
    // SwiGLU on (T, hidden): gate and up, in pieces of the q/out buffers when the whole does not fit them.
    index_t const rows = std::min<index_t>(T, (T * dim) / hidden);
    double const ms = bench::median_ms(reps, [&] {
      impl<algo::swiglu>::run(be, mview(out, rows, hidden), cview(y, rows, hidden));
    });
    emit("| swiglu | %ld x %ld | fp32 | %.2f | %.0f GB/s |\n", long(rows), long(hidden), ms,
         gb(3.0 * double(rows * hidden) * 4, ms));
  }
  q.reset();
  k.reset();
  v.reset();
  out.reset();
  {
    // The loss of a few sequences: the (tokens, vocab) logits dominate.
    index_t const n = loss_sequences * L;
    rsq::cuda::device_array<float> classifier(vocab * dim);
    bench::fill_normal(classifier.data(), std::size_t(classifier.size()), 0, 7, 1.f / 64);
    std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) ids[std::size_t(i)] = std::int32_t((i * 7919) % vocab);
    rsq::matrix_view<const std::int32_t> const idv(ids.data(), loss_sequences, L);
    for (auto const p : {rsq::matmul_precision::fp32, rsq::matmul_precision::bf16}) {
      rsq::nn::loss_sum r{};
      double const ms = bench::median_ms(reps, [&] {
        r = impl<algo::next_token_loss>::run(be, cview(x, n, dim), rsq::vector_view<const float>(gains.data(), dim),
                                             cview(classifier, vocab, dim), idv,
                                             {.seq_len = L, .precision = p});
      });
      emit("| next_token_loss (mean %.3f) | %ld x %ld, vocab %ld | %s%s | %.1f | %.0f TFLOP/s |\n",
           r.sum / double(r.count), long(n), long(dim), long(vocab), p == rsq::matmul_precision::fp32 ? "fp32" : "bf16",
           p == rsq::matmul_precision::bf16 && vocab * dim * 2 > rsq::cuda::nn_tuning().bf16_classifier_bytes
               ? " (classifier too large for its bf16 copy: fp32)"
               : "",
           ms, 2.0 * double(n) * double(vocab) * double(dim) / (ms * 1e9));
    }
  }
  rsq_bench::close_report();
  return 0;
}
