// SPDX-License-Identifier: MIT
// nn::next_token_loss and nn::final_logits on every backend: against a float64 RMSNorm, classifier and log-softmax
// (sequences of 2 tokens up, vocabularies of 5 to 5000, blocks of tokens with a tail), bf16 within a stated
// tolerance, the hidden states as a column range of a wider matrix, rejected arguments named in the message, repeated
// calls and (on the CPU) 1 and 2 OpenMP threads giving the same bits.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <tuple>
#include <vector>

#include <rsq/nn/loss.hpp>

#include "nn/nn_support.hpp"

using namespace nn_test;

namespace {

struct problem {
  index_t sequences, L, dim, vocab;
};

struct data {
  rsq::matrix<float> hidden, gains, classifier;
  rsq::matrix<std::int32_t> ids;
};

data make_data(problem const& p, unsigned seed) {
  std::mt19937 rng(seed);
  auto ids = rsq::make_matrix<std::int32_t>(p.sequences, p.L);
  for (auto& id : ids) id = std::int32_t(rng() % std::uint32_t(p.vocab));
  return {random_matrix(p.sequences * p.L, p.dim, seed + 1, 2.0), random_matrix(1, p.dim, seed + 2),
          random_matrix(p.vocab, p.dim, seed + 3, 0.5), ids};
}

/// Logits (tokens, vocab) and Σ −log softmax(logits_t)[id_{t+1}] in float64.
struct reference {
  std::vector<double> logits;
  double loss = 0;
};

reference loss_reference(data const& d, problem const& p, double eps) {
  index_t const T = p.sequences * p.L;
  auto const n = rms_norm_reference(d.hidden, d.gains, eps);  // (T, dim)
  reference r{std::vector<double>(std::size_t(T * p.vocab)), 0.0};
  for (index_t t = 0; t < T; ++t) {
    double mx = -INFINITY;
    for (index_t v = 0; v < p.vocab; ++v) {
      double z = 0;
      for (index_t c = 0; c < p.dim; ++c) z += n[std::size_t(t * p.dim + c)] * double(d.classifier(v, c));
      r.logits[std::size_t(t * p.vocab + v)] = z;
      mx = std::max(mx, z);
    }
    if (t % p.L + 1 == p.L) continue;
    double sum = 0;
    for (index_t v = 0; v < p.vocab; ++v) sum += std::exp(r.logits[std::size_t(t * p.vocab + v)] - mx);
    r.loss += mx + std::log(sum) - r.logits[std::size_t(t * p.vocab + d.ids(t / p.L, t % p.L + 1))];
  }
  return r;
}

template <class B>
rsq::nn::loss_sum run_loss(data const& d, problem const& p, rsq::matmul_precision precision = {}) {
  auto const hd = upload<B>(d.hidden);
  auto const gd = upload<B>(d.gains);
  auto const cd = upload<B>(d.classifier);
  return rsq::nn::next_token_loss(B{}, rsq::view(hd), as_vector(gd), rsq::view(cd), rsq::view(d.ids),
                                  {.seq_len = p.L, .norm_eps = 1e-5f, .precision = precision});
}

template <class B>
rsq::matrix<float> run_logits(data const& d, problem const& p, rsq::matmul_precision precision = {}) {
  auto const hd = upload<B>(d.hidden);
  auto const gd = upload<B>(d.gains);
  auto const cd = upload<B>(d.classifier);
  auto logits = rsq::backend::make_matrix<float>(B{}, p.sequences * p.L, p.vocab);
  rsq::nn::final_logits(B{}, rsq::view(hd), as_vector(gd), rsq::view(cd), 1e-5f, rsq::view(logits), precision);
  return download<B>(logits);
}

std::vector<problem> const problems = {{1, 2, 8, 5}, {3, 17, 64, 512}, {2, 100, 48, 1000}, {1, 70, 32, 5000}};

}  // namespace

