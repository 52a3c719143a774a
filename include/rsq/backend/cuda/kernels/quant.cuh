// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The quantization grid of <rsq/quant/grid.hpp> (spec §7) for device code: the same formulas, in the same
/// precision and order, so that the GPU fits the same scales and zeros and rounds to the same codes as the CPU.
/// rint() rounds half to even, as std::nearbyint under FE_TONEAREST does; divisions are IEEE (never build rsq_cuda.cu
/// with --use_fast_math). Kept in sync with grid.hpp by the backend tests (identical codes in double).

#include <cuda_fp16.h>

#include <cstdint>

#include "rsq/quant/grid.hpp"

namespace rsq::cuda::kernels {

/// grid_spec flattened for kernels.
struct device_grid {
  int bits = 4;
  int max_code = 15;
  bool symmetric = false;
  bool rsq_convention = false;
  bool clip = false;
  double clip_norm = 2.4;
  int clip_grid = 100;
  int clip_steps = 0;  ///< int(max_shrink · grid)
  bool fp16_scales = false;
  quant::convention conv = quant::convention::ist;
  bool offset = false;  ///< an offset grid (llama.cpp Q4_1): zeros hold offsets m, q = fl(s·u) + m

  static device_grid from(quant::grid_spec const& g) {
    device_grid d;
    d.bits = g.bits;
    d.max_code = g.max_code();
    d.symmetric = g.symmetric;
    d.rsq_convention = g.conv == quant::convention::rsq;
    d.clip = g.clip.enabled;
    d.clip_norm = g.clip.norm;
    d.clip_grid = g.clip.grid;
    d.clip_steps = int(g.clip.max_shrink * g.clip.grid);  // as grid.hpp
    d.fp16_scales = g.fp16_scales;
    d.conv = g.conv;
    d.offset = g.offset_form();
    return d;
  }
};

/// clamp(rint(x/s) + z, 0, max_code), the code of x (quant::encode); on an offset grid clamp(rint((x − z)/s), 0,
/// max_code) (quant::encode_offset).
template <class T>
__device__ __forceinline__ unsigned encode(T x, T s, T z, int max_code, bool offset = false) {
  T q = offset ? rint((x - z) / s) : rint(x / s) + z;
  q = q < T(0) ? T(0) : (q > T(max_code) ? T(max_code) : q);
  return unsigned(q);
}

/// s·(u − z) (quant::decode); on an offset grid fl(s·u) + z, the product rounded on its own (quant::decode_offset).
template <class T>
__device__ __forceinline__ T decode(unsigned u, T s, T z, bool offset = false) {
  if (!offset) return s * (T(u) - z);
  if constexpr (sizeof(T) == 4)
    return __fmul_rn(s, T(u)) + z;
  else
    return __dmul_rn(s, T(u)) + z;
}

/// quant::detail::block_scale: fp16, magnitude clamped to [2⁻²⁴, 65504], sign kept.
template <class T>
__device__ __forceinline__ T block_scale(T scale) {
  float const h = fabsf(__half2float(__float2half_rn(float(scale))));
  float const m = fminf(fmaxf(h, 0x1p-24f), 65504.f);
  return T(signbit(float(scale)) ? -m : m);
}

/// quant::detail::stored_scale.
template <class T>
__device__ __forceinline__ T stored_scale(device_grid const& g, T scale) {
  return g.fp16_scales ? block_scale(scale) : scale;
}

/// quant::detail::params_from_range.
template <class T>
__device__ __forceinline__ void params_from_range(device_grid const& g, T xmin, T xmax, T& scale, T& zero) {
  if (g.conv == quant::convention::q4_0) {
    scale = block_scale((-xmin > xmax ? xmin : xmax) / T(-8));
    zero = T(8);
  } else if (g.conv == quant::convention::q8_0) {
    scale = block_scale(fmax(-xmin, xmax) / T(127));
    zero = T(128);
  } else if (g.conv == quant::convention::q4_1) {
    scale = block_scale((xmax - xmin) / T(15));
    zero = T(fmaxf(__half2float(__float2half_rn(float(xmin))), -65504.f));
  } else if (!g.rsq_convention) {
    T const maxq = T(g.max_code);
    scale = stored_scale(g, (xmax - xmin) / maxq);
    zero = g.symmetric ? T((g.max_code + 1) / 2) : rint(-xmin / scale);
  } else if (g.symmetric) {
    scale = stored_scale(g, xmax / T((1 << (g.bits - 1)) - 1));
    zero = T(1 << (g.bits - 1));
  } else {
    scale = stored_scale(g, (xmax - xmin) / T(g.max_code));
    zero = rint(-xmin / scale);
  }
}

/// The range adjustments of quant::fit before the parameters are formed (xmin ≤ 0 ≤ xmax on entry), and the
/// initial parameters.
template <class T>
__device__ __forceinline__ void initial_params(device_grid const& g, T& xmin, T& xmax, T& scale, T& zero) {
  if (g.conv == quant::convention::q4_0 || g.conv == quant::convention::q4_1 || g.conv == quant::convention::q8_0) {
    params_from_range(g, xmin, xmax, scale, zero);  // no range adjustment (quant::fit_range)
    return;
  }
  if (!g.rsq_convention) {
    if (g.symmetric) {
      xmax = fmax(fabs(xmin), xmax);
      if (xmin < T(0)) xmin = -xmax;
    }
    if (xmin == T(0) && xmax == T(0)) {
      xmin = T(-1);
      xmax = T(1);
    }
  } else if (g.symmetric) {
    xmax = fmax(fmax(fabs(xmin), xmax), T(1e-5));
  } else if (xmin == T(0) && xmax == T(0)) {
    xmin = T(-1);
    xmax = T(1);
  }
  if (g.rsq_convention && !g.symmetric) {
    scale = stored_scale(g, fmax(xmax - xmin, T(1e-5)) / T(g.max_code));
    zero = rint(-xmin / scale);
  } else {
    params_from_range(g, xmin, xmax, scale, zero);
  }
}

/// The shrink factor of clip-search step i, a double rounded to T as in the reference (quant::fit).
template <class T>
__device__ __forceinline__ T shrink_factor(device_grid const& g, int i) {
  return T(1.0 - double(i) / double(g.clip_grid));
}

}  // namespace rsq::cuda::kernels
