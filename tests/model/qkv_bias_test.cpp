// SPDX-License-Identifier: MIT
// q/k/v biases (Qwen2) through the whole model: zero biases give the bias-free model's logits bit for bit; the
// rotations (full and fused) keep a biased model's logits; the layer-by-layer pipeline rotates and quantizes it on
// the backend; a Hugging Face folder with biases (RoPE-permuted q/k biases) and a GPTQ checkpoint carry them.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>

#include <rsq/model/forward.hpp>
#include <rsq/model/gptq_checkpoint.hpp>
#include <rsq/model/hf_model.hpp>
#include <rsq/model/quantize.hpp>
#include <rsq/model/rotate.hpp>

#include "model/model_test_support.hpp"
#include "support/shared_data.hpp"

using namespace rsq::model;
using rsq::index_t;

namespace {

llama_config biased_config() {
  llama_config c = rsq_test::tiny_config();  // 4 heads, 2 KV heads
  c.dim = 64;
  c.hidden_dim = 64;
  c.seq_len = 32;
  c.qkv_bias = true;
  return c;
}

/// A random model of @p c with biases drawn with standard deviation @p sd (zero: all zero).
llama_model biased_model(llama_config c, unsigned seed, double sd) {
  c.qkv_bias = false;
  auto m = rsq_test::random_model(c, seed);
  m.config.qkv_bias = true;
  std::mt19937 g(seed + 100);
  std::normal_distribution<double> n(0.0, sd);
  for (auto& L : m.layers) {
    L.bq = rsq::vector<float>::from_shape({std::size_t(c.dim)});
    L.bk = rsq::vector<float>::from_shape({std::size_t(c.kv_dim())});
    L.bv = rsq::vector<float>::from_shape({std::size_t(c.kv_dim())});
    for (auto* b : {&L.bq, &L.bk, &L.bv})
      for (auto& v : *b) v = sd == 0 ? 0.f : float(n(g));
  }
  return m;
}

rsq::matrix<std::int32_t> tokens(index_t s, index_t l, int vocab) {
  auto t = rsq::make_matrix<std::int32_t>(s, l);
  for (index_t i = 0; i < s; ++i)
    for (index_t j = 0; j < l; ++j) t(i, j) = std::int32_t((i * 11 + j * 7 + (i + j) % 3) % vocab);
  return t;
}

/// max |a − b| / max |b| over logits (sequences, L, vocab).
template <class A>
double max_rel_diff(A const& a, A const& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(double(a.data()[i]) - double(b.data()[i])));
    den = std::max(den, std::abs(double(b.data()[i])));
  }
  return num / den;
}

auto logits(llama_model const& m, rsq::matrix<std::int32_t> const& t) { return forward(m, rsq::view(t)); }

hf_config qwen2_config_of(llama_config const& c) {
  nlohmann::json j = {{"architectures", {"Qwen2ForCausalLM"}}, {"hidden_size", c.dim},
                      {"intermediate_size", c.hidden_dim},    {"num_hidden_layers", c.n_layers},
                      {"num_attention_heads", c.n_heads},     {"num_key_value_heads", c.n_kv_heads},
                      {"vocab_size", c.vocab_size},           {"max_position_embeddings", c.seq_len},
                      {"rms_norm_eps", 1e-5},                 {"tie_word_embeddings", true}};
  return parse_hf_config(j.dump());
}

}  // namespace

TEST_CASE("q/k/v biases: zero biases give the bias-free logits bit for bit; real ones change them") {
  auto const c = biased_config();
  auto const t = tokens(2, 20, c.vocab_size);
  auto zero = biased_model(c, 7, 0.0);
  auto plain = zero;
  plain.config.qkv_bias = false;
  for (auto& L : plain.layers) L.bq = L.bk = L.bv = rsq::vector<float>{};
  CHECK(logits(zero, t) == logits(plain, t));
  auto const biased = biased_model(c, 7, 0.5);
  CHECK(max_rel_diff(logits(biased, t), logits(plain, t)) > 1e-3);
  auto bad = biased;
  bad.layers[1].bk = rsq::vector<float>::from_shape({3});
  CHECK_THROWS_WITH_AS(validate(bad), doctest::Contains("layer 1 bk"), rsq::invalid_argument);
}

