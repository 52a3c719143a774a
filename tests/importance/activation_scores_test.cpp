// SPDX-License-Identifier: MIT
// importance::activation_scores on every backend (TEST_CASE_TEMPLATE over RSQ_TEST_BACKENDS):
//  - each statistic (ActNorm's norm, ActDiff's distance, TokenSim's spread) against a float64 brute force of its
//    definition written here (TokenSim pairwise, (1/L) Σ_j ‖x_t − x_j‖²), for several sequences, seq_len 1 and
//    ragged sizes (features and tokens past one block of 256 threads), float and double inputs;
//  - rows with a pitch (x, x_ref and out as column blocks of wider matrices; the columns around out untouched);
//  - the same scores as the policies' scores() (actnorm, actdiff, tokensim; input and output sources), sequence by
//    sequence: bit for bit on the CPU, whose policies compute through the same code, within a float ulp elsewhere;
//  - NaN/Inf in x or x_ref rejected with the policies' message naming the first one, and bad shapes named;
//  - the same bits from run to run, and on the CPU for 1 and 2 OpenMP threads.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <rsq/backend/memory.hpp>
#include <rsq/importance/activation_scores.hpp>
#include <rsq/importance/actdiff.hpp>
#include <rsq/importance/actnorm.hpp>
#include <rsq/importance/tokensim.hpp>

#include "support/backends.hpp"

namespace imp = rsq::importance;
using rsq::index_t;
using statistic = imp::activation_statistic;

namespace {

constexpr statistic all_statistics[] = {statistic::norm, statistic::distance, statistic::spread};

char const* name_of(statistic s) {
  return s == statistic::norm ? "norm" : s == statistic::distance ? "distance" : "spread";
}

template <class T>
rsq::matrix<T> random_matrix(index_t rows, index_t cols, unsigned seed, double mean = 0.0, double sd = 1.0) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> nd(mean, sd);
  auto m = rsq::make_matrix<T>(rows, cols);
  for (auto& v : m) v = T(nd(gen));
  return m;
}

/// x + N(0, sd²) noise: ActDiff's FP output, a small residual update of the input.
template <class T>
rsq::matrix<T> perturbed(rsq::matrix<T> const& x, unsigned seed, double sd = 0.3) {
  auto y = random_matrix<T>(index_t(x.shape(0)), index_t(x.shape(1)), seed, 0.0, sd);
  for (std::size_t i = 0; i < y.size(); ++i) y.data()[i] += x.data()[i];
  return y;
}

/// The float64 definitions of spec §4.4, one score per row of x (sequences of L rows).
template <class T>
std::vector<double> brute_force(statistic s, rsq::matrix<T> const& x, rsq::matrix<T> const& ref, index_t L) {
  std::size_t const rows = x.shape(0), d = x.shape(1);
  std::vector<double> out(rows, 0.0);
  for (std::size_t r = 0; r < rows; ++r) {
    double acc = 0;
    if (s == statistic::spread) {  // (1/L) Σ_j ‖x_t − x_j‖² over the tokens j of the same sequence, pairwise
      std::size_t const j0 = r / std::size_t(L) * std::size_t(L);
      for (std::size_t j = j0; j < j0 + std::size_t(L); ++j)
        for (std::size_t c = 0; c < d; ++c) acc += std::pow(double(x(r, c)) - double(x(j, c)), 2);
      out[r] = acc / double(L);
    } else {
      for (std::size_t c = 0; c < d; ++c)
        acc += std::pow(double(x(r, c)) - (s == statistic::distance ? double(ref(r, c)) : 0.0), 2);
      out[r] = std::sqrt(acc);
    }
  }
  return out;
}

template <class B, class T>
auto upload(rsq::matrix<T> const& h) {
  return rsq::backend::to_backend(B{}, rsq::matrix_view<const T>(h));
}

/// The scores of the front end on backend B for host inputs, as a host (sequences, L) matrix.
template <class B, class T>
rsq::matrix<float> scores_on(statistic s, rsq::matrix<T> const& x, rsq::matrix<T> const& ref, index_t L) {
  B const be{};
  auto const xd = upload<B>(x);
  auto const rd = upload<B>(ref);
  auto out = rsq::backend::make_matrix<float>(be, index_t(x.shape(0)) / L, L);
  imp::activation_scores(be, s, rsq::view(xd), rsq::view(rd), L, rsq::view(out));
  return rsq::backend::to_host(be, rsq::view(out));
}

