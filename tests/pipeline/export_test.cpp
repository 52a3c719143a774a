// SPDX-License-Identifier: MIT
// Outputs of the pipeline (spec §1 step 6): every method's llama2c checkpoint, re-read and evaluated with the plain
// forward pass, gives the perplexity the pipeline computed; the packed GPTQ directory rebuilds the same model from
// its .npy files and the online Hadamards named in its manifest.

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <rsq/io/npy.hpp>
#include <rsq/model/export.hpp>
#include <rsq/model/quantize.hpp>
#include <rsq/pack/gptq_format.hpp>
#include <rsq/rotation/any_rotation.hpp>

#include "pipeline/pipeline_support.hpp"

using namespace rsq::model;
using namespace rsq_pipeline_test;
using rsq::index_t;

namespace {

struct real_data {
  stories260k f;
  rsq::matrix<std::int32_t> calib, eval;
};

real_data load_real(std::filesystem::path const& shared) {
  real_data d{load_stories260k(shared), {}, {}};
  d.calib = sample_windows(story_tokens(d.f.tok, d.f.stories, {0, 60}), 64, 4, 3);
  auto const all = consecutive_windows(story_tokens(d.f.tok, d.f.stories, {500, 540}), 128);
  d.eval = rsq::make_matrix<std::int32_t>(4, 128);
  std::copy_n(all.data(), 4 * 128, d.eval.data());
  return d;
}

/// The seven int32 of a llama2c header.
std::vector<std::int32_t> header_of(std::filesystem::path const& p) {
  std::ifstream f(p, std::ios::binary);
  std::vector<std::int32_t> h(7);
  f.read(reinterpret_cast<char*>(h.data()), 28);
  return h;
}

/// The string value of "key": "..." in a JSON text (the first occurrence).
std::string json_string_value(std::string const& text, std::string const& key) {
  auto const k = text.find("\"" + key + "\": \"");
  REQUIRE(k != std::string::npos);
  auto const b = k + key.size() + 5;
  return text.substr(b, text.find('"', b) - b);
}

/// Rebuilds the quantized model from an export directory: dequantized weights from the packed (or unpacked)
/// tensors, the full-precision tensors, and the online Hadamards rebuilt from the manifest's descriptors.
llama_model rebuild(std::filesystem::path const& dir, llama_config const& c, gptq_export const& ex) {
  using rsq::io::load_npy;
  llama_model m;
  m.config = c;
  m.token_embedding = load_npy<float, 2>(dir / "token_embedding.npy");
  m.classifier = load_npy<float, 2>(dir / "classifier.npy");
  m.rms_final = load_npy<float, 1>(dir / "rms_final.npy");
  m.layers.resize(std::size_t(c.n_layers));
  for (auto const& e : ex.linears) {
    auto& L = m.layers[std::size_t(e.layer)];
    std::string const lp = "layers." + std::to_string(e.layer);
    L.rms_att = load_npy<float, 1>(dir / (lp + ".rms_att.npy"));
    L.rms_ffn = load_npy<float, 1>(dir / (lp + ".rms_ffn.npy"));
    auto const file = [&](char const* what) { return dir / (e.prefix + "." + what + ".npy"); };
    if (e.format == "unpacked") {
      auto const codes = load_npy<std::uint8_t, 2>(file("codes"));
      auto const scales = load_npy<float, 2>(file("scales"));     // (groups, out)
      auto const zeros = load_npy<std::int32_t, 2>(file("zeros"));  // (groups, out)
      auto const g_idx = load_npy<std::int32_t, 1>(file("g_idx"));
      auto w = rsq::make_matrix<float>(index_t(codes.shape()[0]), index_t(codes.shape()[1]));
      for (std::size_t r = 0; r < codes.shape()[0]; ++r)
        for (std::size_t k = 0; k < codes.shape()[1]; ++k) {
          auto const g = std::size_t(g_idx(k));
          w(r, k) = scales(g, r) * (float(codes(r, k)) - float(zeros(g, r)));
        }
      L.weight(e.linear) = std::move(w);
    } else {
      auto const fmt = e.format == "gptq" ? rsq::pack::zero_format::v1 : rsq::pack::zero_format::v2;
      auto const qweight = load_npy<std::int32_t, 2>(file("qweight"));  // (in·bits/32, out)
      auto const g_idx = load_npy<std::int32_t, 1>(file("g_idx"));      // (in)
      int const bits = int(qweight.shape()[0] * 32 / g_idx.shape()[0]);
      auto const qzeros = load_npy<std::int32_t, 2>(file("qzeros"));
      auto const scales = load_npy<float, 2>(file("scales"));
      auto const u = rsq::pack::unpack_gptq(qweight, qzeros, scales, g_idx, bits, fmt);
      L.weight(e.linear) = rsq::pack::dequantize(u);
    }
  }
  // The online Hadamards, from the manifest alone.
  std::ifstream mf(dir / "manifest.json");
  std::string const manifest((std::istreambuf_iterator<char>(mf)), std::istreambuf_iterator<char>());
  CHECK(manifest.find("\"head_dim\": " + std::to_string(c.head_size()) + ",") != std::string::npos);
  if (manifest.find("\"rotation\": null") == std::string::npos) {
    auto const online = manifest.substr(manifest.find("\"online\""));
    auto const down_text = json_string_value(online, "descriptor");
    auto const heads_text = json_string_value(online.substr(online.find("o_proj")), "descriptor");
    // Both are exact Hadamard rotations Q = M_nᵀ/√n: x·Q is the transform x ← M x/√n of each row.
    auto const transform_of = [](std::string const& text) {
      auto const r = rsq::rotation::make_rotation(rsq::rotation::rotation_descriptor::from_string(text));
      return std::make_shared<rsq::rotation::hadamard const>(std::get<rsq::rotation::hadamard_rotation>(r).transform());
    };
    m.online = {transform_of(heads_text), transform_of(down_text)};
  }
  return m;
}

}  // namespace

