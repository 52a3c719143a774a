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
///  4. the quantized layer's outputs become the next layer's inputs (computed from the w2 pass: its FP-w2 output plus
///     G·(W2_q − W2)ᵀ, with G the w2 input it saw, instead of a fifth forward pass).
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
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <Eigen/Core>

#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/gptq/options.hpp"
#include "rsq/gptq/proxy_loss.hpp"
#include "rsq/gptq/result.hpp"
#include "rsq/gptq/solve.hpp"
#include "rsq/hessian/accumulator.hpp"
#include "rsq/hessian/weights.hpp"
#include "rsq/importance/policy.hpp"
#include "rsq/importance/token_frequency.hpp"
#include "rsq/model/calibration.hpp"
#include "rsq/model/forward.hpp"
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
  rotate_options rotation = {};       ///< quarot and rsq: Q kind, seed, embedding centring
  /// Rotate before quantizing; empty: the method's own choice (quarot and rsq rotate). `rotate = true` with rtn is
  /// QuaRot-RTN, `rotate = false` with rsq is importance-scaled GPTQ without rotation (ablations).
  std::optional<bool> rotate = std::nullopt;
  bool double_precision = false;      ///< accumulate Hessians and solve in float64 (default: float32, as the reference)

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
  }

  /// Whether the model is rotated first (see `rotate`).
  [[nodiscard]] bool rotates_model() const noexcept { return rotate.value_or(rotates(method)); }

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
  /// GPTQ: the proxy loss tr((W − Q)·H·(W − Q)ᵀ) with the undamped H; rtn: ‖W − Q‖²_F.
  double loss = 0;
  double seconds = 0;
};

/// Outcome of one decoder layer (handed to the progress callback).
struct layer_report {
  int layer = 0;
  int n_layers = 0;
  std::vector<linear_report> linears;  ///< in the order they were quantized
  double seconds = 0;
  [[nodiscard]] bool ok() const noexcept {
    for (auto const& l : linears)
      if (l.info != gptq::status::ok) return false;
    return true;
  }
};

/// Seconds spent in each part of quantize_model() (a part's hook time is not counted in `forward`).
struct pipeline_timings {
  double rotation = 0;    ///< rotate_model
  double importance = 0;  ///< token importances (policy)
  double forward = 0;     ///< calibration forward passes (embedding, layers)
  double hessian = 0;     ///< Hessian accumulation
  double solver = 0;      ///< GPTQ / RTN and the loss of each linear
  double total = 0;       ///< the whole call
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
  std::string policy;  ///< name of the importance policy used ("uniform", "attncon", ...; "none" for rtn)
  double importance_power = 1.0;
  index_t expand_factor = 1;
  index_t calibration_sequences = 0;  ///< after expansion
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
  /// After each layer (a progress line).
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

/// RAII adder of elapsed seconds.
class stopwatch {
 public:
  explicit stopwatch(double& sink) : sink_(sink), t0_(clock::now()) {}
  ~stopwatch() { sink_ += seconds_since(t0_); }
  stopwatch(stopwatch const&) = delete;
  stopwatch& operator=(stopwatch const&) = delete;

