// SPDX-License-Identifier: MIT
// rsq-llama2c's GGUF output on stories260K: the written file computes the perplexity the tool printed, names the
// linears it kept in F16, and comes with an importance matrix; llama.cpp's own round to nearest with --method rtn;
// --help describes the options; bad combinations are refused with exit 2 before any work, and nothing is written.
#include <doctest/doctest.h>

#include <filesystem>
#include <sstream>
#include <string>

#include <rsq/io/imatrix.hpp>
#include <rsq/model/calibration.hpp>
#include <rsq/model/gguf.hpp>
#include <rsq/model/llama2c.hpp>
#include <rsq/model/quantize.hpp>
#include <rsq/model/tokenizer.hpp>

#include "cli/cli_support.hpp"
#include "support/shared_data.hpp"

namespace fs = std::filesystem;

namespace {

rsq_test::run_result run_tool(std::string const& args) {
  return rsq_test::run_tool_named("rsq-llama2c", "--model " + std::string(RSQ_SHARED_DIR) + "/data/models/stories260K.bin "
                                  "--tokenizer " + std::string(RSQ_SHARED_DIR) + "/data/models/tok512.bin --text " +
                                  std::string(RSQ_SHARED_DIR) + "/data/text/tinystories_val.txt " + args);
}

double perplexity_after(std::string const& text) {
  auto const p = text.find("perplexity ");
  REQUIRE_MESSAGE(p != std::string::npos, text);
  return std::stod(text.substr(p + 11));
}

/// The perplexity as printed (7 characters), for comparing two runs digit for digit.
std::string perplexity_text(std::string const& text) {
  auto const p = text.find("perplexity ");
  REQUIRE_MESSAGE(p != std::string::npos, text);
  return text.substr(p + 11, 7);
}

}  // namespace

