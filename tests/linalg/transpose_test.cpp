// SPDX-License-Identifier: MIT
// Tests of the register-tile transposes (rsq/backend/cpu/transpose.hpp) against element-by-element copies: every
// size around the tile edge, leading dimensions larger than the data, float, double and bytes, tiles through arbitrary line pointers.
#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <rsq/backend/cpu/transpose.hpp>

namespace {

template <class T>
void check_transpose_copy(rsq::index_t rows, rsq::index_t cols) {
  rsq::index_t const ld_src = rows + 3, ld_dst = cols + 5;
  std::vector<T> src(std::size_t(ld_src * cols)), dst(std::size_t(ld_dst * rows), T(-7));
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = T(T(i % (sizeof(T) == 1 ? 251 : 1009)) + T(0.25));
  rsq::cpu::detail::transpose_copy(src.data(), ld_src, dst.data(), ld_dst, rows, cols);
  bool ok = true;
  for (rsq::index_t r = 0; r < rows; ++r)
    for (rsq::index_t c = 0; c < ld_dst; ++c) {
      T const expected = c < cols ? src[std::size_t(r + c * ld_src)] : T(-7);  // padding untouched
      ok = ok && dst[std::size_t(c + r * ld_dst)] == expected;
    }
  CHECK_MESSAGE(ok, "rows ", rows, " cols ", cols);
}

}  // namespace

TEST_CASE_TEMPLATE("transpose_copy equals the element-by-element transpose for every size around a tile", T, float,
                   double, std::uint8_t) {
  constexpr rsq::index_t p = rsq::cpu::detail::transpose_tile_size<T>;
  for (rsq::index_t rows : {rsq::index_t(1), p - 1, p, p + 1, 3 * p + 2})
    for (rsq::index_t cols : {rsq::index_t(1), p - 1, p, 2 * p, 2 * p + 3})
      if (rows > 0 && cols > 0) check_transpose_copy<T>(rows, cols);
}

TEST_CASE_TEMPLATE("transpose_tile reads and writes through the given line pointers", T, float, double) {
  constexpr rsq::index_t p = rsq::cpu::detail::transpose_tile_size<T>;
  std::vector<T> src(std::size_t(p * p)), dst(std::size_t(p * p * 2), T(0));
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = T(i) - T(3);
  T const* lines[p];
  T* out[p];
  for (rsq::index_t k = 0; k < p; ++k) {
    lines[k] = src.data() + (p - 1 - k) * p;  // lines in reverse order
    out[k] = dst.data() + 2 * k * p;          // every other line of dst
  }
  rsq::cpu::detail::transpose_tile(lines, out);
  bool ok = true;
  for (rsq::index_t i = 0; i < p; ++i)
    for (rsq::index_t k = 0; k < p; ++k) ok = ok && out[i][k] == lines[k][i];
  CHECK(ok);
  for (rsq::index_t i = 0; i < p; ++i)  // the lines between were not written
    for (rsq::index_t k = 0; k < p; ++k) CHECK(dst[std::size_t((2 * i + 1) * p + k)] == T(0));
}

TEST_CASE_TEMPLATE("transpose_tile with the finiteness check flags a NaN or Inf at every place of a tile", T, float,
                   double) {
  constexpr rsq::index_t p = rsq::cpu::detail::transpose_tile_size<T>;
  std::vector<T> src(std::size_t(p * p)), dst(std::size_t(p * p));
  T const* lines[p];
  T* out[p];
  for (rsq::index_t k = 0; k < p; ++k) {
    lines[k] = src.data() + k * p;
    out[k] = dst.data() + k * p;
  }
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = T(1e30) * T(i % 2 ? -1 : 1);  // large but finite
  CHECK(rsq::cpu::detail::transpose_tile<T, true>(lines, out));
  int flagged = 0, moved = 0;
  for (std::size_t at = 0; at < src.size(); ++at)
    for (T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                  -std::numeric_limits<T>::infinity()}) {
      T const keep = src[at];
      src[at] = bad;
      flagged += !rsq::cpu::detail::transpose_tile<T, true>(lines, out);
      moved += std::memcmp(&dst[(at % std::size_t(p)) * std::size_t(p) + at / std::size_t(p)], &bad, sizeof(T)) == 0;
      src[at] = keep;
    }
  CHECK(flagged == 3 * p * p);
  CHECK(moved == 3 * p * p);  // still transposed
}

TEST_CASE("byte tiles: every byte of a tile (16 x 16 with SSE2, else 8 x 8) lands in its transposed place") {
  constexpr rsq::index_t p = rsq::cpu::detail::transpose_tile_size<std::uint8_t>;
  if constexpr (p > 1) {
    std::vector<std::uint8_t> src(std::size_t(p * p)), dst(std::size_t(p * p * 2), 0);
    for (std::size_t i = 0; i < src.size(); ++i) src[i] = std::uint8_t(255 - 3 * i);  // every byte different
    std::uint8_t const* lines[p];
    std::uint8_t* out[p];
    for (rsq::index_t k = 0; k < p; ++k) {
      lines[k] = src.data() + (p - 1 - k) * p;  // lines in reverse order
      out[k] = dst.data() + 2 * k * p;          // every other line of dst
    }
    rsq::cpu::detail::transpose_byte_tile(lines, out);
    for (rsq::index_t i = 0; i < p; ++i)
      for (rsq::index_t k = 0; k < p; ++k) {
        CHECK(out[i][k] == lines[k][i]);
        CHECK(dst[std::size_t((2 * i + 1) * p + k)] == 0);  // the lines between were not written
      }
  }
}