 private:
  double& sink_;
  clock::time_point t0_;
};

template <class T>
[[nodiscard]] rsq::matrix<T> cast_matrix(rsq::matrix<float> const& w) {
  if constexpr (std::is_same_v<T, float>) {
    return w;
  } else {
    auto d = rsq::matrix<T>::from_shape(w.shape());
    std::copy(w.begin(), w.end(), d.begin());
    return d;
  }
}

template <class T>
[[nodiscard]] rsq::matrix<float> cast_matrix_back(rsq::matrix<T>&& w) {
  if constexpr (std::is_same_v<T, float>) {
    return std::move(w);
  } else {
    auto f = rsq::matrix<float>::from_shape(w.shape());
    std::transform(w.begin(), w.end(), f.begin(), [](T v) { return float(v); });
    return f;
  }
}

template <class T>
[[nodiscard]] quant::quantized_weight<float> to_float_weight(quant::quantized_weight<T>&& q) {
  if constexpr (std::is_same_v<T, float>) {
    return std::move(q);
  } else {
    quant::quantized_weight<float> f;
    f.bits = q.bits;
    f.codes = std::move(q.codes);
    f.g_idx = std::move(q.g_idx);
    f.scales = rsq::matrix<float>::from_shape(q.scales.shape());
    f.zeros = rsq::matrix<float>::from_shape(q.zeros.shape());
    std::transform(q.scales.begin(), q.scales.end(), f.scales.begin(), [](T v) { return float(v); });
    std::transform(q.zeros.begin(), q.zeros.end(), f.zeros.begin(), [](T v) { return float(v); });
    return f;
  }
}

[[nodiscard]] inline bool is_uniform(importance::any_policy const& p) {
  return std::holds_alternative<importance::uniform>(p.get());
}

/// The layer loop of quantize_model() for GPTQ methods, with Hessians and solves in precision T.
template <class T, backend_tag Backend>
void quantize_layers(quantized_model& q, rsq::matrix<std::int32_t> const& tokens, quantize_options const& opt,
                     importance::any_policy const& policy, quantize_observer const& obs) {
  auto& m = q.model;
  auto const& c = m.config;
  index_t const S = index_t(tokens.shape()[0]), L = index_t(tokens.shape()[1]), D = c.dim;
  auto& tm = q.timings;
  bool const weighted = !is_uniform(policy);
  importance::needs const needs = policy.requirements();
  hessian::weighting const wt{.importance_power = opt.importance_power};

  // Token ids and counts for the policies that read them (after expansion, aligned with the sequences).
  rsq::matrix<std::int64_t> ids64;
  std::optional<importance::token_frequency> freq;
  if (needs.token_ids || needs.token_frequency) {
    ids64 = rsq::matrix<std::int64_t>::from_shape(tokens.shape());
    std::copy(tokens.begin(), tokens.end(), ids64.begin());
    if (needs.token_frequency) freq = importance::token_frequency::from_sequences(rsq::view(std::as_const(ids64)));
  }

  activations x;
  {
    stopwatch sw(tm.forward);
    x = embed(m, rsq::view(tokens));  // (S, L, dim)
  }

  for (int l = 0; l < c.n_layers; ++l) {
    auto const t_layer = clock::now();
    decoder_layer& layer = m.layers[std::size_t(l)];
    layer_report report{.layer = l, .n_layers = c.n_layers, .linears = {}, .seconds = 0};
    auto& weights = q.weights[std::size_t(l)];

    auto base_context = [&](index_t j) {
      importance::sequence_context ctx;
      ctx.tokens = L;
      if (needs.x_in) ctx.x_in = rsq::batch_view<const float>(x)[j];
      if (needs.token_ids) ctx.token_ids = rsq::view(std::as_const(ids64))[j];
      if (freq) ctx.frequencies = &*freq;
      return ctx;
    };

    // Pass 1, the full-precision layer: the q/k/v inputs and the importances (§5.2: once per layer, before any of
    // its linears is quantized). The importances of attention policies come from the post-RoPE Q/K of each sequence
    // while the forward runs; the others need the layer's FP output, so they are computed after it.
    rsq::matrix<float> r;  // (S, L) importances; empty when uniform
    if (weighted) r = rsq::make_matrix<float>(S, L);
    hessian_accumulator<T> acc_qkv(D, {}, wt);
    std::vector<float> qkv_in;                            // (S·L, dim), kept until the importances are known
    std::vector<std::vector<float>> saved_q, saved_k;     // per sequence, when a policy needs Q/K and x_out
    double hook_seconds = 0;
    forward_hooks hooks;
    hooks.linear_input = [&](linear_site const& s, rsq::matrix_view<const float> in) {
      if (s.linear != linear_id::wq) return;
      stopwatch hw(hook_seconds);
      if (!weighted) {
        stopwatch sw(tm.hessian);
        acc_qkv.add(rsq::batch_view<const float>(in.data(), {S, L, in.cols()}), rsq::matrix_view<const float>{});
      } else {
        qkv_in.assign(in.data(), in.data() + in.size());
      }
    };
    if (weighted && needs.attention)
      hooks.rope_qk = [&](attention_site const& s, rsq::batch_view<const float> qv, rsq::batch_view<const float> kv) {
        stopwatch hw(hook_seconds);
        stopwatch iw(tm.importance);
        if (needs.x_out) {
          auto copy = [](rsq::batch_view<const float> v) {
            std::vector<float> o;
            o.reserve(std::size_t(v.size()));
            for (index_t a = 0; a < v.extent(0); ++a)
              for (index_t b = 0; b < v.extent(1); ++b)
                for (index_t e = 0; e < v.extent(2); ++e) o.push_back(v(a, b, e));
            return o;
          };
          saved_q.push_back(copy(qv));
          saved_k.push_back(copy(kv));
          return;
        }
        auto ctx = base_context(s.sequence);
        ctx.queries = qv;
        ctx.keys = kv;
        auto const rj = policy.weights(ctx);  // (L)
        std::copy(rj.begin(), rj.end(), &r(s.sequence, 0));
      };
    activations fp_out;
    {
      auto const t0 = clock::now();
      fp_out = forward_layer(c, layer, l, rsq::batch_view<const float>(x), hooks);
      tm.forward += seconds_since(t0) - hook_seconds;
    }
    if (weighted) {
      if (!needs.attention || needs.x_out) {
        stopwatch iw(tm.importance);
        index_t const H = c.n_heads, KV = c.n_kv_heads, hs = c.head_size();
        for (index_t j = 0; j < S; ++j) {
          auto ctx = base_context(j);
          if (needs.x_out) ctx.x_out = rsq::batch_view<const float>(fp_out)[j];
          if (needs.attention) {
            ctx.queries = rsq::tensor_view<const float, 3>(saved_q[std::size_t(j)].data(), {H, L, hs});
            ctx.keys = rsq::tensor_view<const float, 3>(saved_k[std::size_t(j)].data(), {KV, L, hs});
          }
          auto const rj = policy.weights(ctx);  // (L)
          std::copy(rj.begin(), rj.end(), &r(j, 0));
        }
      }
      if (obs.on_importances) obs.on_importances(l, rsq::view(std::as_const(r)));
      stopwatch sw(tm.hessian);
      acc_qkv.add(rsq::batch_view<const float>(qkv_in.data(), {S, L, D}), rsq::matrix_view<const float>(r));
      qkv_in = {};
    }
    rsq::matrix_view<const float> const rv = weighted ? rsq::matrix_view<const float>(r) : rsq::matrix_view<const float>{};

    // Quantizes the linears of group g with Hessian h; false (and the failure recorded) if one is not positive
    // definite.
    auto solve_group = [&](std::size_t g, rsq::matrix<T> const& h) -> bool {
      if (obs.on_hessian) {
        auto hd = rsq::matrix<double>::from_shape(h.shape());
        std::copy(h.begin(), h.end(), hd.begin());
        obs.on_hessian(l, true_sequential_groups[g][0], hd);
      }
      for (int i = 0; i < true_sequential_group_sizes[g]; ++i) {
        linear_id const id = true_sequential_groups[g][std::size_t(i)];
        auto const t0 = clock::now();
        stopwatch sw(tm.solver);
        auto const w = cast_matrix<T>(layer.weight(id));  // (out, in)
        auto res = gptq::solve(Backend{}, w, h, opt.grid, opt.solver);
        linear_report lr{.linear = id,
                         .info = res.info,
                         .damp_attempts = res.damp_attempts,
                         .damp_percent_used = res.damp_percent_used,
                         .loss = res.ok() ? gptq::proxy_loss(w, res.dequantized, h) : 0.0,
                         .seconds = 0};
        if (!res.ok()) {
          lr.seconds = seconds_since(t0);
          report.linears.push_back(lr);
          q.info = res.info;
          q.failed_layer = l;
          q.failed_linear = id;
          return false;
        }
        layer.weight(id) = cast_matrix_back<T>(std::move(res.dequantized));
        weights[std::size_t(id)] = to_float_weight<T>(std::move(res.weight));
        lr.seconds = seconds_since(t0);
        report.linears.push_back(lr);
      }
      return true;
    };

    // Passes 2-4: the Hessian of a later group from the layer with the earlier groups quantized. The w2 pass also
    // keeps its input G (after the online Hadamard) and the layer output, from which the quantized layer's output
    // follows without another forward pass.
    std::vector<float> w2_in;  // (S·L, hidden)
    activations w2_pass_out;   // (S, L, dim) with w2 still in full precision
    auto group_hessian = [&](linear_id hook_id, index_t features) {
      hessian_accumulator<T> acc(features, {}, wt);
      double hook_s = 0;
      forward_hooks hk;
      hk.linear_input = [&](linear_site const& s, rsq::matrix_view<const float> in) {
        if (s.linear != hook_id) return;
        stopwatch hw(hook_s);
        {
          stopwatch sw(tm.hessian);
          acc.add(rsq::batch_view<const float>(in.data(), {S, L, features}), rv);
        }
        if (hook_id == linear_id::w2) w2_in.assign(in.data(), in.data() + in.size());
      };
      auto const t0 = clock::now();
      auto out = forward_layer(c, layer, l, rsq::batch_view<const float>(x), hk);
      if (hook_id == linear_id::w2) w2_pass_out = std::move(out);
      tm.forward += seconds_since(t0) - hook_s;
      stopwatch sw(tm.hessian);
      return acc.hessian();
    };

    auto finish_layer = [&] {
      report.seconds = seconds_since(t_layer);
      q.layers.push_back(report);
      if (obs.on_layer) obs.on_layer(q.layers.back());
    };

    rsq::matrix<T> h;
    {
      stopwatch sw(tm.hessian);
      h = acc_qkv.hessian();
    }
    bool ok = solve_group(0, h);
    if (ok) ok = solve_group(1, group_hessian(linear_id::wo, D));
    if (ok) ok = solve_group(2, group_hessian(linear_id::w1, D));
    rsq::matrix<float> const w2_fp = layer.w2;  // (dim, hidden)
    if (ok) ok = solve_group(3, group_hessian(linear_id::w2, c.hidden_dim));
    if (!ok) {
      finish_layer();
      return;
    }
    // The quantized layer's outputs are the next layer's inputs: the w2 pass computed x_mid + G·W2ᵀ with the FP
    // W2, so adding G·(W2_q − W2)ᵀ gives the output of the fully quantized layer (to float rounding) without a fifth
    // forward pass.
    {
      stopwatch sw(tm.forward);
      Eigen::MatrixXf delta = cpu::as_eigen(rsq::view(layer.w2)) - cpu::as_eigen(rsq::view(w2_fp));  // (dim, hidden)
      Eigen::Map<Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> const> g(w2_in.data(), S * L,
                                                                                               c.hidden_dim);
      Eigen::Map<Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> out(w2_pass_out.data(),
                                                                                             S * L, D);
      out.noalias() += g * delta.transpose();
      x = std::move(w2_pass_out);
      w2_in = {};
    }
    finish_layer();
  }
}

}  // namespace pipeline_detail

