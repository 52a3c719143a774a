// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// A learned rotation of a Llama-architecture model (SpinQuant, arXiv 2405.16406): R1, one dim × dim rotation of the
/// residual stream shared by every layer, and R2, one head_dim × head_dim rotation per layer of the V/O head space,
/// as model/learn_rotation.hpp learns them. Both are the *whole* rotation the quantized model ends up with: with the
/// norms fused (model/rotate.hpp §2.1),
///   E ← E·R1, classifier, wq, wk, w1, w3 ← W·R1, wo, w2 ← R1ᵀ·W,
///   wv ← (I ⊗ R2ᵀ)·wv (each KV head's output features), wo ← wo·(I ⊗ R2) (each head's input features);
/// QuaRot's rotation is the special case R1 = Q (its randomized Hadamard) and R2 = H_hd/√hd (its per-head Hadamard),
/// which is where the learning starts. The online Hadamards (down_proj's input, across heads) stay fixed.
///
/// quantize_model() takes a learned rotation through rotate_options::learned. Its pipeline rotates by its own Q and
/// per-head Hadamard; apply_learned_rotation() therefore pre-rotates the plain model by R1·Qᵀ and R2·H_hdᵀ, so that
/// the pipeline's rotation completes exactly R1 and R2 (whatever seed it was given), and the rest of the pipeline
/// (Hessians through the online transforms, GPTQ or RSQ, the checkpoint writers) is unchanged.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <variant>
#include <vector>

#include "rsq/backend/tags.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/io/npy.hpp"
#include "rsq/linalg/gemm.hpp"
#include "rsq/model/llama.hpp"
#include "rsq/model/rotate.hpp"

namespace rsq::model {

/// R1 (dim, dim) and one R2 (head_dim, head_dim) per layer, in float64 (see the file comment for where they act).
struct learned_rotation {
  rsq::matrix<double> r1;               ///< (dim, dim) residual rotation
  std::vector<rsq::matrix<double>> r2;  ///< n_layers of (head_dim, head_dim): V/O rotation of each layer
};

namespace learned_detail {

/// max |AᵀA − I| (element-wise) of a square matrix.
[[nodiscard]] inline double orthogonality_error(rsq::matrix<double> const& a) {
  auto const ata = linalg::product(backend::cpu_eigen{}, matrix_view<const double>(rsq::view(a)), linalg::op::transpose,
                                   matrix_view<const double>(rsq::view(a)), linalg::op::none);
  std::size_t const n = a.shape()[0];
  double worst = 0;
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < n; ++j) worst = std::max(worst, std::abs(ata(i, j) - (i == j ? 1.0 : 0.0)));
  return worst;
}

/// op(A)·op(B) on the CPU backend.
[[nodiscard]] inline rsq::matrix<double> product(rsq::matrix<double> const& a, linalg::op oa,
                                                 rsq::matrix<double> const& b, linalg::op ob) {
  return linalg::product(backend::cpu_eigen{}, matrix_view<const double>(rsq::view(a)), oa,
                         matrix_view<const double>(rsq::view(b)), ob);
}

/// The top-left (n, n) block of @p m.
[[nodiscard]] inline rsq::matrix<double> leading_block(rsq::matrix<double> const& m, index_t n) {
  auto b = rsq::make_matrix<double>(n, n);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n; ++j) b(std::size_t(i), std::size_t(j)) = m(std::size_t(i), std::size_t(j));
  return b;
}

}  // namespace learned_detail

