// SPDX-License-Identifier: MIT
// Llama models as GGUF (rsq/model/gguf.hpp), on the real models (stories260K, lm7m):
//  - a model quantized by GPTQ/RSQ on the Q4_0, Q4_1 and Q8_0 block grids, written and read back, is the model the
//    pipeline evaluated, weight for weight and bit for bit (linears the blocks cannot hold are written in F16, named
//    in the summary); its perplexity is the same;
//  - a float model written with llama.cpp's round to nearest reads back as llama.cpp's rule dequantizes it;
//  - the vocabularies of a llama2.c tokenizer and of a tokenizer.json, and llama.cpp's own GGUF reader on the files
//    (gguf_init_from_file of libggml-base.so);
//  - the importance matrix of the Hessians against the sums of squares of layer 0's inputs, computed directly;
//  - models llama.cpp cannot run, and files that are not llama models, are refused with messages that say why.
// (llama.cpp running the files, through node-llama-cpp: gguf_llama_cpp_test.cpp.)
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <rsq/model/calibration.hpp>
#include <rsq/model/gguf.hpp>
#include <rsq/model/hf_model.hpp>
#include <rsq/model/hf_tokenizer.hpp>
#include <rsq/model/llama2c.hpp>
#include <rsq/model/quantize.hpp>
#include <rsq/model/rotate.hpp>
#include <rsq/model/tokenizer.hpp>
#include <rsq/nn/rms_norm.hpp>

#include "model/model_test_support.hpp"
#include "support/llama_cpp.hpp"
#include "support/shared_data.hpp"

using namespace rsq::model;
using rsq::index_t;
using rsq::pack::ggml_type;

