// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Layer-by-layer quantization of a whole Llama-architecture model (spec §1 step 5, §4, §5, §6): the RTN, GPTQ,
/// QuaRot and RSQ methods of the reference code base, and the perplexity evaluation (§9.1).
///
/// For each decoder layer ℓ, one after another, on calibration windows X (sequences, L):
///  1. the layer's inputs are the outputs of the already-quantized layers < ℓ;
///  2. **importance** (RSQ "Scale", §4, §5.2): one weight per token and sequence, from the layer's own full-precision
///     attention (AttnCon, streamed from the post-RoPE Q/K of the forward hooks) or any other policy, computed once,
///     before any linear of the layer is quantized;
///  3. **true-sequential groups** [q, k, v] → [o] → [w1, w3] → [w2]: for each group a forward pass of the layer (with
///     the groups before it already quantized) collects the inputs of the group's linears (after the online Hadamards
///     of a rotated model), the importance-weighted Hessian H = (2/N) Σ_j Σ_t w_jt x_jt x_jtᵀ (w = L·r^p/Σr^p per
///     sequence, §5.1) is accumulated once per group (q/k/v share one, w1/w3 share one), and GPTQ (§6) quantizes each
///     linear of the group;
///  4. the quantized layer's outputs become the next layer's inputs.
///
/// Everything runs on the backend given as the first argument: the calibration activations, the rotation and its
/// online Hadamards, the importances, the Hessians, one factorization per shared Hessian (q/k/v; w1/w3), the solves
/// and the next layer's inputs stay in the backend's memory; only the layer being quantized has its weights there
/// (so a model larger than a GPU's memory still runs), and its results go back to the host model when it is done.
/// Each group's Hessian needs only the part of the layer before the group: the passes over the calibration tokens
/// (in chunks of sequences) recompute no more than that (q/k/v: the normalised input; o: the attention with the
/// quantized q/k/v, kept for the residual; w1/w3: the normalised residual; w2: the SwiGLU of the quantized w1/w3).
///
/// Methods: `rtn` (round to nearest, no calibration), `gptq` (GPTQ, no rotation, uniform tokens), `quarot` (rotation
/// of spec §2 + GPTQ, uniform tokens), `rsq` (rotation + GPTQ with AttnCon token importance). Defaults are those of
/// the RSQ scripts (§8.3): 3 bits, symmetric, rsq quantizer convention, MSE clip search on, per-row groups, percdamp
/// 0.01, damping escalation on (`--add_until_fail`), importance range [0.005, 1], importance power 1, no expansion.

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "rsq/backend/memory.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/backend/transfer.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/half.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/gptq/options.hpp"
#include "rsq/gptq/proxy_loss.hpp"
#include "rsq/gptq/result.hpp"
#include "rsq/gptq/solve.hpp"
#include "rsq/hessian/accumulator.hpp"
#include "rsq/hessian/options.hpp"
#include "rsq/hessian/weights.hpp"
#include "rsq/importance/activation_scores.hpp"
#include "rsq/importance/policy.hpp"
#include "rsq/importance/token_frequency.hpp"
#include "rsq/linalg/elementwise.hpp"
#include "rsq/model/calibration.hpp"
#include "rsq/model/forward.hpp"
#include "rsq/model/learned_rotation.hpp"
#include "rsq/model/learned_rotation.hpp"
#include "rsq/model/llama.hpp"
#include "rsq/model/rotate.hpp"
#include "rsq/quant/grid.hpp"
#include "rsq/quant/quantized_weight.hpp"
#include "rsq/quant/rtn.hpp"

namespace rsq::model {

/// The quantization methods of the reference code base (spec §1 "Baselines").
enum class quant_method {
  rtn,     ///< round to nearest, per row or group; no calibration, no rotation
  gptq,    ///< GPTQ on the unrotated model, uniform token weights
  quarot,  ///< rotation (§2) + GPTQ, uniform token weights
  rsq,     ///< rotation + GPTQ with token importance (AttnCon by default)
};

/// "rtn", "gptq", "quarot" or "rsq".
[[nodiscard]] constexpr std::string_view to_string(quant_method m) noexcept {
  switch (m) {
    case quant_method::rtn: return "rtn";
    case quant_method::gptq: return "gptq";
    case quant_method::quarot: return "quarot";
    case quant_method::rsq: return "rsq";
  }
  return "?";
}

/// All methods, in the order of a comparison table.
inline constexpr quant_method all_quant_methods[] = {quant_method::rtn, quant_method::gptq, quant_method::quarot,
                                                     quant_method::rsq};

/// Parses "rtn", "gptq", "quarot" or "rsq". @throws rsq::invalid_argument for anything else.
[[nodiscard]] inline quant_method parse_quant_method(std::string_view s) {
  for (quant_method m : all_quant_methods)
    if (s == to_string(m)) return m;
  rsq::detail::throw_invalid_argument("method: unknown method \"", s, "\"; expected rtn, gptq, quarot or rsq");
}

/// True for the methods that rotate the model first (quarot, rsq).
[[nodiscard]] constexpr bool rotates(quant_method m) noexcept {
  return m == quant_method::quarot || m == quant_method::rsq;
}

/// The RSQ scripts' quantizer (spec §8.3): symmetric, rsq convention, MSE clip search on.
[[nodiscard]] constexpr quant::grid_spec rsq_script_grid(int bits = 3) noexcept {
  return quant::grid_spec{.bits = bits, .symmetric = true, .conv = quant::convention::rsq, .clip = {.enabled = true}};
}

/// How quantize_options::choice picks the token weighting of each linear's Hessian (beyond the paper, opt-in).
enum class importance_choice {
  off,     ///< the policy's weights, on every calibration window (the paper)
  choose,  ///< per linear, uniform or the policy's weights (α ∈ {0, 1}), whichever predicts held-out tokens better
  blend,   ///< per linear, the best of α ∈ {0, 0.25, 0.5, 0.75, 1} in α·H_policy + (1 − α)·H_uniform
};

/// "off", "choose" or "blend".
[[nodiscard]] constexpr std::string_view to_string(importance_choice c) noexcept {
  switch (c) {
    case importance_choice::off: return "off";
    case importance_choice::choose: return "choose";
    case importance_choice::blend: return "blend";
  }
  return "?";
}

/// Parses "off", "choose" or "blend". @throws rsq::invalid_argument for anything else.
[[nodiscard]] inline importance_choice parse_importance_choice(std::string_view s) {
  for (importance_choice c : {importance_choice::off, importance_choice::choose, importance_choice::blend})
    if (s == to_string(c)) return c;
  rsq::detail::throw_invalid_argument("importance choice: unknown choice \"", s, "\"; expected off, choose or blend");
}

/// Options of quantize_model(). Defaults: the RSQ scripts (spec §8.3).
struct quantize_options {
  quant_method method = quant_method::rsq;
  quant::grid_spec grid = rsq_script_grid(3);  ///< bits, symmetry, convention, clip search
  gptq::options solver = {};                   ///< group_size (−1: per row), percdamp, escalation, act-order, ...
  /// Token importance. Empty: AttnCon with [0.005, 1] for rsq, uniform for gptq and quarot. Setting it for gptq
  /// or quarot gives importance-scaled GPTQ without / with rotation (the ablations of the paper).
  std::optional<importance::any_policy> policy = std::nullopt;
  double importance_power = 1.0;      ///< Hessian weights w ∝ r^p (spec §5.3; 1 = the released code)
  index_t expand_factor = 1;          ///< dataset expansion by cyclic shifts (§8.2), 1 = off
  /// An importance that never hurts (beyond the paper; off by default). With `choose` or `blend`, the last
  /// `held_out` of the calibration windows (before expansion; their cyclic shifts with them) are held out: they flow
  /// through the forward passes like the others, but no Hessian that is solved with contains them. Per
  /// true-sequential group the fitting windows give H_policy (the policy's token weights) and H_uniform, the held-out
  /// windows H_ho (uniform); every linear of the group is solved with each candidate H_α = α·H_policy +
  /// (1 − α)·H_uniform and keeps the Q whose held-out output error tr((W − Q)·H_ho·(W − Q)ᵀ) is the smallest (the
  /// smaller α on a tie), the squared error of the linear's outputs on the held-out tokens. linear_report records the
  /// α kept and every candidate's error. Needs a policy that is not uniform (rsq's AttnCon, or `policy`); costs one
  /// factorization and one solve per candidate, and the held-out windows no longer calibrate.
  importance_choice choice = importance_choice::off;
  /// The fraction of the calibration windows held out by `choice` (rounded to the nearest count; at least one window
  /// must be held out and one must remain). Unused when `choice` is off.
  double held_out = 0.25;
  /// The candidates' α for `choice`, increasing, in [0, 1]; empty: the choice's own ({0, 1} for choose, {0, 0.25,
  /// 0.5, 0.75, 1} for blend). A single α fixes the weighting (α = 1: the policy's, 0: uniform, both on the fitting
  /// windows only).
  std::vector<double> choice_alphas = {};
  rotate_options rotation = {};       ///< quarot and rsq: Q kind, seed, embedding centring
  /// Rotate before quantizing; empty: the method's own choice (quarot and rsq rotate). `rotate = true` with rtn is
  /// QuaRot-RTN, `rotate = false` with rsq is importance-scaled GPTQ without rotation (ablations).
  std::optional<bool> rotate = std::nullopt;
  bool double_precision = false;      ///< accumulate Hessians and solve in float64 (default: float32, as the reference)
  forward_options forward = {};       ///< calibration forward passes: fp32, or bf16 products as an opt-in
  hessian::options hessian = {};      ///< Hessian arithmetic: strict, or TF32 / bf16 inputs as opt-ins
  /// Calibration tokens per chunk of a pass (whole sequences); 0 chooses about 1 GiB of layer buffers on the CPU,
  /// 8 GiB on a device.
  index_t chunk_tokens = 0;
  /// Report tr((W − Q)·H·(W − Q)ᵀ) per linear (a float64 product per linear on the backend).
  bool proxy_loss = true;

