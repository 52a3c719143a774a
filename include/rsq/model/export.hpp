// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Writing a quantized model (spec §1 step 6):
///  - `save_quantized_checkpoint`: a llama2c v0 checkpoint of the dequantized weights that an unmodified llama2c
///    runner computes correctly: the online Hadamards of a rotated model are folded back into wo and w2, the residual
///    rotation stays inside the weights (so the embedding and the classifier differ and the classifier is written
///    separately), and the fused norms have gains of ones;
///  - `export_gptq_directory`: the GPTQ tensors of every linear (AutoGPTQ int32 packing, rsq::pack::pack_gptq) as
///    `.npy` files, the full-precision tensors an engine also needs, and `manifest.json` with bits, group size,
///    quantizer, rotation kind and seed and the online Hadamards.
///
/// Packing needs in/out features that fill whole 32-bit words (multiples of 16, 32, 8, 4 for 2, 3, 4, 8 bits) and
/// bits in {2, 3, 4, 8}. A linear that does not fit (stories260K's hidden size 172 at 2, 3 and 4 bits; any linear at
/// 5–7 bits) is **not padded**: it is written unpacked (`codes` uint8 (out, in), `scales` and `zeros` (groups, out),
/// `g_idx`), and the manifest says so with the reason. The directory is always a complete model.

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/io/npy.hpp"
#include "rsq/model/llama.hpp"
#include "rsq/model/llama2c.hpp"
#include "rsq/model/quantize.hpp"
#include "rsq/model/rotate.hpp"
#include "rsq/pack/bitstream.hpp"
#include "rsq/pack/gptq_format.hpp"

namespace rsq::model {

/// The quantized model as a plain model (online transforms folded into wo and w2, see fold_online_transforms),
/// which the plain forward pass and llama2c's run.c compute as the pipeline did.
[[nodiscard]] inline llama_model plain_model(quantized_model const& q) {
  llama_model m = q.model;
  fold_online_transforms(m);
  return m;
}

/// Writes the dequantized model @p q to @p path as a llama2c v0 checkpoint (plain_model(); separate classifier when
/// it differs from the embedding, i.e. after a rotation).
/// @throws rsq::io_error if the file cannot be written
inline void save_quantized_checkpoint(std::filesystem::path const& path, quantized_model const& q) {
  save_llama2c_checkpoint(path, plain_model(q));
}

/// How one linear was written by export_gptq_directory().
struct exported_linear {
  int layer = 0;
  linear_id linear = linear_id::wq;
  std::string format;  ///< "gptq" (packed, v1 zeros), "gptq_v2" (packed, zeros as is) or "unpacked"
  std::string reason;  ///< why it is unpacked (empty when packed)
  std::string prefix;  ///< file name prefix, e.g. "layers.0.q_proj"
};

/// What export_gptq_directory() wrote.
struct gptq_export {
  std::filesystem::path manifest;
  std::vector<exported_linear> linears;
  [[nodiscard]] index_t packed() const noexcept {
    index_t n = 0;
    for (auto const& l : linears) n += l.format != "unpacked";
    return n;
  }
};

namespace pipeline_detail {

[[nodiscard]] inline std::string json_escape(std::string_view s) {
  std::string o = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') o += '\\';
    if (static_cast<unsigned char>(ch) < 0x20) {
      o += ' ';
      continue;
    }
    o += ch;
  }
  return o + "\"";
}

/// Why @p n features cannot be packed at @p bits, or empty.
[[nodiscard]] inline std::string packing_problem(index_t in, index_t out, int bits) {
  if (!pack::supported_bits(bits))
    return "the GPTQ int32 layout has no " + std::to_string(bits) + "-bit packing (2, 3, 4 or 8)";
  index_t const k = pack::values_per_whole_words(bits);
  if (in % k != 0)
    return "in_features = " + std::to_string(in) + " is not a multiple of " + std::to_string(k) +
           ", which " + std::to_string(bits) + "-bit packing needs";
  if (out % k != 0)
    return "out_features = " + std::to_string(out) + " is not a multiple of " + std::to_string(k) +
           " (qzeros), which " + std::to_string(bits) + "-bit packing needs";
  return {};
}

/// (groups, out) transpose of a (out, groups) matrix, converted to U.
template <class U>
[[nodiscard]] xt::xtensor<U, 2> transpose_as(rsq::matrix<float> const& m) {
  std::size_t const r = m.shape()[0], c = m.shape()[1];
  auto t = xt::xtensor<U, 2>::from_shape({c, r});
  for (std::size_t i = 0; i < r; ++i)
    for (std::size_t j = 0; j < c; ++j) t(j, i) = U(m(i, j));
  return t;
}

}  // namespace pipeline_detail

