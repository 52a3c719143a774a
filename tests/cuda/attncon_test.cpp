// SPDX-License-Identifier: MIT
// AttnCon on every backend (TEST_CASE_TEMPLATE over RSQ_TEST_BACKENDS through a small adapter): the golden raw scores
// of the reference from its attention probabilities, scores from queries and keys (GQA) against a float64 brute
// force of spec §4.2, and the CUDA-only checks (device inputs, query blocks, rejected inputs).
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include <rsq/importance/attncon.hpp>
#include <rsq/io/npy.hpp>

#include "support/backends.hpp"
#include "support/golden_case.hpp"

namespace {

using rsq::index_t;

template <class B, class T>
rsq::vector<T> scores_from_probs(xt::xtensor<T, 3> const& a) {
  if constexpr (std::is_same_v<B, rsq::backend::cpu_eigen>) return rsq::importance::attncon_scores(a);
  else return rsq::cuda::attncon_scores(B{}, rsq::tensor_view<const T, 3>(a));
}
template <class B, class T>
rsq::vector<T> scores_from_qk(xt::xtensor<T, 3> const& q, xt::xtensor<T, 3> const& k) {
  if constexpr (std::is_same_v<B, rsq::backend::cpu_eigen>) return rsq::importance::attncon_scores_qk(q, k);
  else return rsq::cuda::attncon_scores_qk(B{}, rsq::tensor_view<const T, 3>(q), rsq::tensor_view<const T, 3>(k));
}

template <class T>
xt::xtensor<T, 3> random3(index_t a, index_t b, index_t c, unsigned seed, double sd = 1) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0, sd);
  xt::xtensor<T, 3> x = xt::xtensor<T, 3>::from_shape({std::size_t(a), std::size_t(b), std::size_t(c)});
  for (auto& v : x) v = T(nd(rng));
  return x;
}

// s_t = Σ_h Σ_{i ≥ t} softmax_causal(q_h k_g(h)ᵀ/√d)[i, t], in float64 (spec §4.2).
template <class T>
std::vector<double> brute_force(xt::xtensor<T, 3> const& q, xt::xtensor<T, 3> const& k) {
  index_t const heads = index_t(q.shape()[0]), L = index_t(q.shape()[1]), d = index_t(q.shape()[2]);
  index_t const group = heads / index_t(k.shape()[0]);
  std::vector<double> s(static_cast<std::size_t>(L), 0.0), row(static_cast<std::size_t>(L));
  for (index_t h = 0; h < heads; ++h)
    for (index_t i = 0; i < L; ++i) {
      double m = -INFINITY, sum = 0;
      for (index_t t = 0; t <= i; ++t) {
        double v = 0;
        for (index_t c = 0; c < d; ++c) v += double(q(h, i, c)) * double(k(h / group, t, c));
        row[std::size_t(t)] = v / std::sqrt(double(d));
        m = std::max(m, row[std::size_t(t)]);
      }
      for (index_t t = 0; t <= i; ++t) sum += std::exp(row[std::size_t(t)] - m);
      for (index_t t = 0; t <= i; ++t) s[std::size_t(t)] += std::exp(row[std::size_t(t)] - m) / sum;
    }
  return s;
}

template <class V>
double max_rel(V const& got, std::vector<double> const& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    num = std::max(num, std::abs(double(got(i)) - ref[i]));
    den = std::max(den, std::abs(ref[i]));
  }
  return num / den;
}

}  // namespace

