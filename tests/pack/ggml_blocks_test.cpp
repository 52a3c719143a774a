// SPDX-License-Identifier: MIT
// llama.cpp's block types (rsq/pack/ggml_blocks.hpp) and the GPTQ grids that are exactly those blocks
// (rsq/quant/grid.hpp conventions q4_0, q4_1, q8_0), against llama.cpp itself (libggml-base.so of node-llama-cpp,
// called through dlopen):
//  - rsq's round-to-nearest writes the same bytes as llama.cpp's quantize_row_*_ref, ties and edge blocks included;
//  - rsq's dequantization gives the same floats as llama.cpp's dequantize_row_*;
//  - a weight solved by GPTQ (and by RTN) on the block grid packs into blocks that dequantize, here and in
//    llama.cpp, to the solver's dequantized weight bit for bit, on every backend; GPTQ's proxy loss beats RTN's;
//  - layouts the blocks cannot hold are refused with messages that say why.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <rsq/gptq/proxy_loss.hpp>
#include <rsq/gptq/solve.hpp>
#include <rsq/pack/ggml_blocks.hpp>
#include <rsq/pack/gptq_format.hpp>
#include <rsq/quant/rtn.hpp>

#include "gptq/gptq_support.hpp"
#include "support/backends.hpp"
#include "support/llama_cpp.hpp"

namespace {

using rsq::index_t;
using rsq::pack::ggml_type;

constexpr ggml_type block_types[] = {ggml_type::q4_0, ggml_type::q4_1, ggml_type::q8_0};

std::vector<std::byte> reference_bytes(ggml_type t, std::vector<float> const& x) {
  std::vector<std::byte> out(rsq::pack::row_bytes(t, index_t(x.size())));
  rsq::pack::quantize_row_reference(t, x, out);
  return out;
}

std::vector<float> decoded(ggml_type t, std::vector<std::byte> const& bytes, index_t n) {
  std::vector<float> out(static_cast<std::size_t>(n));
  rsq::pack::dequantize_row(t, bytes, out);
  return out;
}

rsq_test::ggml_base::quantize_fn llama_quantize(rsq_test::ggml_base const& g, ggml_type t) {
  return t == ggml_type::q4_0 ? g.quantize_q4_0 : (t == ggml_type::q4_1 ? g.quantize_q4_1 : g.quantize_q8_0);
}
rsq_test::ggml_base::dequantize_fn llama_dequantize(rsq_test::ggml_base const& g, ggml_type t) {
  return t == ggml_type::q4_0 ? g.dequantize_q4_0 : (t == ggml_type::q4_1 ? g.dequantize_q4_1 : g.dequantize_q8_0);
}

// Blocks that exercise every branch of llama.cpp's rules: random values at several magnitudes, an all-zero block,
// equal and opposite extremes (the first one sets Q4_0's sign), values on rounding ties, subnormal-small values, a
// constant block (Q4_1's d = 0) and one whose scale overflows fp16.
std::vector<float> edge_rows(unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> x;
  auto block = [&](auto&& f) {
    for (int j = 0; j < 32; ++j) x.push_back(f(j));
  };
  for (float scale : {1e-3f, 0.02f, 1.f, 40.f})
    for (int b = 0; b < 16; ++b) block([&](int) { return scale * nd(rng); });
  block([](int) { return 0.f; });
  block([](int j) { return j == 3 ? -2.f : (j == 20 ? 2.f : 0.1f * float(j % 5)); });
  block([](int j) { return j == 3 ? 2.f : (j == 20 ? -2.f : -0.1f * float(j % 5)); });
  block([](int j) { return 0.25f * float(j - 16); });  // multiples of d/2 in Q4_0: rounding ties
  block([](int j) { return 1e-9f * float(j + 1); });
  block([](int) { return 0.75f; });
  block([&](int j) { return j == 0 ? 7e5f : nd(rng); });
  return x;
}

}  // namespace

