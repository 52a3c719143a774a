// SPDX-License-Identifier: MIT
// GPTQ checkpoint packing on every backend (TEST_CASE_TEMPLATE over RSQ_TEST_BACKENDS, pack::pack_gptq(be, ...)):
// round trips with the packed words against an independent bit-by-bit reference, known facts of the AutoGPTQ layout,
// strided inputs, dequantization against the direct formula and the golden reference results; a GPTQ result packed
// where the solver left it (pack_gptq_resident, device memory for CUDA) equals the host packer and unpacks to the
// solver's codes; bad arguments and bad results named in the messages of the host packer. The CPU packer's own checks
// (non-finite zeros, codes out of range, also through strided codes), unpack_gptq and dequantize: host code.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <rsq/gptq/solve.hpp>
#include <rsq/io/npy.hpp>
#include <rsq/pack/gptq_format.hpp>

#include "support/backend_data.hpp"
#include "support/backends.hpp"
#include "support/shared_data.hpp"

using rsq::pack::zero_format;

namespace {

using rsq::index_t;

// A solver-shaped result: codes (rows, cols), scales and zeros (rows, groups), g_idx (cols).
template <class S = float>
struct solver_result {
  rsq::matrix<std::uint8_t> codes;
  rsq::matrix<S> scales, zeros;
  rsq::vector<std::int32_t> g_idx;
};

// Random codes and parameters. sym: every zero is 2^(bits-1) (the "ist" symmetric convention); otherwise zeros are
// random in [min_zero, 2^bits - 1]. act_order: g_idx[perm[j]] = j / group_size for a random permutation perm
// (rsq-method.md §6 step 9), otherwise g_idx[c] = c / group_size.
template <class S = float>
solver_result<S> random_result(std::size_t rows, std::size_t cols, std::size_t groups, int bits, bool sym,
                               bool act_order, int min_zero, std::uint32_t seed) {
  std::mt19937 gen(seed);
  int const maxq = (1 << bits) - 1;
  solver_result<S> r;
  r.codes = rsq::matrix<std::uint8_t>::from_shape({rows, cols});
  for (auto& c : r.codes) c = std::uint8_t(gen() % std::uint32_t(maxq + 1));
  r.scales = rsq::matrix<S>::from_shape({rows, groups});
  r.zeros = rsq::matrix<S>::from_shape({rows, groups});
  std::uniform_real_distribution<double> scale_dist(1e-4, 0.1);
  for (auto& s : r.scales) s = S(scale_dist(gen));
  for (auto& z : r.zeros)
    z = sym ? S(1 << (bits - 1)) : S(min_zero + int(gen() % std::uint32_t(maxq + 1 - min_zero)));
  std::size_t const gs = (cols + groups - 1) / groups;
  std::vector<std::size_t> perm(cols);
  std::iota(perm.begin(), perm.end(), std::size_t{0});
  if (act_order) std::shuffle(perm.begin(), perm.end(), gen);
  r.g_idx = rsq::vector<std::int32_t>::from_shape({cols});
  for (std::size_t j = 0; j < cols; ++j) r.g_idx(perm[j]) = std::int32_t(j / gs);
  return r;
}

// Independent reference: bit b of value j goes to bit (bits·j + b) of the run's stream of 32-bit words.
std::vector<std::uint32_t> reference_stream(std::vector<std::uint32_t> const& values, int bits) {
  std::vector<std::uint32_t> words(values.size() * std::size_t(bits) / 32, 0u);
  for (std::size_t j = 0; j < values.size(); ++j)
    for (int b = 0; b < bits; ++b)
      if ((values[j] >> b) & 1u) {
        std::size_t const k = std::size_t(bits) * j + std::size_t(b);
        words[k / 32] |= std::uint32_t{1} << (k % 32);
      }
  return words;
}

// Checks every word of qweight and qzeros against the reference streams.
template <class S>
void check_words_against_reference(rsq::pack::gptq_tensors const& t, solver_result<S> const& in, int bits,
                                   zero_format fmt) {
  std::size_t const rows = in.codes.shape()[0], cols = in.codes.shape()[1], groups = in.scales.shape()[1];
  REQUIRE(t.qweight.shape()[0] == cols * std::size_t(bits) / 32);
  REQUIRE(t.qweight.shape()[1] == rows);
  REQUIRE(t.qzeros.shape()[0] == groups);
  REQUIRE(t.qzeros.shape()[1] == rows * std::size_t(bits) / 32);
  std::size_t bad = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    std::vector<std::uint32_t> run(cols);
    for (std::size_t c = 0; c < cols; ++c) run[c] = in.codes(r, c);
    auto const ref = reference_stream(run, bits);
    for (std::size_t w = 0; w < ref.size(); ++w) bad += std::uint32_t(t.qweight(w, r)) != ref[w];
  }
  CHECK(bad == 0);
  bad = 0;
  for (std::size_t g = 0; g < groups; ++g) {
    std::vector<std::uint32_t> run(rows);
    for (std::size_t r = 0; r < rows; ++r)
      run[r] = std::uint32_t(in.zeros(r, g)) - (fmt == zero_format::v1 ? 1u : 0u);
    auto const ref = reference_stream(run, bits);
    for (std::size_t w = 0; w < ref.size(); ++w) bad += std::uint32_t(t.qzeros(g, w)) != ref[w];
  }
  CHECK(bad == 0);
}

