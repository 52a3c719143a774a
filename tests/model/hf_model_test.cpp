// SPDX-License-Identifier: MIT
// rsq/model/hf_config.hpp and rsq/model/hf_model.hpp: the config.json of each target family (the fields of
// formats.md §2), every refusal naming its field, and the real Hugging Face folders of ../shared against their
// llama2.c twins (converted independently: same weights, q/k rows in adjacent-pair order, same loss), then written
// back and read again.
#include <doctest/doctest.h>

#include <filesystem>
#include <memory>
#include <string>

#include <rsq/model/calibration.hpp>
#include <rsq/model/hf_model.hpp>
#include <rsq/model/llama2c.hpp>
#include <rsq/model/quantize.hpp>
#include <rsq/model/tokenizer.hpp>
#include <rsq/rotation/hadamard.hpp>

#include "support/shared_data.hpp"

namespace fs = std::filesystem;
using namespace rsq::model;

namespace {

// The config.json files of the target families, as their model repositories publish them (trimmed to the fields
// a loader reads; formats.md §2).
constexpr char llama31_8b[] = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
  "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
  "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
  "rope_theta": 500000.0, "attention_bias": false, "mlp_bias": false, "tie_word_embeddings": false,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "torch_dtype": "bfloat16"})";
constexpr char qwen25_05b[] = R"({
  "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "hidden_size": 896,
  "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
  "vocab_size": 151936, "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "rope_scaling": null, "sliding_window": 32768, "use_sliding_window": false, "tie_word_embeddings": true})";
constexpr char mistral_7b[] = R"({
  "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_act": "silu", "hidden_size": 4096,
  "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
  "vocab_size": 32000, "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
  "sliding_window": 4096, "tie_word_embeddings": false})";
constexpr char mistral_nemo[] = R"({
  "architectures": ["MistralForCausalLM"], "hidden_act": "silu", "hidden_size": 5120, "head_dim": 128,
  "intermediate_size": 14336, "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8,
  "vocab_size": 131072, "max_position_embeddings": 1024000, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
  "sliding_window": null})";
constexpr char lm7m_like[] = R"({
  "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 8,
  "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32, "vocab_size": 4096,
  "max_position_embeddings": 512, "rms_norm_eps": 1e-05, "tie_word_embeddings": true,
  "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}})";

/// lm7m_like with one field replaced (or added) by @p field = @p value (JSON text).
std::string with_field(std::string const& field, std::string const& value) {
  auto j = nlohmann::json::parse(lm7m_like);
  j[field] = nlohmann::json::parse(value);
  return j.dump();
}

}  // namespace

TEST_CASE("config.json: the fields of Llama-3.1, Qwen2.5, Mistral and transformers 5 files") {
  auto const l3 = parse_hf_config(llama31_8b);
  CHECK(l3.architecture == hf_architecture::llama);
  CHECK(l3.head_dim == 128);
  CHECK(l3.num_key_value_heads == 8);
  CHECK(l3.rope_theta == 500000.0);
  REQUIRE(l3.rope_scaling);
  CHECK(l3.rope_scaling->factor == 8.0);
  CHECK(l3.rope_scaling->original_max_positions == 8192);
  auto const l3c = to_llama_config(l3);  // Llama-3's scaling is run by the forward pass
  CHECK(l3c.rope_scaling == *l3.rope_scaling);
  CHECK(l3c.rope_theta == 500000.0);
  CHECK(!l3.qkv_bias);
  CHECK(!l3.tie_word_embeddings);

  auto const q = parse_hf_config(qwen25_05b);
  CHECK(q.architecture == hf_architecture::qwen2);
  CHECK(q.qkv_bias);  // Qwen2's q/k/v biases have no config key
  CHECK(q.tie_word_embeddings);
  CHECK(q.head_dim == 64);
  CHECK(q.rms_norm_eps == 1e-6);
  CHECK(!q.rope_scaling);
  CHECK(!q.sliding_window);  // use_sliding_window: false

  auto const m = parse_hf_config(mistral_7b);
  CHECK(m.architecture == hf_architecture::mistral);
  CHECK(m.sliding_window == 4096);
  CHECK(to_llama_config(m).seq_len == 4096);  // within the window, windowed attention is causal attention
  CHECK(parse_hf_config(mistral_nemo).head_dim == 128);

  auto const t5 = parse_hf_config(lm7m_like);
  CHECK(t5.rope_theta == 10000.0);
  CHECK(!t5.rope_scaling);
  auto const lc = to_llama_config(t5);
  CHECK(lc.dim == 256);
  CHECK(lc.hidden_dim == 768);
  CHECK(lc.n_kv_heads == 4);
  CHECK(lc.seq_len == 512);
  CHECK(lc.norm_eps == 1e-5f);
  CHECK(t5.json["num_hidden_layers"] == 8);  // the file is kept for writing back
}

