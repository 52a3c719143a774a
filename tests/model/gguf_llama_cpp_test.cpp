// SPDX-License-Identifier: MIT
// A real llama.cpp runs the GGUF files rsq writes (node-llama-cpp 3.21.1, tests/llama_cpp/evaluate.mjs, on the CPU):
// for stories260K and lm7m, in F32, RSQ-Q4_0 (rotation fused), GPTQ-Q4_1, GPTQ-Q8_0 and llama.cpp's own Q4_0 round
// to nearest,
//  - llama.cpp's token log-probabilities and greedy continuations (32 tokens from 4 prompts) are those of a
//    reference that computes the file with llama.cpp's own CPU kernels (support/llama_cpp_reference.hpp: ggml's
//    graph of the llama architecture on the libggml-cpu variant llama.cpp loads here): the loss of every window the
//    same to 1e-12, every continuation identical;
//  - against rsq's float evaluation of the same dequantized model (load_gguf_model), which llama.cpp's arithmetic
//    differs from (block weights multiply activations quantized to 8 bits; K and V are cached in fp16): mean loss
//    within 0.5%, continuations identical for float weights and parting only at a near-tie of two logits (within
//    0.5%) for block weights;
//  - llama.cpp tokenizes text with the written vocabulary as rsq's tokenizer does (llama2.c and tokenizer.json).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <rsq/model/calibration.hpp>
#include <rsq/model/gguf.hpp>
#include <rsq/model/hf_model.hpp>
#include <rsq/model/hf_tokenizer.hpp>
#include <rsq/model/llama2c.hpp>
#include <rsq/model/quantize.hpp>
#include <rsq/model/tokenizer.hpp>

#include "support/llama_cpp.hpp"
#include "support/llama_cpp_reference.hpp"
#include "support/shared_data.hpp"

using namespace rsq::model;
using rsq::index_t;
using rsq::pack::ggml_type;

