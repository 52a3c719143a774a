// SPDX-License-Identifier: MIT
// Writes the seed corpora of the fuzz targets into <dir>/{checkpoint,tokenizer,npy,safetensors,hf_tokenizer}: tiny
// valid files made by rsq's own writers (shared and separate classifiers, zero and real RoPE tables, a tokenizer with
// byte-fallback pieces, .npy files of several dtypes and ranks, safetensors files of mixed dtypes with and without
// metadata), two small tokenizer.json, one of each kind, a GGUF with metadata of several types and a tensor of each
// type rsq writes (at alignments 32 and 64), and an imatrix in both of llama.cpp's formats.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <rsq/io/gguf.hpp>
#include <rsq/io/imatrix.hpp>
#include <rsq/io/npy.hpp>
#include <rsq/io/safetensors.hpp>
#include <rsq/model/llama2c.hpp>
#include <rsq/model/tokenizer.hpp>

namespace {

rsq::model::llama_model tiny_model(int n_kv_heads, bool tied) {
  using namespace rsq::model;
  llama_config c;
  c.dim = 4;
  c.hidden_dim = 6;
  c.n_layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = n_kv_heads;
  c.vocab_size = 5;
  c.seq_len = 3;
  std::uint32_t state = 12345;
  auto next = [&] {
    state = state * 1664525u + 1013904223u;
    return float(state >> 8) / float(1u << 24) - 0.5f;
  };
  auto mat = [&](int r, int k) {
    rsq::matrix<float> m(rsq::matrix<float>::shape_type{std::size_t(r), std::size_t(k)});
    for (auto& x : m) x = next();
    return m;
  };
  auto ones = [&](int n) { return rsq::vector<float>(rsq::vector<float>::shape_type{std::size_t(n)}, 1.f); };
  llama_model m;
  m.config = c;
  m.token_embedding = mat(c.vocab_size, c.dim);
  decoder_layer L;
  L.rms_att = ones(c.dim);
  L.wq = mat(c.dim, c.dim);
  L.wk = mat(c.kv_dim(), c.dim);
  L.wv = mat(c.kv_dim(), c.dim);
  L.wo = mat(c.dim, c.dim);
  L.rms_ffn = ones(c.dim);
  L.w1 = mat(c.hidden_dim, c.dim);
  L.w2 = mat(c.dim, c.hidden_dim);
  L.w3 = mat(c.hidden_dim, c.dim);
  m.layers.push_back(L);
  m.rms_final = ones(c.dim);
  m.classifier = tied ? m.token_embedding : mat(c.vocab_size, c.dim);
  return m;
}

/// A tokenizer.json of either kind: SentencePiece BPE (byte fallback for a few bytes, Prepend/Replace normalizer,
/// Llama-2's decoder and template) or byte-level BPE (all 256 byte characters, Llama-3's split, ByteLevel).
std::string tiny_tokenizer_json(bool byte_level) {
  using json = nlohmann::json;
  json vocab = json::object(), merges = json::array();
  std::vector<std::string> alphabet;
  if (byte_level) {
    for (int b = 0; b < 256; ++b) {  // GPT-2's byte -> character map
      bool const printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      static int next = 256;
      char32_t const c = printable ? char32_t(b) : char32_t(next++);
      std::string s;
      if (c < 0x80) s += char(c);
      else s += char(0xC0 | (c >> 6)), s += char(0x80 | (c & 0x3F));
      alphabet.push_back(s);
    }
  } else {
    for (char const* p : {"<unk>", "<s>", "</s>", "<0x0A>", "<0xC3>", "<0xA9>", "\xE2\x96\x81", "t", "h", "e", "a"})
      alphabet.emplace_back(p);
  }
  for (auto const& a : alphabet) vocab[a] = vocab.size();
  std::string const space = byte_level ? "\xC4\xA0" : "\xE2\x96\x81";  // "Ġ" / "▁"
  for (auto [a, b] : {std::pair<std::string, std::string>{space, "t"}, {"h", "e"}, {space + "t", "he"}}) {
    vocab[a + b] = vocab.size();
    merges.push_back(byte_level ? json::array({a, b}) : json(a + " " + b));
  }
  json j = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}};
  auto added = [](int id, char const* c) {
    return json{{"id", id}, {"content", c}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                {"normalized", false}, {"special", true}};
  };
  std::string const bos = byte_level ? "<|begin_of_text|>" : "<s>";
  std::int32_t const bos_id = byte_level ? std::int32_t(vocab.size()) : 1;
  j["added_tokens"] = byte_level ? json::array({added(bos_id, bos.c_str())})
                                 : json::array({added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")});
  json tmpl;
  tmpl["type"] = "TemplateProcessing";
  tmpl["single"] = json::array({json{{"SpecialToken", json{{"id", bos}, {"type_id", 0}}}},
                                json{{"Sequence", json{{"id", "A"}, {"type_id", 0}}}}});
  tmpl["special_tokens"][bos] = json{{"id", bos}, {"ids", json::array({bos_id})}, {"tokens", json::array({bos})}};
  j["post_processor"] = tmpl;
  if (byte_level) {
    j["normalizer"] = nullptr;
    j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {
        {{"type", "Split"}, {"pattern", {{"Regex", "(?i:'s|'t)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"}}},
         {"behavior", "Isolated"}, {"invert", false}},
        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
    j["decoder"] = {{"type", "ByteLevel"}};
  } else {
    j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "Prepend"}, {"prepend", space}},
        {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", space}}}}};
    j["pre_tokenizer"] = nullptr;
    j["decoder"] = {{"type", "Sequence"}, {"decoders", {{{"type", "Replace"}, {"pattern", {{"String", space}}}, {"content", " "}},
        {{"type", "ByteFallback"}}, {{"type", "Fuse"}}, {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  }
  j["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", byte_level ? json(nullptr) : json("<unk>")},
                {"fuse_unk", !byte_level}, {"byte_fallback", !byte_level}, {"ignore_merges", byte_level},
                {"vocab", vocab}, {"merges", merges}};
  return j.dump(1);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_make_seeds <corpus dir>\n");
    return 2;
  }
  namespace fs = std::filesystem;
  using namespace rsq::model;
  fs::path const dir = argv[1];
  for (char const* sub : {"checkpoint", "tokenizer", "npy", "safetensors", "hf_tokenizer", "gguf", "imatrix"})
    fs::create_directories(dir / sub);

  save_llama2c_checkpoint(dir / "checkpoint/tied.bin", tiny_model(1, true));
  save_llama2c_checkpoint(dir / "checkpoint/untied_mha.bin", tiny_model(2, false));
  save_llama2c_checkpoint(dir / "checkpoint/tied_zero_rope.bin", tiny_model(1, true),
                          {.rope_tables = rope_table_content::zeros});

  std::vector<std::string> pieces = {"<unk>", "\n<s>\n", "\n</s>\n"};
  std::vector<float> scores = {0.f, 0.f, 0.f};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    pieces.emplace_back(buf);
    scores.push_back(0.f);
  }
  for (char const* p : {" ", "e", "t", "h", "th", "he", " t", " th", " the", "in", " a", "\xC3\xA9"}) {
    pieces.emplace_back(p);
    scores.push_back(-float(pieces.size()) / 10.f);
  }
  save_tokenizer(dir / "tokenizer/byte_fallback.bin", tokenizer(pieces, scores));
  save_tokenizer(dir / "tokenizer/small.bin",
                 tokenizer({"<unk>", "s", "e", " ", "a", "b", "ab", " ab"}, {0.f, 0.f, 0.f, -1.f, -2.f, -2.f, -0.5f, -0.2f}));

  std::ofstream(dir / "hf_tokenizer/sentencepiece.json") << tiny_tokenizer_json(false);
  std::ofstream(dir / "hf_tokenizer/byte_level.json") << tiny_tokenizer_json(true);

  rsq::matrix<float> a(rsq::matrix<float>::shape_type{2, 3}, 1.5f);
  rsq::io::save_npy(dir / "npy/f32_2d.npy", a);
  xt::xtensor<double, 1> v(xt::xtensor<double, 1>::shape_type{4}, -2.0);
  rsq::io::save_npy(dir / "npy/f64_1d.npy", v);
  xt::xtensor<std::int32_t, 3> t(xt::xtensor<std::int32_t, 3>::shape_type{2, 1, 2}, 7);
  rsq::io::save_npy(dir / "npy/i32_3d.npy", t);

  std::vector<float> const w = {0.5f, -1.0f, 2.0f, 3.25f, -0.125f, 7.0f};
  std::vector<std::int32_t> const q = {1, 2, 3};
  std::vector<rsq::io::tensor_record> recs;
  recs.push_back(rsq::io::make_record("model.norm.weight", std::span<const float>(w.data(), 3), {3},
                                      rsq::io::tensor_dtype::bf16));
  recs.push_back(rsq::io::make_record("model.layers.0.mlp.up_proj.weight", w, {2, 3}));
  recs.push_back(rsq::io::make_record("scales", w, {3, 2}, rsq::io::tensor_dtype::f16));
  recs.push_back(rsq::io::make_raw_record<std::int32_t>("g_idx", q, {3}, rsq::io::tensor_dtype::i32));
  rsq::io::save_safetensors(dir / "safetensors/mixed.safetensors", recs);
  rsq::io::save_safetensors(dir / "safetensors/one.safetensors", std::span(recs).subspan(1, 1), {});

  // GGUF: a few kvs, one tensor of each type rsq writes (two rows of 32), at the default and a larger alignment.
  std::vector<float> x(64);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(int(i % 7) - 3) * 0.25f;
  using rsq::pack::ggml_type;
  for (std::uint32_t alignment : {32u, 64u}) {
    rsq::io::gguf_writer g;
    g.set("general.architecture", "llama");
    g.set("general.alignment", alignment);
    g.set("llama.block_count", std::uint32_t(1));
    g.set("llama.rope.freq_base", 10000.f);
    g.set("tokenizer.ggml.tokens", std::vector<std::string>{"<unk>", "a", "b"});
    g.set("tokenizer.ggml.scores", std::vector<float>{0.f, -1.f, -2.f});
    g.set("flags", std::vector<bool>{true, false});
    g.set("big", std::int64_t(-1));
    std::vector<std::vector<std::byte>> blocks;
    for (auto t : {ggml_type::f32, ggml_type::f16, ggml_type::q4_0, ggml_type::q4_1, ggml_type::q8_0}) {
      std::size_t const rb = rsq::pack::row_bytes(t, 32);
      blocks.emplace_back(2 * rb);
      for (std::size_t r = 0; r < 2; ++r)
        rsq::pack::quantize_row_reference(t, std::span<const float>(x).subspan(32 * r, 32),
                                          std::span(blocks.back()).subspan(r * rb, rb));
      g.add_tensor("blk.0." + std::string(rsq::pack::traits(t).name) + ".weight", {32, 2}, t, blocks.back());
    }
    g.write(dir / ("gguf/small_" + std::to_string(alignment) + ".gguf"));
  }

  rsq::io::imatrix im;
  im.datasets = {"calib.txt"};
  im.chunk_count = 2;
  im.chunk_size = 4;
  im.entries.push_back({"blk.0.attn_q.weight", {1.f, 2.f, 0.5f, 4.f}, 8.f});
  im.entries.push_back({"blk.0.ffn_down.weight", {0.25f, 0.f}, 6.f});
  rsq::io::write_imatrix_gguf(dir / "imatrix/imatrix.gguf", im);
  rsq::io::write_imatrix_dat(dir / "imatrix/imatrix.dat", im);
  return 0;
}
