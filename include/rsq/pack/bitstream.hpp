// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The bit layout of GPTQ checkpoints (AutoGPTQ / GPTQModel), in one place.
///
/// A packing run (the codes of one output row along the input features, or the zeros of one group along the
/// output features) is one little-endian bitstream of 32-bit words: value number j occupies bits
/// [bits·j, bits·j + bits) of the stream, and stream bit k is bit (k mod 32) of word ⌊k/32⌋. So
///  - for bits ∈ {2, 4, 8}, word w holds values (32/bits)·w ... (32/bits)·(w+1) − 1, value j at bit bits·(j mod 32/bits);
///  - for bits = 3, every 32 values fill exactly 3 words and two values straddle word boundaries: value 10 has its low
///    two bits in bits 30–31 of word 0 and its high bit in bit 0 of word 1; value 21 has its low bit in bit 31 of
///    word 1 and its high two bits in bits 0–1 of word 2. This is AutoGPTQ's 3-bit layout.
/// In every case 32 values fill exactly `bits` words, so runs are packed in blocks of 32 values.
///
/// Nothing here needs Eigen, xtensor or exceptions, and every function is constexpr and (under nvcc) usable on the
/// device, so a CUDA packing kernel can share this code instead of re-deriving the layout.

#include <bit>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#define RSQ_PACK_HOST_DEVICE __host__ __device__
#else
#define RSQ_PACK_HOST_DEVICE
#endif

