// SPDX-License-Identifier: MIT
// Quantizer grids against the formulas of the method spec §7, written out independently here in float64; bad grids.
// (Round to nearest of a whole weight, on every backend: quant/rtn_test.cpp.)
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include <rsq/quant/grid.hpp>

namespace {

using rsq::quant::convention;
using rsq::quant::grid_spec;

// Independent float64 statement of the two references' quantize-dequantize for one row (no clip search).
std::vector<double> reference_qdq(std::vector<double> const& x, int bits, bool sym, convention conv) {
  double xmin = 0, xmax = 0;
  for (double v : x) {
    xmin = std::min(xmin, v);
    xmax = std::max(xmax, v);
  }
  std::vector<double> out;
  if (conv == convention::rsq && sym) {
    double const maxq = std::pow(2.0, bits - 1) - 1;
    double const amax = std::max(std::max(std::abs(xmin), xmax), 1e-5);
    double const s = amax / maxq;
    for (double v : x) out.push_back(s * std::clamp(std::nearbyint(v / s), -(maxq + 1), maxq));
    return out;
  }
  double const maxq = std::pow(2.0, bits) - 1;
  double s = 0, z = 0;
  if (conv == convention::ist && sym) {
    xmax = std::max(std::abs(xmin), xmax);
    if (xmin < 0) xmin = -xmax;
    if (xmin == 0 && xmax == 0) {
      xmin = -1;
      xmax = 1;
    }
    s = (xmax - xmin) / maxq;
    z = (maxq + 1) / 2;
  } else {
    if (xmin == 0 && xmax == 0) {
      xmin = -1;
      xmax = 1;
    }
    s = (conv == convention::rsq ? std::max(xmax - xmin, 1e-5) : xmax - xmin) / maxq;
    z = std::nearbyint(-xmin / s);
  }
  for (double v : x) out.push_back(s * (std::clamp(std::nearbyint(v / s) + z, 0.0, maxq) - z));
  return out;
}

std::vector<double> qdq(std::vector<double> const& x, grid_spec const& g) {
  auto const p = rsq::quant::fit(g, x.data(), rsq::index_t(x.size()));
  std::vector<double> out;
  for (double v : x) out.push_back(rsq::quant::quantize_dequantize(v, p.scale, p.zero, g.max_code()));
  return out;
}

}  // namespace

