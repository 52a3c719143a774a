// SPDX-License-Identifier: MIT
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include <rsq/model/forward.hpp>
#include <rsq/model/llama2c.hpp>
#include <rsq/model/tokenizer.hpp>

#include "model/model_test_support.hpp"
#include "support/shared_data.hpp"

using namespace rsq::model;
using rsq::index_t;

namespace {

/// Largest |a - b| over a float view (rows, cols) and a row-major double buffer with the same shape.
double max_diff(rsq::matrix_view<const float> a, double const* b) {
  double d = 0;
  for (index_t i = 0; i < a.rows(); ++i)
    for (index_t j = 0; j < a.cols(); ++j) d = std::max(d, std::abs(double(a(i, j)) - b[i * a.cols() + j]));
  return d;
}

double max_abs(std::vector<double> const& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

/// (sequences, L) token ids, deterministic.
std::vector<std::int32_t> random_tokens(index_t S, index_t L, int vocab, std::uint32_t seed) {
  std::mt19937 g(seed);
  std::vector<std::int32_t> t(std::size_t(S * L));
  for (auto& x : t) x = std::int32_t(g() % std::uint32_t(vocab));
  return t;
}

std::vector<std::int32_t> row(std::vector<std::int32_t> const& t, index_t L, index_t s) {
  return {t.begin() + s * L, t.begin() + (s + 1) * L};
}

struct stories_fixture {
  llama_model model;
  tokenizer tok;
  std::vector<std::string> stories;
};

stories_fixture load_shared(std::filesystem::path const& shared) {
  stories_fixture f{load_llama2c_checkpoint(shared / "data/models/stories260K.bin"),
                    load_tokenizer(shared / "data/models/tok512.bin", {.vocab_size = 512}), {}};
  f.stories = rsq_test::split_stories(rsq_test::read_text(shared / "data/text/tinystories_val.txt"));
  return f;
}

}  // namespace

TEST_SUITE("model.forward") {
  TEST_CASE("stories260K: mean next-token loss of the first validation story is 1.41967") {
    RSQ_NEED_SHARED(shared);
    auto const f = load_shared(shared);
    auto const t = f.tok.encode(f.stories.at(0), {.bos = true});
    REQUIRE(t.size() == 85);
    auto const r = next_token_loss(f.model, rsq::matrix_view<const std::int32_t>(t.data(), 1, 85));
    CHECK(r.count == 84);
    CHECK(std::abs(r.mean - 1.41967) < 1e-4);
    CHECK(r.perplexity == doctest::Approx(std::exp(r.mean)));
  }

  TEST_CASE("stories260K: mean loss on 8 consecutive 256-token windows from story 800 on is 1.7194") {
    // The windowing that reproduces the reference number: concatenate stories 800, 801, ... each encoded with BOS
    // (and the dummy prefix, no EOS) into one token stream and cut it into consecutive, non-overlapping windows of
    // 256 tokens; each window is one sequence (positions restart at 0), scored on its 255 next-token predictions.
    RSQ_NEED_SHARED(shared);
    auto const f = load_shared(shared);
    std::vector<std::int32_t> stream;
    for (std::size_t i = 800; stream.size() < 8 * 256; ++i) {
      auto const e = f.tok.encode(f.stories.at(i), {.bos = true});
      stream.insert(stream.end(), e.begin(), e.end());
    }
    stream.resize(8 * 256);
    auto const r = next_token_loss(f.model, rsq::matrix_view<const std::int32_t>(stream.data(), 8, 256));
    CHECK(r.count == 8 * 255);
    CHECK(std::abs(r.mean - 1.7194) < 1e-4);
  }

  TEST_CASE("stories260K: logits equal an independent float64 token-by-token forward") {
    RSQ_NEED_SHARED(shared);
    auto const f = load_shared(shared);
    auto t = f.tok.encode(f.stories.at(3), {.bos = true});
    t.resize(40);
    auto const logits = forward(f.model, rsq::matrix_view<const std::int32_t>(t.data(), 1, 40));
    auto const ref = rsq_test::reference_forward(f.model, t);
    double const err = max_diff(rsq::matrix_view<const float>(logits.data(), 40, 512), ref.logits.data());
    CHECK(err < 2e-4 * max_abs(ref.logits));
  }

  TEST_CASE("linear-input hooks deliver exactly what multiplies each weight") {
    auto const c = rsq_test::tiny_config();
    auto const m = rsq_test::random_model(c, 7);
    index_t const S = 3, L = 7;
    auto const tokens = random_tokens(S, L, c.vocab_size, 11);
    std::vector<rsq_test::ref_trace> refs;
    for (index_t s = 0; s < S; ++s) refs.push_back(rsq_test::reference_forward(m, row(tokens, L, s)));

    std::vector<std::pair<int, linear_id>> order;
    forward_hooks hooks;
    hooks.linear_input = [&](linear_site const& site, rsq::matrix_view<const float> x) {
      order.emplace_back(site.layer, site.linear);
      CHECK(site.sequences == S);
      CHECK(site.tokens == L);
      auto const& W = m.layers[std::size_t(site.layer)].weight(site.linear);
      REQUIRE(x.rows() == S * L);
      REQUIRE(x.cols() == index_t(W.shape()[1]));
      // The input itself and the product x·Wᵀ against the float64 reference of the same module.
      Eigen::MatrixXd const y = rsq::cpu::as_eigen(x).cast<double>() *
                                rsq::cpu::as_eigen(rsq::view(W)).cast<double>().transpose();
      for (index_t s = 0; s < S; ++s) {
        auto const& t = refs[std::size_t(s)].layers[std::size_t(site.layer)];
        std::vector<double> const* in = nullptr;
        std::vector<double> const* out = nullptr;
        switch (site.linear) {
          case linear_id::wq: in = &t.attn_in; out = &t.q_linear; break;
          case linear_id::wk: in = &t.attn_in; break;
          case linear_id::wv: in = &t.attn_in; out = &t.v; break;
          case linear_id::wo: in = &t.attn_out; out = &t.wo_out; break;
          case linear_id::w1: in = &t.ffn_in; break;
          case linear_id::w3: in = &t.ffn_in; break;
          case linear_id::w2: in = &t.hidden; out = &t.w2_out; break;
        }
        rsq::matrix_view<const float> xs(x.data() + s * L * x.cols(), L, x.cols());
        CHECK(max_diff(xs, in->data()) < 1e-4 * std::max(1.0, max_abs(*in)));
        if (out) {
          double err = 0;
          for (index_t i = 0; i < L; ++i)
            for (index_t j = 0; j < y.cols(); ++j)
              err = std::max(err, std::abs(y(s * L + i, j) - (*out)[std::size_t(i * y.cols() + j)]));
          CHECK(err < 1e-4 * std::max(1.0, max_abs(*out)));
        }
      }
    };
    auto const logits = forward(m, rsq::matrix_view<const std::int32_t>(tokens.data(), S, L), hooks);
    std::vector<std::pair<int, linear_id>> want;
    for (int l = 0; l < c.n_layers; ++l)
      for (linear_id id : {linear_id::wq, linear_id::wk, linear_id::wv, linear_id::wo, linear_id::w1, linear_id::w3,
                           linear_id::w2})
        want.emplace_back(l, id);
    CHECK(order == want);
    for (index_t s = 0; s < S; ++s)
      CHECK(max_diff(rsq::matrix_view<const float>(logits.data() + s * L * c.vocab_size, L, c.vocab_size),
                     refs[std::size_t(s)].logits.data()) < 1e-4 * max_abs(refs[std::size_t(s)].logits));
  }

  TEST_CASE("attention hooks: probabilities and post-RoPE q/k equal the reference and each other") {
    auto const c = rsq_test::tiny_config();
    auto const m = rsq_test::random_model(c, 3);
    index_t const S = 2, L = 9, H = c.n_heads, hs = c.head_size();
    auto const tokens = random_tokens(S, L, c.vocab_size, 5);
    std::vector<rsq_test::ref_trace> refs;
    for (index_t s = 0; s < S; ++s) refs.push_back(rsq_test::reference_forward(m, row(tokens, L, s)));
    std::map<std::pair<int, index_t>, std::vector<float>> probs_seen, softmax_from_qk;
    forward_hooks hooks;
    hooks.attention_probs = [&](attention_site const& site, rsq::batch_view<const float> p) {
      REQUIRE(p.extent(0) == H);
      REQUIRE(p.extent(1) == L);
      REQUIRE(p.extent(2) == L);
      auto const& ref = refs[std::size_t(site.sequence)].layers[std::size_t(site.layer)].probs;
      double err = 0;
      std::vector<float> copy;
      for (index_t h = 0; h < H; ++h)
        for (index_t i = 0; i < L; ++i) {
          double sum = 0;
          for (index_t j = 0; j < L; ++j) {
            sum += p(h, i, j);
            if (j > i) CHECK(p(h, i, j) == 0.f);
            err = std::max(err, std::abs(double(p(h, i, j)) - ref[std::size_t((h * L + i) * L + j)]));
            copy.push_back(p(h, i, j));
          }
          CHECK(sum == doctest::Approx(1.0).epsilon(1e-5));
        }
      CHECK(err < 1e-5);
      probs_seen[{site.layer, site.sequence}] = copy;
    };
    hooks.rope_qk = [&](attention_site const& site, rsq::batch_view<const float> q, rsq::batch_view<const float> k) {
      REQUIRE(q.extent(0) == H);
      REQUIRE(q.extent(1) == L);
      REQUIRE(q.extent(2) == hs);
      REQUIRE(k.extent(0) == c.n_kv_heads);
      REQUIRE(k.extent(1) == L);
      REQUIRE(k.extent(2) == hs);
      auto const& t = refs[std::size_t(site.sequence)].layers[std::size_t(site.layer)];
      double eq = 0, ek = 0;
      for (index_t i = 0; i < L; ++i)
        for (index_t e = 0; e < hs; ++e) {
          for (index_t h = 0; h < H; ++h) eq = std::max(eq, std::abs(q(h, i, e) - t.q[std::size_t(i * c.dim + h * hs + e)]));
          for (index_t g = 0; g < c.n_kv_heads; ++g)
            ek = std::max(ek, std::abs(k(g, i, e) - t.k[std::size_t(i * c.kv_dim() + g * hs + e)]));
        }
      CHECK(eq < 1e-4 * std::max(1.0, max_abs(t.q)));
      CHECK(ek < 1e-4 * std::max(1.0, max_abs(t.k)));
      // What a streaming AttnCon computes from q and k: causal softmax(q kᵀ / sqrt(hs)) with GQA.
      std::vector<float> p;
      for (index_t h = 0; h < H; ++h)
        for (index_t i = 0; i < L; ++i) {
          std::vector<double> sc(std::size_t(L), 0.0);
          double mx = -1e300, sum = 0;
          for (index_t j = 0; j <= i; ++j) {
            double d = 0;
            for (index_t e = 0; e < hs; ++e) d += double(q(h, i, e)) * k(h / c.kv_group(), j, e);
            sc[std::size_t(j)] = d / std::sqrt(double(hs));
            mx = std::max(mx, sc[std::size_t(j)]);
          }
          for (index_t j = 0; j <= i; ++j) sum += std::exp(sc[std::size_t(j)] - mx);
          for (index_t j = 0; j < L; ++j) p.push_back(j <= i ? float(std::exp(sc[std::size_t(j)] - mx) / sum) : 0.f);
        }
      softmax_from_qk[{site.layer, site.sequence}] = p;
    };
    (void)forward(m, rsq::matrix_view<const std::int32_t>(tokens.data(), S, L), hooks);
    REQUIRE(probs_seen.size() == std::size_t(c.n_layers * S));
    REQUIRE(softmax_from_qk.size() == probs_seen.size());
    for (auto const& [key, p] : probs_seen) {
      auto const& p2 = softmax_from_qk[key];
      REQUIRE(p2.size() == p.size());
      double err = 0;
      for (std::size_t i = 0; i < p.size(); ++i) err = std::max(err, double(std::abs(p[i] - p2[i])));
      CHECK(err < 1e-5);
    }
  }

  TEST_CASE("a batch of sequences gives the per-sequence results, with or without the attention hook") {
    auto const c = rsq_test::tiny_config();
    auto const m = rsq_test::random_model(c, 21, /*tied_classifier=*/false);
    index_t const S = 4, L = 12;
    auto const tokens = random_tokens(S, L, c.vocab_size, 99);
    auto const batched = forward(m, rsq::matrix_view<const std::int32_t>(tokens.data(), S, L));
    forward_hooks with_probs;
    with_probs.attention_probs = [](attention_site const&, rsq::batch_view<const float>) {};
    auto const batched2 = forward(m, rsq::matrix_view<const std::int32_t>(tokens.data(), S, L), with_probs);
    auto const loss = next_token_loss(m, rsq::matrix_view<const std::int32_t>(tokens.data(), S, L));
    double sum = 0;
    for (index_t s = 0; s < S; ++s) {
      auto const t = row(tokens, L, s);
      auto const one = forward(m, rsq::matrix_view<const std::int32_t>(t.data(), 1, L));
      for (index_t i = 0; i < L * c.vocab_size; ++i) {
        CHECK(batched.data()[s * L * c.vocab_size + i] == doctest::Approx(one.data()[i]).epsilon(1e-5));
        CHECK(batched2.data()[s * L * c.vocab_size + i] == batched.data()[s * L * c.vocab_size + i]);
      }
      sum += next_token_loss(m, rsq::matrix_view<const std::int32_t>(t.data(), 1, L)).sum;
    }
    CHECK(loss.count == S * (L - 1));
    CHECK(loss.sum == doctest::Approx(sum).epsilon(1e-6));
    // The loss itself against the float64 reference.
    double ref_sum = 0;
    for (index_t s = 0; s < S; ++s) {
      auto const t = row(tokens, L, s);
      auto const ref = rsq_test::reference_forward(m, t);
      for (index_t i = 0; i + 1 < L; ++i) {
        double mx = -1e300, z = 0;
        for (int j = 0; j < c.vocab_size; ++j) mx = std::max(mx, ref.logits[std::size_t(i * c.vocab_size + j)]);
        for (int j = 0; j < c.vocab_size; ++j) z += std::exp(ref.logits[std::size_t(i * c.vocab_size + j)] - mx);
        ref_sum += mx + std::log(z) - ref.logits[std::size_t(i * c.vocab_size + t[std::size_t(i + 1)])];
      }
    }
    CHECK(loss.mean == doctest::Approx(ref_sum / double(S * (L - 1))).epsilon(1e-5));
  }

  TEST_CASE("layer by layer (embed, forward_layer, swapped weights, final_logits) equals the whole forward") {
    auto const c = rsq_test::tiny_config();
    auto m = rsq_test::random_model(c, 5);
    index_t const S = 2, L = 10;
    auto const tokens = random_tokens(S, L, c.vocab_size, 1);
    rsq::matrix_view<const std::int32_t> tv(tokens.data(), S, L);
    auto x = embed(m, tv);
    CHECK(x.shape()[0] == std::size_t(S));
    CHECK(x.shape()[2] == std::size_t(c.dim));
    for (index_t t = 0; t < L; ++t)
      for (int j = 0; j < c.dim; ++j) CHECK(x(1, t, j) == m.token_embedding(std::size_t(tokens[std::size_t(L + t)]), j));
    for (int l = 0; l < c.n_layers; ++l) {
      auto y = forward_layer(c, m.layers[std::size_t(l)], l, x);
      // Each layer's output against the reference's per-layer output.
      for (index_t s = 0; s < S; ++s) {
        auto const ref = rsq_test::reference_forward(m, row(tokens, L, s));
        auto const& out = ref.layers[std::size_t(l)].out;
        CHECK(max_diff(rsq::matrix_view<const float>(y.data() + s * L * c.dim, L, c.dim), out.data()) <
              1e-4 * max_abs(out));
      }
      x = std::move(y);
    }
    auto const logits = final_logits(m, x);
    auto const whole = forward(m, tv);
    REQUIRE(logits.size() == whole.size());
    for (std::size_t i = 0; i < whole.size(); ++i) CHECK(logits.data()[i] == whole.data()[i]);
    CHECK(hidden_loss(m, x, tv).sum == next_token_loss(m, tv).sum);

    // Swapping a weight changes the forward exactly as the reference on the swapped model says.
    auto& wq = m.layers[1].wq;
    for (auto& w : wq) w = -0.5f * w;
    m.layers[0].w2 = rsq::matrix<float>(m.layers[0].w2 * 0.25f);
    auto const swapped = forward(m, tv);
    auto const ref = rsq_test::reference_forward(m, row(tokens, L, 0));
    CHECK(max_diff(rsq::matrix_view<const float>(swapped.data(), L, c.vocab_size), ref.logits.data()) <
          1e-4 * max_abs(ref.logits));
    double change = 0;
    for (std::size_t i = 0; i < whole.size(); ++i) change = std::max(change, double(std::abs(whole.data()[i] - swapped.data()[i])));
    CHECK(change > 1e-2);
  }

  TEST_CASE("online Hadamards on wo and w2: F·x with W·Fᵀ leaves the model unchanged, and hooks see F·x") {
    auto const c = rsq_test::tiny_config();
    auto const m = rsq_test::random_model(c, 13);
    index_t const S = 2, L = 8;
    auto const tokens = random_tokens(S, L, c.vocab_size, 4);
    rsq::matrix_view<const std::int32_t> tv(tokens.data(), S, L);
    auto const base = forward(m, tv);
    // The dense matrices of the online transforms: across heads (H_4 ⊗ I_8 on a token's (head, j) layout) and H_48.
    auto const heads = std::make_shared<rsq::rotation::hadamard const>(c.n_heads);
    auto const down = std::make_shared<rsq::rotation::hadamard const>(c.hidden_dim);
    index_t const hd = c.head_size();
    Eigen::MatrixXf Fo = Eigen::MatrixXf::Zero(c.dim, c.dim);
    auto const Hh = heads->dense();
    for (index_t h = 0; h < c.n_heads; ++h)
      for (index_t g = 0; g < c.n_heads; ++g)
        for (index_t j = 0; j < hd; ++j) Fo(h * hd + j, g * hd + j) = float(Hh(std::size_t(h), std::size_t(g)));
    Eigen::MatrixXf const Fd = rsq::cpu::as_eigen(rsq::view(down->dense())).cast<float>();
    auto rotated = m;
    rotated.online = {heads, down};
    for (auto& layer : rotated.layers) {
      // y = W x = (W Fᵀ)(F x) since F is orthogonal.
      auto fold = [](rsq::matrix<float>& w, Eigen::MatrixXf const& F) {
        auto W = rsq::cpu::as_eigen(rsq::view(w));
        W = (W * F.transpose()).eval();
      };
      fold(layer.wo, Fo);
      fold(layer.w2, Fd);
    }
    int calls = 0;
    forward_hooks hooks;
    hooks.linear_input = [&](linear_site const& site, rsq::matrix_view<const float> x) {
      if (site.linear != linear_id::wo || site.layer != 0) return;
      ++calls;
      // The hook sees the transformed input, each row x·Fᵀ: x·F is the untransformed attention output.
      Eigen::MatrixXf const back = rsq::cpu::as_eigen(x) * Fo;
      auto const ref = rsq_test::reference_forward(m, row(tokens, L, 0));
      double err = 0;
      for (index_t i = 0; i < L; ++i)
        for (int j = 0; j < c.dim; ++j)
          err = std::max(err, std::abs(double(back(i, j)) - ref.layers[0].attn_out[std::size_t(i * c.dim + j)]));
      CHECK(err < 1e-4 * max_abs(ref.layers[0].attn_out));
    };
    auto const out = forward(rotated, tv, hooks);
    CHECK(calls == 1);
    double err = 0, scale = 0;
    for (std::size_t i = 0; i < base.size(); ++i) {
      err = std::max(err, double(std::abs(out.data()[i] - base.data()[i])));
      scale = std::max(scale, double(std::abs(base.data()[i])));
    }
    CHECK(err < 1e-4 * scale);
    // Online transforms of the wrong length are rejected before any work.
    auto wrong = rotated;
    wrong.online.down = std::make_shared<rsq::rotation::hadamard const>(c.dim);
    CHECK_THROWS_WITH_AS((void)forward(wrong, tv), doctest::Contains("online Hadamard of w2's input has length 32"),
                         rsq::invalid_argument);
  }

  TEST_CASE("RMSNorm without gains: gains of ones with the gains folded into the next linears (spec 2.1)") {
    auto const c = rsq_test::tiny_config();
    auto const m = rsq_test::random_model(c, 17, /*tied_classifier=*/false);
    index_t const S = 2, L = 6;
    auto const tokens = random_tokens(S, L, c.vocab_size, 8);
    rsq::matrix_view<const std::int32_t> tv(tokens.data(), S, L);
    auto fused = m;
    auto fold = [](rsq::matrix<float>& w, rsq::vector<float> const& g) {
      for (std::size_t r = 0; r < w.shape()[0]; ++r)
        for (std::size_t k = 0; k < w.shape()[1]; ++k) w(r, k) = float(double(w(r, k)) * double(g(k)));
    };
    for (auto& layer : fused.layers) {
      for (auto* w : {&layer.wq, &layer.wk, &layer.wv}) fold(*w, layer.rms_att);
      for (auto* w : {&layer.w1, &layer.w3}) fold(*w, layer.rms_ffn);
      layer.rms_att.fill(1.f);
      layer.rms_ffn.fill(1.f);
    }
    fold(fused.classifier, fused.rms_final);
    fused.rms_final.fill(1.f);
    auto const a = forward(m, tv), b = forward(fused, tv);
    double err = 0, scale = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
      err = std::max(err, double(std::abs(a.data()[i] - b.data()[i])));
      scale = std::max(scale, double(std::abs(a.data()[i])));
    }
    CHECK(err < 1e-4 * scale);
  }

