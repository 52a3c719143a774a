// SPDX-License-Identifier: MIT
// Seconds per Cayley step of learn_rotation() (issue 17) on one GPU, for a model with Llama-3-8B's shapes (32 layers,
// hidden 4096, 32 query and 8 KV heads of 128, intermediate 14336, vocabulary 128256; random weights made in memory,
// no file): one step is the fake-quantized (4-bit per-row RTN, straight-through) next-token loss of S sequences of L
// tokens and its gradient with respect to R1 (4096 × 4096) and the 32 R2 (128 × 128) — rotate every weight, forward
// and reverse pass, chain rule (model/rotation_gradient.hpp) — then the Cayley SGD updates (rotation/cayley_sgd.hpp)
// with their products and LU solves on the GPU. Printed per precision (strict fp32; bf16 inputs of every product):
// the median objective, the median Cayley updates, their sum, and the peak device memory. With --layers below 32
// (a GPU with less memory), a second run at half the layers gives the per-layer cost, and the table adds the 32-layer
// step extrapolated linearly.
//
// usage: bench_learn_rotation_cuda [--layers 32] [--sequences 8] [--seq-len 2048] [--chunk 1] [--reps 3] [--quick]
//                                  [--no-fp32] [--out FILE]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include <rsq/cuda.hpp>
#include <rsq/model/learn_rotation.hpp>

#include "../support/llama3_shapes.hpp"
#include "../support/median_seconds.hpp"
#include "../support/report.hpp"

namespace {

using rsq::index_t;
using namespace rsq::model;

struct step_times {
  double objective = 0, cayley = 0, loss = 0, peak_gib = 0;
};

using problem_type = rotation_problem<float, rsq::backend::cuda>;

/// The objective's fixed parts of a model of @p layers layers, on the GPU.
problem_type make_problem(int layers, bool quick) {
  auto const t0 = std::chrono::steady_clock::now();
  auto const m = rsq_bench::make_model(layers, quick);
  auto p = make_rotation_problem<float>(rsq::backend::cuda{}, m, learn_rotation_options{}.rotation);
  std::printf("%d layers made and uploaded in %.1f s\n", layers,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return p;
}

/// The median seconds of the objective and of the Cayley updates at @p precision.
step_times time_step(problem_type const& problem, rsq::matrix<std::int32_t> const& ids, index_t chunk, int reps,
                     rsq::matmul_precision precision) {
  rsq::backend::cuda const be{};
  learn_rotation_options opt;
  auto const& c = problem.config;
  auto rotation = initial_rotation(plan_rotation(c, opt.rotation), c);
  rotation_workspace<float, rsq::backend::cuda> ws;
  rotation_loss_options const lo{.grid = opt.grid, .group_size = -1, .chunk_sequences = chunk,
                                 .precision = precision};
  rotation_gradient g;
  step_times t;
  t.objective = rsq_bench::median_seconds(reps, [&] {
    g = rotation_loss_and_gradient(be, problem, rotation, rsq::view(ids), lo,
                                   static_cast<quantization_offsets<float, rsq::backend::cuda> const*>(nullptr), &ws);
    rsq::backend::synchronize(be);
  });
  t.loss = g.loss;
  rsq::rotation::cayley_sgd sgd;
  t.cayley = rsq_bench::median_seconds(reps, [&] {
    auto r = rotation;
    (void)sgd.step(be, 0, r.r1, g.grad.r1, 1.0);
    for (std::size_t l = 0; l < r.r2.size(); ++l) (void)sgd.step(be, 1 + l, r.r2[l], g.grad.r2[l], 1.0);
  });
  t.peak_gib = double(rsq::backend::bytes_in_use(be)) / double(1 << 30);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  int layers = 32, reps = 3;
  index_t sequences = 8, seq_len = 2048, chunk = 1;
  bool quick = false, fp32 = true;
  std::string out;
  for (int i = 1; i < argc; ++i) {
    std::string const a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--layers") layers = std::stoi(next());
    else if (a == "--sequences") sequences = std::stol(next());
    else if (a == "--seq-len") seq_len = std::stol(next());
    else if (a == "--chunk") chunk = std::stol(next());
    else if (a == "--reps") reps = std::stoi(next());
    else if (a == "--no-fp32") fp32 = false;
    else if (a == "--quick") quick = true;
    else if (a == "--out") out = next();
    else {
      std::fprintf(stderr, "bench_learn_rotation_cuda: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (quick) {
    layers = std::min(layers, 4);
    seq_len = std::min<index_t>(seq_len, 256);
  }
  if (rsq::cuda::device_count() == 0) {
    std::printf("bench_learn_rotation_cuda: SKIPPED, no CUDA device\n");
    return 0;
  }
  rsq_bench::open_report(out);
  using rsq_bench::emit;
  auto const ids = rsq_bench::random_tokens(sequences, seq_len, quick ? 4096 : 128256);
  emit("# bench_learn_rotation_cuda: %s shapes, %d layers, %td x %td tokens per step (chunks of %td), 4-bit per-row "
       "fake quantization, median of %d\n\n",
       quick ? "quick" : "Llama-3-8B", layers, sequences, seq_len, chunk, reps);
  emit("| precision | layers | loss and gradient s | Cayley updates s | step s | loss | device GiB in use |\n");
  emit("|---|---|---|---|---|---|---|\n");
  std::vector<std::pair<char const*, rsq::matmul_precision>> runs = {{"bf16", rsq::matmul_precision::bf16}};
  if (fp32) runs.push_back({"fp32", rsq::matmul_precision::fp32});
  std::vector<step_times> full;
  {
    auto const problem = make_problem(layers, quick);
    for (auto const& [label, precision] : runs) {
      full.push_back(time_step(problem, ids, chunk, reps, precision));
      auto const& t = full.back();
      emit("| %s | %d | %.3f | %.3f | %.3f | %.4f | %.1f |\n", label, layers, t.objective, t.cayley,
           t.objective + t.cayley, t.loss, t.peak_gib);
      std::fflush(stdout);
    }
  }
  if (layers < 32 && layers >= 2 && !quick) {
    // The step is affine in the layer count: the per-layer cost from a second problem of half the layers.
    auto const problem = make_problem(layers / 2, quick);
    for (std::size_t i = 0; i < runs.size(); ++i) {
      auto const h = time_step(problem, ids, chunk, reps, runs[i].second);
      auto const& t = full[i];
      double const per_layer = (t.objective + t.cayley - h.objective - h.cayley) / double(layers - layers / 2);
      emit("| %s | %d | %.3f | %.3f | %.3f | %.4f | %.1f |\n", runs[i].first, layers / 2, h.objective, h.cayley,
           h.objective + h.cayley, h.loss, h.peak_gib);
      emit("| %s | 32 (extrapolated) | | | %.3f | | |\n", runs[i].first,
           t.objective + t.cayley + per_layer * (32 - layers));
    }
  }
  rsq_bench::close_report();
  return 0;
}
