// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The small +-1 Hadamard matrices ("hadK") that QuaRot/RSQ combine with a Sylvester transform (spec §3), plus the
/// Paley constructions that rsq uses beyond the reference table.
///
/// **Source of the reference matrices.** QuaRot (`fake_quant/hadamard_utils.py`, github.com/spcl/QuaRot) and RSQ
/// (github.com/ylsung/rsq, same file, adding had148 and had48) store 13 matrices of order K in {12, 20, 28, 36, 40,
/// 48, 52, 60, 108, 140, 148, 156, 172}, taken from N. J. A. Sloane's library of Hadamard matrices
/// (neilsloane.com/hadamard). Reading them shows that each one is a classical construction in a fixed normal form,
/// so rsq stores them as the construction plus, where needed, a first row:
///  - **Paley I** (q prime, q = 3 mod 4), order q+1: row 0 is (+1, -1, ..., -1); row i >= 1 is (+1, c_i) with the
///    circulant core c_i[j] = +1 if i = j, else -chi(j - i mod q) (chi = Legendre symbol). This is had12 (q=11),
///    had20 (19), had48 (47), had60 (59), had108 (107) and had140 (139).
///  - **Paley II** (q prime, q = 1 mod 4), order 2(q+1): with the symmetric conference matrix C (C[0][j] = C[j][0]
///    = 1 for j >= 1, C[0][0] = 0, C[i][j] = chi(j - i) otherwise), H = [[C+I, C-I], [C-I, -C-I]]. This is had28
///    (q=13) and had36 (q=17).
///  - **Doubling**: had40 = [[had20, had20], [had20, -had20]].
///  - **Williamson array** of four circulant m x m blocks A, B, C, D (m = K/4):
///    H = [[A, B, C, D], [-B, A, -D, C], [-C, D, A, -B], [-D, -C, B, A]], block row i of a circulant with first
///    row a being a shifted right by i. had52, had148, had156 and had172; their first rows (A|B|C|D) are stored
///    below as hex strings (bit = 1 for +1, most significant bit first), transcribed from the reference source.
/// The tests prove that every matrix equals the reference's (loaded from the golden .npy files at test time) and
/// that H Hᵀ = K I. Matrices are decoded on first use and cached.

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <mutex>
#include <string_view>
#include <vector>

#include "rsq/core/error.hpp"
#include "rsq/core/view.hpp"

