// SPDX-License-Identifier: MIT
// rsq/model/gptq_checkpoint.hpp and grid_spec::fp16_scales: a GPTQ checkpoint, read back by a dequantizer written
// here from the format description (formats.md §4; not the library's unpacker), reproduces the quantized model's
// weights bit for bit, for symmetric (v1 zeros) and asymmetric (v2) grids, 3 and 4 bits, groups with act-order and
// per row; the config carries quantization_config; models an engine would compute wrongly are refused.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <rsq/gptq/solve.hpp>
#include <rsq/hessian/accumulator.hpp>
#include <rsq/io/safetensors.hpp>
#include <rsq/model/gptq_checkpoint.hpp>

#include "model/model_test_support.hpp"
#include "support/shared_data.hpp"

using namespace rsq::model;
using rsq::index_t;

namespace {

/// IEEE half to float from its fields (sign, 5-bit exponent, 10-bit mantissa).
float half_value(std::uint16_t h) {
  int const e = (h >> 10) & 31, m = h & 1023;
  float const v = e == 0 ? std::ldexp(float(m), -24) : std::ldexp(float(1024 + m), e - 25);
  return (h & 0x8000) ? -v : v;
}

/// The @p index-th b-bit value of a bit stream whose 32-bit words are word(0), word(1), … (lowest bits first).
template <class Word>
unsigned bits_at(Word word, index_t index, int b) {
  unsigned v = 0;
  for (int k = 0; k < b; ++k) {
    index_t const bit = index * b + k;
    v |= ((std::uint32_t(word(bit / 32)) >> (bit % 32)) & 1u) << k;
  }
  return v;
}

/// Dequantizes linear @p base of the checkpoint: W[r, c] = scale[g, r]·(q[c, r] − z[g, r]), g = g_idx[c], in float.
rsq::matrix<float> dequantize(rsq::io::safetensors_checkpoint const& ck, std::string const& base, int b, bool v1) {
  auto i32 = [&](std::string const& name) {
    auto const& f = ck.file_of(name);
    auto const& e = f.at(name);
    REQUIRE(e.dtype == rsq::io::tensor_dtype::i32);
    std::vector<std::int32_t> v(std::size_t(e.elements()));
    std::memcpy(v.data(), f.bytes(e).data(), v.size() * 4);
    return std::pair{v, e.shape};
  };
  // (named copies, not structured bindings: clang 14 lambdas cannot capture those)
  auto const qweight = i32(base + ".qweight"), qzeros = i32(base + ".qzeros"), g_idx = i32(base + ".g_idx");
  auto const& qw = qweight.first;
  auto const& qz = qzeros.first;
  auto const& gi = g_idx.first;
  auto const& qw_shape = qweight.second;
  auto const& qz_shape = qzeros.second;
  auto const& gi_shape = g_idx.second;
  auto const& se = ck.at(base + ".scales");
  REQUIRE(se.dtype == rsq::io::tensor_dtype::f16);
  index_t const in = gi_shape[0], out = qw_shape[1], groups = se.shape[0];
  CHECK(qw_shape[0] == in * b / 32);
  CHECK(qz_shape == std::vector<index_t>{groups, out * b / 32});
  std::vector<std::uint16_t> sc(std::size_t(groups * out));
  std::memcpy(sc.data(), ck.file_of(base + ".scales").bytes(se).data(), sc.size() * 2);
  auto w = rsq::make_matrix<float>(out, in);
  for (index_t r = 0; r < out; ++r)
    for (index_t c = 0; c < in; ++c) {
      index_t const g = gi[std::size_t(c)];
      unsigned const q = bits_at([&](index_t k) { return qw[std::size_t(k * out + r)]; }, c, b);
      unsigned z = bits_at([&](index_t k) { return qz[std::size_t(g * (out * b / 32) + k)]; }, r, b);
      if (v1) z += 1;
      w(r, c) = half_value(sc[std::size_t(g * out + r)]) * (float(q) - float(z));
    }
  return w;
}

llama_config config_32() {
  llama_config c = rsq_test::tiny_config();  // 4 heads, 2 KV heads; every width a multiple of 32 (3-bit packing)
  c.dim = 64;
  c.hidden_dim = 64;
  c.seq_len = 32;
  return c;
}

hf_config hf_config_of(llama_config const& c) {
  nlohmann::json j = {{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", c.dim},
                      {"intermediate_size", c.hidden_dim},    {"num_hidden_layers", c.n_layers},
                      {"num_attention_heads", c.n_heads},     {"num_key_value_heads", c.n_kv_heads},
                      {"vocab_size", c.vocab_size},           {"max_position_embeddings", c.seq_len},
                      {"rms_norm_eps", 1e-5},                 {"tie_word_embeddings", true}};
  return parse_hf_config(j.dump());
}

rsq::matrix<std::int32_t> tokens(index_t s, index_t l, int vocab) {
  auto t = rsq::make_matrix<std::int32_t>(s, l);
  for (index_t i = 0; i < s; ++i)
    for (index_t j = 0; j < l; ++j) t(i, j) = std::int32_t((i * 7 + j * 13 + (i * j) % 5) % vocab);
  return t;
}

}  // namespace

TEST_CASE("fp16_scales: every scale the solver uses is an fp16 value, and the loss stays that of full scales") {
  auto const c = config_32();
  auto const m = rsq_test::random_model(c, 5);
  auto const h = [&] {
    rsq::hessian_accumulator<float> acc(c.dim);
    auto x = rsq::make_matrix<float>(200, c.dim);
    for (index_t i = 0; i < 200; ++i)
      for (index_t j = 0; j < c.dim; ++j) x(i, j) = float(std::sin(0.37 * double(i * c.dim + j)) * (1 + j % 3));
    acc.add(rsq::view(x));
    return acc.hessian();
  }();
  for (bool sym : {true, false}) {
    CAPTURE(sym);
    rsq::quant::grid_spec g = rsq_script_grid(4);
    g.symmetric = sym;
    auto const full = rsq::gptq::solve(rsq::backend::cpu_eigen{}, m.layers[0].wq, h, g, {.group_size = 16});
    g.fp16_scales = true;
    auto const r = rsq::gptq::solve(rsq::backend::cpu_eigen{}, m.layers[0].wq, h, g, {.group_size = 16});
    REQUIRE(r.ok());
    for (float s : r.weight.scales) CHECK(rsq::f16_to_float(rsq::float_to_f16(s)) == s);
    // Scales move by less than 2⁻¹¹ relative, which flips codes only near ties: the loss stays close.
    CHECK(r.total_loss() == doctest::Approx(full.total_loss()).epsilon(0.1));
  }
}

TEST_CASE("GPTQ checkpoint: an independent dequantizer of the files reproduces the quantized model bit for bit") {
  auto const c = config_32();
  auto const fp = rsq_test::random_model(c, 11);
  auto const src = hf_config_of(c);
  struct variant {
    char const* name;
    quant_method method;
    int bits;
    bool sym;
    index_t group;
    bool act_order;
  };
  for (auto const& v : {variant{"rsq fused 4-bit sym g16 act-order", quant_method::rsq, 4, true, 16, true},
                        variant{"gptq 3-bit asym per row", quant_method::gptq, 3, false, -1, false},
                        variant{"rtn 4-bit asym g32", quant_method::rtn, 4, false, 32, false}}) {
    CAPTURE(v.name);
    quantize_options o;
    o.method = v.method;
    o.grid = rsq_script_grid(v.bits);
    o.grid.symmetric = v.sym;
    o.grid.fp16_scales = true;
    o.solver.group_size = v.group;
    o.solver.act_order = v.act_order;
    o.rotation.online_hadamards = false;
    auto const calib = tokens(4, 32, c.vocab_size);
    auto const q = quantize_model(rsq::backend::cpu_eigen{}, fp, rsq::view(calib), o);
    REQUIRE(q.ok());
    auto const dir = rsq_test::temp_dir("gptq_checkpoint");
    auto const files = save_gptq_checkpoint(dir, q, src);
    CHECK(files.back() == "quantize_config.json");
    auto const config = nlohmann::json::parse(rsq_test::read_text(dir / "config.json"));
    auto const& qc = config["quantization_config"];
    CHECK(qc["quant_method"] == "gptq");
    CHECK(qc["bits"] == v.bits);
    CHECK(qc["group_size"] == v.group);
    CHECK(qc["desc_act"] == v.act_order);
    CHECK(qc["sym"] == v.sym);
    CHECK(qc["checkpoint_format"] == (v.sym ? "gptq" : "gptq_v2"));
    CHECK(config["dtype"] == "float16");

    auto const ck = rsq::io::safetensors_checkpoint::open(dir);
    for (int l = 0; l < c.n_layers; ++l)
      for (linear_id id : all_linears) {
        CAPTURE(l);
        CAPTURE(rsq::model::name(id));
        std::string base = "model.layers." + std::to_string(l) +
                           (id == linear_id::wq || id == linear_id::wk || id == linear_id::wv || id == linear_id::wo
                                ? ".self_attn."
                                : ".mlp.") +
                           std::string(hf_name(id));
        auto const w = dequantize(ck, base, v.bits, v.sym);
        auto const& expect = q.model.layers[std::size_t(l)].weight(id);
        bool const rope = id == linear_id::wq || id == linear_id::wk;
        CHECK(w == (rope ? permute_rope_rows(expect, c.head_size(), false) : expect));
      }
    auto const& emb = ck.at("model.embed_tokens.weight");
    CHECK(emb.dtype == rsq::io::tensor_dtype::f16);
    CHECK(ck.contains("lm_head.weight") == (v.method == quant_method::rsq));  // fused norms untie the head
  }
}

TEST_CASE("GPTQ checkpoint: models a GPTQ loader would compute wrongly are refused, naming the fix") {
  auto const c = config_32();
  auto const fp = rsq_test::random_model(c, 3);
  auto const calib = tokens(2, 16, c.vocab_size);
  quantize_options o;
  o.method = quant_method::quarot;
  o.grid = rsq_script_grid(4);
  o.grid.fp16_scales = true;
  auto const dir = rsq_test::temp_dir("gptq_checkpoint_refused");
  auto const online = quantize_model(rsq::backend::cpu_eigen{}, fp, rsq::view(calib), o);
  CHECK_THROWS_WITH_AS(save_gptq_checkpoint(dir, online, hf_config_of(c)), doctest::Contains("--rotation fused"),
                       rsq::invalid_argument);
  o.method = quant_method::gptq;
  o.grid.fp16_scales = false;
  auto const full_scales = quantize_model(rsq::backend::cpu_eigen{}, fp, rsq::view(calib), o);
  CHECK_THROWS_WITH_AS(save_gptq_checkpoint(dir, full_scales, hf_config_of(c)), doctest::Contains("fp16_scales"),
                       rsq::invalid_argument);
  CHECK(std::filesystem::is_empty(dir));
}