TEST_SUITE("pack.ggml_blocks") {
  TEST_CASE("type ids, names and row sizes") {
    CHECK(rsq::pack::parse_ggml_type("q4_0") == ggml_type::q4_0);
    CHECK(rsq::pack::parse_ggml_type("Q8_0") == ggml_type::q8_0);
    CHECK_FALSE(rsq::pack::parse_ggml_type("q4_2").has_value());
    CHECK(rsq::pack::find_ggml_type(12)->name == "Q4_K");
    CHECK_FALSE(rsq::pack::find_ggml_type(4).has_value());  // removed from ggml (Q4_2)
    CHECK(rsq::pack::row_bytes(ggml_type::q4_0, 64) == 36);
    CHECK(rsq::pack::row_bytes(ggml_type::q4_1, 64) == 40);
    CHECK(rsq::pack::row_bytes(ggml_type::q8_0, 64) == 68);
    CHECK(rsq::pack::row_bytes(ggml_type::f16, 7) == 14);
    CHECK_THROWS_WITH_AS((void)rsq::pack::row_bytes(ggml_type::q4_0, 48), doctest::Contains("multiple of the block size 32"),
                         rsq::invalid_argument);
  }

  TEST_CASE("round to nearest: the bytes of llama.cpp's quantize_row_*_ref, and its dequantization, bit for bit") {
    RSQ_NEED_LLAMA_CPP(ggml);
    auto const x = edge_rows(7);
    index_t const n = index_t(x.size());
    for (auto t : block_types) {
      CAPTURE(rsq::pack::traits(t).name);
      auto const ours = reference_bytes(t, x);
      std::vector<std::byte> theirs(ours.size());
      llama_quantize(ggml, t)(x.data(), theirs.data(), n);
      CHECK(std::memcmp(ours.data(), theirs.data(), ours.size()) == 0);

      auto const y = decoded(t, ours, n);
      std::vector<float> ly(x.size());
      llama_dequantize(ggml, t)(ours.data(), ly.data(), n);
      CHECK(std::memcmp(y.data(), ly.data(), y.size() * sizeof(float)) == 0);
    }
  }

  TEST_CASE("round to nearest reproduces the format's rules (without llama.cpp)") {
    // Q4_0 of a block whose extreme is −2 (first) and +2: d = −2/−8 = 0.25, so −2 ↦ q = 0 and +2 clamps to 15.
    std::vector<float> x(32, 0.f);
    x[3] = -2.f;
    x[20] = 2.f;
    auto const b = reference_bytes(ggml_type::q4_0, x);
    float const d = rsq::f16_to_float(std::uint16_t(std::uint16_t(b[0]) | (std::uint16_t(b[1]) << 8)));
    CHECK(d == 0.25f);
    CHECK((std::uint8_t(b[2 + 3]) & 0x0F) == 0);
    CHECK((std::uint8_t(b[2 + 4]) >> 4) == 15);  // element 20 = byte 4's high nibble
    auto const y = decoded(ggml_type::q4_0, b, 32);
    CHECK(y[3] == -2.f);
    CHECK(y[20] == 1.75f);
    // Q8_0 rounds halves away from zero: 127·(0.5/127) → 0.5 ↦ 1, and −0.5 ↦ −1.
    std::vector<float> z(32, 0.f);
    z[0] = 127.f;
    z[1] = 0.5f;
    z[2] = -0.5f;
    auto const q8 = reference_bytes(ggml_type::q8_0, z);
    CHECK(std::int8_t(q8[2 + 1]) == 1);
    CHECK(std::int8_t(q8[2 + 2]) == -1);
  }

  TEST_CASE("dequantizing random blocks equals llama.cpp's dequantize_row_*") {
    RSQ_NEED_LLAMA_CPP(ggml);
    std::mt19937 rng(3);
    std::uniform_int_distribution<int> byte(0, 255);
    std::normal_distribution<float> nd;
    index_t const n = 32 * 200;
    for (auto t : block_types) {
      CAPTURE(rsq::pack::traits(t).name);
      auto const tr = rsq::pack::traits(t);
      std::vector<std::byte> bytes(rsq::pack::row_bytes(t, n));
      for (auto& v : bytes) v = std::byte(byte(rng));
      for (index_t b = 0; b < n / 32; ++b) {  // finite fp16 d and m
        std::byte* p = bytes.data() + std::size_t(b) * tr.block_bytes;
        for (int k = 0; k < (t == ggml_type::q4_1 ? 2 : 1); ++k) {
          std::uint16_t const h = rsq::float_to_f16(nd(rng) * 0.05f);
          p[2 * k] = std::byte(h & 0xFF);
          p[2 * k + 1] = std::byte(h >> 8);
        }
      }
      auto const y = decoded(t, bytes, n);
      std::vector<float> ly(static_cast<std::size_t>(n));
      llama_dequantize(ggml, t)(bytes.data(), ly.data(), n);
      CHECK(std::memcmp(y.data(), ly.data(), y.size() * sizeof(float)) == 0);
    }
  }

  TEST_CASE_TEMPLATE("GPTQ and RTN on the block grids pack into blocks that dequantize to the solver's weight, bit "
                     "for bit (here and in llama.cpp)",
                     B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const libs = rsq_test::llama_cpp_libs();
    auto const ggml = libs ? rsq_test::ggml_base::open(*libs) : std::nullopt;
    if (!ggml) MESSAGE("llama.cpp libraries not found: checked against rsq's own dequantization only");
    auto const l = gptq_test::random_layer<float>(48, 256, 11);
    struct layout {
      index_t group;
      bool act_order, static_groups;
    };
    for (auto t : block_types)
      for (layout const o : {layout{32, false, false}, layout{128, false, false}, layout{64, true, true}}) {
        CAPTURE(rsq::pack::traits(t).name);
        CAPTURE(o.group);
        CAPTURE(o.act_order);
        auto const grid = rsq::pack::block_grid(t);
        rsq::gptq::options const opt{.group_size = o.group, .act_order = o.act_order, .static_groups = o.static_groups};
        auto const res = rsq::gptq::solve(B{}, l.w, l.h, grid, opt);
        REQUIRE(res.ok());
        auto const bytes = rsq::pack::pack_weight(t, res.weight);
        std::size_t const row = rsq::pack::row_bytes(t, l.w.shape()[1]);
        bool same = true, same_llama = true;
        std::vector<float> y(l.w.shape()[1]);
        for (index_t r = 0; r < index_t(l.w.shape()[0]); ++r) {
          std::span<const std::byte> const rb(bytes.data() + std::size_t(r) * row, row);
          rsq::pack::dequantize_row(t, rb, y);
          same = same && std::memcmp(y.data(), &res.dequantized(r, 0), y.size() * sizeof(float)) == 0;
          if (ggml) {
            llama_dequantize(*ggml, t)(rb.data(), y.data(), index_t(y.size()));
            same_llama = same_llama && std::memcmp(y.data(), &res.dequantized(r, 0), y.size() * sizeof(float)) == 0;
          }
        }
        CHECK(same);
        CHECK(same_llama);
        CHECK(rsq::quant::dequantize(res.weight) == res.dequantized);

        auto const rtn = rsq::quant::quantize_rtn(B{}, rsq::matrix_view<const float>(rsq::view(l.w)), grid, o.group);
        auto const rtn_w = rsq::quant::dequantize(rtn);
        auto const rtn_bytes = rsq::pack::pack_weight(t, rtn);
        bool rtn_same = true;
        for (index_t r = 0; r < index_t(l.w.shape()[0]); ++r) {
          rsq::pack::dequantize_row(t, {rtn_bytes.data() + std::size_t(r) * row, row}, y);
          rtn_same = rtn_same && std::memcmp(y.data(), &rtn_w(r, 0), y.size() * sizeof(float)) == 0;
        }
        CHECK(rtn_same);
        // GPTQ minimises the proxy loss tr((W − Q) H (W − Q)ᵀ) that round to nearest ignores.
        CHECK(rsq::gptq::proxy_loss(l.w, res.dequantized, l.h) < rsq::gptq::proxy_loss(l.w, rtn_w, l.h));
      }
  }

  TEST_CASE("layouts the blocks cannot hold are refused, saying why") {
    auto const l = gptq_test::random_layer<float>(8, 64, 2);
    auto const q40 = rsq::pack::block_grid(ggml_type::q4_0);
    CHECK_THROWS_WITH_AS((void)rsq::gptq::solve(l.w, l.h, q40, {.group_size = 16}),
                         doctest::Contains("group size that is a multiple of 32, got 16"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)rsq::gptq::solve(l.w, l.h, q40, {.group_size = -1}),
                         doctest::Contains("multiple of 32, got -1"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)rsq::gptq::solve(l.w, l.h, q40, {.group_size = 32, .act_order = true}),
                         doctest::Contains("act-order with a llama.cpp block grid needs static groups"),
                         rsq::invalid_argument);
    auto const narrow = gptq_test::random_layer<float>(8, 48, 2);
    CHECK_THROWS_WITH_AS((void)rsq::gptq::solve(narrow.w, narrow.h, q40, {.group_size = 32}),
                         doctest::Contains("whole blocks of 32, got 48 columns"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)rsq::quant::quantize_rtn(rsq::matrix_view<const float>(rsq::view(narrow.w)), q40, 32),
                         doctest::Contains("quantize_rtn: the llama.cpp block grids"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)rsq::quant::quantize_rtn(rsq::matrix_view<const float>(rsq::view(l.w)),
                                                        rsq::quant::grid_spec{.bits = 8, .conv = rsq::quant::convention::q4_0}, 32),
                         doctest::Contains("Q4_0 grid has 4 bits, got 8"), rsq::invalid_argument);

    auto const res = rsq::gptq::solve(l.w, l.h, rsq::pack::block_grid(ggml_type::q4_1), {.group_size = 32});
    CHECK_THROWS_WITH_AS((void)rsq::pack::pack_weight(ggml_type::q4_0, res.weight),
                         doctest::Contains("not on the Q4_0 grid"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)rsq::pack::pack_gptq(rsq::backend::cpu_eigen{}, res.weight),
                         doctest::Contains("offset grid (llama.cpp Q4_1)"), rsq::invalid_argument);
    auto const ist = rsq::gptq::solve(l.w, l.h, rsq::quant::grid_spec{.bits = 4}, {.group_size = 32});
    CHECK_THROWS_WITH_AS((void)rsq::pack::pack_weight(ggml_type::q4_0, ist.weight),
                         doctest::Contains("not an fp16 value"), rsq::invalid_argument);
    auto act = rsq::gptq::solve(l.w, l.h, rsq::pack::block_grid(ggml_type::q8_0), {.group_size = 32});
    act.weight.g_idx(5) = 1;  // as act-order's dynamic groups would leave it
    CHECK_THROWS_WITH_AS((void)rsq::pack::pack_weight(ggml_type::q8_0, act.weight),
                         doctest::Contains("column 5 is in group 1"), rsq::invalid_argument);
  }
}
