// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Llama models as GGUF files that llama.cpp runs (../shared/docs/formats.md §5), and back.
///
/// save_gguf() writes the `llama` architecture: the hyperparameters, a SentencePiece vocabulary (gguf_vocab: from a
/// llama2.c tokenizer or a SentencePiece-style tokenizer.json), the norms in F32, the embedding and the head in F16
/// or F32, and each linear either
///  - as the blocks a GPTQ/RSQ solve on the block grid produced (a quantized_model whose grid is Q4_0, Q4_1 or Q8_0:
///    pack::block_grid), bit for bit: llama.cpp's dequantization of the file is the model rsq evaluated; or
///  - converted by llama.cpp's own rules (a float model with gguf_options::linear_type: F32, F16, or Q4_0 / Q4_1 /
///    Q8_0 by round to nearest, what `llama-quantize` does without an importance matrix).
/// A linear whose input size is not a multiple of 32 cannot be a block type and is written in float_type
/// (the pipeline keeps it unquantized: layer_report's `kept`). RoPE pairs are adjacent in rsq's weights, as llama.cpp
/// expects (no permutation); Llama-3's RoPE scaling is written as the `rope_freqs.weight` factors llama.cpp divides
/// by. llama.cpp applies no online Hadamard and has no linear biases in this architecture: such models are refused.
///
/// load_gguf_model() reads a llama GGUF (F32, F16, BF16, Q4_0, Q4_1, Q8_0 tensors) back into a float model.
///
/// imatrix_from_hessians turns the Hessians quantize_model() builds into llama.cpp's importance matrix: per linear
/// Σ_t w_t·x_t², the importance-weighted sum of squares RSQ's Hessian diagonal holds, so that
/// `llama-quantize --imatrix` weights its K-quants by AttnCon.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "rsq/core/error.hpp"
#include "rsq/core/half.hpp"
#include "rsq/io/gguf.hpp"
#include "rsq/io/imatrix.hpp"
#include "rsq/model/hf_tokenizer.hpp"
#include "rsq/model/llama.hpp"
#include "rsq/model/quantize.hpp"
#include "rsq/model/tokenizer.hpp"
#include "rsq/pack/ggml_blocks.hpp"
#include "rsq/version.hpp"

namespace rsq::model {

/// llama.cpp's token types (llama_token_type).
enum class gguf_token_type : std::int32_t { normal = 1, unknown = 2, control = 3, user_defined = 4, byte = 6 };

/// A SentencePiece ("llama") vocabulary as GGUF stores it: pieces with "▁" for spaces and "<0xHH>" byte pieces,
/// merge scores (higher merges first), token types and the special ids.
struct gguf_vocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<gguf_token_type> types;
  std::int32_t bos = 1, eos = 2, unk = 0;
  bool add_bos = true;
  bool add_eos = false;

  [[nodiscard]] std::int32_t size() const noexcept { return std::int32_t(tokens.size()); }
};

namespace detail {

inline bool is_byte_piece(std::string_view p) noexcept {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); };
  return p.size() == 6 && p.substr(0, 3) == "<0x" && hex(p[3]) && hex(p[4]) && p[5] == '>';
}

inline std::string spaces_to_metaspace(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == ' ') out += "\xE2\x96\x81";  // U+2581 "▁"
    else out += c;
  }
  return out;
}

}  // namespace detail

/// The GGUF vocabulary of a llama2.c tokenizer (tokenizer.bin): its pieces with spaces written as "▁", BOS and EOS
/// named "<s>" and "</s>" (llama2.c writes them with newlines around), its scores.
[[nodiscard]] inline gguf_vocab to_gguf_vocab(tokenizer const& t) {
  gguf_vocab v;
  v.bos = tokenizer::bos_id;
  v.eos = tokenizer::eos_id;
  v.unk = tokenizer::unk_id;
  for (std::int32_t id = 0; id < t.size(); ++id) {
    std::string const& p = t.piece(id);
    gguf_token_type type = gguf_token_type::normal;
    if (id == v.unk) {
      type = gguf_token_type::unknown;
      v.tokens.emplace_back("<unk>");
    } else if (id == v.bos || id == v.eos) {
      type = gguf_token_type::control;
      v.tokens.emplace_back(id == v.bos ? "<s>" : "</s>");
    } else {
      if (detail::is_byte_piece(p)) type = gguf_token_type::byte;
      v.tokens.push_back(type == gguf_token_type::byte ? p : detail::spaces_to_metaspace(p));
    }
    v.scores.push_back(t.score(id));
    v.types.push_back(type);
  }
  return v;
}

