// SPDX-License-Identifier: MIT
// AttnCon (spec §4.2).
//  - On every backend (TEST_CASE_TEMPLATE over RSQ_TEST_BACKENDS, importance::attncon_scores(be, ...) and
//    attncon_scores_qk(be, ...)): the golden raw scores of the reference from its attention probabilities, scores
//    from given probabilities against a brute-force sum (and the entries above the diagonal never read), streamed
//    scores from queries and keys against a float64 brute-force softmax (MHA, GQA, MQA, ragged query blocks, float
//    and double, large logits, a custom softmax scale, strided views), inputs and results in the backend's memory
//    (several query blocks of device memory), and bad probabilities, queries, keys and options named in the message.
//    The CPU is held to max elementwise relative errors, the other backends to max |error| / max |reference|.
//  - The CPU's own functions: the golden importances (default normalisation), the AttnCon policy on a context (from
//    the attention or from queries and keys), a batch of sequences, the materialised causal attention.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <rsq/backend/memory.hpp>
#include <rsq/importance/attncon.hpp>
#include <rsq/importance/normalize.hpp>
#include <rsq/io/npy.hpp>

#include "support/backend_data.hpp"
#include "support/backends.hpp"
#include "support/compare.hpp"
#include "support/shared_data.hpp"

namespace imp = rsq::importance;

namespace {

/// max_i |a_i − b_i| / |b_i|
template <class A, class B>
double max_rel_err(A const& a, B const& b) {
  REQUIRE(a.size() == b.size());
  double e = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    double const ref = double(b.data()[i]);
    e = std::max(e, std::abs(double(a.data()[i]) - ref) / std::max(std::abs(ref), 1e-300));
  }
  return e;
}

template <class T>
xt::xtensor<T, 3> random_tensor(std::size_t a, std::size_t b, std::size_t c, std::uint32_t seed, double sd = 1.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> nd(0.0, sd);
  auto x = xt::xtensor<T, 3>::from_shape({a, b, c});
  for (auto& v : x) v = T(nd(gen));
  return x;
}

/// Row j of a matrix, as an owned vector.
template <class T>
xt::xtensor<T, 1> row_of(xt::xtensor<T, 2> const& m, std::size_t j) {
  auto r = xt::xtensor<T, 1>::from_shape({m.shape(1)});
  for (std::size_t i = 0; i < m.shape(1); ++i) r(i) = m(j, i);
  return r;
}

template <class To, class From, std::size_t N>
xt::xtensor<To, N> cast_to(xt::xtensor<From, N> const& a) {
  auto b = xt::xtensor<To, N>::from_shape(a.shape());
  for (std::size_t i = 0; i < a.size(); ++i) b.data()[i] = To(a.data()[i]);
  return b;
}

struct brute_force_attention {
  std::vector<double> probs;   // (heads, L, L), causal softmax in double
  std::vector<double> scores;  // (L): Σ_h Σ_i A[h, i, t]
};

/// Independent float64 reference: logits q·k·scale, causal mask, softmax with max subtraction, GQA mapping by
/// repeating each KV head heads/kv_heads times (repeat_kv), then the plain double sum over heads and queries.
template <class T>
brute_force_attention brute_force(xt::xtensor<T, 3> const& q, xt::xtensor<T, 3> const& k, double scale = 0) {
  std::size_t const H = q.shape(0), L = q.shape(1), D = q.shape(2), KV = k.shape(0);
  if (scale == 0) scale = 1.0 / std::sqrt(double(D));
  brute_force_attention out{std::vector<double>(H * L * L, 0.0), std::vector<double>(L, 0.0)};
  std::vector<double> logits(L);
  for (std::size_t h = 0; h < H; ++h) {
    std::size_t const g = h / (H / KV);
    for (std::size_t i = 0; i < L; ++i) {
      double mx = -std::numeric_limits<double>::infinity();
      for (std::size_t j = 0; j <= i; ++j) {
        double dot = 0;
        for (std::size_t c = 0; c < D; ++c) dot += double(q(h, i, c)) * double(k(g, j, c));
        logits[j] = dot * scale;
        mx = std::max(mx, logits[j]);
      }
      double z = 0;
      for (std::size_t j = 0; j <= i; ++j) z += std::exp(logits[j] - mx);
      for (std::size_t j = 0; j <= i; ++j) {
        double const p = std::exp(logits[j] - mx) / z;
        out.probs[(h * L + i) * L + j] = p;
        out.scores[j] += p;
      }
    }
  }
  return out;
}