TEST_CASE("config.json: what rsq cannot read faithfully is refused, naming the field") {
  auto const refused = [](std::string const& text, std::string const& says) {
    CAPTURE(says);
    CHECK_THROWS_WITH_AS((void)parse_hf_config(text, "x/config.json"), doctest::Contains(says.c_str()), rsq::io_error);
  };
  refused("{", "is not a JSON object");
  refused(with_field("architectures", R"(["GPT2LMHeadModel"])"), "architecture \"GPT2LMHeadModel\" is not supported");
  refused(with_field("architectures", R"([])"), "\"architectures\" must be a list of one name");
  refused(with_field("hidden_act", R"("gelu")"), "hidden_act \"gelu\" is not supported");
  refused(with_field("hidden_size", R"("256")"), "\"hidden_size\" must be a positive integer");
  refused(with_field("num_hidden_layers", "0"), "\"num_hidden_layers\" must be a positive integer");
  refused(with_field("rms_norm_eps", "-1"), "\"rms_norm_eps\" must be a positive number");
  refused(with_field("num_key_value_heads", "3"), "is not a multiple of num_key_value_heads 3");
  refused(with_field("head_dim", "33"), "head_dim 33 is odd");
  refused(with_field("tie_word_embeddings", "1"), "\"tie_word_embeddings\" must be true or false");
  refused(with_field("rope_parameters", R"({"rope_theta": 10000.0, "rope_type": "yarn", "factor": 4.0})"),
          "RoPE type \"yarn\" is not supported");
  refused(with_field("rope_parameters", R"({"rope_type": "default"})"), "config field \"rope_theta\" is missing");
  auto j = nlohmann::json::parse(lm7m_like);
  j.erase("vocab_size");
  refused(j.dump(), "config field \"vocab_size\" is missing");

  // Every feature that parses runs in the forward pass (tests/model/hf_reference_test.cpp against transformers).
  CHECK(to_llama_config(parse_hf_config(qwen25_05b)).qkv_bias);
  auto const biased = to_llama_config(parse_hf_config(with_field("attention_bias", "true")));
  CHECK((biased.qkv_bias && biased.o_bias && !biased.mlp_bias));
  CHECK(to_llama_config(parse_hf_config(with_field("mlp_bias", "true"))).mlp_bias);
  auto const nemo = to_llama_config(parse_hf_config(mistral_nemo));  // heads wider than hidden_size / heads
  CHECK(nemo.head_size() == 128);
  CHECK(nemo.q_dim() == 4096);
  CHECK(nemo.kv_dim() == 1024);
  CHECK(weight_shape(nemo, linear_id::wq) == std::array<rsq::index_t, 2>{4096, 5120});
  CHECK(weight_shape(nemo, linear_id::wo) == std::array<rsq::index_t, 2>{5120, 4096});
  CHECK(to_llama_config(parse_hf_config(lm7m_like)).head_dim == 0);  // explicit only where it is not dim / heads
}

TEST_CASE("RoPE row order: halves to adjacent pairs and back is the identity, and moves row i to 2i, i + d/2 to 2i+1") {
  auto w = rsq::matrix<float>::from_shape({8, 3});  // two heads of 4
  for (std::size_t i = 0; i < w.size(); ++i) w.data()[i] = float(i);
  auto const p = permute_rope_rows(w, 4, true);
  CHECK(p(0, 1) == w(0, 1));  // head 0: rows 0, 2 | 1, 3 → 0, 1, 2, 3 = HF rows 0, 2, 1, 3
  CHECK(p(1, 1) == w(2, 1));
  CHECK(p(2, 1) == w(1, 1));
  CHECK(p(3, 1) == w(3, 1));
  CHECK(p(5, 0) == w(6, 0));  // head 1
  CHECK(permute_rope_rows(p, 4, false) == w);
  CHECK_THROWS_AS((void)permute_rope_rows(w, 3, true), rsq::invalid_argument);
  for (bool to_pairs : {true, false}) {  // in place (what load_hf_model uses) = the copying form
    auto in_place = w;
    permute_rope_rows_in_place(in_place, 4, to_pairs);
    CHECK(in_place == permute_rope_rows(w, 4, to_pairs));
  }
  auto odd = w;
  CHECK_THROWS_AS(permute_rope_rows_in_place(odd, 3, true), rsq::invalid_argument);
}