/// The GGUF vocabulary of a SentencePiece-style tokenizer.json (Llama-2, Mistral: "▁" and byte fallback). Scores:
/// −rank of the merge that makes each piece (llama.cpp merges the highest score first, as BPE merges the lowest rank),
/// and below every merge for the pieces no merge makes.
/// @throws rsq::invalid_argument for a byte-level tokenizer (Llama-3, Qwen2), which GGUF stores as a "gpt2" vocabulary
///         with a pre-tokenizer rsq does not write
[[nodiscard]] inline gguf_vocab to_gguf_vocab(hf_tokenizer const& t) {
  RSQ_EXPECTS(t.kind() == hf_tokenizer_kind::sentencepiece_bpe,
              "to_gguf_vocab: only SentencePiece-style tokenizers (\"▁\" and byte fallback, as Llama-2 and Mistral) "
              "are written to GGUF; this one is byte-level BPE (Llama-3, Qwen2), a \"gpt2\" vocabulary in llama.cpp");
  gguf_vocab v;
  v.bos = t.bos_id();
  v.eos = t.eos_id();
  v.unk = t.unk_id();
  auto const ranks = t.merge_ranks();
  std::int32_t const last = std::int32_t(ranks.empty() ? 0 : *std::max_element(ranks.begin(), ranks.end()));
  for (std::int32_t id = 0; id < t.vocab_size(); ++id) {
    std::string const& p = t.piece(id);
    gguf_token_type type = gguf_token_type::normal;
    if (id == v.unk) type = gguf_token_type::unknown;
    else if (t.is_special(id)) type = gguf_token_type::control;
    else if (detail::is_byte_piece(p)) type = gguf_token_type::byte;
    v.tokens.push_back(p);
    v.scores.push_back(ranks[std::size_t(id)] >= 0 ? -float(ranks[std::size_t(id)]) : -float(last) - 1.f);
    v.types.push_back(type);
  }
  v.add_bos = !t.template_prefix().empty() && t.template_prefix().front() == v.bos;
  v.add_eos = !t.template_suffix().empty() && t.template_suffix().back() == v.eos;
  return v;
}

/// Options of save_gguf().
struct gguf_options {
  std::string name = "rsq";  ///< general.name
  /// The embedding, the head and the linears that stay unquantized: F16 (default) or F32.
  pack::ggml_type float_type = pack::ggml_type::f16;
  /// A float model's linears (save_gguf of a llama_model): F32, F16, or Q4_0 / Q4_1 / Q8_0 by llama.cpp's round to
  /// nearest. Unused for a quantized_model, whose linears are written as solved.
  pack::ggml_type linear_type = pack::ggml_type::f16;
};

/// What save_gguf() wrote.
struct gguf_summary {
  std::filesystem::path path;
  std::uint64_t bytes = 0;
  int tensors = 0;
  pack::ggml_type linear_type = pack::ggml_type::f16;  ///< the type of the quantized linears
  std::vector<std::string> kept;  ///< linears written in float_type because their input size is not a multiple of 32
};