TEST_SUITE("nn.loss") {
  TEST_CASE_TEMPLATE("next_token_loss and final_logits equal float64 RMSNorm, classifier and log-softmax", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    for (auto const& p : problems) {
      CAPTURE(p.sequences);
      CAPTURE(p.L);
      CAPTURE(p.dim);
      CAPTURE(p.vocab);
      auto const d = make_data(p, 61);
      auto const ref = loss_reference(d, p, 1e-5);
      auto const r = run_loss<B>(d, p);
      CHECK(r.count == p.sequences * (p.L - 1));
      CHECK(std::abs(r.sum - ref.loss) <= 1e-5 * std::abs(ref.loss));
      CHECK(max_rel(run_logits<B>(d, p), ref.logits) < 2e-6);
    }
  }

  TEST_CASE_TEMPLATE("next_token_loss and final_logits in bf16: within 1e-2 of float64", B, RSQ_TEST_BACKENDS) {
    // bf16 inputs of a 64-term dot product: about 0.4% of the logits' scale; the CPU computes fp32 instead.
    RSQ_NEED_DEVICE(B);
    problem const p{3, 17, 64, 512};
    auto const d = make_data(p, 62);
    auto const ref = loss_reference(d, p, 1e-5);
    auto const r = run_loss<B>(d, p, rsq::matmul_precision::bf16);
    CHECK(std::abs(r.sum - ref.loss) <= 1e-2 * std::abs(ref.loss));
    CHECK(max_rel(run_logits<B>(d, p, rsq::matmul_precision::bf16), ref.logits) < 1e-2);
  }

  TEST_CASE_TEMPLATE("next_token_loss and final_logits in their smallest pieces (CUDA: a token per block)", B,
                     RSQ_TEST_BACKENDS) {
    // With no room for a bf16 copy of the classifier, bf16 falls back to fp32 (core/precision.hpp allows it).
    RSQ_NEED_DEVICE(B);
    [[maybe_unused]] small_pieces<B> const pieces;
    problem const p{3, 9, 24, 70};
    auto const d = make_data(p, 69);
    auto const ref = loss_reference(d, p, 1e-5);
    for (auto const precision : {rsq::matmul_precision::fp32, rsq::matmul_precision::bf16}) {
      auto const r = run_loss<B>(d, p, precision);
      CHECK(r.count == p.sequences * (p.L - 1));
      CHECK(std::abs(r.sum - ref.loss) <= 1e-5 * std::abs(ref.loss));
      CHECK(max_rel(run_logits<B>(d, p, precision), ref.logits) < 2e-6);
    }
  }

  TEST_CASE_TEMPLATE("next_token_loss: hidden states as a column range; repeated calls give the same bits", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    problem const p{2, 33, 40, 300};
    auto const d = make_data(p, 63);
    auto wide = random_matrix(p.sequences * p.L, p.dim + 6, 64);
    for (index_t r = 0; r < p.sequences * p.L; ++r)
      for (index_t c = 0; c < p.dim; ++c) wide(r, 4 + c) = d.hidden(r, c);
    auto const wd = upload<B>(wide);
    auto const gd = upload<B>(d.gains);
    auto const cd = upload<B>(d.classifier);
    rsq::nn::loss_options const opt{.seq_len = p.L};
    auto const a =
        rsq::nn::next_token_loss(B{}, column_view(wd, 4, p.dim), as_vector(gd), rsq::view(cd), rsq::view(d.ids), opt);
    auto const b =
        rsq::nn::next_token_loss(B{}, column_view(wd, 4, p.dim), as_vector(gd), rsq::view(cd), rsq::view(d.ids), opt);
    CHECK(a.sum == b.sum);
    CHECK(std::abs(a.sum - loss_reference(d, p, 1e-5).loss) <= 1e-5 * std::abs(a.sum));
  }

  TEST_CASE_TEMPLATE("next_token_loss and final_logits reject bad arguments, naming them", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    problem const p{2, 3, 8, 5};
    auto d = make_data(p, 65);
    auto const hd = upload<B>(d.hidden);
    auto const gd = upload<B>(d.gains);
    auto const cd = upload<B>(d.classifier);
    auto const g7 = upload<B>(random_matrix(1, 7, 66));
    auto const be = B{};
    d.ids(1, 2) = 5;
    CHECK_THROWS_WITH_AS((void)rsq::nn::next_token_loss(be, rsq::view(hd), as_vector(gd), rsq::view(cd),
                                                        rsq::view(d.ids), {.seq_len = 3}),
                         doctest::Contains("next_token_loss: token id 5 at (1, 2) is outside the vocabulary [0, 5)"),
                         rsq::invalid_argument);
    d.ids(1, 2) = 0;
    d.ids(0, 0) = -7;  // position 0 is never a target: not read
    CHECK_NOTHROW((void)rsq::nn::next_token_loss(be, rsq::view(hd), as_vector(gd), rsq::view(cd), rsq::view(d.ids),
                                                 {.seq_len = 3}));
    CHECK_THROWS_WITH_AS((void)rsq::nn::next_token_loss(be, rsq::view(hd), as_vector(gd), rsq::view(cd),
                                                        rsq::view(d.ids), {.seq_len = 2}),
                         doctest::Contains("must be (sequences x seq_len) with seq_len = 2 >= 2"),
                         rsq::invalid_argument);
    auto const one = upload<B>(random_matrix(2, 8, 67));
    auto const ids1 = rsq::make_matrix<std::int32_t>(2, 1);
    CHECK_THROWS_WITH_AS((void)rsq::nn::next_token_loss(be, rsq::view(one), as_vector(gd), rsq::view(cd),
                                                        rsq::view(ids1), {.seq_len = 1}),
                         doctest::Contains("with seq_len = 1 >= 2"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)rsq::nn::next_token_loss(be, rsq::view(hd), as_vector(g7), rsq::view(cd),
                                                        rsq::view(d.ids), {.seq_len = 3}),
                         doctest::Contains("next_token_loss: final_gains (7) and classifier"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)rsq::nn::next_token_loss(be, rsq::view(hd), as_vector(gd), rsq::view(cd),
                                                        rsq::view(d.ids), {.seq_len = 3, .norm_eps = 0.f}),
                         doctest::Contains("next_token_loss: norm_eps must be in (0, 1)"), rsq::invalid_argument);
    auto bad_logits = rsq::backend::make_matrix<float>(B{}, 6, 4);
    CHECK_THROWS_WITH_AS(
        rsq::nn::final_logits(be, rsq::view(hd), as_vector(gd), rsq::view(cd), 1e-5f, rsq::view(bad_logits)),
        doctest::Contains("final_logits: logits must be (6 x 5)"), rsq::invalid_argument);
  }

#if defined(_OPENMP)
  TEST_CASE("next_token_loss and final_logits on the CPU: the same bits for 1 and 2 OpenMP threads") {
    // dim 400: the classifier's depth is past 320, where Eigen's own multi-threaded product would block differently.
    for (auto const& p : {problem{8, 64, 64, 512}, problem{2, 50, 400, 700}}) {
      auto const d = make_data(p, 68);
      rsq::nn::loss_sum a, b;
      rsq::matrix<float> la, lb;
      {
        omp_threads one(1);
        a = run_loss<rsq::backend::cpu_eigen>(d, p);
        la = run_logits<rsq::backend::cpu_eigen>(d, p);
      }
      {
        omp_threads two(2);
        b = run_loss<rsq::backend::cpu_eigen>(d, p);
        lb = run_logits<rsq::backend::cpu_eigen>(d, p);
      }
      CHECK(a.sum == b.sum);
      CHECK(same_bits(la, lb));
    }
  }
#endif
}
