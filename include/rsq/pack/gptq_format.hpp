// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Packing GPTQ results into the int32 checkpoint layout of AutoGPTQ / GPTQModel, and back.
///
/// The solver gives, for a weight of shape (rows, cols) = (out_features, in_features), integer codes (rows x cols),
/// scales and zeros (rows x groups; zeros are integers), and g_idx (cols: the group of each input column, the
/// AutoGPTQ convention of rsq-method.md §6 step 9), with W ≈ scale·(code − zero). A checkpoint stores
///  - `qweight` int32 (in_features·bits/32, out_features): the codes of each output row packed along the input features;
///  - `qzeros`  int32 (groups, out_features·bits/32): the zeros of each group packed along the output features;
///  - `scales`  (groups, out_features), the transpose of the solver's (rows x groups);
///  - `g_idx`   int32 (in_features).
/// The bit layout (one little-endian bitstream per packing run) lives in rsq/pack/bitstream.hpp.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/memory.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/memory.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/pack/bitstream.hpp"
#include "rsq/quant/quantized_weight.hpp"

namespace rsq::pack {

/// How zero points are stored in `qzeros`.
enum class zero_format {
  v1,  ///< AutoGPTQ, the "gptq" checkpoint format: stores zero − 1 (4-bit symmetric zero 8 is stored as 7). A zero of 0 cannot be stored.
  v2,  ///< GPTQModel's internal format: stores the zero as is.
};

/// A weight in the GPTQ checkpoint layout (AutoGPTQ / GPTQModel tensor names and shapes), in the memory of backend B.
template <class B>
struct basic_gptq_tensors {
  backend::matrix<std::int32_t, B> qweight;  ///< (in_features·bits/32, out_features)
  backend::matrix<std::int32_t, B> qzeros;   ///< (groups, out_features·bits/32)
  backend::matrix<float, B> scales;          ///< (groups, out_features)
  backend::array<std::int32_t, B> g_idx;     ///< (in_features): group of each input column
  int bits = 4;                              ///< 2, 3, 4 or 8
  zero_format format = zero_format::v1;      ///< how qzeros stores the zeros

