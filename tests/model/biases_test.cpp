// SPDX-License-Identifier: MIT
// Biases and wide heads through the whole model: q/k/v biases (Qwen2), o_proj and MLP biases (Llama's
// attention_bias and mlp_bias) and heads wider than dim / n_heads (Mistral-Nemo). Zero biases give the bias-free
// model's logits bit for bit; the rotations (full and fused) keep a biased model's logits; the layer-by-layer
// pipeline rotates and quantizes it on every backend; a Hugging Face folder (RoPE-permuted q/k biases) and a GPTQ
// checkpoint carry them. (Against transformers itself: hf_reference_test.cpp.)
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
#include "support/backends.hpp"
#include "support/compare.hpp"
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

/// Every bias, and heads of 32 (q_dim 128 != dim 64), as a Llama with attention_bias and mlp_bias and
/// Mistral-Nemo's head_dim.
llama_config wide_biased_config() {
  llama_config c = biased_config();
  c.o_bias = c.mlp_bias = true;
  c.head_dim = 32;
  return c;
}

/// A random model of @p c with the biases @p c asks for drawn with standard deviation @p sd (zero: all zero).
llama_model biased_model(llama_config const& c, unsigned seed, double sd) {
  auto plain = c;
  plain.qkv_bias = plain.o_bias = plain.mlp_bias = false;
  auto m = rsq_test::random_model(plain, seed);
  m.config = c;
  std::mt19937 g(seed + 100);
  std::normal_distribution<double> n(0.0, sd);
  for (auto& L : m.layers)
    for (linear_id l : all_linears) {
      if (!c.has_bias(l)) continue;
      auto& b = L.bias(l);
      b = rsq::vector<float>::from_shape({std::size_t(weight_shape(c, l)[0])});
      for (auto& v : b) v = sd == 0 ? 0.f : float(n(g));
    }
  return m;
}

rsq::matrix<std::int32_t> tokens(index_t s, index_t l, int vocab) {
  auto t = rsq::make_matrix<std::int32_t>(s, l);
  for (index_t i = 0; i < s; ++i)
    for (index_t j = 0; j < l; ++j) t(i, j) = std::int32_t((i * 11 + j * 7 + (i + j) % 3) % vocab);
  return t;
}

auto logits(llama_model const& m, rsq::matrix<std::int32_t> const& t) { return forward(m, rsq::view(t)); }

/// @p m quantized as a GPTQ checkpoint stores it: RSQ, 4 bits, fp16 scales, rotations folded into the weights.
quantized_model fused_rsq_for_gptq(llama_model const& m) {
  quantize_options o;
  o.method = quant_method::rsq;
  o.grid = rsq_script_grid(4);
  o.grid.fp16_scales = true;
  o.rotation.online_hadamards = false;
  auto const calib = tokens(4, 32, m.config.vocab_size);
  return quantize_model(rsq::backend::cpu_eigen{}, m, rsq::view(calib), o);
}

/// The config.json of @p c as @p architecture (Qwen2: q/k/v biases; Llama: attention_bias and mlp_bias as @p c has).
hf_config hf_config_of(llama_config const& c, char const* architecture) {
  nlohmann::json j = {{"architectures", {architecture}},        {"hidden_size", c.dim},
                      {"intermediate_size", c.hidden_dim},    {"num_hidden_layers", c.n_layers},
                      {"num_attention_heads", c.n_heads},     {"num_key_value_heads", c.n_kv_heads},
                      {"vocab_size", c.vocab_size},           {"max_position_embeddings", c.seq_len},
                      {"rms_norm_eps", 1e-5},                 {"tie_word_embeddings", true}};
  if (std::string(architecture) == "LlamaForCausalLM") {
    j["attention_bias"] = c.o_bias;
    j["mlp_bias"] = c.mlp_bias;
  }
  if (c.head_dim) j["head_dim"] = c.head_dim;
  return parse_hf_config(j.dump());
}

}  // namespace

TEST_CASE("biases: zero biases give the bias-free logits bit for bit; real ones change them") {
  for (auto const& c : {biased_config(), wide_biased_config()}) {
    CAPTURE(c.head_size());
    auto const t = tokens(2, 20, c.vocab_size);
    auto zero = biased_model(c, 7, 0.0);
    auto plain = zero;
    plain.config.qkv_bias = plain.config.o_bias = plain.config.mlp_bias = false;
    for (auto& L : plain.layers)
      for (linear_id l : all_linears) L.bias(l) = rsq::vector<float>{};
    CHECK(logits(zero, t) == logits(plain, t));
    auto const biased = biased_model(c, 7, 0.5);
    CHECK(rsq_test::max_norm_rel(logits(biased, t), logits(plain, t)) > 1e-3);
    for (linear_id l : all_linears) {  // each bias counts
      if (!c.has_bias(l)) continue;
      CAPTURE(name(l));
      auto one = zero;
      one.layers[1].bias(l) = biased.layers[1].bias(l);
      CHECK(rsq_test::max_norm_rel(logits(one, t), logits(plain, t)) > 1e-5);
    }
    auto bad = biased;
    bad.layers[1].bk = rsq::vector<float>::from_shape({3});
    CHECK_THROWS_WITH_AS(validate(bad), doctest::Contains("layer 1 bias of wk"), rsq::invalid_argument);
  }
}