namespace rsq::pack {

/// Number of values in a packing block; a block of 32 values of `bits` bits fills exactly `bits` 32-bit words.
inline constexpr int block_values = 32;

/// True for the bit widths of the GPTQ checkpoint layout (2, 3, 4 and 8).
[[nodiscard]] RSQ_PACK_HOST_DEVICE constexpr bool supported_bits(int bits) noexcept {
  return bits == 2 || bits == 3 || bits == 4 || bits == 8;
}

/// The smallest number of values whose packed size is a whole number of 32-bit words: 32 / gcd(bits, 32)
/// (16 for 2 bits, 32 for 3, 8 for 4, 4 for 8). Run lengths must be multiples of it.
[[nodiscard]] RSQ_PACK_HOST_DEVICE constexpr int values_per_whole_words(int bits) noexcept {
  int g = 32, b = bits;  // gcd(32, bits) by Euclid
  while (b != 0) {
    int const t = g % b;
    g = b;
    b = t;
  }
  return 32 / g;
}

/// Reads value @p j of a packed run: bits [bits·j, bits·j + bits) of the little-endian bitstream @p words.
/// The reference definition of the layout; pack_block and unpack_block compute the same stream faster.
[[nodiscard]] RSQ_PACK_HOST_DEVICE constexpr std::uint32_t read_value(std::uint32_t const* words, int bits,
                                                                      std::int64_t j) noexcept {
  std::int64_t const bit = std::int64_t(bits) * j;
  std::int64_t const w = bit / 32;
  int const off = int(bit % 32);
  std::uint32_t v = words[w] >> off;
  if (off + bits > 32) v |= words[w + 1] << (32 - off);  // straddles into the next word (3-bit only)
  return v & ((std::uint32_t{1} << bits) - 1u);
}

/// Writes value @p j (its low @p bits bits) into a packed run that starts zeroed; the other values are kept.
RSQ_PACK_HOST_DEVICE constexpr void write_value(std::uint32_t* words, int bits, std::int64_t j,
                                                std::uint32_t value) noexcept {
  value &= (std::uint32_t{1} << bits) - 1u;
  std::int64_t const bit = std::int64_t(bits) * j;
  std::int64_t const w = bit / 32;
  int const off = int(bit % 32);
  words[w] |= value << off;
  if (off + bits > 32) words[w + 1] |= value >> (32 - off);
}

namespace detail {

[[nodiscard]] RSQ_PACK_HOST_DEVICE constexpr std::uint64_t low_mask(int width) noexcept {
  return width >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << width) - 1u;
}

// `pattern` repeated every `lane` bits of a 64-bit word.
[[nodiscard]] RSQ_PACK_HOST_DEVICE constexpr std::uint64_t repeat(std::uint64_t pattern, int lane) noexcept {
  std::uint64_t r = 0;
  for (int i = 0; i < 64; i += lane) r |= pattern << i;
  return r;
}

// The blocks work on 8 values at a time held one per byte of a 64-bit word (SWAR): three merge stages turn
// 8 byte lanes into the 8·Bits-bit stream of the 8 values (value i at bit Bits·i). Each stage joins neighbouring
// lanes that hold v-bit values into lanes of twice the width holding 2v-bit values, by moving the upper lane's
// value down next to the lower one. expand8 runs the stages backwards.
template <int Bits>
[[nodiscard]] RSQ_PACK_HOST_DEVICE constexpr std::uint64_t compress8(std::uint64_t x) noexcept {
  x &= repeat(low_mask(Bits), 8);
  if constexpr (Bits < 8) {
    constexpr int v1 = Bits, v2 = 2 * Bits, v3 = 4 * Bits;
    x = (x & repeat(low_mask(v1), 16)) | ((x >> (8 - v1)) & repeat(low_mask(v1) << v1, 16));
    x = (x & repeat(low_mask(v2), 32)) | ((x >> (16 - v2)) & repeat(low_mask(v2) << v2, 32));
    x = (x & low_mask(v3)) | ((x >> (32 - v3)) & (low_mask(v3) << v3));
  }
  return x;
}

template <int Bits>
[[nodiscard]] RSQ_PACK_HOST_DEVICE constexpr std::uint64_t expand8(std::uint64_t x) noexcept {
  if constexpr (Bits < 8) {
    constexpr int v1 = Bits, v2 = 2 * Bits, v3 = 4 * Bits;
    x &= low_mask(8 * Bits);
    x = (x & low_mask(v3)) | ((x << (32 - v3)) & (low_mask(v3) << 32));
    x = (x & repeat(low_mask(v2), 32)) | ((x << (16 - v2)) & repeat(low_mask(v2) << 16, 32));
    x = (x & repeat(low_mask(v1), 16)) | ((x << (8 - v1)) & repeat(low_mask(v1) << 8, 16));
  }
  return x;
}

// Low byte of each of 8 values, little-endian in a 64-bit word; one 8-byte load for bytes on little-endian hosts.
template <class V>
[[nodiscard]] RSQ_PACK_HOST_DEVICE constexpr std::uint64_t load8(V const* p) noexcept {
  if constexpr (sizeof(V) == 1 && std::endian::native == std::endian::little) {
    if (!std::is_constant_evaluated()) {
      std::uint64_t x;
      std::memcpy(&x, p, 8);
      return x;
    }
  }
  std::uint64_t x = 0;
  for (int i = 0; i < 8; ++i) x |= std::uint64_t(std::uint8_t(p[i])) << (8 * i);
  return x;
}

// The inverse of load8: byte i of x to p[i].
template <class V>
RSQ_PACK_HOST_DEVICE constexpr void store8(std::uint64_t x, V* p) noexcept {
  if constexpr (sizeof(V) == 1 && std::endian::native == std::endian::little) {
    if (!std::is_constant_evaluated()) {
      std::memcpy(p, &x, 8);
      return;
    }
  }
  for (int i = 0; i < 8; ++i) p[i] = V((x >> (8 * i)) & 0xFFu);
}

template <int Bits, class V>
RSQ_PACK_HOST_DEVICE constexpr void pack_block_impl(V const* values, std::uint32_t* words) noexcept {
  for (int i = 0; i < Bits; ++i) words[i] = 0;
  for (int c = 0; c < block_values / 8; ++c) {
    // Chunk c is bits [8·Bits·c, 8·Bits·(c+1)) of the stream; off + 8·Bits <= 64 for every supported width.
    int const bit = 8 * Bits * c, w = bit / 32, off = bit % 32;
    std::uint64_t const s = compress8<Bits>(load8(values + 8 * c)) << off;
    words[w] |= std::uint32_t(s);
    if (off + 8 * Bits > 32) words[w + 1] |= std::uint32_t(s >> 32);
  }
}

template <int Bits, class V>
RSQ_PACK_HOST_DEVICE constexpr void unpack_block_impl(std::uint32_t const* words, V* values) noexcept {
  for (int c = 0; c < block_values / 8; ++c) {
    int const bit = 8 * Bits * c, w = bit / 32, off = bit % 32;
    std::uint64_t s = words[w];
    if (off + 8 * Bits > 32) s |= std::uint64_t(words[w + 1]) << 32;
    std::uint64_t const x = expand8<Bits>(s >> off);
    store8(x, values + 8 * c);
  }
}

}  // namespace detail

/// Packs 32 values (only their low Bits bits are used) into Bits words: the same stream as write_value, computed
/// 8 values at a time with 64-bit shifts and masks.
/// @tparam Bits 2, 3, 4 or 8
/// @tparam V an unsigned integer type holding the values
template <int Bits, class V>
RSQ_PACK_HOST_DEVICE constexpr void pack_block(V const* values, std::uint32_t* words) noexcept {
  static_assert(Bits == 2 || Bits == 3 || Bits == 4 || Bits == 8, "rsq::pack: Bits must be 2, 3, 4 or 8");
  detail::pack_block_impl<Bits>(values, words);
}

/// Unpacks Bits words into 32 values (the same as read_value for j = 0..31); the inverse of pack_block.
template <int Bits, class V>
RSQ_PACK_HOST_DEVICE constexpr void unpack_block(std::uint32_t const* words, V* values) noexcept {
  static_assert(Bits == 2 || Bits == 3 || Bits == 4 || Bits == 8, "rsq::pack: Bits must be 2, 3, 4 or 8");
  detail::unpack_block_impl<Bits>(words, values);
}

}  // namespace rsq::pack
