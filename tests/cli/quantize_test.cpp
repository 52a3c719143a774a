// SPDX-License-Identifier: MIT
// rsq-quantize end to end on lm7m's Hugging Face folder: the written folder is read back and computes the
// perplexity the tool printed; --help names every option; bad usage and unusable outputs are refused (exit 2)
// before any work; --overwrite replaces the folder whole. Learned rotations (SpinQuant): the written folder and GGUF
// compute the printed perplexity, a saved and reloaded rotation gives the same files bit for bit, and bad
// combinations are refused before any work.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>

#include <rsq/io/npy.hpp>
#include <rsq/io/imatrix.hpp>
#include <rsq/model/calibration.hpp>
#include <rsq/model/gguf.hpp>
#include <rsq/model/hf_model.hpp>
#include <rsq/model/learned_rotation.hpp>
#include <rsq/model/quantize.hpp>
#include <rsq/model/tokenizer.hpp>

#include "cli/cli_support.hpp"
#include "support/shared_data.hpp"

namespace fs = std::filesystem;
using rsq::index_t;

namespace {

using rsq_test::run_result;

run_result run_tool(std::string const& args) { return rsq_test::run_tool_named("rsq-quantize", args); }

/// lm7m's folder and token windows of its validation text as .npy files (calibration, evaluation), or nothing.
struct lm7m_files {
  fs::path model, calib, eval;
};

std::optional<lm7m_files> lm7m(fs::path const& shared) {
  lm7m_files f{shared / "data/models/lm7m/hf", {}, {}};
  if (!fs::exists(f.model / "config.json")) return std::nullopt;
  auto const tok = rsq::model::load_tokenizer(shared / "data/models/lm7m/llama2c/tokenizer.bin", {.vocab_size = 4096});
  auto const docs = rsq::model::load_stories(shared / "data/text/mix_valid.txt");
  auto const dir = rsq_test::temp_dir("cli_quantize_data");
  f.calib = dir / "calib.npy";
  f.eval = dir / "eval.npy";
  rsq::io::save_npy(f.calib, rsq::model::sample_windows(rsq::model::story_tokens(tok, docs, {0, 20}), 64, 8, 1));
  auto const eval = rsq::model::consecutive_windows(rsq::model::story_tokens(tok, docs, {100, 102}), 64);
  auto first = rsq::make_matrix<std::int32_t>(6, 64);
  for (index_t i = 0; i < 6; ++i)
    for (index_t j = 0; j < 64; ++j) first(i, j) = eval(i, j);
  rsq::io::save_npy(f.eval, first);
  return f;
}

/// The number after @p key in @p text ("… 12.34 after …": key "before, " gives what follows it).
double number_after(std::string const& text, std::string const& key) {
  auto const p = text.find(key);
  REQUIRE_MESSAGE(p != std::string::npos, "no \"", key, "\" in ", text);
  return std::stod(text.substr(p + key.size()));
}

/// The bytes of @p path.
std::string file_bytes(fs::path const& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_SUITE("cli.rsq-quantize") {
  TEST_CASE("--help and -h describe every option; no arguments is bad usage") {
    for (char const* h : {"--help", "-h"}) {
      auto const r = run_tool(h);
      CHECK(r.status == 0);
      for (char const* opt : {"--model", "--calib", "--nsamples", "--seqlen", "--seed", "--calib-bos", "--eval",
                              "--eval-seqlen", "--eval-windows", "--method", "--bits",
                              "--group-size", "--act-order", "--asym", "--rotation", "--backend", "--out", "--format",
                              "--dtype", "--overwrite", "--quiet", "--diagnostics", "--check", "--importance-choice",
                              "--held-out", "exit status"})
        CHECK_MESSAGE(r.output.find(opt) != std::string::npos, opt);
    }
    CHECK(run_tool("").status == 2);
  }

  TEST_CASE("bad usage and unusable outputs are refused with exit 2 before any work") {
    RSQ_NEED_SHARED(shared);
    auto const model = (shared / "data/models/lm7m/hf").string();
    auto const dir = rsq_test::temp_dir("cli_quantize_bad");
    auto const out = (dir / "out").string();
    auto const refused = [&](std::string const& args, std::string const& says) {
      CAPTURE(args);
      rsq_test::check_refused(run_tool(args), says, out);
    };
    refused("--model " + model + " --method rtn --bogus 1 --out " + out, "unknown option --bogus");
    refused("--model " + model + " --method rtn --bits 9 --out " + out, "--bits must be between 2 and 8");
    refused("--model " + model + " --method rtn --calib x.txt --out " + out, "uses no calibration data");
    refused("--model " + model + " --method gptq --rotation fused --calib x.txt --out " + out,
            "--rotation applies to --method quarot and rsq");
    refused("--model " + model + " --method gptq --out " + out, "--calib is required");
    refused("--model " + model + " --method rtn --out " + (dir / "missing/out").string(), "does not exist");
    refused("--model " + model + " --method gptq --calib " + dir.string() + " --out " + out, "is a folder, not a file");
    refused("--model " + model + " --method gptq --calib " + (dir / "none.txt").string() + " --out " + out,
            "no such file");
    refused("--model " + model + " --method rtn --format safetensors --out " + out, "--format must be one of hf|gptq|gguf");
    refused("--model " + model + " --method rtn --format gguf --bits 4 --out " + out, "--bits does not apply to --format gguf");
    refused("--model " + model + " --method rtn --format gguf --gguf-type q4_k --out " + out, "--gguf-type must be q4_0");
    refused("--model " + model + " --method rsq --format gguf --calib x.txt --out " + out,
            "needs online Hadamards, which llama.cpp does not apply; use --rotation fused");
    refused("--model " + model + " --method gptq --format gguf --group-size 48 --calib x.txt --out " + out,
            "--group-size must be a multiple of 32");
    refused("--model " + model + " --method gptq --gguf-type q4_0 --calib x.txt --out " + out, "--gguf-type needs --format gguf");
    refused("--model " + model + " --method rtn --imatrix i.gguf --out " + out, "--imatrix needs calibration");
    refused("--model " + model + " --method rtn --policy attncon --out " + out, "--policy does not apply");
    refused("--model " + model + " --method rsq --importance-power 0 --calib x.txt --out " + out,
            "--importance-power must be a positive number");
    refused("--model " + model + " --method rtn --expand 2 --out " + out, "--expand does not apply");
    refused("--model " + model + " --method rtn --importance-choice choose --out " + out,
            "--importance-choice does not apply");
    refused("--model " + model + " --method quarot --importance-choice blend --calib x.txt --out " + out,
            "chooses between uniform token weights and a policy's");
    refused("--model " + model + " --method rsq --importance-choice always --calib x.txt --out " + out,
            "--importance-choice must be off, choose or blend");
    refused("--model " + model + " --method rsq --held-out 0.5 --calib x.txt --out " + out,
            "--held-out needs --importance-choice");
    refused("--model " + model + " --method rsq --importance-choice choose --held-out 0 --calib x.txt --out " + out,
            "--held-out must be a fraction");
    refused("--model " + model + " --method rsq --importance-choice choose --nsamples 2 --held-out 0.9 --calib x.txt "
            "--out " + out, "holds out 2 windows: at least one must be held out and one must remain");
    refused("--model " + model + " --method rsq --importance-choice blend --imatrix i.gguf --calib x.txt --out " + out,
            "--imatrix does not go with --importance-choice");
    refused("--model " + model + " --method rsq --policy attncon:3 --calib x.txt --out " + out,
            "--policy: policy: \"attncon\" takes no argument but cap_peak");
    refused("--model " + model + " --method rtn --format gptq --bits 5 --out " + out, "stores 2, 3, 4 or 8 bits");
    refused("--model " + model + " --method rsq --format gptq --calib x.txt --out " + out, "use --rotation fused");
    refused("--model " + model + " --method rtn --eval-seqlen 128 --out " + out, "--eval-seqlen needs --eval");
    refused("--model " + model + " --method rtn --calib-bos --out " + out, "--calib-bos needs calibration data");
    std::ofstream(dir / "a_file") << "x";
    CHECK(run_tool("--model " + model + " --method rtn --out " + (dir / "a_file").string()).status == 2);
    fs::create_directory(out);
    std::ofstream(fs::path(out) / "keep.txt") << "x";
    auto const r = run_tool("--model " + model + " --method rtn --out " + out);
    CHECK(r.status == 2);
    CHECK(r.output.find("is not empty (pass --overwrite") != std::string::npos);
    CHECK(fs::exists(fs::path(out) / "keep.txt"));
    // Only the leftover staging folders of killed runs could remain; none of these runs leaves one.
    for (auto const& e : fs::directory_iterator(dir)) CHECK(e.path().filename().string().find(".partial") == std::string::npos);
  }

  TEST_CASE("lm7m: the written folder computes the perplexity the tool printed; --overwrite replaces it whole") {
    RSQ_NEED_SHARED(shared);
    auto const f = lm7m(shared);
    if (!f) {
      MESSAGE("SKIPPED: lm7m not in ../shared");
      return;
    }
    auto const eval = rsq::io::load_npy<std::int32_t, 2>(f->eval);
    auto const out = rsq_test::temp_dir("cli_quantize_out") / "q";
    std::string const common = "--model " + f->model.string() + " --eval " + f->eval.string() +
                             " --nsamples 8 --seqlen 64 --quiet --out " + out.string();
    // Text calibration (tokenized with the folder's tokenizer.json) and token ids (.npy).
    auto const text = (shared / "data/text/mix_valid.txt").string();
    {
      auto const r = run_tool("--model " + f->model.string() + " --method rtn --quiet --eval " + text +
                              " --eval-seqlen 96 --eval-windows 2 --overwrite --out " + out.string());
      INFO(r.output);
      CHECK(r.status == 0);
      CHECK(r.output.find("(2 windows of 96)") != std::string::npos);
    }
    for (std::string method : {"gptq --act-order --calib-bos --calib " + text,
                               "rsq --rotation fused --diagnostics --importance-power 2 --expand 2 --calib " +
                                   f->calib.string(),
                               "quarot --bits 3 --group-size -1 --calib " + f->calib.string(),
                               "rsq --importance-choice choose --bits 3 --group-size -1 --calib " +
                                   f->calib.string()}) {
      CAPTURE(method);
      auto const r = run_tool(common + " --overwrite --method " + method);
      INFO(r.output);
      REQUIRE(r.status == 0);
      if (method.find("--diagnostics") != std::string::npos) {  // per layer: effective tokens of 64, shares in %
        CHECK(r.output.find("diagnostics: layer 0: ") != std::string::npos);
        CHECK(r.output.find("effective tokens of 64, Hessian weight on position 0 ") != std::string::npos);
        // Crest factors before and after the rotation, from the weights and the Hessians; the loss by position.
        CHECK(r.output.find(" rotated; input channel crest q/k/v ") != std::string::npos);
        CHECK(r.output.find("diagnostics: loss per quarter of the predicted positions, FP -> quantized:  0-14: ") !=
              std::string::npos);
      }
      if (method.find("--importance-choice") != std::string::npos)  // 2 of the 8 windows held out
        CHECK(r.output.find("importance choice choose: 2 of 8 windows held out; alpha kept by 56 linears:") !=
              std::string::npos);
      CHECK(r.output.find("wrote " + out.string() + ": a Hugging Face folder") != std::string::npos);
      CHECK(!fs::exists(out / "stale.txt"));  // left by the previous run's folder: replaced whole
      double const printed = number_after(r.output, "before, ");
      auto const back = rsq::model::load_hf_model(out);
      double const ppl = rsq::model::evaluate(back.model, rsq::view(eval)).perplexity;
      CHECK(ppl == doctest::Approx(printed).epsilon(2e-4));  // printed with 4 decimals; folding rounds once
      CHECK(fs::exists(out / "tokenizer.json"));
      CHECK(fs::exists(out / "config.json"));
      std::ofstream(out / "stale.txt") << "from an earlier run";
    }
    auto const r = run_tool(common + " --overwrite --method rtn --calib " + f->calib.string());
    CHECK(r.status == 2);  // rtn takes no --calib: refused before the folder is touched
    CHECK(fs::exists(out / "stale.txt"));
  }

  TEST_CASE("lm7m: a GGUF file on llama.cpp's blocks and an importance matrix; the file computes the printed "
            "perplexity") {
    RSQ_NEED_SHARED(shared);
    auto const f = lm7m(shared);
    if (!f) {
      MESSAGE("SKIPPED: lm7m not in ../shared");
      return;
    }
    auto const eval = rsq::io::load_npy<std::int32_t, 2>(f->eval);
    auto const dir = rsq_test::temp_dir("cli_quantize_gguf");
    auto const out = dir / "lm7m.gguf", im = dir / "lm7m.dat";
    auto const r = run_tool("--model " + f->model.string() + " --calib " + f->calib.string() + " --eval " +
                            f->eval.string() + " --nsamples 8 --seqlen 64 --quiet --method rsq --rotation fused "
                            "--act-order --format gguf --gguf-type q4_1 --imatrix " + im.string() + " --out " +
                            out.string());
    INFO(r.output);
    REQUIRE(r.status == 0);
    CHECK(r.output.find("on llama.cpp's Q4_1 blocks, group 32") != std::string::npos);
    CHECK(r.output.find("wrote " + out.string() + ": GGUF v3, llama architecture, linears Q4_1") != std::string::npos);
    CHECK(r.output.find("llama.cpp loads it") != std::string::npos);
    double const printed = number_after(r.output, "before, ");
    CHECK(rsq::model::evaluate(rsq::model::load_gguf_model(out), rsq::view(eval)).perplexity ==
          doctest::Approx(printed).epsilon(1e-4));
    auto const m = rsq::io::read_imatrix(im);
    CHECK(m.entries.size() == 56);  // 8 layers x 7 linears
    CHECK(m.chunk_count == 8);
    // A second run does not replace the files without --overwrite; llama.cpp's own round to nearest with it does.
    auto const again = run_tool("--model " + f->model.string() + " --method rtn --format gguf --out " + out.string());
    CHECK(again.status == 2);
    auto const rtn = run_tool("--model " + f->model.string() + " --method rtn --format gguf --gguf-type q8_0 --eval " +
                              f->eval.string() + " --quiet --overwrite --out " + out.string());
    INFO(rtn.output);
    REQUIRE(rtn.status == 0);
    CHECK(rtn.output.find("llama.cpp's Q8_0 round to nearest") != std::string::npos);
    CHECK(rsq::model::evaluate(rsq::model::load_gguf_model(out), rsq::view(eval)).perplexity ==
          doctest::Approx(number_after(rtn.output, "before, ")).epsilon(1e-4));
  }

  TEST_CASE("lm7m: a GPTQ checkpoint with its quantization_config, and the engines that load it") {
    RSQ_NEED_SHARED(shared);
    auto const f = lm7m(shared);
    if (!f) {
      MESSAGE("SKIPPED: lm7m not in ../shared");
      return;
    }
    auto const out = rsq_test::temp_dir("cli_quantize_gptq") / "q";
    auto const r = run_tool("--model " + f->model.string() + " --calib " + f->calib.string() +
                            " --nsamples 8 --seqlen 64 --quiet --method rsq --rotation fused --act-order --format gptq"
                            " --out " + out.string());
    INFO(r.output);
    REQUIRE(r.status == 0);
    CHECK(r.output.find("a GPTQ checkpoint (4-bit, symmetric, checkpoint_format gptq, rotated)") != std::string::npos);
    CHECK(r.output.find("vLLM (Machete kernel)  loads it") != std::string::npos);
    auto const config = nlohmann::json::parse(rsq_test::read_text(out / "config.json"));
    CHECK(config["quantization_config"]["desc_act"] == true);
    CHECK(config["quantization_config"]["group_size"] == 128);
    CHECK(fs::exists(out / "quantize_config.json"));
    CHECK(fs::exists(out / "tokenizer.json"));
    auto const check = run_tool("--check " + out.string());
    CHECK(check.status == 0);
    CHECK(check.output.find("transformers           loads it") != std::string::npos);
    auto const plain = run_tool("--check " + f->model.string());
    CHECK(plain.status == 1);
    CHECK(plain.output.find("not a GPTQ checkpoint") != std::string::npos);
  }
}

TEST_SUITE("cli.rsq-quantize.spinquant") {
  TEST_CASE("--help describes the learned-rotation options") {
    auto const r = run_tool("--help");
    CHECK(r.status == 0);
    for (char const* opt : {"spinquant", "learned", "--spin-steps", "--spin-lr", "--spin-sequences", "--spin-momentum",
                            "--save-rotation", "--load-rotation"}) {
      CAPTURE(opt);
      CHECK(r.output.find(opt) != std::string::npos);
    }
  }

  TEST_CASE("bad combinations are refused with exit 2 before any work") {
    RSQ_NEED_SHARED(shared);
    auto const model = (shared / "data/models/lm7m/hf").string();
    auto const dir = rsq_test::temp_dir("cli_quantize_spinquant_bad");
    auto const out = (dir / "out").string();
    auto const calib = dir / "calib.npy";
    rsq::io::save_npy(calib, rsq::make_matrix<std::int32_t>(4, 16));  // 4 windows of token 0
    std::ofstream(dir / "taken.r1.npy") << "x";
    std::string const base = "--model " + model + " --calib " + calib.string() + " --out " + out + " ";
    auto const refused = [&](std::string const& args, std::string const& says) {
      CAPTURE(args);
      rsq_test::check_refused(run_tool(base + args), says, out);
    };
    refused("--method gptq --rotation learned", "--rotation applies to --method quarot and rsq");
    refused("--method quarot --spin-steps 5", "--spin-steps needs --rotation learned or --method spinquant");
    refused("--method rsq --rotation fused --save-rotation r", "--save-rotation needs --rotation learned");
    refused("--method spinquant --spin-steps 0", "steps must be at least 1");
    refused("--method spinquant --spin-lr -1", "the learning rate must be positive");
    refused("--method spinquant --load-rotation a --save-rotation b", "exclude each other");
    refused("--method spinquant --load-rotation " + (dir / "none").string(), "none.r1.npy: no such file");
    refused("--method spinquant --save-rotation " + (dir / "taken").string(), "exists (pass --overwrite");
    // After the model and the windows are read, before the learning: more windows per step than there are.
    refused("--method spinquant --spin-sequences 8", "--spin-sequences 8 exceeds the 4 calibration windows");
    CHECK(!fs::exists(dir / "taken.r2.npy"));
  }

  TEST_CASE("lm7m: spinquant's folder computes the printed perplexity; a saved and reloaded rotation gives the same "
            "files bit for bit; RSQ on it as a GGUF (no online Hadamards) computes the printed perplexity") {
    RSQ_NEED_SHARED(shared);
    auto const f = lm7m(shared);
    if (!f) {
      MESSAGE("SKIPPED: lm7m not in ../shared");
      return;
    }
    auto const eval = rsq::io::load_npy<std::int32_t, 2>(f->eval);
    auto const dir = rsq_test::temp_dir("cli_quantize_spinquant");
    auto const prefix = (dir / "rot").string();
    std::string const common = "--model " + f->model.string() + " --calib " + f->calib.string() + " --eval " +
                               f->eval.string() + " --nsamples 4 --seqlen 64 --quiet --bits 3 ";
    auto const learned = run_tool(common + "--method spinquant --spin-steps 1 --spin-sequences 2 --save-rotation " +
                                  prefix + " --out " + (dir / "a").string());
    INFO(learned.output);
    REQUIRE(learned.status == 0);
    CHECK(learned.output.find("rotation loss curve (1 steps") != std::string::npos);
    CHECK(learned.output.find("with spinquant (learned rotation), 3-bit, group 128") != std::string::npos);
    CHECK(learned.output.find("a Hugging Face folder (F32 dequantized weights, rotated)") != std::string::npos);
    // The saved rotation fits the model, is orthogonal (load checks both) and is not QuaRot's, where it started.
    auto const config = rsq::model::load_hf_model(f->model).model.config;
    auto const rotation = rsq::model::load_learned_rotation(prefix, config);
    auto const start = rsq::model::initial_rotation(rsq::model::plan_rotation(config, {}), config);
    double moved = 0;
    for (std::size_t i = 0; i < rotation.r1.size(); ++i)
      moved = std::max(moved, std::abs(rotation.r1.data()[i] - start.r1.data()[i]));
    CHECK(moved > 1e-3);
    double const printed = number_after(learned.output, "before, ");
    CHECK(std::isfinite(printed));
    double const ppl = rsq::model::evaluate(rsq::model::load_hf_model(dir / "a").model, rsq::view(eval)).perplexity;
    CHECK(ppl == doctest::Approx(printed).epsilon(2e-4));  // printed with 4 decimals; folding rounds once

    auto const loaded = run_tool(common + "--method spinquant --load-rotation " + prefix + " --out " +
                                 (dir / "b").string());
    INFO(loaded.output);
    REQUIRE(loaded.status == 0);
    CHECK(loaded.output.find("rotation loss curve") == std::string::npos);
    std::size_t files = 0;
    for (auto const& e : fs::directory_iterator(dir / "a")) {
      CAPTURE(e.path());
      CHECK(file_bytes(e.path()) == file_bytes(dir / "b" / e.path().filename()));
      ++files;
    }
    CHECK(files == std::size_t(std::distance(fs::directory_iterator(dir / "b"), fs::directory_iterator())));

    // GGUF holds only rotations folded into the weights: the rotation is applied without online Hadamards (any
    // orthogonal R1/R2 preserves the function), here with RSQ.
    auto const gguf = run_tool(common.substr(0, common.find("--bits")) + "--method rsq --rotation learned "
                               "--load-rotation " + prefix + " --format gguf --out " + (dir / "c.gguf").string());
    INFO(gguf.output);
    REQUIRE(gguf.status == 0);
    CHECK(gguf.output.find("with rsq (learned rotation) on llama.cpp's Q4_0 blocks") != std::string::npos);
    CHECK(rsq::model::evaluate(rsq::model::load_gguf_model(dir / "c.gguf"), rsq::view(eval)).perplexity ==
          doctest::Approx(number_after(gguf.output, "before, ")).epsilon(1e-4));
  }
}