namespace detail {

inline std::string gguf_linear_name(int layer, linear_id l) {
  std::string_view n;
  switch (l) {
    case linear_id::wq: n = "attn_q"; break;
    case linear_id::wk: n = "attn_k"; break;
    case linear_id::wv: n = "attn_v"; break;
    case linear_id::wo: n = "attn_output"; break;
    case linear_id::w1: n = "ffn_gate"; break;
    case linear_id::w2: n = "ffn_down"; break;
    case linear_id::w3: n = "ffn_up"; break;
  }
  return "blk." + std::to_string(layer) + "." + std::string(n) + ".weight";
}

/// llama.cpp's general.file_type (llama_ftype) of a model whose linears are @p t.
inline std::uint32_t gguf_file_type(pack::ggml_type t) {
  switch (t) {
    case pack::ggml_type::f32: return 0;
    case pack::ggml_type::f16: return 1;
    case pack::ggml_type::q4_0: return 2;
    case pack::ggml_type::q4_1: return 3;
    case pack::ggml_type::q8_0: return 7;
    default: break;
  }
  rsq::detail::throw_invalid_argument("save_gguf: ", pack::traits(t).name, " is not a type rsq writes");
}

/// A fill callback converting the row-major float tensor @p v (rows of @p n) to type @p t by llama.cpp's rules,
/// refusing a NaN or Inf (named by @p name and row) in the same pass that reads the values.
inline io::gguf_fill converted(float const* v, index_t n, pack::ggml_type t, std::string name) {
  return [v, n, t, name = std::move(name)](std::span<std::byte> out) {
    std::size_t const row = pack::row_bytes(t, n);
    for (std::size_t r = 0; r < out.size() / row; ++r) {
      float const* x = v + r * std::size_t(n);
      std::uint32_t nonfinite = 0;  // all exponent bits set: NaN or Inf (an integer test, so the loop vectorizes)
      for (index_t i = 0; i < n; ++i) nonfinite |= std::uint32_t((std::bit_cast<std::uint32_t>(x[i]) & 0x7f800000u) == 0x7f800000u);
      RSQ_EXPECTS(nonfinite == 0, "save_gguf: ", name, " row ", r, " has a NaN or Inf");
      pack::quantize_row_reference(t, {x, std::size_t(n)}, out.subspan(r * row, row));
    }
  };
}

/// Metadata, vocabulary, norms, embedding and head of @p m: everything but the linears.
inline void add_gguf_common(io::gguf_writer& w, llama_model const& m, gguf_vocab const& vocab, gguf_options const& opt,
                            pack::ggml_type linear_type, char const* who) {
  auto const& c = m.config;
  RSQ_EXPECTS(!m.online.any(), who, ": the model needs online Hadamards before o_proj and down_proj, which llama.cpp "
              "does not apply: quantize with rotations that fold into the weights (--rotation fused)");
  for (linear_id l : all_linears)
    RSQ_EXPECTS(!c.has_bias(l), who, ": the model has a ", name(l), " bias, which llama.cpp's llama architecture "
                "does not load");
  RSQ_EXPECTS(opt.float_type == pack::ggml_type::f16 || opt.float_type == pack::ggml_type::f32, who,
              ": float_type must be F16 or F32, got ", pack::traits(opt.float_type).name);
  RSQ_EXPECTS(vocab.size() == c.vocab_size, who, ": the vocabulary has ", vocab.size(), " tokens, the model ",
              c.vocab_size);
  RSQ_EXPECTS(vocab.scores.size() == vocab.tokens.size() && vocab.types.size() == vocab.tokens.size(), who,
              ": the vocabulary's tokens, scores and types differ in length");
  auto u32 = [](auto v) { return std::uint32_t(v); };
  w.set("general.architecture", "llama");
  w.set("general.name", opt.name);
  w.set("general.file_type", gguf_file_type(linear_type));
  if (pack::traits(linear_type).block_elements > 1) w.set("general.quantization_version", u32(2));
  w.set("llama.vocab_size", u32(c.vocab_size));
  w.set("llama.context_length", u32(c.seq_len));
  w.set("llama.embedding_length", u32(c.dim));
  w.set("llama.block_count", u32(c.n_layers));
  w.set("llama.feed_forward_length", u32(c.hidden_dim));
  w.set("llama.attention.head_count", u32(c.n_heads));
  w.set("llama.attention.head_count_kv", u32(c.n_kv_heads));
  w.set("llama.rope.dimension_count", u32(c.head_size()));
  w.set("llama.rope.freq_base", float(c.rope_theta));
  w.set("llama.attention.layer_norm_rms_epsilon", c.norm_eps);
  if (c.q_dim() != c.dim) {
    w.set("llama.attention.key_length", u32(c.head_size()));
    w.set("llama.attention.value_length", u32(c.head_size()));
  }
  w.set("tokenizer.ggml.model", "llama");
  w.set("tokenizer.ggml.tokens", vocab.tokens);
  w.set("tokenizer.ggml.scores", vocab.scores);
  std::vector<std::int32_t> types(vocab.types.size());
  std::transform(vocab.types.begin(), vocab.types.end(), types.begin(), [](auto t) { return std::int32_t(t); });
  w.set("tokenizer.ggml.token_type", std::move(types));
  w.set("tokenizer.ggml.bos_token_id", u32(vocab.bos));
  w.set("tokenizer.ggml.eos_token_id", u32(vocab.eos));
  if (vocab.unk >= 0) w.set("tokenizer.ggml.unknown_token_id", u32(vocab.unk));
  w.set("tokenizer.ggml.add_bos_token", vocab.add_bos);
  w.set("tokenizer.ggml.add_eos_token", vocab.add_eos);
  w.set("rsq.version", std::string(rsq::version_string));
  if (c.rope_scaling.enabled()) {  // rsq's own keys: load_gguf_model reads the scaling back from them
    w.set("rsq.rope.scaling.factor", float(c.rope_scaling.factor));
    w.set("rsq.rope.scaling.low_freq_factor", float(c.rope_scaling.low_freq_factor));
    w.set("rsq.rope.scaling.high_freq_factor", float(c.rope_scaling.high_freq_factor));
    w.set("rsq.rope.scaling.original_context_length", u32(c.rope_scaling.original_max_positions));
  }

  auto add_float = [&](std::string name, std::vector<index_t> ne, float const* v, pack::ggml_type t) {
    auto fill = converted(v, ne[0], t, name);
    w.add_tensor_filled(std::move(name), std::move(ne), t, std::move(fill));
  };
  index_t const d = c.dim;
  add_float("token_embd.weight", {d, c.vocab_size}, m.token_embedding.data(), opt.float_type);
  if (c.rope_scaling.enabled()) {
    // llama.cpp divides each pair's frequency by its factor: unscaled / scaled.
    auto factors = std::make_shared<std::vector<float>>();
    for (index_t i = 0; i < c.head_size() / 2; ++i)
      factors->push_back(float(nn::rope_inverse_frequency(c.rope_theta, c.head_size(), {}, i) /
                               nn::rope_inverse_frequency(c.rope_theta, c.head_size(), c.rope_scaling, i)));
    w.add_tensor_filled("rope_freqs.weight", {c.head_size() / 2}, pack::ggml_type::f32, [factors](std::span<std::byte> out) {
      std::memcpy(out.data(), factors->data(), out.size());
    });
  }
  for (int l = 0; l < c.n_layers; ++l) {
    auto const& layer = m.layers[std::size_t(l)];
    std::string const p = "blk." + std::to_string(l) + ".";
    add_float(p + "attn_norm.weight", {d}, layer.rms_att.data(), pack::ggml_type::f32);
    add_float(p + "ffn_norm.weight", {d}, layer.rms_ffn.data(), pack::ggml_type::f32);
  }
  add_float("output_norm.weight", {d}, m.rms_final.data(), pack::ggml_type::f32);
  // A head equal to the embedding (tied, unrotated) is left out: llama.cpp then uses token_embd.
  if (m.classifier.size() != m.token_embedding.size() ||
      std::memcmp(m.classifier.data(), m.token_embedding.data(), m.classifier.size() * sizeof(float)) != 0)
    add_float("output.weight", {d, c.vocab_size}, m.classifier.data(), opt.float_type);
}

inline gguf_summary finish_gguf(io::gguf_writer const& w, std::filesystem::path const& path, pack::ggml_type t,
                                std::vector<std::string> kept) {
  w.write(path);
  return {.path = path, .bytes = w.file_bytes(), .tensors = int(w.tensors().size()), .linear_type = t,
          .kept = std::move(kept)};
}

}  // namespace detail

