// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// A Hugging Face model folder (config.json + safetensors, one file or shards) as an rsq::model::llama_model, and a
/// llama_model written back as a folder that transformers loads (../shared/docs/formats.md §1–2).
///
/// Hugging Face's Llama applies RoPE to the two halves of each head (rotate_half: dimension i pairs with
/// i + head_dim/2); rsq's forward pass, like llama2.c and GGUF, rotates adjacent pairs (2i, 2i+1) with the same
/// frequency θ^(−2i/head_dim). Reading therefore permutes the rows of q_proj and k_proj inside each head (row 2i ←
/// HF row i, row 2i+1 ← HF row i + head_dim/2), which gives the same attention scores, and writing permutes them
/// back. The permutation acts on output rows only, so it commutes with everything rsq does to a model: rotations of
/// the residual stream act on the input columns, and GPTQ quantizes rows independently.
///
/// What the forward pass does not model yet is refused when the folder is read, naming the field: o_proj and MLP
/// biases and a head_dim other than hidden_size / num_attention_heads. Qwen2's q/k/v biases and Llama-3's RoPE
/// scaling are run; the q and k biases are permuted with their rows.

#include <algorithm>
#include <cstring>
#include <deque>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/io/atomic_file.hpp"
#include "rsq/io/safetensors.hpp"
#include "rsq/model/hf_config.hpp"
#include "rsq/model/llama.hpp"