TEST_CASE("Hugging Face folders of ../shared: the same model as the llama2.c twin, and written back unchanged") {
  RSQ_NEED_SHARED(shared);
  for (char const* name : {"lm7m", "lm16m"}) {
    CAPTURE(name);
    auto const hf = shared / "data/models" / name / "hf";
    auto const twin_path = shared / "data/models" / name / "llama2c/model.bin";
    if (!fs::exists(hf / "config.json") || !fs::exists(twin_path)) {
      MESSAGE("SKIPPED ", name, ": not in ../shared");
      continue;
    }
    auto const loaded = load_hf_model(hf);
    auto const twin = load_llama2c_checkpoint(twin_path);
    CHECK(loaded.model.config.dim == twin.config.dim);
    CHECK(loaded.model.config.n_kv_heads == twin.config.n_kv_heads);
    CHECK(loaded.model.config.rope_theta == twin.config.rope_theta);
    for (std::size_t l = 0; l < twin.layers.size(); ++l)
      for (linear_id id : all_linears) {
        CAPTURE(l);
        CAPTURE(rsq::model::name(id));
        CHECK(loaded.model.layers[l].weight(id) == twin.layers[l].weight(id));
      }
    CHECK(loaded.model.classifier == twin.classifier);
    CHECK(loaded.model.layers[2].rms_ffn == twin.layers[2].rms_ffn);

    // Written back (F32) and read again: bit for bit, tied head omitted, the config's other fields kept.
    auto const out = rsq_test::temp_dir(std::string("hf_roundtrip_") + name);
    auto const files = save_hf_model(out, loaded.model, loaded.config);
    CHECK(files.back() == "config.json");
    auto const again = load_hf_model(out);
    CHECK(again.config.tie_word_embeddings);
    CHECK(!rsq::io::safetensors_checkpoint::open(out).contains("lm_head.weight"));
    CHECK(again.config.json["max_position_embeddings"] == loaded.config.json["max_position_embeddings"]);
    for (std::size_t l = 0; l < twin.layers.size(); ++l) CHECK(again.model.layers[l].wq == twin.layers[l].wq);
    CHECK(again.model.token_embedding == twin.token_embedding);
    CHECK(copy_hf_side_files(hf, out).size() >= 2);  // tokenizer.json, tokenizer_config.json, …
    CHECK(fs::exists(out / "tokenizer.json"));

    // A changed classifier unties the head.
    auto untied = loaded.model;
    untied.classifier(0, 0) += 1.0f;
    auto const out2 = rsq_test::temp_dir(std::string("hf_untied_") + name);
    save_hf_model(out2, untied, loaded.config, {.dtype = rsq::io::tensor_dtype::bf16});
    auto const back = load_hf_model(out2);
    CHECK(!back.config.tie_word_embeddings);
    CHECK(back.config.json["dtype"] == "bfloat16");
    CHECK(back.model.classifier(0, 0) == rsq::bf16_to_float(rsq::float_to_bf16(untied.classifier(0, 0))));
  }
}

TEST_CASE("lm7m from its Hugging Face folder: the loss of its llama2.c twin") {
  RSQ_NEED_SHARED(shared);
  auto const hf = shared / "data/models/lm7m/hf";
  if (!fs::exists(hf / "config.json")) {
    MESSAGE("SKIPPED: lm7m not in ../shared");
    return;
  }
  auto const m = load_hf_model(hf).model;
  auto const twin = load_llama2c_checkpoint(shared / "data/models/lm7m/llama2c/model.bin");
  auto const tok = load_tokenizer(shared / "data/models/lm7m/llama2c/tokenizer.bin", {.vocab_size = 4096});
  auto const docs = load_stories(shared / "data/text/mix_valid.txt");
  auto const windows = consecutive_windows(story_tokens(tok, docs, {0, 4}), 128);
  double const a = evaluate(m, rsq::view(windows)).perplexity, b = evaluate(twin, rsq::view(windows)).perplexity;
  CHECK(a == b);
  CHECK(a > 5);  // a trained model on its own kind of text: perplexity 33.7 on the whole validation set
  CHECK(a < 100);
}

TEST_CASE("save_hf_model refuses a model that needs online Hadamards, and a folder it cannot write") {
  llama_model m;
  m.config = {.dim = 8, .hidden_dim = 16, .n_layers = 1, .n_heads = 2, .n_kv_heads = 1, .vocab_size = 4, .seq_len = 8};
  auto const cfg = parse_hf_config(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 8,
    "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
    "vocab_size": 4, "max_position_embeddings": 8, "rms_norm_eps": 1e-05, "tie_word_embeddings": true})");
  m.token_embedding = rsq::matrix<float>::from_shape({4, 8});
  m.token_embedding.fill(0.5f);
  m.classifier = m.token_embedding;
  m.rms_final = rsq::vector<float>::from_shape({8});
  m.rms_final.fill(1.f);
  m.layers.resize(1);
  m.layers[0].rms_att = m.rms_final;
  m.layers[0].rms_ffn = m.rms_final;
  for (linear_id id : all_linears) {
    auto const s = weight_shape(m.config, id);
    m.layers[0].weight(id) = rsq::matrix<float>::from_shape({std::size_t(s[0]), std::size_t(s[1])});
    m.layers[0].weight(id).fill(0.25f);
  }
  auto const dir = rsq_test::temp_dir("hf_refuse");
  CHECK(save_hf_model(dir, m, cfg).size() == 2);  // model.safetensors, config.json
  CHECK_THROWS_AS(save_hf_model(dir / "missing/folder", m, cfg), rsq::io_error);
  m.online.down = std::make_shared<rsq::rotation::hadamard const>(16);
  CHECK_THROWS_WITH_AS(save_hf_model(dir, m, cfg), doctest::Contains("needs online Hadamards"), rsq::invalid_argument);
}
