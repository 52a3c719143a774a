// SPDX-License-Identifier: MIT
// The importance policies (spec §4.3, §4.4) against float64 brute forces of their definitions, the first-N golden
// masks, the context checks, the run-time wrapper and the batch helper.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <rsq/importance/all.hpp>
#include <rsq/io/npy.hpp>

#include "support/shared_data.hpp"

namespace imp = rsq::importance;

static_assert(imp::importance_policy<imp::uniform>);
static_assert(imp::importance_policy<imp::first_n>);
static_assert(imp::importance_policy<imp::attncon>);
static_assert(imp::importance_policy<imp::actnorm, double>);
static_assert(imp::importance_policy<imp::any_policy>);
static_assert(imp::scored_importance_policy<imp::tokenfreq>);
static_assert(imp::scored_importance_policy<imp::tokensim, double>);
static_assert(!imp::scored_importance_policy<imp::first_n>);
static_assert(!imp::importance_policy<int>);

namespace {

template <class T>
rsq::matrix<T> random_matrix(std::size_t rows, std::size_t cols, unsigned seed, double mean = 0.0, double sd = 1.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> nd(mean, sd);
  auto m = rsq::matrix<T>::from_shape({rows, cols});
  for (auto& v : m) v = T(nd(gen));
  return m;
}

/// Brute force of §4.1 "default" in double, with optional reverse.
std::vector<double> min_max(std::vector<double> s, bool reverse = false, double r_min = 0.005, double r_max = 1.0) {
  if (reverse)
    for (auto& v : s) v = -v;
  double const lo = *std::min_element(s.begin(), s.end()), hi = *std::max_element(s.begin(), s.end());
  for (auto& v : s) v = r_min + (v - lo) / (hi - lo) * (r_max - r_min);
  return s;
}

template <class V>
void check_close(V const& got, std::vector<double> const& ref, double eps) {
  REQUIRE(got.size() == ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i) {
    CAPTURE(i);
    CHECK(double(got(i)) == doctest::Approx(ref[i]).epsilon(eps));
  }
}

template <class T>
std::vector<double> row_norms(rsq::matrix<T> const& x) {
  std::vector<double> s(x.shape(0), 0.0);
  for (std::size_t t = 0; t < x.shape(0); ++t) {
    for (std::size_t c = 0; c < x.shape(1); ++c) s[t] += double(x(t, c)) * double(x(t, c));
    s[t] = std::sqrt(s[t]);
  }
  return s;
}

}  // namespace

