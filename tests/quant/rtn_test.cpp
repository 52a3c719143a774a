// SPDX-License-Identifier: MIT
// Round to nearest (quant::quantize_rtn, quantize_rtn_resident) on every backend (TEST_CASE_TEMPLATE over
// RSQ_TEST_BACKENDS): codes, scales, zeros and g_idx equal a reference written here from the grid formulas of
// quant/grid.hpp (per row, groups with a last partial group, both conventions, sym and asym, clip search, 2-8 bits,
// float and double), for W in host memory, in the backend's memory and as a strided view, with the result in host
// memory and left in the backend's memory; the codes decode to the grid's values; bad arguments are named.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

#include <xtensor/xmanipulation.hpp>

#include <rsq/quant/grid.hpp>
#include <rsq/quant/rtn.hpp>

#include "support/backend_data.hpp"
#include "support/backends.hpp"

namespace {

using rsq::index_t;
using rsq::quant::convention;
using rsq::quant::grid_spec;

template <class T>
rsq::matrix<T> random_weight(index_t rows, index_t cols, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd;
  auto w = rsq::make_matrix<T>(rows, cols);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) w(r, c) = T(nd(rng) + (r % 4 == 1 ? 3.0 : 0.0));  // some all-positive rows
  for (index_t c = 0; c < cols; ++c) w(2, c) = T(0);                                   // an all-zero row
  return w;
}

// The reference: each (row, group) fitted alone from a contiguous copy of its values (quant::fit), every value
// rounded to that grid (quant::encode); g_idx = column / group_size.
template <class T>
rsq::quant::quantized_weight<T> reference_rtn(rsq::matrix<T> const& w, grid_spec const& g, index_t group_size) {
  index_t const rows = index_t(w.shape()[0]), cols = index_t(w.shape()[1]);
  index_t const gs = group_size == -1 ? cols : group_size, groups = (cols + gs - 1) / gs;
  rsq::quant::quantized_weight<T> q;
  q.bits = g.bits;
  q.codes = rsq::make_matrix<std::uint8_t>(rows, cols);
  q.scales = rsq::make_matrix<T>(rows, groups);
  q.zeros = rsq::make_matrix<T>(rows, groups);
  q.g_idx = rsq::make_vector<std::int32_t>(cols);
  for (index_t c = 0; c < cols; ++c) q.g_idx(c) = std::int32_t(c / gs);
  for (index_t r = 0; r < rows; ++r)
    for (index_t gi = 0; gi < groups; ++gi) {
      index_t const c0 = gi * gs, n = std::min(gs, cols - c0);
      std::vector<T> values(static_cast<std::size_t>(n));
      for (index_t c = 0; c < n; ++c) values[std::size_t(c)] = w(r, c0 + c);
      auto const p = rsq::quant::fit(g, values.data(), n);
      q.scales(r, gi) = p.scale;
      q.zeros(r, gi) = p.zero;
      for (index_t c = 0; c < n; ++c)
        q.codes(r, c0 + c) = rsq::quant::encode(values[std::size_t(c)], p.scale, p.zero, g.max_code());
    }
  return q;
}

template <class T>
void check_same(rsq::quant::quantized_weight<T> const& got, rsq::quant::quantized_weight<T> const& want) {
  CHECK(got.bits == want.bits);
  CHECK(got.codes == want.codes);
  CHECK(got.scales == want.scales);
  CHECK(got.zeros == want.zeros);
  CHECK(got.g_idx == want.g_idx);
}

}  // namespace