/// Writes @p q to the directory @p dir (created if needed): for every linear `layers.<l>.<hf_name>.{qweight, qzeros,
/// scales, g_idx}.npy` (packed, see rsq/pack/gptq_format.hpp; v1 zeros, or v2 when a zero is 0) or
/// `layers.<l>.<hf_name>.{codes, scales, zeros, g_idx}.npy` (unpacked, see the file comment); the full-precision
/// tensors `token_embedding.npy`, `classifier.npy`, `rms_final.npy`, `layers.<l>.{rms_att, rms_ffn}.npy`; and
/// `manifest.json`. The weights are those of the quantized (rotated) model, so an engine must apply the online
/// Hadamards the manifest lists to the inputs of wo and w2.
/// @throws rsq::invalid_argument if @p q is a failed run; rsq::io_error if a file cannot be written
inline gptq_export export_gptq_directory(std::filesystem::path const& dir, quantized_model const& q) {
  using namespace pipeline_detail;
  RSQ_EXPECTS(q.ok(), "export_gptq_directory: the quantization stopped at layer ", q.failed_layer, " (",
              name(q.failed_linear), "); there is no complete model to export");
  RSQ_EXPECTS(!q.model.config.qkv_bias && !q.model.config.o_bias && !q.model.config.mlp_bias,
              "export_gptq_directory: this folder format has no bias tensors; write a GPTQ checkpoint "
              "(save_gptq_checkpoint) for a model with biases");
  auto const& m = q.model;
  auto const& c = m.config;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir))
    rsq::detail::throw_io_error(dir.string(), ": cannot create the output directory");

  gptq_export out;
  io::save_npy(dir / "token_embedding.npy", m.token_embedding);
  io::save_npy(dir / "classifier.npy", m.classifier);
  io::save_npy(dir / "rms_final.npy", m.rms_final);

  std::ostringstream js;
  js.precision(9);
  js << "{\n  \"format\": \"rsq-gptq/1\",\n";
  js << "  \"model\": {\"dim\": " << c.dim << ", \"hidden_dim\": " << c.hidden_dim << ", \"n_layers\": " << c.n_layers
     << ", \"n_heads\": " << c.n_heads << ", \"n_kv_heads\": " << c.n_kv_heads << ", \"head_dim\": " << c.head_size()
     << ", \"vocab_size\": " << c.vocab_size
     << ", \"seq_len\": " << c.seq_len << ", \"norm_eps\": " << std::setprecision(7) << c.norm_eps
     << std::setprecision(9) << ", \"rope_theta\": " << c.rope_theta
     << "},\n";
  js << "  \"method\": " << json_escape(to_string(q.method)) << ",\n";
  js << "  \"bits\": " << q.grid.bits << ",\n  \"group_size\": " << q.group_size << ",\n";
  js << "  \"symmetric\": " << (q.grid.symmetric ? "true" : "false") << ",\n";
  js << "  \"quantizer\": " << json_escape(q.grid.conv == quant::convention::rsq ? "rsq" : "ist") << ",\n";
  js << "  \"clip\": " << (q.grid.clip.enabled ? "true" : "false") << ",\n";
  js << "  \"policy\": " << json_escape(q.policy) << ",\n  \"importance_power\": " << q.importance_power << ",\n";
  js << "  \"expand_factor\": " << q.expand_factor << ",\n";
  js << "  \"calibration\": {\"sequences\": " << q.calibration_sequences << ", \"tokens\": " << q.calibration_tokens
     << "},\n";
  js << "  \"dequantize\": \"W[r, c] = scales[g_idx[c], r] * (code[r, c] - zero[g_idx[c], r])\",\n";
  if (q.rotation) {
    auto const& r = *q.rotation;
    js << "  \"rotation\": {\n";
    js << "    \"kind\": " << json_escape(to_string(r.kind)) << ",\n    \"seed\": " << r.residual.seed << ",\n";
    js << "    \"residual\": " << json_escape(r.residual.to_string()) << ",\n";
    js << "    \"centered_embeddings\": " << (r.centered_embeddings ? "true" : "false") << ",\n";
    js << "    \"norms_fused\": true,\n";
    js << "    \"online\": [\n";
    if (r.online) {
    js << "      {\"linear\": \"w2\", \"hf_name\": \"down_proj\", \"n\": " << r.down_online.n
       << ", \"apply\": \"each input row x <- M_n x / sqrt(n) (hadK x H_{n/K}, spec 3)\", \"descriptor\": "
       << json_escape(r.down_online.to_string()) << "},\n";
    js << "      {\"linear\": \"wo\", \"hf_name\": \"o_proj\", \"n_heads\": " << r.n_heads << ", \"head_dim\": "
       << r.head_dim
       << ", \"apply\": \"each input row viewed as (n_heads, head_dim): x <- M_{n_heads} x / sqrt(n_heads), across "
          "heads\", \"descriptor\": "
       << json_escape(r.heads_online.to_string()) << "}\n";
    }
    js << "    ],\n";
    js << "    \"offline\": {\"wv_output_per_head\": " << json_escape(r.value_heads.to_string()) << "}\n  },\n";
  } else {
    js << "  \"rotation\": null,\n";
  }
  js << "  \"tensors\": {\"token_embedding\": \"token_embedding.npy\", \"classifier\": \"classifier.npy\", "
        "\"rms_final\": \"rms_final.npy\"},\n";
  js << "  \"layers\": [\n";
  for (int l = 0; l < c.n_layers; ++l) {
    auto const& L = m.layers[std::size_t(l)];
    std::string const lp = "layers." + std::to_string(l);
    io::save_npy(dir / (lp + ".rms_att.npy"), L.rms_att);
    io::save_npy(dir / (lp + ".rms_ffn.npy"), L.rms_ffn);
    js << "    {\"rms_att\": " << json_escape(lp + ".rms_att.npy") << ", \"rms_ffn\": "
       << json_escape(lp + ".rms_ffn.npy") << ", \"linears\": [\n";
    for (std::size_t k = 0; k < std::size(all_linears); ++k) {
      linear_id const id = all_linears[k];
      auto const& w = q.weight(l, id);
      exported_linear e{.layer = l, .linear = id, .format = {}, .reason = {},
                        .prefix = lp + "." + std::string(hf_name(id))};
      auto const file = [&](char const* what) { return dir / (e.prefix + "." + what + ".npy"); };
      e.reason = packing_problem(w.cols(), w.rows(), w.bits);
      if (e.reason.empty()) {
        bool zero0 = false;
        for (float z : w.zeros) zero0 = zero0 || z == 0.f;
        auto const fmt = zero0 ? pack::zero_format::v2 : pack::zero_format::v1;
        auto const t = pack::pack_gptq(w.codes, w.scales, w.zeros, w.g_idx, w.bits, fmt);
        e.format = zero0 ? "gptq_v2" : "gptq";
        io::save_npy(file("qweight"), t.qweight);
        io::save_npy(file("qzeros"), t.qzeros);
        io::save_npy(file("scales"), t.scales);
        io::save_npy(file("g_idx"), t.g_idx);
      } else {
        e.format = "unpacked";
        io::save_npy(file("codes"), w.codes);
        io::save_npy(file("scales"), transpose_as<float>(w.scales));
        io::save_npy(file("zeros"), transpose_as<std::int32_t>(w.zeros));
        io::save_npy(file("g_idx"), w.g_idx);
      }
      js << "      {\"name\": " << json_escape(name(id)) << ", \"hf_name\": " << json_escape(hf_name(id))
         << ", \"out_features\": " << w.rows() << ", \"in_features\": " << w.cols() << ", \"groups\": " << w.groups()
         << ", \"format\": " << json_escape(e.format) << ", \"prefix\": " << json_escape(e.prefix);
      if (!e.reason.empty()) js << ", \"reason\": " << json_escape(e.reason);
      js << "}" << (k + 1 < std::size(all_linears) ? "," : "") << "\n";
      out.linears.push_back(std::move(e));
    }
    js << "    ]}" << (l + 1 < c.n_layers ? "," : "") << "\n";
  }
  js << "  ]\n}\n";
  out.manifest = dir / "manifest.json";
  rsq::io::write_text_file_atomic(out.manifest, js.str());
  return out;
}

}  // namespace rsq::model