bool same_bits(rsq::matrix<float> const& a, rsq::matrix<float> const& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// |got − ref| ≤ rel·|ref| for every score (rel covers the rounding to float; the float64 sums differ far less).
void check_close(rsq::matrix<float> const& got, std::vector<double> const& ref, double rel) {
  REQUIRE(got.size() == ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i) {
    CAPTURE(i);
    CHECK(std::abs(double(got.data()[i]) - ref[i]) <= rel * std::abs(ref[i]));
  }
}

template <class B, class T>
void check_brute_force() {
  // (sequences, seq_len, hidden, mean of the entries): one token, one feature, seq_len 1, ragged sizes, rows past
  // one block of 256 threads (4096, 300 features) and sequences past it (300 tokens), a large common offset (TokenSim
  // must not cancel).
  for (auto const& shape : {std::tuple<index_t, index_t, index_t, double>{1, 1, 1, 0.0},
                                      {3, 1, 17, 0.0},
                                      {2, 7, 33, 0.5},
                                      {4, 13, 300, 300.0},
                                      {1, 64, 4096, 0.0},
                                      {5, 129, 257, 1.0},
                                      {2, 300, 5, 0.0}}) {
    // Named variables, not a structured binding: clang 14 cannot capture one in CAPTURE's lambda.
    index_t const S = std::get<0>(shape), L = std::get<1>(shape), d = std::get<2>(shape);
    double const mean = std::get<3>(shape);
    CAPTURE(S);
    CAPTURE(L);
    CAPTURE(d);
    auto const x = random_matrix<T>(S * L, d, unsigned(S * 1000 + L * 10 + d), mean);
    auto const y = perturbed(x, unsigned(d + 7));
    for (statistic s : all_statistics) {
      CAPTURE(name_of(s));
      auto const got = scores_on<B>(s, x, y, L);
      REQUIRE(index_t(got.shape(0)) == S);
      REQUIRE(index_t(got.shape(1)) == L);
      check_close(got, brute_force(s, x, y, L), 2e-7);
    }
  }
}

template <class B, class T>
void check_policies() {
  index_t const S = 3, L = 37, d = 300;
  auto const x = random_matrix<T>(S * L, d, 11, 2.0, 3.0);
  auto const y = perturbed(x, 12, 0.5);
  std::tuple<statistic, bool, rsq::matrix<float>> const cases[] = {
      {statistic::norm, false, scores_on<B>(statistic::norm, x, y, L)},        // actnorm on x_in
      {statistic::norm, true, scores_on<B>(statistic::norm, y, x, L)},         // actnorm on x_out
      {statistic::distance, false, scores_on<B>(statistic::distance, x, y, L)},  // actdiff
      {statistic::spread, false, scores_on<B>(statistic::spread, x, y, L)},    // tokensim on x_in
      {statistic::spread, true, scores_on<B>(statistic::spread, y, x, L)},     // tokensim on x_out
  };
  auto const source = [](bool output) {
    return output ? imp::activation_source::output : imp::activation_source::input;
  };
  for (index_t j = 0; j < S; ++j) {
    CAPTURE(j);
    imp::basic_sequence_context<T> const ctx{.x_in = rsq::matrix_view<const T>(x.data() + j * L * d, L, d),
                                             .x_out = rsq::matrix_view<const T>(y.data() + j * L * d, L, d)};
    for (auto const& c : cases) {
      statistic const s = std::get<0>(c);  // named variables (see above)
      bool const output = std::get<1>(c);
      auto const& got = std::get<2>(c);
      CAPTURE(name_of(s));
      CAPTURE(output);
      rsq::vector<T> const policy = s == statistic::norm       ? imp::actnorm{.source = source(output)}.scores(ctx)
                                    : s == statistic::distance ? imp::actdiff{}.scores(ctx)
                                                          : imp::tokensim{.source = source(output)}.scores(ctx);
      REQUIRE(index_t(policy.size()) == L);
      for (index_t t = 0; t < L; ++t) {
        CAPTURE(t);
        float const expected = float(policy(std::size_t(t)));  // a double policy score rounds to the same float
        if constexpr (std::is_same_v<B, rsq::backend::cpu_eigen>)
          CHECK(got(std::size_t(j), std::size_t(t)) == expected);
        else
          CHECK(std::abs(got(std::size_t(j), std::size_t(t)) - expected) <= 3e-7f * std::abs(expected));
      }
    }
  }
}

#if defined(_OPENMP)
/// Sets the OpenMP thread count for a scope.
struct omp_threads {
  int saved;
  explicit omp_threads(int n) : saved(omp_get_max_threads()) { omp_set_num_threads(n); }
  omp_threads(omp_threads const&) = delete;
  omp_threads& operator=(omp_threads const&) = delete;
  ~omp_threads() { omp_set_num_threads(saved); }
};

template <class T>
void check_thread_counts() {
  // Past the parallel threshold; 700 features = 3 column blocks of the mean per sequence.
  index_t const S = 3, L = 300, d = 700;
  auto const x = random_matrix<T>(S * L, d, 21, 1.0, 2.0);
  auto const y = perturbed(x, 22);
  for (statistic s : all_statistics) {
    CAPTURE(name_of(s));
    rsq::matrix<float> one, two;
    {
      omp_threads const t(1);
      one = scores_on<rsq::backend::cpu_eigen>(s, x, y, L);
    }
    {
      omp_threads const t(2);
      two = scores_on<rsq::backend::cpu_eigen>(s, x, y, L);
    }
    CHECK(same_bits(one, two));
  }
  // The policies (one long sequence) on 1 and 2 threads.
  auto const long_x = random_matrix<T>(2000, 200, 23);
  imp::basic_sequence_context<T> const ctx{.x_in = long_x};
  rsq::vector<T> a, b;
  {
    omp_threads const t(1);
    a = imp::tokensim{}.scores(ctx);
  }
  {
    omp_threads const t(2);
    b = imp::tokensim{}.scores(ctx);
  }
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}
#endif

}  // namespace