TEST_SUITE("quant.rtn") {
  TEST_CASE_TEMPLATE("quantize_rtn equals the reference for every grid, group size and scalar type", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    auto check_type = [&]<class T>(T) {
      CAPTURE(sizeof(T));
      auto const w = random_weight<T>(37, 100, 3);
      int combos = 0;
      for (index_t group : {index_t(-1), index_t(16), index_t(32), index_t(100), index_t(128)})
        for (int bits : {2, 3, 4, 8})
          for (bool sym : {false, true})
            for (auto conv : {convention::ist, convention::rsq}) {
              grid_spec g{.bits = bits, .symmetric = sym, .conv = conv};
              g.clip.enabled = combos % 3 == 1;
              CAPTURE(group);
              CAPTURE(bits);
              CAPTURE(sym);
              CAPTURE(int(conv));
              CAPTURE(g.clip.enabled);
              auto const want = reference_rtn(w, g, group);
              check_same(rsq::quant::quantize_rtn(be, rsq::view(w), g, group), want);
              ++combos;
            }
      CHECK(combos == 80);
    };
    check_type(float{});
    check_type(double{});
  }

  TEST_CASE_TEMPLATE("W in the backend's memory or strided, the result in host memory or left in the backend's memory",
                     B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    auto const w = random_weight<float>(48, 130, 5);
    grid_spec const g{.bits = 4, .symmetric = false, .conv = convention::rsq};
    auto const want = reference_rtn(w, g, 32);
    // W in host memory, the result in host memory (the CPU overload without a backend is the CPU backend).
    check_same(rsq::quant::quantize_rtn(be, rsq::view(w), g, 32), want);
    check_same(rsq::quant::quantize_rtn(rsq::view(w), g, 32), want);
    // W in the backend's memory.
    auto const wd = rsq::backend::to_backend(be, rsq::matrix_view<const float>(rsq::view(w)));
    check_same(rsq::quant::quantize_rtn(be, rsq::view(wd), g, 32), want);
    // The result left in the backend's memory, then copied to the host.
    auto resident = rsq::quant::quantize_rtn_resident(be, rsq::view(wd), g, 32);
    CHECK(resident.rows() == 48);
    CHECK(resident.cols() == 130);
    CHECK(resident.groups() == 5);
    CHECK(rsq::backend::resident(be, rsq::view(resident.codes).data()));
    CHECK(rsq::backend::to_host(be, rsq::matrix_view<const std::uint8_t>(rsq::view(resident.codes))) == want.codes);
    check_same(rsq::quant::to_host(be, std::move(resident)), want);
    // A transposed (strided) view, of host memory and of the backend's memory.
    rsq::matrix<float> wt = xt::transpose(w);  // (130, 48)
    rsq::matrix_view<const float> host_strided(wt.data(), {48, 130}, {1, 48});
    check_same(rsq::quant::quantize_rtn(be, host_strided, g, 32), want);
    auto const wtd = rsq::backend::to_backend(be, rsq::matrix_view<const float>(rsq::view(wt)));
    rsq::matrix_view<const float> resident_strided(rsq::view(wtd).data(), {48, 130}, {1, 48});
    check_same(rsq::quant::quantize_rtn(be, resident_strided, g, 32), want);
  }

  TEST_CASE_TEMPLATE("fake_quantize writes in place what the reference's codes decode to", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    auto check_type = [&]<class T>(T) {
      CAPTURE(sizeof(T));
      auto const w = random_weight<T>(29, 100, 7);
      int combos = 0;
      for (index_t group : {index_t(-1), index_t(32), index_t(48)})
        for (auto conv : {convention::ist, convention::rsq})
          for (bool sym : {false, true}) {
            grid_spec const g{.bits = 4, .symmetric = sym, .conv = conv};
            CAPTURE(group);
            CAPTURE(int(conv));
            CAPTURE(sym);
            auto const want = rsq::quant::dequantize(reference_rtn(w, g, group));
            auto wd = rsq::backend::to_backend(be, rsq::matrix_view<const T>(rsq::view(w)));
            rsq::quant::fake_quantize(be, rsq::view(wd), g, group);
            CHECK(rsq::backend::to_host(be, rsq::matrix_view<const T>(rsq::view(wd))) == want);
            ++combos;
          }
      CHECK(combos == 12);
    };
    check_type(float{});
    check_type(double{});
    auto w = random_weight<float>(4, 40, 1);
    w(3, 7) = std::numeric_limits<float>::infinity();
    auto wd = rsq::backend::to_backend(be, rsq::matrix_view<const float>(rsq::view(w)));
    CHECK_THROWS_WITH(rsq::quant::fake_quantize(be, rsq::view(wd), grid_spec{.bits = 4}, -1),
                      doctest::Contains("row 3, column 7"));
    CHECK_THROWS_WITH_AS(rsq::quant::fake_quantize(be, rsq::view(wd), grid_spec{.bits = 4}, 0),
                         doctest::Contains("group_size"), rsq::invalid_argument);
  }

  TEST_CASE_TEMPLATE("codes decode to the grid fitted on each group alone, a last partial group included", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    std::mt19937_64 rng(11);
    std::normal_distribution<float> nd;
    rsq::matrix<float> w = rsq::make_matrix<float>(6, 50);
    for (auto& v : w) v = nd(rng);
    auto const q = rsq::quant::quantize_rtn(B{}, rsq::view(std::as_const(w)), grid_spec{.bits = 3}, 16);
    CHECK(q.groups() == 4);
    CHECK(q.g_idx(49) == 3);
    auto const deq = rsq::quant::dequantize(q);
    int bad = 0;
    for (index_t r = 0; r < 6; ++r)
      for (index_t c = 0; c < 50; ++c) {
        CHECK(q.codes(r, c) <= 7);
        index_t const g = c / 16, c0 = g * 16, n = std::min<index_t>(16, 50 - c0);
        auto const p = rsq::quant::fit(grid_spec{.bits = 3}, &w(r, c0), n);
        bad += deq(r, c) != rsq::quant::quantize_dequantize(w(r, c), p.scale, p.zero, 7);
      }
    CHECK(bad == 0);
  }

  TEST_CASE_TEMPLATE("bad arguments are named, for W in host memory and in the backend's memory", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    rsq::matrix<float> w = rsq::make_matrix<float>(4, 8);
    auto rtn = [&](rsq::matrix_view<const float> v, grid_spec const& g = {}, index_t group = -1) {
      return rsq::quant::quantize_rtn(be, v, g, group);
    };
    CHECK_THROWS_WITH_AS((void)rtn(rsq::view(std::as_const(w)), {}, 0), doctest::Contains("group_size"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)rtn(rsq::view(std::as_const(w)), {}, -2), doctest::Contains("group_size"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)rtn(rsq::view(std::as_const(w)), {.bits = 9}), doctest::Contains("between 2 and 8"),
                         rsq::invalid_argument);
    rsq::matrix<float> empty = rsq::make_matrix<float>(0, 8);
    CHECK_THROWS_WITH_AS((void)rtn(rsq::view(std::as_const(empty))), doctest::Contains("empty"),
                         rsq::invalid_argument);
    w(2, 3) = NAN;
    CHECK_THROWS_WITH_AS((void)rtn(rsq::view(std::as_const(w))),
                         doctest::Contains("non-finite value (nan) at row 2, column 3"), rsq::invalid_argument);
    auto const wd = rsq::backend::to_backend(be, rsq::matrix_view<const float>(rsq::view(w)));
    CHECK_THROWS_WITH_AS((void)rtn(rsq::view(wd)), doctest::Contains("non-finite value (nan) at row 2, column 3"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)rsq::quant::quantize_rtn_resident(be, rsq::view(wd), grid_spec{}),
                         doctest::Contains("quantize_rtn: weight"), rsq::invalid_argument);
  }
}