TEST_SUITE("quant.grid") {
  TEST_CASE("both conventions, sym and asym, 2..8 bits, match the formulas of spec section 7") {
    std::mt19937_64 rng(7);
    std::normal_distribution<double> nd;
    for (int bits = 2; bits <= 8; ++bits)
      for (bool sym : {false, true})
        for (auto conv : {convention::ist, convention::rsq})
          for (int trial = 0; trial < 20; ++trial) {
            std::vector<double> x(37);
            double const shift = trial % 3 == 0 ? 2.0 : (trial % 3 == 1 ? -2.0 : 0.0);  // all-positive/negative rows
            for (auto& v : x) v = nd(rng) + shift;
            grid_spec const g{.bits = bits, .symmetric = sym, .conv = conv};
            auto const got = qdq(x, g);
            auto const want = reference_qdq(x, bits, sym, conv);
            for (std::size_t i = 0; i < x.size(); ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-12));
          }
  }

  TEST_CASE("levels of the 3-bit symmetric grids (spec section 7 table) and round-half-to-even ties") {
    // rsq sym 3-bit: maxq = 3, levels -4..3 times s = amax/3. Row with amax = 3 gives s = 1.
    std::vector<double> const x = {3.0, 0.5, 1.5, 2.5, -0.5, -2.5, -3.0, -1.49};
    grid_spec const rsq_sym{.bits = 3, .symmetric = true, .conv = convention::rsq};
    auto const r = qdq(x, rsq_sym);
    std::vector<double> const want_r = {3, 0, 2, 2, -0, -2, -3, -1};
    for (std::size_t i = 0; i < x.size(); ++i) CHECK(r[i] == want_r[i]);
    // A value below -3.5 rounds to -4, the extra negative level.
    auto const p = rsq::quant::fit(rsq_sym, x.data(), rsq::index_t(x.size()));
    CHECK(rsq::quant::quantize_dequantize(-3.6, p.scale, p.zero, rsq_sym.max_code()) == -4.0);
    CHECK(p.zero == 4.0);

    // ist sym 3-bit: maxq = 7, s = 2*amax/7, z = 4: levels s*(-4..3).
    grid_spec const ist_sym{.bits = 3, .symmetric = true, .conv = convention::ist};
    std::vector<double> const y = {3.5, -3.5, 0.25, 0.75};  // amax = 3.5 -> s = 1
    auto const pi = rsq::quant::fit(ist_sym, y.data(), 4);
    CHECK(pi.scale == 1.0);
    CHECK(pi.zero == 4.0);
    CHECK(rsq::quant::quantize_dequantize(3.5, pi.scale, pi.zero, 7) == 3.0);     // clamps at the top level
    CHECK(rsq::quant::quantize_dequantize(-3.5, pi.scale, pi.zero, 7) == -4.0);   // round(-3.5) = -4 (even)
    CHECK(rsq::quant::quantize_dequantize(2.5, pi.scale, pi.zero, 7) == 2.0);     // tie to even
    CHECK(rsq::quant::quantize_dequantize(-2.5, pi.scale, pi.zero, 7) == -2.0);
  }

  TEST_CASE("all-zero rows use the (-1, +1) range; rsq clamps the range at 1e-5") {
    std::vector<double> const z(5, 0.0);
    auto const a = rsq::quant::fit(grid_spec{.bits = 4, .conv = convention::ist}, z.data(), 5);
    CHECK(a.scale == doctest::Approx(2.0 / 15));
    CHECK(a.zero == std::nearbyint(1.0 / (2.0 / 15)));
    auto const b = rsq::quant::fit(grid_spec{.bits = 4, .symmetric = true, .conv = convention::rsq}, z.data(), 5);
    CHECK(b.scale == doctest::Approx(1e-5 / 7));
    std::vector<double> const tiny = {1e-9, -1e-9};
    auto const c = rsq::quant::fit(grid_spec{.bits = 4, .conv = convention::rsq}, tiny.data(), 2);
    CHECK(c.scale == doctest::Approx(1e-5 / 15));
  }

  TEST_CASE("clip search keeps, per row, the strictly best shrink (brute force over p)") {
    std::mt19937_64 rng(3);
    std::student_t_distribution<double> heavy(2.0);  // outliers make clipping worthwhile
    for (auto conv : {convention::ist, convention::rsq})
      for (bool sym : {false, true}) {
        std::vector<double> x(64);
        for (auto& v : x) v = heavy(rng);
        grid_spec g{.bits = 3, .symmetric = sym, .conv = conv};
        g.clip.enabled = true;
        auto const got = rsq::quant::fit(g, x.data(), 64);
        // Brute force: the error of every candidate p, evaluated with the un-clipped formula on the shrunk range.
        double best = INFINITY;
        double best_scale = 0;
        for (int i = 0; i < 80; ++i) {
          double const p = 1.0 - i / 100.0;
          std::vector<double> xs;
          for (double v : x) xs.push_back(v);
          double xmin = 0, xmax = 0;
          for (double v : x) {
            xmin = std::min(xmin, v);
            xmax = std::max(xmax, v);
          }
          double s, z;
          if (conv == convention::rsq && sym) {
            s = p * std::max(std::max(-xmin, xmax), 1e-5) / 3;
            z = 4;
          } else if (sym) {
            double const am = std::max(-xmin, xmax);
            s = (p * am - p * (xmin < 0 ? -am : 0)) / 7;
            z = 4;
          } else {
            s = (p * xmax - p * xmin) / 7;
            z = std::nearbyint(-p * xmin / s);
          }
          double err = 0;
          for (double v : x) err += std::pow(std::abs(s * (std::clamp(std::nearbyint(v / s) + z, 0.0, 7.0) - z) - v), 2.4);
          if (err < best) {
            best = err;
            best_scale = s;
          }
        }
        CHECK(got.scale == doctest::Approx(best_scale).epsilon(1e-12));
        // And it beats the unclipped grid.
        g.clip.enabled = false;
        auto const plain = rsq::quant::fit(g, x.data(), 64);
        CHECK(got.scale <= plain.scale);
      }
  }

  TEST_CASE("grid_spec rejects bad arguments") {
    for (int bits : {0, 1, 9, 16}) {
      grid_spec const g{.bits = bits};
      CHECK_THROWS_WITH_AS(g.validate(), doctest::Contains("between 2 and 8"), rsq::invalid_argument);
    }
    grid_spec g{.bits = 4};
    g.clip.enabled = true;
    g.clip.grid = 0;
    CHECK_THROWS_WITH_AS(g.validate(), doctest::Contains("clip search grid must be positive"), rsq::invalid_argument);
    g.clip.grid = 100;
    g.clip.max_shrink = 1.5;
    CHECK_THROWS_WITH_AS(g.validate(), doctest::Contains("max_shrink"), rsq::invalid_argument);
    g.clip.max_shrink = 0.8;
    g.clip.norm = -1;
    CHECK_THROWS_WITH_AS(g.validate(), doctest::Contains("clip search norm must be positive"), rsq::invalid_argument);
    g.clip.norm = 2.4;
    CHECK_NOTHROW(g.validate());
  }
}
