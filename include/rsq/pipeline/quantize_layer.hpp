// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The one-layer RSQ pipeline: rotate, scale, then quantize a single linear layer in one call (spec §1, §4, §5).
///
///   1. Rotate: W ← W·Q and every calibration input x ← x·Q (Q randomized Hadamard or random orthogonal, from a
///      seed); the layer computes the same outputs, (x·Q)(W·Q)ᵀ = x·Wᵀ.
///   2. Scale: token importances r per sequence, given by the caller or computed by an importance policy (AttnCon from
///      the attention the caller passes, ActNorm from the inputs, ...), enter the Hessian as w ∝ r^p.
///   3. Quantize: GPTQ on the rotated W with the importance-weighted Hessian of the rotated inputs.
/// The result is the quantized layer *in the rotated basis*, plus the rotation's descriptor: at inference the layer
/// computes (x·Q)·Q̂ᵀ, or `dequantized_in_original_basis()` gives Q̂·Qᵀ to use with unrotated inputs.
///
/// Every step runs on the backend given first: the rotated copies of W and of the inputs, the Hessian, its
/// factorization, the solve and the proxy loss stay in the backend's memory (H never leaves a GPU); the solver's
/// result comes back to the host.

#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include "rsq/backend/memory.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/gptq/proxy_loss.hpp"
#include "rsq/gptq/solve.hpp"
#include "rsq/hessian/accumulator.hpp"
#include "rsq/importance/batch.hpp"
#include "rsq/importance/policy.hpp"
#include "rsq/quant/grid.hpp"
#include "rsq/rotation/any_rotation.hpp"

namespace rsq::pipeline {

/// The calibration data of one linear layer. Only `inputs` is required; the rest feeds the importance policy.
template <class T>
struct layer_calibration {
  batch_view<const T> inputs{};                  ///< the layer's inputs x // (sequences, tokens, in_features)
  matrix_view<const float> importance{};         ///< given token importances r // (sequences, tokens)
  tensor_view<const T, 4> attention{};           ///< causal attention probabilities (AttnCon)
                                                 ///< // (sequences, heads, tokens, tokens)
  batch_view<const T> block_outputs{};           ///< the FP output of the decoder block (ActDiff)
                                                 ///< // (sequences, tokens, hidden)
  matrix_view<const std::int64_t> token_ids{};   ///< (TokenFreq) // (sequences, tokens)
};

/// What to do with the layer. `policy` is ignored when importances are given; without either, tokens are uniform.
struct layer_options {
  quant::grid_spec grid = {};
  gptq::options solver = {};
  hessian::weighting weighting = {};                          ///< w ∝ r^importance_power
  hessian::options hessian = {};                              ///< Hessian arithmetic (strict; TF32/bf16 opt-ins)
  std::optional<importance::any_policy> policy = std::nullopt;  ///< e.g. importance::any_policy::parse("attncon")
  std::optional<rotation::rotation_descriptor> rotation = std::nullopt;  ///< none: no rotation
};

/// The quantized layer, in the rotated basis; its Hessian stays in the memory of backend B.
template <class T, class B = backend::cpu_eigen>
struct quantized_layer {
  gptq::result<T> result;                                      ///< codes, scales, zeros, Q̂ = result.dequantized
  std::optional<rotation::rotation_descriptor> rotation;       ///< Q, to rotate inputs or rebuild the rotation
  rsq::matrix<float> importance;                               ///< (sequences, tokens) r used; empty when uniform
  backend::matrix<T, B> hessian;                               ///< (in, in) H of the rotated inputs, undamped
  double proxy_loss = 0;  ///< tr((W·Q − Q̂)·H·(W·Q − Q̂)ᵀ), equal to the loss in the original basis

  [[nodiscard]] bool ok() const noexcept { return result.ok(); }