  /// Throws rsq::invalid_argument naming the first bad option.
  void validate() const {
    grid.validate();
    solver.validate();
    RSQ_EXPECTS(std::isfinite(importance_power) && importance_power > 0,
                "quantize options: importance_power must be positive, got ", importance_power);
    RSQ_EXPECTS(expand_factor >= 1, "quantize options: expand_factor must be at least 1, got ", expand_factor);
    RSQ_EXPECTS(method != quant_method::rtn || !policy.has_value(),
                "quantize options: rtn uses no calibration, so a token-importance policy does not apply");
    RSQ_EXPECTS(method != quant_method::rtn || expand_factor == 1,
                "quantize options: rtn uses no calibration, so expand_factor does not apply");
    RSQ_EXPECTS(chunk_tokens >= 0, "quantize options: chunk_tokens must be >= 0 (0: automatic), got ", chunk_tokens);
    if (choice == importance_choice::off) {
      RSQ_EXPECTS(choice_alphas.empty(), "quantize options: choice_alphas need an importance choice (choose or blend)");
    } else {
      RSQ_EXPECTS(method != quant_method::rtn, "quantize options: rtn uses no calibration, so importance choice ",
                  to_string(choice), " does not apply");
      RSQ_EXPECTS(!std::holds_alternative<importance::uniform>(effective_policy().get()),
                  "quantize options: importance choice ", to_string(choice), " chooses between uniform weights and "
                  "the policy's, but the policy is uniform (use rsq, or set a policy such as attncon)");
      RSQ_EXPECTS(std::isfinite(held_out) && held_out > 0 && held_out < 1,
                  "quantize options: held_out must be a fraction in (0, 1), got ", held_out);
      for (std::size_t i = 0; i < choice_alphas.size(); ++i) {
        double const a = choice_alphas[i];
        RSQ_EXPECTS(a >= 0 && a <= 1, "quantize options: choice_alphas must lie in [0, 1], got ", a);
        RSQ_EXPECTS(i == 0 || a > choice_alphas[i - 1], "quantize options: choice_alphas must increase, got ",
                    choice_alphas[i - 1], " then ", a);
      }
    }
    quant::check_block_grouping(grid, solver.group_size, solver.act_order, solver.static_groups, "quantize options");
    RSQ_EXPECTS(!double_precision || hessian.precision == hessian::precision::strict,
                "quantize options: the TF32 and bf16 Hessians are float opt-ins; double_precision accumulates in fp64");
  }

  /// Whether the model is rotated first (see `rotate`).
  [[nodiscard]] bool rotates_model() const noexcept { return rotate.value_or(rotates(method)); }

  /// The α of the candidates `choice` tries (see `choice_alphas`); empty when `choice` is off.
  [[nodiscard]] std::vector<double> candidate_alphas() const {
    if (choice == importance_choice::off) return {};
    if (!choice_alphas.empty()) return choice_alphas;
    if (choice == importance_choice::choose) return {0.0, 1.0};
    return {0.0, 0.25, 0.5, 0.75, 1.0};
  }

  /// The policy the method uses (see `policy`).
  [[nodiscard]] importance::any_policy effective_policy() const {
    if (policy) return *policy;
    if (method == quant_method::rsq) return importance::any_policy::parse("attncon");
    return importance::any_policy{};
  }
};

/// The true-sequential groups of the reference (§1 step 5c): linears of a group share their input and are quantized
/// together, after every group before them.
inline constexpr std::array<std::array<linear_id, 3>, 4> true_sequential_groups = {{
    {linear_id::wq, linear_id::wk, linear_id::wv},
    {linear_id::wo, linear_id::wo, linear_id::wo},
    {linear_id::w1, linear_id::w3, linear_id::w3},
    {linear_id::w2, linear_id::w2, linear_id::w2},
}};
/// Number of distinct linears in each of true_sequential_groups.
inline constexpr std::array<int, 4> true_sequential_group_sizes = {3, 1, 2, 1};

/// Outcome of one linear.
struct linear_report {
  linear_id linear = linear_id::wq;
  gptq::status info = gptq::status::ok;
  int damp_attempts = 0;         ///< factorization attempts (1 = the first damping sufficed; 0 for rtn)
  double damp_percent_used = 0;  ///< k · percdamp of the successful (or last) attempt
  /// GPTQ: the proxy loss tr((W − Q)·H·(W − Q)ᵀ) with the undamped H (0 without quantize_options::proxy_loss);
  /// rtn: ‖W − Q‖²_F.
  double loss = 0;
  /// GPTQ: Σ (w − q)²/(2 d²) over the weight, the reference's printed "error"; rtn: 0.
  double gptq_loss = 0;
  double seconds = 0;
  /// Not quantized: the grid cannot hold the linear's input size (llama.cpp's blocks need a multiple of 32 columns).
  /// Its weight is rounded to fp16 instead, as a GGUF stores it, and its quantized_weight stays empty.
  bool kept = false;
  /// quantize_options::choice: the α of the Hessian α·H_policy + (1 − α)·H_uniform whose Q was kept (empty without
  /// a choice). `loss` is then the proxy loss with that Hessian.
  std::optional<double> importance_alpha = std::nullopt;
  /// quantize_options::choice: the held-out output error tr((W − Q_α)·H_ho·(W − Q_α)ᵀ) of each candidate, in the
  /// order of quantize_options::candidate_alphas() (+inf where a candidate's Hessian stayed not positive definite).
  std::vector<double> held_out_losses = {};
};

/// Seconds spent in each part of quantize_model() (each part waits for the backend's work before it is timed).
struct pipeline_timings {
  double rotation = 0;       ///< rotating the embeddings and every layer
  double importance = 0;     ///< token importances (policy)
  double forward = 0;        ///< calibration forward passes (embedding, layers)
  double hessian = 0;        ///< Hessian accumulation
  double factorization = 0;  ///< one factorization per shared Hessian
  double solver = 0;         ///< GPTQ solves / round to nearest
  double loss = 0;           ///< the proxy loss of each linear
  double copies = 0;         ///< weights to the backend and results back to the host model
  double total = 0;          ///< the whole call
  std::size_t peak_backend_bytes = 0;  ///< most backend memory in use at a layer's end (device backends; 0 on CPU)
};

/// Outcome of one decoder layer (handed to the progress callback).
struct layer_report {
  int layer = 0;
  int n_layers = 0;
  std::vector<linear_report> linears;  ///< in the order they were quantized
  double seconds = 0;
  pipeline_timings timings;  ///< seconds in each part so far, this layer included (`total` is set at the end only)
  [[nodiscard]] bool ok() const noexcept {
    for (auto const& l : linears)
      if (l.info != gptq::status::ok) return false;
    return true;
  }
};


/// Result of quantize_model().
struct quantized_model {
  /// The quantized model: dequantized weights, rotated (with the online Hadamards attached as input transforms) for
  /// quarot and rsq. Evaluate it with evaluate(); write it with save_quantized_checkpoint (model/export.hpp).
  llama_model model;
  /// weights[layer][int(linear_id)]: codes, scales, zeros, g_idx of every quantized linear (empty where a failure
  /// stopped the run).
  std::vector<std::vector<quant::quantized_weight<float>>> weights;
  std::optional<rotation_record> rotation;  ///< set when the model was rotated (quarot, rsq)
  std::vector<layer_report> layers;         ///< one per layer done

  gptq::status info = gptq::status::ok;  ///< not_positive_definite: the run stopped at failed_layer / failed_linear
  int failed_layer = -1;
  linear_id failed_linear = linear_id::wq;

