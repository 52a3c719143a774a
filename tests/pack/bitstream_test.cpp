// SPDX-License-Identifier: MIT
// The bit layout of rsq/pack/bitstream.hpp against an independent bit-by-bit reference and hand-computed words.
#include <doctest/doctest.h>

#include <array>
#include <cstdint>
#include <random>
#include <vector>

#include <rsq/pack/bitstream.hpp>

namespace {

// Reference: bit b of value j is bit (bits·j + b) of the little-endian stream of 32-bit words.
std::vector<std::uint32_t> reference_stream(std::vector<std::uint32_t> const& values, int bits) {
  std::vector<std::uint32_t> words((values.size() * std::size_t(bits) + 31) / 32, 0u);
  for (std::size_t j = 0; j < values.size(); ++j)
    for (int b = 0; b < bits; ++b)
      if ((values[j] >> b) & 1u) {
        std::size_t const k = std::size_t(bits) * j + std::size_t(b);
        words[k / 32] |= std::uint32_t{1} << (k % 32);
      }
  return words;
}

std::vector<std::uint32_t> random_values(std::size_t n, int bits, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<std::uint32_t> v(n);
  for (auto& x : v) x = gen() & ((1u << bits) - 1u);
  return v;
}

template <int Bits>
void check_blocks_against_reference(std::uint32_t seed) {
  CAPTURE(Bits);
  for (int rep = 0; rep < 50; ++rep) {
    auto const values = random_values(32, Bits, seed + std::uint32_t(rep));
    auto const ref = reference_stream(values, Bits);
    REQUIRE(ref.size() == std::size_t(Bits));
    std::array<std::uint32_t, Bits> words{};
    rsq::pack::pack_block<Bits>(values.data(), words.data());
    for (int i = 0; i < Bits; ++i) CHECK(words[std::size_t(i)] == ref[std::size_t(i)]);
    // uint8 input (how codes arrive) gives the same words.
    std::array<std::uint8_t, 32> v8{};
    for (int j = 0; j < 32; ++j) v8[std::size_t(j)] = std::uint8_t(values[std::size_t(j)]);
    std::array<std::uint32_t, Bits> words8{};
    rsq::pack::pack_block<Bits>(v8.data(), words8.data());
    CHECK(words8 == words);
    std::array<std::uint8_t, 32> back{};
    rsq::pack::unpack_block<Bits>(ref.data(), back.data());
    CHECK(back == v8);
  }
}

}  // namespace

