// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Uniform affine quantization grids (method spec §7): 2–8 bits, symmetric or asymmetric, per output row or per
/// group of input columns, in the two conventions of the reference code and the three block formats of llama.cpp
/// that rsq writes (Q4_0, Q4_1, Q8_0: ../shared/docs/formats.md §5), with the MSE clip search.
///
/// Every grid is stored the same way: an integer code u in [0, 2^bits − 1] per weight, and per row (or row and group)
/// a scale s and an integer-valued zero z, so that the dequantized weight is s·(u − z). Both conventions fit this:
///  - `ist` (IST-DASLab `quant.py`): asym z = round(−xmin/s); sym z = 2^(bits−1) and s = 2·amax/(2^bits − 1);
///  - `rsq` (RSQ/QuaRot `WeightQuantizer`): asym as ist with the range clamped ≥ 1e-5; sym s = max(amax, 1e-5) /
///    (2^(bits−1) − 1) with signed levels q ∈ [−2^(bits−1), 2^(bits−1) − 1], i.e. u = q + 2^(bits−1), z = 2^(bits−1).
/// Codes are computed as clamp(round(x/s) + z, 0, 2^bits − 1) with round-half-to-even, in the precision T, which is
/// exactly what both references compute.
///
/// The llama.cpp conventions fit the grid a GGUF block stores, with d (and m) rounded to fp16 as soon as they are
/// formed, so that the solver chooses codes on exactly the grid the file holds and llama.cpp's dequantization of the
/// written block equals the solver's (in float):
///  - `q4_0`: d = e/−8 for the row's (or group's) value e of largest magnitude, z = 8: s·(u − z) = d·(q − 8);
///  - `q8_0`: d = amax/127, z = 128 (u = q + 128 for the int8 q): s·(u − z) = d·q;
///  - `q4_1`: d = (max − min)/15 and the *offset* m = min (range including 0, as every grid here): an offset grid,
///    whose dequantized value is fl(s·u) + m rather than s·(u − z) — `zero` holds m (grid_spec::offset_form()).
/// Their scales keep their sign (Q4_0's d is negative when the extreme is positive) and are clamped in magnitude to
/// [2⁻²⁴, 65504] so that no code is ever divided by zero or decoded to infinity.

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "rsq/core/error.hpp"
#include "rsq/core/half.hpp"
#include "rsq/core/view.hpp"

namespace rsq::quant {

/// Which reference or file format the grid reproduces (spec §7; formats.md §5 for the llama.cpp blocks).
enum class convention {
  ist,   ///< IST-DASLab gptq `quant.py` Quantizer (GPTQ paper code)
  rsq,   ///< RSQ / QuaRot `WeightQuantizer` (used by RSQ, QuaRot and their GPTQ baselines)
  q4_0,  ///< llama.cpp Q4_0 blocks: 4 bits, d·(q − 8), fp16 d (group size a multiple of 32)
  q4_1,  ///< llama.cpp Q4_1 blocks: 4 bits, d·q + m, fp16 d and m (an offset grid)
  q8_0,  ///< llama.cpp Q8_0 blocks: 8 bits, d·q for int8 q, fp16 d
};

/// The MSE clip search of spec §7 (`mse=True`, RSQ/QuaRot `--w_clip`): shrink the range by p = 1 − i/grid for
/// i < max_shrink·grid and keep, per row, the parameters with the smallest Σ|x̂ − x|^norm.
struct clip_search {
  bool enabled = false;
  double norm = 2.4;
  int grid = 100;
  double max_shrink = 0.8;
};

/// A quantization grid: bits, symmetry, convention and optional clip search.
struct grid_spec {
  int bits = 4;
  bool symmetric = false;
  convention conv = convention::ist;
  clip_search clip = {};
  /// Round every scale to float and then to the nearest fp16 (clamped to [2⁻²⁴, 65504]) as soon as it is formed,
  /// before the zero point and the codes are chosen from it: what a GPTQ checkpoint stores (F16 `scales`), so that
  /// the checkpoint dequantizes exactly to the solver's result. Off: the reference's full-precision scales.
  bool fp16_scales = false;