/// Throws rsq::invalid_argument unless @p r fits config @p c (R1 dim × dim, one head_size × head_size R2 per layer,
/// finite) and every matrix is orthogonal to @p tolerance (max |RᵀR − I|).
inline void validate(learned_rotation const& r, llama_config const& c, double tolerance = 1e-4) {
  RSQ_EXPECTS(r.r1.dimension() == 2 && index_t(r.r1.shape()[0]) == c.dim && index_t(r.r1.shape()[1]) == c.dim,
              "learned_rotation: R1 must be (", c.dim, " x ", c.dim, "), got ", rsq::detail::shape_string(rsq::view(r.r1)));
  RSQ_EXPECTS(r.r2.size() == std::size_t(c.n_layers), "learned_rotation: ", r.r2.size(), " R2 matrices for a model of ",
              c.n_layers, " layers");
  index_t const hd = c.head_size();
  for (std::size_t l = 0; l < r.r2.size(); ++l)
    RSQ_EXPECTS(index_t(r.r2[l].shape()[0]) == hd && index_t(r.r2[l].shape()[1]) == hd, "learned_rotation: R2 of layer ",
                l, " must be (", hd, " x ", hd, "), got ", rsq::detail::shape_string(rsq::view(r.r2[l])));
  auto const check = [&](rsq::matrix<double> const& m, std::string const& what) {
    for (double v : m) RSQ_EXPECTS(std::isfinite(v), "learned_rotation: ", what, " holds NaN or Inf");
    if (std::isinf(tolerance)) return;  // shapes and values only (R1 of a 4096-wide model: RᵀR is 10¹¹ flops)
    double const e = learned_detail::orthogonality_error(m);
    RSQ_EXPECTS(e <= tolerance, "learned_rotation: ", what, " is not orthogonal (max |RᵀR − I| = ", e, " > ", tolerance,
                ")");
  };
  check(r.r1, "R1");
  for (std::size_t l = 0; l < r.r2.size(); ++l) check(r.r2[l], "R2 of layer " + std::to_string(l));
}

/// The rotation QuaRot would apply under @p p: R1 = Q (dense), R2 = H_hd/√hd in every layer; where the learning
/// starts.
[[nodiscard]] inline learned_rotation initial_rotation(rotation_plan const& p, llama_config const& c) {
  learned_rotation r;
  r.r1 = std::visit([](auto const& q) { return q.dense(); }, p.residual);
  // value_heads is Q = I ⊗ Qh (wv ← Qᵀ wv): Qh is the leading block, and R2 = Qh in learned_rotation's convention.
  auto const qh = learned_detail::leading_block(p.value_heads.dense(), c.head_size());
  r.r2.assign(std::size_t(c.n_layers), qh);
  return r;
}

/// Rotates the plain model @p m so that quantize_model()'s own rotation under plan @p p completes exactly @p r: the
/// norms are fused (gains become ones), then E, classifier, wq, wk, w1, w3 ← W·R1', wo, w2 ← R1'ᵀ·W, wv ← (I ⊗ R2'ᵀ)
/// wv, wo ← wo (I ⊗ R2') with R1' = R1·Qᵀ and R2' = R2·Qhᵀ, in float64. Function-preserving.
/// @throws rsq::invalid_argument for a malformed or rotated model, biases (not supported by learned rotations yet),
///         or a rotation that does not fit the model (validate above)
inline void apply_learned_rotation(llama_model& m, learned_rotation const& r, rotation_plan const& p) {
  auto const& c = m.config;
  validate(m, /*check_finite=*/true);
  expect_plain(m, "apply_learned_rotation");
  RSQ_EXPECTS(!c.qkv_bias && !c.o_bias && !c.mlp_bias, "apply_learned_rotation: models with biases are not supported");
  validate(r, c);
  using learned_detail::product;
  using linalg::op;
  auto const start = initial_rotation(p, c);
  auto const r1p = product(r.r1, op::none, start.r1, op::transpose);  // R1·Qᵀ
  fuse_norms(m);
  index_t const hd = c.head_size();
  auto const to_double = [](rsq::matrix<float> const& w) {
    auto d = rsq::make_matrix_for_overwrite<double>(index_t(w.shape()[0]), index_t(w.shape()[1]));
    std::copy(w.begin(), w.end(), d.begin());
    return d;
  };
  auto const store = [](rsq::matrix<float>& w, rsq::matrix<double> const& d) {
    std::transform(d.begin(), d.end(), w.begin(), [](double v) { return float(v); });
  };
  auto const right = [&](rsq::matrix<float>& w) { store(w, product(to_double(w), op::none, r1p, op::none)); };
  auto const left_t = [&](rsq::matrix<float>& w) { store(w, product(r1p, op::transpose, to_double(w), op::none)); };
  right(m.token_embedding);
  right(m.classifier);
  for (std::size_t l = 0; l < m.layers.size(); ++l) {
    auto& L = m.layers[l];
    auto const r2p = product(r.r2[l], op::none, start.r2[l], op::transpose);  // R2·Qhᵀ
    for (linear_id id : {linear_id::wq, linear_id::wk, linear_id::w1, linear_id::w3}) right(L.weight(id));
    left_t(L.w2);
    // wv: R1' on the input side, R2'ᵀ on each KV head's output features.
    auto v = product(to_double(L.wv), op::none, r1p, op::none);  // (kv_dim, dim)
    for (index_t g = 0; g < c.n_kv_heads; ++g) {
      auto head = rsq::make_matrix<double>(hd, c.dim);
      for (index_t i = 0; i < hd; ++i)
        for (index_t j = 0; j < c.dim; ++j) head(std::size_t(i), std::size_t(j)) = v(std::size_t(g * hd + i), std::size_t(j));
      auto const rotated = product(r2p, op::transpose, head, op::none);
      for (index_t i = 0; i < hd; ++i)
        for (index_t j = 0; j < c.dim; ++j) v(std::size_t(g * hd + i), std::size_t(j)) = rotated(std::size_t(i), std::size_t(j));
    }
    store(L.wv, v);
    // wo: R1'ᵀ on the output side, R2' on each head's input features.
    auto o = product(r1p, op::transpose, to_double(L.wo), op::none);  // (dim, q_dim)
    for (index_t h = 0; h < c.n_heads; ++h) {
      auto head = rsq::make_matrix<double>(c.dim, hd);
      for (index_t i = 0; i < c.dim; ++i)
        for (index_t j = 0; j < hd; ++j) head(std::size_t(i), std::size_t(j)) = o(std::size_t(i), std::size_t(h * hd + j));
      auto const rotated = product(head, op::none, r2p, op::none);
      for (index_t i = 0; i < c.dim; ++i)
        for (index_t j = 0; j < hd; ++j) o(std::size_t(i), std::size_t(h * hd + j)) = rotated(std::size_t(i), std::size_t(j));
    }
    store(L.wo, o);
  }
}