TEST_CASE("q/k/v biases: full and fused rotations keep the logits") {
  auto const c = biased_config();
  auto const t = tokens(2, 20, c.vocab_size);
  auto const fp = biased_model(c, 9, 0.5);
  auto const ref = logits(fp, t);
  for (bool online : {true, false}) {
    CAPTURE(online);
    auto m = fp;
    (void)rotate_model(m, {.seed = 4, .online_hadamards = online});
    CHECK(max_rel_diff(logits(m, t), ref) < 1e-4);
    CHECK(m.layers[0].bq == fp.layers[0].bq);  // the residual rotation acts on inputs: q/k biases are unchanged
  }
}

TEST_CASE("q/k/v biases: the pipeline rotates and quantizes a biased model (8 bits: the logits stay close)") {
  auto const c = biased_config();
  auto const t = tokens(2, 20, c.vocab_size);
  auto const fp = biased_model(c, 13, 0.5);
  auto const calib = tokens(4, 32, c.vocab_size);
  for (auto method : {quant_method::gptq, quant_method::rsq}) {
    CAPTURE(to_string(method));
    quantize_options o;
    o.method = method;
    o.grid = rsq_script_grid(8);
    auto const q = quantize_model(rsq::backend::cpu_eigen{}, fp, rsq::view(calib), o);
    REQUIRE(q.ok());
    CHECK(max_rel_diff(logits(q.model, t), logits(fp, t)) < 0.05);
  }
}

TEST_CASE("q/k/v biases: a Qwen2 folder and a GPTQ checkpoint carry them") {
  auto const c = biased_config();
  auto const m = biased_model(c, 17, 0.5);
  auto const src = qwen2_config_of(c);
  CHECK(to_llama_config(src).qkv_bias);
  auto const dir = rsq_test::temp_dir("qwen2_folder");
  save_hf_model(dir, m, src);
  auto const ck = rsq::io::safetensors_checkpoint::open(dir);
  // Hugging Face's q bias is in its RoPE-halves order: HF row i of head 0 is pair row 2i.
  auto const hq = ck.to_float<1>("model.layers.0.self_attn.q_proj.bias");
  CHECK(hq(1) == m.layers[0].bq(2));
  CHECK(hq(c.head_size() / 2) == m.layers[0].bq(1));
  auto const back = load_hf_model(dir);
  CHECK(back.config.architecture == hf_architecture::qwen2);
  for (std::size_t l = 0; l < m.layers.size(); ++l) {
    CHECK(back.model.layers[l].bq == m.layers[l].bq);
    CHECK(back.model.layers[l].bk == m.layers[l].bk);
    CHECK(back.model.layers[l].bv == m.layers[l].bv);
  }

  quantize_options o;
  o.method = quant_method::rsq;
  o.grid = rsq_script_grid(4);
  o.grid.fp16_scales = true;
  o.rotation.online_hadamards = false;
  auto const calib = tokens(4, 32, c.vocab_size);
  auto const q = quantize_model(rsq::backend::cpu_eigen{}, m, rsq::view(calib), o);
  REQUIRE(q.ok());
  auto const gdir = rsq_test::temp_dir("qwen2_gptq");
  save_gptq_checkpoint(gdir, q, src);
  auto const g = rsq::io::safetensors_checkpoint::open(gdir);
  auto const& e = g.at("model.layers.1.self_attn.v_proj.bias");
  CHECK(e.dtype == rsq::io::tensor_dtype::f16);
  auto const bv = g.to_float<1>("model.layers.1.self_attn.v_proj.bias");
  for (index_t i = 0; i < c.kv_dim(); ++i)  // the rotated v bias, rounded to fp16
    CHECK(bv(i) == rsq::f16_to_float(rsq::float_to_f16(q.model.layers[1].bv(i))));
  CHECK(g.contains("model.layers.0.self_attn.k_proj.bias"));
  CHECK(!g.contains("model.layers.0.self_attn.o_proj.bias"));
}
