// SPDX-License-Identifier: MIT
// nn::causal_attention on every backend: output and AttnCon scores against a float64 brute force of causal softmax
// attention with GQA (sequence lengths 1, a block, a block + 1, several blocks with a tail; head_dim 8..128; an
// explicit softmax scale), the scores equal to importance::attncon_scores_qk per sequence, the scores-only mode,
// q/k/v as column ranges of a fused qkv matrix, bf16 within a stated tolerance, repeated calls giving the same bits,
// rejected arguments named in the message, and on the CPU the same bits for 1 and 2 OpenMP threads.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include <rsq/importance/attncon.hpp>
#include <rsq/nn/attention.hpp>

#include "nn/nn_support.hpp"

using namespace nn_test;

namespace {

struct shape {
  index_t sequences, L, heads, kv_heads, d;
};

/// Output (tokens, heads·d) and scores (sequences, L) of causal softmax attention, in float64.
struct reference {
  std::vector<double> out, scores;
};

reference attention_reference(rsq::matrix<float> const& q, rsq::matrix<float> const& k, rsq::matrix<float> const& v,
                              shape const& s, double scale) {
  index_t const L = s.L, d = s.d, group = s.heads / s.kv_heads, width = s.heads * d;
  reference r{std::vector<double>(std::size_t(s.sequences * L * width), 0.0),
              std::vector<double>(std::size_t(s.sequences * L), 0.0)};
  std::vector<double> p(static_cast<std::size_t>(L));
  for (index_t sq = 0; sq < s.sequences; ++sq)
    for (index_t h = 0; h < s.heads; ++h) {
      index_t const g = h / group;
      for (index_t i = 0; i < L; ++i) {
        double mx = -INFINITY, sum = 0;
        for (index_t t = 0; t <= i; ++t) {
          double dot = 0;
          for (index_t c = 0; c < d; ++c) dot += double(q(sq * L + i, h * d + c)) * double(k(sq * L + t, g * d + c));
          p[std::size_t(t)] = dot * scale;
          mx = std::max(mx, p[std::size_t(t)]);
        }
        for (index_t t = 0; t <= i; ++t) sum += (p[std::size_t(t)] = std::exp(p[std::size_t(t)] - mx));
        for (index_t t = 0; t <= i; ++t) {
          double const pt = p[std::size_t(t)] / sum;
          r.scores[std::size_t(sq * L + t)] += pt;
          for (index_t c = 0; c < d; ++c)
            r.out[std::size_t((sq * L + i) * width + h * d + c)] += pt * double(v(sq * L + t, g * d + c));
        }
      }
    }
  return r;
}

struct inputs {
  rsq::matrix<float> q, k, v;
};
inputs random_inputs(shape const& s, unsigned seed) {
  index_t const T = s.sequences * s.L;
  return {random_matrix(T, s.heads * s.d, seed), random_matrix(T, s.kv_heads * s.d, seed + 1),
          random_matrix(T, s.kv_heads * s.d, seed + 2)};
}

/// Output and scores of nn::causal_attention on backend B, brought back to the host.
template <class B>
std::pair<rsq::matrix<float>, rsq::matrix<float>> run_attention(inputs const& in, shape const& s,
                                                                rsq::nn::attention_options const& opt,
                                                                bool with_output = true) {
  auto const qd = upload<B>(in.q);
  auto const kd = upload<B>(in.k);
  auto const vd = upload<B>(in.v);
  auto out = rsq::backend::make_matrix<float>(B{}, s.sequences * s.L, s.heads * s.d);
  auto scores = rsq::backend::make_matrix<float>(B{}, s.sequences, s.L);
  if (with_output)
    rsq::nn::causal_attention(B{}, rsq::view(qd), rsq::view(kd), rsq::view(vd), rsq::view(out), opt, rsq::view(scores));
  else
    rsq::nn::causal_attention(B{}, rsq::view(qd), rsq::view(kd), {}, {}, opt, rsq::view(scores));
  return {with_output ? download<B>(out) : rsq::matrix<float>{}, download<B>(scores)};
}

rsq::nn::attention_options options(shape const& s, double scale = 0,
                                   rsq::matmul_precision p = rsq::matmul_precision::fp32) {
  return {.seq_len = s.L,
          .heads = s.heads,
          .kv_heads = s.kv_heads,
          .head_dim = s.d,
          .softmax_scale = scale,
          .precision = p};
}

std::vector<shape> const shapes = {{1, 1, 1, 1, 8},     {2, 5, 4, 2, 16},   {1, 64, 2, 1, 32}, {2, 65, 4, 4, 8},
                                   {1, 130, 8, 2, 128}, {3, 100, 6, 3, 20}, {1, 300, 2, 1, 64}};

}  // namespace