/// Random causal row-stochastic attention in double, with zeros above the diagonal.
xt::xtensor<double, 3> random_attention(std::size_t H, std::size_t L, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  auto a = xt::xtensor<double, 3>::from_shape({H, L, L});
  a.fill(0.0);
  for (std::size_t h = 0; h < H; ++h)
    for (std::size_t i = 0; i < L; ++i) {
      double z = 0;
      for (std::size_t j = 0; j <= i; ++j) z += (a(h, i, j) = u(gen));
      for (std::size_t j = 0; j <= i; ++j) a(h, i, j) /= z;
    }
  return a;
}



/// A backend's scores against a float64 reference: the CPU's measure is the largest elementwise relative error,
/// the other backends' the largest error relative to the largest score (the measure of the former CUDA tests).
template <class Be, class A, class R>
double score_err(A const& got, R const& ref) {
  return rsq_test::is_cpu<Be> ? max_rel_err(got, ref) : rsq_test::max_norm_rel(got, ref);
}

/// AttnCon scores on backend Be from probabilities (heads, L, L) / from queries and keys, host result.
template <class Be, class T>
rsq::vector<T> scores_probs(xt::xtensor<T, 3> const& a, imp::attncon_options const& opt = {}) {
  return imp::attncon_scores(Be{}, rsq::tensor_view<const T, 3>(a), opt);
}
template <class Be, class T>
rsq::vector<T> scores_qk(xt::xtensor<T, 3> const& q, xt::xtensor<T, 3> const& k, imp::attncon_options const& opt = {}) {
  return imp::attncon_scores_qk(Be{}, rsq::tensor_view<const T, 3>(q), rsq::tensor_view<const T, 3>(k), opt);
}

}  // namespace

