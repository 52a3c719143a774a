// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Transposing copies for the CPU backend, in square tiles of one SIMD packet per line (16 × 16 floats with
/// AVX-512, 8 × 8 with AVX, 4 × 4 with SSE) transposed in registers with Eigen's packet primitives: both sides are
/// read and written a whole packet at a time (scalar tiles ran at about 1 ns per element; this is memory-bound).
/// Bytes (GPTQ codes) go in 8 × 8 tiles held in eight 64-bit words.

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <Eigen/Core>

#include "rsq/core/view.hpp"

namespace rsq::cpu::detail {

template <class T>
using packet_of = typename Eigen::internal::packet_traits<T>::type;

/// Edge of a register tile for T: its packet size (1 without SIMD); 8 for bytes (a word per line).
template <class T>
inline constexpr index_t transpose_tile_size = Eigen::internal::unpacket_traits<packet_of<T>>::size;
template <>
inline constexpr index_t transpose_tile_size<std::uint8_t> = std::endian::native == std::endian::little ? 8 : 1;

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

/// One register tile: element i of every source line k (P contiguous elements at src[k], scaled by scale[k]; bytes
/// are not scaled) goes to dst[i][k], P contiguous elements per destination line.
// Flattened: Eigen's ptranspose must be inlined here, under the pragmas below (an out-of-line copy of it raises
// GCC 12's warnings where they do not reach).
template <class T>
#if defined(__GNUC__)
[[gnu::flatten]]
#endif
void transpose_tile(T const* const* src, T const* scale, T* const* dst) {
  using Packet = packet_of<T>;
  constexpr int P = int(transpose_tile_size<T>);
  if constexpr (P == 1) {
    dst[0][0] = scale[0] * src[0][0];
  } else if constexpr (std::is_same_v<T, std::uint8_t>) {
    transpose_byte_tile(src, dst);  // bytes are copied, never scaled
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
    Eigen::internal::PacketBlock<Packet, P> block;
    for (int k = 0; k < P; ++k)
      block.packet[k] =
          Eigen::internal::pmul(Eigen::internal::pset1<Packet>(scale[k]), Eigen::internal::ploadu<Packet>(src[k]));
    Eigen::internal::ptranspose(block);
    for (int i = 0; i < P; ++i) Eigen::internal::pstoreu(dst[i], block.packet[i]);
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
  }
}

/// The loop shared by the transposes, over a (rows × cols) grid of tile positions: for each whole P × P tile at
/// (r0, c0), lines(r0, c0, src, scale, dst) names its P source and P destination lines (and may scale the source
/// lines; scale[k] is 1 on entry) and transpose_tile moves element i of source line k, times scale[k], to element k
/// of destination line i; every element outside whole tiles goes through element(r, c). With @p rows_outer the
/// tiles go along c for each r0, else along r for each c0.
template <class T, class Lines, class Element>
void transpose_tiles(index_t rows, index_t cols, bool rows_outer, Lines lines, Element element) {
  constexpr index_t P = transpose_tile_size<T>;
  index_t const rows_whole = rows / P * P, cols_whole = cols / P * P;
  T const* src[P];
  T* dst[P];
  T scale[P];
  auto tile = [&](index_t r0, index_t c0) {
    std::fill_n(scale, P, T(1));
    lines(r0, c0, src, scale, dst);
    transpose_tile(src, scale, dst);
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
}

/// dst = srcᵀ for a column-major (rows × cols) src and a column-major (cols × rows) dst, leading dimensions
/// @p ld_src and @p ld_dst. The side with the longer stride is walked along its lines, P of them at a time, so that
/// it touches P pages per sweep instead of one per tile.
template <class T>
void transpose_copy(T const* src, index_t ld_src, T* dst, index_t ld_dst, index_t rows, index_t cols) {
  constexpr index_t P = transpose_tile_size<T>;
  transpose_tiles<T>(
      rows, cols, ld_src < ld_dst,
      [&](index_t r0, index_t c0, T const** s, T*, T** d) {
        for (index_t k = 0; k < P; ++k) {
          s[k] = src + r0 + (c0 + k) * ld_src;
          d[k] = dst + c0 + (r0 + k) * ld_dst;
        }
      },
      [&](index_t r, index_t c) { dst[c + r * ld_dst] = src[r + c * ld_src]; });
}

}  // namespace rsq::cpu::detail