TEST_SUITE("cli.rsq-llama2c") {
  TEST_CASE("--help describes the GGUF and importance-choice options") {
    auto const r = rsq_test::run_tool_named("rsq-llama2c", "--help");
    CHECK(r.status == 0);
    for (char const* opt : {"--format llama2c|gguf", "--gguf-type", "--imatrix FILE", "fused", "--importance-choice",
                            "--held-out"}) {
      CAPTURE(opt);
      CHECK(r.output.find(opt) != std::string::npos);
    }
  }

  TEST_CASE("stories260K as GGUF: the file computes the printed perplexity; imatrix; llama.cpp's round to nearest") {
    RSQ_NEED_SHARED(shared);
    auto const dir = rsq_test::temp_dir("cli_llama2c_gguf");
    auto const out = dir / "s.gguf", im = dir / "s.imatrix.gguf";
    std::string const small = " --nsamples 16 --eval-stories 500:540 --quiet";
    auto const r = run_tool("--method rsq --rotation fused --format gguf --gguf-type q4_0 --out " + out.string() +
                            " --imatrix " + im.string() + small);
    INFO(r.output);
    REQUIRE(r.status == 0);
    CHECK(r.output.find("5 linears kept in F16 (input size not a multiple of 32): blk.0.ffn_down.weight") !=
          std::string::npos);
    auto const tok = rsq::model::load_tokenizer(shared / "data/models/tok512.bin", {.vocab_size = 512, .name = {}});
    auto const stories = rsq::model::load_stories(shared / "data/text/tinystories_val.txt");
    auto const eval = rsq::model::consecutive_windows(rsq::model::story_tokens(tok, stories, {500, 540}), 256);
    auto const ppl = rsq::model::evaluate(rsq::model::load_gguf_model(out), rsq::view(eval)).perplexity;
    CHECK(ppl == doctest::Approx(perplexity_after(r.output)).epsilon(1e-4));
    auto const m = rsq::io::read_imatrix(im);
    CHECK(m.entries.size() == 35);
    CHECK(m.chunk_size == 256);

    auto const rtn = run_tool("--method rtn --format gguf --gguf-type q4_1 --overwrite --out " + out.string() + small);
    INFO(rtn.output);
    REQUIRE(rtn.status == 0);
    CHECK(rtn.output.find("method rtn (llama.cpp Q4_1)") != std::string::npos);
    CHECK(rsq::model::evaluate(rsq::model::load_gguf_model(out), rsq::view(eval)).perplexity ==
          doctest::Approx(perplexity_after(rtn.output)).epsilon(1e-4));
  }

  TEST_CASE("bad combinations are refused with exit 2 before any work") {
    RSQ_NEED_SHARED(shared);
    auto const dir = rsq_test::temp_dir("cli_llama2c_bad");
    auto const out = (dir / "x.gguf").string();
    auto const refused = [&](std::string const& args, std::string const& says) {
      CAPTURE(args);
      rsq_test::check_refused(run_tool(args), says, out);
    };
    refused("--method gptq --format gguf", "--format gguf writes --out");
    refused("--method gptq --format gguf --bits 4 --out " + out, "--bits does not apply to --format gguf");
    refused("--method rsq --format gguf --out " + out, "use --rotation fused");
    refused("--method gptq --format gguf --groupsize 16 --out " + out, "multiple of 32");
    refused("--method gptq --format gguf --gguf-type f16 --out " + out, "use them with --method rtn");
    refused("--method gptq --gguf-type q8_0 --out " + out, "--gguf-type needs --format gguf");
    refused("--method rtn --imatrix " + (dir / "i.gguf").string(), "--imatrix needs calibration");
    refused("--compare --format gguf --out " + out, "need --method, not --compare");
    refused("--method rtn --importance-choice choose --out " + out, "--importance-choice do not apply");
    refused("--method quarot --importance-choice blend --out " + out, "chooses between uniform token weights");
    refused("--method rsq --importance-choice sometimes --out " + out, "must be off, choose or blend");
    refused("--method rsq --held-out 0.5 --out " + out, "--held-out needs --importance-choice");
    refused("--method rsq --importance-choice blend --held-out 1 --out " + out, "--held-out must be a fraction");
    refused("--method rsq --importance-choice blend --nsamples 3 --held-out 0.1 --out " + out, "holds out 0 windows");
    refused("--method rsq --importance-choice choose --imatrix " + (dir / "i.gguf").string(),
            "--imatrix does not go with --importance-choice");
  }

  TEST_CASE("--importance-choice: the alpha of every linear and a summary; the baselines of --compare keep theirs") {
    RSQ_NEED_SHARED(shared);
    auto const r = run_tool("--method rsq --importance-choice choose --nsamples 8 --eval-stories 500:540");
    INFO(r.output);
    REQUIRE(r.status == 0);
    CHECK(r.output.find("importance choice choose: 2 of 8 windows held out; alpha kept by 35 linears:") !=
          std::string::npos);
    CHECK(r.output.find("rsq-llama2c: rsq    layer 1/5") != std::string::npos);
    CHECK(r.output.find(" (alpha ") != std::string::npos);
    auto const c = run_tool("--compare --importance-choice blend --nsamples 8 --eval-stories 500:540");
    INFO(c.output);
    REQUIRE(c.status == 0);
    CHECK(c.output.find("importance choice blend: 2 of 8 windows held out") != std::string::npos);  // the rsq row's
    CHECK(c.output.find("quarot   uniform") != std::string::npos);
    // The table of seconds per phase: a row per method whose phases fit in its whole quantization.
    auto const table = c.output.find("seconds per phase");
    REQUIRE(table != std::string::npos);
    std::istringstream rows(c.output.substr(table));
    std::string line;
    std::getline(rows, line);  // title
    std::getline(rows, line);  // column names
    for (char const* method : {"rtn", "gptq", "quarot", "rsq"}) {
      CAPTURE(method);
      REQUIRE(std::getline(rows, line));
      std::istringstream row(line);
      std::string name;
      double phase[8] = {}, quantize = -1, evaluate = -1;
      row >> name;
      for (double& p : phase) row >> p;
      row >> quantize >> evaluate;
      CHECK(name == method);
      double sum = 0;
      for (double p : phase) sum += p;
      CHECK(sum <= quantize + 0.05);  // printed to 0.01 s
      CHECK(evaluate > 0);
    }
  }
}

