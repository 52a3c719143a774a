// SPDX-License-Identifier: MIT
// Seconds per Cayley step of learn_rotation() (issue 17) on lm7m: one step is the fake-quantized loss and its gradient
// with respect to R1 and the eight R2 (forward and reverse pass over the step's windows, model/rotation_gradient.hpp)
// and the Cayley SGD updates (rotation/cayley_sgd.hpp). Printed: the median step, and the two parts timed on their own.
//
// Usage: OMP_NUM_THREADS=2 bench_learn_rotation [sequences per step (8)] [tokens per sequence (256)] [reps (5)]
// (lm7m from $RSQ_SHARED_DIR or ../shared; the windows are seeded random token ids: the cost does not depend on them)
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <rsq/model/learn_rotation.hpp>
#include <rsq/model/llama2c.hpp>

#include "support/median_seconds.hpp"

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  long const sequences = argc > 1 ? std::atol(argv[1]) : 8;
  long const tokens = argc > 2 ? std::atol(argv[2]) : 256;
  int const reps = argc > 3 ? std::atoi(argv[3]) : 5;
  fs::path const shared = std::getenv("RSQ_SHARED_DIR") ? fs::path(std::getenv("RSQ_SHARED_DIR")) : fs::path("../shared");
  auto const model = rsq::model::load_llama2c_checkpoint(shared / "data/models/lm7m/llama2c/model.bin");
  auto const& c = model.config;
  auto ids = rsq::make_matrix<std::int32_t>(sequences, tokens);
  std::uint64_t state = 1;
  for (auto& t : ids) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    t = std::int32_t((state >> 33) % std::uint64_t(c.vocab_size));
  }
  rsq::backend::cpu_eigen const be{};
  rsq::model::learn_rotation_options opt;
  opt.sequences_per_step = sequences;
  opt.grid.bits = 4;
  auto const problem = rsq::model::make_rotation_problem<float>(model, opt.rotation);
  auto rotation = rsq::model::initial_rotation(rsq::model::plan_rotation(c, opt.rotation), c);
  rsq::model::rotation_workspace<float> ws;
  rsq::model::rotation_loss_options const lo{.grid = opt.grid, .group_size = -1, .chunk_sequences = 4};
  rsq::model::rotation_gradient g;
  double const objective = rsq_bench::median_seconds(reps, [&] {
    g = rsq::model::rotation_loss_and_gradient(be, problem, rotation, rsq::view(std::as_const(ids)), lo,
                                               static_cast<rsq::model::quantization_offsets<float> const*>(nullptr), &ws);
  });
  rsq::rotation::cayley_sgd sgd;
  double const cayley = rsq_bench::median_seconds(reps, [&] {
    auto r = rotation;
    (void)sgd.step(0, r.r1, g.grad.r1, 1.0);
    for (std::size_t l = 0; l < r.r2.size(); ++l) (void)sgd.step(1 + l, r.r2[l], g.grad.r2[l], 1.0);
  });
  opt.steps = reps;
  auto const learned = rsq::model::learn_rotation(be, model, rsq::view(std::as_const(ids)), opt);
  std::printf("lm7m (dim %d, hidden %d, %d layers), %ld sequences x %ld tokens per step, 4-bit per-row fake quantization\n",
              c.dim, c.hidden_dim, c.n_layers, sequences, tokens);
  std::printf("| part | seconds |\n|---|---|\n");
  std::printf("| loss and gradient (forward + reverse, median of %d) | %.3f |\n", reps, objective);
  std::printf("| Cayley updates of R1 and the %d R2 (median of %d) | %.4f |\n", c.n_layers, reps, cayley);
  std::printf("| learn_rotation, per step (mean of %d steps) | %.3f |\n", reps, learned.seconds / double(reps));
  return 0;
}