/// Writes the float model @p m as a GGUF at @p path (through a temporary file), its linears converted to
/// opt.linear_type by llama.cpp's own rules (round to nearest for the block types; a linear whose input size is not a
/// multiple of 32 in opt.float_type).
/// @throws rsq::invalid_argument for online Hadamards, biases, a vocabulary of another size, unsupported types;
///         rsq::io_error when the file cannot be written
inline gguf_summary save_gguf(std::filesystem::path const& path, llama_model const& m, gguf_vocab const& vocab,
                              gguf_options const& opt = {}) {
  validate(m, /*check_finite=*/false);  // the values are checked as they are converted
  auto const t = opt.linear_type;
  RSQ_EXPECTS(t == pack::ggml_type::f32 || t == pack::ggml_type::f16 || t == pack::ggml_type::q4_0 ||
                  t == pack::ggml_type::q4_1 || t == pack::ggml_type::q8_0,
              "save_gguf: linear_type must be F32, F16, Q4_0, Q4_1 or Q8_0, got ", pack::traits(t).name);
  io::gguf_writer w;
  detail::add_gguf_common(w, m, vocab, opt, t, "save_gguf");
  std::vector<std::string> kept;
  for (int l = 0; l < m.config.n_layers; ++l)
    for (linear_id id : all_linears) {
      auto const& wt = m.layers[std::size_t(l)].weight(id);
      index_t const rows = index_t(wt.shape()[0]), cols = index_t(wt.shape()[1]);
      auto const name = detail::gguf_linear_name(l, id);
      pack::ggml_type const lt = cols % pack::traits(t).block_elements == 0 ? t : opt.float_type;
      if (lt != t) kept.push_back(name);
      w.add_tensor_filled(name, {cols, rows}, lt, detail::converted(wt.data(), cols, lt, name));
    }
  return detail::finish_gguf(w, path, t, std::move(kept));
}