namespace rsq::rotation {

/// The orders of the reference hadK matrices, in the order in which RSQ's `get_hadK` tries them (spec §3).
inline constexpr std::array<index_t, 13> reference_hadamard_orders = {172, 156, 148, 140, 108, 60, 52,
                                                                     36,  28,  40,  20,  48,  12};

/// A dense +-1 matrix of order k, row-major.
struct sign_matrix {
  index_t k = 0;
  std::vector<std::int8_t> values;  ///< (k, k), row-major, entries +1 / -1
  [[nodiscard]] std::int8_t operator()(index_t i, index_t j) const noexcept { return values[std::size_t(i * k + j)]; }
};

namespace detail {

/// True when @p n is prime (trial division; n is at most a few hundred thousand here).
[[nodiscard]] constexpr bool is_prime(index_t n) noexcept {
  if (n < 2) return false;
  if (n % 2 == 0) return n == 2;
  for (index_t d = 3; d * d <= n; d += 2)
    if (n % d == 0) return false;
  return true;
}

/// chi[a] for a in [0, q): the Legendre symbol (a / q) of an odd prime q (0 for a = 0).
[[nodiscard]] inline std::vector<std::int8_t> legendre_table(index_t q) {
  std::vector<std::int8_t> chi(std::size_t(q), -1);
  chi[0] = 0;
  for (index_t x = 1; x <= q / 2; ++x) chi[std::size_t((x * x) % q)] = 1;  // the quadratic residues
  return chi;
}

[[nodiscard]] inline int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/// The Williamson array from the concatenated first rows (A|B|C|D) given as hex (bit 1 = +1, MSB first).
[[nodiscard]] inline sign_matrix williamson_from_hex(index_t k, std::string_view hex) {
  index_t const m = k / 4;
  std::vector<std::int8_t> first(static_cast<std::size_t>(k));
  for (index_t i = 0; i < k; ++i) {
    int const d = hex_digit(hex[std::size_t(i / 4)]);
    RSQ_ASSERT(d >= 0);
    first[std::size_t(i)] = ((d >> (3 - i % 4)) & 1) ? 1 : -1;
  }
  // Block (r, c) of the array is sign[r][c] * circulant(first row of block src[r][c]).
  constexpr int src[4][4] = {{0, 1, 2, 3}, {1, 0, 3, 2}, {2, 3, 0, 1}, {3, 2, 1, 0}};
  constexpr int sgn[4][4] = {{1, 1, 1, 1}, {-1, 1, -1, 1}, {-1, 1, 1, -1}, {-1, -1, 1, 1}};
  sign_matrix h{k, std::vector<std::int8_t>(std::size_t(k * k))};
  for (index_t i = 0; i < k; ++i)
    for (index_t j = 0; j < k; ++j) {
      index_t const bi = i / m, bj = j / m, ii = i % m, jj = j % m;
      int const v = first[std::size_t(src[bi][bj] * m + (jj - ii + m) % m)];
      h.values[std::size_t(i * k + j)] = std::int8_t(v * sgn[bi][bj]);
    }
  return h;
}

// First rows (A|B|C|D) of the Williamson-type reference matrices, from QuaRot/RSQ `hadamard_utils.py`
// (get_had52, get_had148, get_had156, get_had172, row 0).
inline constexpr std::string_view had52_first_row = "A7947E34CB090";
inline constexpr std::string_view had148_first_row = "D4327930AEA193C9857DE91E25EF10B70ED08";
inline constexpr std::string_view had156_first_row = "E504C320A7E2614A191F9A2909459C6A0EDC158";
inline constexpr std::string_view had172_first_row = "8CF5D9BAF31BF0A6D943F7ACAF42F535E3D260192F1";

}  // namespace detail

/// Paley I Hadamard matrix of order q+1 (q prime, q = 3 mod 4) in the normal form of the reference (file comment).
[[nodiscard]] inline sign_matrix paley1_hadamard(index_t q) {
  RSQ_EXPECTS(detail::is_prime(q) && q % 4 == 3, "paley1_hadamard: q must be a prime = 3 (mod 4), got ", q);
  auto const chi = detail::legendre_table(q);
  index_t const k = q + 1;
  sign_matrix h{k, std::vector<std::int8_t>(std::size_t(k * k))};
  h.values[0] = 1;
  for (index_t j = 1; j < k; ++j) h.values[std::size_t(j)] = -1;
  for (index_t i = 1; i < k; ++i) {
    h.values[std::size_t(i * k)] = 1;
    for (index_t j = 1; j < k; ++j)
      h.values[std::size_t(i * k + j)] = (i == j) ? std::int8_t(1) : std::int8_t(-chi[std::size_t((j - i + q) % q)]);
  }
  return h;
}

/// Paley II Hadamard matrix of order 2(q+1) (q prime, q = 1 mod 4): [[C+I, C-I], [C-I, -C-I]] (file comment).
[[nodiscard]] inline sign_matrix paley2_hadamard(index_t q) {
  RSQ_EXPECTS(detail::is_prime(q) && q % 4 == 1, "paley2_hadamard: q must be a prime = 1 (mod 4), got ", q);
  auto const chi = detail::legendre_table(q);
  index_t const m = q + 1, k = 2 * m;
  auto conference = [&](index_t i, index_t j) -> int {
    if (i == 0 || j == 0) return (i == j) ? 0 : 1;
    return chi[std::size_t((j - i + q) % q)];
  };
  sign_matrix h{k, std::vector<std::int8_t>(std::size_t(k * k))};
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < m; ++j) {
      int const c = conference(i, j), d = (i == j) ? 1 : 0;
      h.values[std::size_t(i * k + j)] = std::int8_t(c + d);
      h.values[std::size_t(i * k + j + m)] = std::int8_t(c - d);
      h.values[std::size_t((i + m) * k + j)] = std::int8_t(c - d);
      h.values[std::size_t((i + m) * k + j + m)] = std::int8_t(-c - d);
    }
  return h;
}

