// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Transposing copies for the CPU backend, in square tiles of one SIMD packet per line (16 × 16 floats with
/// AVX-512, 8 × 8 with AVX, 4 × 4 with SSE) transposed in registers with Eigen's packet primitives: both sides are
/// read and written a whole packet at a time (scalar tiles ran at about 1 ns per element; this is memory-bound).
/// Bytes (GPTQ codes) go in 16 × 16 tiles of SSE2 registers on x86-64, elsewhere in 8 × 8 tiles held in eight
/// 64-bit words.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <Eigen/Core>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "rsq/core/view.hpp"

namespace rsq::cpu::detail {

template <class T>
using packet_of = typename Eigen::internal::packet_traits<T>::type;

/// Edge of a register tile for T: its packet size (1 without SIMD); for bytes 16 (an SSE2 register per line) or 8
/// (a little-endian word per line).
template <class T>
inline constexpr index_t transpose_tile_size = Eigen::internal::unpacket_traits<packet_of<T>>::size;
#if defined(__SSE2__)
template <>
inline constexpr index_t transpose_tile_size<std::uint8_t> = 16;
#else
template <>
inline constexpr index_t transpose_tile_size<std::uint8_t> = std::endian::native == std::endian::little ? 8 : 1;
#endif

#if defined(__SSE2__)
/// transpose_tile for bytes (never scaled), 16 × 16 in SSE2 registers: four rounds interleave pairs of lines by
/// 1, 2, 4 and 8 bytes, each round doubling the width of the transposed blocks (after round k, line pairs hold
/// 2^k × 2^k blocks of the transpose). Stores go straight to the destination lines.
inline void transpose_byte_tile(std::uint8_t const* const* src, std::uint8_t* const* dst) {
  __m128i a[16], b[16];
  for (int k = 0; k < 16; ++k) a[k] = _mm_loadu_si128(reinterpret_cast<__m128i const*>(src[k]));
  for (int i = 0; i < 8; ++i) {  // bytes of lines 2i, 2i + 1: columns 0-7, 8-15
    b[2 * i] = _mm_unpacklo_epi8(a[2 * i], a[2 * i + 1]);
    b[2 * i + 1] = _mm_unpackhi_epi8(a[2 * i], a[2 * i + 1]);
  }
  for (int q = 0; q < 4; ++q)  // lines 4q..4q + 3: columns 0-3, 4-7, 8-11, 12-15
    for (int h = 0; h < 2; ++h) {
      a[4 * q + 2 * h] = _mm_unpacklo_epi16(b[4 * q + h], b[4 * q + 2 + h]);
      a[4 * q + 2 * h + 1] = _mm_unpackhi_epi16(b[4 * q + h], b[4 * q + 2 + h]);
    }
  for (int o = 0; o < 2; ++o)  // lines 8o..8o + 7: column pairs 0-1, 2-3, ..., 14-15
    for (int j = 0; j < 4; ++j) {
      b[8 * o + 2 * j] = _mm_unpacklo_epi32(a[8 * o + j], a[8 * o + 4 + j]);
      b[8 * o + 2 * j + 1] = _mm_unpackhi_epi32(a[8 * o + j], a[8 * o + 4 + j]);
    }
  for (int j = 0; j < 8; ++j) {  // columns 2j and 2j + 1, all 16 lines
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst[2 * j]), _mm_unpacklo_epi64(b[j], b[8 + j]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst[2 * j + 1]), _mm_unpackhi_epi64(b[j], b[8 + j]));
  }
}
#else
/// transpose_tile for bytes (never scaled): line k is word k, byte j of it element j; three rounds swap the
/// off-diagonal blocks of 4, 2 and 1 bytes between pairs of words, a 2 × 2 block transpose at each level.
inline void transpose_byte_tile(std::uint8_t const* const* src, std::uint8_t* const* dst) {
  std::uint64_t x[8];
  for (int k = 0; k < 8; ++k) std::memcpy(&x[k], src[k], 8);
  auto swap_blocks = [&x](int i, int j, int bits, std::uint64_t low) {  // low: the first block of each pair
    std::uint64_t const a = x[i], b = x[j];
    x[i] = (a & low) | ((b & low) << bits);
    x[j] = ((a >> bits) & low) | (b & ~low);
  };
  for (int i : {0, 1, 2, 3}) swap_blocks(i, i + 4, 32, 0x00000000FFFFFFFFull);
  for (int i : {0, 1, 4, 5}) swap_blocks(i, i + 2, 16, 0x0000FFFF0000FFFFull);
  for (int i : {0, 2, 4, 6}) swap_blocks(i, i + 1, 8, 0x00FF00FF00FF00FFull);
  for (int k = 0; k < 8; ++k) std::memcpy(dst[k], &x[k], 8);
}
#endif