  /// Q̂·Qᵀ: the quantized weight for unrotated inputs (equals Q̂ without a rotation).
  [[nodiscard]] rsq::matrix<T> dequantized_in_original_basis() const {
    rsq::matrix<T> w = result.dequantized;
    if (rotation) std::visit([&](auto const& r) { r.apply_right_transpose(rsq::view(w)); }, make_rotation(*rotation));
    return w;
  }
};

namespace detail {

/// r for every sequence: given, from the policy, or empty (uniform).
template <class T>
rsq::matrix<float> layer_importance(layer_calibration<T> const& c, layer_options const& opt) {
  index_t const seqs = c.inputs.extent(0), tokens = c.inputs.extent(1);
  if (c.importance.data() != nullptr) {
    RSQ_EXPECTS(c.importance.rows() == seqs && c.importance.cols() == tokens, "quantize_layer: importance ",
                rsq::detail::shape_string(c.importance), " does not match the inputs ",
                rsq::detail::shape_string(c.inputs), " (expected sequences x tokens)");
    rsq::matrix<float> r = rsq::make_matrix<float>(seqs, tokens);
    for (index_t j = 0; j < seqs; ++j)
      for (index_t t = 0; t < tokens; ++t) r(j, t) = c.importance(j, t);
    return r;
  }
  if (!opt.policy) return {};
  if (c.attention.data() != nullptr)
    RSQ_EXPECTS(c.attention.extent(0) == seqs && c.attention.extent(2) == tokens && c.attention.extent(3) == tokens,
                "quantize_layer: attention ", rsq::detail::shape_string(c.attention), " does not match the inputs ",
                rsq::detail::shape_string(c.inputs), " (expected sequences x heads x tokens x tokens)");
  if (c.block_outputs.data() != nullptr)
    RSQ_EXPECTS(c.block_outputs.extent(0) == seqs && c.block_outputs.extent(1) == tokens,
                "quantize_layer: block outputs ", rsq::detail::shape_string(c.block_outputs),
                " do not match the inputs ", rsq::detail::shape_string(c.inputs));
  if (c.token_ids.data() != nullptr)
    RSQ_EXPECTS(c.token_ids.rows() == seqs && c.token_ids.cols() == tokens, "quantize_layer: token ids ",
                rsq::detail::shape_string(c.token_ids), " do not match the inputs ",
                rsq::detail::shape_string(c.inputs));
  std::optional<importance::token_frequency> freq;
  if (c.token_ids.data() != nullptr) freq = importance::token_frequency::from_sequences(c.token_ids);
  auto const r = importance::batch_weights(*opt.policy, seqs, [&](index_t j) {
    importance::basic_sequence_context<T> ctx;
    ctx.tokens = tokens;
    ctx.x_in = c.inputs[j];
    if (c.block_outputs.data() != nullptr) ctx.x_out = c.block_outputs[j];
    if (c.attention.data() != nullptr) ctx.attention = c.attention[j];
    if (c.token_ids.data() != nullptr) ctx.token_ids = c.token_ids[j];
    if (freq) ctx.frequencies = &*freq;
    return ctx;
  });
  return xt::cast<float>(r);
}

}  // namespace detail

/// Rotates, scales and quantizes one linear layer @p w (out_features, in_features) with calibration data @p calib,
/// on backend @p be. W and the inputs may be in host memory or in the backend's memory; importances computed by a
/// policy read host arrays (given importances may be anywhere).
/// @throws rsq::invalid_argument for shapes that do not match, bad inputs, a policy whose inputs are missing, a
///         rotation of another size
/// A Hessian that is not positive definite is a status in `result` (see gptq::solve), not an exception.
template <backend_tag B, class T>
[[nodiscard]] quantized_layer<T, B> quantize_layer(B const& be, matrix_view<const T> w,
                                                   layer_calibration<T> const& calib, layer_options const& opt) {
  RSQ_EXPECTS(calib.inputs.data() != nullptr && calib.inputs.extent(0) > 0 && calib.inputs.extent(1) > 0,
              "quantize_layer: calibration inputs are empty");
  RSQ_EXPECTS(calib.inputs.extent(2) == w.cols(), "quantize_layer: inputs ", rsq::detail::shape_string(calib.inputs),
              " do not match the weight ", rsq::detail::shape_string(w), " (expected (sequences, tokens, ", w.cols(),
              "))");
  if (opt.rotation)
    RSQ_EXPECTS(opt.rotation->n == w.cols(), "quantize_layer: the rotation is for n = ", opt.rotation->n,
                ", the weight has ", w.cols(), " input features");
  quantized_layer<T, B> out;
  out.importance = detail::layer_importance(calib, opt);  // from the unrotated data: the policies are rotation-free

  // Rotated copies of W (rows, cols) and of the inputs (sequences·tokens, cols), in the backend's memory.
  index_t const seqs = calib.inputs.extent(0), tokens = calib.inputs.extent(1);
  auto wr = backend::to_backend(be, w);
  backend::matrix<T, B> xr;
  {
    auto const& in = calib.inputs;
    bool const flat = in.stride(2) == 1 && in.stride(1) == in.extent(2) && in.stride(0) == in.extent(1) * in.extent(2);
    if (flat) {
      xr = backend::to_backend(be, matrix_view<const T>(in.data(), seqs * tokens, w.cols()));
    } else {
      RSQ_EXPECTS((!backend::resident(be, in.data()) || std::is_same_v<B, backend::cpu_eigen>),
                  "quantize_layer: inputs in the backend's memory must be contiguous");
      auto packed = rsq::make_matrix_for_overwrite<T>(seqs * tokens, w.cols());
      for (index_t j = 0; j < seqs; ++j)
        for (index_t t = 0; t < tokens; ++t)
          for (index_t f = 0; f < w.cols(); ++f) packed(j * tokens + t, f) = in(j, t, f);
      xr = backend::to_backend(be, matrix_view<const T>(rsq::view(packed)));
    }
  }
  if (opt.rotation) {
    auto const rot = rotation::make_rotation(*opt.rotation);
    std::visit(
        [&](auto const& r) {
          r.apply_right(be, rsq::view(wr));
          r.apply_right(be, rsq::view(xr));
        },
        rot);
    out.rotation = opt.rotation;
  }

  hessian_accumulator<T, B> acc(w.cols(), be, opt.weighting, opt.hessian);
  batch_view<const T> const x3(rsq::view(xr).data(), {seqs, tokens, w.cols()});
  if (out.importance.size() > 0) acc.add(x3, matrix_view<const float>(rsq::view(out.importance)));
  else acc.add(x3, matrix_view<const float>{});
  out.hessian = acc.hessian_resident();
  auto const f = gptq::factor(be, matrix_view<const T>(rsq::view(out.hessian)), opt.solver);
  auto res = gptq::solve_resident(be, matrix_view<const T>(rsq::view(wr)), f, opt.grid, opt.solver);
  if (res.ok())
    out.proxy_loss = gptq::proxy_loss(be, matrix_view<const T>(rsq::view(wr)),
                                      matrix_view<const T>(rsq::view(res.dequantized)),
                                      matrix_view<const T>(rsq::view(out.hessian)));
  out.result = gptq::to_host(be, std::move(res));
  return out;
}

/// quantize_layer() for any viewable weight (Eigen, xtensor, views).
template <backend_tag B, viewable<2> WA, class T>
[[nodiscard]] quantized_layer<T, B> quantize_layer(B const& be, WA const& w, layer_calibration<T> const& calib,
                                                   layer_options const& opt) {
  return quantize_layer<B, T>(be, matrix_view<const T>(make_const_view<2>(w)), calib, opt);
}

}  // namespace rsq::pipeline