namespace {

struct real_model {
  llama_model fp;
  tokenizer tok;
  rsq::matrix<std::int32_t> calib, eval;
};

real_model load_stories260k(std::filesystem::path const& shared) {
  real_model r{load_llama2c_checkpoint(shared / "data/models/stories260K.bin"), {}, {}, {}};
  r.tok = load_tokenizer(shared / "data/models/tok512.bin", {.vocab_size = r.fp.config.vocab_size, .name = {}});
  auto const stories = load_stories(shared / "data/text/tinystories_val.txt");
  r.calib = sample_windows(story_tokens(r.tok, stories, {0, 60}), 64, 16, 0);
  r.eval = consecutive_windows(story_tokens(r.tok, stories, {500, 540}), 64);
  return r;
}

bool same_bits(rsq::matrix<float> const& a, rsq::matrix<float> const& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

rsq::matrix<float> f16_rounded(rsq::matrix<float> m) {
  for (auto& v : m) v = rsq::f16_to_float(rsq::float_to_f16(v));
  return m;
}

}  // namespace

TEST_SUITE("model.gguf") {
  TEST_CASE("a model quantized on the block grids reads back as the model the pipeline evaluated, bit for bit") {
    RSQ_NEED_SHARED(shared);
    auto const r = load_stories260k(shared);
    auto const dir = rsq_test::temp_dir("gguf_roundtrip");
    auto const vocab = to_gguf_vocab(r.tok);
    for (auto t : {ggml_type::q4_0, ggml_type::q4_1, ggml_type::q8_0}) {
      CAPTURE(rsq::pack::traits(t).name);
      // [snippet:gguf_model]
      quantize_options opt;
      opt.method = t == ggml_type::q4_1 ? quant_method::gptq : quant_method::rsq;
      opt.rotation.online_hadamards = false;  // llama.cpp applies no online Hadamard
      opt.grid = rsq::pack::block_grid(t);    // the solver's grid is exactly the blocks (fp16 d and m)
      opt.solver.group_size = t == ggml_type::q8_0 ? 64 : 32;
      auto const q = quantize_model(rsq::backend::cpu_eigen{}, llama_model(r.fp), rsq::view(r.calib), opt);
      REQUIRE(q.ok());
      // stories260K's FFN is 172 wide: w2 (down) has 172 inputs, not whole blocks, and stays F16.
      for (auto const& layer : q.layers)
        for (auto const& l : layer.linears) CHECK(l.kept == (l.linear == linear_id::w2));
      auto const path = dir / (std::string(rsq::pack::traits(t).name) + ".gguf");
      auto const sum = save_gguf(path, q, vocab, {.name = "stories260K", .float_type = ggml_type::f32});
      auto const back = load_gguf_model(path);  // what llama.cpp dequantizes: the model q evaluated
      // [snippet:gguf_model]
      CHECK(sum.linear_type == t);
      CHECK(sum.kept.size() == std::size_t(q.model.config.n_layers));
      CHECK(sum.bytes == std::filesystem::file_size(path));
      CHECK_FALSE(std::filesystem::exists(path.string() + ".tmp"));

      CHECK(back.config == q.model.config);
      for (int l = 0; l < q.model.config.n_layers; ++l)
        for (linear_id id : all_linears) {
          CAPTURE(l);
          CAPTURE(name(id));
          CHECK(same_bits(back.layers[std::size_t(l)].weight(id), q.model.layers[std::size_t(l)].weight(id)));
        }
      CHECK(same_bits(back.token_embedding, q.model.token_embedding));
      CHECK(same_bits(back.classifier, q.model.classifier));
      auto const a = evaluate(q.model, rsq::view(r.eval));
      auto const b = evaluate(back, rsq::view(r.eval));
      CHECK(a.sum == b.sum);
      // The file's metadata, as llama.cpp reads it.
      auto const f = rsq::io::gguf_file::open(path);
      CHECK(f.get<std::string>("general.architecture") == "llama");
      CHECK(f.get<std::uint32_t>("llama.block_count") == std::uint32_t(q.model.config.n_layers));
      CHECK(f.get<std::string>("rsq.method") == std::string(to_string(opt.method)));
      CHECK(f.tensor("blk.0.attn_q.weight").type == t);
      CHECK(f.tensor("blk.0.ffn_down.weight").type == ggml_type::f32);
    }
  }

  TEST_CASE("a float model written with llama.cpp's round to nearest reads back as that rule dequantizes it") {
    RSQ_NEED_SHARED(shared);
    auto const fp = load_hf_model(shared / "data/models/lm7m/hf").model;
    auto const tok = load_hf_tokenizer(shared / "data/models/lm7m/hf");
    auto const dir = rsq_test::temp_dir("gguf_rtn");
    auto const path = dir / "lm7m-q4_1.gguf";
    auto const sum = save_gguf(path, fp, to_gguf_vocab(tok), {.linear_type = ggml_type::q4_1});
    CHECK(sum.kept.empty());
    auto const back = load_gguf_model(path);
    for (linear_id id : all_linears) {
      auto const& w = fp.layers[3].weight(id);
      index_t const cols = index_t(w.shape()[1]);
      std::vector<std::byte> row(rsq::pack::row_bytes(ggml_type::q4_1, cols));
      std::vector<float> y(static_cast<std::size_t>(cols));
      bool same = true;
      for (index_t r = 0; r < index_t(w.shape()[0]); ++r) {
        rsq::pack::quantize_row_reference(ggml_type::q4_1, {&w(r, 0), std::size_t(cols)}, row);
        rsq::pack::dequantize_row(ggml_type::q4_1, row, y);
        same = same && std::memcmp(y.data(), &back.layers[3].weight(id)(r, 0), y.size() * sizeof(float)) == 0;
      }
      CAPTURE(name(id));
      CHECK(same);
    }
    // lm7m ties its head to the embedding: output.weight is left out and read back as the embedding (F16).
    CHECK_FALSE(rsq::io::gguf_file::open(path).find_tensor("output.weight"));
    CHECK(same_bits(back.token_embedding, f16_rounded(fp.token_embedding)));
    CHECK(same_bits(back.classifier, back.token_embedding));
  }

  TEST_CASE("vocabularies: llama2.c tokenizer and tokenizer.json") {
    RSQ_NEED_SHARED(shared);
    auto const tok = load_tokenizer(shared / "data/models/tok512.bin", {.vocab_size = 512, .name = {}});
    auto const v = to_gguf_vocab(tok);
    REQUIRE(v.size() == 512);
    CHECK(v.tokens[0] == "<unk>");
    CHECK(v.tokens[1] == "<s>");
    CHECK(v.tokens[2] == "</s>");
    CHECK(v.types[1] == gguf_token_type::control);
    CHECK(v.tokens[3] == "<0x00>");
    CHECK(v.types[3] == gguf_token_type::byte);
    CHECK(v.tokens[259] == "\xE2\x96\x81t");  // llama2.c's " t"
    CHECK(v.scores[260] == tok.score(260));

    auto const hf = load_hf_tokenizer(shared / "data/models/lm7m/hf");
    auto const hv = to_gguf_vocab(hf);
    REQUIRE(hv.size() == 4096);
    CHECK(hv.bos == 1);
    CHECK(hv.add_bos);
    // A piece made by an earlier merge scores higher: "▁t" (the first merge) above "▁the".
    auto const t = hf.find("\xE2\x96\x81t"), the = hf.find("\xE2\x96\x81the");
    REQUIRE(t >= 0);
    REQUIRE(the >= 0);
    CHECK(hv.scores[std::size_t(t)] > hv.scores[std::size_t(the)]);
    CHECK(hv.types[std::size_t(hf.find("<0x0A>"))] == gguf_token_type::byte);
  }

  TEST_CASE("llama.cpp's own GGUF reader accepts the files") {
    RSQ_NEED_SHARED(shared);
    auto const libs = rsq_test::llama_cpp_libs();
    if (!libs) {
      MESSAGE("SKIPPED: llama.cpp libraries not found (cd tests/llama_cpp && npm ci)");
      return;
    }
    void* h = dlopen((*libs / "libggml-base.so").c_str(), RTLD_NOW | RTLD_LOCAL);
    REQUIRE(h);
    struct init_params {
      bool no_alloc;
      void** ctx;
    };
    using init_fn = void* (*)(char const*, init_params);
    auto const init = reinterpret_cast<init_fn>(dlsym(h, "gguf_init_from_file"));
    auto const n_tensors = reinterpret_cast<std::int64_t (*)(void const*)>(dlsym(h, "gguf_get_n_tensors"));
    auto const find_key = reinterpret_cast<std::int64_t (*)(void const*, char const*)>(dlsym(h, "gguf_find_key"));
    auto const free_ctx = reinterpret_cast<void (*)(void*)>(dlsym(h, "gguf_free"));
    REQUIRE((init && n_tensors && find_key && free_ctx));
    auto const fp = load_llama2c_checkpoint(shared / "data/models/stories260K.bin");
    auto const tok = load_tokenizer(shared / "data/models/tok512.bin", {.vocab_size = 512, .name = {}});
    auto const path = rsq_test::temp_dir("gguf_llama_reader") / "stories260K-q8_0.gguf";
    auto const sum = save_gguf(path, fp, to_gguf_vocab(tok), {.linear_type = ggml_type::q8_0});
    void* ctx = init(path.c_str(), {true, nullptr});
    REQUIRE(ctx != nullptr);
    CHECK(n_tensors(ctx) == sum.tensors);
    CHECK(find_key(ctx, "tokenizer.ggml.scores") >= 0);
    free_ctx(ctx);
    dlclose(h);
  }

  TEST_CASE("the importance matrix of the Hessians is the importance-weighted sum of squares of each linear's input") {
    RSQ_NEED_SHARED(shared);
    auto const r = load_stories260k(shared);
    quantize_options opt;
    opt.method = quant_method::gptq;  // uniform weights, no rotation: layer 0's q/k/v read rmsnorm(embedding)
    opt.grid = rsq::pack::block_grid(ggml_type::q8_0);
    opt.solver.group_size = 32;
    index_t const N = index_t(r.calib.size());
    imatrix_from_hessians im(index_t(r.calib.shape()[0]), index_t(r.calib.shape()[1]));
    quantize_observer obs;
    obs.on_hessian = im.on_hessian();
    auto const q = quantize_model(rsq::backend::cpu_eigen{}, llama_model(r.fp), rsq::view(r.calib), opt, obs);
    REQUIRE(q.ok());
    auto const m = im.result("tinystories_val.txt");
    CHECK(m.entries.size() == std::size_t(7 * r.fp.config.n_layers));
    CHECK(m.chunk_count == 16);
    auto const* e = m.find("blk.0.attn_k.weight");
    REQUIRE(e != nullptr);
    CHECK(e->count == float(N));
    // Σ_t x_t² of x = rmsnorm(embedding[token]) · gain, in float64.
    index_t const d = r.fp.config.dim;
    std::vector<double> direct(static_cast<std::size_t>(d), 0.0);
    for (auto const id : r.calib) {
      double ss = 0;
      for (index_t i = 0; i < d; ++i) ss += double(r.fp.token_embedding(id, i)) * double(r.fp.token_embedding(id, i));
      double const inv = 1.0 / std::sqrt(ss / double(d) + double(r.fp.config.norm_eps));
      for (index_t i = 0; i < d; ++i) {
        double const x = double(r.fp.token_embedding(id, i)) * inv * double(r.fp.layers[0].rms_att(i));
        direct[std::size_t(i)] += x * x;
      }
    }
    for (index_t i = 0; i < d; ++i) CHECK(double(e->in_sum2[std::size_t(i)]) == doctest::Approx(direct[std::size_t(i)]).epsilon(1e-4));
    CHECK(m.find("blk.0.attn_q.weight")->in_sum2 == e->in_sum2);
    CHECK(m.find("blk.0.ffn_down.weight")->in_sum2.size() == std::size_t(r.fp.config.hidden_dim));
  }

  TEST_CASE("models llama.cpp cannot run and files that are not llama models are refused, saying why") {
    RSQ_NEED_SHARED(shared);
    auto const r = load_stories260k(shared);
    auto const vocab = to_gguf_vocab(r.tok);
    auto const dir = rsq_test::temp_dir("gguf_refusals");
    quantize_options opt;
    opt.method = quant_method::quarot;
    opt.grid = rsq::pack::block_grid(ggml_type::q4_0);
    opt.solver.group_size = 32;
    auto const online = quantize_model(rsq::backend::cpu_eigen{}, llama_model(r.fp), rsq::view(r.calib), opt);
    CHECK_THROWS_WITH_AS(save_gguf(dir / "a.gguf", online, vocab), doctest::Contains("online Hadamards"),
                         rsq::invalid_argument);
    CHECK_FALSE(std::filesystem::exists(dir / "a.gguf"));
    opt.grid = rsq_script_grid(4);
    opt.method = quant_method::gptq;
    auto const plain = quantize_model(rsq::backend::cpu_eigen{}, llama_model(r.fp), rsq::view(r.calib), opt);
    CHECK_THROWS_WITH_AS(save_gguf(dir / "b.gguf", plain, vocab), doctest::Contains("not one of llama.cpp's block grids"),
                         rsq::invalid_argument);
    opt.grid = rsq::pack::block_grid(ggml_type::q4_0);
    opt.solver.group_size = 48;
    CHECK_THROWS_WITH_AS(opt.validate(), doctest::Contains("multiple of 32, got 48"), rsq::invalid_argument);
    auto biased = rsq_test::random_model(rsq_test::tiny_config(), 3);
    biased.config.o_bias = true;
    for (auto& l : biased.layers) l.bo = rsq::vector<float>::from_shape({std::size_t(biased.config.dim)});
    auto small = vocab;
    small.tokens.resize(std::size_t(biased.config.vocab_size));
    small.scores.resize(small.tokens.size());
    small.types.resize(small.tokens.size());
    CHECK_THROWS_WITH_AS(save_gguf(dir / "c.gguf", biased, small), doctest::Contains("wo bias"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(save_gguf(dir / "d.gguf", r.fp, gguf_vocab{}), doctest::Contains("0 tokens, the model 512"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(save_gguf(dir / "e.gguf", r.fp, vocab, {.linear_type = ggml_type::q4_k}),
                         doctest::Contains("linear_type must be F32, F16, Q4_0, Q4_1 or Q8_0, got Q4_K"),
                         rsq::invalid_argument);

    auto bad = r.fp;
    bad.layers[1].w3(2, 5) = std::nanf("");
    CHECK_THROWS_WITH_AS(save_gguf(dir / "nan.gguf", bad, vocab), doctest::Contains("blk.1.ffn_up.weight row 2 has a NaN"),
                         rsq::invalid_argument);
    CHECK_FALSE(std::filesystem::exists(dir / "nan.gguf"));
    CHECK_FALSE(std::filesystem::exists(dir / "nan.gguf.tmp"));

    // An imatrix GGUF is not a model; a truncated model names what is missing.
    rsq::io::imatrix m;
    m.datasets = {"x.txt"};
    m.entries.push_back({"blk.0.attn_q.weight", std::vector<float>(64, 1.f), 10.f});
    rsq::io::write_imatrix_gguf(dir / "imatrix.gguf", m);
    CHECK_THROWS_WITH_AS((void)load_gguf_model(dir / "imatrix.gguf"), doctest::Contains("general.architecture"),
                         rsq::io_error);
    auto const good = dir / "good.gguf";
    (void)save_gguf(good, r.fp, vocab);
    auto const size = std::filesystem::file_size(good);
    std::filesystem::resize_file(good, size - 100);
    CHECK_THROWS_AS((void)load_gguf_model(good), rsq::io_error);
  }
}
