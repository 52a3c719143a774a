// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// learn_rotation(): SpinQuant's rotation learning (arXiv 2405.16406) for a Llama-architecture model. Starting from
/// QuaRot's rotation (R1 = the randomized Hadamard Q of `rotation.seed`, R2 = the per-head Hadamard), every step
/// draws `sequences_per_step` calibration windows, evaluates the next-token cross-entropy through the rotated weights
/// fake-quantized by RTN at the target grid (model/rotation_gradient.hpp, straight-through) and its gradient with
/// respect to R1 and every layer's R2, and moves them by Cayley SGD on the Stiefel manifold
/// (rotation/cayley_sgd.hpp) with a cosine-decayed learning rate. The result, with the loss of every step, goes to
/// quantize_model() through rotate_options::learned: GPTQ on it is SpinQuant's W-only recipe, RSQ on it adds the
/// AttnCon-scaled Hessians.
///
/// Defaults are SpinQuant's (100 steps, learning rate 1.5 with cosine decay, 8 sequences per step: one per GPU on
/// their eight) with the calibration windows the caller gives (SpinQuant: 800 × 2048 tokens for a 7B model).
/// Deterministic: the windows of each step come from a seeded shuffle, and the objective and the optimizer give the
/// same bits for any thread count.

#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <vector>

#include "rsq/backend/tags.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/precision.hpp"
#include "rsq/core/random.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/model/learned_rotation.hpp"
#include "rsq/model/llama.hpp"
#include "rsq/model/rotate.hpp"
#include "rsq/model/rotation_gradient.hpp"
#include "rsq/quant/grid.hpp"
#include "rsq/rotation/cayley_sgd.hpp"

namespace rsq::model {

/// Options of learn_rotation(). Defaults: SpinQuant's (file comment), 4-bit symmetric per-row RTN without clip
/// search as the fake quantizer.
struct learn_rotation_options {
  index_t steps = 100;              ///< Cayley SGD steps
  double learning_rate = 1.5;       ///< η before the cosine decay
  double momentum = 0.0;            ///< β of the Cayley SGD (SpinQuant: 0)
  index_t sequences_per_step = 8;   ///< calibration windows per step
  std::uint64_t seed = 0;           ///< order in which the windows are drawn
  /// The fake quantizer: the target bits and symmetry; the clip search is off by default (it is GPTQ's, and would
  /// cost a grid search per row at every step).
  quant::grid_spec grid = {.bits = 4, .symmetric = true, .conv = quant::convention::rsq, .clip = {.enabled = false}};
  index_t group_size = -1;          ///< −1: per row
  bool fake_quantize = true;        ///< false: learn against the unquantized model (its loss is then flat)
  bool learn_r2 = true;             ///< false: R2 stays the per-head Hadamard
  /// The starting rotation (Q's kind and seed) and the online Hadamards of the pipeline that will use the result;
  /// `learned` and `center_embeddings` must be unset.
  rotate_options rotation = {};
  index_t chunk_sequences = 4;      ///< sequences per forward/backward pass (memory: about 50 MB each on lm7m)
  /// Inputs of the objective's matrix products (rotation_loss_options::precision): bf16 is an opt-in for the GPU.
  matmul_precision precision = matmul_precision::fp32;