/// Writes the quantized model @p q (quantize_model() on a block grid: pack::block_grid of Q4_0, Q4_1 or Q8_0) as a
/// GGUF at @p path: each linear's blocks as the solver chose them; linears the grid could not hold (layer_report's
/// `kept`) in opt.float_type.
/// @throws rsq::invalid_argument for a model quantized on another grid, an unfinished quantization, online Hadamards,
///         biases; rsq::io_error when the file cannot be written
inline gguf_summary save_gguf(std::filesystem::path const& path, quantized_model const& q, gguf_vocab const& vocab,
                              gguf_options const& opt = {}) {
  RSQ_EXPECTS(q.ok(), "save_gguf: the quantization did not finish (status ", gptq::to_string(q.info), ")");
  RSQ_EXPECTS(q.grid.llama_cpp_block(), "save_gguf: the model was quantized on an rsq grid, not one of llama.cpp's "
              "block grids (quantize with grid = pack::block_grid(type), --gguf-type)");
  auto const t = q.grid.conv == quant::convention::q4_0   ? pack::ggml_type::q4_0
                 : q.grid.conv == quant::convention::q4_1 ? pack::ggml_type::q4_1
                                                          : pack::ggml_type::q8_0;
  io::gguf_writer w;
  detail::add_gguf_common(w, q.model, vocab, opt, t, "save_gguf");
  w.set("rsq.method", std::string(to_string(q.method)));
  w.set("rsq.group_size", std::int32_t(q.group_size));
  w.set("rsq.policy", q.policy);
  std::vector<std::string> kept;
  for (int l = 0; l < q.model.config.n_layers; ++l)
    for (linear_id id : all_linears) {
      auto const& qw = q.weight(l, id);
      auto const& wt = q.model.layers[std::size_t(l)].weight(id);
      index_t const rows = index_t(wt.shape()[0]), cols = index_t(wt.shape()[1]);
      auto const name = detail::gguf_linear_name(l, id);
      if (qw.bits == 0) {  // kept: the model holds its fp16-rounded weight
        kept.push_back(name);
        w.add_tensor_filled(name, {cols, rows}, opt.float_type, detail::converted(wt.data(), cols, opt.float_type, name));
        continue;
      }
      RSQ_EXPECTS(qw.rows() == rows && qw.cols() == cols, "save_gguf: ", name, ": the quantized weight's shape differs "
                  "from the model's");
      w.add_tensor_filled(name, {cols, rows}, t, [&qw, t, name](std::span<std::byte> out) {
        try {
          pack::pack_weight(t, qw, out);
        } catch (rsq::invalid_argument const& e) {
          rsq::detail::throw_invalid_argument("save_gguf: ", name, ": ", e.what());
        }
      });
    }
  return detail::finish_gguf(w, path, t, std::move(kept));
}