TEST_SUITE("nn.attention") {
  TEST_CASE_TEMPLATE("causal_attention: output and AttnCon scores equal a float64 brute force (GQA)", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    for (auto const& s : shapes) {
      CAPTURE(s.sequences);
      CAPTURE(s.L);
      CAPTURE(s.heads);
      CAPTURE(s.kv_heads);
      CAPTURE(s.d);
      auto const in = random_inputs(s, 21);
      for (double const scale : {0.0, 0.37}) {
        CAPTURE(scale);
        auto const [out, scores] = run_attention<B>(in, s, options(s, scale));
        auto const ref = attention_reference(in.q, in.k, in.v, s, scale > 0 ? scale : 1.0 / std::sqrt(double(s.d)));
        // |v| ≲ 5; logits up to ~50 before the scale: measured on the CPU ≤ 8e-6 and ≤ 1.4e-7.
        CHECK(max_abs(out, ref.out) < 5e-5);
        CHECK(max_rel(scores, ref.scores) < 2e-6);
      }
    }
  }

  TEST_CASE_TEMPLATE("causal_attention in its smallest pieces (CUDA: blocks of 16 queries, a sequence per chunk)", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    [[maybe_unused]] small_pieces<B> const pieces;
    for (auto const& s : {shape{3, 70, 4, 2, 16}, shape{2, 33, 6, 3, 8}}) {
      auto const in = random_inputs(s, 31);
      for (auto const p : {rsq::matmul_precision::fp32, rsq::matmul_precision::bf16}) {
        bool const fp32 = p == rsq::matmul_precision::fp32;
        auto const [out, scores] = run_attention<B>(in, s, options(s, 0, p));
        auto const only = run_attention<B>(in, s, options(s, 0, p), false).second;
        auto const ref = attention_reference(in.q, in.k, in.v, s, 1.0 / std::sqrt(double(s.d)));
        CHECK(max_abs(out, ref.out) < (fp32 ? 5e-5 : 3e-2));
        CHECK(max_rel(scores, ref.scores) < (fp32 ? 2e-6 : 1e-2));
        CHECK(same_bits(only, scores));
      }
    }
  }

  TEST_CASE_TEMPLATE("causal_attention: the scores equal importance::attncon_scores_qk of every sequence", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    for (auto const& s : {shape{3, 100, 6, 3, 20}, shape{2, 130, 4, 1, 64}}) {
      auto const in = random_inputs(s, 22);
      auto const [out, scores] = run_attention<B>(in, s, options(s));
      for (index_t sq = 0; sq < s.sequences; ++sq) {
        CAPTURE(sq);
        // (heads, L, d) and (kv_heads, L, d) of this sequence.
        auto qh = xt::xtensor<float, 3>::from_shape({std::size_t(s.heads), std::size_t(s.L), std::size_t(s.d)});
        auto kh = xt::xtensor<float, 3>::from_shape({std::size_t(s.kv_heads), std::size_t(s.L), std::size_t(s.d)});
        for (index_t t = 0; t < s.L; ++t)
          for (index_t c = 0; c < s.d; ++c) {
            for (index_t h = 0; h < s.heads; ++h) qh(h, t, c) = in.q(sq * s.L + t, h * s.d + c);
            for (index_t g = 0; g < s.kv_heads; ++g) kh(g, t, c) = in.k(sq * s.L + t, g * s.d + c);
          }
        auto const expected = rsq::importance::attncon_scores_qk(qh, kh);  // (L)
        double err = 0, top = 0;
        for (index_t t = 0; t < s.L; ++t) {
          err = std::max(err, std::abs(double(scores(sq, t)) - double(expected(std::size_t(t)))));
          top = std::max(top, std::abs(double(expected(std::size_t(t)))));
        }
        CHECK(err / top < 2e-6);
      }
    }
  }

  TEST_CASE_TEMPLATE("causal_attention: scores only (no v, no out) gives the same scores, bit for bit", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    for (auto const& s : {shape{2, 65, 4, 2, 16}, shape{1, 300, 2, 1, 64}}) {
      auto const in = random_inputs(s, 23);
      auto const full = run_attention<B>(in, s, options(s)).second;
      auto const only = run_attention<B>(in, s, options(s), false).second;
      CHECK(same_bits(full, only));
    }
  }

  TEST_CASE_TEMPLATE("causal_attention: repeated calls give the same bits", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    shape const s{2, 300, 4, 2, 64};
    auto const in = random_inputs(s, 24);
    for (auto const p : {rsq::matmul_precision::fp32, rsq::matmul_precision::bf16}) {
      auto const a = run_attention<B>(in, s, options(s, 0, p));
      auto const b = run_attention<B>(in, s, options(s, 0, p));
      CHECK(same_bits(a.first, b.first));
      CHECK(same_bits(a.second, b.second));
    }
  }

  TEST_CASE_TEMPLATE("causal_attention: q, k, v and out as column ranges of wider matrices", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    shape const s{2, 70, 4, 2, 16};
    index_t const T = s.sequences * s.L, qw = s.heads * s.d, kw = s.kv_heads * s.d;
    auto const qkv = random_matrix(T, qw + 2 * kw, 25);  // fused projections: [q | k | v]
    auto const qkvd = upload<B>(qkv);
    auto const pad = random_matrix(T, qw + 7, 26);
    auto outd = upload<B>(pad);
    auto scores = rsq::backend::make_matrix<float>(B{}, s.sequences, s.L);
    rsq::nn::causal_attention(B{}, column_view(qkvd, 0, qw), column_view(qkvd, qw, kw), column_view(qkvd, qw + kw, kw),
                              column_view(outd, 3, qw), options(s), rsq::view(scores));
    auto const ref = attention_reference(columns(qkv, 0, qw), columns(qkv, qw, kw), columns(qkv, qw + kw, kw), s, 0.25);
    auto const got = download<B>(outd);
    CHECK(max_abs(columns(got, 3, qw), ref.out) < 2e-5);
    CHECK(max_rel(download<B>(scores), ref.scores) < 2e-6);
    CHECK(same_bits(columns(got, 0, 3), columns(pad, 0, 3)));
    CHECK(same_bits(columns(got, 3 + qw, 4), columns(pad, 3 + qw, 4)));
  }

  TEST_CASE_TEMPLATE("causal_attention in bf16: within 3e-2 of float64 (output) and 1e-2 (scores)", B,
                     RSQ_TEST_BACKENDS) {
    // bf16 keeps 8 bits: q·k of 128 products is off by about 0.4% of its scale, so are the probabilities; the CPU
    // backend computes fp32 instead (core/precision.hpp), well inside the bound.
    RSQ_NEED_DEVICE(B);
    for (auto const& s : {shape{2, 65, 4, 2, 16}, shape{1, 300, 8, 2, 128}}) {
      auto const in = random_inputs(s, 27);
      auto const [out, scores] = run_attention<B>(in, s, options(s, 0, rsq::matmul_precision::bf16));
      auto const ref = attention_reference(in.q, in.k, in.v, s, 1.0 / std::sqrt(double(s.d)));
      CHECK(max_abs(out, ref.out) < 3e-2);
      CHECK(max_rel(scores, ref.scores) < 1e-2);
    }
  }

  TEST_CASE_TEMPLATE("causal_attention rejects bad arguments, naming them", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    shape const s{2, 5, 4, 2, 8};
    auto const in = random_inputs(s, 28);
    auto const qd = upload<B>(in.q);
    auto const kd = upload<B>(in.k);
    auto const vd = upload<B>(in.v);
    auto out = rsq::backend::make_matrix<float>(B{}, 10, 32);
    auto scores = rsq::backend::make_matrix<float>(B{}, 2, 5);
    auto bad_scores = rsq::backend::make_matrix<float>(B{}, 2, 4);
    auto const be = B{};
    auto opt = options(s);
    auto const call = [&](rsq::nn::attention_options const& o) {
      rsq::nn::causal_attention(be, rsq::view(qd), rsq::view(kd), rsq::view(vd), rsq::view(out), o, rsq::view(scores));
    };
    opt.kv_heads = 3;
    CHECK_THROWS_WITH_AS(call(opt), doctest::Contains("the 4 query heads are not a multiple of the 3 KV heads"),
                         rsq::invalid_argument);
    opt = options(s);
    opt.seq_len = 3;
    CHECK_THROWS_WITH_AS(call(opt),
                         doctest::Contains("causal_attention: 10 rows are not whole sequences of seq_len = 3"),
                         rsq::invalid_argument);
    opt = options(s);
    opt.head_dim = 4;
    CHECK_THROWS_WITH_AS(call(opt), doctest::Contains("causal_attention: q must be (10 x 16)"), rsq::invalid_argument);
    opt = options(s);
    opt.heads = 2;
    opt.kv_heads = 1;
    CHECK_THROWS_WITH_AS(call(opt), doctest::Contains("causal_attention: q must be (10 x 16)"), rsq::invalid_argument);
    opt = options(s);
    opt.softmax_scale = -1;
    CHECK_THROWS_WITH_AS(call(opt), doctest::Contains("causal_attention: softmax_scale must be >= 0"),
                         rsq::invalid_argument);
    opt = options(s);
    opt.kv_heads = 0;
    CHECK_THROWS_WITH_AS(call(opt), doctest::Contains("seq_len, heads, kv_heads and head_dim must be positive"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::nn::causal_attention(be, rsq::view(qd), rsq::view(kd), rsq::view(vd), {}, options(s)),
                         doctest::Contains("causal_attention: out is empty"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::nn::causal_attention(be, rsq::view(qd), rsq::view(kd), {}, {}, options(s)),
                         doctest::Contains("causal_attention: nothing to compute"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::nn::causal_attention(be, rsq::view(qd), rsq::view(kd), rsq::view(vd), rsq::view(out),
                                                   options(s), rsq::view(bad_scores)),
                         doctest::Contains("causal_attention: scores must be (2 x 5)"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::nn::causal_attention(be, rsq::view(qd), rsq::view(qd), rsq::view(vd), rsq::view(out),
                                                   options(s), rsq::view(scores)),
                         doctest::Contains("causal_attention: k must be (10 x 16)"), rsq::invalid_argument);
    if constexpr (!std::is_same_v<B, rsq::backend::cpu_eigen>)
      CHECK_THROWS_WITH_AS(rsq::nn::causal_attention(be, rsq::view(in.q), rsq::view(kd), rsq::view(vd), rsq::view(out),
                                                     options(s), rsq::view(scores)),
                           doctest::Contains("causal_attention: q is not in the backend's memory"),
                           rsq::invalid_argument);
  }

#if defined(_OPENMP)
  TEST_CASE("causal_attention on the CPU: the same bits for 1 and 2 OpenMP threads") {
    // head_dim 128 and L = 400: the P·V products have a depth past 320, where Eigen's own multi-threaded product
    // would change its blocking with the thread count.
    for (auto const& s : {shape{3, 256, 8, 4, 8}, shape{2, 400, 4, 2, 128}}) {
      auto const in = random_inputs(s, 29);
      std::pair<rsq::matrix<float>, rsq::matrix<float>> one, two, one_out, two_out;
      {
        omp_threads t(1);
        one = run_attention<rsq::backend::cpu_eigen>(in, s, options(s));
        one_out = run_attention<rsq::backend::cpu_eigen>(in, s, options(s), false);
      }
      {
        omp_threads t(2);
        two = run_attention<rsq::backend::cpu_eigen>(in, s, options(s));
        two_out = run_attention<rsq::backend::cpu_eigen>(in, s, options(s), false);
      }
      CHECK(same_bits(one.first, two.first));
      CHECK(same_bits(one.second, two.second));
      CHECK(same_bits(one_out.second, two_out.second));
    }
  }
#endif

  TEST_CASE("causal_attention on the CPU: output without scores is the output with scores, bit for bit") {
    shape const s{2, 130, 4, 2, 16};
    auto const in = random_inputs(s, 30);
    auto const qd = upload<rsq::backend::cpu_eigen>(in.q);
    auto const kd = upload<rsq::backend::cpu_eigen>(in.k);
    auto const vd = upload<rsq::backend::cpu_eigen>(in.v);
    auto a = rsq::make_matrix<float>(260, 64);
    rsq::nn::causal_attention(rsq::backend::cpu_eigen{}, rsq::view(qd), rsq::view(kd), rsq::view(vd), rsq::view(a),
                              options(s));
    auto const with_scores = run_attention<rsq::backend::cpu_eigen>(in, s, options(s)).first;
    CHECK(same_bits(a, with_scores));
  }
}