  [[nodiscard]] index_t in_features() const { return rsq::view(g_idx).extent(0); }
  [[nodiscard]] index_t out_features() const { return rsq::view(scales).cols(); }
  [[nodiscard]] index_t groups() const { return rsq::view(scales).rows(); }
};

/// The GPTQ checkpoint tensors in host memory, as written to files.
using gptq_tensors = basic_gptq_tensors<backend::cpu_eigen>;

/// A weight in the solver's layout: dequantized W[r, c] = scales(r, g_idx[c])·(codes(r, c) − zeros(r, g_idx[c])).
struct unpacked_weight {
  rsq::matrix<std::uint8_t> codes;  ///< (out_features, in_features), values in [0, 2^bits − 1]
  rsq::matrix<float> scales;        ///< (out_features, groups)
  rsq::matrix<float> zeros;         ///< (out_features, groups), integers in [0, 2^bits − 1]
  rsq::vector<std::int32_t> g_idx;  ///< (in_features)
  int bits = 4;                     ///< 2, 3, 4 or 8
};

namespace detail {

using rsq::detail::shape_string;
using rsq::detail::throw_invalid_argument;

inline constexpr index_t row_tile = 16;  // output rows per tile: 16 int32 = one cache line of each qweight row per block

inline void check_bits(int bits, char const* fn) {
  RSQ_EXPECTS(supported_bits(bits), fn, ": bits must be 2, 3, 4 or 8 (the GPTQ int32 layout), got ", bits);
}

// A run of n values packs into whole int32 words only if n·bits % 32 == 0.
inline void check_whole_words(index_t n, int bits, char const* fn, char const* what) {
  RSQ_EXPECTS(n * bits % 32 == 0, fn, ": ", what, " = ", n, " is not a multiple of ", values_per_whole_words(bits),
              ", which ", bits, "-bit packing needs (", what, "·bits must fill whole int32 words)");
}

inline void check_g_idx(vector_view<const std::int32_t> g_idx, index_t cols, index_t groups, char const* fn) {
  RSQ_EXPECTS(g_idx.extent(0) == cols, fn, ": g_idx must have one entry per input column (", cols, "), got ",
              g_idx.extent(0));
  for (index_t c = 0; c < cols; ++c)
    RSQ_EXPECTS(g_idx(c) >= 0 && g_idx(c) < groups, fn, ": g_idx[", c, "] = ", g_idx(c), " is outside [0, ", groups,
                ") (", groups, " groups)");
}

template <class V>
[[nodiscard]] xt::xtensor<V, 1> copy_vector(vector_view<const V> v) {
  auto out = xt::xtensor<V, 1>::from_shape({std::size_t(v.extent(0))});
  for (index_t i = 0; i < v.extent(0); ++i) out(std::size_t(i)) = v(i);
  return out;
}

// Finds the first code above maxq in the row-tile [r0, r1) and throws naming it.
[[noreturn]] inline void throw_code_out_of_range(matrix_view<const std::uint8_t> codes, index_t r0, index_t r1,
                                                 int bits) {
  int const maxq = (1 << bits) - 1;
  for (index_t r = r0; r < r1; ++r)
    for (index_t c = 0; c < codes.cols(); ++c)
      if (codes(r, c) > maxq)
        throw_invalid_argument("pack_gptq: codes(", r, ", ", c, ") = ", int(codes(r, c)), " is outside [0, ", maxq,
                               "] for ", bits, "-bit codes");
  throw_invalid_argument("pack_gptq: codes out of range");  // not reached
}

// qweight(Bits·k + i, r) = word i of block k of row r's codes. Tiles of rows so that each of the Bits destination
// rows of a block gets row_tile consecutive int32s, and the codes of the tile stay in cache across blocks.
// in_features need not be a multiple of 32 (e.g. 8 codes at 4 bits fill one word): the last block is zero-padded
// and only the words it fills are written.
template <int Bits>
void pack_codes(matrix_view<const std::uint8_t> codes, std::int32_t* qweight) {
  index_t const rows = codes.rows(), cols = codes.cols();
  index_t const rs = codes.stride(0), cs = codes.stride(1);
  std::uint8_t const* base = codes.data();
  std::uint8_t gathered[block_values];
  std::uint32_t words[Bits];
  for (index_t r0 = 0; r0 < rows; r0 += row_tile) {
    index_t const r1 = std::min(rows, r0 + row_tile);
    std::uint8_t seen = 0;  // running max of the tile's codes: validated once per tile, not per value
    for (index_t c0 = 0; c0 < cols; c0 += block_values) {
      index_t const n = std::min<index_t>(block_values, cols - c0);
      index_t const w0 = c0 * Bits / 32, nw = n * Bits / 32;
      for (index_t r = r0; r < r1; ++r) {
        std::uint8_t const* src = base + r * rs + c0 * cs;
        if (cs != 1 || n < block_values) {
          for (index_t j = 0; j < block_values; ++j) gathered[j] = j < n ? src[j * cs] : std::uint8_t{0};
          src = gathered;
        }
        std::uint8_t m = 0;
        for (int j = 0; j < block_values; ++j) m = std::max(m, src[j]);
        seen = std::max(seen, m);
        pack_block<Bits>(src, words);
        for (index_t i = 0; i < nw; ++i) qweight[(w0 + i) * rows + r] = std::int32_t(words[i]);
      }
    }
    if constexpr (Bits < 8)
      if (seen > (1u << Bits) - 1u) throw_code_out_of_range(codes, r0, r1, Bits);
  }
}

template <int Bits>
void unpack_codes(matrix_view<const std::int32_t> qweight, std::uint8_t* codes, index_t cols) {
  index_t const rows = qweight.cols();
  std::uint32_t words[Bits];
  std::uint8_t values[block_values];
  for (index_t r0 = 0; r0 < rows; r0 += row_tile) {
    index_t const r1 = std::min(rows, r0 + row_tile);
    for (index_t c0 = 0; c0 < cols; c0 += block_values) {
      index_t const n = std::min<index_t>(block_values, cols - c0);
      index_t const w0 = c0 * Bits / 32, nw = n * Bits / 32;
      for (index_t r = r0; r < r1; ++r) {
        for (index_t i = 0; i < Bits; ++i) words[i] = i < nw ? std::uint32_t(qweight(w0 + i, r)) : 0u;
        if (n == block_values) {
          unpack_block<Bits>(words, codes + r * cols + c0);
        } else {
          unpack_block<Bits>(words, values);
          std::copy(values, values + n, codes + r * cols + c0);
        }
      }
    }
  }
}

// Runs f.template operator()<Bits>() for the runtime bit width (already validated).
template <class F>
void dispatch_bits(int bits, F&& f) {
  switch (bits) {
    case 2: f.template operator()<2>(); break;
    case 3: f.template operator()<3>(); break;
    case 4: f.template operator()<4>(); break;
    default: f.template operator()<8>(); break;
  }
}

template <class S>
[[nodiscard]] gptq_tensors pack_gptq(matrix_view<const std::uint8_t> codes, matrix_view<const S> scales,
                                     matrix_view<const S> zeros, vector_view<const std::int32_t> g_idx, int bits,
                                     zero_format fmt) {
  check_bits(bits, "pack_gptq");
  index_t const rows = codes.rows(), cols = codes.cols();
  RSQ_EXPECTS(rows > 0 && cols > 0, "pack_gptq: codes (out_features x in_features) is empty: ", shape_string(codes));
  check_whole_words(cols, bits, "pack_gptq", "in_features");
  check_whole_words(rows, bits, "pack_gptq", "out_features");
  index_t const groups = scales.cols();
  RSQ_EXPECTS(scales.rows() == rows && groups > 0, "pack_gptq: scales must be (out_features x groups) with ",
              rows, " rows and at least one group, got ", shape_string(scales));
  RSQ_EXPECTS(zeros.rows() == scales.rows() && zeros.cols() == scales.cols(),
              "pack_gptq: zeros must have the shape of scales ", shape_string(scales), ", got ", shape_string(zeros));
  check_g_idx(g_idx, cols, groups, "pack_gptq");
  rsq::detail::check_finite(scales, "pack_gptq: scales");
  rsq::detail::check_finite(zeros, "pack_gptq: zeros");
  int const maxq = (1 << bits) - 1;

  gptq_tensors t;
  t.bits = bits;
  t.format = fmt;
  t.g_idx = copy_vector(g_idx);

  // scales: the solver's (rows, groups) transposed to (groups, out_features).
  t.scales = xt::xtensor<float, 2>::from_shape({std::size_t(groups), std::size_t(rows)});
  for (index_t r = 0; r < rows; ++r)
    for (index_t g = 0; g < groups; ++g) {
      S const s = scales(r, g);
      RSQ_EXPECTS(std::abs(s) <= S(std::numeric_limits<float>::max()), "pack_gptq: scales(row ", r, ", group ", g,
                  ") = ", s, " overflows float");
      t.scales(std::size_t(g), std::size_t(r)) = float(s);
    }

  // qzeros: per group, the zeros of all output rows form one run.
  index_t const zero_words = rows * bits / 32;
  t.qzeros = xt::xtensor<std::int32_t, 2>::from_shape({std::size_t(groups), std::size_t(zero_words)});
  std::uint32_t stored[block_values];
  std::uint32_t words[8];
  for (index_t g = 0; g < groups; ++g)
    for (index_t b = 0; b < rows; b += block_values) {
      // rows need not be a multiple of 32 (e.g. 8 rows at 4 bits): pad the last block with zeros and keep only
      // the words the run fills.
      index_t const n = std::min<index_t>(block_values, rows - b);
      for (index_t j = 0; j < block_values; ++j) {
        if (j >= n) {
          stored[j] = 0;
          continue;
        }
        index_t const r = b + j;
        S const z = zeros(r, g);
        RSQ_EXPECTS(z == std::floor(z) && z >= 0 && z <= S(maxq), "pack_gptq: zeros(row ", r, ", group ", g, ") = ", z,
                    " is not an integer in [0, ", maxq, "] for ", bits, "-bit codes");
        if (fmt == zero_format::v1)
          RSQ_EXPECTS(z >= 1, "pack_gptq: zeros(row ", r, ", group ", g,
                      ") is 0, which zero_format::v1 cannot store (AutoGPTQ stores zero - 1, so 0 would wrap to -1 "
                      "and corrupt its int32 word); use zero_format::v2 (GPTQModel) for this weight");
        stored[j] = std::uint32_t(z) - (fmt == zero_format::v1 ? 1u : 0u);
      }
      dispatch_bits(bits, [&]<int Bits>() { pack_block<Bits>(stored, words); });
      index_t const w0 = b * bits / 32, nw = n * bits / 32;
      for (index_t i = 0; i < nw; ++i) t.qzeros(std::size_t(g), std::size_t(w0 + i)) = std::int32_t(words[i]);
    }

  // qweight: per output row, the codes along the input features form one run.
  t.qweight = xt::xtensor<std::int32_t, 2>::from_shape({std::size_t(cols * bits / 32), std::size_t(rows)});
  dispatch_bits(bits, [&]<int Bits>() { pack_codes<Bits>(codes, t.qweight.data()); });
  return t;
}

}  // namespace detail

namespace detail {

/// The checks of pack_gptq that read only shapes (values are checked by the backend, where they live).
template <class S>
void check_pack_shapes(matrix_view<const std::uint8_t> codes, matrix_view<const S> scales,
                       matrix_view<const S> zeros, vector_view<const std::int32_t> g_idx, int bits) {
  check_bits(bits, "pack_gptq");
  index_t const rows = codes.rows(), cols = codes.cols();
  RSQ_EXPECTS(rows > 0 && cols > 0, "pack_gptq: codes (out_features x in_features) is empty: ", shape_string(codes));
  check_whole_words(cols, bits, "pack_gptq", "in_features");
  check_whole_words(rows, bits, "pack_gptq", "out_features");
  RSQ_EXPECTS(scales.rows() == rows && scales.cols() > 0, "pack_gptq: scales must be (out_features x groups) with ",
              rows, " rows and at least one group, got ", shape_string(scales));
  RSQ_EXPECTS(zeros.rows() == scales.rows() && zeros.cols() == scales.cols(),
              "pack_gptq: zeros must have the shape of scales ", shape_string(scales), ", got ", shape_string(zeros));
  RSQ_EXPECTS(g_idx.extent(0) == cols, "pack_gptq: g_idx must have one entry per input column (", cols, "), got ",
              g_idx.extent(0));
}

}  // namespace detail

/// Packs a GPTQ result into the AutoGPTQ / GPTQModel int32 checkpoint layout on backend @p be, leaving the tensors in
/// its memory (device memory for CUDA); the bit layout is the same on every backend (pack/bitstream.hpp).
///
/// An implementation of algorithm::pack_gptq provides
///   template <class S> static basic_gptq_tensors<B> pack(B const&, matrix_view<const std::uint8_t> codes,
///       matrix_view<const S> scales, matrix_view<const S> zeros, vector_view<const std::int32_t> g_idx, int bits,
///       zero_format);                          // shapes checked; values (g_idx range, zeros, scales) checked there
///   static gptq_tensors to_host(B const&, basic_gptq_tensors<B> const&);
///
/// @param codes  (out_features, in_features) integer codes in [0, 2^bits − 1], original column order
/// @param scales (out_features, groups), finite (stored as float; S = float or double)
/// @param zeros  (out_features, groups), integers in [0, 2^bits − 1]; at least 1 with zero_format::v1
/// @param g_idx  (in_features) group of each input column, in [0, groups)
/// @param bits   2, 3, 4 or 8; in_features and out_features must be multiples of 32/gcd(bits, 32)
/// @param fmt    zero-point convention of qzeros (v1: AutoGPTQ "gptq" checkpoints, v2: GPTQModel)
/// Every array in host memory or in @p be's memory.
/// @throws rsq::invalid_argument naming the argument, and the row/column/group of a bad value
template <backend_tag B, class S>
[[nodiscard]] basic_gptq_tensors<B> pack_gptq_resident(B const& be, matrix_view<const std::uint8_t> codes,
                                                       matrix_view<const S> scales, matrix_view<const S> zeros,
                                                       vector_view<const std::int32_t> g_idx, int bits,
                                                       zero_format fmt = zero_format::v1) {
  detail::check_pack_shapes(codes, scales, zeros, g_idx, bits);
  return backend::implementation_t<algorithm::pack_gptq, B>::template pack<S>(be, codes, scales, zeros, g_idx, bits,
                                                                              fmt);
}

/// Tensors of another backend's memory, copied to host memory (waits for the backend).
template <backend_tag B>
[[nodiscard]] gptq_tensors to_host(B const& be, basic_gptq_tensors<B>&& t) {
  if constexpr (std::is_same_v<basic_gptq_tensors<B>, gptq_tensors>) {
    (void)be;
    return std::move(t);
  } else {
    return backend::implementation_t<algorithm::pack_gptq, B>::to_host(be, t);
  }
}

/// pack_gptq_resident() followed by to_host(): the checkpoint tensors in host memory, on any backend.
template <backend_tag B, class S>
[[nodiscard]] gptq_tensors pack_gptq(B const& be, matrix_view<const std::uint8_t> codes, matrix_view<const S> scales,
                                     matrix_view<const S> zeros, vector_view<const std::int32_t> g_idx, int bits,
                                     zero_format fmt = zero_format::v1) {
  return to_host(be, pack_gptq_resident<B, S>(be, codes, scales, zeros, g_idx, bits, fmt));
}

/// Packs a quantized weight of backend B (e.g. gptq::result<T, B>::weight) on that backend, tensors left in the
/// backend's memory.
template <backend_tag B, class T>
[[nodiscard]] basic_gptq_tensors<B> pack_gptq_resident(B const& be, quant::quantized_weight<T, B> const& q,
                                                       zero_format fmt = zero_format::v1) {
  RSQ_EXPECTS(!q.offset, "pack_gptq: a weight on an offset grid (llama.cpp Q4_1) has no integer zero points; a GPTQ "
                         "checkpoint cannot store it (write it as GGUF)");
  return pack_gptq_resident<B, T>(be, rsq::view(q.codes), rsq::view(q.scales), rsq::view(q.zeros), rsq::view(q.g_idx),
                                  q.bits, fmt);
}

/// The same, tensors in host memory.
template <backend_tag B, class T>
[[nodiscard]] gptq_tensors pack_gptq(B const& be, quant::quantized_weight<T, B> const& q,
                                     zero_format fmt = zero_format::v1) {
  return to_host(be, pack_gptq_resident(be, q, fmt));
}

/// Packs on the CPU (the host arrays of a solver result), see pack_gptq_resident.
[[nodiscard]] inline gptq_tensors pack_gptq(matrix_view<const std::uint8_t> codes, matrix_view<const float> scales,
                                            matrix_view<const float> zeros, vector_view<const std::int32_t> g_idx,
                                            int bits, zero_format fmt = zero_format::v1) {
  return pack_gptq<backend::cpu_eigen, float>(backend::cpu_eigen{}, codes, scales, zeros, g_idx, bits, fmt);
}

/// Same, for a solver that ran in double: scales are rounded to float, zeros must still be exact integers.
[[nodiscard]] inline gptq_tensors pack_gptq(matrix_view<const std::uint8_t> codes, matrix_view<const double> scales,
                                            matrix_view<const double> zeros, vector_view<const std::int32_t> g_idx,
                                            int bits, zero_format fmt = zero_format::v1) {
  return pack_gptq<backend::cpu_eigen, double>(backend::cpu_eigen{}, codes, scales, zeros, g_idx, bits, fmt);
}

/// Unpacks checkpoint tensors (for example loaded from a GPTQ checkpoint) into the solver's layout.
/// @param qweight (in_features·bits/32, out_features)
/// @param qzeros  (groups, out_features·bits/32)
/// @param scales  (groups, out_features), finite
/// @param g_idx   (in_features), values in [0, groups)
/// @throws rsq::invalid_argument on inconsistent shapes, g_idx out of range, non-finite scales, or (v1) a stored
///         zero of 2^bits − 1, which decodes to 2^bits: the sign of a zero of 0 that wrapped when it was written.
[[nodiscard]] inline unpacked_weight unpack_gptq(matrix_view<const std::int32_t> qweight,
                                                 matrix_view<const std::int32_t> qzeros,
                                                 matrix_view<const float> scales,
                                                 vector_view<const std::int32_t> g_idx, int bits, zero_format fmt) {
  using detail::shape_string;
  detail::check_bits(bits, "unpack_gptq");
  RSQ_EXPECTS(qweight.rows() > 0 && qweight.cols() > 0, "unpack_gptq: qweight is empty: ", shape_string(qweight));
  RSQ_EXPECTS(qweight.rows() * 32 % bits == 0, "unpack_gptq: qweight has ", qweight.rows(),
              " rows, not a multiple of ", bits, " as ", bits, "-bit packing of whole 32-value blocks needs");
  index_t const rows = qweight.cols(), cols = qweight.rows() * 32 / bits;
  detail::check_whole_words(rows, bits, "unpack_gptq", "out_features (qweight.cols())");
  index_t const groups = scales.rows();
  RSQ_EXPECTS(groups > 0 && scales.cols() == rows, "unpack_gptq: scales must be (groups x out_features) with ", rows,
              " columns and at least one group, got ", shape_string(scales));
  RSQ_EXPECTS(qzeros.rows() == groups && qzeros.cols() * 32 == rows * bits, "unpack_gptq: qzeros must be (", groups,
              " x ", rows * bits / 32, ") for ", groups, " groups of ", rows, " ", bits, "-bit zeros, got ",
              shape_string(qzeros));
  detail::check_g_idx(g_idx, cols, groups, "unpack_gptq");
  rsq::detail::check_finite(scales, "unpack_gptq: scales");
  int const maxq = (1 << bits) - 1;

  unpacked_weight u;
  u.bits = bits;
  u.g_idx = detail::copy_vector(g_idx);
  u.scales = rsq::matrix<float>::from_shape({std::size_t(rows), std::size_t(groups)});
  u.zeros = rsq::matrix<float>::from_shape({std::size_t(rows), std::size_t(groups)});
  std::vector<std::uint32_t> run(std::size_t(qzeros.cols()) + 1);  // +1: read_value may look one word ahead
  for (index_t g = 0; g < groups; ++g) {
    for (index_t i = 0; i < qzeros.cols(); ++i) run[std::size_t(i)] = std::uint32_t(qzeros(g, i));
    for (index_t r = 0; r < rows; ++r) {
      std::uint32_t const s = read_value(run.data(), bits, r);
      RSQ_EXPECTS(fmt == zero_format::v2 || int(s) != maxq, "unpack_gptq: qzeros (v1) stores ", s,
                  " for row ", r, ", group ", g, ", which decodes to a zero of ", maxq + 1, ", outside [0, ", maxq,
                  "] (a zero of 0 that wrapped when it was written?)");
      u.zeros(std::size_t(r), std::size_t(g)) = float(s + (fmt == zero_format::v1 ? 1u : 0u));
      u.scales(std::size_t(r), std::size_t(g)) = scales(g, r);
    }
  }
  u.codes = rsq::matrix<std::uint8_t>::from_shape({std::size_t(rows), std::size_t(cols)});
  detail::dispatch_bits(bits, [&]<int Bits>() { detail::unpack_codes<Bits>(qweight, u.codes.data(), cols); });
  return u;
}

/// Unpacks a packed weight into the solver's layout (codes, scales, zeros, g_idx as pack_gptq took them; scales
/// given in double come back rounded to float).
[[nodiscard]] inline unpacked_weight unpack_gptq(gptq_tensors const& t) {
  return unpack_gptq(matrix_view<const std::int32_t>(t.qweight), matrix_view<const std::int32_t>(t.qzeros),
                     matrix_view<const float>(t.scales), vector_view<const std::int32_t>(t.g_idx), t.bits, t.format);
}

/// Dequantizes: W[r, c] = scales(r, g_idx[c])·(codes(r, c) − zeros(r, g_idx[c])), computed in float.
/// @return (out_features, in_features)
/// @throws rsq::invalid_argument on inconsistent shapes, g_idx out of range, or codes above 2^bits − 1
[[nodiscard]] inline rsq::matrix<float> dequantize(unpacked_weight const& u) {
  using detail::shape_string;
  detail::check_bits(u.bits, "dequantize");
  RSQ_EXPECTS(u.codes.size() > 0, "dequantize: codes is empty");
  index_t const rows = index_t(u.codes.shape()[0]), cols = index_t(u.codes.shape()[1]);
  index_t const groups = index_t(u.scales.shape()[1]);
  RSQ_EXPECTS(index_t(u.scales.shape()[0]) == rows && groups > 0,
              "dequantize: scales must be (out_features x groups) with ", rows, " rows, got ",
              shape_string(rsq::view(u.scales)));
  RSQ_EXPECTS(u.zeros.shape() == u.scales.shape(), "dequantize: zeros must have the shape of scales ",
              shape_string(rsq::view(u.scales)), ", got ", shape_string(rsq::view(u.zeros)));
  detail::check_g_idx(rsq::view(u.g_idx), cols, groups, "dequantize");
  int const maxq = (1 << u.bits) - 1;
  rsq::matrix<float> w = rsq::matrix<float>::from_shape({std::size_t(rows), std::size_t(cols)});  // (out, in)
  std::int32_t const* gi = u.g_idx.data();
  // Runs of columns with one group (whole groups without act-order, or with act-order + static groups): the inner
  // loop then has a constant scale and zero and vectorizes. A permuted g_idx has runs of about one column.
  std::vector<index_t> run_start{0};
  for (index_t c = 1; c < cols; ++c)
    if (gi[c] != gi[c - 1]) run_start.push_back(c);
  run_start.push_back(cols);
  bool const use_runs = index_t(run_start.size()) * 8 <= cols;
  for (index_t r = 0; r < rows; ++r) {
    std::uint8_t const* q = u.codes.data() + r * cols;
    float const* s = u.scales.data() + r * groups;
    float const* z = u.zeros.data() + r * groups;
    float* out = w.data() + r * cols;
    std::uint8_t m = 0;
    if (use_runs) {
      for (std::size_t k = 0; k + 1 < run_start.size(); ++k) {
        float const sg = s[gi[run_start[k]]], zg = z[gi[run_start[k]]];
        for (index_t c = run_start[k]; c < run_start[k + 1]; ++c) {
          m = std::max(m, q[c]);
          out[c] = sg * (float(q[c]) - zg);
        }
      }
    } else {
      for (index_t c = 0; c < cols; ++c) {
        m = std::max(m, q[c]);
        out[c] = s[gi[c]] * (float(q[c]) - z[gi[c]]);
      }
    }
    if (m > maxq)
      for (index_t c = 0; c < cols; ++c)
        RSQ_EXPECTS(q[c] <= maxq, "dequantize: codes(", r, ", ", c, ") = ", int(q[c]), " is outside [0, ", maxq,
                    "] for ", u.bits, "-bit codes");
  }
  return w;
}

/// Dequantizes a packed weight: dequantize(unpack_gptq(t)).
[[nodiscard]] inline rsq::matrix<float> dequantize(gptq_tensors const& t) { return dequantize(unpack_gptq(t)); }

}  // namespace rsq::pack

namespace rsq::backend {

/// The CPU backend of pack::pack_gptq (host memory in, host memory out).
template <>
struct implementation<algorithm::pack_gptq, cpu_eigen> {
  static constexpr bool available = true;

  template <class S>
  static pack::gptq_tensors pack(cpu_eigen const&, matrix_view<const std::uint8_t> codes, matrix_view<const S> scales,
                                 matrix_view<const S> zeros, vector_view<const std::int32_t> g_idx, int bits,
                                 pack::zero_format fmt) {
    return pack::detail::pack_gptq<S>(codes, scales, zeros, g_idx, bits, fmt);
  }
};

}  // namespace rsq::backend