TEST_SUITE("importance.attncon") {
  TEST_CASE_TEMPLATE("golden: raw scores of sequence 0 from the reference attention probabilities", Be,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(Be);
    RSQ_NEED_SHARED(shared);
    for (std::string const name : {"rsq_l2_wq_attncon_3b_sym_clip.f32", "rsq_l4_w2_attncon_4b_asym_g32_act.f32"}) {
      CAPTURE(name);
      auto const dir = shared / "golden" / name;
      auto const probs = rsq::io::load_npy<float, 3>(dir / "attn_probs_seq0.npy");  // (heads, L, L)
      auto const scores = rsq::io::load_npy<float, 2>(dir / "scores.npy");          // (sequences, L)
      REQUIRE(probs.shape(1) == scores.shape(1));
      auto const ref = row_of(scores, 0);
      CHECK(score_err<Be>(scores_probs<Be>(probs), ref) <= 1e-6);
    }
  }

  TEST_CASE("golden: the policy on a context holding the attention reproduces the reference of sequence 0") {
    RSQ_NEED_SHARED(shared);
    for (std::string const name : {"rsq_l2_wq_attncon_3b_sym_clip.f32", "rsq_l4_w2_attncon_4b_asym_g32_act.f32"}) {
      CAPTURE(name);
      auto const dir = shared / "golden" / name;
      auto const probs = rsq::io::load_npy<float, 3>(dir / "attn_probs_seq0.npy");  // (heads, L, L)
      auto const scores = rsq::io::load_npy<float, 2>(dir / "scores.npy");          // (sequences, L)
      auto const importance = rsq::io::load_npy<float, 2>(dir / "importance.npy");  // (sequences, L)
      auto const ref = row_of(scores, 0);
      CHECK(max_rel_err(imp::attncon_scores(probs), ref) <= 1e-6);  // the CPU function without a backend
      imp::sequence_context ctx{.attention = probs};
      auto const ref_r = row_of(importance, 0);
      CHECK(max_rel_err(imp::attncon{}.scores(ctx), ref) <= 1e-6);
      CHECK(max_rel_err(imp::attncon{}.weights(ctx), ref_r) <= 1e-6);
    }
  }

  TEST_CASE_TEMPLATE("golden: importance of every sequence from the reference scores (default normalisation)", T,
                     float, double) {
    RSQ_NEED_SHARED(shared);
    std::string const suffix = std::is_same_v<T, float> ? ".f32" : ".f64";
    for (std::string const base : {"rsq_l2_wq_attncon_3b_sym_clip", "rsq_l4_w2_attncon_4b_asym_g32_act"}) {
      auto const dir = shared / "golden" / (base + suffix);
      CAPTURE(dir);
      auto const meta = rsq_test::read_text(dir / "meta.json");
      REQUIRE(meta.find("\"r_min\": 0.005") != std::string::npos);
      REQUIRE(meta.find("\"r_max\": 1.0") != std::string::npos);
      // The f64 cases store their scores and importances as float32: read them as T.
      auto const scores = rsq::io::load_npy<T, 2>(dir / "scores.npy", rsq::io::npy_conversion::numeric);
      auto const importance = rsq::io::load_npy<T, 2>(dir / "importance.npy", rsq::io::npy_conversion::numeric);
      REQUIRE(scores.shape() == importance.shape());
      double worst = 0;
      for (std::size_t j = 0; j < scores.shape(0); ++j) {
        auto const s = row_of(scores, j);
        auto const ref = row_of(importance, j);
        auto const r = imp::normalize(s);  // defaults: min-max to [0.005, 1]
        worst = std::max(worst, max_rel_err(r, ref));
      }
      CHECK(worst <= 1e-6);
    }
  }

  TEST_CASE_TEMPLATE("scores from given probabilities equal the brute-force sum over heads and queries", Be,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(Be);
    auto const a = random_attention(3, 37, 11);  // (heads, L, L)
    std::vector<double> ref(37, 0.0);
    for (std::size_t h = 0; h < 3; ++h)
      for (std::size_t i = 0; i < 37; ++i)
        for (std::size_t t = 0; t < 37; ++t) ref[t] += a(h, i, t);
    auto const s = scores_probs<Be>(a);
    if constexpr (rsq_test::is_cpu<Be>) {
      for (std::size_t t = 0; t < 37; ++t) CHECK(s(t) == doctest::Approx(ref[t]).epsilon(1e-13));
    } else {
      CHECK(rsq_test::max_norm_rel(s, ref) < 1e-12);
    }
    // Invariant: every query row sums to 1, so the scores sum to heads · L.
    double total = 0;
    for (auto v : s) total += v;
    CHECK(total == doctest::Approx(3.0 * 37).epsilon(1e-12));
    // Token t collects mass from at most L − t queries per head.
    for (std::size_t t = 0; t < 37; ++t) CHECK(s(t) <= 3.0 * double(37 - t) + 1e-12);
  }

  TEST_CASE_TEMPLATE("entries above the diagonal are not read", Be, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(Be);
    auto a = random_attention(2, 16, 5);
    auto const clean = scores_probs<Be>(a);
    for (std::size_t h = 0; h < 2; ++h)
      for (std::size_t i = 0; i < 16; ++i)
        for (std::size_t j = i + 1; j < 16; ++j) a(h, i, j) = 7.0;
    CHECK(max_rel_err(scores_probs<Be>(a), clean) == 0.0);
    a(1, 3, 9) = std::numeric_limits<double>::quiet_NaN();
    CHECK(max_rel_err(scores_probs<Be>(a), clean) == 0.0);
  }

  TEST_CASE("a batch of attention gives one row per sequence") {
    auto batch = xt::xtensor<double, 4>::from_shape({3, 2, 16, 16});
    for (std::size_t b = 0; b < 3; ++b) {
      auto const one = random_attention(2, 16, 100 + std::uint32_t(b));
      std::copy(one.begin(), one.end(), batch.begin() + std::ptrdiff_t(b * one.size()));
    }
    auto const s = imp::attncon_scores(batch);  // (batch, L)
    REQUIRE(s.shape(0) == 3);
    REQUIRE(s.shape(1) == 16);
    for (std::size_t b = 0; b < 3; ++b) {
      CHECK(max_rel_err(row_of(s, b), imp::attncon_scores(random_attention(2, 16, 100 + std::uint32_t(b)))) <= 1e-15);
    }
    auto const empty = xt::xtensor<double, 4>::from_shape({0, 2, 8, 8});
    CHECK_THROWS_WITH_AS((void)imp::attncon_scores(empty), doctest::Contains("batch >= 1"), rsq::invalid_argument);
  }

  TEST_CASE_TEMPLATE("streamed scores from queries and keys equal a float64 brute-force softmax (GQA, ragged blocks)",
                     Be, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(Be);
    struct shape_case {
      std::size_t heads, kv_heads, L, head_dim;
      rsq::index_t block;
      double sd;
    };
    // L is never a multiple of the CPU's query block; MHA, GQA and MQA; blocks of 1 and larger than L.
    for (auto const c : {shape_case{6, 2, 203, 16, 32, 1.0}, shape_case{4, 4, 97, 8, 64, 1.0},
                         shape_case{8, 1, 50, 32, 7, 1.0}, shape_case{3, 3, 13, 4, 1, 1.0},
                         shape_case{2, 1, 29, 8, 1000, 1.0}, shape_case{8, 2, 150, 32, 64, 2.0}}) {
      CAPTURE(c.heads);
      CAPTURE(c.kv_heads);
      CAPTURE(c.L);
      CAPTURE(c.block);
      auto const q = random_tensor<double>(c.heads, c.L, c.head_dim, 1, c.sd);
      auto const k = random_tensor<double>(c.kv_heads, c.L, c.head_dim, 2, c.sd);
      auto const ref = brute_force(q, k);
      imp::attncon_options const opt{.query_block = c.block};
      CHECK(score_err<Be>(scores_qk<Be>(q, k, opt), ref.scores) <= 1e-12);
      // Probabilities materialised by the CPU give the same scores on every backend.
      auto const p = imp::causal_attention(q, k, opt);  // (heads, L, L)
      CHECK(score_err<Be>(scores_probs<Be>(p), ref.scores) <= 1e-12);
      // float inputs: logits and exponentials in float, sums in double.
      auto const qf = cast_to<float>(q);
      auto const kf = cast_to<float>(k);
      CHECK(score_err<Be>(scores_qk<Be>(qf, kf, opt), brute_force(qf, kf).scores) <= 2e-5);
    }
  }

  TEST_CASE("the materialised causal attention equals the brute force, and its scores the streamed ones") {
    for (auto const& item : {std::tuple{6, 2, 203, 16, 32}, std::tuple{3, 3, 13, 4, 1},
                                                std::tuple{2, 1, 29, 8, 1000}}) {
      // Named copies, not a structured binding: clang 14 cannot capture one in CAPTURE's lambda.
      auto const heads = std::get<0>(item);
      auto const kv = std::get<1>(item);
      auto const L = std::get<2>(item);
      auto const d = std::get<3>(item);
      auto const block = std::get<4>(item);
      CAPTURE(L);
      auto const q = random_tensor<double>(std::size_t(heads), std::size_t(L), std::size_t(d), 1);
      auto const k = random_tensor<double>(std::size_t(kv), std::size_t(L), std::size_t(d), 2);
      imp::attncon_options const opt{.query_block = block};
      auto const p = imp::causal_attention(q, k, opt);  // (heads, L, L)
      CHECK(max_rel_err(p, brute_force(q, k).probs) <= 1e-12);  // includes the exact zeros above the diagonal
      auto const pf = imp::causal_attention(cast_to<float>(q), cast_to<float>(k), opt);
      CHECK(max_rel_err(imp::attncon_scores(pf), imp::attncon_scores_qk(cast_to<float>(q), cast_to<float>(k), opt)) <=
            1e-5);
    }
  }

  TEST_CASE_TEMPLATE("streamed scores: large logits, custom softmax scale, strided views", Be, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(Be);
    // Logits of several hundred would overflow exp without the max subtraction of the log-sum-exp.
    auto const q = random_tensor<float>(4, 70, 16, 3, 8.0);
    auto const k = random_tensor<float>(2, 70, 16, 4, 8.0);
    auto const ref = brute_force(q, k);
    auto const s = scores_qk<Be>(q, k);
    // Logits of ~±500 carry ~1e-4 absolute error in float, so the attention each token receives is accurate to
    // ~1e-4 relative; tokens that receive ~exp(−100) attention (float underflow) are compared absolutely.
    double worst = 0;
    for (std::size_t t = 0; t < s.size(); ++t)
      worst = std::max(worst, std::abs(double(s(t)) - ref.scores[t]) / std::max(1.0, ref.scores[t]));
    CHECK(worst <= 1e-4);
    for (auto v : s) CHECK(std::isfinite(v));

    auto const qd = random_tensor<double>(2, 40, 8, 5);
    auto const kd = random_tensor<double>(1, 40, 8, 6);
    CHECK(score_err<Be>(scores_qk<Be>(qd, kd, {.softmax_scale = 0.05}), brute_force(qd, kd, 0.05).scores) <= 1e-12);

    // (L, heads, head_dim) storage seen as (heads, L, head_dim) through strides, as a caller's projection gives.
    auto const qt = random_tensor<double>(40, 2, 8, 7);  // (L, heads, head_dim)
    rsq::tensor_view<const double, 3> qv(qt.data(), {2, 40, 8}, {8, 16, 1});
    auto qc = xt::xtensor<double, 3>::from_shape({2, 40, 8});
    for (std::size_t h = 0; h < 2; ++h)
      for (std::size_t i = 0; i < 40; ++i)
        for (std::size_t c = 0; c < 8; ++c) qc(h, i, c) = qt(i, h, c);
    auto const sv = imp::attncon_scores_qk(Be{}, qv, rsq::tensor_view<const double, 3>(kd));
    CHECK(score_err<Be>(sv, brute_force(qc, kd).scores) <= 1e-12);
  }

  TEST_CASE_TEMPLATE("inputs and scores in the backend's memory, several query blocks, rejected inputs there", Be,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(Be);
    Be const be{};
    auto const q = random_tensor<float>(4, 700, 64, 3), k = random_tensor<float>(1, 700, 64, 4);
    auto const ref = brute_force(q, k);
    auto const qd = rsq_test::upload(be, q);
    auto const kd = rsq_test::upload(be, k);
    // 64 kB of logits per block on a GPU: 700 queries in blocks of 32 (the smallest block).
    imp::attncon_options const small{.block_bytes = 64 << 10};
    auto const s = imp::attncon_scores_qk(be, qd.view(), kd.view(), small);
    CHECK(score_err<Be>(s, ref.scores) < 2e-5);
    CHECK(score_err<Be>(imp::attncon_scores_qk(be, qd.view(), kd.view()), ref.scores) < 2e-5);
    // The scores left in the backend's memory: the same values.
    auto out = rsq::backend::make_matrix<float>(be, 1, 700);
    imp::attncon_scores_qk(be, qd.view(), kd.view(), rsq::vector_view<float>(rsq::view(out).data(), 700), small);
    auto const back = rsq_test::download(be, rsq::view(out));
    for (std::size_t t = 0; t < 700; ++t) CHECK(back(0, t) == s(t));
    // Probabilities in the backend's memory.
    auto const q2 = random_tensor<double>(2, 40, 8, 6), k2 = random_tensor<double>(2, 40, 8, 7);
    auto probs = imp::causal_attention(q2, k2);
    auto const pd = rsq_test::upload(be, probs);
    CHECK(score_err<Be>(imp::attncon_scores(be, pd.view()), brute_force(q2, k2).scores) <= 1e-12);

    using rsq::invalid_argument;
    auto bad_q = q;
    bad_q(2, 10, 5) = NAN;
    auto const bad_qd = rsq_test::upload(be, bad_q);
    CHECK_THROWS_WITH_AS((void)imp::attncon_scores_qk(be, bad_qd.view(), kd.view()),
                         doctest::Contains("queries has a non-finite value (nan) at [2, 10, 5]"), invalid_argument);
    auto const k3 = rsq_test::upload(be, random_tensor<float>(3, 700, 64, 5));
    CHECK_THROWS_WITH_AS((void)imp::attncon_scores_qk(be, qd.view(), k3.view()),
                         doctest::Contains("not a multiple of the 3 key heads"), invalid_argument);
    probs(1, 7, 3) += 0.5;
    auto const pd_sum = rsq_test::upload(be, probs);
    CHECK_THROWS_WITH_AS((void)imp::attncon_scores(be, pd_sum.view()),
                         doctest::Contains("attention row [1, 7] sums to"), invalid_argument);
    probs(1, 7, 3) = -0.25;
    auto const pd_neg = rsq_test::upload(be, probs);
    CHECK_THROWS_WITH_AS((void)imp::attncon_scores(be, pd_neg.view()), doctest::Contains("at [1, 7, 3]"),
                         invalid_argument);
    CHECK_THROWS_WITH_AS((void)imp::attncon_scores(be, qd.view()), doctest::Contains("heads x tokens x tokens"),
                         invalid_argument);
    auto short_out = rsq::backend::make_matrix<float>(be, 1, 699);
    CHECK_THROWS_WITH_AS(imp::attncon_scores_qk(be, qd.view(), kd.view(),
                                                rsq::vector_view<float>(rsq::view(short_out).data(), 699)),
                         doctest::Contains("a contiguous vector of 700 tokens"), invalid_argument);
  }

  TEST_CASE("the policy uses the attention when given, otherwise the queries and keys") {
    auto const q = random_tensor<double>(4, 33, 8, 8);
    auto const k = random_tensor<double>(2, 33, 8, 9);
    auto const p = imp::causal_attention(q, k);
    imp::basic_sequence_context<double> from_qk{.queries = q, .keys = k};
    imp::basic_sequence_context<double> from_p{.attention = p};
    imp::attncon const policy;
    CHECK(policy.requirements() == imp::needs{.attention = true});
    CHECK(max_rel_err(policy.scores(from_qk), policy.scores(from_p)) <= 1e-12);
    auto const r = policy.weights(from_qk);
    CHECK(max_rel_err(r, policy.weights(from_p)) <= 1e-10);
    CHECK(*std::min_element(r.begin(), r.end()) == doctest::Approx(0.005));
    CHECK(*std::max_element(r.begin(), r.end()) == doctest::Approx(1.0));
  }

  TEST_CASE_TEMPLATE("bad attention probabilities", Be, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(Be);
    auto a = random_attention(2, 8, 1);
    SUBCASE("not square") {
      auto const b = xt::xtensor<double, 3>::from_shape({2, 8, 7});
      CHECK_THROWS_WITH_AS((void)scores_probs<Be>(b), doctest::Contains("heads x tokens x tokens"),
                           rsq::invalid_argument);
    }
    SUBCASE("empty") {
      auto const b = xt::xtensor<double, 3>::from_shape({0, 8, 8});
      CHECK_THROWS_WITH_AS((void)scores_probs<Be>(b), doctest::Contains("heads x tokens x tokens"),
                           rsq::invalid_argument);
    }
    SUBCASE("a row that does not sum to 1") {
      a(1, 5, 2) += 0.5;
      CHECK_THROWS_WITH_AS((void)scores_probs<Be>(a), doctest::Contains("attention row [1, 5] sums to"),
                           rsq::invalid_argument);
    }
    SUBCASE("logits instead of probabilities") {
      auto const logits = random_tensor<double>(2, 8, 8, 3);
      CHECK_THROWS_WITH_AS((void)scores_probs<Be>(logits), doctest::Contains("attncon: attention"),
                           rsq::invalid_argument);
    }
    SUBCASE("non-causal softmax (rows normalised over all keys)") {
      auto full = xt::xtensor<double, 3>::from_shape({1, 8, 8});
      full.fill(1.0 / 8);
      CHECK_THROWS_WITH_AS((void)scores_probs<Be>(full), doctest::Contains("causal part"), rsq::invalid_argument);
    }
    SUBCASE("NaN, Inf and negative entries") {
      a(0, 3, 1) = std::numeric_limits<double>::quiet_NaN();
      CHECK_THROWS_WITH_AS((void)scores_probs<Be>(a), doctest::Contains("finite and >= 0"), rsq::invalid_argument);
      a(0, 3, 1) = std::numeric_limits<double>::infinity();
      CHECK_THROWS_WITH_AS((void)scores_probs<Be>(a), doctest::Contains("finite and >= 0"), rsq::invalid_argument);
      a(0, 3, 1) = -0.1;
      CHECK_THROWS_WITH_AS((void)scores_probs<Be>(a), doctest::Contains("at [0, 3, 1]"), rsq::invalid_argument);
    }
    SUBCASE("tolerance") {
      for (std::size_t j = 0; j <= 4; ++j) a(0, 4, j) *= 1.004;  // bf16-sized error: accepted by default
      CHECK_NOTHROW((void)scores_probs<Be>(a));
      CHECK_THROWS_WITH_AS((void)scores_probs<Be>(a, {.row_sum_tolerance = 1e-3}), doctest::Contains("sums to"),
                           rsq::invalid_argument);
      CHECK_THROWS_WITH_AS((void)scores_probs<Be>(a, {.row_sum_tolerance = -1}),
                           doctest::Contains("row_sum_tolerance must be >= 0"), rsq::invalid_argument);
    }
  }

  TEST_CASE_TEMPLATE("bad queries and keys", Be, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(Be);
    auto q = random_tensor<float>(4, 10, 8, 1);
    auto k = random_tensor<float>(2, 10, 8, 2);
    SUBCASE("token counts differ") {
      auto const k9 = random_tensor<float>(2, 9, 8, 2);
      CHECK_THROWS_WITH_AS((void)scores_qk<Be>(q, k9), doctest::Contains("kv_heads x tokens x head_dim"),
                           rsq::invalid_argument);
    }
    SUBCASE("head_dim differs") {
      auto const k4 = random_tensor<float>(2, 10, 4, 2);
      CHECK_THROWS_WITH_AS((void)scores_qk<Be>(q, k4), doctest::Contains("(2 x 10 x 4)"), rsq::invalid_argument);
    }
    SUBCASE("query heads not a multiple of the KV heads") {
      auto const k3 = random_tensor<float>(3, 10, 8, 2);
      CHECK_THROWS_WITH_AS((void)scores_qk<Be>(q, k3), doctest::Contains("not a multiple of the 3 key heads"),
                           rsq::invalid_argument);
    }
    SUBCASE("empty axes") {
      auto const q0 = xt::xtensor<float, 3>::from_shape({4, 10, 0});
      CHECK_THROWS_WITH_AS((void)scores_qk<Be>(q0, k), doctest::Contains("no empty axis"), rsq::invalid_argument);
      auto const k0 = xt::xtensor<float, 3>::from_shape({0, 10, 8});
      CHECK_THROWS_WITH_AS((void)scores_qk<Be>(q, k0), doctest::Contains("kv_heads x tokens x head_dim"),
                           rsq::invalid_argument);
    }
    SUBCASE("NaN and Inf") {
      q(3, 9, 7) = std::numeric_limits<float>::quiet_NaN();
      CHECK_THROWS_WITH_AS((void)scores_qk<Be>(q, k),
                           doctest::Contains("queries has a non-finite value (nan) at [3, 9, 7]"), rsq::invalid_argument);
      q(3, 9, 7) = 0;
      k(0, 0, 0) = -std::numeric_limits<float>::infinity();
      CHECK_THROWS_WITH_AS((void)scores_qk<Be>(q, k),
                           doctest::Contains("keys has a non-finite value (-inf) at [0, 0, 0]"), rsq::invalid_argument);
    }
    SUBCASE("options") {
      CHECK_THROWS_WITH_AS((void)scores_qk<Be>(q, k, {.query_block = 0}), doctest::Contains("query_block must be >= 1"),
                           rsq::invalid_argument);
      CHECK_THROWS_WITH_AS((void)scores_qk<Be>(q, k, {.block_bytes = 0}), doctest::Contains("block_bytes"),
                           rsq::invalid_argument);
      CHECK_THROWS_WITH_AS((void)scores_qk<Be>(q, k, {.softmax_scale = -1}), doctest::Contains("softmax_scale"),
                           rsq::invalid_argument);
      CHECK_THROWS_WITH_AS((void)scores_qk<Be>(q, k, {.softmax_scale = std::nan("")}),
                           doctest::Contains("softmax_scale"), rsq::invalid_argument);
    }
  }

  TEST_CASE("the CPU functions without a backend, and the policy, reject bad queries, keys and contexts") {
    auto q = random_tensor<float>(4, 10, 8, 1);
    auto k = random_tensor<float>(2, 10, 8, 2);
    SUBCASE("head_dim differs") {
      auto const k4 = random_tensor<float>(2, 10, 4, 2);
      CHECK_THROWS_WITH_AS((void)imp::causal_attention(q, k4), doctest::Contains("(2 x 10 x 4)"),
                           rsq::invalid_argument);
    }
    SUBCASE("no key heads") {
      auto const k0 = xt::xtensor<float, 3>::from_shape({0, 10, 8});
      CHECK_THROWS_WITH_AS((void)imp::attncon_scores_qk(q, k0), doctest::Contains("at least one head"),
                           rsq::invalid_argument);
    }
    SUBCASE("NaN") {
      q(3, 9, 7) = std::numeric_limits<float>::quiet_NaN();
      CHECK_THROWS_WITH_AS((void)imp::attncon_scores_qk(q, k), doctest::Contains("queries has a non-finite value"),
                           rsq::invalid_argument);
    }
    SUBCASE("the policy without attention or queries/keys") {
      imp::sequence_context ctx{.tokens = 10};
      CHECK_THROWS_WITH_AS((void)imp::attncon{}.weights(ctx), doctest::Contains("neither attention probabilities"),
                           rsq::invalid_argument);
      imp::sequence_context only_q{.queries = q};
      CHECK_THROWS_WITH_AS((void)imp::attncon{}.weights(only_q), doctest::Contains("nor queries and keys"),
                           rsq::invalid_argument);
    }
    SUBCASE("the policy with attention of another length than the queries") {
      auto const a = random_attention(4, 9, 1);
      auto const af = cast_to<float>(a);
      imp::sequence_context ctx{.attention = af, .queries = q, .keys = k};
      CHECK_THROWS_WITH_AS((void)imp::attncon{}.weights(ctx),
                           doctest::Contains("queries has 10 tokens, but the context has 9"),
                           rsq::invalid_argument);
    }
  }
}

#if defined(RSQ_WITH_CUDA) && RSQ_WITH_CUDA
TEST_SUITE("importance.attncon.cuda") {
  TEST_CASE("the scores must be written to device memory") {
    RSQ_NEED_DEVICE(rsq::backend::cuda);
    rsq::backend::cuda const be{};
    auto const q = random_tensor<float>(4, 30, 8, 3), k = random_tensor<float>(2, 30, 8, 4);
    std::vector<float> host_out(30);
    CHECK_THROWS_WITH_AS(imp::attncon_scores_qk(be, rsq::tensor_view<const float, 3>(q),
                                                rsq::tensor_view<const float, 3>(k),
                                                rsq::vector_view<float>(host_out.data(), 30)),
                         doctest::Contains("in the backend's memory"), rsq::invalid_argument);
  }
}
#endif