TEST_SUITE("pipeline.export") {
  TEST_CASE("stories260K: every method's checkpoint, re-read and evaluated plainly, gives the pipeline's perplexity") {
    RSQ_NEED_SHARED(shared);
    auto const d = load_real(shared);
    auto const dir = rsq_test::temp_dir("pipeline_export_checkpoints");
    double const fp_ppl = evaluate(d.f.model, rsq::view(d.eval)).perplexity;
    for (quant_method method : all_quant_methods) {
      CAPTURE(to_string(method));
      quantize_options opt;
      opt.method = method;
      opt.rotation.seed = 1;
      auto const q = quantize_model(d.f.model, rsq::view(d.calib), opt);
      REQUIRE(q.ok());
      double const ppl = evaluate(q.model, rsq::view(d.eval)).perplexity;
      CHECK(ppl > fp_ppl);  // 3-bit quantization costs something
      auto const path = dir / (std::string(to_string(method)) + ".bin");
      save_quantized_checkpoint(path, q);
      auto const back = load_llama2c_checkpoint(path);
      CHECK_FALSE(back.online.any());
      double const ppl_back = evaluate(back, rsq::view(d.eval)).perplexity;
      CHECK(std::abs(ppl_back - ppl) / ppl < 1e-5);
      auto const header = header_of(path);
      if (rotates(method)) {
        CHECK(header[5] == -d.f.model.config.vocab_size);  // a separate classifier follows
        for (float g : back.layers[2].rms_att) CHECK(g == 1.f);
      } else {
        CHECK(header[5] == d.f.model.config.vocab_size);  // classifier tied to the embedding, as in the original
        for (linear_id id : all_linears) CHECK(back.layers[3].weight(id) == q.model.layers[3].weight(id));
      }
    }
  }

  TEST_CASE("the checkpoint of a rotated model is plain: same perplexity on a random model") {
    auto const fp = random_model(odd_config(), 9);
    auto const calib = random_tokens(4, 16, fp.config.vocab_size, 2);
    auto const eval = random_tokens(3, 32, fp.config.vocab_size, 3);
    auto const q = quantize_model(fp, rsq::view(calib), {.method = quant_method::rsq});
    auto const path = rsq_test::temp_dir("pipeline_export_random") / "rsq.bin";
    save_quantized_checkpoint(path, q);
    auto const back = load_llama2c_checkpoint(path);
    auto const a = evaluate(q.model, rsq::view(eval)), b = evaluate(back, rsq::view(eval));
    CHECK(std::abs(a.mean - b.mean) < 1e-5 * a.mean);
  }

  TEST_CASE("stories260K: the packed directory rebuilds the quantized model (manifest, packing, online Hadamards)") {
    RSQ_NEED_SHARED(shared);
    auto const d = load_real(shared);
    auto const& c = d.f.model.config;
    for (int bits : {4, 8}) {
      CAPTURE(bits);
      quantize_options opt;
      opt.method = quant_method::rsq;
      opt.grid = rsq_script_grid(bits);
      opt.solver.group_size = 32;
      opt.rotation.seed = 5;
      auto const q = quantize_model(d.f.model, rsq::view(d.calib), opt);
      REQUIRE(q.ok());
      auto const dir = rsq_test::temp_dir("pipeline_export_packed_" + std::to_string(bits));
      auto const ex = export_gptq_directory(dir, q);
      REQUIRE(ex.linears.size() == std::size_t(7 * c.n_layers));
      std::ifstream mf(ex.manifest);
      std::string const manifest((std::istreambuf_iterator<char>(mf)), std::istreambuf_iterator<char>());
      CHECK(manifest.find("\"bits\": " + std::to_string(bits)) != std::string::npos);
      CHECK(manifest.find("\"group_size\": 32") != std::string::npos);
      CHECK(manifest.find("\"quantizer\": \"rsq\"") != std::string::npos);
      CHECK(manifest.find("\"kind\": \"hadamard\"") != std::string::npos);
      CHECK(manifest.find("\"seed\": 5") != std::string::npos);
      CHECK(manifest.find("\"policy\": \"attncon\"") != std::string::npos);
      CHECK(rsq::rotation::rotation_descriptor::from_string(json_string_value(manifest, "residual")) ==
            q.rotation->residual);
      for (auto const& e : ex.linears) {
        CAPTURE(e.prefix);
        bool const hidden = e.linear == linear_id::w1 || e.linear == linear_id::w2 || e.linear == linear_id::w3;
        if (bits == 4 && hidden) {
          CHECK(e.format == "unpacked");  // 172 features do not fill whole words at 4 bits
          CHECK(e.reason.find("172 is not a multiple of 8") != std::string::npos);
          CHECK(manifest.find(e.reason) != std::string::npos);
        } else {
          CHECK(e.format == "gptq");  // symmetric zeros 2^(bits-1) >= 1: v1
        }
      }
      CHECK(ex.packed() == (bits == 4 ? 4 * c.n_layers : 7 * c.n_layers));

      auto const m = rebuild(dir, c, ex);
      for (int l = 0; l < c.n_layers; ++l)
        for (linear_id id : all_linears) CHECK(m.layers[std::size_t(l)].weight(id) == q.model.layers[std::size_t(l)].weight(id));
      double const want = evaluate(q.model, rsq::view(d.eval)).perplexity;
      double const got = evaluate(m, rsq::view(d.eval)).perplexity;
      CHECK(std::abs(got - want) / want < 1e-6);
    }
  }

  TEST_CASE("unrotated and unpackable exports") {
    auto const fp = random_model(tiny_config(), 2);
    auto const calib = random_tokens(3, 16, fp.config.vocab_size, 1);
    auto const eval = random_tokens(2, 32, fp.config.vocab_size, 5);
    for (int bits : {3, 5}) {
      CAPTURE(bits);
      auto const q = quantize_model(fp, rsq::view(calib), {.method = quant_method::gptq, .grid = rsq_script_grid(bits)});
      auto const dir = rsq_test::temp_dir("pipeline_export_gptq_" + std::to_string(bits));
      auto const ex = export_gptq_directory(dir, q);
      std::ifstream mf(ex.manifest);
      std::string const manifest((std::istreambuf_iterator<char>(mf)), std::istreambuf_iterator<char>());
      CHECK(manifest.find("\"rotation\": null") != std::string::npos);
      for (auto const& e : ex.linears) {
        if (bits == 5) {
          CHECK(e.format == "unpacked");
          CHECK(e.reason.find("no 5-bit packing") != std::string::npos);
        } else {
          // 3 bits need multiples of 32: dim 32 packs, kv_dim 16 (wk, wv outputs) and hidden 48 do not.
          auto const shape = weight_shape(fp.config, e.linear);
          bool const fits = shape[0] % 32 == 0 && shape[1] % 32 == 0;
          CHECK(e.format == (fits ? "gptq" : "unpacked"));
        }
      }
      auto const m = rebuild(dir, fp.config, ex);
      CHECK(evaluate(m, rsq::view(eval)).mean == doctest::Approx(evaluate(q.model, rsq::view(eval)).mean).epsilon(1e-6));
    }
  }

  TEST_CASE("a failed run cannot be exported; unwritable paths are io errors") {
    auto const fp = random_model(tiny_config(), 4);
    auto calib = rsq::make_matrix<std::int32_t>(2, 16);
    std::fill(calib.begin(), calib.end(), 7);
    quantize_options opt{.method = quant_method::gptq, .solver = {.damp_percent = 0, .max_damp_attempts = 1}};
    auto const failed = quantize_model(fp, rsq::view(calib), opt);
    REQUIRE_FALSE(failed.ok());
    CHECK_THROWS_WITH_AS((void)export_gptq_directory(rsq_test::temp_dir("pipeline_export_failed"), failed),
                         doctest::Contains("stopped at layer 0 (wq)"), rsq::invalid_argument);
    auto const q = quantize_model(fp, {}, {.method = quant_method::rtn});
    CHECK_THROWS_AS(save_quantized_checkpoint("/nonexistent/dir/model.bin", q), rsq::io_error);
    auto const file = rsq_test::temp_dir("pipeline_export_file") / "plain_file";
    { std::ofstream(file) << "x"; }
    CHECK_THROWS_WITH_AS((void)export_gptq_directory(file, q), doctest::Contains("cannot create the output directory"),
                         rsq::io_error);
  }
}
