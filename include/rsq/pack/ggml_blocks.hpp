// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// llama.cpp's tensor types (ggml types) as GGUF files store them (../shared/docs/formats.md §5): the type ids and
/// block sizes of every common type, and for the types rsq writes (F32, F16, Q4_0, Q4_1, Q8_0) the block layout in
/// both directions plus llama.cpp's own round-to-nearest rules.
///
/// A row of n elements is n / block_elements blocks of block_bytes bytes, each covering consecutive elements:
///  - Q4_0: fp16 d, then 16 bytes of nibbles; byte j holds element j (low nibble) and j + 16 (high); x = d·(q − 8);
///  - Q4_1: fp16 d, fp16 m, then the nibbles as Q4_0; x = d·q + m;
///  - Q8_0: fp16 d, then 32 int8 q; x = d·q.
/// Dequantization evaluates those products and sums in float, one rounding each (no fused multiply-add), as
/// llama.cpp's `dequantize_row_*` do: a weight rsq solved on these grids dequantizes to the same float here and there.
///
/// quantize_row_reference() reproduces llama.cpp's `quantize_row_*_ref` bit for bit (tested against the library
/// itself): Q4_0's d = −max/8 of the element with the largest magnitude (the first one on ties) and codes
/// min(15, trunc(x·(1/d) + 8.5)); Q4_1's d = (max − min)/15, m = min, codes min(15, trunc((x − m)·(1/d) + 0.5));
/// Q8_0's d = amax/127 and codes roundf(x·(1/d)) (halves away from zero). The reciprocal comes from d before it is
/// rounded to fp16 — llama.cpp's rule, which the GPTQ grids of rsq/quant/grid.hpp deliberately do not share (they
/// round d first so that the solver sees the grid the file stores).

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "rsq/core/error.hpp"
#include "rsq/core/half.hpp"
#include "rsq/core/view.hpp"
#include "rsq/quant/grid.hpp"
#include "rsq/quant/quantized_weight.hpp"

