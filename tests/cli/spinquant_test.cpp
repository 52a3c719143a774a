// SPDX-License-Identifier: MIT
// rsq-llama2c's learned rotations (SpinQuant, issue 17) on stories260K: --method spinquant learns R1/R2 and prints
// the loss curve, --save-rotation writes them and --load-rotation reproduces the same model, --rotation learned goes
// with rsq; bad combinations are refused with exit 2 before any work.
#include <doctest/doctest.h>

#include <filesystem>
#include <string>

#include "cli/cli_support.hpp"
#include "support/shared_data.hpp"

namespace fs = std::filesystem;

namespace {

rsq_test::run_result run_tool(std::string const& args) {
  return rsq_test::run_tool_named("rsq-llama2c", "--model " + std::string(RSQ_SHARED_DIR) + "/data/models/stories260K.bin "
                                  "--tokenizer " + std::string(RSQ_SHARED_DIR) + "/data/models/tok512.bin --text " +
                                  std::string(RSQ_SHARED_DIR) + "/data/text/tinystories_val.txt " + args);
}

std::string perplexity_text(std::string const& text) {
  auto const p = text.find("perplexity ");
  REQUIRE_MESSAGE(p != std::string::npos, text);
  return text.substr(p + 11, 7);
}

}  // namespace

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
    CHECK(fs::exists(dir / "m.bin"));
    auto const loaded = run_tool("--method spinquant --load-rotation " + prefix + small);
    INFO(loaded.output);
    REQUIRE(loaded.status == 0);
    CHECK(loaded.output.find("rotation loss curve") == std::string::npos);
    CHECK(perplexity_text(loaded.output) == perplexity_text(learned.output));
    auto const rsq = run_tool("--method rsq --rotation learned --load-rotation " + prefix + small);
    INFO(rsq.output);
    CHECK(rsq.status == 0);
    CHECK(rsq.output.find("method rsq (learned rotation)") != std::string::npos);
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
    rsq_test::check_refused(run_tool("--method spinquant --packed " + (dir / "p").string()), "learned rotation", out);
  }
}
