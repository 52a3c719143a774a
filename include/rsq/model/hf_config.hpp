// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The `config.json` of a Hugging Face model folder (../shared/docs/formats.md §2) for the three families RSQ
/// quantizes: LlamaForCausalLM (Llama-2, Llama-3 with its `llama3` RoPE scaling), Qwen2ForCausalLM (q/k/v biases,
/// tied embeddings in the small models) and MistralForCausalLM (an explicit `head_dim`). Both ways transformers
/// writes RoPE are read: `rope_theta` + `rope_scaling` (transformers 4) and `rope_parameters` (transformers 5).
///
/// Every field is checked when the file is read; another architecture, an activation other than SiLU, an unknown
/// RoPE type or a field of the wrong type is refused with rsq::io_error naming the file and the field. The parsed
/// JSON is kept, so that a quantized checkpoint can write the model's config back with only its own changes.

#include <cmath>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "rsq/core/error.hpp"
#include "rsq/io/mapped_file.hpp"
#include "rsq/nn/options.hpp"

namespace rsq::model {

/// The model families rsq reads from Hugging Face folders.
enum class hf_architecture { llama, qwen2, mistral };

/// The `architectures[0]` name of @p a ("LlamaForCausalLM", …).
[[nodiscard]] constexpr std::string_view to_string(hf_architecture a) noexcept {
  switch (a) {
    case hf_architecture::llama: return "LlamaForCausalLM";
    case hf_architecture::qwen2: return "Qwen2ForCausalLM";
    case hf_architecture::mistral: return "MistralForCausalLM";
  }
  return "?";
}

/// What rsq needs of a config.json, checked.
struct hf_config {
  hf_architecture architecture = hf_architecture::llama;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int head_dim = 0;  ///< explicit in the file, or hidden_size / num_attention_heads
  int vocab_size = 0;
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<nn::rope_scaling> rope_scaling;  ///< Llama-3's (`rope_type: "llama3"`), for Llama-3.1 and later
  bool tie_word_embeddings = false;
  bool attention_bias = false;  ///< q, k, v and o have biases (Llama's `attention_bias`)
  bool qkv_bias = false;        ///< q, k and v have biases (always for Qwen2; no config key)
  bool mlp_bias = false;        ///< gate, up and down have biases (Llama's `mlp_bias`)
  std::optional<int> sliding_window;  ///< Mistral / Qwen2 attention window when in use
  nlohmann::json json;                ///< the whole file as read
};

namespace detail {

template <class... Args>
[[noreturn]] void bad_config(std::string_view file, Args const&... args) {
  rsq::detail::throw_io_error(file, ": ", args...);
}

/// The value of @p key, which must be present unless @p fallback is given.
template <class T>
T config_value(nlohmann::json const& j, std::string_view key, std::string_view file, std::optional<T> fallback = {}) {
  auto const it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (fallback) return *fallback;
    bad_config(file, "config field \"", key, "\" is missing");
  }
  if constexpr (std::is_same_v<T, bool>) {
    if (!it->is_boolean()) bad_config(file, "config field \"", key, "\" must be true or false, got ", it->dump());
  } else if constexpr (std::is_integral_v<T>) {
    if (!it->is_number_integer() || it->get<long long>() <= 0 || it->get<long long>() > 1'000'000'000)
      bad_config(file, "config field \"", key, "\" must be a positive integer, got ", it->dump());
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!it->is_number() || !(it->get<double>() > 0) || !std::isfinite(it->get<double>()))
      bad_config(file, "config field \"", key, "\" must be a positive number, got ", it->dump());
  } else {
    if (!it->is_string()) bad_config(file, "config field \"", key, "\" must be a string, got ", it->dump());
  }
  return it->get<T>();
}

inline hf_architecture parse_architecture(nlohmann::json const& j, std::string_view file) {
  auto const it = j.find("architectures");
  if (it == j.end() || !it->is_array() || it->size() != 1 || !(*it)[0].is_string())
    bad_config(file, "config field \"architectures\" must be a list of one name");
  auto const name = (*it)[0].get<std::string>();
  for (auto a : {hf_architecture::llama, hf_architecture::qwen2, hf_architecture::mistral})
    if (name == to_string(a)) return a;
  bad_config(file, "architecture \"", name,
             "\" is not supported (rsq reads LlamaForCausalLM, Qwen2ForCausalLM and MistralForCausalLM)");
}

/// RoPE base and scaling from `rope_parameters` (transformers 5) or `rope_theta` / `rope_scaling` (transformers 4).
inline void parse_rope(nlohmann::json const& j, hf_config& c, std::string_view file) {
  nlohmann::json const* scaling = nullptr;
  if (auto const p = j.find("rope_parameters"); p != j.end() && !p->is_null()) {
    if (!p->is_object()) bad_config(file, "config field \"rope_parameters\" must be an object");
    c.rope_theta = config_value<double>(*p, "rope_theta", file);
    scaling = &*p;
  } else {
    c.rope_theta = config_value<double>(j, "rope_theta", file, 10000.0);
    if (auto const s = j.find("rope_scaling"); s != j.end() && !s->is_null()) {
      if (!s->is_object()) bad_config(file, "config field \"rope_scaling\" must be an object or null");
      scaling = &*s;
    }
  }
  if (!scaling) return;
  // transformers 4.x wrote the type as "type" before "rope_type".
  std::string type = "default";
  if (scaling->contains("rope_type")) type = config_value<std::string>(*scaling, "rope_type", file);
  else if (scaling->contains("type")) type = config_value<std::string>(*scaling, "type", file);
  if (type == "default") return;
  if (type != "llama3")
    bad_config(file, "RoPE type \"", type, "\" is not supported (rsq reads \"default\" and \"llama3\")");
  c.rope_scaling = nn::rope_scaling{
      config_value<double>(*scaling, "factor", file), config_value<double>(*scaling, "low_freq_factor", file),
      config_value<double>(*scaling, "high_freq_factor", file),
      double(config_value<int>(*scaling, "original_max_position_embeddings", file))};
  if (c.rope_scaling->factor < 1) bad_config(file, "llama3 RoPE scaling needs factor >= 1");
  if (!(c.rope_scaling->high_freq_factor > c.rope_scaling->low_freq_factor))
    bad_config(file, "llama3 RoPE scaling needs high_freq_factor > low_freq_factor");
}

}  // namespace detail