TEST_CASE("biases and wide heads: full and fused rotations keep the logits") {
  for (auto const& c : {biased_config(), wide_biased_config()}) {
    CAPTURE(c.head_size());
    auto const t = tokens(2, 20, c.vocab_size);
    auto const fp = biased_model(c, 9, 0.5);
    auto const ref = logits(fp, t);
    for (bool online : {true, false}) {
      CAPTURE(online);
      auto m = fp;
      (void)rotate_model(m, {.seed = 4, .online_hadamards = online});
      CHECK(rsq_test::max_norm_rel(logits(m, t), ref) < 1e-4);
      CHECK(m.layers[0].bq == fp.layers[0].bq);  // the residual rotation acts on inputs: q/k biases are unchanged
      if (c.mlp_bias) CHECK(m.layers[0].b1 == fp.layers[0].b1);  // and w1/w3's outputs are not rotated
      fold_online_transforms(m);  // what a Hugging Face folder holds
      CHECK(rsq_test::max_norm_rel(logits(m, t), ref) < 1e-4);
    }
  }
}

TEST_CASE_TEMPLATE("biases and wide heads: the pipeline rotates and quantizes on the backend (8 bits: the logits stay "
                   "close)", B, RSQ_TEST_BACKENDS) {
  RSQ_NEED_DEVICE(B);
  for (auto const& c : {biased_config(), wide_biased_config()}) {
    CAPTURE(c.head_size());
    auto const t = tokens(2, 20, c.vocab_size);
    auto const fp = biased_model(c, 13, 0.5);
    auto const calib = tokens(4, 32, c.vocab_size);
    for (auto method : {quant_method::gptq, quant_method::rsq}) {
      CAPTURE(to_string(method));
      quantize_options o;
      o.method = method;
      o.grid = rsq_script_grid(8);
      auto const q = quantize_model(B{}, fp, rsq::view(calib), o);
      REQUIRE(q.ok());
      CHECK(rsq_test::max_norm_rel(logits(q.model, t), logits(fp, t)) < 0.05);
      // The backend's own forward pass agrees with the CPU's on the quantized model.
      CHECK(rsq_test::max_norm_rel(forward(B{}, q.model, rsq::view(t)), logits(q.model, t)) < 1e-4);
    }
  }
}

TEST_CASE("q/k/v biases: a Qwen2 folder and a GPTQ checkpoint carry them") {
  auto const c = biased_config();
  auto const m = biased_model(c, 17, 0.5);
  auto const src = hf_config_of(c, "Qwen2ForCausalLM");
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

  auto const q = fused_rsq_for_gptq(m);
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

TEST_CASE("o_proj and MLP biases, wide heads: a Llama folder and a GPTQ checkpoint carry them") {
  auto const c = wide_biased_config();
  auto const m = biased_model(c, 19, 0.5);
  auto const src = hf_config_of(c, "LlamaForCausalLM");
  CHECK(to_llama_config(src) == c);
  auto const dir = rsq_test::temp_dir("llama_biases_folder");
  save_hf_model(dir, m, src);
  auto const ck = rsq::io::safetensors_checkpoint::open(dir);
  CHECK(ck.at("model.layers.0.self_attn.q_proj.weight").shape == std::vector<index_t>{c.q_dim(), c.dim});
  CHECK(ck.at("model.layers.0.self_attn.o_proj.weight").shape == std::vector<index_t>{c.dim, c.q_dim()});
  auto const back = load_hf_model(dir).model;
  for (std::size_t l = 0; l < m.layers.size(); ++l)
    for (linear_id id : all_linears) {
      CAPTURE(name(id));
      CHECK(back.layers[l].weight(id) == m.layers[l].weight(id));
      CHECK(back.layers[l].bias(id) == m.layers[l].bias(id));
    }

  auto const q = fused_rsq_for_gptq(m);
  REQUIRE(q.ok());
  auto const gdir = rsq_test::temp_dir("llama_biases_gptq");
  save_gptq_checkpoint(gdir, q, src);
  auto const g = rsq::io::safetensors_checkpoint::open(gdir);
  for (linear_id id : {linear_id::wo, linear_id::w2, linear_id::w1}) {  // rotated (o, down) and not (gate)
    CAPTURE(name(id));
    auto const key = "model.layers.1." + std::string(id == linear_id::wo ? "self_attn." : "mlp.") +
                     std::string(hf_name(id)) + ".bias";
    REQUIRE(g.contains(key));
    CHECK(g.at(key).dtype == rsq::io::tensor_dtype::f16);
    auto const b = g.to_float<1>(key);
    auto const& want = q.model.layers[1].bias(id);
    REQUIRE(b.size() == want.size());
    for (std::size_t i = 0; i < b.size(); ++i) CHECK(b(i) == rsq::f16_to_float(rsq::float_to_f16(want(i))));
  }
}
