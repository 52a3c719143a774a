// SPDX-License-Identifier: MIT
// GPU packing of a device-resident GPTQ result into the AutoGPTQ / GPTQModel int32 layout: bit for bit what the host
// packer (rsq::pack::pack_gptq) gives for the same result, for every bit width and both zero formats, and unpacking
// gives back the solver's codes, scales and zeros; bad results are rejected with the host packer's messages.
#include <doctest/doctest.h>

#include <random>

#include <rsq/pack/gptq_format.hpp>

#include "support/backends.hpp"

namespace {

using rsq::index_t;

rsq::matrix<float> random_matrix(index_t rows, index_t cols, unsigned seed, double shift = 0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(shift, 1.0);
  auto m = rsq::make_matrix<float>(rows, cols);
  for (auto& v : m) v = float(nd(rng));
  return m;
}

rsq::matrix<float> spd(index_t n, unsigned seed) {
  auto const x = random_matrix(3 * n, n, seed);
  auto h = rsq::make_matrix<float>(n, n);
  for (index_t a = 0; a < n; ++a)
    for (index_t b = 0; b <= a; ++b) {
      double s = 0;
      for (index_t t = 0; t < 3 * n; ++t) s += double(x(t, a)) * double(x(t, b));
      h(a, b) = h(b, a) = float(s / double(n));
    }
  return h;
}

}  // namespace

TEST_SUITE("cuda.pack") {
  TEST_CASE("GPU packing equals the host packer for 2, 3, 4, 8 bits, v1 and v2, groups and act-order") {
    RSQ_NEED_DEVICE(rsq::backend::cuda);
    rsq::backend::cuda const be{};
    index_t const rows = 64, cols = 96;
    auto const w = random_matrix(rows, cols, 1);
    auto const h = spd(cols, 2);
    for (int bits : {2, 3, 4, 8})
      for (index_t group : {index_t(-1), index_t(32)})
        for (bool act : {false, true}) {
          CAPTURE(bits);
          CAPTURE(group);
          CAPTURE(act);
          rsq::gptq::options const o{.group_size = group, .act_order = act};
          auto const f = rsq::gptq::factor(be, h, o);
          // Symmetric grids have zero 2^(b-1) >= 1, so both formats can store them.
          auto const dr = rsq::cuda::solve_device(be, w, f, {.bits = bits, .symmetric = true}, o);
          auto const host = dr.to_host(be);
          for (auto fmt : {rsq::pack::zero_format::v1, rsq::pack::zero_format::v2}) {
            auto const got = rsq::cuda::pack_gptq(be, dr, fmt);
            auto const ref = rsq::pack::pack_gptq(rsq::view(host.weight.codes), rsq::view(host.weight.scales),
                                                  rsq::view(host.weight.zeros), rsq::view(host.weight.g_idx), bits,
                                                  fmt);
            CHECK(got.qweight == ref.qweight);
            CHECK(got.qzeros == ref.qzeros);
            CHECK(got.scales == ref.scales);
            CHECK(got.g_idx == ref.g_idx);
            auto const back = rsq::pack::unpack_gptq(got);
            CHECK(back.codes == host.weight.codes);
          }
        }
  }

  TEST_CASE("bad results are rejected with the host packer's messages") {
    RSQ_NEED_DEVICE(rsq::backend::cuda);
    rsq::backend::cuda const be{};
    // All-positive rows give asymmetric zeros of 0, which zero_format::v1 cannot store.
    auto const w = random_matrix(32, 64, 3, 10.0);
    auto const h = spd(64, 4);
    auto const f = rsq::gptq::factor(be, h, {});
    auto const dr = rsq::cuda::solve_device(be, w, f, {.bits = 4}, {});
    CHECK_THROWS_WITH_AS((void)rsq::cuda::pack_gptq(be, dr, rsq::pack::zero_format::v1),
                         doctest::Contains("zeros(row 0, group 0) is 0, which zero_format::v1 cannot store"),
                         rsq::invalid_argument);
    CHECK_NOTHROW((void)rsq::cuda::pack_gptq(be, dr, rsq::pack::zero_format::v2));
    // 3-bit packing needs in_features and out_features that are multiples of 32.
    auto const w3 = random_matrix(40, 64, 5);
    auto const d3 = rsq::cuda::solve_device(be, w3, f, {.bits = 3, .symmetric = true}, {});
    CHECK_THROWS_WITH_AS((void)rsq::cuda::pack_gptq(be, d3), doctest::Contains("out_features = 40"),
                         rsq::invalid_argument);
    // A failed solve cannot be packed.
    auto bad_h = rsq::make_matrix<float>(64, 64);
    for (int i = 0; i < 64; ++i) bad_h(i, i) = -1;
    auto const fb = rsq::gptq::factor(be, bad_h, {.max_damp_attempts = 2});
    auto const db = rsq::cuda::solve_device(be, w, fb, {.bits = 4}, {});
    CHECK_THROWS_WITH_AS((void)rsq::cuda::pack_gptq(be, db), doctest::Contains("not ok"), rsq::invalid_argument);
  }
}