TEST_SUITE("pack.bitstream") {
  TEST_CASE("pack_block and unpack_block agree with the bit-by-bit reference for 2, 3, 4 and 8 bits") {
    check_blocks_against_reference<2>(1);
    check_blocks_against_reference<3>(2);
    check_blocks_against_reference<4>(3);
    check_blocks_against_reference<8>(4);
  }

  TEST_CASE("read_value and write_value agree with the reference on long runs") {
    for (int bits : {2, 3, 4, 8}) {
      CAPTURE(bits);
      auto const values = random_values(32 * 7, bits, 100 + std::uint32_t(bits));
      auto const ref = reference_stream(values, bits);
      std::vector<std::uint32_t> words(ref.size() + 1, 0u);  // one spare word: nothing may be written there
      for (std::size_t j = 0; j < values.size(); ++j) rsq::pack::write_value(words.data(), bits, std::int64_t(j), values[j]);
      for (std::size_t i = 0; i < ref.size(); ++i) CHECK(words[i] == ref[i]);
      CHECK(words.back() == 0u);
      for (std::size_t j = 0; j < values.size(); ++j)
        CHECK(rsq::pack::read_value(ref.data(), bits, std::int64_t(j)) == values[j]);
    }
  }

  TEST_CASE("hand-computed words: sequential values at 2, 4 and 8 bits") {
    // 2-bit: 0,1,2,3 repeated -> each byte is 0b11'10'01'00 = 0xE4.
    std::array<std::uint8_t, 32> v{};
    for (int j = 0; j < 32; ++j) v[std::size_t(j)] = std::uint8_t(j % 4);
    std::array<std::uint32_t, 2> w2{};
    rsq::pack::pack_block<2>(v.data(), w2.data());
    CHECK(w2[0] == 0xE4E4E4E4u);
    CHECK(w2[1] == 0xE4E4E4E4u);
    // 4-bit: 0..7 in the first word -> hex digits read 76543210; 8..15 -> FEDCBA98.
    for (int j = 0; j < 32; ++j) v[std::size_t(j)] = std::uint8_t(j % 16);
    std::array<std::uint32_t, 4> w4{};
    rsq::pack::pack_block<4>(v.data(), w4.data());
    CHECK(w4[0] == 0x76543210u);
    CHECK(w4[1] == 0xFEDCBA98u);
    // 8-bit: bytes in increasing address order, little endian.
    for (int j = 0; j < 32; ++j) v[std::size_t(j)] = std::uint8_t(j + 1);
    std::array<std::uint32_t, 8> w8{};
    rsq::pack::pack_block<8>(v.data(), w8.data());
    CHECK(w8[0] == 0x04030201u);
    CHECK(w8[7] == 0x201F1E1Du);
  }

  TEST_CASE("hand-computed words: AutoGPTQ's 3-bit layout with values straddling words") {
    auto pack3 = [](std::array<std::uint8_t, 32> const& v) {
      std::array<std::uint32_t, 3> w{};
      rsq::pack::pack_block<3>(v.data(), w.data());
      return w;
    };
    std::array<std::uint8_t, 32> v{};
    SUBCASE("value 10 = 0b111: bits 30-31 of word 0 and bit 0 of word 1") {
      v[10] = 7;
      auto const w = pack3(v);
      CHECK(w[0] == 0xC0000000u);
      CHECK(w[1] == 0x00000001u);
      CHECK(w[2] == 0u);
    }
    SUBCASE("value 10 = 0b101: low bits 01 in word 0, high bit 1 in word 1") {
      v[10] = 5;
      auto const w = pack3(v);
      CHECK(w[0] == 0x40000000u);
      CHECK(w[1] == 0x00000001u);
    }
    SUBCASE("value 21 = 0b011: bit 31 of word 1 and bits 0-1 of word 2") {
      v[21] = 3;
      auto const w = pack3(v);
      CHECK(w[0] == 0u);
      CHECK(w[1] == 0x80000000u);
      CHECK(w[2] == 0x00000001u);
    }
    SUBCASE("values 11 and 22 start at bit 1 of word 1 and bit 2 of word 2; value 31 ends word 2") {
      v[0] = 1;
      v[11] = 1;
      v[22] = 1;
      v[31] = 7;
      auto const w = pack3(v);
      CHECK(w[0] == 0x00000001u);
      CHECK(w[1] == 0x00000002u);
      CHECK(w[2] == 0xE0000004u);
    }
    SUBCASE("values 0..9 fill bits 0-29 of word 0") {
      for (int j = 0; j < 10; ++j) v[std::size_t(j)] = std::uint8_t(j % 8);
      // 0,1,2,...,7,0,1 at 3 bits each: 0o1076543210 read as octal digits from the top.
      auto const w = pack3(v);
      CHECK(w[0] == 01076543210u);
    }
    // Whatever the subcase, unpacking the words gives the values back.
    auto const w = pack3(v);
    std::array<std::uint8_t, 32> back{};
    rsq::pack::unpack_block<3>(w.data(), back.data());
    CHECK(back == v);
  }

  TEST_CASE("values are masked to their bit width and the layout helpers are constexpr") {
    std::array<std::uint32_t, 32> v{};
    v[0] = 0xFFu;  // only the low 4 bits may land in the stream
    std::array<std::uint32_t, 4> w{};
    rsq::pack::pack_block<4>(v.data(), w.data());
    CHECK(w[0] == 0xFu);
    CHECK(w[1] == 0u);

    static_assert(rsq::pack::values_per_whole_words(2) == 16);
    static_assert(rsq::pack::values_per_whole_words(3) == 32);
    static_assert(rsq::pack::values_per_whole_words(4) == 8);
    static_assert(rsq::pack::values_per_whole_words(8) == 4);
    static_assert(rsq::pack::supported_bits(3) && !rsq::pack::supported_bits(5) && !rsq::pack::supported_bits(1));
    constexpr std::uint32_t words[3] = {0xC0000000u, 0x00000001u, 0u};
    static_assert(rsq::pack::read_value(words, 3, 10) == 7u);
    static_assert(rsq::pack::read_value(words, 3, 9) == 0u);
    CHECK(rsq::pack::values_per_whole_words(3) == 32);
  }
}