// Packs @p in on backend B (host arrays in, host tensors out).
template <class B, class S>
rsq::pack::gptq_tensors pack_on(solver_result<S> const& in, int bits, zero_format fmt = zero_format::v1) {
  return rsq::pack::pack_gptq(B{}, rsq::view(in.codes), rsq::view(in.scales), rsq::view(in.zeros), rsq::view(in.g_idx),
                              bits, fmt);
}

// Packs on backend B, checks the words, unpacks and checks that everything comes back; checks dequantize on the way.
template <class B, class S>
void round_trip(solver_result<S> const& in, int bits, zero_format fmt) {
  auto const t = pack_on<B>(in, bits, fmt);
  CHECK(t.bits == bits);
  CHECK(t.format == fmt);
  std::size_t const rows = in.codes.shape()[0], cols = in.codes.shape()[1], groups = in.scales.shape()[1];
  CHECK(t.in_features() == rsq::index_t(cols));
  CHECK(t.out_features() == rsq::index_t(rows));
  CHECK(t.groups() == rsq::index_t(groups));
  check_words_against_reference(t, in, bits, fmt);
  // scales are stored (groups, out_features): the transpose of the solver's.
  REQUIRE(t.scales.shape()[0] == groups);
  REQUIRE(t.scales.shape()[1] == rows);
  std::size_t bad = 0;
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t g = 0; g < groups; ++g) bad += t.scales(g, r) != float(in.scales(r, g));
  CHECK(bad == 0);
  CHECK(t.g_idx == in.g_idx);

  auto const u = rsq::pack::unpack_gptq(t);
  CHECK(u.bits == bits);
  CHECK(u.codes == in.codes);
  CHECK(u.g_idx == in.g_idx);
  REQUIRE(u.scales.shape() == in.scales.shape());
  REQUIRE(u.zeros.shape() == in.zeros.shape());
  bad = 0;
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t g = 0; g < groups; ++g)
      bad += u.scales(r, g) != float(in.scales(r, g)) || double(u.zeros(r, g)) != double(in.zeros(r, g));
  CHECK(bad == 0);

  // dequantize against scale·(code − zero) computed directly in double (exact for a float scale times a small
  // integer, so the float result must equal it rounded once).
  auto const w = rsq::pack::dequantize(u);
  REQUIRE(w.shape()[0] == rows);
  REQUIRE(w.shape()[1] == cols);
  bad = 0;
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) {
      auto const g = std::size_t(in.g_idx(c));
      double const ref = double(float(in.scales(r, g))) * (double(in.codes(r, c)) - double(in.zeros(r, g)));
      bad += w(r, c) != float(ref);
    }
  CHECK(bad == 0);
  CHECK(rsq::pack::dequantize(t) == w);
}

template <class T>
void fill(rsq::matrix<T>& m, T v) {
  std::fill(m.begin(), m.end(), v);
}

// A (rows, cols) weight with N(shift, 1) entries, seeded.
rsq::matrix<float> random_weight(index_t rows, index_t cols, unsigned seed, double shift = 0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(shift, 1.0);
  auto m = rsq::make_matrix<float>(rows, cols);
  for (auto& v : m) v = float(nd(rng));
  return m;
}