  TEST_CASE("bad arguments are rejected with clear messages") {
    auto const c = rsq_test::tiny_config();
    auto m = rsq_test::random_model(c, 2);
    std::vector<std::int32_t> t = {1, 2, 3, 4};
    std::vector<std::int32_t> bad = {1, 2, 40, 4};
    std::vector<std::int32_t> neg = {1, -1, 3, 4};
    CHECK_THROWS_WITH_AS((void)forward(m, rsq::matrix_view<const std::int32_t>(bad.data(), 1, 4)),
                         doctest::Contains("token id 40 at (0, 2) is outside the vocabulary"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)embed(m, rsq::matrix_view<const std::int32_t>(neg.data(), 2, 2)),
                         doctest::Contains("token id -1 at (0, 1)"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)embed(m, rsq::matrix_view<const std::int32_t>(t.data(), 0, 4)),
                         doctest::Contains("non-empty"), rsq::invalid_argument);
    std::vector<std::int32_t> longer(17, 3);
    CHECK_THROWS_WITH_AS((void)forward(m, rsq::matrix_view<const std::int32_t>(longer.data(), 1, 17)),
                         doctest::Contains("sequence length 17 exceeds the model's seq_len 16"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)next_token_loss(m, rsq::matrix_view<const std::int32_t>(t.data(), 4, 1)),
                         doctest::Contains("at least 2 tokens"), rsq::invalid_argument);

    activations x(activations::shape_type{1, 3, std::size_t(c.dim)}, 0.5f);
    activations wrong(activations::shape_type{1, 3, std::size_t(c.dim + 1)}, 0.5f);
    CHECK_THROWS_WITH_AS((void)forward_layer(c, m.layers[0], 0, wrong), doctest::Contains("x must be (sequences x L x 32)"),
                         rsq::invalid_argument);
    x(0, 2, 5) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH_AS((void)forward_layer(c, m.layers[0], 0, x), doctest::Contains("non-finite value (nan) at (0, 2, 5)"),
                         rsq::invalid_argument);
    x(0, 2, 5) = 0.f;

    auto swapped = m;
    swapped.layers[1].wk = rsq::matrix<float>(rsq::matrix<float>::shape_type{16, 31});
    CHECK_THROWS_WITH_AS((void)forward(swapped, rsq::matrix_view<const std::int32_t>(t.data(), 1, 4)),
                         doctest::Contains("layer 1 wk must be (16 x 32), got (16 x 31)"), rsq::invalid_argument);
    auto gains = m;
    gains.layers[0].rms_ffn = rsq::vector<float>(rsq::vector<float>::shape_type{3});
    CHECK_THROWS_WITH_AS((void)forward(gains, rsq::matrix_view<const std::int32_t>(t.data(), 1, 4)),
                         doctest::Contains("layer 0 rms_ffn must have 32 elements, got 3"), rsq::invalid_argument);
    auto few = m;
    few.layers.pop_back();
    CHECK_THROWS_WITH_AS((void)forward(few, rsq::matrix_view<const std::int32_t>(t.data(), 1, 4)),
                         doctest::Contains("config has 2 layers, the model holds 1"), rsq::invalid_argument);
    auto cls = m;
    cls.classifier = rsq::matrix<float>(rsq::matrix<float>::shape_type{39, 32});
    CHECK_THROWS_WITH_AS((void)forward(cls, rsq::matrix_view<const std::int32_t>(t.data(), 1, 4)),
                         doctest::Contains("classifier must be (40 x 32), got (39 x 32)"), rsq::invalid_argument);

    auto cfg = c;
    cfg.n_kv_heads = 3;
    CHECK_THROWS_WITH_AS(validate(cfg), doctest::Contains("n_heads (4) is not divisible by n_kv_heads (3)"),
                         rsq::invalid_argument);
    cfg = c;
    cfg.dim = 30;
    CHECK_THROWS_WITH_AS(validate(cfg), doctest::Contains("dim (30) is not divisible by n_heads (4)"), rsq::invalid_argument);
    cfg = c;
    cfg.dim = 36;
    cfg.n_heads = 4;
    cfg.n_kv_heads = 4;
    CHECK_THROWS_WITH_AS(validate(cfg), doctest::Contains("must be even for RoPE"), rsq::invalid_argument);
    cfg = c;
    cfg.hidden_dim = 0;
    CHECK_THROWS_WITH_AS(validate(cfg), doctest::Contains("hidden_dim must be positive, got 0"), rsq::invalid_argument);
    cfg = c;
    cfg.norm_eps = 0.f;
    CHECK_THROWS_WITH_AS(validate(cfg), doctest::Contains("norm_eps must be in (0, 1)"), rsq::invalid_argument);

    std::vector<std::int32_t> t2 = {1, 2, 3, 4, 5, 6};
    auto const h = forward_hidden(m, rsq::matrix_view<const std::int32_t>(t2.data(), 2, 3));
    CHECK_THROWS_WITH_AS((void)hidden_loss(m, h, rsq::matrix_view<const std::int32_t>(t2.data(), 3, 2)),
                         doctest::Contains("do not match the hidden states"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)final_logits(m, wrong), doctest::Contains("h must be (sequences x L x 32)"),
                         rsq::invalid_argument);
  }
}
