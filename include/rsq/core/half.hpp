// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// IEEE binary16 (F16) and bfloat16 (BF16) bit patterns to and from float, on the host: what checkpoint files store.
/// Rounding to nearest, ties to even (what PyTorch's `.half()` / `.bfloat16()` do); NaN stays NaN, values beyond the
/// largest finite half become ±Inf, and halves below 2⁻¹⁴ are subnormal (no flush to zero), so every half survives
/// float → half → float exactly.

#include <bit>
#include <cstddef>
#include <cstdint>

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif

namespace rsq {

/// The float of a bfloat16 bit pattern (its upper 16 bits: exact).
[[nodiscard]] constexpr float bf16_to_float(std::uint16_t b) noexcept {
  return std::bit_cast<float>(std::uint32_t(b) << 16);
}

/// The bfloat16 nearest to @p f (ties to even); a NaN keeps its sign and stays a (quiet) NaN.
[[nodiscard]] constexpr std::uint16_t float_to_bf16(float f) noexcept {
  std::uint32_t const u = std::bit_cast<std::uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x0040u);
  std::uint32_t const rounding = 0x7fffu + ((u >> 16) & 1u);
  return std::uint16_t((u + rounding) >> 16);
}

/// The float of an IEEE half bit pattern (exact: every half is a float).
[[nodiscard]] constexpr float f16_to_float(std::uint16_t h) noexcept {
  std::uint32_t const sign = std::uint32_t(h & 0x8000u) << 16;
  std::uint32_t const exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (man << 13));  // Inf, NaN
  if (exp != 0) return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (man << 13));
  // Zero or subnormal: man · 2⁻²⁴, exact in float.
  float const v = float(man) * 0x1p-24f;
  return sign ? -v : v;
}

/// The IEEE half nearest to @p f (ties to even); beyond 65504 (after rounding) ±Inf; NaN stays NaN.
[[nodiscard]] constexpr std::uint16_t float_to_f16(float f) noexcept {
  std::uint32_t const u = std::bit_cast<std::uint32_t>(f);
  std::uint16_t const sign = std::uint16_t((u >> 16) & 0x8000u);
  std::uint32_t const a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return std::uint16_t(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return std::uint16_t(sign | 0x7c00u);  // ≥ 65520 rounds to Inf (and Inf itself)
  if (a >= 0x38800000u) {                                        // normal half: ≥ 2⁻¹⁴
    std::uint32_t const rounded = a + 0xfffu + ((a >> 13) & 1u);
    return std::uint16_t(sign | ((rounded - 0x38000000u) >> 13));
  }
  // Subnormal half (or zero): the value in units of 2⁻²⁴, rounded to nearest even.
  if (a < 0x33000000u) return sign;  // below half the smallest subnormal (2⁻²⁵): ±0
  std::uint32_t const exp = a >> 23, man = (a & 0x7fffffu) | 0x800000u;
  std::uint32_t const shift = 126u - exp;  // man · 2^(exp − 150) in units of 2⁻²⁴: man >> (126 − exp)
  std::uint32_t q = man >> shift;
  std::uint32_t const rest = man & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rest > half || (rest == half && (q & 1u))) ++q;
  return std::uint16_t(sign | q);
}

/// float_to_f16 of @p n floats at once: the F16C instructions (the same rounding, 8 at a time) where the build
/// targets them (-march=native on x86-64); NaN payloads may differ from float_to_f16's canonical NaN there.
inline void floats_to_f16(float const* src, std::uint16_t* dst, std::size_t n) noexcept {
  std::size_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
  for (; i < n; ++i) dst[i] = float_to_f16(src[i]);
}

/// f16_to_float of @p n halves at once (F16C where the build targets it; exact either way).
inline void f16s_to_float(std::uint16_t const* src, float* dst, std::size_t n) noexcept {
  std::size_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<__m128i const*>(src + i))));
#endif
  for (; i < n; ++i) dst[i] = f16_to_float(src[i]);
}

}  // namespace rsq