/// Parses the text of a config.json; @p file names it in messages.
/// @throws rsq::io_error naming the file and the field for anything rsq cannot read faithfully
[[nodiscard]] inline hf_config parse_hf_config(std::string_view text, std::string_view file = "config.json") {
  using detail::bad_config;
  using detail::config_value;
  auto j = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) bad_config(file, "is not a JSON object");
  hf_config c;
  c.architecture = detail::parse_architecture(j, file);
  if (auto const act = config_value<std::string>(j, "hidden_act", file, std::string("silu")); act != "silu")
    bad_config(file, "hidden_act \"", act, "\" is not supported (the SwiGLU MLP of these families uses \"silu\")");
  c.hidden_size = config_value<int>(j, "hidden_size", file);
  c.intermediate_size = config_value<int>(j, "intermediate_size", file);
  c.num_hidden_layers = config_value<int>(j, "num_hidden_layers", file);
  c.num_attention_heads = config_value<int>(j, "num_attention_heads", file);
  c.num_key_value_heads = config_value<int>(j, "num_key_value_heads", file, c.num_attention_heads);
  if (c.hidden_size % c.num_attention_heads != 0 && !j.contains("head_dim"))
    bad_config(file, "hidden_size ", c.hidden_size, " is not divisible by num_attention_heads ",
               c.num_attention_heads, " and there is no head_dim");
  c.head_dim = config_value<int>(j, "head_dim", file, c.hidden_size / c.num_attention_heads);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    bad_config(file, "num_attention_heads ", c.num_attention_heads, " is not a multiple of num_key_value_heads ",
               c.num_key_value_heads);
  if (c.head_dim % 2 != 0) bad_config(file, "head_dim ", c.head_dim, " is odd (RoPE rotates pairs)");
  c.vocab_size = config_value<int>(j, "vocab_size", file);
  c.max_position_embeddings = config_value<int>(j, "max_position_embeddings", file);
  c.rms_norm_eps = config_value<double>(j, "rms_norm_eps", file);
  detail::parse_rope(j, c, file);
  c.tie_word_embeddings = config_value<bool>(j, "tie_word_embeddings", file, false);
  c.attention_bias = config_value<bool>(j, "attention_bias", file, false);
  c.mlp_bias = config_value<bool>(j, "mlp_bias", file, false);
  c.qkv_bias = c.architecture == hf_architecture::qwen2 || c.attention_bias;
  if (config_value<bool>(j, "use_sliding_window", file, c.architecture == hf_architecture::mistral))
    if (auto const w = j.find("sliding_window"); w != j.end() && !w->is_null())
      c.sliding_window = config_value<int>(j, "sliding_window", file);
  c.json = std::move(j);
  return c;
}

/// Reads `config.json` from the model folder @p dir (or the file itself).
/// @throws rsq::io_error naming the file when it is missing, unreadable or refused by parse_hf_config
[[nodiscard]] inline hf_config load_hf_config(std::filesystem::path const& dir) {
  auto const path = std::filesystem::is_directory(dir) ? dir / "config.json" : dir;
  io::mapped_file const f(path);
  auto const b = f.bytes();
  return parse_hf_config(std::string_view(reinterpret_cast<char const*>(b.data()), b.size()), path.string());
}

}  // namespace rsq::model
