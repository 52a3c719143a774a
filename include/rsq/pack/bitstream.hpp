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

#include <cstdint>
#include <utility>

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
/// The reference definition of the layout; the block functions below are its unrolled form.
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

template <int Bits, int J, class V>
RSQ_PACK_HOST_DEVICE constexpr void pack_one(V const* values, std::uint32_t* words) noexcept {
  constexpr int bit = Bits * J, w = bit / 32, off = bit % 32;
  std::uint32_t const v = std::uint32_t(values[J]) & ((std::uint32_t{1} << Bits) - 1u);
  words[w] |= v << off;
  if constexpr (off + Bits > 32) words[w + 1] |= v >> (32 - off);
}

template <int Bits, int J>
[[nodiscard]] RSQ_PACK_HOST_DEVICE constexpr std::uint32_t unpack_one(std::uint32_t const* words) noexcept {
  constexpr int bit = Bits * J, w = bit / 32, off = bit % 32;
  std::uint32_t v = words[w] >> off;
  if constexpr (off + Bits > 32) v |= words[w + 1] << (32 - off);
  return v & ((std::uint32_t{1} << Bits) - 1u);
}

template <int Bits, class V, int... J>
RSQ_PACK_HOST_DEVICE constexpr void pack_block_impl(V const* values, std::uint32_t* words,
                                               std::integer_sequence<int, J...>) noexcept {
  for (int i = 0; i < Bits; ++i) words[i] = 0;
  (pack_one<Bits, J>(values, words), ...);
}

template <int Bits, class V, int... J>
RSQ_PACK_HOST_DEVICE constexpr void unpack_block_impl(std::uint32_t const* words, V* values,
                                                 std::integer_sequence<int, J...>) noexcept {
  ((values[J] = V(unpack_one<Bits, J>(words))), ...);
}

}  // namespace detail

/// Packs 32 values (only their low Bits bits are used) into Bits words, fully unrolled.
/// @tparam Bits 2, 3, 4 or 8
/// @tparam V an unsigned integer type holding the values
template <int Bits, class V>
RSQ_PACK_HOST_DEVICE constexpr void pack_block(V const* values, std::uint32_t* words) noexcept {
  static_assert(Bits == 2 || Bits == 3 || Bits == 4 || Bits == 8, "rsq::pack: Bits must be 2, 3, 4 or 8");
  detail::pack_block_impl<Bits>(values, words, std::make_integer_sequence<int, block_values>{});
}

/// Unpacks Bits words into 32 values, fully unrolled; the inverse of pack_block.
template <int Bits, class V>
RSQ_PACK_HOST_DEVICE constexpr void unpack_block(std::uint32_t const* words, V* values) noexcept {
  static_assert(Bits == 2 || Bits == 3 || Bits == 4 || Bits == 8, "rsq::pack: Bits must be 2, 3, 4 or 8");
  detail::unpack_block_impl<Bits>(words, values, std::make_integer_sequence<int, block_values>{});
}

}  // namespace rsq::pack