  quant_method method = quant_method::rsq;
  quant::grid_spec grid{};
  index_t group_size = -1;
  bool act_order = false;  ///< columns quantized by decreasing diag(H) (g_idx is not monotone then)
  std::string policy;  ///< name of the importance policy used ("uniform", "attncon", ...; "none" for rtn)
  double importance_power = 1.0;
  index_t expand_factor = 1;
  index_t calibration_sequences = 0;  ///< after expansion
  importance_choice choice = importance_choice::off;
  /// quantize_options::choice: the held-out sequences (after expansion; the last ones), not in any solved Hessian.
  index_t held_out_sequences = 0;
  index_t calibration_tokens = 0;     ///< per sequence (L)
  pipeline_timings timings;

  [[nodiscard]] bool ok() const noexcept { return info == gptq::status::ok; }
  /// The quantized weight of @p id in layer @p layer.
  [[nodiscard]] quant::quantized_weight<float> const& weight(int layer, linear_id id) const {
    RSQ_EXPECTS(layer >= 0 && std::size_t(layer) < weights.size(), "quantized_model::weight: layer ", layer,
                " is outside [0, ", weights.size(), ")");
    return weights[std::size_t(layer)][std::size_t(id)];
  }
};

/// Callbacks of quantize_model(), all optional, called from the calling thread.
struct quantize_observer {
  /// After each layer (a progress line). On a device backend the layer's weights may still be on their way to the host
  /// model (backend::download_queue): read the model after quantize_model() returns.
  std::function<void(layer_report const&)> on_layer;
  /// The token importances of a layer, (sequences, L), when the policy is not uniform.
  std::function<void(int layer, rsq::matrix_view<const float> importances)> on_importances;
  /// The Hessian of a true-sequential group (its first linear names it), (in_features, in_features), as handed to
  /// the solver (converted to float64 for the callback).
  std::function<void(int layer, linear_id group, rsq::matrix<double> const& hessian)> on_hessian;
};

namespace pipeline_detail {

using clock = std::chrono::steady_clock;

[[nodiscard]] inline double seconds_since(clock::time_point t0) {
  return std::chrono::duration<double>(clock::now() - t0).count();
}

/// Adds the seconds of a scope to @p sink, after waiting for the work the scope queued on the backend.
template <backend_tag B>
class phase {
 public:
  phase(B const& be, double& sink) : be_(be), sink_(sink), t0_(clock::now()) {}
  ~phase() {
    try {
      backend::synchronize(be_);
    } catch (...) {  // the failure surfaces at the next call on the backend
    }
    sink_ += seconds_since(t0_);
  }
  phase(phase const&) = delete;
  phase& operator=(phase const&) = delete;

 private:
  B const& be_;
  double& sink_;
  clock::time_point t0_;
};

[[nodiscard]] inline bool is_uniform(importance::any_policy const& p) {
  return std::holds_alternative<importance::uniform>(p.get());
}

/// A decoder layer's weights in the backend's memory: the host layer's own arrays when they are already there (the
/// CPU backend), copies otherwise. A layer made from a const host layer is only read (weights()).
template <backend_tag B>
class resident_layer {
 public:
  resident_layer(B const& be, decoder_layer const& layer) : be_(be) {
    // The views are writable so that the pipeline can rotate and quantize the layers it owns through
    // mutable_weights(); a const layer (evaluate) is only read.
    auto& host = const_cast<decoder_layer&>(layer);
    resident_ = backend::resident(be, host.wq.data());
    auto const vec = [&](rsq::vector<float>& v) {
      if (v.size() == 0) return vector_view<float>{};  // no bias
      if (resident_) return vector_view<float>(v.data(), index_t(v.size()));
      owned_.push_back(backend::to_backend(be, matrix_view<const float>(v.data(), 1, index_t(v.size()))));
      return vector_view<float>(rsq::view(owned_.back()).data(), index_t(v.size()));
    };
    auto const mat = [&](rsq::matrix<float>& m) {
      if (resident_) return rsq::view(m);
      owned_.push_back(backend::to_backend(be, matrix_view<const float>(rsq::view(m))));
      return rsq::view(owned_.back());
    };
    owned_.reserve(16);
    w_ = {vec(host.rms_att), vec(host.rms_ffn), mat(host.wq), mat(host.wk), mat(host.wv), mat(host.wo),
          mat(host.w1),      mat(host.w2),      mat(host.w3), vec(host.bq), vec(host.bk), vec(host.bv),
          vec(host.bo),      vec(host.b1),      vec(host.b2), vec(host.b3)};
  }

  [[nodiscard]] layer_weights_mut const& mutable_weights() const noexcept { return w_; }
  [[nodiscard]] layer_weights weights() const noexcept {
    return {w_.rms_att, w_.rms_ffn, w_.wq, w_.wk, w_.wv, w_.wo, w_.w1, w_.w2, w_.w3, w_.bq, w_.bk, w_.bv,
            w_.bo,      w_.b1,      w_.b2, w_.b3};
  }
  [[nodiscard]] matrix_view<float> weight(linear_id l) const noexcept {
    return detail::select_linear(l, w_.wq, w_.wk, w_.wv, w_.wo, w_.w1, w_.w2, w_.w3);
  }

  /// Copies the gains and the v, o and down biases (changed by a rotation) back to the host layer (the weights go
  /// back one by one as they are quantized).
  void download_gains(decoder_layer& host) const {
    if (resident_) return;
    auto const down = [&](rsq::vector<float>& to, vector_view<float> from) {
      if (from.data()) backend::copy(be_, to.data(), from.data(), from.extent(0));
    };
    down(host.rms_att, w_.rms_att);
    down(host.rms_ffn, w_.rms_ffn);
    down(host.bv, w_.bv);
    down(host.bo, w_.bo);
    down(host.b2, w_.b2);
  }

 private:
  B be_;
  bool resident_ = true;
  std::vector<backend::matrix<float, B>> owned_;
  layer_weights_mut w_{};
};

/// A host array as the backend sees it: the array itself when it is in the backend's memory, else a copy.
template <backend_tag B>
struct backend_array {
  backend::matrix<float, B> owned{};
  matrix_view<const float> view{};
};
template <backend_tag B>
[[nodiscard]] backend_array<B> on_backend(B const& be, matrix_view<const float> host) {
  backend_array<B> a;
  if (backend::resident(be, host.data()) && host.is_contiguous()) {
    a.view = host;
  } else {
    a.owned = backend::to_backend(be, host);
    a.view = rsq::view(a.owned);
  }
  return a;
}

/// Whether grid @p g can quantize a linear with @p cols input columns (see linear_report::kept).
using quant::grid_holds;

/// A linear the grid cannot hold: its weight @p wf (on the backend) rounded to fp16 there and in the host model's
/// @p host.
template <backend_tag B>
void keep_in_f16(B const& be, matrix_view<float> wf, rsq::matrix<float>& host) {
  auto h = backend::to_host(be, matrix_view<const float>(wf));
  for (auto& v : h) v = f16_to_float(float_to_f16(v));
  backend::copy(be, wf.data(), h.data(), wf.size());
  if (host.data() != wf.data()) host = std::move(h);
}

/// The quantized weight in host memory as float (the solver may run in double).
template <class T>
[[nodiscard]] quant::quantized_weight<float> to_float_weight(quant::quantized_weight<T>&& q) {
  if constexpr (std::is_same_v<T, float>) {
    return std::move(q);
  } else {
    quant::quantized_weight<float> f;
    f.bits = q.bits;
    f.offset = q.offset;
    f.codes = std::move(q.codes);
    f.g_idx = std::move(q.g_idx);
    f.scales = rsq::matrix<float>::from_shape(q.scales.shape());
    f.zeros = rsq::matrix<float>::from_shape(q.zeros.shape());
    std::transform(q.scales.begin(), q.scales.end(), f.scales.begin(), [](T v) { return float(v); });
    std::transform(q.zeros.begin(), q.zeros.end(), f.zeros.begin(), [](T v) { return float(v); });
    return f;
  }
}

/// Sequences per chunk of a calibration pass, unless @p chunk_tokens is given: about 1 GiB of layer buffers on the
/// CPU (they stay in cache-friendly sizes) and 8 GiB on a device backend (large products keep a GPU busy).
template <backend_tag B>
[[nodiscard]] index_t chunk_sequences(llama_config const& c, index_t sequences, index_t seq_len, index_t chunk_tokens) {
  index_t const per_token = index_t(sizeof(float)) * (c.dim + 2 * c.q_dim() + 2 * c.kv_dim() + 2 * c.hidden_dim);
  index_t const budget = std::is_same_v<B, backend::cpu_eigen> ? index_t(1) << 30 : index_t(8) << 30;
  index_t const tokens = chunk_tokens > 0 ? chunk_tokens : std::max<index_t>(1, budget / per_token);
  return std::clamp<index_t>(tokens / seq_len, 1, sequences);
}

/// The backend memory the layer loop needs at its peak, in bytes: one layer's weights (and a float64 copy of the
/// largest for the rotation and the proxy loss), the residual stream and the attention output of every calibration
/// token, the layer buffers of a chunk, the largest Hessian with its factorization (with an importance choice: three
/// accumulators and one Hessian and factorization per each of @p candidates), and a solve's copies of a weight.
[[nodiscard]] inline std::size_t layer_bytes(llama_config const& c, index_t tokens, index_t chunk_tokens,
                                             bool double_precision, index_t candidates = 0) {
  double const f = 4, t = double_precision ? 8 : 4;
  double const d = c.dim, qd = c.q_dim(), h = c.hidden_dim, kv = c.kv_dim(), big = std::max({d, qd, h});
  double const weights = f * (2 * qd * d + 2 * kv * d + 3 * h * d) + 8 * big * d;
  double const stream = f * double(tokens) * (d + qd);
  double const chunk = f * double(chunk_tokens) * (d + 2 * qd + 2 * kv + 2 * h);
  double const choice = candidates > 0 ? (4 + 2 * double(candidates)) * t * big * big : 0;
  double const hessian = 2 * t * big * big + 2 * 8 * big * big + choice;
  double const solve = 4 * t * h * d;
  return std::size_t(weights + stream + chunk + hessian + solve);
}

/// Pinned staging memory for the downloads of the layer loop: two of the largest weights, at most 512 MiB.
[[nodiscard]] inline std::size_t staging_bytes(llama_config const& c) {
  std::size_t const largest = sizeof(float) * std::size_t(std::max(c.q_dim(), c.hidden_dim)) * std::size_t(c.dim);
  return std::min<std::size_t>(2 * largest, std::size_t(512) << 20);
}

/// The layer loop of quantize_model() for the GPTQ methods on backend B, Hessians and solves in precision T.
template <class T, backend_tag B>
class layer_quantizer {
 public:
  layer_quantizer(B const& be, quantized_model& q, rsq::matrix<std::int32_t> const& tokens,
                  quantize_options const& opt, importance::any_policy const& policy,
                  std::optional<rotation_plan> const& rotation, quantize_observer const& obs)
      : be_(be), q_(q), c_(q.model.config), tokens_(tokens), opt_(opt), policy_(policy), rotation_(rotation),
        obs_(obs), ws_(be), S_(index_t(tokens.shape()[0])), L_(index_t(tokens.shape()[1])),
        chunk_(chunk_sequences<B>(c_, S_, L_, opt.chunk_tokens)) {
    needs_ = policy.requirements();
    alphas_ = opt.candidate_alphas();
    S_fit_ = S_ - q.held_out_sequences;
    activation_ = importance::activation_form_of(policy);
    if (activation_) importance::validate(activation_->normalization, activation_->policy);
    if (!is_uniform(policy)) importance_ = rsq::make_matrix<float>(S_, L_);
    if (needs_.token_ids || needs_.token_frequency) {
      ids64_ = rsq::matrix<std::int64_t>::from_shape(tokens.shape());
      std::copy(tokens.begin(), tokens.end(), ids64_.begin());
      if (needs_.token_frequency)
        freq_ = importance::token_frequency::from_sequences(rsq::view(std::as_const(ids64_)));
    }
  }

