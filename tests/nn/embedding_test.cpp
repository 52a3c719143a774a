// SPDX-License-Identifier: MIT
// nn::embed on every backend: rows of the table copied exactly for ids in host memory (a strided view of them
// included), into rows with a stride; ids outside the vocabulary and shapes that do not match rejected with their
// place named; on the CPU the same bits for 1 and 2 OpenMP threads.
#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <tuple>

#include <rsq/nn/embedding.hpp>

#include "nn/nn_support.hpp"

using namespace nn_test;

namespace {

rsq::matrix<std::int32_t> random_ids(index_t sequences, index_t L, index_t vocab, unsigned seed) {
  std::mt19937 rng(seed);
  auto ids = rsq::make_matrix<std::int32_t>(sequences, L);
  for (auto& id : ids) id = std::int32_t(rng() % std::uint32_t(vocab));
  return ids;
}

rsq::matrix<float> gathered(rsq::matrix<std::int32_t> const& ids, rsq::matrix<float> const& table) {
  index_t const L = index_t(ids.shape()[1]), D = index_t(table.shape()[1]);
  auto x = rsq::make_matrix<float>(index_t(ids.size()), D);
  for (index_t r = 0; r < index_t(ids.size()); ++r)
    for (index_t c = 0; c < D; ++c) x(r, c) = table(ids(r / L, r % L), c);
  return x;
}

}  // namespace

TEST_SUITE("nn.embedding") {
  TEST_CASE_TEMPLATE("embed copies the rows of the table", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    for (auto const& item :
         {std::tuple<index_t, index_t, index_t, index_t>{1, 1, 1, 1}, {2, 7, 10, 64}, {3, 300, 512, 96}}) {
      // Named copies, not a structured binding: clang 14 cannot capture one in CAPTURE's lambda.
      auto const sequences = std::get<0>(item);
      auto const L = std::get<1>(item);
      auto const vocab = std::get<2>(item);
      auto const dim = std::get<3>(item);
      CAPTURE(sequences);
      CAPTURE(L);
      auto const ids = random_ids(sequences, L, vocab, 51);
      auto const table = random_matrix(vocab, dim, 52);
      auto const td = upload<B>(table);
      auto xd = rsq::backend::make_matrix<float>(B{}, sequences * L, dim);
      rsq::nn::embed(B{}, rsq::view(ids), rsq::view(td), rsq::view(xd));
      CHECK(same_bits(download<B>(xd), gathered(ids, table)));
    }
  }

  TEST_CASE_TEMPLATE("embed: strided ids and output rows with a stride", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    index_t const S = 3, L = 9, V = 40, D = 24;
    auto const wide_ids = random_ids(S, 2 * L, V, 53);
    rsq::matrix_view<const std::int32_t> const ids(wide_ids.data(), {S, L}, {2 * L, 2});  // every other id
    auto packed = rsq::make_matrix<std::int32_t>(S, L);
    for (index_t s = 0; s < S; ++s)
      for (index_t t = 0; t < L; ++t) packed(s, t) = ids(s, t);
    auto const table = random_matrix(V, D, 54);
    auto const td = upload<B>(table);
    auto const pad = random_matrix(S * L, D + 5, 55);
    auto xd = upload<B>(pad);
    rsq::nn::embed(B{}, ids, rsq::view(td), column_view(xd, 2, D));
    auto const got = download<B>(xd);
    CHECK(same_bits(columns(got, 2, D), gathered(packed, table)));
    CHECK(same_bits(columns(got, 0, 2), columns(pad, 0, 2)));
    CHECK(same_bits(columns(got, 2 + D, 3), columns(pad, 2 + D, 3)));
  }

  TEST_CASE_TEMPLATE("embed rejects ids outside the vocabulary and shapes that do not match", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const td = upload<B>(random_matrix(10, 8, 56));
    auto xd = rsq::backend::make_matrix<float>(B{}, 6, 8);
    auto ids = random_ids(2, 3, 10, 57);
    ids(1, 2) = 10;
    CHECK_THROWS_WITH_AS(rsq::nn::embed(B{}, rsq::view(ids), rsq::view(td), rsq::view(xd)),
                         doctest::Contains("embed: token id 10 at (1, 2) is outside the vocabulary [0, 10)"),
                         rsq::invalid_argument);
    ids(1, 2) = 0;
    ids(0, 1) = -1;
    CHECK_THROWS_WITH_AS(rsq::nn::embed(B{}, rsq::view(ids), rsq::view(td), rsq::view(xd)),
                         doctest::Contains("embed: token id -1 at (0, 1)"), rsq::invalid_argument);
    ids(0, 1) = 0;
    auto x_bad = rsq::backend::make_matrix<float>(B{}, 5, 8);
    CHECK_THROWS_WITH_AS(rsq::nn::embed(B{}, rsq::view(ids), rsq::view(td), rsq::view(x_bad)),
                         doctest::Contains("embed: x must be (6 x 8)"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::nn::embed(B{}, rsq::matrix_view<const std::int32_t>{}, rsq::view(td), rsq::view(xd)),
                         doctest::Contains("embed: ids must be a non-empty (sequences x L) array"),
                         rsq::invalid_argument);
  }

#if defined(_OPENMP)
  TEST_CASE("embed on the CPU: the same bits for 1 and 2 OpenMP threads") {
    rsq::backend::cpu_eigen const be;
    auto const ids = random_ids(16, 256, 512, 58);
    auto const table = random_matrix(512, 64, 59);
    CHECK(same_bits_for_1_and_2_threads([&] {
      auto x = rsq::make_matrix<float>(16 * 256, 64);
      rsq::nn::embed(be, rsq::view(ids), rsq::view(table), rsq::view(x));
      return x;
    }));
  }
#endif
}