/// Quantizes @p fp with the method and options @p opt (see the file comment), calibrated on @p calibration, the
/// windows of token ids (sequences, L) before expansion (e.g. from sample_windows(); unused by rtn, which may pass
/// an empty view).
///
/// A Hessian that stays not positive definite through the damping escalation stops the run: the result then has
/// `info == gptq::status::not_positive_definite`, `failed_layer` and `failed_linear` set, and the layers before
/// it quantized. Nothing is printed; pass an observer for progress.
///
/// @tparam Backend where the GPTQ solves run (e.g. `quantize_model<backend::cuda>(...)` with <rsq/cuda.hpp>); the
///         forward passes and the Hessians run on the CPU. Being a template also keeps the whole layer loop out of
///         translation units that include this header without calling it (a minute of compile time otherwise).
/// @throws rsq::invalid_argument for bad options, a malformed or already rotated model, calibration windows that
///         are empty, longer than the model's seq_len or hold ids outside the vocabulary
template <backend_tag Backend = backend::cpu_eigen>
[[nodiscard]] quantized_model quantize_model(llama_model const& fp, rsq::matrix_view<const std::int32_t> calibration,
                                             quantize_options const& opt = {}, quantize_observer const& obs = {}) {
  using namespace pipeline_detail;
  auto const t_start = clock::now();
  opt.validate();
  validate(fp, /*check_finite=*/true);
  expect_plain(fp, "quantize_model");
  auto const& c = fp.config;

  quantized_model q;
  q.model = fp;
  q.weights.assign(std::size_t(c.n_layers), std::vector<quant::quantized_weight<float>>(std::size(all_linears)));
  q.method = opt.method;
  q.grid = opt.grid;
  q.group_size = opt.solver.group_size;
  q.importance_power = opt.importance_power;
  q.expand_factor = opt.expand_factor;

  if (opt.rotates_model()) {
    stopwatch sw(q.timings.rotation);
    q.rotation = rotate_model(q.model, opt.rotation);
  }
  if (opt.method == quant_method::rtn) {
    q.policy = "none";
    for (int l = 0; l < c.n_layers; ++l) {
      auto const t_layer = clock::now();
      layer_report report{.layer = l, .n_layers = c.n_layers, .linears = {}, .seconds = 0};
      auto& layer = q.model.layers[std::size_t(l)];
      for (std::size_t g = 0; g < true_sequential_groups.size(); ++g)
        for (int i = 0; i < true_sequential_group_sizes[g]; ++i) {
          linear_id const id = true_sequential_groups[g][std::size_t(i)];
          auto const t0 = clock::now();
          stopwatch sw(q.timings.solver);
          auto qw = quant::quantize_rtn(rsq::matrix_view<const float>(layer.weight(id)), opt.grid,
                                        opt.solver.group_size);
          auto deq = quant::dequantize(qw);  // (out, in)
          double err = 0;
          for (std::size_t k = 0; k < deq.size(); ++k) {
            double const d = double(layer.weight(id).data()[k]) - double(deq.data()[k]);
            err += d * d;
          }
          layer.weight(id) = std::move(deq);
          q.weights[std::size_t(l)][std::size_t(id)] = std::move(qw);
          report.linears.push_back({.linear = id, .info = gptq::status::ok, .damp_attempts = 0,
                                    .damp_percent_used = 0, .loss = err, .seconds = seconds_since(t0)});
        }
      report.seconds = seconds_since(t_layer);
      q.layers.push_back(report);
      if (obs.on_layer) obs.on_layer(q.layers.back());
    }
    q.timings.total = seconds_since(t_start);
    return q;
  }

  RSQ_EXPECTS(calibration.rows() > 0 && calibration.cols() >= 1,
              "quantize_model: the calibration windows are empty ", rsq::detail::shape_string(calibration));
  RSQ_EXPECTS(calibration.cols() <= c.seq_len, "quantize_model: calibration windows of ", calibration.cols(),
              " tokens exceed the model's seq_len ", c.seq_len);
  importance::any_policy const policy = opt.effective_policy();
  q.policy = std::string(policy.name());

  // Contiguous copy of the windows, expanded by cyclic shifts (§8.2).
  auto tokens = rsq::make_matrix<std::int32_t>(calibration.rows(), calibration.cols());  // (sequences, L)
  for (index_t s = 0; s < calibration.rows(); ++s)
    for (index_t t = 0; t < calibration.cols(); ++t) tokens(s, t) = calibration(s, t);
  if (opt.expand_factor > 1) tokens = expand_cyclic(rsq::view(std::as_const(tokens)), opt.expand_factor);
  q.calibration_sequences = index_t(tokens.shape()[0]);
  q.calibration_tokens = index_t(tokens.shape()[1]);

  if (opt.double_precision)
    quantize_layers<double, Backend>(q, tokens, opt, policy, obs);
  else
    quantize_layers<float, Backend>(q, tokens, opt, policy, obs);
  q.timings.total = seconds_since(t_start);
  return q;
}