/// Writes @p r as two float64 .npy files: `<prefix>.r1.npy` (dim, dim) and `<prefix>.r2.npy` (n_layers, head_dim,
/// head_dim), readable by numpy.
inline void save_learned_rotation(std::filesystem::path const& prefix, learned_rotation const& r) {
  RSQ_EXPECTS(!r.r2.empty(), "save_learned_rotation: the rotation has no R2 matrices");
  std::size_t const hd = r.r2.front().shape()[0];
  xt::xtensor<double, 3> r2 = xt::xtensor<double, 3>::from_shape({r.r2.size(), hd, hd});
  for (std::size_t l = 0; l < r.r2.size(); ++l)
    for (std::size_t i = 0; i < hd; ++i)
      for (std::size_t j = 0; j < hd; ++j) r2(l, i, j) = r.r2[l](i, j);
  io::save_npy(std::filesystem::path(prefix.string() + ".r1.npy"), r.r1);
  io::save_npy(std::filesystem::path(prefix.string() + ".r2.npy"), r2);
}

/// Reads what save_learned_rotation() wrote and checks it against config @p c (validate above).
/// @throws rsq::invalid_argument (or rsq::io_error) naming the file and what is wrong
[[nodiscard]] inline learned_rotation load_learned_rotation(std::filesystem::path const& prefix, llama_config const& c) {
  learned_rotation r;
  r.r1 = io::load_npy<double, 2>(std::filesystem::path(prefix.string() + ".r1.npy"));
  auto const r2 = io::load_npy<double, 3>(std::filesystem::path(prefix.string() + ".r2.npy"));
  std::size_t const rows = r2.shape()[1], cols = r2.shape()[2];
  for (std::size_t l = 0; l < r2.shape()[0]; ++l) {
    auto m = rsq::make_matrix_for_overwrite<double>(index_t(rows), index_t(cols));
    std::copy(r2.data() + l * rows * cols, r2.data() + (l + 1) * rows * cols, m.begin());
    r.r2.push_back(std::move(m));
  }
  validate(r, c);
  return r;
}

}  // namespace rsq::model