// A positive definite (n, n) Hessian XᵀX / n of 3n random inputs.
rsq::matrix<float> spd(index_t n, unsigned seed) {
  auto const x = random_weight(3 * n, n, seed);
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

TEST_SUITE("pack.gptq_format") {
  TEST_CASE_TEMPLATE("round trips for 2, 3, 4, 8 bits: sym and asym, v1 and v2, several groups, act-order", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    std::uint32_t seed = 1;
    for (int bits : {2, 3, 4, 8})
      for (zero_format fmt : {zero_format::v1, zero_format::v2})
        for (bool sym : {true, false})
          for (bool act : {false, true}) {
            CAPTURE(bits);
            CAPTURE(int(fmt));
            CAPTURE(sym);
            CAPTURE(act);
            int const min_zero = fmt == zero_format::v1 ? 1 : 0;
            round_trip<B>(random_result(96, 256, 4, bits, sym, act, min_zero, seed++), bits, fmt);
            // per-row parameters (one group) and a group per 32 columns
            round_trip<B>(random_result(64, 128, 1, bits, sym, act, min_zero, seed++), bits, fmt);
            round_trip<B>(random_result(32, 128, 4, bits, sym, act, min_zero, seed++), bits, fmt);
          }
  }

  TEST_CASE_TEMPLATE("asym v2 round trip covers the zero 0 and the top code", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    for (int bits : {2, 3, 4, 8}) {
      CAPTURE(bits);
      auto in = random_result(64, 64, 2, bits, false, true, 0, 77);
      in.zeros(0, 0) = 0.f;
      in.zeros(1, 1) = float((1 << bits) - 1);
      in.codes(2, 3) = std::uint8_t((1 << bits) - 1);
      round_trip<B>(in, bits, zero_format::v2);
    }
  }

  TEST_CASE_TEMPLATE("shapes that fill whole words without being multiples of 32", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    // 4-bit: multiples of 8; 2-bit: multiples of 16; 8-bit: multiples of 4.
    round_trip<B>(random_result(24, 40, 5, 4, false, true, 1, 5), 4, zero_format::v1);
    round_trip<B>(random_result(8, 8, 1, 4, true, false, 1, 6), 4, zero_format::v1);
    round_trip<B>(random_result(48, 80, 5, 2, false, true, 0, 7), 2, zero_format::v2);
    round_trip<B>(random_result(12, 36, 3, 8, false, true, 1, 8), 8, zero_format::v1);
  }

  TEST_CASE_TEMPLATE("double scales and zeros: scales come back rounded to float", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    for (int bits : {3, 4}) {
      CAPTURE(bits);
      auto const in = random_result<double>(64, 128, 2, bits, false, true, 1, 11);
      round_trip<B>(in, bits, zero_format::v1);
      auto const t = pack_on<B>(in, bits);
      CHECK(t.scales(1, 3) == float(in.scales(3, 1)));
    }
  }

  TEST_CASE_TEMPLATE("strided inputs (column-major Eigen matrices) pack like contiguous ones", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const in = random_result(64, 96, 3, 4, false, true, 1, 21);
    Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic> codes(64, 96);
    Eigen::MatrixXf scales(64, 3), zeros(64, 3);
    for (int r = 0; r < 64; ++r) {
      for (int c = 0; c < 96; ++c) codes(r, c) = in.codes(std::size_t(r), std::size_t(c));
      for (int g = 0; g < 3; ++g) {
        scales(r, g) = in.scales(std::size_t(r), std::size_t(g));
        zeros(r, g) = in.zeros(std::size_t(r), std::size_t(g));
      }
    }
    auto const a = pack_on<B>(in, 4);
    auto const b = rsq::pack::pack_gptq(B{}, rsq::matrix_view<const std::uint8_t>(codes),
                                        rsq::matrix_view<const float>(scales), rsq::matrix_view<const float>(zeros),
                                        rsq::view(in.g_idx), 4);
    CHECK(a.qweight == b.qweight);
    CHECK(a.qzeros == b.qzeros);
    CHECK(a.scales == b.scales);
  }

  TEST_CASE_TEMPLATE("known facts: 4-bit v1 symmetric zero 8 is stored as 7, every qzeros word reads 0x77777777", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto in = random_result(64, 128, 4, 4, true, false, 1, 31);
    auto const v1 = pack_on<B>(in, 4, zero_format::v1);
    REQUIRE(v1.qzeros.shape()[1] == 8);  // 64 zeros · 4 bits / 32
    for (auto w : v1.qzeros) CHECK(std::uint32_t(w) == 0x77777777u);
    auto const v2 = pack_on<B>(in, 4, zero_format::v2);
    for (auto w : v2.qzeros) CHECK(std::uint32_t(w) == 0x88888888u);
    // 2-bit symmetric zero 2 -> v1 stores 1 = 0b01 in each field; 8-bit zero 128 -> 127 = 0x7F.
    auto in2 = random_result(64, 64, 1, 2, true, false, 1, 32);
    for (auto w : pack_on<B>(in2, 2).qzeros)
      CHECK(std::uint32_t(w) == 0x55555555u);
    auto in8 = random_result(64, 64, 1, 8, true, false, 1, 33);
    for (auto w : pack_on<B>(in8, 8).qzeros)
      CHECK(std::uint32_t(w) == 0x7F7F7F7Fu);
  }

  TEST_CASE_TEMPLATE("known facts: qweight of sequential 4-bit codes, packed along the input features of each row", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    rsq::matrix<std::uint8_t> codes = rsq::matrix<std::uint8_t>::from_shape({8, 16});
    for (std::size_t r = 0; r < 8; ++r)
      for (std::size_t c = 0; c < 16; ++c) codes(r, c) = std::uint8_t((c + r) % 16);
    rsq::matrix<float> scales = rsq::matrix<float>::from_shape({8, 1}), zeros = rsq::matrix<float>::from_shape({8, 1});
    fill(scales, 0.5f);
    fill(zeros, 8.f);
    rsq::vector<std::int32_t> g_idx = rsq::vector<std::int32_t>::from_shape({16});
    std::fill(g_idx.begin(), g_idx.end(), 0);
    auto const t = pack_on<B>(solver_result<float>{codes, scales, zeros, g_idx}, 4);
    REQUIRE(t.qweight.shape()[0] == 2);
    REQUIRE(t.qweight.shape()[1] == 8);
    CHECK(std::uint32_t(t.qweight(0, 0)) == 0x76543210u);
    CHECK(std::uint32_t(t.qweight(1, 0)) == 0xFEDCBA98u);
    CHECK(std::uint32_t(t.qweight(0, 1)) == 0x87654321u);
    CHECK(std::uint32_t(t.qweight(1, 7)) == 0x6543210Fu);
  }

  TEST_CASE_TEMPLATE("known facts: 3-bit, value 10 straddles words 0 and 1, value 21 words 1 and 2", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    // 3-bit needs multiples of 32 on both sides.
    rsq::matrix<std::uint8_t> codes = rsq::matrix<std::uint8_t>::from_shape({32, 64});
    fill(codes, std::uint8_t{0});
    codes(0, 10) = 5;   // 0b101: bits 30-31 of word 0 hold 01, bit 0 of word 1 holds 1
    codes(0, 21) = 3;   // 0b011: bit 31 of word 1 holds 1, bits 0-1 of word 2 hold 01
    codes(0, 42) = 7;   // second block: value 10 of words 3-5
    codes(1, 0) = 6;    // another output row, another qweight column
    rsq::matrix<float> scales = rsq::matrix<float>::from_shape({32, 1}), zeros = rsq::matrix<float>::from_shape({32, 1});
    fill(scales, 1.f);
    fill(zeros, 4.f);
    zeros(10, 0) = 6.f;  // v1 stores 5 for output row 10: 0b101 straddles qzeros words 0 and 1 as well
    rsq::vector<std::int32_t> g_idx = rsq::vector<std::int32_t>::from_shape({64});
    std::fill(g_idx.begin(), g_idx.end(), 0);
    auto const t = pack_on<B>(solver_result<float>{codes, scales, zeros, g_idx}, 3);
    REQUIRE(t.qweight.shape()[0] == 6);
    REQUIRE(t.qweight.shape()[1] == 32);
    CHECK(std::uint32_t(t.qweight(0, 0)) == 0x40000000u);
    CHECK(std::uint32_t(t.qweight(1, 0)) == 0x80000001u);
    CHECK(std::uint32_t(t.qweight(2, 0)) == 0x00000001u);
    CHECK(std::uint32_t(t.qweight(3, 0)) == 0xC0000000u);
    CHECK(std::uint32_t(t.qweight(4, 0)) == 0x00000001u);
    CHECK(std::uint32_t(t.qweight(5, 0)) == 0u);
    CHECK(std::uint32_t(t.qweight(0, 1)) == 6u);
    CHECK(std::uint32_t(t.qweight(1, 1)) == 0u);
    // zeros 4 -> stored 3 = 0b011 everywhere except row 10 (stored 5 = 0b101).
    // Word 0: values 0..9 = 3 (octal 3333333333), value 10's low bits 01 at bits 30-31.
    CHECK(std::uint32_t(t.qzeros(0, 0)) == (03333333333u | 0x40000000u));
    // Word 1: value 10's high bit 1 at bit 0, values 11..20 = 3 at bits 1..30, value 21's low bit 1 at bit 31.
    CHECK(std::uint32_t(t.qzeros(0, 1)) == (1u | (03333333333u << 1) | 0x80000000u));
    // Word 2: value 21's high bits 01 at bits 0-1, values 22..31 = 3 at bits 2..31.
    CHECK(std::uint32_t(t.qzeros(0, 2)) == (1u | (03333333333u << 2)));
    auto const u = rsq::pack::unpack_gptq(t);
    CHECK(u.codes == codes);
    CHECK(u.zeros == zeros);
  }

  TEST_CASE_TEMPLATE("golden data: the packed checkpoint dequantizes to the reference GPTQ result", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    RSQ_NEED_SHARED(shared);
    // "ist" asymmetric 4-bit cases: per row (params fit on the whole W, §6 step 1) and static groups of 128
    // (params fit on the original W's column groups, §6 step 3), with act-order. Q = s·(q − z) in float32 (§7).
    struct golden_case {
      char const* dir;
      std::size_t group_size;  // 0: per row
    };
    for (auto const gc : {golden_case{"ist_l1_wq_4b_asym.f32", 0},
                          golden_case{"ist_syn_256x512_4b_asym_g128_act_static.f32", 128}}) {
      CAPTURE(gc.dir);
      auto const dir = shared / "golden" / gc.dir;
      auto const W = rsq::io::load_npy<float, 2>(dir / "W.npy");
      auto const Q = rsq::io::load_npy<float, 2>(dir / "Q.npy");
      std::size_t const rows = W.shape()[0], cols = W.shape()[1];
      std::size_t const gs = gc.group_size ? gc.group_size : cols, groups = cols / gs;
      int const maxq = 15;
      solver_result<float> in;
      in.scales = rsq::matrix<float>::from_shape({rows, groups});
      in.zeros = rsq::matrix<float>::from_shape({rows, groups});
      in.codes = rsq::matrix<std::uint8_t>::from_shape({rows, cols});
      in.g_idx = rsq::vector<std::int32_t>::from_shape({cols});
      for (std::size_t c = 0; c < cols; ++c) in.g_idx(c) = std::int32_t(c / gs);  // static groups: original order
      for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t g = 0; g < groups; ++g) {
          float xmin = 0.f, xmax = 0.f;
          for (std::size_t c = g * gs; c < (g + 1) * gs; ++c) {
            xmin = std::min(xmin, W(r, c));
            xmax = std::max(xmax, W(r, c));
          }
          if (xmin == 0.f && xmax == 0.f) {
            xmin = -1.f;
            xmax = 1.f;
          }
          float const s = (xmax - xmin) / float(maxq);
          in.scales(r, g) = s;
          in.zeros(r, g) = std::nearbyint(-xmin / s);
        }
      std::size_t off_grid = 0;
      for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) {
          auto const g = std::size_t(in.g_idx(c));
          double const q = double(Q(r, c)) / double(in.scales(r, g)) + double(in.zeros(r, g));
          off_grid += std::abs(q - std::nearbyint(q)) > 1e-3 || q < -0.5 || q > maxq + 0.5;
          in.codes(r, c) = std::uint8_t(std::clamp(std::nearbyint(q), 0.0, double(maxq)));
        }
      REQUIRE(off_grid == 0);  // the recovered parameters are the reference's: Q lies on their grid
      auto const t = pack_on<B>(in, 4);
      auto const deq = rsq::pack::dequantize(t);
      double max_err = 0, max_q = 0;
      for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) {
          max_err = std::max(max_err, std::abs(double(deq(r, c)) - double(Q(r, c))));
          max_q = std::max(max_q, std::abs(double(Q(r, c))));
        }
      // The reference computes s·(q − z) in float32 with the same s and z: the result is bit-exact.
      CHECK(max_err == 0);
      CHECK(max_q > 0);
    }
  }

  TEST_CASE_TEMPLATE("pack_gptq rejects bad arguments with clear messages", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto in = random_result(64, 128, 4, 4, false, true, 1, 41);
    auto pack = [&](int bits = 4, zero_format fmt = zero_format::v1) { return pack_on<B>(in, bits, fmt); };
    using rsq::invalid_argument;
    SUBCASE("bits") {
      for (int bits : {-1, 0, 1, 5, 6, 7, 16, 32}) {
        CAPTURE(bits);
        CHECK_THROWS_WITH_AS(pack(bits), doctest::Contains("bits must be 2, 3, 4 or 8"), invalid_argument);
      }
    }
    SUBCASE("empty codes") {
      in.codes = rsq::matrix<std::uint8_t>::from_shape({0, 128});
      CHECK_THROWS_WITH_AS(pack(), doctest::Contains("codes (out_features x in_features) is empty"), invalid_argument);
    }
    SUBCASE("in_features that do not fill whole words") {
      auto bad = random_result(64, 12, 1, 4, false, false, 1, 42);
      CHECK_THROWS_WITH_AS((void)pack_on<B>(bad, 4), doctest::Contains("in_features = 12 is not a multiple of 8"),
                           invalid_argument);
      auto bad3 = random_result(64, 48, 1, 3, false, false, 1, 43);
      CHECK_THROWS_WITH_AS((void)pack_on<B>(bad3, 3), doctest::Contains("in_features = 48 is not a multiple of 32"),
                           invalid_argument);
      auto bad2 = random_result(64, 24, 1, 2, false, false, 1, 44);
      CHECK_THROWS_WITH_AS((void)pack_on<B>(bad2, 2), doctest::Contains("in_features = 24 is not a multiple of 16"),
                           invalid_argument);
    }
    SUBCASE("out_features that do not fill whole qzeros words") {
      auto bad = random_result(48, 64, 1, 3, false, false, 1, 45);
      CHECK_THROWS_WITH_AS((void)pack_on<B>(bad, 3), doctest::Contains("out_features = 48 is not a multiple of 32"),
                           invalid_argument);
      auto bad8 = random_result(6, 64, 1, 8, false, false, 1, 46);
      CHECK_THROWS_WITH_AS((void)pack_on<B>(bad8, 8), doctest::Contains("out_features = 6 is not a multiple of 4"),
                           invalid_argument);
    }
    SUBCASE("scales of the wrong shape") {
      in.scales = rsq::matrix<float>::from_shape({32, 4});
      fill(in.scales, 1.f);
      CHECK_THROWS_WITH_AS(pack(), doctest::Contains("scales must be (out_features x groups) with 64 rows"),
                           invalid_argument);
      in.scales = rsq::matrix<float>::from_shape({64, 0});
      CHECK_THROWS_WITH_AS(pack(), doctest::Contains("at least one group, got (64 x 0)"), invalid_argument);
    }
    SUBCASE("zeros of another shape than scales") {
      in.zeros = rsq::matrix<float>::from_shape({64, 3});
      fill(in.zeros, 1.f);
      CHECK_THROWS_WITH_AS(pack(), doctest::Contains("zeros must have the shape of scales (64 x 4), got (64 x 3)"),
                           invalid_argument);
    }
    SUBCASE("g_idx of the wrong length") {
      in.g_idx = rsq::vector<std::int32_t>::from_shape({127});
      std::fill(in.g_idx.begin(), in.g_idx.end(), 0);
      CHECK_THROWS_WITH_AS(pack(), doctest::Contains("g_idx must have one entry per input column (128), got 127"),
                           invalid_argument);
    }
    SUBCASE("g_idx out of range") {
      in.g_idx(5) = 4;
      CHECK_THROWS_WITH_AS(pack(), doctest::Contains("g_idx[5] = 4 is outside [0, 4)"), invalid_argument);
      in.g_idx(5) = -1;
      CHECK_THROWS_WITH_AS(pack(), doctest::Contains("g_idx[5] = -1 is outside [0, 4)"), invalid_argument);
    }
    SUBCASE("non-finite scales") {
      in.scales(3, 2) = std::numeric_limits<float>::quiet_NaN();
      CHECK_THROWS_WITH_AS(pack(), doctest::Contains("scales has a non-finite value (nan) at row 3, column 2"),
                           invalid_argument);
      in.scales(3, 2) = std::numeric_limits<float>::infinity();
      CHECK_THROWS_WITH_AS(pack(), doctest::Contains("scales has a non-finite value (inf) at row 3, column 2"),
                           invalid_argument);
    }
    SUBCASE("non-integer and out-of-range zeros") {
      in.zeros(7, 1) = 2.5f;
      CHECK_THROWS_WITH_AS(pack(), doctest::Contains("zeros(row 7, group 1) = 2.5 is not an integer in [0, 15]"),
                           invalid_argument);
      in.zeros(7, 1) = 16.f;
      CHECK_THROWS_WITH_AS(pack(), doctest::Contains("zeros(row 7, group 1) = 16 is not an integer in [0, 15]"),
                           invalid_argument);
      in.zeros(7, 1) = -1.f;
      CHECK_THROWS_WITH_AS(pack(4, zero_format::v2),
                           doctest::Contains("zeros(row 7, group 1) = -1 is not an integer in [0, 15]"),
                           invalid_argument);
    }
    SUBCASE("a zero of 0 cannot be stored in v1 (it would wrap), but can in v2") {
      in.zeros(3, 1) = 0.f;
      CHECK_THROWS_WITH_AS(pack(4, zero_format::v1), doctest::Contains("zeros(row 3, group 1) is 0"), invalid_argument);
      CHECK_THROWS_WITH_AS(pack(4, zero_format::v1), doctest::Contains("use zero_format::v2"), invalid_argument);
      auto const t = pack(4, zero_format::v2);
      CHECK(rsq::pack::unpack_gptq(t).zeros(3, 1) == 0.f);
    }
    SUBCASE("double scales that overflow float") {
      auto d = random_result<double>(64, 64, 1, 4, false, false, 1, 49);
      d.scales(9, 0) = 1e300;
      CHECK_THROWS_WITH_AS((void)pack_on<B>(d, 4), doctest::Contains("scales(row 9, group 0) = 1e+300 overflows float"),
                           invalid_argument);
      d.scales(9, 0) = 0.5;
      d.zeros(2, 0) = 3.0000001;
      CHECK_THROWS_WITH_AS((void)pack_on<B>(d, 4), doctest::Contains("zeros(row 2, group 0)"), invalid_argument);
    }
  }

  TEST_CASE("the CPU packer names non-finite zeros and codes out of range, also through strided codes") {
    using rsq::invalid_argument;
    auto in = random_result(64, 128, 4, 4, false, true, 1, 41);
    auto pack = [&](int bits = 4, zero_format fmt = zero_format::v1) {
      return rsq::pack::pack_gptq(in.codes, in.scales, in.zeros, in.g_idx, bits, fmt);
    };
    SUBCASE("non-finite zeros") {
      in.zeros(7, 1) = std::numeric_limits<float>::quiet_NaN();
      CHECK_THROWS_WITH_AS(pack(), doctest::Contains("zeros has a non-finite value (nan) at row 7, column 1"),
                           invalid_argument);
    }
    SUBCASE("codes above 2^bits - 1") {
      in.codes(5, 7) = 16;
      CHECK_THROWS_WITH_AS(pack(), doctest::Contains("codes(5, 7) = 16 is outside [0, 15] for 4-bit codes"),
                           invalid_argument);
      auto in3 = random_result(64, 64, 1, 3, false, false, 1, 47);
      in3.codes(63, 63) = 8;
      CHECK_THROWS_WITH_AS((void)rsq::pack::pack_gptq(in3.codes, in3.scales, in3.zeros, in3.g_idx, 3),
                           doctest::Contains("codes(63, 63) = 8 is outside [0, 7]"), invalid_argument);
      auto in2 = random_result(64, 64, 1, 2, false, false, 1, 48);
      in2.codes(0, 0) = 255;
      CHECK_THROWS_WITH_AS((void)rsq::pack::pack_gptq(in2.codes, in2.scales, in2.zeros, in2.g_idx, 2),
                           doctest::Contains("codes(0, 0) = 255 is outside [0, 3]"), invalid_argument);
      // strided codes go through the gather path
      Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic> cm(64, 64);
      for (int r = 0; r < 64; ++r)
        for (int c = 0; c < 64; ++c) cm(r, c) = in2.codes(std::size_t(r), std::size_t(c));
      cm(40, 33) = 4;
      in2.codes(0, 0) = 0;
      cm(0, 0) = 0;
      CHECK_THROWS_WITH_AS((void)rsq::pack::pack_gptq(cm, in2.scales, in2.zeros, in2.g_idx, 2),
                           doctest::Contains("codes(40, 33) = 4 is outside [0, 3]"), invalid_argument);
    }
  }

  TEST_CASE_TEMPLATE("a GPTQ result packed where the solver left it equals the host packer, for 2, 3, 4, 8 bits, "
                     "v1 and v2, groups and act-order",
                     B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    index_t const rows = 64, cols = 96;
    auto const w = random_weight(rows, cols, 1);
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
          auto const dr = rsq::gptq::solve_resident(be, w, f, {.bits = bits, .symmetric = true}, o);
          REQUIRE(dr.ok());
          auto const host = rsq::gptq::solve(be, w, f, {.bits = bits, .symmetric = true}, o);
          REQUIRE(host.ok());
          for (auto fmt : {zero_format::v1, zero_format::v2}) {
            CAPTURE(int(fmt));
            auto const got = rsq::pack::pack_gptq(be, dr.weight, fmt);
            auto const resident = rsq::pack::to_host(be, rsq::pack::pack_gptq_resident(be, dr.weight, fmt));
            auto const ref = rsq::pack::pack_gptq(rsq::view(host.weight.codes), rsq::view(host.weight.scales),
                                                  rsq::view(host.weight.zeros), rsq::view(host.weight.g_idx), bits,
                                                  fmt);
            for (auto const* t : {&got, &resident}) {
              CHECK(t->bits == bits);
              CHECK(t->format == fmt);
              CHECK(t->qweight == ref.qweight);
              CHECK(t->qzeros == ref.qzeros);
              CHECK(t->scales == ref.scales);
              CHECK(t->g_idx == ref.g_idx);
            }
            solver_result<float> const in{host.weight.codes, host.weight.scales, host.weight.zeros, host.weight.g_idx};
            check_words_against_reference(got, in, bits, fmt);
            auto const back = rsq::pack::unpack_gptq(got);
            CHECK(back.codes == host.weight.codes);
            CHECK(back.zeros == host.weight.zeros);
          }
        }
  }

  TEST_CASE_TEMPLATE("bad results are rejected with the host packer's messages", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    // All-positive rows give asymmetric zeros of 0, which zero_format::v1 cannot store.
    auto const w = random_weight(32, 64, 3, 10.0);
    auto const h = spd(64, 4);
    auto const f = rsq::gptq::factor(be, h, {});
    auto const dr = rsq::gptq::solve_resident(be, w, f, {.bits = 4}, {});
    REQUIRE(dr.ok());
    CHECK_THROWS_WITH_AS((void)rsq::pack::pack_gptq(be, dr.weight, zero_format::v1),
                         doctest::Contains("zeros(row 0, group 0) is 0, which zero_format::v1 cannot store"),
                         rsq::invalid_argument);
    CHECK_NOTHROW((void)rsq::pack::pack_gptq(be, dr.weight, zero_format::v2));
    // 3-bit packing needs in_features and out_features that are multiples of 32.
    auto const w3 = random_weight(40, 64, 5);
    auto const d3 = rsq::gptq::solve_resident(be, w3, f, {.bits = 3, .symmetric = true}, {});
    CHECK_THROWS_WITH_AS((void)rsq::pack::pack_gptq_resident(be, d3.weight), doctest::Contains("out_features = 40"),
                         rsq::invalid_argument);
    // A failed solve has no weight to pack.
    auto bad_h = rsq::make_matrix<float>(64, 64);
    for (int i = 0; i < 64; ++i) bad_h(i, i) = -1;
    auto const fb = rsq::gptq::factor(be, bad_h, {.max_damp_attempts = 2});
    auto const db = rsq::gptq::solve_resident(be, w, fb, {.bits = 4}, {});
    REQUIRE_FALSE(db.ok());
    CHECK_THROWS_WITH_AS((void)rsq::pack::pack_gptq(be, db.weight), doctest::Contains("pack_gptq: "),
                         rsq::invalid_argument);
  }

  TEST_CASE("unpack_gptq rejects inconsistent checkpoint tensors") {
    auto const in = random_result(64, 128, 4, 4, false, true, 1, 51);
    auto t = rsq::pack::pack_gptq(in.codes, in.scales, in.zeros, in.g_idx, 4);
    using rsq::invalid_argument;
    SUBCASE("bits") {
      t.bits = 5;
      CHECK_THROWS_WITH_AS((void)rsq::pack::unpack_gptq(t), doctest::Contains("unpack_gptq: bits must be 2, 3, 4 or 8 (the GPTQ int32 layout), got 5"),
                           invalid_argument);
    }
    SUBCASE("empty qweight") {
      t.qweight = xt::xtensor<std::int32_t, 2>::from_shape({0, 64});
      CHECK_THROWS_WITH_AS((void)rsq::pack::unpack_gptq(t), doctest::Contains("qweight is empty"), invalid_argument);
    }
    SUBCASE("3-bit qweight whose rows are not whole 32-value blocks") {
      auto const in3 = random_result(64, 64, 1, 3, false, false, 1, 52);
      auto t3 = rsq::pack::pack_gptq(in3.codes, in3.scales, in3.zeros, in3.g_idx, 3);
      t3.qweight = xt::xtensor<std::int32_t, 2>::from_shape({5, 64});
      CHECK_THROWS_WITH_AS((void)rsq::pack::unpack_gptq(t3), doctest::Contains("qweight has 5 rows, not a multiple of 3"),
                           invalid_argument);
    }
    SUBCASE("out_features that do not fill whole qzeros words") {
      t.qweight = xt::xtensor<std::int32_t, 2>::from_shape({16, 60});
      CHECK_THROWS_WITH_AS((void)rsq::pack::unpack_gptq(t), doctest::Contains("out_features (qweight.cols()) = 60"),
                           invalid_argument);
    }
    SUBCASE("scales of the wrong shape") {
      t.scales = xt::xtensor<float, 2>::from_shape({4, 32});
      CHECK_THROWS_WITH_AS((void)rsq::pack::unpack_gptq(t), doctest::Contains("scales must be (groups x out_features) with 64"),
                           invalid_argument);
    }
    SUBCASE("qzeros of the wrong shape") {
      t.qzeros = xt::xtensor<std::int32_t, 2>::from_shape({4, 7});
      CHECK_THROWS_WITH_AS((void)rsq::pack::unpack_gptq(t), doctest::Contains("qzeros must be (4 x 8)"), invalid_argument);
      t.qzeros = xt::xtensor<std::int32_t, 2>::from_shape({3, 8});
      CHECK_THROWS_WITH_AS((void)rsq::pack::unpack_gptq(t), doctest::Contains("got (3 x 8)"), invalid_argument);
    }
    SUBCASE("g_idx of the wrong length or out of range") {
      t.g_idx = xt::xtensor<std::int32_t, 1>::from_shape({64});
      std::fill(t.g_idx.begin(), t.g_idx.end(), 0);
      CHECK_THROWS_WITH_AS((void)rsq::pack::unpack_gptq(t), doctest::Contains("g_idx must have one entry per input column (128)"),
                           invalid_argument);
      t.g_idx = in.g_idx;
      t.g_idx(100) = 9;
      CHECK_THROWS_WITH_AS((void)rsq::pack::unpack_gptq(t), doctest::Contains("g_idx[100] = 9 is outside [0, 4)"),
                           invalid_argument);
    }
    SUBCASE("non-finite scales") {
      t.scales(2, 17) = -std::numeric_limits<float>::infinity();
      CHECK_THROWS_WITH_AS((void)rsq::pack::unpack_gptq(t), doctest::Contains("scales has a non-finite value (-inf) at row 2, column 17"),
                           invalid_argument);
    }
    SUBCASE("a v1 stored zero of 2^bits - 1 (a wrapped zero of 0)") {
      // AutoGPTQ writes zero − 1 = −1 for a zero of 0: all bits of the field (and of its word) set.
      t.qzeros(1, 0) = -1;
      CHECK_THROWS_WITH_AS((void)rsq::pack::unpack_gptq(t), doctest::Contains("qzeros (v1) stores 15 for row 0, group 1"),
                           invalid_argument);
      t.format = zero_format::v2;
      CHECK(rsq::pack::unpack_gptq(t).zeros(0, 1) == 15.f);
    }
  }

  TEST_CASE("dequantize rejects inconsistent unpacked weights") {
    auto const in = random_result(32, 64, 2, 4, false, true, 1, 61);
    auto u = rsq::pack::unpack_gptq(rsq::pack::pack_gptq(in.codes, in.scales, in.zeros, in.g_idx, 4));
    using rsq::invalid_argument;
    SUBCASE("bits") {
      u.bits = 9;
      CHECK_THROWS_WITH_AS((void)rsq::pack::dequantize(u), doctest::Contains("dequantize: bits must be 2, 3, 4 or 8 (the GPTQ int32 layout), got 9"),
                           invalid_argument);
    }
    SUBCASE("empty codes") {
      u.codes = rsq::matrix<std::uint8_t>::from_shape({32, 0});
      CHECK_THROWS_WITH_AS((void)rsq::pack::dequantize(u), doctest::Contains("codes is empty"), invalid_argument);
    }
    SUBCASE("scales and zeros of the wrong shape") {
      u.scales = rsq::matrix<float>::from_shape({31, 2});
      CHECK_THROWS_WITH_AS((void)rsq::pack::dequantize(u), doctest::Contains("scales must be (out_features x groups) with 32 rows, got (31 x 2)"),
                           invalid_argument);
      u.scales = rsq::matrix<float>::from_shape({32, 2});
      u.zeros = rsq::matrix<float>::from_shape({32, 1});
      CHECK_THROWS_WITH_AS((void)rsq::pack::dequantize(u), doctest::Contains("zeros must have the shape of scales (32 x 2), got (32 x 1)"),
                           invalid_argument);
    }
    SUBCASE("g_idx") {
      u.g_idx(63) = 2;
      CHECK_THROWS_WITH_AS((void)rsq::pack::dequantize(u), doctest::Contains("g_idx[63] = 2 is outside [0, 2)"), invalid_argument);
      u.g_idx = rsq::vector<std::int32_t>::from_shape({65});
      std::fill(u.g_idx.begin(), u.g_idx.end(), 0);
      CHECK_THROWS_WITH_AS((void)rsq::pack::dequantize(u), doctest::Contains("got 65"), invalid_argument);
    }
    SUBCASE("codes above 2^bits - 1") {
      u.codes(31, 5) = 200;
      CHECK_THROWS_WITH_AS((void)rsq::pack::dequantize(u), doctest::Contains("codes(31, 5) = 200 is outside [0, 15]"),
                           invalid_argument);
    }
  }
}