namespace rsq::model {

/// A model read from a Hugging Face folder: its checked config (kept to be written back) and its weights.
struct hf_model {
  hf_config config;
  llama_model model;
};

/// The llama_config of @p c (every feature parse_hf_config accepts runs in the forward pass).
[[nodiscard]] inline llama_config to_llama_config(hf_config const& c) {
  llama_config l;
  l.dim = c.hidden_size;
  l.hidden_dim = c.intermediate_size;
  l.n_layers = c.num_hidden_layers;
  l.n_heads = c.num_attention_heads;
  l.n_kv_heads = c.num_key_value_heads;
  l.vocab_size = c.vocab_size;
  // Inside a sliding window, windowed attention is plain causal attention: longer sequences are refused.
  l.seq_len = c.sliding_window ? std::min(c.max_position_embeddings, *c.sliding_window) : c.max_position_embeddings;
  l.norm_eps = float(c.rms_norm_eps);
  l.rope_theta = c.rope_theta;
  if (c.rope_scaling) l.rope_scaling = *c.rope_scaling;
  l.qkv_bias = c.qkv_bias;
  l.o_bias = c.attention_bias;
  l.mlp_bias = c.mlp_bias;
  // Explicit only where the heads are not dim / n_heads wide (Mistral-Nemo), so that equal models compare equal.
  l.head_dim = c.head_dim * c.num_attention_heads == c.hidden_size ? 0 : c.head_dim;
  validate(l);
  return l;
}

/// Rows of a q or k projection (heads·head_dim, in) reordered between the two RoPE layouts: `to_pairs` takes
/// Hugging Face's halves to adjacent pairs, its inverse takes them back. Any per-row array permutes the same way
/// (the codes, scales and zeros of a quantized q or k).
/// permute_rope_rows in place, through one head of scratch rows: reading a model permutes without a second copy of
/// q and k (fresh memory costs a page fault per 4 KiB on the machines rsq is developed on).
template <class T>
void permute_rope_rows_in_place(xt::xtensor<T, 2>& w, int head_dim, bool to_pairs) {
  std::size_t const rows = w.shape()[0], cols = w.shape()[1], hd = std::size_t(head_dim), half = hd / 2;
  RSQ_EXPECTS(hd % 2 == 0 && rows % hd == 0, "permute_rope_rows: ", rows, " rows are not whole heads of ", hd);
  if (cols == 0) return;
  std::vector<T> head(hd * cols);
  for (std::size_t h = 0; h < rows / hd; ++h) {
    T* const base = &w(h * hd, 0);
    std::memcpy(head.data(), base, hd * cols * sizeof(T));
    for (std::size_t i = 0; i < half; ++i)
      for (std::size_t j = 0; j < 2; ++j) {
        std::size_t const pair_row = 2 * i + j, half_row = j * half + i;
        std::size_t const to = to_pairs ? pair_row : half_row, from = to_pairs ? half_row : pair_row;
        std::memcpy(base + to * cols, head.data() + from * cols, cols * sizeof(T));
      }
  }
}

/// Rows of a q or k projection (heads·head_dim, in) reordered between the two RoPE layouts: `to_pairs` takes
/// Hugging Face's halves to adjacent pairs, its inverse takes them back. Any per-row array permutes the same way
/// (the codes, scales and zeros of a quantized q or k).
template <class T>
[[nodiscard]] xt::xtensor<T, 2> permute_rope_rows(xt::xtensor<T, 2> const& w, int head_dim, bool to_pairs) {
  auto out = w;
  permute_rope_rows_in_place(out, head_dim, to_pairs);
  return out;
}

namespace detail {

/// A q or k bias permuted as its projection's rows (permute_rope_rows of a one-column matrix).
template <class T>
xt::xtensor<T, 1> permute_rope_vector(xt::xtensor<T, 1> const& b, int head_dim, bool to_pairs) {
  auto column = xt::xtensor<T, 2>::from_shape({b.size(), std::size_t(1)});
  std::copy(b.begin(), b.end(), column.begin());
  auto const p = permute_rope_rows(column, head_dim, to_pairs);
  auto out = xt::xtensor<T, 1>::from_shape({b.size()});
  std::copy(p.begin(), p.end(), out.begin());
  return out;
}

inline std::string hf_layer_prefix(int l) { return "model.layers." + std::to_string(l) + "."; }

/// The Hugging Face tensor name of linear @p id of layer @p l, without ".weight".
inline std::string hf_linear_name(int l, linear_id id) {
  bool const attention = id == linear_id::wq || id == linear_id::wk || id == linear_id::wv || id == linear_id::wo;
  return hf_layer_prefix(l) + (attention ? "self_attn." : "mlp.") + std::string(hf_name(id));
}
inline std::string hf_weight_name(int l, linear_id id) { return hf_linear_name(l, id) + ".weight"; }
inline std::string hf_bias_name(int l, linear_id id) { return hf_linear_name(l, id) + ".bias"; }


/// True for the projections whose rows Hugging Face orders in RoPE halves (q and k).
constexpr bool rope_rows(linear_id id) noexcept { return id == linear_id::wq || id == linear_id::wk; }

/// Tensor @p name of the checkpoint, with the shape @p want.
template <std::size_t N>
xt::xtensor<float, N> hf_tensor(io::safetensors_checkpoint const& ck, std::string const& name,
                                std::array<std::size_t, N> const& want) {
  auto t = ck.to_float<N>(name);
  for (std::size_t d = 0; d < N; ++d)
    if (t.shape()[d] != want[d]) {
      std::string shape, expected;
      for (std::size_t k = 0; k < N; ++k) {
        shape += (k ? ", " : "") + std::to_string(t.shape()[k]);
        expected += (k ? ", " : "") + std::to_string(want[k]);
      }
      rsq::detail::throw_io_error(ck.file_of(name).name(), ": tensor \"", name, "\" has shape (", shape,
                                  "), the config asks for (", expected, ")");
    }
  return t;
}

}  // namespace detail

/// Reads the model in the Hugging Face folder @p dir: config.json and model.safetensors (or its shards), weights
/// converted to float (F32, F16, BF16), q/k rows permuted to adjacent-pair RoPE, the classifier the embedding when
/// the config ties them.
/// @throws rsq::io_error naming the file and field or tensor: a config refused by parse_hf_config or
///         to_llama_config, a missing tensor or one of the wrong shape, NaN/Inf in a weight, an invalid safetensors
[[nodiscard]] inline hf_model load_hf_model(std::filesystem::path const& dir) {
  hf_model out;
  out.config = load_hf_config(dir);
  auto const& c = out.config;
  llama_config const lc = to_llama_config(c);
  auto const ck = io::safetensors_checkpoint::open(dir);
  std::size_t const d = std::size_t(lc.dim), v = std::size_t(lc.vocab_size);
  llama_model& m = out.model;
  m.config = lc;
  m.token_embedding = detail::hf_tensor<2>(ck, "model.embed_tokens.weight", {v, d});
  m.rms_final = detail::hf_tensor<1>(ck, "model.norm.weight", {d});
  bool const has_head = ck.contains("lm_head.weight");
  if (!has_head && !c.tie_word_embeddings)
    rsq::detail::throw_io_error(dir.string(), ": no lm_head.weight, and config.json does not tie the embeddings");
  // A tied head is read a second time rather than copied: the same prefaulted conversion as every tensor.
  m.classifier = detail::hf_tensor<2>(ck, has_head && !c.tie_word_embeddings ? "lm_head.weight" : "model.embed_tokens.weight",
                                      {v, d});
  m.layers.resize(std::size_t(lc.n_layers));
  for (int l = 0; l < lc.n_layers; ++l) {
    auto& layer = m.layers[std::size_t(l)];
    layer.rms_att = detail::hf_tensor<1>(ck, detail::hf_layer_prefix(l) + "input_layernorm.weight", {d});
    layer.rms_ffn = detail::hf_tensor<1>(ck, detail::hf_layer_prefix(l) + "post_attention_layernorm.weight", {d});
    for (linear_id id : all_linears) {
      auto const shape = weight_shape(lc, id);
      auto w = detail::hf_tensor<2>(ck, detail::hf_weight_name(l, id), {std::size_t(shape[0]), std::size_t(shape[1])});
      if (detail::rope_rows(id)) permute_rope_rows_in_place(w, lc.head_size(), true);
      layer.weight(id) = std::move(w);
      if (!lc.has_bias(id)) continue;
      auto b = detail::hf_tensor<1>(ck, detail::hf_bias_name(l, id), {std::size_t(shape[0])});
      layer.bias(id) = detail::rope_rows(id) ? detail::permute_rope_vector(b, lc.head_size(), true) : std::move(b);
    }
  }
  validate(m);
  return out;
}

/// Options of save_hf_model.
struct hf_save_options {
  /// Storage of the weights: F32, or BF16 / F16 (rounded to nearest even).
  io::tensor_dtype dtype = io::tensor_dtype::f32;
  io::shard_options shards = {};
};

/// Writes @p m as a Hugging Face folder in the existing folder @p dir: `config.json` (the @p source config with the
/// dtype and, when the classifier no longer equals the embedding, `tie_word_embeddings: false`) and the weights
/// (model.safetensors or shards), q/k rows permuted back to Hugging Face's RoPE halves. Each file is written
/// atomically; the caller decides what else the folder may hold.
/// @throws rsq::invalid_argument for a model that needs online Hadamards (not a plain Llama: a Hugging Face
///         loader would compute without them) or whose shapes disagree with its config; rsq::io_error when a file
///         cannot be written
/// @returns the names of the files written
inline std::vector<std::string> save_hf_model(std::filesystem::path const& dir, llama_model const& m,
                                              hf_config const& source, hf_save_options const& opt = {}) {
  RSQ_EXPECTS(!m.online.any(), "save_hf_model: the model needs online Hadamards before o_proj/down_proj, which a "
              "Hugging Face loader does not apply; quantize with rotations that fuse into the weights");
  validate(m);
  RSQ_EXPECTS(m.config == to_llama_config(source), "save_hf_model: the model's shapes differ from its config");
  auto const& c = m.config;
  bool const tied = source.tie_word_embeddings && m.classifier == m.token_embedding;
  std::vector<rsq::matrix<float>> permuted;  // q and k in Hugging Face's row order, alive until written
  std::deque<rsq::vector<float>> permuted_bias;  // (a deque: records point into its elements)
  std::vector<io::tensor_record> recs;
  auto add = [&](std::string name, auto const& t) {
    std::vector<index_t> shape(t.shape().begin(), t.shape().end());
    recs.push_back(io::make_record(std::move(name), std::span<const float>(t.data(), t.size()), shape, opt.dtype));
  };
  add("model.embed_tokens.weight", m.token_embedding);
  permuted.reserve(2 * m.layers.size());
  for (int l = 0; l < c.n_layers; ++l) {
    auto const& layer = m.layers[std::size_t(l)];
    add(detail::hf_layer_prefix(l) + "input_layernorm.weight", layer.rms_att);
    for (linear_id id : all_linears) {
      if (detail::rope_rows(id)) {
        permuted.push_back(permute_rope_rows(layer.weight(id), c.head_size(), false));
        add(detail::hf_weight_name(l, id), permuted.back());
      } else {
        add(detail::hf_weight_name(l, id), layer.weight(id));
      }
    }
    add(detail::hf_layer_prefix(l) + "post_attention_layernorm.weight", layer.rms_ffn);
    for (linear_id id : all_linears) {
      if (!c.has_bias(id)) continue;
      if (detail::rope_rows(id)) {
        permuted_bias.push_back(detail::permute_rope_vector(layer.bias(id), c.head_size(), false));
        add(detail::hf_bias_name(l, id), permuted_bias.back());
      } else {
        add(detail::hf_bias_name(l, id), layer.bias(id));
      }
    }
  }
  add("model.norm.weight", m.rms_final);
  if (!tied) add("lm_head.weight", m.classifier);

  auto files = io::save_safetensors_checkpoint(dir, recs, opt.shards);
  auto json = source.json;
  json["tie_word_embeddings"] = tied;
  json["dtype"] = opt.dtype == io::tensor_dtype::f32 ? "float32" : opt.dtype == io::tensor_dtype::bf16 ? "bfloat16"
                                                                                                        : "float16";
  json.erase("torch_dtype");  // transformers 5 writes "dtype"; an older "torch_dtype" would disagree with it
  json.erase("quantization_config");
  io::write_text_file_atomic(dir / "config.json", json.dump(2) + "\n");
  files.emplace_back("config.json");
  return files;
}

/// The tokenizer and generation files a Hugging Face folder carries next to the weights.
inline constexpr std::string_view hf_side_files[] = {"tokenizer.json",          "tokenizer_config.json",
                                                     "tokenizer.model",         "special_tokens_map.json",
                                                     "generation_config.json",  "vocab.json",
                                                     "merges.txt",              "added_tokens.json"};

/// Copies the files of hf_side_files that @p from has into @p to. @returns their names
inline std::vector<std::string> copy_hf_side_files(std::filesystem::path const& from, std::filesystem::path const& to) {
  std::vector<std::string> copied;
  for (auto name : hf_side_files) {
    if (!std::filesystem::is_regular_file(from / name)) continue;
    io::mapped_file const f(from / name);
    io::write_file_atomic(to / name, f.bytes());
    copied.emplace_back(name);
  }
  return copied;
}

}  // namespace rsq::model