  /// Quantizes every layer; stops at the first Hessian that stays not positive definite (recorded in q).
  void run(matrix_view<const float> embedding) {
    auto& tm = q_.timings;
    {
      phase<B> p(be_, tm.forward);
      x_ = backend::make_matrix<float>(be_, S_ * L_, c_.dim);  // (tokens, dim) the residual stream
      nn::embed(be_, rsq::view(tokens_), embedding, rsq::view(x_));
    }
    for (int l = 0; l < c_.n_layers; ++l) {
      bool const ok = layer(l);
      tm.peak_backend_bytes = std::max(tm.peak_backend_bytes, backend::bytes_in_use(be_));
      if (!ok) break;
    }
    phase<B> p(be_, tm.copies);
    downloads_.wait();  // the host model and q_.weights are complete from here on
  }

 private:
  using buf = typename forward_workspace<B>::buffer;

  [[nodiscard]] matrix_view<float> rows(matrix_view<float> m, index_t s0, index_t s1) const {
    return matrix_view<float>(m.data() + s0 * L_ * m.stride(0), {(s1 - s0) * L_, m.cols()}, m.strides());
  }
  [[nodiscard]] batch_view<const float> as_batch(matrix_view<const float> m) const {
    return batch_view<const float>(m.data(), {m.rows() / L_, L_, m.cols()}, {L_ * m.stride(0), m.stride(0), 1});
  }
  [[nodiscard]] matrix_view<const float> importance_rows(index_t s0, index_t s1) const {
    if (importance_.size() == 0) return {};
    return matrix_view<const float>(importance_.data() + s0 * L_, s1 - s0, L_);
  }

  /// Runs @p f(s0, s1) for every chunk of sequences [s0, s1).
  template <class F>
  void for_chunks(F&& f) {
    for (index_t s0 = 0; s0 < S_; s0 += chunk_) f(s0, std::min(S_, s0 + chunk_));
  }

  [[nodiscard]] layer_context<B> context(resident_layer<B> const& w, int l) {
    return layer_context<B>{be_, c_, w.weights(), q_.model.online, L_, l, ws_, opt_.forward, nullptr};
  }

  /// The importances of the sequences [s0, s1) from the full-precision layer (spec §5.2), into importance_.
  void chunk_importances(layer_context<B> const& ctx, index_t s0, index_t s1, matrix_view<const float> x) {
    auto& tm = q_.timings;
    phase<B> p(be_, tm.importance);
    index_t const n = s1 - s0;
    if (auto const* ac = std::get_if<importance::attncon>(&policy_.get())) {
      // AttnCon streamed from the FP queries and keys: no values, no output, no L x L probabilities.
      auto const scores = ws_.get(buf::scores, n, L_);
      auto aopt = attention_options_of(ctx);
      aopt.softmax_scale = ac->attention.softmax_scale;
      nn::causal_attention(be_, ws_.get(buf::q, n * L_, c_.q_dim()), ws_.get(buf::k, n * L_, c_.kv_dim()), {}, {}, aopt,
                           scores);
      auto const host = backend::to_host(be_, matrix_view<const float>(scores));  // (n, L)
      for (index_t j = 0; j < n; ++j) {
        auto const r = importance::normalize(vector_view<const float>(&host(j, 0), L_), ac->normalization);
        std::copy(r.begin(), r.end(), &importance_(s0 + j, 0));
      }
      return;
    }
    std::optional<backend::matrix<float, B>> y;  // the FP layer output, for the policies that read it
    if (needs_.x_out) {
      y.emplace(backend::make_matrix<float>(be_, x.rows(), x.cols()));
      linalg::convert(be_, x, rsq::view(*y));
      forward_layer(ctx, rsq::view(*y));
      // The FP forward reused the workspace: the caller's q/k/v input (the normalised x) is written again.
      nn::rms_norm(be_, x, ctx.weights.rms_att, c_.norm_eps, ws_.get(buf::norm, x.rows(), c_.dim));
    }
    if (activation_) {
      // ActNorm, ActDiff, TokenSim: the scores on the backend, only (n, L) of them to the host.
      auto const& a = *activation_;
      auto const x_out = y ? matrix_view<const float>(rsq::view(*y)) : matrix_view<const float>{};
      auto const scores = ws_.get(buf::scores, n, L_);
      importance::activation_scores(be_, a.statistic, a.reads_input ? x : x_out,
                                    a.statistic == importance::activation_statistic::distance ? x_out
                                                                                             : matrix_view<const float>{},
                                    L_, scores, a.names);
      auto const host = backend::to_host(be_, matrix_view<const float>(scores));  // (n, L)
      for (index_t j = 0; j < n; ++j) {
        auto const r = importance::normalize(vector_view<const float>(&host(j, 0), L_), a.normalization);
        std::copy(r.begin(), r.end(), &importance_(s0 + j, 0));
      }
      return;
    }
    // Any other policy on host copies of what it reads.
    auto const x_in = backend::to_host(be_, x);  // (n·L, dim)
    rsq::matrix<float> x_out;
    if (y) x_out = backend::to_host(be_, matrix_view<const float>(rsq::view(*y)));
    index_t const H = c_.n_heads, KV = c_.n_kv_heads, hd = c_.head_size();
    rsq::matrix<float> qh, kh;
    if (needs_.attention) {
      qh = backend::to_host(be_, matrix_view<const float>(ws_.get(buf::q, n * L_, c_.q_dim())));
      kh = backend::to_host(be_, matrix_view<const float>(ws_.get(buf::k, n * L_, c_.kv_dim())));
    }
    for (index_t j = 0; j < n; ++j) {
      importance::sequence_context sc;
      sc.tokens = L_;
      if (needs_.x_in) sc.x_in = matrix_view<const float>(&x_in(j * L_, 0), L_, c_.dim);
      if (needs_.x_out) sc.x_out = matrix_view<const float>(&x_out(j * L_, 0), L_, c_.dim);
      if (needs_.token_ids) sc.token_ids = rsq::view(std::as_const(ids64_))[s0 + j];
      if (freq_) sc.frequencies = &*freq_;
      if (needs_.attention) {
        sc.queries = batch_view<const float>(&qh(j * L_, 0), {H, L_, hd}, {hd, c_.q_dim(), 1});
        sc.keys = batch_view<const float>(&kh(j * L_, 0), {KV, L_, hd}, {hd, c_.kv_dim(), 1});
      }
      auto const r = policy_.weights(sc);  // (L)
      std::copy(r.begin(), r.end(), &importance_(s0 + j, 0));
    }
  }

