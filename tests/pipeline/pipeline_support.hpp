// SPDX-License-Identifier: MIT
#pragma once
// Helpers of the pipeline tests: small random models (including shapes whose Hadamards are not Sylvester), the real
// stories260K model and text, logits comparisons, and an independent float64 Hessian accumulation.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <rsq/model/calibration.hpp>
#include <rsq/model/forward.hpp>
#include <rsq/model/llama2c.hpp>
#include <rsq/model/tokenizer.hpp>

#include "model/model_test_support.hpp"
#include "support/shared_data.hpp"

namespace rsq_pipeline_test {

using rsq::index_t;

/// dim 32, hidden 48 (had48), 4 heads of 8 sharing 2 KV heads: the model tests' tiny config with seq_len 64.
inline rsq::model::llama_config tiny_config() {
  auto c = rsq_test::tiny_config();
  c.seq_len = 64;
  return c;
}

/// dim 48 = 12 heads of 4 (the cross-head Hadamard is had12, not symmetric), 4 KV heads (GQA 3), hidden 56 = 28·2.
inline rsq::model::llama_config odd_config() {
  rsq::model::llama_config c;
  c.dim = 48;
  c.hidden_dim = 56;
  c.n_layers = 2;
  c.n_heads = 12;
  c.n_kv_heads = 4;
  c.vocab_size = 50;
  c.seq_len = 64;
  return c;
}

inline rsq::model::llama_model random_model(rsq::model::llama_config const& c, std::uint32_t seed) {
  return rsq_test::random_model(c, seed);
}

/// (S, L) random token ids in [0, vocab), deterministic.
inline rsq::matrix<std::int32_t> random_tokens(index_t S, index_t L, int vocab, std::uint32_t seed) {
  std::mt19937 g(seed);
  auto t = rsq::make_matrix<std::int32_t>(S, L);
  for (auto& x : t) x = std::int32_t(g() % std::uint32_t(vocab));
  return t;
}

/// max |a − b| / max |a| over two logit arrays of the same shape.
inline double relative_logit_difference(rsq::model::activations const& a, rsq::model::activations const& b) {
  REQUIRE(a.shape() == b.shape());
  double d = 0, m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, std::abs(double(a.data()[i]) - double(b.data()[i])));
    m = std::max(m, std::abs(double(a.data()[i])));
  }
  return d / m;
}

/// stories260K, its tokenizer and the stories of tinystories_val.txt.
struct stories260k {
  rsq::model::llama_model model;
  rsq::model::tokenizer tok;
  std::vector<std::string> stories;
};

inline stories260k load_stories260k(std::filesystem::path const& shared) {
  stories260k f{rsq::model::load_llama2c_checkpoint(shared / "data/models/stories260K.bin"), {}, {}};
  f.tok = rsq::model::load_tokenizer(shared / "data/models/tok512.bin", {.vocab_size = f.model.config.vocab_size});
  f.stories = rsq::model::load_stories(shared / "data/text/tinystories_val.txt");
  return f;
}

/// H = (2/N) Σ_j Σ_t w_jt x_jt x_jtᵀ in float64, w = L·r/Σr per sequence (w ≡ 1 without r), from x (S·L, n) given
/// sequence-major, written independently of rsq::hessian_accumulator.
inline std::vector<double> reference_hessian(rsq::matrix_view<const float> x, index_t S, index_t L,
                                             rsq::matrix<float> const* r) {
  index_t const n = x.cols();
  std::vector<double> h(std::size_t(n * n), 0.0);
  for (index_t j = 0; j < S; ++j) {
    double rs = 0;
    if (r)
      for (index_t t = 0; t < L; ++t) rs += double((*r)(j, t));
    for (index_t t = 0; t < L; ++t) {
      double const w = r ? double(L) * double((*r)(j, t)) / rs : 1.0;
      for (index_t a = 0; a < n; ++a)
        for (index_t b = 0; b < n; ++b)
          h[std::size_t(a * n + b)] += w * double(x(j * L + t, a)) * double(x(j * L + t, b));
    }
  }
  for (auto& v : h) v *= 2.0 / double(S);
  return h;
}

/// max |a − b| / max |b| for a Hessian against a reference buffer.
inline double relative_matrix_difference(rsq::matrix<double> const& a, std::vector<double> const& b) {
  REQUIRE(a.size() == b.size());
  double d = 0, m = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    d = std::max(d, std::abs(a.data()[i] - b[i]));
    m = std::max(m, std::abs(b[i]));
  }
  return d / m;
}

}  // namespace rsq_pipeline_test