// Learned rotations (SpinQuant, issue 17): --method spinquant learns R1/R2 and prints the loss curve, --save-rotation
// writes them and --load-rotation reproduces the same model, --rotation learned goes with rsq; the llama2c checkpoint
// and the GGUF (learned without online Hadamards) compute the printed perplexity, --packed and --imatrix take the
// learned rotation; bad combinations are refused with exit 2 before any work.
TEST_SUITE("cli.rsq-llama2c.spinquant") {
  TEST_CASE("--help describes the learned-rotation options") {
    auto const r = rsq_test::run_tool_named("rsq-llama2c", "--help");
    CHECK(r.status == 0);
    for (char const* opt : {"spinquant", "--rotation learned", "--spin-steps", "--spin-lr", "--spin-sequences",
                            "--spin-momentum", "--save-rotation", "--load-rotation"}) {
      CAPTURE(opt);
      CHECK(r.output.find(opt) != std::string::npos);
    }
  }

  TEST_CASE("spinquant learns, saves and reloads the rotation; rsq on the learned rotation") {
    RSQ_NEED_SHARED(shared);
    auto const dir = rsq_test::temp_dir("cli_spinquant");
    auto const prefix = (dir / "rot").string();
    std::string const small = " --bits 3 --seqlen 64 --nsamples 8 --eval-stories 500:520 --quiet";
    auto const learned = run_tool("--method spinquant --spin-steps 3 --spin-sequences 4 --save-rotation " + prefix +
                                  " --out " + (dir / "m.bin").string() + small);
    INFO(learned.output);
    REQUIRE(learned.status == 0);
    CHECK(learned.output.find("rotation loss curve (3 steps") != std::string::npos);
    CHECK(learned.output.find("method spinquant (learned rotation)") != std::string::npos);
    CHECK(fs::exists(prefix + ".r1.npy"));
    CHECK(fs::exists(prefix + ".r2.npy"));
    // The checkpoint holds the learned rotation fused into its weights: read back, it computes the printed perplexity.
    auto const tok = rsq::model::load_tokenizer(shared / "data/models/tok512.bin", {.vocab_size = 512, .name = {}});
    auto const stories = rsq::model::load_stories(shared / "data/text/tinystories_val.txt");
    auto const eval = rsq::model::consecutive_windows(rsq::model::story_tokens(tok, stories, {500, 520}), 64);
    CHECK(rsq::model::evaluate(rsq::model::load_llama2c_checkpoint(dir / "m.bin"), rsq::view(eval)).perplexity ==
          doctest::Approx(perplexity_after(learned.output)).epsilon(1e-4));
    auto const loaded = run_tool("--method spinquant --load-rotation " + prefix + small);
    INFO(loaded.output);
    REQUIRE(loaded.status == 0);
    CHECK(loaded.output.find("rotation loss curve") == std::string::npos);
    CHECK(perplexity_text(loaded.output) == perplexity_text(learned.output));
    // RSQ on the loaded rotation, with the GPTQ tensors and the importance matrix of its calibration.
    auto const rsq = run_tool("--method rsq --rotation learned --load-rotation " + prefix + " --packed " +
                              (dir / "packed").string() + " --imatrix " + (dir / "i.dat").string() + small);
    INFO(rsq.output);
    CHECK(rsq.status == 0);
    CHECK(rsq.output.find("method rsq (learned rotation)") != std::string::npos);
    auto const manifest = rsq_test::read_text(dir / "packed/manifest.json");
    CHECK(manifest.find("\"method\": \"rsq\"") != std::string::npos);
    CHECK(manifest.find("\"hf_name\": \"down_proj\"") != std::string::npos);  // the online Hadamards to apply
    CHECK(rsq::io::read_imatrix(dir / "i.dat").entries.size() == 35);
    // The same files for a model of another shape are refused (exit 1, naming what is wrong).
    auto const wrong = rsq_test::run_tool_named(
        "rsq-llama2c", "--model " + (shared / "data/models/lm7m/llama2c/model.bin").string() + " --tokenizer " +
                           (shared / "data/models/lm7m/llama2c/tokenizer.bin").string() + " --text " +
                           (shared / "data/text/mix_valid.txt").string() + " --method spinquant --load-rotation " +
                           prefix + " --calib-stories 0:20 --eval-stories 20:22 --seqlen 64 --nsamples 8 --quiet");
    CHECK(wrong.status == 1);
    CHECK(wrong.output.find("R1 must be") != std::string::npos);
  }

  TEST_CASE("bad combinations are refused before any work") {
    auto const dir = rsq_test::temp_dir("cli_spinquant_refused");
    auto const out = dir / "never.bin";
    std::string const o = " --out " + out.string();
    rsq_test::check_refused(run_tool("--method gptq --rotation learned" + o), "rotating method", out);
    rsq_test::check_refused(run_tool("--method quarot --spin-steps 5" + o), "--spin-steps needs", out);
    rsq_test::check_refused(run_tool("--method spinquant --spin-steps 0" + o), "steps must be at least 1", out);
    rsq_test::check_refused(run_tool("--method spinquant --spin-lr -1" + o), "learning rate", out);
    rsq_test::check_refused(run_tool("--compare --rotation learned"), "needs --method", out);
    rsq_test::check_refused(run_tool("--method spinquant --load-rotation a --save-rotation b" + o), "exclude", out);
    rsq_test::check_refused(run_tool("--method spinquant --format gguf --rotate off --out " + out.string()),
                            "rotating method", out);
    rsq_test::check_refused(run_tool("--method spinquant --load-rotation " + (dir / "none").string() + o),
                            "none.r1.npy: no such file", out);
    // After the model and the windows are read, before the learning: more windows per step than there are.
    if (rsq_test::shared_dir())
      rsq_test::check_refused(run_tool("--method spinquant --nsamples 4 --seqlen 64" + o),
                              "--spin-sequences 8 exceeds the 4 calibration windows", out);
  }

  TEST_CASE("--format gguf: the rotation is learned and applied without online Hadamards; the GGUF computes the "
            "printed perplexity") {
    RSQ_NEED_SHARED(shared);
    auto const dir = rsq_test::temp_dir("cli_spinquant_gguf");
    auto const out = dir / "s.gguf";
    auto const r = run_tool("--method spinquant --format gguf --spin-steps 2 --spin-sequences 4 --seqlen 64 "
                            "--nsamples 8 --eval-stories 500:520 --quiet --out " + out.string());
    INFO(r.output);
    REQUIRE(r.status == 0);
    CHECK(r.output.find("rotation loss curve (2 steps") != std::string::npos);
    CHECK(r.output.find("method spinquant (learned rotation) bits 4 group 32") != std::string::npos);
    // stories260K's down_proj (172 inputs) stays F16 in the file, and the learning does not round it either.
    auto const tok = rsq::model::load_tokenizer(shared / "data/models/tok512.bin", {.vocab_size = 512, .name = {}});
    auto const stories = rsq::model::load_stories(shared / "data/text/tinystories_val.txt");
    auto const eval = rsq::model::consecutive_windows(rsq::model::story_tokens(tok, stories, {500, 520}), 64);
    auto const m = rsq::model::load_gguf_model(out);  // the reader validates the whole file
    CHECK(!m.online.any());
    CHECK(rsq::model::evaluate(m, rsq::view(eval)).perplexity ==
          doctest::Approx(perplexity_after(r.output)).epsilon(1e-4));
  }
}