  /// The Hessians of a true-sequential group: `fit`, of the fitting sequences with the policy's weights (every
  /// sequence without an importance choice); with a choice also `uniform`, of the fitting sequences with uniform
  /// weights, and `held_out`, of the held-out sequences with uniform weights.
  struct group_hessians {
    group_hessians(index_t features, B const& be, hessian::weighting const& wt, hessian::options const& o, bool choice)
        : fit(features, be, wt, o) {
      if (!choice) return;
      uniform.emplace(features, be, wt, o);
      held_out.emplace(features, be, wt, o);
    }
    hessian_accumulator<T, B> fit;
    std::optional<hessian_accumulator<T, B>> uniform, held_out;
  };

  /// Adds the chunk [s0, s1) of a group's input @p in (chunk tokens, features) to @p g: its fitting sequences to
  /// g.fit (and g.uniform), its held-out sequences to g.held_out.
  void accumulate(group_hessians& g, matrix_view<const float> in, index_t s0, index_t s1) {
    phase<B> p(be_, q_.timings.hessian);
    index_t const m = std::clamp(S_fit_, s0, s1);  // the chunk's first held-out sequence
    auto const part = [&](index_t a, index_t b) {  // the sequences [a, b) of the chunk
      return as_batch(matrix_view<const float>(in.data() + (a - s0) * L_ * in.stride(0), {(b - a) * L_, in.cols()},
                                               in.strides()));
    };
    if (m > s0) {
      if (importance_.size() == 0) g.fit.add(part(s0, m), matrix_view<const float>{});
      else g.fit.add(part(s0, m), importance_rows(s0, m));
      if (g.uniform) g.uniform->add(part(s0, m), matrix_view<const float>{});
    }
    if (m < s1) g.held_out->add(part(m, s1), matrix_view<const float>{});
  }

  /// A Hessian a group's linears may be solved with: α·H_policy + (1 − α)·H_uniform (α empty: the group's only
  /// Hessian, without an importance choice), factored unless the grid cannot hold the linears.
  struct candidate {
    std::optional<double> alpha;
    backend::matrix<T, B> h;
    std::optional<gptq::factorization<T, B>> f;
  };

  /// α·@p hp + (1 − α)·@p hu, computed as hu + α·hp − α·hu (exactly hu for α = 0 and hp for α = 1).
  [[nodiscard]] backend::matrix<T, B> blend(backend::matrix<T, B> const& hp, backend::matrix<T, B> const& hu,
                                            double alpha) const {
    auto const pv = matrix_view<const T>(rsq::view(hp)), uv = matrix_view<const T>(rsq::view(hu));
    auto out = backend::make_matrix<T>(be_, pv.rows(), pv.cols());
    backend::copy(be_, rsq::view(out).data(), (alpha == 1 ? pv : uv).data(), pv.size());
    if (alpha > 0 && alpha < 1) {
      linalg::axpy(be_, T(alpha), pv, rsq::view(out));
      linalg::axpy(be_, T(-alpha), uv, rsq::view(out));
    }
    return out;
  }

  /// Solves @p wv with every candidate and leaves in @p res the solution with the smallest held-out output error
  /// tr((W − Q)·H_ho·(W − Q)ᵀ) (the first on a tie; a failed one where every candidate failed); appends each
  /// candidate's error to @p errors (+inf for a failure) and returns the index of the one kept.
  std::size_t choose(matrix_view<const T> wv, std::vector<candidate> const& cands, matrix_view<const T> h_ho,
                     std::optional<gptq::result<T, B>>& res, std::vector<double>& errors) {
    auto& tm = q_.timings;
    std::size_t best = 0;
    double best_error = std::numeric_limits<double>::infinity();
    for (std::size_t k = 0; k < cands.size(); ++k) {
      std::optional<gptq::result<T, B>> r;
      {
        phase<B> p(be_, tm.solver);
        r.emplace(gptq::solve_resident(be_, wv, *cands[k].f, opt_.grid, opt_.solver));
      }
      double error = std::numeric_limits<double>::infinity();
      if (r->ok()) {
        phase<B> p(be_, tm.loss);
        error = gptq::proxy_loss(be_, wv, matrix_view<const T>(rsq::view(r->dequantized)), h_ho);
      }
      errors.push_back(error);
      if (!res || error < best_error) {
        best = k;
        best_error = error;
        res = std::move(r);
      }
    }
    return best;
  }

  /// A host copy of the solver's quantized weight @p w: its arrays arrive through the download queue (float on a
  /// device backend), or at once (moved on the CPU backend; converted from a float64 solve).
  [[nodiscard]] quant::quantized_weight<float> download(quant::quantized_weight<T, B>&& w) {
    if constexpr (std::is_same_v<B, backend::cpu_eigen> || !std::is_same_v<T, float>) {
      return to_float_weight<T>(quant::to_host(be_, std::move(w)));
    } else {
      quant::quantized_weight<float> h;
      h.bits = w.bits;
      h.offset = w.offset;
      auto const codes = rsq::view(w.codes);
      auto const scales = rsq::view(w.scales);
      auto const zeros = rsq::view(w.zeros);
      auto const g_idx = rsq::view(w.g_idx);
      h.codes = rsq::make_matrix_for_overwrite<std::uint8_t>(codes.rows(), codes.cols());
      h.scales = rsq::make_matrix_for_overwrite<float>(scales.rows(), scales.cols());
      h.zeros = rsq::make_matrix_for_overwrite<float>(zeros.rows(), zeros.cols());
      h.g_idx = rsq::make_vector<std::int32_t>(g_idx.extent(0));
      downloads_.push(h.codes.data(), codes.data(), codes.size());
      downloads_.push(h.scales.data(), scales.data(), scales.size());
      downloads_.push(h.zeros.data(), zeros.data(), zeros.size());
      downloads_.push(h.g_idx.data(), g_idx.data(), g_idx.extent(0));
      return h;  // moving the containers keeps their buffers where the queue writes
    }
  }

  /// Quantizes the linears @p ids of layer @p l with the Hessians of @p g; false (and the failure recorded) if it
  /// is not positive definite. With an importance choice each linear is solved with every candidate Hessian and keeps
  /// the solution with the smallest held-out output error (choose()). Each quantized weight replaces its
  /// full-precision one on the backend and in the host model.
  bool solve_group(int l, resident_layer<B> const& w, group_hessians const& g, std::initializer_list<linear_id> ids,
                   layer_report& report) {
    auto& tm = q_.timings;
    auto& host_layer = q_.model.layers[std::size_t(l)];
    backend::matrix<T, B> h;     // the policy's Hessian (of the fitting sequences with an importance choice)
    backend::matrix<T, B> h_ho;  // importance choice: the held-out sequences' Hessian
    std::vector<candidate> cands;
    {
      phase<B> p(be_, tm.hessian);
      h = g.fit.hessian_resident();
      if (g.held_out) {
        auto const hu = g.uniform->hessian_resident();
        h_ho = g.held_out->hessian_resident();
        for (double a : alphas_) cands.push_back({a, blend(h, hu, a), std::nullopt});
      }
    }
    if (obs_.on_hessian) {
      auto const hh = backend::to_host(be_, matrix_view<const T>(rsq::view(h)));
      auto hd = rsq::matrix<double>::from_shape(hh.shape());
      std::copy(hh.begin(), hh.end(), hd.begin());
      obs_.on_hessian(l, *ids.begin(), hd);
    }
    if (cands.empty()) cands.push_back({std::nullopt, std::move(h), std::nullopt});
    h = {};
    bool const holds = grid_holds(opt_.grid, rsq::view(cands.front().h).rows());
    if (holds) {
      phase<B> p(be_, tm.factorization);
      for (auto& c : cands) c.f.emplace(gptq::factor(be_, matrix_view<const T>(rsq::view(c.h)), opt_.solver));
    }
    for (linear_id id : ids) {
      auto const t0 = clock::now();
      auto const wf = w.weight(id);  // (out, in) float on the backend
      if (!holds) {
        phase<B> p(be_, tm.copies);
        keep_in_f16(be_, wf, host_layer.weight(id));
        report.linears.push_back({.linear = id, .info = gptq::status::ok, .damp_attempts = 0, .damp_percent_used = 0,
                                  .loss = 0, .gptq_loss = 0, .seconds = seconds_since(t0), .kept = true});
        continue;
      }
      // The solver's precision: the float weight itself, or a float64 copy.
      backend::matrix<T, B> wt;
      matrix_view<const T> wv;
      if constexpr (std::is_same_v<T, float>) {
        wv = wf;
      } else {
        wt = backend::make_matrix<T>(be_, wf.rows(), wf.cols());
        linalg::convert(be_, matrix_view<const float>(wf), rsq::view(wt));
        wv = rsq::view(wt);
      }
      std::optional<gptq::result<T, B>> res;
      std::size_t pick = 0;
      std::vector<double> held_out_losses;
      if (g.held_out) {
        pick = choose(wv, cands, matrix_view<const T>(rsq::view(h_ho)), res, held_out_losses);
      } else {
        phase<B> p(be_, tm.solver);
        res.emplace(gptq::solve_resident(be_, wv, *cands.front().f, opt_.grid, opt_.solver));
      }
      linear_report lr{.linear = id, .info = res->info, .damp_attempts = res->damp_attempts,
                       .damp_percent_used = res->damp_percent_used, .loss = 0, .gptq_loss = 0, .seconds = 0,
                       .kept = false, .importance_alpha = cands[pick].alpha,
                       .held_out_losses = std::move(held_out_losses)};
      if (!res->ok()) {
        lr.seconds = seconds_since(t0);
        report.linears.push_back(lr);
        q_.info = res->info;
        q_.failed_layer = l;
        q_.failed_linear = id;
        return false;
      }
      if (opt_.proxy_loss) {
        phase<B> p(be_, tm.loss);
        lr.loss = gptq::proxy_loss(be_, wv, matrix_view<const T>(rsq::view(res->dequantized)),
                                   matrix_view<const T>(rsq::view(cands[pick].h)));
      }
      {
        // Q replaces W on the backend (the next groups' passes run with it) and in the host model; the codes, scales
        // and zeros go to the host result.
        phase<B> p(be_, tm.copies);
        linalg::convert(be_, matrix_view<const T>(rsq::view(res->dequantized)), wf);
        auto& hw = host_layer.weight(id);
        if (hw.data() != wf.data()) downloads_.push(hw.data(), wf.data(), wf.size());
        auto const loss = backend::to_host(be_, matrix_view<const T>(rsq::view(res->column_loss).data(), 1, wf.cols()));
        for (auto v : loss) lr.gptq_loss += double(v);
        q_.weights[std::size_t(l)][std::size_t(id)] = download(std::move(res->weight));
      }
      lr.seconds = seconds_since(t0);
      report.linears.push_back(lr);
    }
    return true;
  }

