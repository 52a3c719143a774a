// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// A quantized model written as a GPTQ checkpoint that transformers (through GPTQModel) and vLLM load
/// (../shared/docs/formats.md §4): per quantized linear `qweight` (I32, (in·bits/32, out), codes packed along the
/// input dimension), `qzeros` (I32, (groups, out·bits/32)), `scales` (F16, (groups, out)) and `g_idx` (I32, (in)); the
/// embedding, the norms and the head in F16; `config.json` with `quantization_config` (and `quantize_config.json`,
/// which vLLM also reads). Symmetric grids are written as `checkpoint_format: "gptq"` (zeros stored minus one, what
/// every loader expects), asymmetric ones as `"gptq_v2"` (a zero of 0 cannot be stored the v1 way).
///
/// The checkpoint dequantizes exactly to the model rsq computed only if the solver used the scales the file stores:
/// quantize with `grid.fp16_scales` (save_gptq_checkpoint refuses otherwise). A model that still needs online
/// Hadamards is not a plain Llama and is refused: quantize it with rotations that fold into the weights
/// (rotate_options::online_hadamards = false, `--rotation fused`).

#include <algorithm>
#include <array>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "rsq/core/error.hpp"
#include "rsq/core/half.hpp"
#include "rsq/io/atomic_file.hpp"
#include "rsq/io/safetensors.hpp"
#include "rsq/model/hf_model.hpp"
#include "rsq/model/quantize.hpp"
#include "rsq/pack/gptq_format.hpp"