TEST_SUITE("cuda.attncon") {
  TEST_CASE_TEMPLATE("golden raw scores from the reference's attention probabilities", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    RSQ_NEED_SHARED(shared);
    for (std::string const name : {"rsq_l2_wq_attncon_3b_sym_clip.f32", "rsq_l4_w2_attncon_4b_asym_g32_act.f32"}) {
      CAPTURE(name);
      auto const dir = shared / "golden" / name;
      auto const probs = rsq::io::load_npy<float, 3>(dir / "attn_probs_seq0.npy");  // (heads, L, L)
      auto const scores = rsq::io::load_npy<float, 2>(dir / "scores.npy");          // (sequences, L)
      std::vector<double> ref(scores.shape()[1]);
      for (std::size_t t = 0; t < ref.size(); ++t) ref[t] = scores(0, t);
      CHECK(max_rel(scores_from_probs<B>(probs), ref) <= 1e-6);
    }
  }

  TEST_CASE_TEMPLATE("scores from queries and keys equal the float64 brute force (GQA, float and double)", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const q = random3<double>(8, 150, 32, 1, 2.0), k = random3<double>(2, 150, 32, 2, 2.0);
    auto const ref = brute_force(q, k);
    CHECK(max_rel(scores_from_qk<B>(q, k), ref) < 1e-12);
    xt::xtensor<float, 3> const qf = xt::cast<float>(q), kf = xt::cast<float>(k);
    CHECK(max_rel(scores_from_qk<B>(qf, kf), ref) < 2e-5);
    // Probabilities materialised by the CPU give the same scores on every backend.
    auto const probs = rsq::importance::causal_attention(q, k);
    CHECK(max_rel(scores_from_probs<B>(probs), ref) < 1e-12);
  }
}

TEST_SUITE("cuda.attncon.device") {
  TEST_CASE("device inputs, several query blocks, rejected inputs") {
    RSQ_NEED_DEVICE(rsq::backend::cuda);
    rsq::backend::cuda const be{};
    auto const q = random3<float>(4, 700, 64, 3), k = random3<float>(1, 700, 64, 4);
    auto const ref = brute_force(q, k);
    rsq::cuda::device_array<float> qd{index_t(q.size())}, kd{index_t(k.size())};
    qd.upload(q.data(), be);
    kd.upload(k.data(), be);
    rsq::tensor_view<const float, 3> qv(qd.data(), {4, 700, 64}), kv(kd.data(), {1, 700, 64});
    // 64 kB of logits per block: 700 queries in blocks of 32 (the smallest block).
    auto const s = rsq::cuda::attncon_scores_qk(be, qv, kv, {.block_bytes = 64 << 10});
    CHECK(max_rel(s, ref) < 2e-5);
    CHECK(max_rel(rsq::cuda::attncon_scores_qk(be, qv, kv), ref) < 2e-5);

    using rsq::invalid_argument;
    auto bad_q = q;
    bad_q(2, 10, 5) = NAN;
    CHECK_THROWS_WITH_AS((void)rsq::cuda::attncon_scores_qk(be, rsq::tensor_view<const float, 3>(bad_q), kv),
                         doctest::Contains("queries has a non-finite value (nan) at [2, 10, 5]"), invalid_argument);
    auto const k3 = random3<float>(3, 700, 64, 5);
    CHECK_THROWS_WITH_AS((void)rsq::cuda::attncon_scores_qk(be, qv, rsq::tensor_view<const float, 3>(k3)),
                         doctest::Contains("not a multiple of the 3 key heads"), invalid_argument);
    auto probs = rsq::importance::causal_attention(random3<float>(2, 40, 8, 6), random3<float>(2, 40, 8, 7));
    probs(1, 7, 3) += 0.5f;
    CHECK_THROWS_WITH_AS((void)rsq::cuda::attncon_scores(be, rsq::tensor_view<const float, 3>(probs)),
                         doctest::Contains("attention row [1, 7] sums to"), invalid_argument);
    probs(1, 7, 3) = -0.25f;
    CHECK_THROWS_WITH_AS((void)rsq::cuda::attncon_scores(be, rsq::tensor_view<const float, 3>(probs)),
                         doctest::Contains("at [1, 7, 3]"), invalid_argument);
    CHECK_THROWS_WITH_AS((void)rsq::cuda::attncon_scores(be, qv), doctest::Contains("heads x tokens x tokens"),
                         invalid_argument);
  }
}