  /// Throws rsq::invalid_argument unless 2 ≤ bits ≤ 8 (4 for q4_0 and q4_1, 8 for q8_0) and the clip parameters
  /// are usable.
  void validate() const {
    RSQ_EXPECTS(bits >= 2 && bits <= 8, "quantizer bits must be between 2 and 8, got ", bits);
    if (llama_cpp_block()) {
      int const need = conv == convention::q8_0 ? 8 : 4;
      RSQ_EXPECTS(bits == need, "quantizer: the llama.cpp ", conv == convention::q4_0 ? "Q4_0" : (conv == convention::q4_1 ? "Q4_1" : "Q8_0"),
                  " grid has ", need, " bits, got ", bits);
    }
    if (clip.enabled) {
      RSQ_EXPECTS(clip.grid > 0, "clip search grid must be positive, got ", clip.grid);
      RSQ_EXPECTS(clip.max_shrink > 0 && clip.max_shrink <= 1, "clip search max_shrink must be in (0, 1], got ",
                  clip.max_shrink);
      RSQ_EXPECTS(std::isfinite(clip.norm) && clip.norm > 0, "clip search norm must be positive, got ", clip.norm);
    }
  }

  /// Largest code, 2^bits − 1.
  [[nodiscard]] constexpr int max_code() const noexcept { return (1 << bits) - 1; }
  /// One of llama.cpp's block formats (q4_0, q4_1, q8_0): scales always in fp16, signed; fitted per 32 columns or a
  /// multiple.
  [[nodiscard]] constexpr bool llama_cpp_block() const noexcept {
    return conv == convention::q4_0 || conv == convention::q4_1 || conv == convention::q8_0;
  }
  /// An offset grid (q4_1): `zero` holds the offset m and the dequantized value is fl(s·u) + m.
  [[nodiscard]] constexpr bool offset_form() const noexcept { return conv == convention::q4_1; }
};

/// Scale and zero of one row (or one row of one group).
template <class T>
struct affine_params {
  T scale = T(0);
  T zero = T(0);
};

/// Code of @p x on the grid (scale @p s, zero @p z): clamp(round(x/s) + z, 0, max_code), round half to even.
template <class T>
[[nodiscard]] inline std::uint8_t encode(T x, T s, T z, int max_code) noexcept {
  // std::nearbyint honours the current rounding mode; rsq requires the default FE_TONEAREST (checked in solve()).
  T q = std::nearbyint(x / s) + z;
  q = q < T(0) ? T(0) : (q > T(max_code) ? T(max_code) : q);
  return static_cast<std::uint8_t>(q);
}

/// Dequantized value of a code: s·(u − z).
template <class T>
[[nodiscard]] inline T decode(std::uint8_t u, T s, T z) noexcept {
  return s * (T(u) - z);
}

/// Quantize-dequantize of @p x (what the reference's `quantize()` returns).
template <class T>
[[nodiscard]] inline T quantize_dequantize(T x, T s, T z, int max_code) noexcept {
  return decode(encode(x, s, z, max_code), s, z);
}

/// Code of @p x on an offset grid (scale @p s, offset @p m; grid_spec::offset_form): clamp(round((x − m)/s), 0,
/// max_code), round half to even.
template <class T>
[[nodiscard]] inline std::uint8_t encode_offset(T x, T s, T m, int max_code) noexcept {
  T q = std::nearbyint((x - m) / s);
  q = q < T(0) ? T(0) : (q > T(max_code) ? T(max_code) : q);
  return static_cast<std::uint8_t>(q);
}

/// Dequantized value of a code on an offset grid: fl(s·u) + m, the product rounded on its own (never fused with the
/// addition), as llama.cpp's `dequantize_row_q4_1` computes it.
template <class T>
[[nodiscard]] inline T decode_offset(std::uint8_t u, T s, T m) noexcept {
  volatile T p = s * T(u);
  return p + m;
}

/// The code of @p x on grid @p g with parameters @p p (either form).
template <class T>
[[nodiscard]] inline std::uint8_t encode(grid_spec const& g, T x, affine_params<T> p) noexcept {
  return g.offset_form() ? encode_offset(x, p.scale, p.zero, g.max_code()) : encode(x, p.scale, p.zero, g.max_code());
}

/// The dequantized value of code @p u on grid @p g with parameters @p p (either form).
template <class T>
[[nodiscard]] inline T decode(grid_spec const& g, std::uint8_t u, affine_params<T> p) noexcept {
  return g.offset_form() ? decode_offset(u, p.scale, p.zero) : decode(u, p.scale, p.zero);
}

/// Throws rsq::invalid_argument unless groups of @p group_size columns (−1: whole rows) can be blocks of grid @p g:
/// the llama.cpp block grids need groups of 32 columns or a multiple (a group of 64 or 128 stores its scale in every
/// block it covers), and act-order only with static groups (a block is 32 consecutive columns, not 32 consecutive
/// solve positions). @p where names the caller.
inline void check_block_grouping(grid_spec const& g, index_t group_size, bool act_order, bool static_groups,
                                 char const* where) {
  if (!g.llama_cpp_block()) return;
  RSQ_EXPECTS(group_size > 0 && group_size % 32 == 0, where,
              ": the llama.cpp block grids need a group size that is a multiple of 32, got ", group_size);
  RSQ_EXPECTS(!act_order || static_groups, where,
              ": act-order with a llama.cpp block grid needs static groups (blocks are consecutive columns)");
}

/// Whether grid @p g can quantize a weight with @p cols input columns: the llama.cpp block grids need whole blocks of
/// 32 (a linear they cannot hold is kept in F16 by the model pipeline).
[[nodiscard]] inline bool grid_holds(grid_spec const& g, index_t cols) noexcept {
  return !g.llama_cpp_block() || cols % 32 == 0;
}

/// check_block_grouping() for a weight with @p cols input columns, which must also be whole blocks of 32.
inline void check_group_layout(grid_spec const& g, index_t cols, index_t group_size, bool act_order,
                               bool static_groups, char const* where) {
  check_block_grouping(g, group_size, act_order, static_groups, where);
  RSQ_EXPECTS(grid_holds(g, cols), where, ": the llama.cpp block grids need input columns in whole blocks of 32, got ",
              cols, " columns");
}

namespace detail {

/// A scale as an fp16 field stores it: rounded to fp16, its magnitude clamped to [2⁻²⁴, 65504] (no code is ever
/// divided by zero or decoded to infinity), its sign kept (Q4_0's d is negative when the extreme is positive).
template <class T>
[[nodiscard]] inline T block_scale(T scale) noexcept {
  float const h = std::fabs(f16_to_float(float_to_f16(float(scale))));
  float const m = h < 0x1p-24f ? 0x1p-24f : (h > 65504.f ? 65504.f : h);
  return T(std::signbit(float(scale)) ? -m : m);
}

/// @p scale as a grid with fp16_scales stores it (see grid_spec::fp16_scales; the scales are ≥ 0); unchanged otherwise.
template <class T>
[[nodiscard]] inline T stored_scale(grid_spec const& g, T scale) noexcept {
  return g.fp16_scales ? block_scale(scale) : scale;
}

/// Parameters from a (possibly shrunk) range, following the reference formulas of each convention exactly.
/// @p xmin ≤ 0 ≤ @p xmax are the row's range (already adjusted as each convention does before the search).
template <class T>
[[nodiscard]] affine_params<T> params_from_range(grid_spec const& g, T xmin, T xmax) noexcept {
  affine_params<T> p;
  if (g.conv == convention::q4_0) {
    p.scale = block_scale((-xmin > xmax ? xmin : xmax) / T(-8));
    p.zero = T(8);
  } else if (g.conv == convention::q8_0) {
    p.scale = block_scale(std::max(-xmin, xmax) / T(127));
    p.zero = T(128);
  } else if (g.conv == convention::q4_1) {
    p.scale = block_scale((xmax - xmin) / T(15));
    float const m = f16_to_float(float_to_f16(float(xmin)));
    p.zero = T(m < -65504.f ? -65504.f : m);
  } else if (g.conv == convention::ist) {
    T const maxq = T(g.max_code());
    p.scale = stored_scale(g, (xmax - xmin) / maxq);
    p.zero = g.symmetric ? T((g.max_code() + 1) / 2) : std::nearbyint(-xmin / p.scale);
  } else if (g.symmetric) {
    p.scale = stored_scale(g, xmax / T((1 << (g.bits - 1)) - 1));
    p.zero = T(1 << (g.bits - 1));
  } else {
    p.scale = stored_scale(g, (xmax - xmin) / T(g.max_code()));
    p.zero = std::nearbyint(-xmin / p.scale);
  }
  return p;
}

}  // namespace detail

/// fit() (below) given the values' range already scanned: @p xmin = min(0, min x), @p xmax = max(0, max x). The values are
/// read again only by the clip search.
template <class T>
[[nodiscard]] affine_params<T> fit_range(grid_spec const& g, T xmin, T xmax, T const* x, index_t n, index_t stride) {
  if (g.llama_cpp_block()) {
    // No range adjustment: an all-zero range gives the smallest scale, under which every code decodes to 0.
  } else if (g.conv == convention::ist) {
    if (g.symmetric) {
      xmax = std::max(std::abs(xmin), xmax);
      if (xmin < T(0)) xmin = -xmax;
    }
    if (xmin == T(0) && xmax == T(0)) {
      xmin = T(-1);
      xmax = T(1);
    }
  } else if (g.symmetric) {
    xmax = std::max(std::max(std::abs(xmin), xmax), T(1e-5));
  } else {
    if (xmin == T(0) && xmax == T(0)) {
      xmin = T(-1);
      xmax = T(1);
    }
  }

  affine_params<T> best;
  if (g.conv == convention::rsq && !g.symmetric) {
    // The rsq asym scale clamps the range at 1e-5 (not done inside the clip search, as in the reference).
    best.scale = detail::stored_scale(g, std::max(xmax - xmin, T(1e-5)) / T(g.max_code()));
    best.zero = std::nearbyint(-xmin / best.scale);
  } else {
    best = detail::params_from_range(g, xmin, xmax);
  }
  if (!g.clip.enabled) return best;

  int const steps = int(g.clip.max_shrink * g.clip.grid);
  double best_err = std::numeric_limits<double>::infinity();
  for (int i = 0; i < steps; ++i) {
    // p is a Python float (double) multiplied into a tensor of precision T.
    T const p = T(1.0 - double(i) / double(g.clip.grid));
    affine_params<T> cand = detail::params_from_range(g, p * xmin, p * xmax);
    double err = 0;
    for (index_t k = 0; k < n; ++k) {
      T const v = x[k * stride];
      T const d = std::abs(decode(g, encode(g, v, cand), cand) - v);
      err += double(std::pow(d, T(g.clip.norm)));
    }
    if (err < best_err) {  // strictly better, as in the reference
      best_err = err;
      best = cand;
    }
  }
  return best;
}

/// Fits the grid to the @p n values x[0], x[stride], ... (one row, or one row of a group), as the reference's
/// `find_params` does for that row (spec §7), including the clip search when enabled.
template <class T>
[[nodiscard]] affine_params<T> fit(grid_spec const& g, T const* x, index_t n, index_t stride = 1) {
  T xmin = T(0), xmax = T(0);  // the range always contains 0
  auto take = [&](T v) {
    xmin = v < xmin ? v : xmin;
    xmax = v > xmax ? v : xmax;
  };
  if (stride == 1) {
    // Independent lanes, so the loop vectorizes (min and max are exact in any order).
    constexpr index_t lanes = 16;
    T lo[lanes] = {}, hi[lanes] = {};
    index_t const whole = n / lanes * lanes;
    for (index_t k = 0; k < whole; k += lanes)
      for (index_t l = 0; l < lanes; ++l) {
        lo[l] = x[k + l] < lo[l] ? x[k + l] : lo[l];
        hi[l] = x[k + l] > hi[l] ? x[k + l] : hi[l];
      }
    for (index_t l = 0; l < lanes; ++l) {
      take(lo[l]);
      take(hi[l]);
    }
    for (index_t k = whole; k < n; ++k) take(x[k]);
  } else {
    for (index_t k = 0; k < n; ++k) take(x[k * stride]);
  }
  return fit_range(g, xmin, xmax, x, n, stride);
}

}  // namespace rsq::quant
