// SPDX-License-Identifier: MIT
// The forward pass against Hugging Face transformers (an independent implementation), on every backend: the logits
// of Hugging Face folders read with load_hf_model equal transformers' float32 logits (eager attention) to 1e-4
// relative (max |Δ| / max |logit|). The folders and logits are fixtures made by scripts/hf-reference.py on the GPU
// machine (tests/model/fixtures/hf_reference/<name>/{config.json, model.safetensors, tokens.npy, logits.npy}):
//  - llama3: Llama-3's llama3 RoPE scaling, separate head;
//  - qwen2: q/k/v biases, tied embeddings;
//  - mistral: explicit head_dim;
//  - mistral_head_dim: head_dim * heads != hidden_size, as Mistral-Nemo;
//  - llama_biases: attention_bias (q/k/v/o biases) and mlp_bias;
//  - lm7m: the trained model of ../shared (its folder there; only tokens and logits are fixtures).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>

#include <rsq/io/npy.hpp>
#include <rsq/model/hf_model.hpp>
#include <rsq/model/quantize.hpp>

#include "support/backends.hpp"
#include "support/compare.hpp"
#include "support/shared_data.hpp"

namespace fs = std::filesystem;
using namespace rsq::model;

namespace {

fs::path fixtures() { return fs::path(__FILE__).parent_path() / "fixtures" / "hf_reference"; }

/// Reads the model of @p model_dir, runs it on backend @p be over @p name's tokens and compares with the logits
/// transformers gave.
template <class B>
void check_against_transformers(B const& be, std::string const& name, fs::path const& model_dir) {
  CAPTURE(name);
  auto const dir = fixtures() / name;
  auto const tokens = rsq::io::load_npy<std::int32_t, 2>(dir / "tokens.npy", rsq::io::npy_conversion::exact);
  auto const expected = rsq::io::load_npy<float, 3>(dir / "logits.npy", rsq::io::npy_conversion::exact);
  auto const m = load_hf_model(model_dir).model;
  auto const logits = forward(be, m, rsq::view(tokens));
  REQUIRE(logits.shape() == expected.shape());
  double const d = rsq_test::max_norm_rel(logits, expected);
  MESSAGE(name << " on " << rsq_test::backend_name<B>() << ": max |rsq - transformers| / max |logit| = " << d);
  CHECK(d <= 1e-4);
}

}  // namespace

TEST_SUITE("model.hf_reference") {
  TEST_CASE_TEMPLATE("the logits of Hugging Face folders equal transformers' (float32) to 1e-4", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    if (!fs::exists(fixtures())) {  // made on a machine with transformers; committed once made
      MESSAGE("SKIPPED: no ", fixtures(), " (run scripts/hf-reference.py make on a machine with transformers)");
      return;
    }
    for (char const* name : {"llama3", "qwen2", "mistral", "mistral_head_dim", "llama_biases"}) {
      REQUIRE_MESSAGE(fs::exists(fixtures() / name / "logits.npy"), "missing fixture ", fixtures() / name,
                      ": run scripts/hf-reference.py make on a machine with transformers");
      check_against_transformers(be, name, fixtures() / name);
    }
    auto const shared = rsq_test::shared_dir();
    if (!shared || !fs::exists(*shared / "data/models/lm7m/hf/model.safetensors")) {
      MESSAGE("SKIPPED lm7m: data/models/lm7m/hf not in ../shared");
      return;
    }
    check_against_transformers(be, "lm7m", *shared / "data/models/lm7m/hf");
  }
}
