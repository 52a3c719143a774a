// SPDX-License-Identifier: MIT
// Whole-model rotation (spec §2): the rotated full-precision model computes the original logits, for both kinds of
// residual rotation and several seeds, on random models whose Hadamards include non-Sylvester orders and on
// stories260K; the pieces (norm fusion, centring, the residual Q, the online Hadamards) against their definitions.

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>

#include <rsq/model/forward.hpp>
#include <rsq/model/hf_model.hpp>
#include <rsq/model/rotate.hpp>
#include <rsq/rotation/any_rotation.hpp>
#include <rsq/rotation/hadamard.hpp>

#include "pipeline/pipeline_support.hpp"

using namespace rsq::model;
using namespace rsq_pipeline_test;
using rsq::index_t;

namespace {

activations logits_of(llama_model const& m, rsq::matrix<std::int32_t> const& tokens) {
  return forward(m, rsq::view(tokens));
}

/// Largest |a − b| over two float matrices of the same shape.
double max_diff(rsq::matrix<float> const& a, rsq::matrix<float> const& b) {
  REQUIRE(a.shape() == b.shape());
  double d = 0;
  for (std::size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double(a.data()[i]) - double(b.data()[i])));
  return d;
}

}  // namespace

TEST_SUITE("pipeline.rotate") {
  TEST_CASE("the rotated model computes the original logits (both rotation kinds, several seeds)") {
    for (auto const& cfg : {tiny_config(), odd_config()}) {
      auto const fp = random_model(cfg, 11);
      auto const tokens = random_tokens(3, 24, cfg.vocab_size, 5);
      auto const ref = logits_of(fp, tokens);
      for (auto kind : {residual_rotation::randomized_hadamard, residual_rotation::random_orthogonal})
        for (std::uint64_t seed : {0u, 1u, 12345u}) {
          CAPTURE(cfg.dim);
          CAPTURE(to_string(kind));
          CAPTURE(seed);
          auto m = fp;
          auto const rec = rotate_model(m, {.kind = kind, .seed = seed});
          CHECK(rec.residual.seed == seed);
          CHECK(rec.residual.n == cfg.dim);
          CHECK(relative_logit_difference(ref, logits_of(m, tokens)) < 1e-4);
          // Gains are ones, the embedding is rotated (differs), the online transforms are set.
          for (auto const& L : m.layers) {
            for (float g : L.rms_att) CHECK(g == 1.f);
            for (float g : L.rms_ffn) CHECK(g == 1.f);
          }
          CHECK(m.online.heads != nullptr);
          CHECK(m.online.down != nullptr);
          for (float g : m.rms_final) CHECK(g == 1.f);
          CHECK(max_diff(m.token_embedding, fp.token_embedding) > 1e-2);
        }
    }
  }

  TEST_CASE("stories260K: the rotated model computes the original logits") {
    RSQ_NEED_SHARED(shared);
    auto const f = load_stories260k(shared);
    auto const ids = f.tok.encode(f.stories.at(3), {.bos = true});
    auto tokens = rsq::make_matrix<std::int32_t>(1, index_t(ids.size()));
    std::copy(ids.begin(), ids.end(), tokens.begin());
    auto const ref = logits_of(f.model, tokens);
    for (auto kind : {residual_rotation::randomized_hadamard, residual_rotation::random_orthogonal})
      for (std::uint64_t seed : {0u, 2u}) {
        CAPTURE(seed);
        auto m = f.model;
        auto const rec = rotate_model(m, {.kind = kind, .seed = seed});
        CHECK(rec.down_online.n == 172);  // the order-172 Hadamard on w2's input
        CHECK(relative_logit_difference(ref, logits_of(m, tokens)) < 1e-4);
      }
  }

  TEST_CASE("every head count: 6 and 14 heads (no Hadamard of that order) get an orthogonal substitute, named, and "
            "the rotated model computes the original logits") {
    for (int heads : {6, 14}) {
      CAPTURE(heads);
      auto c = tiny_config();
      c.n_heads = heads;
      c.n_kv_heads = 2;
      c.dim = heads * 4;
      c.hidden_dim = 46;  // 46 = 2·23: no Hadamard either (down_proj's online transform)
      auto const fp = random_model(c, 21);
      auto const tokens = random_tokens(2, 20, c.vocab_size, 6);
      auto const ref = logits_of(fp, tokens);
      for (bool online : {true, false}) {
        CAPTURE(online);
        auto m = fp;
        auto const rec = rotate_model(m, {.seed = 3, .online_hadamards = online});
        CHECK(relative_logit_difference(ref, logits_of(m, tokens)) < 1e-4);
        auto const notes = substitutes(rec);
        std::string all;
        for (auto const& n : notes) all += n + "\n";
        CAPTURE(all);
        // The residual (dim 24 = 12·2 or 56 = 28·2) has a construction; the heads and down_proj's input do not.
        CHECK(notes.size() == (online ? 2u : 0u));
        if (online) {
          CHECK(all.find("across the " + std::to_string(heads) + " heads: no Hadamard of order " +
                         std::to_string(heads)) != std::string::npos);
          CHECK(all.find("block_diagonal[") != std::string::npos);
        }
        fold_online_transforms(m);  // the plain model a Hugging Face folder holds
        CHECK(relative_logit_difference(ref, logits_of(m, tokens)) < 1e-4);
      }
      auto refused = fp;
      CHECK_THROWS_WITH_AS((void)rotate_model(refused, {.hadamard = {.fallback = rsq::rotation::hadamard_fallback::none}}),
                           doctest::Contains("no Hadamard construction"), rsq::invalid_argument);
    }
    auto m = random_model(odd_config(), 2);  // 12 heads, hidden 56: exact Hadamards, nothing substituted
    CHECK(substitutes(rotate_model(m)).empty());
  }

  TEST_CASE("lm16m (6 heads, attention sinks): the rotated model computes the original logits") {
    RSQ_NEED_SHARED(shared);
    auto const dir = shared / "data/models/lm16m/hf";
    if (!std::filesystem::exists(dir / "model.safetensors")) {
      MESSAGE("SKIPPED: data/models/lm16m/hf not in ../shared");
      return;
    }
    auto const fp = load_hf_model(dir).model;
    REQUIRE(fp.config.n_heads == 6);
    auto const tokens = random_tokens(1, 48, fp.config.vocab_size, 8);
    auto const ref = logits_of(fp, tokens);
    auto m = fp;
    auto const rec = rotate_model(m, {.seed = 1});
    REQUIRE(substitutes(rec).size() == 1);
    CHECK(substitutes(rec)[0].find("across the 6 heads") != std::string::npos);
    CHECK(relative_logit_difference(ref, logits_of(m, tokens)) < 1e-4);
  }

  TEST_CASE("norm fusion alone preserves the logits and leaves gains of ones") {
    auto const fp = random_model(odd_config(), 3);
    auto const tokens = random_tokens(2, 16, fp.config.vocab_size, 9);
    auto m = fp;
    fuse_norms(m);
    CHECK(relative_logit_difference(logits_of(fp, tokens), logits_of(m, tokens)) < 1e-5);
    // W·diag(γ), column by column, against the definition.
    for (index_t i = 0; i < fp.config.dim; ++i)
      for (index_t j = 0; j < fp.config.dim; ++j)
        CHECK(m.layers[1].wq(i, j) == doctest::Approx(fp.layers[1].wq(i, j) * fp.layers[1].rms_att(j)).epsilon(1e-6));
    for (index_t i = 0; i < fp.config.hidden_dim; ++i)
      CHECK(m.layers[0].w3(i, 5) == doctest::Approx(fp.layers[0].w3(i, 5) * fp.layers[0].rms_ffn(5)).epsilon(1e-6));
    CHECK(m.classifier(7, 2) == doctest::Approx(fp.classifier(7, 2) * fp.rms_final(2)).epsilon(1e-6));
    for (float g : m.rms_final) CHECK(g == 1.f);
  }

  TEST_CASE("embedding centring is not function-preserving, but the rotation of a centred model is") {
    auto const fp = random_model(tiny_config(), 4);
    auto const tokens = random_tokens(2, 16, fp.config.vocab_size, 2);
    auto centred = fp;
    fuse_norms(centred);
    center_embeddings(centred);
    for (index_t v = 0; v < fp.config.vocab_size; ++v) {
      double mean = 0;
      for (index_t j = 0; j < fp.config.dim; ++j) mean += centred.token_embedding(v, j);
      CHECK(std::abs(mean) < 1e-5);
    }
    CHECK(relative_logit_difference(logits_of(fp, tokens), logits_of(centred, tokens)) > 1e-3);
    auto m = fp;
    auto const rec = rotate_model(m, {.seed = 9, .center_embeddings = true});
    CHECK(rec.centered_embeddings);
    CHECK(relative_logit_difference(logits_of(centred, tokens), logits_of(m, tokens)) < 1e-4);
  }

  TEST_CASE("the residual rotation is the recorded Q: E_rot·Qᵀ is the fused embedding, Qᵀ·(rotated w2) has the "
            "offline Hadamard") {
    auto const fp = random_model(tiny_config(), 8);
    for (auto kind : {residual_rotation::randomized_hadamard, residual_rotation::random_orthogonal}) {
      auto m = fp;
      auto const rec = rotate_model(m, {.kind = kind, .seed = 77});
      auto fused = fp;
      fuse_norms(fused);
      auto const q = rsq::rotation::make_rotation(rec.residual);  // rebuilt from the descriptor
      auto e = m.token_embedding;
      std::visit([&](auto const& r) { r.apply_right_transpose(rsq::view(e)); }, q);
      CHECK(max_diff(e, fused.token_embedding) < 1e-5);
      auto cls = m.classifier;
      std::visit([&](auto const& r) { r.apply_right_transpose(rsq::view(cls)); }, q);
      CHECK(max_diff(cls, fused.classifier) < 1e-5);
      // w2_rot = Qᵀ·W2·Hᵀ with H = M_I/√I (dense, from the Hadamard class) and Q dense from the rotation.
      auto const qd = std::visit([](auto const& r) { return r.dense(); }, q);  // (dim, dim)
      auto const hd = rsq::rotation::hadamard(fp.config.hidden_dim).dense();  // (hidden, hidden)
      auto const& w2 = fp.layers[0].w2;
      double err = 0;
      for (index_t i = 0; i < fp.config.dim; ++i)
        for (index_t j = 0; j < fp.config.hidden_dim; ++j) {
          double s = 0;
          for (index_t a = 0; a < fp.config.dim; ++a)
            for (index_t b = 0; b < fp.config.hidden_dim; ++b) s += qd(a, i) * double(w2(a, b)) * hd(j, b);
          err = std::max(err, std::abs(s - double(m.layers[0].w2(i, j))));
        }
      CHECK(err < 1e-5);
    }
  }

  TEST_CASE("the online head Hadamard is (M_nh/√nh ⊗ I_hd) and the down Hadamard is M_I/√I") {
    for (auto const& cfg : {tiny_config(), odd_config()}) {
      index_t const H = cfg.n_heads, hs = cfg.head_size(), D = cfg.dim;
      auto const online = plan_rotation(cfg).online;
      auto const mh = rsq::rotation::hadamard(H).dense();  // (H, H) = M/√H
      auto x = rsq::make_matrix<double>(3, D);
      for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = std::sin(0.7 * double(i) + 0.1);
      auto y = x;
      // As the forward pass applies it: the rows (t, j, ·) of the (tokens, head_dim, heads) view.
      online.heads->apply(rsq::backend::cpu_eigen{}, rsq::tensor_view<double, 3>(y.data(), {3, hs, H}, {D, 1, hs}));
      double err = 0;
      for (index_t t = 0; t < 3; ++t)
        for (index_t h = 0; h < H; ++h)
          for (index_t j = 0; j < hs; ++j) {
            double s = 0;
            for (index_t g = 0; g < H; ++g) s += mh(h, g) * x(t, g * hs + j);
            err = std::max(err, std::abs(s - y(t, h * hs + j)));
          }
      CHECK(err < 1e-12);
      auto const md = rsq::rotation::hadamard(cfg.hidden_dim).dense();
      auto z = rsq::make_matrix<double>(2, cfg.hidden_dim);
      for (std::size_t i = 0; i < z.size(); ++i) z.data()[i] = std::cos(0.3 * double(i));
      auto w = z;
      online.down->apply(rsq::backend::cpu_eigen{}, rsq::view(w));
      double err2 = 0;
      for (index_t t = 0; t < 2; ++t)
        for (index_t i = 0; i < cfg.hidden_dim; ++i) {
          double s = 0;
          for (index_t k = 0; k < cfg.hidden_dim; ++k) s += md(i, k) * z(t, k);
          err2 = std::max(err2, std::abs(s - w(t, i)));
        }
      CHECK(err2 < 1e-12);
    }
  }

  TEST_CASE("folding the online Hadamards back gives a plain model with the same logits") {
    for (auto const& cfg : {tiny_config(), odd_config()}) {
      auto const fp = random_model(cfg, 21);
      auto const tokens = random_tokens(2, 20, cfg.vocab_size, 4);
      auto m = fp;
      (void)rotate_model(m, {.seed = 3});
      auto const rotated = logits_of(m, tokens);
      auto plain = m;
      fold_online_transforms(plain);
      CHECK_FALSE(plain.online.any());
      CHECK(relative_logit_difference(rotated, logits_of(plain, tokens)) < 1e-5);
      CHECK(relative_logit_difference(logits_of(fp, tokens), logits_of(plain, tokens)) < 1e-4);
      // Folding is idempotent on a plain model.
      auto again = plain;
      fold_online_transforms(again);
      CHECK(max_diff(again.layers[0].w2, plain.layers[0].w2) == 0);
    }
  }

  TEST_CASE("rotations that fold into the weights only: a plain model with the original logits, w2 untouched by H") {
    for (auto const& cfg : {tiny_config(), odd_config()}) {
      auto const fp = random_model(cfg, 23);
      auto const tokens = random_tokens(2, 20, cfg.vocab_size, 6);
      auto fused = fp, full = fp;
      auto const rec = rotate_model(fused, {.seed = 3, .online_hadamards = false});
      (void)rotate_model(full, {.seed = 3});
      CHECK_FALSE(rec.online);
      CHECK_FALSE(fused.online.any());
      CHECK(relative_logit_difference(logits_of(fp, tokens), logits_of(fused, tokens)) < 1e-4);
      // The same Q and per-head V Hadamard as the full rotation; only wo and w2 differ (no Hadamard across heads,
      // no H_I on w2's input).
      CHECK(max_diff(fused.layers[0].wq, full.layers[0].wq) == 0);
      CHECK(max_diff(fused.layers[0].wv, full.layers[0].wv) == 0);
      CHECK(max_diff(fused.layers[0].w2, full.layers[0].w2) > 1e-3);
      auto again = fused;
      attach_online_transforms(again, rec);
      CHECK_FALSE(again.online.any());
    }
  }

  TEST_CASE("attach_online_transforms rebuilds the transforms from a record") {
    auto const fp = random_model(odd_config(), 5);
    auto const tokens = random_tokens(1, 12, fp.config.vocab_size, 1);
    auto m = fp;
    auto const rec = rotate_model(m, {.seed = 4});
    auto const ref = logits_of(m, tokens);
    m.online = {};
    CHECK(relative_logit_difference(ref, logits_of(m, tokens)) > 1e-3);
    attach_online_transforms(m, rec);
    CHECK(relative_logit_difference(ref, logits_of(m, tokens)) == 0);
  }

  TEST_CASE("bad inputs") {
    auto fp = random_model(tiny_config(), 1);
    auto m = fp;
    (void)rotate_model(m);
    CHECK_THROWS_WITH_AS((void)rotate_model(m), doctest::Contains("already rotated"), rsq::invalid_argument);

    // hidden 22 = 2·11 has no Hadamard construction: with the substitute turned off, an error, and the model is
    // left untouched.
    auto c = tiny_config();
    c.hidden_dim = 22;
    auto bad = random_model(c, 2);
    auto const before = bad.layers[0].wq;
    CHECK_THROWS_WITH_AS((void)rotate_model(bad, {.hadamard = {.fallback = rsq::rotation::hadamard_fallback::none}}),
                         doctest::Contains("no Hadamard construction for n = 22"), rsq::invalid_argument);
    CHECK(max_diff(bad.layers[0].wq, before) == 0);
    CHECK(bad.rms_final(0) != 1.f);

    auto nan = fp;
    nan.layers[1].w1(2, 3) = std::nanf("");
    CHECK_THROWS_WITH_AS((void)rotate_model(nan), doctest::Contains("non-finite"), rsq::invalid_argument);
    auto shape = fp;
    shape.layers[0].wq = rsq::make_matrix<float>(3, 3);
    CHECK_THROWS_WITH_AS(fuse_norms(shape), doctest::Contains("wq must be"), rsq::invalid_argument);

    auto rec = rotate_model(fp);
    auto other = random_model(odd_config(), 1);
    CHECK_THROWS_WITH_AS(attach_online_transforms(other, rec), doctest::Contains("does not match"),
                         rsq::invalid_argument);
    auto x = rsq::make_matrix<float>(2, 30);
    CHECK_THROWS_WITH_AS(rsq::rotation::hadamard(4).apply(rsq::backend::cpu_eigen{},
                                                          rsq::tensor_view<float, 3>(x.data(), {2, 10, 3}, {30, 1, 10})),
                         doctest::Contains("rows have length 3, the transform has length 4"), rsq::invalid_argument);
  }
}