/// Mean next-token loss and perplexity of @p m over the evaluation windows @p windows (sequences, L) (e.g. from
/// consecutive_windows()), run @p batch windows at a time; the online transforms of a rotated model apply.
/// @throws rsq::invalid_argument for empty windows, windows longer than the model's seq_len, batch < 1
[[nodiscard]] inline loss_result evaluate(llama_model const& m, rsq::matrix_view<const std::int32_t> windows,
                                          index_t batch = 16) {
  RSQ_EXPECTS(windows.rows() > 0 && windows.cols() >= 2, "evaluate: need at least one window of 2 or more tokens, got ",
              rsq::detail::shape_string(windows));
  RSQ_EXPECTS(windows.cols() <= m.config.seq_len, "evaluate: windows of ", windows.cols(),
              " tokens exceed the model's seq_len ", m.config.seq_len);
  RSQ_EXPECTS(batch >= 1, "evaluate: batch must be at least 1, got ", batch);
  loss_result total;
  for (index_t s0 = 0; s0 < windows.rows(); s0 += batch) {
    index_t const n = std::min(batch, windows.rows() - s0);
    rsq::matrix_view<const std::int32_t> const part(&windows(s0, 0), {n, windows.cols()},
                                                    {windows.stride(0), windows.stride(1)});
    auto const r = next_token_loss(m, part);
    total.sum += r.sum;
    total.count += r.count;
  }
  total.mean = total.sum / double(total.count);
  total.perplexity = std::exp(total.mean);
  return total;
}

#if defined(RSQ_EXTERN_TEMPLATES)
// The layer loop on the CPU backend lives in the translation unit that includes <rsq/instantiate.hpp>.
extern template quantized_model quantize_model<backend::cpu_eigen>(llama_model const&,
                                                                   rsq::matrix_view<const std::int32_t>,
                                                                   quantize_options const&, quantize_observer const&);
#endif

}  // namespace rsq::model