/// One register tile: element i of every source line k (P contiguous elements at src[k]) goes to dst[i][k], P
/// contiguous elements per destination line. With @p CheckFinite, returns whether every element moved is finite (a
/// product with zero per packet, summed: NaN if any element is NaN or Inf), so that a copy needs no second read of
/// its source to validate it; otherwise returns true.
// Flattened: Eigen's ptranspose must be inlined here, under the pragmas below (an out-of-line copy of it raises
// GCC 12's warnings where they do not reach).
template <class T, bool CheckFinite = false>
#if defined(__GNUC__)
[[gnu::flatten]]
#endif
bool transpose_tile(T const* const* src, T* const* dst) {
  using Packet = packet_of<T>;
  constexpr int P = int(transpose_tile_size<T>);
  static_assert(!(CheckFinite && std::is_integral_v<T>), "only floating-point tiles are checked");
  if constexpr (P == 1) {
    dst[0][0] = src[0][0];
    if constexpr (CheckFinite) return std::isfinite(src[0][0]);
  } else if constexpr (std::is_same_v<T, std::uint8_t>) {
    transpose_byte_tile(src, dst);
  } else {
    // Packet types carry vector attributes that a template argument drops (Eigen's own kernels silence this too),
    // and GCC 12 takes the deliberately undefined operands of AVX-512's unpack intrinsics for uninitialized reads.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif
    using namespace Eigen::internal;
    PacketBlock<Packet, P> block;
    for (int k = 0; k < P; ++k) block.packet[k] = ploadu<Packet>(src[k]);
    [[maybe_unused]] Packet zeros = pzero(Packet{});
    if constexpr (CheckFinite)
      for (int k = 0; k < P; ++k) zeros = pmadd(block.packet[k], pzero(Packet{}), zeros);
    ptranspose(block);
    for (int i = 0; i < P; ++i) pstoreu(dst[i], block.packet[i]);
    if constexpr (CheckFinite) return predux(zeros) == T(0);
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
  }
  return true;
}

/// The loop shared by the transposes, over a (rows × cols) grid of tile positions: for each whole P × P tile at
/// (r0, c0), lines(r0, c0, src, dst) names its P source and P destination lines and transpose_tile moves element i
/// of source line k to element k of destination line i; every element outside whole tiles goes through
/// element(r, c). With @p rows_outer the tiles go along c for each r0, else along r for each c0. Returns whether
/// every tile was finite with @p CheckFinite (the elements are the caller's to check), else true.
template <class T, bool CheckFinite = false, class Lines, class Element>
bool transpose_tiles(index_t rows, index_t cols, bool rows_outer, Lines lines, Element element) {
  constexpr index_t P = transpose_tile_size<T>;
  index_t const rows_whole = rows / P * P, cols_whole = cols / P * P;
  T const* src[P];
  T* dst[P];
  bool finite = true;
  auto tile = [&](index_t r0, index_t c0) {
    lines(r0, c0, src, dst);
    finite &= transpose_tile<T, CheckFinite>(src, dst);
  };
  if (rows_outer) {
    for (index_t r0 = 0; r0 < rows_whole; r0 += P)
      for (index_t c0 = 0; c0 < cols_whole; c0 += P) tile(r0, c0);
  } else {
    for (index_t c0 = 0; c0 < cols_whole; c0 += P)
      for (index_t r0 = 0; r0 < rows_whole; r0 += P) tile(r0, c0);
  }
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = (r < rows_whole ? cols_whole : 0); c < cols; ++c) element(r, c);
  return finite;
}

/// dst = srcᵀ for a column-major (rows × cols) src and a column-major (cols × rows) dst, leading dimensions
/// @p ld_src and @p ld_dst. The side with the longer stride is walked along its lines, P of them at a time, so that
/// it touches P pages per sweep instead of one per tile.
template <class T>
void transpose_copy(T const* src, index_t ld_src, T* dst, index_t ld_dst, index_t rows, index_t cols) {
  constexpr index_t P = transpose_tile_size<T>;
  transpose_tiles<T>(
      rows, cols, ld_src < ld_dst,
      [&](index_t r0, index_t c0, T const** s, T** d) {
        for (index_t k = 0; k < P; ++k) {
          s[k] = src + r0 + (c0 + k) * ld_src;
          d[k] = dst + c0 + (r0 + k) * ld_dst;
        }
      },
      [&](index_t r, index_t c) { dst[c + r * ld_dst] = src[r + c * ld_src]; });
}

}  // namespace rsq::cpu::detail