namespace {

struct variant {
  std::string name;
  quant_method method = quant_method::rsq;
  ggml_type type = ggml_type::f32;  ///< f32: the float model; with `rtn_llama` llama.cpp's round to nearest
  bool rtn_llama = false;
};

const std::vector<variant> variants = {{"f32", quant_method::rsq, ggml_type::f32, true},
                                       {"rtn-q4_0", quant_method::rtn, ggml_type::q4_0, true},
                                       {"rsq-q4_0", quant_method::rsq, ggml_type::q4_0, false},
                                       {"gptq-q4_1", quant_method::gptq, ggml_type::q4_1, false},
                                       {"gptq-q8_0", quant_method::gptq, ggml_type::q8_0, false}};

/// rsq's greedy continuation of @p prompt by @p n tokens (the first of equal logits).
std::vector<std::int32_t> greedy(llama_model const& m, std::vector<std::int32_t> prompt, int n) {
  std::vector<std::int32_t> out;
  for (int k = 0; k < n; ++k) {
    auto ids = rsq::make_matrix<std::int32_t>(1, index_t(prompt.size()));
    std::copy(prompt.begin(), prompt.end(), ids.begin());
    auto const logits = forward(rsq::backend::cpu_eigen{}, m, rsq::view(std::as_const(ids)));
    index_t const last = index_t(prompt.size()) - 1, V = index_t(logits.shape()[2]);
    index_t best = 0;
    for (index_t v = 1; v < V; ++v)
      if (logits(0, last, v) > logits(0, last, best)) best = v;
    out.push_back(std::int32_t(best));
    prompt.push_back(std::int32_t(best));
  }
  return out;
}

/// llama.cpp's CPU backend on this machine for the reference (the test fails when node-llama-cpp is installed but
/// its libraries cannot serve as one).
rsq_test::ggml_cpu const& llama_cpp_kernels() {
  static std::string why;
  static auto const cpu = [] {
    auto const dir = rsq_test::llama_cpp_libs();
    if (!dir) why = "no libggml-base.so in RSQ_LLAMA_CPP_DIR or RSQ_LLAMA_CPP_LIBS";
    return dir ? rsq_test::ggml_cpu::open(*dir, &why) : std::nullopt;
  }();
  REQUIRE_MESSAGE(cpu.has_value(), "llama.cpp's CPU libraries cannot run the reference: ", why);
  static bool const once = [] {
    std::vector<float> rows(4 * 256);  // the repacked Q4_0 path quantizes its activations as from_float does
    for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = std::sin(0.37f * float(i)) * float(1 + i % 7);
    auto const same = cpu->repacked_activations_match(rows, 256);
    std::string const repacked = cpu->repacks_q4_0 ? "yes" : "no";
    std::string const as_plain = same ? (*same ? "yes" : "NO") : "(no symbol to check)";
    MESSAGE("llama.cpp's CPU backend: ", cpu->library.filename().string(), " (ggml_backend_score ", cpu->score,
            "); Q4_0 matrices with 8k rows repacked to Q4_0_8x8: ", repacked,
            "; their Q8_0 activations as the plain path's: ", as_plain);
    CHECK(same.value_or(true));
    return true;
  }();
  (void)once;
  return *cpu;
}

template <class Tok>
void check_model(std::string const& label, llama_model const& fp, Tok const& tok, gguf_vocab const& vocab,
                 std::vector<std::int32_t> const& calib_stream, std::vector<std::int32_t> const& eval_stream,
                 std::vector<std::string> const& texts, std::vector<std::vector<std::int32_t>> const& text_ids) {
  auto const& kernels = llama_cpp_kernels();
  auto const dir = rsq_test::temp_dir("gguf_llama_cpp_" + label);
  auto const calib = sample_windows(calib_stream, 128, 32, 0);
  auto const eval = consecutive_windows(eval_stream, 128);
  REQUIRE(eval.shape()[0] >= 8);
  auto windows = rsq::make_matrix<std::int32_t>(8, 128);
  std::copy(eval.begin(), eval.begin() + 8 * 128, windows.begin());
  std::vector<std::vector<std::int32_t>> prompts;
  for (int p = 0; p < 4; ++p) prompts.emplace_back(eval.begin() + p * 128 + 17 * p, eval.begin() + p * 128 + 17 * p + 8);

  for (auto const& v : variants) {
    CAPTURE(label);
    CAPTURE(v.name);
    auto const path = dir / (v.name + ".gguf");
    if (v.rtn_llama) {
      (void)save_gguf(path, fp, vocab, {.name = label, .float_type = ggml_type::f32, .linear_type = v.type});
    } else {
      quantize_options opt;
      opt.method = v.method;
      opt.grid = rsq::pack::block_grid(v.type);
      opt.solver.group_size = 32;
      opt.rotation.online_hadamards = false;
      auto const q = quantize_model(rsq::backend::cpu_eigen{}, llama_model(fp), rsq::view(calib), opt);
      REQUIRE(q.ok());
      (void)save_gguf(path, q, vocab, {.name = label, .float_type = ggml_type::f32});
    }
    auto const m = load_gguf_model(path);
    auto const ours = evaluate(m, rsq::view(std::as_const(windows)));
    rsq_test::llama_cpp_reference ref(kernels, path);

    nlohmann::json req{{"model", path.string()}, {"generate", 32}, {"windows", nlohmann::json::array()},
                       {"prompts", prompts}, {"texts", texts}};
    for (index_t w = 0; w < 8; ++w)
      req["windows"].push_back(std::vector<std::int32_t>(&windows(w, 0), &windows(w, 0) + 128));
    auto const ans = rsq_test::run_llama_cpp(req, dir);
    // llama.cpp's window sums against the reference's, computed as evaluate.mjs computes them: bit for bit but for
    // the last bits of JavaScript's Math.log
    double sum = 0, ref_sum = 0;
    index_t count = 0;
    int windows_identical = 0;
    for (index_t w = 0; w < 8; ++w) {
      CAPTURE(w);
      double const s = ans["windows"][std::size_t(w)]["sum"].get<double>();
      double const r = ref.window_loss(std::span(&windows(w, 0), 128));
      windows_identical += s == r;
      CHECK(std::abs(s - r) <= 1e-12 * std::abs(r));
      sum += s;
      ref_sum += r;
      count += ans["windows"][std::size_t(w)]["count"].get<index_t>();
    }
    REQUIRE(count == ours.count);
    double const theirs = sum / double(count), reference = ref_sum / double(count);
    MESSAGE(label, " ", v.name, ": mean loss llama.cpp ", theirs, ", reference ", reference, " (", windows_identical,
            " of 8 window sums identical), rsq's float evaluation ", ours.mean, " (llama.cpp ",
            100 * (theirs - ours.mean) / ours.mean, "% from it)");
    CHECK(std::abs(theirs - ours.mean) <= 0.005 * ours.mean);
    int same_as_reference = 0, same_as_float = 0;
    for (std::size_t p = 0; p < prompts.size(); ++p) {
      CAPTURE(p);
      auto const theirs_ids = ans["greedy"][p].get<std::vector<std::int32_t>>();
      auto const ref_ids = ref.greedy(prompts[p], 32);
      auto const ours_ids = greedy(m, prompts[p], 32);
      REQUIRE(theirs_ids.size() == 32);
      auto parting = [&](std::vector<std::int32_t> const& ids) {
        return std::size_t(std::mismatch(ids.begin(), ids.end(), theirs_ids.begin()).first - ids.begin());
      };
      // The reference: identical, always. Where it is not, what each side saw at the parting token.
      if (std::size_t const k = parting(ref_ids); k == ref_ids.size()) {
        ++same_as_reference;
      } else {
        auto const logits = ref.logits_after(prompts[p], std::span(ref_ids).first(k));
        auto const& top = ans["top2"][p][k];
        MESSAGE(label, " ", v.name, " prompt ", p, ": the reference parts from llama.cpp at token ", k,
                " of 32: its logits ", logits[std::size_t(ref_ids[k])], " (its choice ", ref_ids[k], ") and ",
                logits[std::size_t(theirs_ids[k])], " (llama.cpp's ", theirs_ids[k], "); llama.cpp's probabilities ",
                top[1].get<double>(), " (", top[0].get<int>(), ") and ", top[3].get<double>(), " (",
                top[2].get<int>(), ")");
        CHECK(k == ref_ids.size());
      }
      // rsq's float evaluation: identical for float weights; for block weights llama.cpp multiplies them by
      // activations quantized to 8 bits (Q8_0 / Q8_1 blocks), so two tokens whose logits nearly tie may swap; the
      // continuations may part only there.
      std::size_t const k = parting(ours_ids);
      if (k == ours_ids.size()) {
        ++same_as_float;
        continue;
      }
      CHECK(v.type != ggml_type::f32);
      auto ctx = prompts[p];
      ctx.insert(ctx.end(), ours_ids.begin(), ours_ids.begin() + long(k));
      auto ids = rsq::make_matrix<std::int32_t>(1, index_t(ctx.size()));
      std::copy(ctx.begin(), ctx.end(), ids.begin());
      auto const logits = forward(rsq::backend::cpu_eigen{}, m, rsq::view(std::as_const(ids)));
      float const a = logits(0, index_t(ctx.size()) - 1, ours_ids[k]);
      float const b = logits(0, index_t(ctx.size()) - 1, theirs_ids[k]);
      MESSAGE(label, " ", v.name, " prompt ", p, ": rsq's float evaluation parts at token ", k,
              " of 32, a near-tie: its logits ", a, " (its choice) and ", b, " (llama.cpp's)");
      CHECK(a - b <= 0.005f * std::abs(a));
    }
    MESSAGE(label, " ", v.name, ": greedy continuations identical to llama.cpp's for all 32 tokens: ",
            same_as_reference, " of 4 from the reference, ", same_as_float, " of 4 from rsq's float evaluation");
    for (std::size_t t = 0; t < texts.size(); ++t) {
      CAPTURE(texts[t]);
      CHECK(ans["tokens"][t].get<std::vector<std::int32_t>>() == text_ids[t]);
    }
    (void)tok;
  }
}

}  // namespace