TEST_SUITE("importance.activation_scores") {
  TEST_CASE_TEMPLATE("each statistic equals a float64 brute force of its definition", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    SUBCASE("float inputs") { check_brute_force<B, float>(); }
    SUBCASE("double inputs") { check_brute_force<B, double>(); }
  }

  TEST_CASE_TEMPLATE("rows with a pitch: x, x_ref and out inside wider matrices", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    index_t const S = 3, L = 5, d = 40, pad = 7;
    auto const x = random_matrix<float>(S * L, d, 31);
    auto const y = perturbed(x, 32);
    // x at columns [3, 3 + d) and y at [pad, pad + d) of wider matrices; out at columns [2, 2 + L) of (S, L + 4).
    auto wide_x = random_matrix<float>(S * L, d + pad, 33), wide_y = random_matrix<float>(S * L, d + pad, 34);
    for (index_t r = 0; r < S * L; ++r)
      for (index_t c = 0; c < d; ++c) {
        wide_x(std::size_t(r), std::size_t(3 + c)) = x(std::size_t(r), std::size_t(c));
        wide_y(std::size_t(r), std::size_t(pad + c)) = y(std::size_t(r), std::size_t(c));
      }
    auto const sentinel = random_matrix<float>(S, L + 4, 35);
    auto const xd = upload<B>(wide_x);
    auto const yd = upload<B>(wide_y);
    rsq::matrix_view<const float> const xv(rsq::view(xd).data() + 3, {S * L, d}, {d + pad, 1});
    rsq::matrix_view<const float> const yv(rsq::view(yd).data() + pad, {S * L, d}, {d + pad, 1});
    for (statistic s : all_statistics) {
      CAPTURE(name_of(s));
      auto out = upload<B>(sentinel);
      rsq::matrix_view<float> const ov(rsq::view(out).data() + 2, {S, L}, {L + 4, 1});
      imp::activation_scores(be, s, xv, yv, L, ov);
      auto const got = rsq::backend::to_host(be, rsq::view(out));
      auto const expected = scores_on<B>(s, x, y, L);
      for (std::size_t j = 0; j < std::size_t(S); ++j)
        for (std::size_t c = 0; c < std::size_t(L + 4); ++c) {
          CAPTURE(j);
          CAPTURE(c);
          if (c >= 2 && c < std::size_t(2 + L))
            CHECK(got(j, c) == expected(j, c - 2));  // the same arithmetic as on contiguous rows
          else
            CHECK(got(j, c) == sentinel(j, c));
        }
    }
  }

  TEST_CASE_TEMPLATE("the policies' scores() agree sequence by sequence, bit for bit on the CPU", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    SUBCASE("float") { check_policies<B, float>(); }
    SUBCASE("double") { check_policies<B, double>(); }
  }

  TEST_CASE_TEMPLATE("NaN and Inf in x or x_ref are rejected with the policies' messages", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    index_t const L = 5;
    auto const x = random_matrix<float>(2 * L, 8, 41);
    auto const y = perturbed(x, 42);
    auto bad = x;
    bad(8, 0) = std::numeric_limits<float>::infinity();  // later in row-major order than the NaN below
    bad(7, 3) = std::numeric_limits<float>::quiet_NaN();
    bad(7, 6) = -std::numeric_limits<float>::infinity();
    auto bad_ref = y;
    bad_ref(2, 5) = -std::numeric_limits<float>::infinity();
    auto const xd = upload<B>(x), yd = upload<B>(y), bad_d = upload<B>(bad), bad_ref_d = upload<B>(bad_ref);
    auto out = rsq::backend::make_matrix<float>(be, 2, L);
    for (statistic s : all_statistics) {
      CAPTURE(name_of(s));
      CHECK_THROWS_WITH_AS(
          imp::activation_scores(be, s, rsq::view(bad_d), rsq::view(yd), L, rsq::view(out)),
          doctest::Contains("rsq: activation_scores: x has a non-finite value (nan) at row 7, column 3"),
          rsq::invalid_argument);
    }
    CHECK_THROWS_WITH_AS(
        imp::activation_scores(be, statistic::distance, rsq::view(xd), rsq::view(bad_ref_d), L, rsq::view(out)),
        doctest::Contains("rsq: activation_scores: x_ref has a non-finite value (-inf) at row 2, column 5"),
        rsq::invalid_argument);
    // Named as the policies name them; x is checked before x_ref.
    imp::activation_names const names{.x = "x_in", .x_ref = "x_out"};
    CHECK_THROWS_WITH_AS(
        imp::activation_scores(be, statistic::distance, rsq::view(bad_d), rsq::view(bad_ref_d), L, rsq::view(out), names),
        doctest::Contains("rsq: x_in has a non-finite value (nan) at row 7, column 3"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(
        imp::activation_scores(be, statistic::distance, rsq::view(xd), rsq::view(bad_ref_d), L, rsq::view(out), names),
        doctest::Contains("rsq: x_out has a non-finite value (-inf) at row 2, column 5"), rsq::invalid_argument);
    // Inf in double inputs; x_ref is not read by norm and spread.
    auto bad64 = random_matrix<double>(2 * L, 8, 43);
    bad64(9, 7) = std::numeric_limits<double>::infinity();
    auto const bad64_d = upload<B>(bad64);
    auto const x64_d = upload<B>(random_matrix<double>(2 * L, 8, 44));
    CHECK_THROWS_WITH_AS(imp::activation_scores(be, statistic::spread, rsq::view(bad64_d), rsq::view(x64_d), L,
                                                rsq::view(out)),
                         doctest::Contains("x has a non-finite value (inf) at row 9, column 7"), rsq::invalid_argument);
    CHECK_NOTHROW(imp::activation_scores(be, statistic::norm, rsq::view(x64_d), rsq::view(bad64_d), L, rsq::view(out)));
    CHECK_NOTHROW(imp::activation_scores(be, statistic::spread, rsq::view(xd), rsq::view(bad_ref_d), L, rsq::view(out)));
  }

  TEST_CASE_TEMPLATE("bad shapes and arguments are rejected, naming them", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    auto const xd = upload<B>(random_matrix<float>(10, 8, 51));
    auto const x7 = upload<B>(random_matrix<float>(10, 7, 52));
    auto out = rsq::backend::make_matrix<float>(be, 2, 5);
    auto out4 = rsq::backend::make_matrix<float>(be, 2, 4);
    auto const x = rsq::view(xd);
    rsq::matrix_view<const float> const none{};
    auto const expect = [&](auto&& call, std::string const& what) {
      CAPTURE(what);
      CHECK_THROWS_WITH_AS(call(), doctest::Contains(what.c_str()), rsq::invalid_argument);
    };
    expect([&] { imp::activation_scores(be, statistic::norm, x, none, 0, rsq::view(out)); },
           "activation_scores: seq_len must be >= 1, got 0");
    expect([&] { imp::activation_scores(be, statistic::norm, x, none, 3, rsq::view(out)); },
           "activation_scores: x (10 x 8) must be (sequences·seq_len x hidden), but its 10 rows are not a multiple "
           "of seq_len 3");
    expect([&] { imp::activation_scores(be, statistic::norm, x, none, 5, rsq::view(out4)); },
           "activation_scores: out must be (2 x 5) (sequences x seq_len), got (2 x 4)");
    expect([&] { imp::activation_scores(be, statistic::norm, x, none, 2, rsq::view(out)); },
           "activation_scores: out must be (5 x 2) (sequences x seq_len), got (2 x 5)");
    expect([&] { imp::activation_scores(be, statistic::distance, x, none, 5, rsq::view(out)); },
           "activation_scores: the distance statistic needs x_ref");
    expect([&] { imp::activation_scores(be, statistic::distance, x, rsq::view(x7), 5, rsq::view(out)); },
           "activation_scores: x_ref (10 x 7) must have the shape of x (10 x 8)");
    expect([&] { imp::activation_scores(be, statistic::norm, none, none, 5, rsq::view(out)); },
           "activation_scores: x is empty (0 x 0)");
    expect([&] {
      imp::activation_scores(be, statistic::norm, rsq::matrix_view<const float>(x.data(), {10, 4}, {8, 2}), none, 5,
                             rsq::view(out));
    }, "activation_scores: x must have contiguous rows (column stride 1), got stride 2");
    expect([&] {  // (never read: the check comes first)
      imp::activation_scores(be, statistic::norm, x, none, 5, rsq::matrix_view<float>(rsq::view(out).data(), {2, 5},
                                                                                  {10, 2}));
    }, "activation_scores: out must have contiguous rows (column stride 1), got stride 2");
    expect([&] { imp::activation_scores(be, static_cast<statistic>(7), x, none, 5, rsq::view(out)); },
           "activation_scores: unknown statistic 7");
    if constexpr (!std::is_same_v<B, rsq::backend::cpu_eigen>) {
      auto const host_x = random_matrix<float>(10, 8, 53);
      auto host_out = rsq::make_matrix<float>(2, 5);
      expect([&] { imp::activation_scores(be, statistic::norm, rsq::view(host_x), none, 5, rsq::view(out)); },
             "activation_scores: x is not in the backend's memory");
      expect([&] { imp::activation_scores(be, statistic::distance, x, rsq::view(host_x), 5, rsq::view(out)); },
             "activation_scores: x_ref is not in the backend's memory");
      expect([&] { imp::activation_scores(be, statistic::norm, x, none, 5, rsq::view(host_out)); },
             "activation_scores: out is not in the backend's memory");
    }
  }

  TEST_CASE_TEMPLATE("the same bits from run to run", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    index_t const S = 4, L = 257, d = 1000;
    auto const x = random_matrix<float>(S * L, d, 61, 0.5, 4.0);
    auto const y = perturbed(x, 62);
    for (statistic s : all_statistics) {
      CAPTURE(name_of(s));
      CHECK(same_bits(scores_on<B>(s, x, y, L), scores_on<B>(s, x, y, L)));
    }
  }

#if defined(_OPENMP)
  TEST_CASE("on the CPU: the same bits for 1 and 2 OpenMP threads") {
    SUBCASE("float") { check_thread_counts<float>(); }
    SUBCASE("double") { check_thread_counts<double>(); }
  }
#endif
}