namespace rsq::pack {

/// ggml tensor type ids (ggml.h `enum ggml_type`), as stored in GGUF tensor infos. Only F32, F16, Q4_0, Q4_1 and
/// Q8_0 are written by rsq; the others are known so that a reader can size and name them.
enum class ggml_type : std::uint32_t {
  f32 = 0,
  f16 = 1,
  q4_0 = 2,
  q4_1 = 3,
  q5_0 = 6,
  q5_1 = 7,
  q8_0 = 8,
  q8_1 = 9,
  q2_k = 10,
  q3_k = 11,
  q4_k = 12,
  q5_k = 13,
  q6_k = 14,
  q8_k = 15,
  i8 = 24,
  i16 = 25,
  i32 = 26,
  i64 = 27,
  f64 = 28,
  bf16 = 30,
};

/// Name, block size and byte size of one ggml type.
struct ggml_type_traits {
  ggml_type type;
  std::string_view name;   ///< llama.cpp's name ("Q4_0", …)
  index_t block_elements;  ///< consecutive elements per block (1 for plain types)
  std::size_t block_bytes; ///< bytes per block
  bool decodable;          ///< dequantize_row() converts it
};

namespace detail {
inline constexpr std::array<ggml_type_traits, 20> ggml_type_table{{
    {ggml_type::f32, "F32", 1, 4, true},      {ggml_type::f16, "F16", 1, 2, true},
    {ggml_type::q4_0, "Q4_0", 32, 18, true},  {ggml_type::q4_1, "Q4_1", 32, 20, true},
    {ggml_type::q5_0, "Q5_0", 32, 22, false}, {ggml_type::q5_1, "Q5_1", 32, 24, false},
    {ggml_type::q8_0, "Q8_0", 32, 34, true},  {ggml_type::q8_1, "Q8_1", 32, 36, false},
    {ggml_type::q2_k, "Q2_K", 256, 84, false}, {ggml_type::q3_k, "Q3_K", 256, 110, false},
    {ggml_type::q4_k, "Q4_K", 256, 144, false}, {ggml_type::q5_k, "Q5_K", 256, 176, false},
    {ggml_type::q6_k, "Q6_K", 256, 210, false}, {ggml_type::q8_k, "Q8_K", 256, 292, false},
    {ggml_type::i8, "I8", 1, 1, false},       {ggml_type::i16, "I16", 1, 2, false},
    {ggml_type::i32, "I32", 1, 4, false},     {ggml_type::i64, "I64", 1, 8, false},
    {ggml_type::f64, "F64", 1, 8, false},     {ggml_type::bf16, "BF16", 1, 2, true},
}};
}  // namespace detail

/// The traits of type id @p id, or nothing for an id rsq does not know.
[[nodiscard]] constexpr std::optional<ggml_type_traits> find_ggml_type(std::uint32_t id) noexcept {
  for (auto const& t : detail::ggml_type_table)
    if (std::uint32_t(t.type) == id) return t;
  return std::nullopt;
}

/// The traits of @p t (every enumerator has them).
[[nodiscard]] constexpr ggml_type_traits traits(ggml_type t) noexcept { return *find_ggml_type(std::uint32_t(t)); }

/// The type named @p name ("q4_0", "Q8_0", "f16", …; case-insensitive), or nothing.
[[nodiscard]] inline std::optional<ggml_type> parse_ggml_type(std::string_view name) noexcept {
  for (auto const& t : detail::ggml_type_table) {
    if (t.name.size() != name.size()) continue;
    bool same = true;
    for (std::size_t i = 0; i < name.size() && same; ++i) {
      char c = name[i];
      if (c >= 'a' && c <= 'z') c = char(c - 'a' + 'A');
      same = c == t.name[i];
    }
    if (same) return t.type;
  }
  return std::nullopt;
}

/// Bytes of a row of @p n elements of type @p t.
/// @throws rsq::invalid_argument unless @p n is a positive multiple of the type's block size
[[nodiscard]] inline std::size_t row_bytes(ggml_type t, index_t n) {
  auto const tr = traits(t);
  RSQ_EXPECTS(n > 0 && n % tr.block_elements == 0, "ggml ", tr.name, ": a row of ", n,
              " elements is not a positive multiple of the block size ", tr.block_elements);
  return std::size_t(n / tr.block_elements) * tr.block_bytes;
}

namespace detail {

inline float load_f16(std::byte const* p) noexcept {
  std::uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_float(h);
}
inline void store_f16(std::byte* p, float f) noexcept {
  std::uint16_t const h = float_to_f16(f);
  std::memcpy(p, &h, 2);
}

// a·b rounded on its own: never contracted with a following addition into a fused multiply-add (which GCC does
// across inlined calls where the target has FMA), as llama.cpp's scalar code rounds it.
[[nodiscard]] inline float mul(float a, float b) noexcept {
  volatile float p = a * b;
  return p;
}

}  // namespace detail

/// The floats of one row of @p n elements of type @p t stored in @p src into @p dst.
/// @throws rsq::invalid_argument for a type that is not decodable, or sizes that do not match
inline void dequantize_row(ggml_type t, std::span<const std::byte> src, std::span<float> dst) {
  auto const tr = traits(t);
  index_t const n = index_t(dst.size());
  RSQ_EXPECTS(tr.decodable, "ggml: dequantizing ", tr.name, " is not supported");
  RSQ_EXPECTS(src.size() == row_bytes(t, n), "ggml ", tr.name, ": ", src.size(), " bytes for ", n, " elements, expected ",
              row_bytes(t, n));
  std::byte const* p = src.data();
  float* y = dst.data();
  switch (t) {
    case ggml_type::f32:
      std::memcpy(y, p, std::size_t(n) * 4);
      return;
    case ggml_type::f16:
      for (index_t i = 0; i < n; i += 256) {  // the bytes may be unaligned: through a buffer
        std::uint16_t h[256];
        std::size_t const k = std::size_t(std::min<index_t>(256, n - i));
        std::memcpy(h, p + 2 * i, k * 2);
        f16s_to_float(h, y + i, k);
      }
      return;
    case ggml_type::bf16:
      for (index_t i = 0; i < n; ++i) {
        std::uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        y[i] = bf16_to_float(h);
      }
      return;
    case ggml_type::q4_0:
      for (index_t b = 0; b < n / 32; ++b, p += 18, y += 32) {
        float const d = detail::load_f16(p);
        for (int j = 0; j < 16; ++j) {
          auto const v = std::uint8_t(p[2 + j]);
          y[j] = float(int(v & 0x0F) - 8) * d;
          y[j + 16] = float(int(v >> 4) - 8) * d;
        }
      }
      return;
    case ggml_type::q4_1:
      for (index_t b = 0; b < n / 32; ++b, p += 20, y += 32) {
        float const d = detail::load_f16(p), m = detail::load_f16(p + 2);
        for (int j = 0; j < 16; ++j) {
          auto const v = std::uint8_t(p[4 + j]);
          y[j] = detail::mul(float(v & 0x0F), d) + m;
          y[j + 16] = detail::mul(float(v >> 4), d) + m;
        }
      }
      return;
    case ggml_type::q8_0:
      for (index_t b = 0; b < n / 32; ++b, p += 34, y += 32) {
        float const d = detail::load_f16(p);
        for (int j = 0; j < 32; ++j) y[j] = float(std::int8_t(p[2 + j])) * d;
      }
      return;
    default:
      break;
  }
  rsq::detail::throw_invalid_argument("ggml: dequantizing ", tr.name, " is not supported");
}

/// The solver grid whose codes a block of type @p t stores (Q4_0, Q4_1, Q8_0: rsq/quant/grid.hpp's conventions).
/// @throws rsq::invalid_argument for another type
[[nodiscard]] inline quant::grid_spec block_grid(ggml_type t) {
  switch (t) {
    case ggml_type::q4_0:
      return {.bits = 4, .symmetric = true, .conv = quant::convention::q4_0};
    case ggml_type::q4_1:
      return {.bits = 4, .symmetric = false, .conv = quant::convention::q4_1};
    case ggml_type::q8_0:
      return {.bits = 8, .symmetric = true, .conv = quant::convention::q8_0};
    default:
      break;
  }
  rsq::detail::throw_invalid_argument("ggml: ", traits(t).name, " is not a block type rsq solves on (Q4_0, Q4_1, Q8_0)");
}

/// The GGUF bytes of a weight (rows, cols) solved on the block grid of @p t (gptq::solve or quant::quantize_rtn with
/// block_grid(t), groups of 32 or a multiple, in original column order) into @p out (rows × row_bytes(t, cols) bytes,
/// row-major): each row's blocks hold its groups' fp16 scales (and Q4_1 offsets) and codes exactly, so that
/// dequantize_row() of the bytes gives the solver's dequantized weight.
/// @throws rsq::invalid_argument for a weight of another grid (bits, zero points, offset form), a block whose columns
///         lie in two groups (act-order with dynamic groups), a scale or offset that is not an fp16 value, or an
///         @p out of another size
template <class T>
void pack_weight(ggml_type t, quant::quantized_weight<T> const& q, std::span<std::byte> out) {
  auto const grid = block_grid(t);
  auto const tr = traits(t);
  index_t const rows = q.rows(), cols = q.cols(), groups = q.groups();
  std::size_t const row_size = row_bytes(t, cols);
  RSQ_EXPECTS(q.bits == grid.bits && q.offset == grid.offset_form(), "ggml ", tr.name, ": the weight was quantized with ",
              q.bits, "-bit ", q.offset ? "offset" : "zero-point", " codes, not on the ", tr.name, " grid");
  RSQ_EXPECTS(index_t(q.g_idx.size()) == cols, "ggml ", tr.name, ": g_idx has ", q.g_idx.size(), " entries for ",
              cols, " columns");
  RSQ_EXPECTS(out.size() == std::size_t(rows) * row_size, "ggml ", tr.name, ": ", out.size(), " bytes for a weight of ",
              rows, " x ", cols, ", expected ", std::size_t(rows) * row_size);
  std::int32_t const* g_idx = q.g_idx.data();
  for (index_t c = 0; c < cols; ++c)
    RSQ_EXPECTS(g_idx[c] == g_idx[c / 32 * 32] && g_idx[c] >= 0 && g_idx[c] < groups, "ggml ", tr.name, ": column ", c,
                " is in group ", g_idx[c], ", its block's first column in group ", g_idx[c / 32 * 32],
                " (a block is 32 consecutive columns of one group)");
  // Every (row, group)'s parameters are checked once, as the halves the blocks store.
  std::vector<std::uint16_t> d(static_cast<std::size_t>(rows * groups)), m(grid.offset_form() ? d.size() : 0);
  T const zero = T(grid.conv == quant::convention::q8_0 ? 128 : 8);
  for (index_t i = 0; i < rows * groups; ++i) {
    T const s = q.scales.data()[i], z = q.zeros.data()[i];
    d[std::size_t(i)] = float_to_f16(float(s));
    if (grid.offset_form()) m[std::size_t(i)] = float_to_f16(float(z));
    RSQ_EXPECTS(float(s) == f16_to_float(d[std::size_t(i)]) &&
                    (!grid.offset_form() || float(z) == f16_to_float(m[std::size_t(i)])),
                "ggml ", tr.name, ": row ", i / groups, " group ", i % groups, " has a scale or offset that is not an "
                "fp16 value (not solved on the ", tr.name, " grid)");
    RSQ_EXPECTS(grid.offset_form() || z == zero, "ggml ", tr.name, ": row ", i / groups, " group ", i % groups,
                " has zero point ", z, ", not the grid's");
  }
  std::size_t const head = t == ggml_type::q4_1 ? 4 : 2;  // the halves before the codes
  for (index_t r = 0; r < rows; ++r) {
    std::uint8_t const* codes = q.codes.data() + r * cols;
    std::byte* dst = out.data() + std::size_t(r) * row_size;
    for (index_t b = 0; b < cols / 32; ++b, dst += tr.block_bytes, codes += 32) {
      std::size_t const g = std::size_t(r * groups + g_idx[b * 32]);
      std::memcpy(dst, &d[g], 2);
      if (head == 4) std::memcpy(dst + 2, &m[g], 2);
      std::uint8_t q[32];
      if (t == ggml_type::q8_0) {
        for (int j = 0; j < 32; ++j) q[j] = std::uint8_t(codes[j] - 128u);
        std::memcpy(dst + 2, q, 32);
      } else {
        for (int j = 0; j < 16; ++j) q[j] = std::uint8_t((codes[j] & 0x0F) | ((codes[j + 16] & 0x0F) << 4));
        std::memcpy(dst + head, q, 16);
      }
    }
  }
}

/// pack_weight() into a new buffer.
template <class T>
[[nodiscard]] std::vector<std::byte> pack_weight(ggml_type t, quant::quantized_weight<T> const& q) {
  std::vector<std::byte> out(std::size_t(q.rows()) * row_bytes(t, q.cols()));
  pack_weight(t, q, out);
  return out;
}

/// The block of type @p t of 32 floats @p x by llama.cpp's own round-to-nearest rule (see the file comment), into
/// @p dst; F32 and F16 rows are converted element by element (n any size).
inline void quantize_row_reference(ggml_type t, std::span<const float> x, std::span<std::byte> dst) {
  index_t const n = index_t(x.size());
  RSQ_EXPECTS(dst.size() == row_bytes(t, n), "ggml ", traits(t).name, ": ", dst.size(), " bytes for ", n,
              " elements, expected ", row_bytes(t, n));
  float const* v = x.data();
  std::byte* p = dst.data();
  auto reciprocal = [](float d) { return d != 0.f ? 1.0f / d : 0.0f; };
  switch (t) {
    case ggml_type::f32:
      std::memcpy(p, v, std::size_t(n) * 4);
      return;
    case ggml_type::f16:
      for (index_t i = 0; i < n; i += 256) {  // the bytes may be unaligned: through a buffer
        std::uint16_t h[256];
        std::size_t const k = std::size_t(std::min<index_t>(256, n - i));
        floats_to_f16(v + i, h, k);
        std::memcpy(p + 2 * i, h, k * 2);
      }
      return;
    case ggml_type::q4_0:
      for (index_t b = 0; b < n / 32; ++b, v += 32, p += 18) {
        float amax = 0, max = 0;
        for (int j = 0; j < 32; ++j)
          if (amax < std::fabs(v[j])) {
            amax = std::fabs(v[j]);
            max = v[j];
          }
        float const d = max / -8, id = reciprocal(d);
        detail::store_f16(p, d);
        for (int j = 0; j < 16; ++j) {
          auto q = [&](float x0) { return std::min(15, int(std::int8_t(detail::mul(x0, id) + 8.5f))); };
          p[2 + j] = std::byte(q(v[j]) | (q(v[j + 16]) << 4));
        }
      }
      return;
    case ggml_type::q4_1:
      for (index_t b = 0; b < n / 32; ++b, v += 32, p += 20) {
        float lo = v[0], hi = v[0];
        for (int j = 1; j < 32; ++j) {
          lo = v[j] < lo ? v[j] : lo;
          hi = v[j] > hi ? v[j] : hi;
        }
        float const d = (hi - lo) / 15, id = reciprocal(d);
        detail::store_f16(p, d);
        detail::store_f16(p + 2, lo);
        for (int j = 0; j < 16; ++j) {
          auto q = [&](float x0) { return std::min(15, int(std::int8_t(detail::mul(x0 - lo, id) + 0.5f))); };
          p[4 + j] = std::byte(q(v[j]) | (q(v[j + 16]) << 4));
        }
      }
      return;
    case ggml_type::q8_0:
      for (index_t b = 0; b < n / 32; ++b, v += 32, p += 34) {
        float amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(v[j]));
        float const d = amax / 127, id = reciprocal(d);
        detail::store_f16(p, d);
        for (int j = 0; j < 32; ++j) p[2 + j] = std::byte(std::int8_t(std::round(detail::mul(v[j], id))));
      }
      return;
    default:
      break;
  }
  rsq::detail::throw_invalid_argument("ggml: quantizing to ", traits(t).name, " is not supported");
}

}  // namespace rsq::pack
