// SPDX-License-Identifier: MIT
#pragma once
// Learned rotations (SpinQuant, docs/learned-rotations.md) in the rsq tools, the same in each: the --spin-* options,
// --save-rotation and --load-rotation (their help text, parsed and checked before any work), and the step that
// learns R1/R2 on the calibration windows (printing the loss curve, saving it when asked) or loads them.

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <rsq/backend/tags.hpp>
#include <rsq/core/view.hpp>
#include <rsq/model/learn_rotation.hpp>
#include <rsq/model/learned_rotation.hpp>
#include <rsq/model/llama.hpp>
#include <rsq/model/rotate.hpp>
#include <rsq/quant/grid.hpp>

#include "support/args.hpp"
#include "support/output.hpp"

namespace rsq_cli {

/// The help lines of the options parse_learned_rotation() reads (each tool describes --rotation learned and
/// --method spinquant itself).
inline constexpr char learned_rotation_help[] =
    "  --spin-steps N        learning steps (default 100)    --spin-lr X   learning rate, cosine decay (default 1.5)\n"
    "  --spin-sequences N    calibration windows per step (default 8)   --spin-momentum B   (default 0)\n"
    "  --save-rotation P     write the learned R1, R2 as P.r1.npy, P.r2.npy (float64)\n"
    "  --load-rotation P     use P.r1.npy, P.r2.npy instead of learning\n";

/// The valued options of learned_rotation_help.
inline std::vector<std::string> const learned_rotation_options = {
    "spin-steps", "spin-lr", "spin-sequences", "spin-momentum", "save-rotation", "load-rotation"};

/// A tool's valued options @p valued and those of learned_rotation_help, for rsq_cli::args.
[[nodiscard]] inline std::set<std::string> with_learned_rotation_options(std::set<std::string> valued) {
  valued.insert(learned_rotation_options.begin(), learned_rotation_options.end());
  return valued;
}

/// What the command line asks of a learned rotation.
struct learned_rotation_config {
  bool enabled = false;                      ///< --rotation learned or --method spinquant
  rsq::model::learn_rotation_options learn;  ///< --spin-*, the fake quantizer, the start and the online Hadamards
  std::string load, save;                    ///< --load-rotation / --save-rotation prefixes (empty: not given)
};

/// Reads the options of learned_rotation_help. @p enabled: the tool's --rotation learned or --method spinquant;
/// without it every option above is refused. The fake quantizer of the learning is the run's @p grid without its clip
/// search (GPTQ's, a grid search per row at every step) and @p group_size; the learning starts from @p rotation's Q
/// (kind, seed; also the seed of the order of the windows) and folds in the online Hadamards it names, exactly as
/// quantize_model() will. The files are checked here: --load-rotation's must be readable, --save-rotation's writable
/// (existing ones only with @p overwrite).
/// @throws usage_error naming the option
[[nodiscard]] inline learned_rotation_config parse_learned_rotation(args const& a, bool enabled,
                                                                    rsq::quant::grid_spec const& grid,
                                                                    rsq::index_t group_size,
                                                                    rsq::model::rotate_options const& rotation,
                                                                    bool overwrite) {
  learned_rotation_config c;
  c.enabled = enabled;
  if (!enabled) {
    for (auto const& opt : learned_rotation_options)
      if (a.has(opt)) throw usage_error("--" + opt + " needs --rotation learned or --method spinquant");
    return c;
  }
  if (a.has("load-rotation") && a.has("save-rotation"))
    throw usage_error("--load-rotation and --save-rotation exclude each other");
  if (rotation.center_embeddings) throw usage_error("--center-embeddings does not go with a learned rotation");
  c.learn.steps = a.integer("spin-steps", 100);
  c.learn.learning_rate = a.number("spin-lr", 1.5);
  c.learn.sequences_per_step = a.integer("spin-sequences", 8);
  c.learn.momentum = a.number("spin-momentum", 0.0);
  c.learn.grid = grid;
  c.learn.grid.clip.enabled = false;
  c.learn.group_size = group_size;
  c.learn.seed = rotation.seed;
  c.learn.rotation = rotation;
  c.learn.rotation.learned = nullptr;
  try {
    c.learn.validate();
  } catch (rsq::invalid_argument const& e) {
    std::string msg = e.what();
    throw usage_error(msg.rfind("rsq: ", 0) == 0 ? msg.substr(5) : msg);
  }
  c.load = a.get("load-rotation");
  c.save = a.get("save-rotation");
  for (char const* suffix : {".r1.npy", ".r2.npy"}) {
    if (!c.load.empty()) expect_readable_file(c.load + suffix, "--load-rotation");
    if (!c.save.empty()) check_output_file(c.save + suffix, "--save-rotation", overwrite);
  }
  return c;
}

/// A learned or loaded rotation, for rotate_options::learned.
struct learned_rotation_outcome {
  std::shared_ptr<rsq::model::learned_rotation const> rotation;
  double seconds = 0;  ///< learning (or loading) and saving
};

/// The learned rotation of @p c for the plain model @p fp: loaded from --load-rotation (checked against the model),
/// or learned on @p calibration (sequences, L) with a progress line per step on stderr (unless @p quiet), the loss
/// curve on stdout ("rotation loss curve (N steps, s): ...") and --save-rotation's files written. The model and the
/// windows are checked before the learning starts. @p be is the tool's backend; the learning runs on the CPU (the
/// reverse pass has no CUDA version yet). @p tool prefixes the messages.
/// @throws usage_error for a model with biases or fewer windows than --spin-sequences; rsq::invalid_argument or
///         rsq::io_error for rotation files that do not fit the model or cannot be read or written
template <class B>
[[nodiscard]] learned_rotation_outcome learn_or_load_rotation(B const& be, char const* tool,
                                                              learned_rotation_config const& c,
                                                              rsq::model::llama_model const& fp,
                                                              rsq::matrix_view<const std::int32_t> calibration,
                                                              bool quiet) {
  auto const& mc = fp.config;
  if (mc.qkv_bias || mc.o_bias || mc.mlp_bias)
    throw usage_error("--rotation learned: models with biases (Qwen2's q/k/v) are not supported yet");
  auto const t0 = std::chrono::steady_clock::now();
  auto const since = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  if (!c.load.empty())
    return {std::make_shared<rsq::model::learned_rotation const>(rsq::model::load_learned_rotation(c.load, mc)),
            since()};
  if (calibration.rows() < c.learn.sequences_per_step)
    throw usage_error("--spin-sequences " + std::to_string(c.learn.sequences_per_step) + " exceeds the " +
                      std::to_string(calibration.rows()) + " calibration windows (--nsamples)");
  auto const on_step = [&](rsq::index_t step, double loss) {
    if (!quiet) std::fprintf(stderr, "%s: rotation step %td/%td loss %.5f\n", tool, step + 1, c.learn.steps, loss);
  };
  auto learned = rsq::model::learn_rotation(be, fp, calibration, c.learn, on_step);
  if (learned.status != rsq::rotation::cayley_status::ok)
    std::fprintf(stderr, "%s: warning: a gradient was not finite after %zu steps; using the last finite rotation\n",
                 tool, learned.loss.size());
  std::printf("rotation loss curve (%zu steps, %.1f s):", learned.loss.size(), learned.seconds);
  for (double l : learned.loss) std::printf(" %.5f", l);
  std::printf("\n");
  std::fflush(stdout);
  if (!c.save.empty()) {
    rsq::model::save_learned_rotation(c.save, learned.rotation);
    if (!quiet) std::fprintf(stderr, "%s: wrote %s.r1.npy and .r2.npy\n", tool, c.save.c_str());
  }
  return {std::make_shared<rsq::model::learned_rotation const>(std::move(learned.rotation)), since()};
}

}  // namespace rsq_cli
