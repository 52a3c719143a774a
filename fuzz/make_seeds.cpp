// SPDX-License-Identifier: MIT
// Writes the seed corpora of the fuzz targets into <dir>/{checkpoint,tokenizer,npy,safetensors}: tiny valid files made by rsq's
// own writers (shared and separate classifiers, zero and real RoPE tables, a tokenizer with byte-fallback pieces,
// .npy files of several dtypes and ranks, safetensors files of mixed dtypes with and without metadata).
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

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

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_make_seeds <corpus dir>\n");
    return 2;
  }
  namespace fs = std::filesystem;
  using namespace rsq::model;
  fs::path const dir = argv[1];
  for (char const* sub : {"checkpoint", "tokenizer", "npy", "safetensors"}) fs::create_directories(dir / sub);

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
  return 0;
}