  /// One layer: rotation, importances, the four true-sequential groups, the next layer's inputs.
  bool layer(int l) {
    auto const t_layer = clock::now();
    auto& tm = q_.timings;
    auto& host_layer = q_.model.layers[std::size_t(l)];
    layer_report report{.layer = l, .n_layers = c_.n_layers, .linears = {}, .seconds = 0, .timings = {}};
    std::optional<resident_layer<B>> w;
    {
      phase<B> p(be_, tm.copies);
      w.emplace(be_, host_layer);
    }
    if (rotation_) {
      phase<B> p(be_, tm.rotation);
      rotate_layer(be_, *rotation_, c_, w->mutable_weights());
    }
    w->download_gains(host_layer);
    auto ctx = context(*w, l);
    hessian::weighting const wt{.importance_power = opt_.importance_power};
    index_t const D = c_.dim, F = c_.hidden_dim, T_all = S_ * L_;
    auto const x = rsq::view(x_);

    // Group q/k/v: the importances from the full-precision layer (once per layer, before any of its linears is
    // quantized), and the normalised inputs.
    group_hessians acc_qkv(D, be_, wt, opt_.hessian, !alphas_.empty());
    for_chunks([&](index_t s0, index_t s1) {
      auto const xc = rows(x, s0, s1);
      if (importance_.size() > 0) {
        {
          phase<B> p(be_, tm.forward);
          attention_inputs(ctx, xc, /*with_values=*/false);
        }
        chunk_importances(ctx, s0, s1, xc);
      } else {
        phase<B> p(be_, tm.forward);
        nn::rms_norm(be_, xc, ctx.weights.rms_att, c_.norm_eps, ws_.get(buf::norm, xc.rows(), D));
      }
      accumulate(acc_qkv, ws_.get(buf::norm, xc.rows(), D), s0, s1);
    });
    if (obs_.on_importances && importance_.size() > 0) obs_.on_importances(l, rsq::view(std::as_const(importance_)));
    auto finish = [&](bool ok) {
      report.seconds = seconds_since(t_layer);
      report.timings = q_.timings;
      q_.layers.push_back(report);
      if (obs_.on_layer) obs_.on_layer(q_.layers.back());
      return ok;
    };
    if (!solve_group(l, *w, acc_qkv, {linear_id::wq, linear_id::wk, linear_id::wv}, report)) return finish(false);

    // Group o: the attention output of the quantized q/k/v (kept: the residual needs it once o is quantized).
    auto attention_all = backend::make_matrix<float>(be_, T_all, c_.q_dim());  // (tokens, q_dim)
    group_hessians acc_o(c_.q_dim(), be_, wt, opt_.hessian, !alphas_.empty());
    for_chunks([&](index_t s0, index_t s1) {
      auto const xc = rows(x, s0, s1);
      auto const ac = rows(rsq::view(attention_all), s0, s1);
      {
        phase<B> p(be_, tm.forward);
        attention_inputs(ctx, xc);
        linalg::convert(be_, matrix_view<const float>(attention_output(ctx, xc.rows())), ac);
      }
      accumulate(acc_o, ac, s0, s1);
    });
    if (!solve_group(l, *w, acc_o, {linear_id::wo}, report)) return finish(false);
    {
      phase<B> p(be_, tm.forward);
      residual_update(ctx, linear_id::wo, rsq::view(attention_all), x);  // x ← h = x + A·Wo_qᵀ
      attention_all = {};
    }

    // Group w1/w3: the normalised residual.
    group_hessians acc_ffn(D, be_, wt, opt_.hessian, !alphas_.empty());
    for_chunks([&](index_t s0, index_t s1) {
      matrix_view<float> n;
      {
        phase<B> p(be_, tm.forward);
        n = ffn_input(ctx, rows(x, s0, s1));
      }
      accumulate(acc_ffn, n, s0, s1);
    });
    if (!solve_group(l, *w, acc_ffn, {linear_id::w1, linear_id::w3}, report)) return finish(false);

    // Group w2: SwiGLU of the quantized w1/w3 (recomputed for the residual unless one chunk holds every token).
    group_hessians acc_down(F, be_, wt, opt_.hessian, !alphas_.empty());
    bool const keep_hidden = chunk_ >= S_;  // one chunk: the workspace holds it still
    for_chunks([&](index_t s0, index_t s1) {
      matrix_view<float> g;
      {
        phase<B> p(be_, tm.forward);
        g = ffn_hidden(ctx, ffn_input(ctx, rows(x, s0, s1)));
      }
      accumulate(acc_down, g, s0, s1);
    });
    if (!solve_group(l, *w, acc_down, {linear_id::w2}, report)) return finish(false);
    {
      phase<B> p(be_, tm.forward);
      for_chunks([&](index_t s0, index_t s1) {
        auto const xc = rows(x, s0, s1);
        auto const g = keep_hidden ? ws_.get(buf::gate, xc.rows(), F) : ffn_hidden(ctx, ffn_input(ctx, xc));
        residual_update(ctx, linear_id::w2, g, xc);  // the quantized layer's output: the next layer's input
      });
    }
    return finish(true);
  }