/// The float model of a llama GGUF (F32, F16, BF16, Q4_0, Q4_1 and Q8_0 tensors dequantized as llama.cpp does).
/// @throws rsq::io_error naming the file and the key or tensor for a file that is not a llama model rsq can read
[[nodiscard]] inline llama_model load_gguf_model(std::filesystem::path const& path) {
  auto const f = io::gguf_file::open(path);
  auto fail = [&](auto const&... what) { rsq::detail::throw_io_error(path.string(), ": ", what...); };
  auto const& arch = f.get<std::string>("general.architecture");
  if (arch != "llama") fail("general.architecture is \"", arch, "\"; rsq reads \"llama\" models");
  auto u32 = [&](std::string_view key) { return int(f.get<std::uint32_t>(key)); };
  llama_model m;
  auto& c = m.config;
  c.dim = u32("llama.embedding_length");
  c.hidden_dim = u32("llama.feed_forward_length");
  c.n_layers = u32("llama.block_count");
  c.n_heads = u32("llama.attention.head_count");
  c.n_kv_heads = u32("llama.attention.head_count_kv");
  c.seq_len = u32("llama.context_length");
  c.norm_eps = f.get<float>("llama.attention.layer_norm_rms_epsilon");
  c.rope_theta = f.get_or<float>("llama.rope.freq_base", 10000.f);
  if (f.find("llama.attention.key_length")) c.head_dim = u32("llama.attention.key_length");
  if (f.find("llama.attention.value_length") && u32("llama.attention.value_length") != c.head_size())
    fail("llama.attention.value_length differs from key_length; rsq's attention has one head size");
  if (f.find("llama.rope.dimension_count") && u32("llama.rope.dimension_count") != c.head_size())
    fail("llama.rope.dimension_count ", u32("llama.rope.dimension_count"), " is not the head size ", c.head_size(),
         " (partial rotary embeddings are not supported)");
  if (f.find_tensor("rope_freqs.weight")) {
    if (!f.find("rsq.rope.scaling.factor"))
      fail("rope_freqs.weight (Llama-3 RoPE scaling) without rsq's rsq.rope.scaling.* keys: the scaling "
           "parameters cannot be recovered");
    c.rope_scaling.factor = f.get<float>("rsq.rope.scaling.factor");
    c.rope_scaling.low_freq_factor = f.get<float>("rsq.rope.scaling.low_freq_factor");
    c.rope_scaling.high_freq_factor = f.get<float>("rsq.rope.scaling.high_freq_factor");
    c.rope_scaling.original_max_positions = u32("rsq.rope.scaling.original_context_length");
  }
  auto const& emb_info = f.tensor("token_embd.weight");
  c.vocab_size = int(emb_info.ne.size() == 2 ? emb_info.ne[1] : 0);
  try {
    validate(c);
  } catch (rsq::invalid_argument const& e) {
    fail("the hyperparameters do not describe a Llama model: ", e.what());
  }
  auto matrix_of = [&](std::string const& name, index_t rows, index_t cols) {
    auto const t = f.to_float(name);
    if (t.ne.size() != 2 || t.rows() != rows || t.cols() != cols)
      fail("tensor ", name, " has dims ", io::detail::gguf_dims_string(t.ne), ", expected {", cols, ", ", rows, "}");
    auto out = rsq::make_matrix_for_overwrite<float>(rows, cols);
    std::copy(t.values.begin(), t.values.end(), out.begin());
    return out;
  };
  auto vector_of = [&](std::string const& name, index_t n) {
    auto const t = f.to_float(name);
    if (t.ne.size() != 1 || t.cols() != n)
      fail("tensor ", name, " has dims ", io::detail::gguf_dims_string(t.ne), ", expected {", n, "}");
    auto out = rsq::make_vector<float>(n);
    std::copy(t.values.begin(), t.values.end(), out.begin());
    return out;
  };
  m.token_embedding = matrix_of("token_embd.weight", c.vocab_size, c.dim);
  m.layers.resize(std::size_t(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    auto& layer = m.layers[std::size_t(l)];
    std::string const p = "blk." + std::to_string(l) + ".";
    layer.rms_att = vector_of(p + "attn_norm.weight", c.dim);
    layer.rms_ffn = vector_of(p + "ffn_norm.weight", c.dim);
    for (linear_id id : all_linears) {
      auto const shape = weight_shape(c, id);
      layer.weight(id) = matrix_of(detail::gguf_linear_name(l, id), shape[0], shape[1]);
    }
  }
  m.rms_final = vector_of("output_norm.weight", c.dim);
  m.classifier = f.find_tensor("output.weight") ? matrix_of("output.weight", c.vocab_size, c.dim) : m.token_embedding;
  validate(m, /*check_finite=*/false);  // to_float refused NaN and Inf
  return m;
}

/// Collects llama.cpp's importance matrix from quantize_model()'s Hessians: pass on_hessian() as the observer's
/// on_hessian, then take result().
class imatrix_from_hessians {
 public:
  /// @p sequences calibration windows (after expansion) of @p length tokens: the Hessians are
  /// H = (2/sequences) Σ_tokens w x xᵀ, as the reference normalises them, so Σ w x² = sequences·H_ii/2 over
  /// sequences·length activation rows.
  imatrix_from_hessians(index_t sequences, index_t length) : sequences_(sequences), length_(length) {
    RSQ_EXPECTS(sequences > 0 && length > 0, "imatrix_from_hessians: calibration windows and their length must be "
                "positive, got ", sequences, " x ", length);
  }

  /// The observer callback: records Σ w x² for every linear that reads the group's input.
  [[nodiscard]] auto on_hessian() {
    return [this](int layer, linear_id group, rsq::matrix<double> const& h) { add(layer, group, h); };
  }

  void add(int layer, linear_id group, rsq::matrix<double> const& h) {
    index_t const n = index_t(h.shape()[0]);
    std::vector<float> sums(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) sums[std::size_t(i)] = float(double(sequences_) * h(i, i) / 2.0);
    for (linear_id id : group_of(group))
      entries_[{layer, int(id)}] = {detail::gguf_linear_name(layer, id), sums, float(sequences_ * length_)};
  }

  /// The importance matrix, entries in layer and file order; a chunk is a calibration window.
  /// @param dataset names the calibration data (imatrix.datasets)
  [[nodiscard]] io::imatrix result(std::string dataset) const {
    io::imatrix m;
    m.datasets.push_back(std::move(dataset));
    m.chunk_size = int(length_);
    m.chunk_count = int(sequences_);
    for (auto const& [key, e] : entries_) m.entries.push_back(e);
    return m;
  }

 private:
  static std::vector<linear_id> group_of(linear_id first) {
    switch (first) {
      case linear_id::wq: return {linear_id::wq, linear_id::wk, linear_id::wv};
      case linear_id::w1: return {linear_id::w1, linear_id::w3};
      default: return {first};
    }
  }

  index_t sequences_, length_;
  std::map<std::pair<int, int>, io::imatrix_entry> entries_;
};

}  // namespace rsq::model