  /// Throws rsq::invalid_argument naming the first bad option.
  void validate() const {
    RSQ_EXPECTS(steps >= 1, "learn_rotation: steps must be at least 1, got ", steps);
    RSQ_EXPECTS(std::isfinite(learning_rate) && learning_rate > 0, "learn_rotation: the learning rate must be positive, "
                "got ", learning_rate);
    rotation::cayley_sgd_options{.momentum = momentum}.validate();
    RSQ_EXPECTS(sequences_per_step >= 1, "learn_rotation: sequences_per_step must be at least 1, got ",
                sequences_per_step);
    grid.validate();
    RSQ_EXPECTS(group_size == -1 || group_size > 0, "learn_rotation: group_size must be -1 (per row) or positive, got ",
                group_size);
    RSQ_EXPECTS(chunk_sequences >= 1, "learn_rotation: chunk_sequences must be at least 1, got ", chunk_sequences);
    RSQ_EXPECTS(rotation.learned == nullptr, "learn_rotation: rotation.learned must be empty (it is the result)");
  }
};

/// What learn_rotation() learned.
struct learn_rotation_result {
  learned_rotation rotation;   ///< R1 and every layer's R2
  std::vector<double> loss;    ///< the fake-quantized loss of each step's batch, before its update
  std::vector<double> step_size;  ///< α of R1's Cayley step (the learning rate after the cap 1/‖W‖₁)
  /// not_finite: a gradient held NaN or Inf at step `loss.size() − 1`; the rotation is the last finite one.
  rotation::cayley_status status = rotation::cayley_status::ok;
  double seconds = 0;          ///< wall time of the steps
};

/// Called after every step with its index and the batch's loss.
using learn_rotation_observer = std::function<void(index_t step, double loss)>;

/// Learns R1 and R2 for @p m (a plain model) on @p calibration windows (sequences, L), as the file comment says.
/// @throws rsq::invalid_argument for bad options, a malformed, rotated or biased model, calibration windows that are
///         empty, shorter than 2 tokens, longer than seq_len, fewer than sequences_per_step, or hold ids outside the
///         vocabulary
template <backend_tag B>
[[nodiscard]] learn_rotation_result learn_rotation(B const& be, llama_model const& m,
                                                   matrix_view<const std::int32_t> calibration,
                                                   learn_rotation_options const& opt = {},
                                                   learn_rotation_observer const& on_step = {}) {
  opt.validate();
  RSQ_EXPECTS(calibration.rows() >= opt.sequences_per_step, "learn_rotation: ", calibration.rows(),
              " calibration windows for ", opt.sequences_per_step, " sequences per step");
  auto const problem = make_rotation_problem<float>(be, m, opt.rotation);
  rotation_detail::expect_tokens(problem, calibration, "learn_rotation");
  auto const& c = m.config;
  auto const t0 = std::chrono::steady_clock::now();
  learn_rotation_result out;
  out.rotation = initial_rotation(plan_rotation(c, opt.rotation), c);
  rotation_loss_options const lopt{.grid = opt.fake_quantize ? std::optional(opt.grid) : std::nullopt,
                                   .group_size = opt.group_size,
                                   .chunk_sequences = opt.chunk_sequences,
                                   .precision = opt.precision};
  rotation::cayley_sgd sgd({.momentum = opt.momentum});
  rotation_workspace<float, B> workspace;
  // Windows are drawn without replacement from a seeded shuffle, reshuffled (seed + epoch) when used up.
  index_t const S = calibration.rows(), L = calibration.cols(), batch = opt.sequences_per_step;
  std::vector<index_t> order(static_cast<std::size_t>(S), index_t(0));
  index_t next = S, epoch = 0;
  auto ids = rsq::make_matrix<std::int32_t>(batch, L);
  for (index_t step = 0; step < opt.steps; ++step) {
    for (index_t b = 0; b < batch; ++b) {
      if (next == S) {
        std::iota(order.begin(), order.end(), index_t(0));
        std::uint64_t const seed = opt.seed * 0x9E3779B97F4A7C15ull + std::uint64_t(epoch++);
        for (index_t i = S - 1; i > 0; --i)  // Fisher–Yates on the SplitMix64 stream of the seed
          std::swap(order[std::size_t(i)],
                    order[std::size_t(random::splitmix64::at(seed, std::uint64_t(i)) % std::uint64_t(i + 1))]);
        next = 0;
      }
      index_t const row = order[std::size_t(next++)];
      for (index_t t = 0; t < L; ++t) ids(std::size_t(b), std::size_t(t)) = calibration(row, t);
    }
    auto const g = rotation_loss_and_gradient(be, problem, out.rotation, matrix_view<const std::int32_t>(rsq::view(ids)),
                                              lopt, static_cast<quantization_offsets<float, B> const*>(nullptr),
                                              &workspace);
    out.loss.push_back(g.loss);
    double const lr = rotation::cosine_learning_rate(opt.learning_rate, step, opt.steps);
    // Every matrix steps on its own generator (SpinQuant's optimizer treats each parameter separately); a
    // non-finite gradient stops the learning with the last finite rotation.
    auto candidate = out.rotation;
    auto status = sgd.step(be, 0, candidate.r1, g.grad.r1, lr);
    out.step_size.push_back(sgd.last_step_size());
    for (std::size_t l = 0; opt.learn_r2 && status == rotation::cayley_status::ok && l < candidate.r2.size(); ++l)
      status = sgd.step(be, 1 + l, candidate.r2[l], g.grad.r2[l], lr);
    if (status != rotation::cayley_status::ok || !std::isfinite(g.loss)) {
      out.status = rotation::cayley_status::not_finite;
      break;
    }
    out.rotation = std::move(candidate);
    if (on_step) on_step(step, g.loss);
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace rsq::model