TEST_SUITE("importance.policies") {
  TEST_CASE_TEMPLATE("golden: first-N masks of the reference (policy first_n_0_8)", T, float, double) {
    RSQ_NEED_SHARED(shared);
    auto const dir = shared / "golden" / (std::string("rsq_l0_wk_firstn_3b_sym_clip") +
                                          (std::is_same_v<T, float> ? ".f32" : ".f64"));
    auto const meta = rsq_test::read_text(dir / "meta.json");
    std::string const key = "\"policy\": \"first_n_";
    auto const at = meta.find(key);
    REQUIRE(at != std::string::npos);
    auto const method = meta.substr(at + key.size(), meta.find('"', at + key.size()) - at - key.size());
    CHECK(method == "0_8");
    auto const ref = rsq::io::load_npy<T, 2>(dir / "importance.npy");  // (sequences, L)
    auto const policy = imp::first_n::from_method(method);
    auto const w = imp::batch_weights(policy, rsq::index_t(ref.shape(0)), [&](rsq::index_t) {
      return imp::basic_sequence_context<T>{.tokens = rsq::index_t(ref.shape(1))};
    });
    REQUIRE(w.shape() == ref.shape());
    CHECK(std::equal(w.begin(), w.end(), ref.begin()));
    // Independent of the reference file: the first L/8 tokens only.
    for (std::size_t t = 0; t < ref.shape(1); ++t) CHECK(w(3, t) == (t < ref.shape(1) / 8 ? T(1) : T(0)));
  }

  TEST_CASE("first_n: chunk masks, parsing, and the L mod P tail") {
    auto const fl = imp::first_n::from_method("0_31_32");
    CHECK(fl.chunks == std::vector<rsq::index_t>{0, 31});
    CHECK(fl.num_chunks == 32);
    CHECK(fl.method() == "0_31_32");
    auto const fl2 = imp::first_n::from_list("0,31/32");
    CHECK(fl2.chunks == fl.chunks);
    CHECK(fl2.num_chunks == fl.num_chunks);
    // L = 100, P = 32: chunks of 3 tokens; chunk 0 = [0, 3), chunk 31 = [93, 96); tokens 96..99 are the tail.
    auto const r = fl.weights(imp::sequence_context{.tokens = 100});
    for (std::size_t t = 0; t < 100; ++t) {
      CAPTURE(t);
      CHECK(r(t) == ((t < 3 || (t >= 93 && t < 96)) ? 1.0f : 0.0f));
    }
    // The default is First-N "0_8"; the length may come from any input.
    auto const x = random_matrix<float>(16, 4, 1);
    auto const r8 = imp::first_n{}.weights(imp::sequence_context{.x_in = x});
    for (std::size_t t = 0; t < 16; ++t) CHECK(r8(t) == (t < 2 ? 1.0f : 0.0f));
    CHECK(imp::first_n::from_method("2_1_4").weights(imp::sequence_context{.tokens = 8})(4) == 1.0f);
  }

  TEST_CASE("first_n: bad chunk strings and lengths") {
    imp::sequence_context const eight{.tokens = 8};
    for (char const* bad : {"", "8", "0_", "_8", "a_8", "0_8x", "0__8", "8_8", "-1_8", "0_0", "0_0_8", "0_+8"}) {
      CAPTURE(bad);
      CHECK_THROWS_WITH_AS((void)imp::first_n::from_method(bad), doctest::Contains("first_n: bad chunk string"),
                           rsq::invalid_argument);
    }
    for (char const* bad : {"0/0", "1,1/4", "0,/8", "0_8", "/8", "0/", "4/4", "0,1/99999999999999999999"}) {
      CAPTURE(bad);
      CHECK_THROWS_WITH_AS((void)imp::first_n::from_list(bad), doctest::Contains("first_n: bad chunk string"),
                           rsq::invalid_argument);
    }
    CHECK_THROWS_WITH_AS((void)imp::first_n::from_list("0,0/4"),
                         doctest::Contains("listed twice"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)imp::first_n{}.weights(imp::sequence_context{.tokens = 7}),
                         doctest::Contains("7 tokens, fewer than the 8 chunks"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)(imp::first_n{.chunks = {}, .num_chunks = 4}.weights(eight)),
                         doctest::Contains("chunk list is empty"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)(imp::first_n{.chunks = {0}, .num_chunks = 0}.weights(eight)),
                         doctest::Contains("num_chunks must be >= 1"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)(imp::first_n{.chunks = {5}, .num_chunks = 4}.weights(eight)),
                         doctest::Contains("chunk 5 is outside [0, 4)"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)(imp::first_n{.chunks = {1, 1}, .num_chunks = 4}.weights(eight)),
                         doctest::Contains("chunk 1 is listed twice"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)imp::first_n{}.weights(imp::sequence_context{}),
                         doctest::Contains("the context has no tokens"),
                         rsq::invalid_argument);
  }

  TEST_CASE("uniform") {
    auto const r = imp::uniform{}.weights(imp::basic_sequence_context<double>{.tokens = 9});
    REQUIRE(r.size() == 9);
    for (auto v : r) CHECK(v == 1.0);
    CHECK_THROWS_WITH_AS((void)imp::uniform{}.weights(imp::sequence_context{.tokens = -2}),
                         doctest::Contains("ctx.tokens must be >= 0"), rsq::invalid_argument);
  }

  TEST_CASE_TEMPLATE("actnorm: L2 norm of each token, input or output", T, float, double) {
    auto const x = random_matrix<T>(57, 33, 2);
    auto const y = random_matrix<T>(57, 33, 3, 0.0, 4.0);
    double const eps = std::is_same_v<T, float> ? 1e-5 : 1e-12;
    imp::basic_sequence_context<T> const ctx{.x_in = x, .x_out = y};
    check_close(imp::actnorm{}.scores(ctx), row_norms(x), eps);
    check_close(imp::actnorm{}.weights(ctx), min_max(row_norms(x)), eps);
    imp::actnorm const out{.source = imp::activation_source::output};
    CHECK(out.requirements() == imp::needs{.x_out = true});
    check_close(out.weights(ctx), min_max(row_norms(y)), eps);
    check_close(imp::actnorm{.normalization = {.r_min = 0.1, .r_max = 1, .reverse = true}}.weights(ctx),
                min_max(row_norms(x), true, 0.1, 1.0), eps);
  }

  TEST_CASE_TEMPLATE("actdiff: norm of the residual update, reversed by default", T, float, double) {
    auto const x = random_matrix<T>(40, 24, 4);
    auto y = random_matrix<T>(40, 24, 5, 0.0, 0.3);
    for (std::size_t i = 0; i < y.size(); ++i) y.data()[i] += x.data()[i];  // x_out = x_in + small update
    std::vector<double> ref(40, 0.0);
    for (std::size_t t = 0; t < 40; ++t) {
      for (std::size_t c = 0; c < 24; ++c) ref[t] += std::pow(double(x(t, c)) - double(y(t, c)), 2);
      ref[t] = std::sqrt(ref[t]);
    }
    double const eps = std::is_same_v<T, float> ? 1e-5 : 1e-12;
    imp::basic_sequence_context<T> const ctx{.x_in = x, .x_out = y};
    imp::actdiff const p;
    CHECK(p.normalization.reverse);
    CHECK(p.requirements() == imp::needs{.x_in = true, .x_out = true});
    check_close(p.scores(ctx), ref, eps);
    auto const r = p.weights(ctx);
    check_close(r, min_max(ref, true), eps);
    // The token with the smallest update gets r_max.
    auto const smallest = std::size_t(std::min_element(ref.begin(), ref.end()) - ref.begin());
    CHECK(r(smallest) == T(1));
  }

  TEST_CASE_TEMPLATE("tokensim: mean squared distance to all tokens (pairwise brute force)", T, float, double) {
    // A large common offset: the Gram expansion would cancel; the centred form must not.
    auto const x = random_matrix<T>(45, 16, 6, 300.0, 1.0);
    std::vector<double> ref(45, 0.0);
    for (std::size_t t = 0; t < 45; ++t) {
      for (std::size_t j = 0; j < 45; ++j)
        for (std::size_t c = 0; c < 16; ++c) ref[t] += std::pow(double(x(t, c)) - double(x(j, c)), 2);
      ref[t] /= 45.0;
    }
    double const eps = std::is_same_v<T, float> ? 1e-5 : 1e-12;
    imp::basic_sequence_context<T> const ctx{.x_in = x};
    check_close(imp::tokensim{}.scores(ctx), ref, eps);
    check_close(imp::tokensim{}.weights(ctx), min_max(ref), std::is_same_v<T, float> ? 1e-4 : 1e-10);
    // An outlier token is the least similar one: it gets r_max.
    auto y = x;
    for (std::size_t c = 0; c < 16; ++c) y(10, c) += T(20);
    CHECK(imp::tokensim{}.weights(imp::basic_sequence_context<T>{.x_in = y})(10) == T(1));
  }

  TEST_CASE("tokenfreq: calibration-set counts of each token's own id, reversed by default") {
    // Calibration set of 3 sequences of 6 ids.
    auto ids = rsq::matrix<std::int64_t>::from_shape({3, 6});
    std::vector<std::int64_t> const flat = {5, 1, 1, 7, 2, 1, 9, 1, 5, 5, 2, 0, 3, 1, 8, 8, 8, 2};
    std::copy(flat.begin(), flat.end(), ids.begin());
    auto const table = imp::token_frequency::from_sequences(rsq::view(ids));
    std::map<std::int64_t, double> counts;
    for (auto id : flat) counts[id] += 1;
    CHECK(table.total() == 18);
    CHECK(table.count(1) == 5);
    CHECK(table.count(4) == 0);
    CHECK(table.count(12345) == 0);
    imp::tokenfreq const p;
    CHECK(p.normalization.reverse);
    CHECK(p.requirements() == imp::needs{.token_ids = true, .token_frequency = true});
    // Each sequence is scored with its *own* ids (the reference's shuffled-list misalignment is not reproduced).
    for (std::size_t j = 0; j < 3; ++j) {
      CAPTURE(j);
      auto const seq = rsq::view(ids)[rsq::index_t(j)];
      imp::sequence_context const ctx{.token_ids = seq, .frequencies = &table};
      std::vector<double> ref(6);
      for (std::size_t t = 0; t < 6; ++t) ref[t] = counts[ids(j, t)];
      check_close(p.scores(ctx), ref, 1e-12);
      check_close(p.weights(ctx), min_max(ref, true), 1e-6);
    }
    // Ids the table has never seen count 0 and are the rarest.
    std::vector<std::int64_t> unseen = {1, 42, 5};
    imp::sequence_context const ctx{.token_ids = rsq::vector_view<const std::int64_t>(unseen.data(), 3),
                                    .frequencies = &table};
    CHECK(p.scores(ctx)(1) == 0.0f);
    CHECK(p.weights(ctx)(1) == 1.0f);

    std::vector<std::int64_t> negative = {1, -3};
    imp::sequence_context const bad{.token_ids = rsq::vector_view<const std::int64_t>(negative.data(), 2),
                                    .frequencies = &table};
    CHECK_THROWS_WITH_AS((void)p.weights(bad), doctest::Contains("token ids must be >= 0, got -3 at index 1"),
                         rsq::invalid_argument);
    imp::token_frequency t2;
    CHECK_THROWS_WITH_AS((void)t2.add(rsq::vector_view<const std::int64_t>(negative.data(), 2)),
                         doctest::Contains("token_frequency: token ids must be >= 0"), rsq::invalid_argument);
    std::vector<int> small = {3, 3, 4};
    t2.add(rsq::vector_view<const int>(small.data(), 3));
    CHECK(t2.count(3) == 2);
  }

  TEST_CASE("missing and inconsistent context inputs") {
    auto const x = random_matrix<float>(10, 8, 7);
    auto const x9 = random_matrix<float>(9, 8, 8);
    auto const x_wide = random_matrix<float>(10, 9, 9);
    imp::sequence_context const only_len{.tokens = 10};
    CHECK_THROWS_WITH_AS((void)imp::actnorm{}.weights(only_len),
                         doctest::Contains("actnorm: the context has no layer input"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)imp::actdiff{}.weights(imp::sequence_context{.x_in = x}),
                         doctest::Contains("actdiff: the context has no FP layer output"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)imp::tokensim{.source = imp::activation_source::output}.weights(
                             imp::sequence_context{.x_in = x}),
                         doctest::Contains("no FP layer output"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)imp::tokenfreq{}.weights(only_len),
                         doctest::Contains("tokenfreq: the context has no token ids"),
                         rsq::invalid_argument);
    std::vector<std::int64_t> ids(10, 1);
    CHECK_THROWS_WITH_AS((void)imp::tokenfreq{}.weights(imp::sequence_context{
                             .token_ids = rsq::vector_view<const std::int64_t>(ids.data(), 10)}),
                         doctest::Contains("no token-frequency table"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)imp::actdiff{}.weights(imp::sequence_context{.x_in = x, .x_out = x9}),
                         doctest::Contains("x_out has 9 tokens, but the context has 10"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)imp::actdiff{}.weights(imp::sequence_context{.x_in = x, .x_out = x_wide}),
                         doctest::Contains("x_out (10 x 9) and x_in (10 x 8) differ in shape"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)imp::actnorm{}.weights(imp::sequence_context{.tokens = 11, .x_in = x}),
                         doctest::Contains("x_in has 10 tokens, but the context has 11"), rsq::invalid_argument);
    std::vector<std::int64_t> ids9(9, 1);
    CHECK_THROWS_WITH_AS((void)imp::actnorm{}.weights(imp::sequence_context{
                             .x_in = x, .token_ids = rsq::vector_view<const std::int64_t>(ids9.data(), 9)}),
                         doctest::Contains("token_ids has 9 tokens"), rsq::invalid_argument);
    auto bad = x;
    bad(4, 2) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH_AS((void)imp::actnorm{}.weights(imp::sequence_context{.x_in = bad}),
                         doctest::Contains("x_in has a non-finite value (nan) at row 4, column 2"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)imp::actdiff{}.weights(imp::sequence_context{.x_in = x, .x_out = bad}),
                         doctest::Contains("x_out has a non-finite value"), rsq::invalid_argument);
    imp::actnorm const inverted{.normalization = {.r_min = 2, .r_max = 1}};
    CHECK_THROWS_WITH_AS((void)inverted.weights(imp::sequence_context{.x_in = x}),
                         doctest::Contains("actnorm: r_min must be <= r_max"), rsq::invalid_argument);
    // satisfies() agrees with require().
    CHECK(imp::sequence_context{.x_in = x}.satisfies(imp::actnorm{}.requirements()));
    CHECK_FALSE(imp::sequence_context{.x_in = x}.satisfies(imp::actdiff{}.requirements()));
    CHECK((imp::needs{.x_in = true} | imp::needs{.attention = true}) == imp::needs{.x_in = true, .attention = true});
  }

  TEST_CASE("any_policy: parsing command-line strings") {
    using imp::any_policy;
    CHECK(any_policy::parse("uniform").name() == "uniform");
    auto const fn = any_policy::parse("first_n:0,31/32");
    REQUIRE(std::holds_alternative<imp::first_n>(fn.get()));
    CHECK(std::get<imp::first_n>(fn.get()).chunks == std::vector<rsq::index_t>{0, 31});
    CHECK(std::get<imp::first_n>(any_policy::parse("first_n:0/8").get()).num_chunks == 8);
    auto const ac = any_policy::parse("attncon", 0.01, 2.0);
    REQUIRE(std::holds_alternative<imp::attncon>(ac.get()));
    CHECK(std::get<imp::attncon>(ac.get()).normalization.r_min == 0.01);
    CHECK(std::get<imp::attncon>(ac.get()).normalization.r_max == 2.0);
    CHECK(ac.requirements() == imp::needs{.attention = true});
    CHECK_FALSE(std::get<imp::actnorm>(any_policy::parse("actnorm").get()).normalization.reverse);
    CHECK_FALSE(std::get<imp::tokensim>(any_policy::parse("tokensim").get()).normalization.reverse);
    CHECK(std::get<imp::actdiff>(any_policy::parse("actdiff").get()).normalization.reverse);
    CHECK(std::get<imp::tokenfreq>(any_policy::parse("tokenfreq").get()).normalization.reverse);
    CHECK(std::get<imp::tokenfreq>(any_policy::parse("tokenfreq").get()).normalization.r_min == 0.005);
    CHECK(any_policy::parse("actdiff").has_scores());
    CHECK_FALSE(any_policy::parse("first_n:0/8").has_scores());

    CHECK_THROWS_WITH_AS((void)any_policy::parse("attn"), doctest::Contains("unknown policy \"attn\""),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)any_policy::parse(""), doctest::Contains("unknown policy"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)any_policy::parse("first_n"),
                         doctest::Contains("needs its chunks"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)any_policy::parse("first_n:0_8"), doctest::Contains("bad chunk string \"0_8\""),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)any_policy::parse("attncon:3"),
                         doctest::Contains("takes no argument but cap_peak"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)any_policy::parse("uniform:cap_peak"), doctest::Contains("takes no argument"),
                         rsq::invalid_argument);
    CHECK(std::get<imp::attncon>(any_policy::parse("attncon:cap_peak").get()).normalization.cap_peak);
    CHECK_FALSE(std::get<imp::attncon>(any_policy::parse("attncon").get()).normalization.cap_peak);
    CHECK(std::get<imp::actnorm>(any_policy::parse("actnorm:cap_peak", 0.1).get()).normalization.r_min == 0.1);
    CHECK_THROWS_WITH_AS((void)any_policy::parse("attncon", 1.0, 0.5), doctest::Contains("r_min must be <= r_max"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)any_policy::parse("actnorm", -1.0), doctest::Contains("r_min must be >= 0"),
                         rsq::invalid_argument);
  }

  TEST_CASE("any_policy gives the same weights as the wrapped policy") {
    auto const x = random_matrix<double>(20, 6, 10);
    auto y = random_matrix<double>(20, 6, 11);
    imp::basic_sequence_context<double> const ctx{.x_in = x, .x_out = y};
    auto same = [](auto const& a, auto const& b) {
      return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
    };
    CHECK(same(imp::any_policy::parse("actnorm").weights(ctx), imp::actnorm{}.weights(ctx)));
    CHECK(same(imp::any_policy::parse("actdiff").weights(ctx), imp::actdiff{}.weights(ctx)));
    CHECK(same(imp::any_policy::parse("tokensim").scores(ctx), imp::tokensim{}.scores(ctx)));
    CHECK(same(imp::any_policy::parse("uniform").weights(ctx), imp::uniform{}.weights(ctx)));
    CHECK(same(imp::any_policy(imp::first_n::from_method("1_4")).weights(ctx),
               imp::first_n::from_method("1_4").weights(ctx)));
    CHECK_THROWS_WITH_AS((void)imp::any_policy::parse("uniform").scores(ctx),
                         doctest::Contains("uniform has no raw scores"),
                         rsq::invalid_argument);
    CHECK(imp::any_policy{}.name() == "uniform");
  }

  TEST_CASE("batch_weights: one row per sequence") {
    std::vector<rsq::matrix<float>> xs;
    for (unsigned j = 0; j < 4; ++j) xs.push_back(random_matrix<float>(12, 5, 20 + j));
    std::vector<imp::sequence_context> ctxs;
    for (auto const& x : xs) ctxs.push_back({.x_in = x});
    auto const w = imp::batch_weights(imp::actnorm{}, ctxs);  // (sequences, L)
    REQUIRE(w.shape(0) == 4);
    REQUIRE(w.shape(1) == 12);
    for (std::size_t j = 0; j < 4; ++j) {
      auto const r = imp::actnorm{}.weights(ctxs[j]);
      for (std::size_t t = 0; t < 12; ++t) CHECK(w(j, t) == r(t));
    }
    auto const w2 =
        imp::batch_weights(imp::any_policy::parse("actnorm"), 4, [&](rsq::index_t j) { return ctxs[std::size_t(j)]; });
    CHECK(std::equal(w.begin(), w.end(), w2.begin()));

    auto const short_x = random_matrix<float>(11, 5, 30);
    ctxs.push_back({.x_in = short_x});
    CHECK_THROWS_WITH_AS((void)imp::batch_weights(imp::actnorm{}, ctxs),
                         doctest::Contains("sequence 4 has 11 tokens, sequence 0 has 12"), rsq::invalid_argument);
    auto const no_context = [](rsq::index_t) { return imp::sequence_context{}; };
    CHECK_THROWS_WITH_AS((void)imp::batch_weights(imp::uniform{}, 0, no_context),
                         doctest::Contains("at least one sequence"), rsq::invalid_argument);
  }
}