namespace rsq::model {

/// The `quantization_config` of a checkpoint of @p q.
[[nodiscard]] inline nlohmann::ordered_json gptq_quantization_config(quantized_model const& q) {
  return {{"quant_method", "gptq"},
          {"bits", q.grid.bits},
          {"group_size", q.group_size < 0 ? -1 : q.group_size},
          {"desc_act", q.act_order},
          {"sym", q.grid.symmetric},
          {"checkpoint_format", q.grid.symmetric ? "gptq" : "gptq_v2"},
          {"quantizer", "rsq"}};
}

namespace detail {

/// F16 bits of float values (exact for values that are halves already, e.g. fp16_scales).
inline std::vector<std::uint16_t> to_f16(float const* v, std::size_t n) {
  std::vector<std::uint16_t> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = float_to_f16(v[i]);
  return out;
}

}  // namespace detail

/// Writes @p q as a GPTQ checkpoint into the existing folder @p dir, with the config of the source model @p source.
/// @throws rsq::invalid_argument for a model that needs online Hadamards (use rotations that fold into the weights),
///         scales that were not rounded to fp16 by the solver (grid.fp16_scales), bits other than 2, 3, 4, 8, or
///         shapes the packing cannot take (naming the linear); rsq::io_error when a file cannot be written
/// @returns the names of the files written
inline std::vector<std::string> save_gptq_checkpoint(std::filesystem::path const& dir, quantized_model const& q,
                                                     hf_config const& source, io::shard_options const& shards = {}) {
  RSQ_EXPECTS(!q.model.online.any(), "save_gptq_checkpoint: the model needs online Hadamards before o_proj and "
              "down_proj, which GPTQ loaders do not apply: quantize with --rotation fused (rotations that fold into "
              "the weights)");
  RSQ_EXPECTS(q.grid.fp16_scales, "save_gptq_checkpoint: quantize with grid.fp16_scales, so that the stored F16 "
              "scales are the ones the solver used");
  RSQ_EXPECTS(q.ok(), "save_gptq_checkpoint: the quantization did not finish (status ", gptq::to_string(q.info), ")");
  auto const& c = q.model.config;
  RSQ_EXPECTS(c == to_llama_config(source), "save_gptq_checkpoint: the model's shapes differ from its config");
  auto const fmt = q.grid.symmetric ? pack::zero_format::v1 : pack::zero_format::v2;

  // Every array stays alive until the files are written: records refer to them.
  std::vector<pack::gptq_tensors> packed;
  std::vector<std::vector<std::uint16_t>> halves;
  std::vector<io::tensor_record> recs;
  packed.reserve(std::size_t(c.n_layers) * 7);
  auto add_half = [&](std::string name, float const* v, std::vector<index_t> shape) {
    index_t n = 1;
    for (auto d : shape) n *= d;
    halves.push_back(detail::to_f16(v, std::size_t(n)));
    recs.push_back(io::make_raw_record<std::uint16_t>(std::move(name), halves.back(), std::move(shape),
                                                      io::tensor_dtype::f16));
  };
  auto add_float = [&](std::string name, auto const& t) {
    add_half(std::move(name), t.data(), std::vector<index_t>(t.shape().begin(), t.shape().end()));
  };
  add_float("model.embed_tokens.weight", q.model.token_embedding);
  for (int l = 0; l < c.n_layers; ++l) {
    auto const& layer = q.model.layers[std::size_t(l)];
    add_float(detail::hf_layer_prefix(l) + "input_layernorm.weight", layer.rms_att);
    add_float(detail::hf_layer_prefix(l) + "post_attention_layernorm.weight", layer.rms_ffn);
    for (linear_id id : all_linears) {
      auto const& w = q.weight(l, id);
      std::string const name = detail::hf_weight_name(l, id);
      std::string const base = name.substr(0, name.size() - std::string_view(".weight").size());
      try {
        if (id == linear_id::wq || id == linear_id::wk) {  // back to Hugging Face's RoPE halves (rows)
          auto const codes = permute_rope_rows(w.codes, c.head_size(), false);
          auto const scales = permute_rope_rows(w.scales, c.head_size(), false);
          auto const zeros = permute_rope_rows(w.zeros, c.head_size(), false);
          packed.push_back(pack::pack_gptq(backend::cpu_eigen{}, rsq::view(codes), rsq::view(scales),
                                           rsq::view(zeros), rsq::view(w.g_idx), w.bits, fmt));
        } else {
          packed.push_back(pack::pack_gptq(backend::cpu_eigen{}, w, fmt));
        }
      } catch (rsq::invalid_argument const& e) {
        rsq::detail::throw_invalid_argument("save_gptq_checkpoint: ", base, ": ", e.what());
      }
      auto const& p = packed.back();
      auto shape_of = [](auto const& t) { return std::vector<index_t>(t.shape().begin(), t.shape().end()); };
      recs.push_back(io::make_raw_record<std::int32_t>(base + ".qweight", std::span(p.qweight.data(), p.qweight.size()),
                                                       shape_of(p.qweight), io::tensor_dtype::i32));
      recs.push_back(io::make_raw_record<std::int32_t>(base + ".qzeros", std::span(p.qzeros.data(), p.qzeros.size()),
                                                       shape_of(p.qzeros), io::tensor_dtype::i32));
      add_half(base + ".scales", p.scales.data(), shape_of(p.scales));
      if (c.has_bias(id)) {
        auto const& b = layer.bias(id);
        add_float(base + ".bias", detail::rope_rows(id) ? detail::permute_rope_vector(b, c.head_size(), false) : b);
      }
      recs.push_back(io::make_raw_record<std::int32_t>(base + ".g_idx", std::span(p.g_idx.data(), p.g_idx.size()),
                                                       shape_of(p.g_idx), io::tensor_dtype::i32));
    }
  }
  add_float("model.norm.weight", q.model.rms_final);
  bool const tied = source.tie_word_embeddings && q.model.classifier == q.model.token_embedding;
  if (!tied) add_float("lm_head.weight", q.model.classifier);

  auto files = io::save_safetensors_checkpoint(dir, recs, shards);
  auto json = source.json;
  auto const qc = gptq_quantization_config(q);
  json["quantization_config"] = qc;
  json["tie_word_embeddings"] = tied;
  json["dtype"] = "float16";
  json.erase("torch_dtype");
  io::write_text_file_atomic(dir / "config.json", json.dump(2) + "\n");
  io::write_text_file_atomic(dir / "quantize_config.json", qc.dump(2) + "\n");
  files.emplace_back("config.json");
  files.emplace_back("quantize_config.json");
  return files;
}

/// Whether an engine loads a checkpoint, and why not.
struct engine_verdict {
  std::string engine;
  bool loads = false;
  std::string why;  ///< the first reason it does not (or the conditions under which it does)
};

/// Which engines load the GPTQ checkpoint in @p dir (formats.md §4): transformers (bits 2, 3, 4, 8, through the
/// GPTQModel package) and vLLM (4- and 8-bit symmetric only), with vLLM's Machete (Hopper) and Marlin kernels
/// checked against the group size and every quantized linear's shape.
/// @throws rsq::io_error when @p dir has no config.json with a GPTQ quantization_config, or unreadable weights
[[nodiscard]] inline std::vector<engine_verdict> check_gptq_checkpoint(std::filesystem::path const& dir) {
  auto const config = load_hf_config(dir).json;
  auto const where = (dir / "config.json").string();
  auto const qc = config.find("quantization_config");
  if (qc == config.end() || !qc->is_object() || qc->value("quant_method", std::string()) != "gptq")
    rsq::detail::throw_io_error(where, ": not a GPTQ checkpoint (no quantization_config with quant_method \"gptq\")");
  auto field = [&](char const* key) {
    auto const it = qc->find(key);
    if (it == qc->end()) rsq::detail::throw_io_error(where, ": quantization_config has no \"", key, "\"");
    return *it;
  };
  int const bits = field("bits").get<int>();
  int const group = field("group_size").get<int>();
  bool const sym = field("sym").get<bool>();
  // The (in, out) of every quantized linear, from its g_idx and scales.
  auto const ck = io::safetensors_checkpoint::open(dir);
  std::vector<std::pair<std::string, std::array<index_t, 2>>> linears;
  for (auto const& name : ck.names())
    if (name.size() > 8 && name.compare(name.size() - 8, 8, ".qweight") == 0) {
      auto const base = name.substr(0, name.size() - 8);
      linears.push_back({base, {ck.at(base + ".g_idx").shape.at(0), ck.at(base + ".scales").shape.at(1)}});
    }
  if (linears.empty()) rsq::detail::throw_io_error(dir.string(), ": no .qweight tensor");
  auto first_misfit = [&](index_t in_multiple, index_t out_multiple) -> std::string {
    for (auto const& [base, shape] : linears)
      if (shape[0] % in_multiple != 0 || shape[1] % out_multiple != 0)
        return base + " is (in " + std::to_string(shape[0]) + ", out " + std::to_string(shape[1]) + ")";
    return {};
  };
  std::vector<engine_verdict> out;
  bool const tf_bits = bits == 2 || bits == 3 || bits == 4 || bits == 8;
  out.push_back({"transformers", tf_bits,
                 tf_bits ? "with the GPTQModel package installed" : std::to_string(bits) + "-bit GPTQ is not supported"});
  bool const vllm_format = (bits == 4 || bits == 8) && sym;
  std::string const vllm_no = !vllm_format ? (sym ? std::to_string(bits) + "-bit GPTQ is not supported (4 and 8 only)"
                                                  : "asymmetric GPTQ is not supported (symmetric only)")
                                           : "";
  auto kernel = [&](char const* name, std::initializer_list<int> groups, index_t in_m, index_t out_m, char const* gpu) {
    engine_verdict v{name, false, {}};
    if (!vllm_format) v.why = vllm_no;
    else if (std::find(groups.begin(), groups.end(), group) == groups.end())
      v.why = "group size " + std::to_string(group) + " is not one of its group sizes";
    else if (auto const m = first_misfit(in_m, out_m); !m.empty())
      v.why = m + ": needs in % " + std::to_string(in_m) + " == 0 and out % " + std::to_string(out_m) + " == 0";
    else {
      v.loads = true;
      v.why = gpu;
    }
    return v;
  };
  out.push_back(kernel("vLLM (Machete kernel)", {-1, 64, 128}, 64, 128, "on Hopper GPUs (H100, H200)"));
  out.push_back(kernel("vLLM (Marlin kernel)", {-1, 32, 64, 128}, 128, 64, "on Turing and newer GPUs, unsplit"));
  return out;
}

}  // namespace rsq::model