TEST_SUITE("model.gguf_llama_cpp") {
  TEST_CASE("llama.cpp runs rsq's GGUF files of stories260K as rsq evaluates them") {
    RSQ_NEED_SHARED(shared);
    if (!rsq_test::node_llama_cpp_available()) {
      MESSAGE("SKIPPED: node or node-llama-cpp not installed (cd tests/llama_cpp && npm ci)");
      return;
    }
    auto const fp = load_llama2c_checkpoint(shared / "data/models/stories260K.bin");
    auto const tok = load_tokenizer(shared / "data/models/tok512.bin", {.vocab_size = 512, .name = {}});
    auto const stories = load_stories(shared / "data/text/tinystories_val.txt");
    std::vector<std::string> texts(stories.begin() + 500, stories.begin() + 504);
    std::vector<std::vector<std::int32_t>> ids;
    for (auto const& t : texts) ids.push_back(tok.encode(t, {.bos = false, .eos = false}));
    check_model("stories260K", fp, tok, to_gguf_vocab(tok), story_tokens(tok, stories, {0, 200}),
                story_tokens(tok, stories, {500, 600}), texts, ids);
  }

  TEST_CASE("llama.cpp runs rsq's GGUF files of lm7m (Hugging Face form, tokenizer.json) as rsq evaluates them") {
    RSQ_NEED_SHARED(shared);
    if (!rsq_test::node_llama_cpp_available()) {
      MESSAGE("SKIPPED: node or node-llama-cpp not installed (cd tests/llama_cpp && npm ci)");
      return;
    }
    auto const fp = load_hf_model(shared / "data/models/lm7m/hf").model;
    auto const tok = load_hf_tokenizer(shared / "data/models/lm7m/hf");
    auto const stories = load_stories(shared / "data/text/tinystories_val.txt");
    auto stream = [&](index_t a, index_t b) {
      std::vector<std::int32_t> s;
      for (index_t i = a; i < b; ++i) {
        auto const t = tok.encode(stories[std::size_t(i)]);
        s.insert(s.end(), t.begin(), t.end());
      }
      return s;
    };
    std::vector<std::string> texts(stories.begin() + 500, stories.begin() + 504);
    std::vector<std::vector<std::int32_t>> ids;
    for (auto const& t : texts) ids.push_back(tok.encode(t, {.add_special_tokens = false}));
    check_model("lm7m", fp, tok, to_gguf_vocab(tok), stream(0, 200), stream(500, 600), texts, ids);
  }
}