  B be_;
  quantized_model& q_;
  llama_config const& c_;
  rsq::matrix<std::int32_t> const& tokens_;
  quantize_options const& opt_;
  importance::any_policy const& policy_;
  std::optional<rotation_plan> const& rotation_;
  quantize_observer const& obs_;
  forward_workspace<B> ws_;
  index_t S_, L_, chunk_;
  index_t S_fit_ = 0;           ///< the sequences [0, S_fit_) fit the Hessians, the rest are held out (S_: none)
  std::vector<double> alphas_;  ///< the importance choice's candidates (empty: no choice)
  importance::needs needs_{};
  std::optional<importance::activation_form> activation_;  ///< set for ActNorm, ActDiff, TokenSim
  rsq::matrix<float> importance_;  // (S, L) host; empty when uniform
  rsq::matrix<std::int64_t> ids64_;
  std::optional<importance::token_frequency> freq_;
  backend::matrix<float, B> x_;  // (S·L, dim) the residual stream, in the backend's memory
  /// The quantized weights on their way to the host model and q_.weights while the next linears are solved; last,
  /// so that it is destroyed (waiting for every copy) first.
  backend::download_queue<B> downloads_{be_, staging_bytes(c_)};
};

}  // namespace pipeline_detail

/// Quantizes @p fp in place (it is moved into the result) with the method and options @p opt (see the file comment)
/// on backend @p be, calibrated on
/// @p calibration, the windows of token ids (sequences, L) before expansion (e.g. from sample_windows(); unused by
/// rtn, which may pass an empty view).
///
/// A Hessian that stays not positive definite through the damping escalation stops the run: the result then has
/// `info == gptq::status::not_positive_definite`, `failed_layer` and `failed_linear` set, and the layers before
/// it quantized. Nothing is printed; pass an observer for progress.
///
/// @param be `rsq::backend::cpu_eigen{}`, or `rsq::backend::cuda{stream}` with <rsq/cuda.hpp>: every step runs there
/// @throws rsq::invalid_argument for bad options, a malformed or already rotated model, NaN/Inf weights, calibration
///         windows that are empty, longer than the model's seq_len or hold ids outside the vocabulary, sizes without
///         a Hadamard construction; rsq::cuda_error when the device cannot hold a layer (naming the bytes)
template <backend_tag B>
[[nodiscard]] quantized_model quantize_model(B const& be, llama_model&& fp,
                                             rsq::matrix_view<const std::int32_t> calibration,
                                             quantize_options const& opt = {}, quantize_observer const& obs = {}) {
  using namespace pipeline_detail;
  auto const t_start = clock::now();
  opt.validate();
  validate(fp, /*check_finite=*/true);
  expect_plain(fp, "quantize_model");
  auto const c = fp.config;
  std::optional<rotation_plan> rotation;
  if (opt.rotates_model()) rotation = plan_rotation(c, opt.rotation);  // an unsupported size fails here

  importance::any_policy const policy = opt.effective_policy();
  rsq::matrix<std::int32_t> tokens;  // (sequences, L) contiguous, expanded by cyclic shifts (§8.2)
  if (opt.method != quant_method::rtn) {
    RSQ_EXPECTS(calibration.rows() > 0 && calibration.cols() >= 1,
                "quantize_model: the calibration windows are empty ", rsq::detail::shape_string(calibration));
    RSQ_EXPECTS(calibration.cols() <= c.seq_len, "quantize_model: calibration windows of ", calibration.cols(),
                " tokens exceed the model's seq_len ", c.seq_len);
    tokens = rsq::make_matrix<std::int32_t>(calibration.rows(), calibration.cols());
    for (index_t s = 0; s < calibration.rows(); ++s)
      for (index_t t = 0; t < calibration.cols(); ++t) {
        std::int32_t const id = calibration(s, t);
        RSQ_EXPECTS(id >= 0 && id < c.vocab_size, "quantize_model: calibration token id ", id, " at (", s, ", ", t,
                    ") is outside the vocabulary [0, ", c.vocab_size, ")");
        tokens(s, t) = id;
      }
    if (opt.expand_factor > 1) tokens = expand_cyclic(rsq::view(std::as_const(tokens)), opt.expand_factor);
  }
  // importance choice: the last windows are held out (with their cyclic shifts, which follow each window).
  index_t held_out = 0;
  if (opt.choice != importance_choice::off) {
    index_t const windows = calibration.rows(), n = index_t(std::lround(opt.held_out * double(windows)));
    RSQ_EXPECTS(n >= 1 && n < windows, "quantize_model: importance choice ", to_string(opt.choice), " holds out ",
                opt.held_out, " of the ", windows, " calibration windows, i.e. ", n,
                " (rounded); at least one must be held out and one must remain to fit (use more windows or another "
                "held_out)");
    held_out = n * opt.expand_factor;
  }

  // A device that cannot hold a layer's work is an error before any work starts (naming the bytes).
  if (std::size_t const free = backend::bytes_free(be); free != std::numeric_limits<std::size_t>::max()) {
    index_t const S = opt.method == quant_method::rtn ? 0 : index_t(tokens.shape()[0]);
    index_t const L = opt.method == quant_method::rtn ? 1 : index_t(tokens.shape()[1]);
    std::size_t const need =
        layer_bytes(c, S * L, chunk_sequences<B>(c, std::max<index_t>(S, 1), L, opt.chunk_tokens) * L,
                    opt.double_precision, index_t(opt.candidate_alphas().size())) +
        std::size_t(c.vocab_size) * std::size_t(c.dim) * (rotation ? 12 : 4);  // the embedding (and its rotation)
    RSQ_EXPECTS(need <= free, "quantize_model: a layer of this model with ", S * L, " calibration tokens needs about ",
                double(need) / double(1 << 30), " GiB of the backend's memory, ", double(free) / double(1 << 30),
                " GiB are free (use fewer or shorter calibration sequences, or a smaller chunk_tokens)");
  }

  quantized_model q;
  q.model = std::move(fp);  // quantized in place: its weights become the dequantized ones
  // A learned R1/R2: the plain model is pre-rotated so that the pipeline's own rotation completes it exactly.
  RSQ_EXPECTS(opt.rotation.learned == nullptr || rotation, "quantize_model: a learned rotation needs a method that "
              "rotates (quarot, rsq) or rotate = true");
  if (rotation && opt.rotation.learned) apply_learned_rotation(q.model, *opt.rotation.learned, *rotation);
  q.weights.assign(std::size_t(c.n_layers), std::vector<quant::quantized_weight<float>>(std::size(all_linears)));
  q.method = opt.method;
  q.grid = opt.grid;
  q.group_size = opt.solver.group_size;
  q.act_order = opt.solver.act_order;
  q.importance_power = opt.importance_power;
  q.expand_factor = opt.expand_factor;
  q.policy = opt.method == quant_method::rtn ? "none" : std::string(policy.name());
  q.calibration_sequences = index_t(tokens.shape()[0]);
  q.calibration_tokens = tokens.size() > 0 ? index_t(tokens.shape()[1]) : 0;
  q.choice = opt.choice;
  q.held_out_sequences = held_out;

  // The embeddings: rotated on the backend (they stay there for the calibration's embedding lookup).
  if (rotation && opt.rotation.center_embeddings) center_embeddings(q.model);
  backend::matrix<float, B> embedding_copy;
  matrix_view<float> embedding = rsq::view(q.model.token_embedding);
  if (!backend::resident(be, embedding.data())) {
    phase<B> p(be, q.timings.copies);
    embedding_copy = backend::to_backend(be, matrix_view<const float>(embedding));
    embedding = rsq::view(embedding_copy);
  }
  if (rotation) {
    phase<B> p(be, q.timings.rotation);
    auto const resident_or_copy = [&](auto& host) {
      return backend::to_backend(be, matrix_view<const float>(host.data(), 1, index_t(host.size())));
    };
    if (embedding.data() == q.model.token_embedding.data()) {  // the backend computes on host memory
      rotate_embeddings(be, *rotation, embedding, rsq::view(q.model.classifier), rsq::view(q.model.rms_final));
    } else {
      auto cls = backend::to_backend(be, matrix_view<const float>(rsq::view(q.model.classifier)));
      auto gains = resident_or_copy(q.model.rms_final);
      rotate_embeddings(be, *rotation, embedding, rsq::view(cls),
                        vector_view<float>(rsq::view(gains).data(), index_t(q.model.rms_final.size())));
      backend::copy(be, q.model.token_embedding.data(), embedding.data(), embedding.size());
      backend::copy(be, q.model.classifier.data(), rsq::view(cls).data(), rsq::view(cls).size());
      backend::copy(be, q.model.rms_final.data(), rsq::view(gains).data(), index_t(q.model.rms_final.size()));
    }
    q.model.online = rotation->online;
    q.rotation = rotation->record;
  }

  if (opt.method == quant_method::rtn) {
    for (int l = 0; l < c.n_layers; ++l) {
      auto const t_layer = clock::now();
      layer_report report{.layer = l, .n_layers = c.n_layers, .linears = {}, .seconds = 0, .timings = {}};
      auto& layer = q.model.layers[std::size_t(l)];
      resident_layer<B> w(be, layer);
      if (rotation) {
        phase<B> p(be, q.timings.rotation);
        rotate_layer(be, *rotation, c, w.mutable_weights());
      }
      w.download_gains(layer);
      for (std::size_t g = 0; g < true_sequential_groups.size(); ++g)
        for (int i = 0; i < true_sequential_group_sizes[g]; ++i) {
          linear_id const id = true_sequential_groups[g][std::size_t(i)];
          auto const t0 = clock::now();
          if (!grid_holds(opt.grid, w.weight(id).cols())) {
            phase<B> p(be, q.timings.copies);
            keep_in_f16(be, w.weight(id), layer.weight(id));
            report.linears.push_back({.linear = id, .info = gptq::status::ok, .damp_attempts = 0, .damp_percent_used = 0,
                                  .loss = 0, .gptq_loss = 0, .seconds = seconds_since(t0), .kept = true});
            continue;
          }
          quant::quantized_weight<float> qw;
          {
            phase<B> p(be, q.timings.solver);
            qw = quant::quantize_rtn(be, matrix_view<const float>(w.weight(id)), opt.grid, opt.solver.group_size);
          }
          auto deq = quant::dequantize(qw);  // (out, in)
          auto const wh = backend::to_host(be, matrix_view<const float>(w.weight(id)));  // the rotated W
          double err = 0;
          for (std::size_t k = 0; k < deq.size(); ++k) {
            double const d = double(wh.data()[k]) - double(deq.data()[k]);
            err += d * d;
          }
          layer.weight(id) = std::move(deq);
          q.weights[std::size_t(l)][std::size_t(id)] = std::move(qw);
          report.linears.push_back({.linear = id, .info = gptq::status::ok, .damp_attempts = 0,
                                    .damp_percent_used = 0, .loss = err, .gptq_loss = 0,
                                    .seconds = seconds_since(t0), .kept = false});
        }
      report.seconds = seconds_since(t_layer);
      report.timings = q.timings;
      q.layers.push_back(report);
      if (obs.on_layer) obs.on_layer(q.layers.back());
    }
    q.timings.total = seconds_since(t_start);
    return q;
  }

  if (opt.double_precision) {
    layer_quantizer<double, B> lq(be, q, tokens, opt, policy, rotation, obs);
    lq.run(embedding);
  } else {
    layer_quantizer<float, B> lq(be, q, tokens, opt, policy, rotation, obs);
    lq.run(embedding);
  }
  q.timings.total = seconds_since(t_start);
  return q;
}

/// quantize_model() of a copy of @p fp (the caller keeps the full-precision model).
template <backend_tag B>
[[nodiscard]] quantized_model quantize_model(B const& be, llama_model const& fp,
                                             rsq::matrix_view<const std::int32_t> calibration,
                                             quantize_options const& opt = {}, quantize_observer const& obs = {}) {
  return quantize_model(be, llama_model(fp), calibration, opt, obs);
}

/// quantize_model() on backend B (default: the CPU), e.g. `quantize_model(model, calibration, opt)`.
template <backend_tag B = backend::cpu_eigen>
[[nodiscard]] quantized_model quantize_model(llama_model const& fp, rsq::matrix_view<const std::int32_t> calibration,
                                             quantize_options const& opt = {}, quantize_observer const& obs = {}) {
  return quantize_model(B{}, fp, calibration, opt, obs);
}

namespace pipeline_detail {

/// The hidden states after the last decoder layer of @p windows (sequences, L), on the backend as (S·L, dim): every
/// layer goes to the backend once and runs over all windows, @p batch windows at a time.
template <backend_tag B>
[[nodiscard]] backend::matrix<float, B> hidden_states(B const& be, llama_model const& m,
                                                      rsq::matrix<std::int32_t> const& ids, index_t batch,
                                                      forward_options const& fopt) {
  auto const& c = m.config;
  index_t const S = index_t(ids.shape()[0]), L = index_t(ids.shape()[1]);
  auto x = backend::make_matrix<float>(be, S * L, c.dim);  // (tokens, dim)
  {
    auto const e = on_backend(be, rsq::view(m.token_embedding));
    nn::embed(be, rsq::view(ids), e.view, rsq::view(x));
  }
  forward_workspace<B> ws(be);
  for (std::size_t l = 0; l < m.layers.size(); ++l) {
    resident_layer<B> const w(be, m.layers[l]);
    layer_context<B> const ctx{be, c, w.weights(), m.online, L, int(l), ws, fopt, nullptr};
    for (index_t s0 = 0; s0 < S; s0 += batch) {
      index_t const s1 = std::min(S, s0 + batch);
      forward_layer(ctx, matrix_view<float>(rsq::view(x).data() + s0 * L * c.dim, (s1 - s0) * L, c.dim));
    }
  }
  return x;
}

/// @p windows checked against @p m and copied to contiguous host memory.
[[nodiscard]] inline rsq::matrix<std::int32_t> checked_windows(llama_model const& m,
                                                               rsq::matrix_view<const std::int32_t> windows,
                                                               index_t batch, char const* who, index_t min_length) {
  RSQ_EXPECTS(windows.rows() > 0 && windows.cols() >= min_length, who, ": need at least one window of ", min_length,
              " or more tokens, got ", rsq::detail::shape_string(windows));
  RSQ_EXPECTS(windows.cols() <= m.config.seq_len, who, ": windows of ", windows.cols(),
              " tokens exceed the model's seq_len ", m.config.seq_len);
  RSQ_EXPECTS(batch >= 1, who, ": batch must be at least 1, got ", batch);
  validate(m);  // ids outside the vocabulary: nn::embed names them
  auto ids = rsq::make_matrix<std::int32_t>(windows.rows(), windows.cols());  // contiguous
  for (index_t s = 0; s < windows.rows(); ++s)
    for (index_t t = 0; t < windows.cols(); ++t) ids(s, t) = windows(s, t);
  return ids;
}

}  // namespace pipeline_detail

/// Mean next-token loss and perplexity of @p m over the evaluation windows @p windows (sequences, L) (e.g. from
/// consecutive_windows()) on backend @p be, @p batch windows at a time; the online transforms of a rotated model
/// apply. Layer by layer over all windows, so that every layer goes to the backend once.
/// @throws rsq::invalid_argument for empty windows, windows longer than the model's seq_len, tokens outside the
/// vocabulary, batch < 1
template <backend_tag B>
[[nodiscard]] loss_result evaluate(B const& be, llama_model const& m, rsq::matrix_view<const std::int32_t> windows,
                                   index_t batch = 16, forward_options const& fopt = {}) {
  auto const ids = pipeline_detail::checked_windows(m, windows, batch, "evaluate", 2);
  auto const& c = m.config;
  index_t const S = index_t(ids.shape()[0]), L = index_t(ids.shape()[1]);
  auto const x = pipeline_detail::hidden_states(be, m, ids, batch, fopt);
  auto const gains = pipeline_detail::on_backend(be, matrix_view<const float>(m.rms_final.data(), 1, c.dim));
  auto const cls = pipeline_detail::on_backend(be, rsq::view(m.classifier));
  nn::loss_sum total;
  for (index_t s0 = 0; s0 < S; s0 += batch) {
    index_t const s1 = std::min(S, s0 + batch);
    auto const part = nn::next_token_loss(
        be, matrix_view<const float>(rsq::view(x).data() + s0 * L * c.dim, (s1 - s0) * L, c.dim),
        vector_view<const float>(gains.view.data(), c.dim), cls.view,
        matrix_view<const std::int32_t>(&ids(s0, 0), s1 - s0, L),
        {.seq_len = L, .norm_eps = c.norm_eps, .precision = fopt.precision});
    total.sum += part.sum;
    total.count += part.count;
  }
  return {total.sum, total.count, total.sum / double(total.count), std::exp(total.sum / double(total.count))};
}

/// The whole forward pass on backend @p be: logits (sequences, L, vocab_size) of @p tokens (sequences, L), in host
/// memory; the online transforms of a rotated model apply. What an engine compares against another implementation's
/// logits (tests/model/hf_reference_test.cpp compares them with transformers').
/// @throws rsq::invalid_argument as evaluate()
template <backend_tag B>
[[nodiscard]] activations forward(B const& be, llama_model const& m, rsq::matrix_view<const std::int32_t> tokens,
                                  index_t batch = 16, forward_options const& fopt = {}) {
  auto const ids = pipeline_detail::checked_windows(m, tokens, batch, "forward", 1);
  auto const& c = m.config;
  index_t const S = index_t(ids.shape()[0]), L = index_t(ids.shape()[1]), V = c.vocab_size;
  auto const x = pipeline_detail::hidden_states(be, m, ids, batch, fopt);
  auto const gains = pipeline_detail::on_backend(be, matrix_view<const float>(m.rms_final.data(), 1, c.dim));
  auto const cls = pipeline_detail::on_backend(be, rsq::view(m.classifier));
  activations logits(activations::shape_type{std::size_t(S), std::size_t(L), std::size_t(V)});
  auto part = backend::make_matrix<float>(be, std::min(S, batch) * L, V);
  for (index_t s0 = 0; s0 < S; s0 += batch) {
    index_t const rows = (std::min(S, s0 + batch) - s0) * L;
    matrix_view<float> const out(rsq::view(part).data(), rows, V);
    nn::final_logits(be, matrix_view<const float>(rsq::view(x).data() + s0 * L * c.dim, rows, c.dim),
                     vector_view<const float>(gains.view.data(), c.dim), cls.view, c.norm_eps, out, fopt.precision);
    backend::copy(be, logits.data() + s0 * L * V, out.data(), rows * V);
  }
  return logits;
}

/// evaluate() on the CPU backend.
[[nodiscard]] inline loss_result evaluate(llama_model const& m, rsq::matrix_view<const std::int32_t> windows,
                                          index_t batch = 16) {
  return evaluate(backend::cpu_eigen{}, m, windows, batch);
}

#if defined(RSQ_EXTERN_TEMPLATES)
// The layer loop on the CPU backend lives in the translation unit that includes <rsq/instantiate.hpp>.
extern template quantized_model quantize_model<backend::cpu_eigen>(backend::cpu_eigen const&, llama_model&&,
                                                                   rsq::matrix_view<const std::int32_t>,
                                                                   quantize_options const&, quantize_observer const&);
#endif

}  // namespace rsq::model