/// Sylvester Hadamard matrix of order k = 2^m in natural order: H[i][j] = (-1)^popcount(i & j).
[[nodiscard]] inline sign_matrix sylvester_hadamard(index_t k) {
  RSQ_EXPECTS(k > 0 && (k & (k - 1)) == 0, "sylvester_hadamard: the order must be a power of two, got ", k);
  sign_matrix h{k, std::vector<std::int8_t>(std::size_t(k * k))};
  for (index_t i = 0; i < k; ++i)
    for (index_t j = 0; j < k; ++j)
      h.values[std::size_t(i * k + j)] = (std::popcount(std::uint64_t(i & j)) % 2) ? -1 : 1;
  return h;
}

/// The reference hadK of order @p k (one of reference_hadamard_orders), exactly as QuaRot/RSQ store it (not
/// transposed). Decoded on first use; the returned reference stays valid for the program's lifetime.
[[nodiscard]] inline sign_matrix const& reference_hadamard(index_t k) {
  auto const it = std::find(reference_hadamard_orders.begin(), reference_hadamard_orders.end(), k);
  RSQ_EXPECTS(it != reference_hadamard_orders.end(),
              "reference_hadamard: no reference matrix of order ", k,
              " (the reference table has 12, 20, 28, 36, 40, 48, 52, 60, 108, 140, 148, 156, 172)");
  static std::array<sign_matrix, reference_hadamard_orders.size()> cache;
  static std::array<std::once_flag, reference_hadamard_orders.size()> once;
  std::size_t const slot = std::size_t(it - reference_hadamard_orders.begin());
  std::call_once(once[slot], [&] {
    switch (k) {
      case 12: cache[slot] = paley1_hadamard(11); break;
      case 20: cache[slot] = paley1_hadamard(19); break;
      case 28: cache[slot] = paley2_hadamard(13); break;
      case 36: cache[slot] = paley2_hadamard(17); break;
      case 40: {  // [[had20, had20], [had20, -had20]]
        auto const& h20 = reference_hadamard(20);
        sign_matrix h{40, std::vector<std::int8_t>(40 * 40)};
        for (index_t i = 0; i < 20; ++i)
          for (index_t j = 0; j < 20; ++j) {
            std::int8_t const v = h20(i, j);
            h.values[std::size_t(i * 40 + j)] = v;
            h.values[std::size_t(i * 40 + j + 20)] = v;
            h.values[std::size_t((i + 20) * 40 + j)] = v;
            h.values[std::size_t((i + 20) * 40 + j + 20)] = std::int8_t(-v);
          }
        cache[slot] = std::move(h);
        break;
      }
      case 48: cache[slot] = paley1_hadamard(47); break;
      case 52: cache[slot] = detail::williamson_from_hex(52, detail::had52_first_row); break;
      case 60: cache[slot] = paley1_hadamard(59); break;
      case 108: cache[slot] = paley1_hadamard(107); break;
      case 140: cache[slot] = paley1_hadamard(139); break;
      case 148: cache[slot] = detail::williamson_from_hex(148, detail::had148_first_row); break;
      case 156: cache[slot] = detail::williamson_from_hex(156, detail::had156_first_row); break;
      case 172: cache[slot] = detail::williamson_from_hex(172, detail::had172_first_row); break;
      default: RSQ_ASSERT(false);
    }
  });
  return cache[slot];
}

}  // namespace rsq::rotation
