// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Row kernels of the CPU forward pass whose results do not depend on where the row lies in memory.
///
/// Eigen's vectorised loops over a Map of unknown alignment start with scalar steps up to the first aligned address,
/// and its scalar exp is not its packet exp: the same row at another address (another workspace slot, another
/// thread's block) could round differently in its first elements, and a sum could add its terms in another order.
/// These kernels run packets from element 0 with unaligned loads and finish with one padded packet, so each element
/// takes the same path and each sum the same order for every address: the results depend on the values and the
/// length only.

#include <cstddef>

#include <Eigen/Core>

#include "rsq/backend/cpu/transpose.hpp"
#include "rsq/core/view.hpp"

namespace rsq::cpu::packet_math {

namespace detail {
using packet = cpu::detail::packet_of<float>;
inline constexpr index_t width = Eigen::internal::packet_traits<float>::size;

/// Elements [i, n) of @p x, fewer than a packet, in a packet padded with @p fill.
[[nodiscard]] inline packet load_tail(float const* x, index_t i, index_t n, float fill) noexcept {
  alignas(64) float lanes[width];
  for (index_t j = 0; j < width; ++j) lanes[j] = i + j < n ? x[i + j] : fill;
  return Eigen::internal::pload<packet>(lanes);
}

/// Stores the first n − i lanes of @p p at x + i.
inline void store_tail(float* x, index_t i, index_t n, packet p) noexcept {
  alignas(64) float lanes[width];
  Eigen::internal::pstore(lanes, p);
  for (index_t j = 0; i + j < n; ++j) x[i + j] = lanes[j];
}

/// @p p with the lanes at or beyond n − i set to zero.
[[nodiscard]] inline packet zero_beyond(packet p, index_t i, index_t n) noexcept {
  alignas(64) float lanes[width];
  Eigen::internal::pstore(lanes, p);
  for (index_t j = 0; j < width; ++j)
    if (i + j >= n) lanes[j] = 0.f;
  return Eigen::internal::pload<packet>(lanes);
}
}  // namespace detail

/// Σ x[i]², lanes summed in a fixed order.
[[nodiscard]] inline float squared_norm(float const* x, index_t n) noexcept {
  using namespace Eigen::internal;
  using detail::width;
  detail::packet acc = pzero(detail::packet{});
  index_t i = 0;
  for (; i + width <= n; i += width) {
    detail::packet const v = ploadu<detail::packet>(x + i);
    acc = pmadd(v, v, acc);
  }
  if (i < n) {
    detail::packet const v = detail::load_tail(x, i, n, 0.f);
    acc = pmadd(v, v, acc);
  }
  return predux(acc);
}

/// Σ exp(scale·(x[i] − shift)); when @p out is given, out[i] = exp(scale·(x[i] − shift)) (out may be x).
inline float sum_exp(float const* x, index_t n, float shift, float scale, float* out) noexcept {
  using namespace Eigen::internal;
  using detail::width;
  detail::packet const s = pset1<detail::packet>(shift), k = pset1<detail::packet>(scale);
  detail::packet acc = pzero(detail::packet{});
  index_t i = 0;
  for (; i + width <= n; i += width) {
    detail::packet const e = pexp(pmul(psub(ploadu<detail::packet>(x + i), s), k));
    if (out != nullptr) pstoreu(out + i, e);
    acc = padd(acc, e);
  }
  if (i < n) {
    detail::packet const e = pexp(pmul(psub(detail::load_tail(x, i, n, shift), s), k));
    if (out != nullptr) detail::store_tail(out, i, n, e);
    acc = padd(acc, detail::zero_beyond(e, i, n));
  }
  return predux(acc);
}

/// x[i] *= factor.
inline void scale(float* x, index_t n, float factor) noexcept {
  using namespace Eigen::internal;
  using detail::width;
  detail::packet const f = pset1<detail::packet>(factor);
  index_t i = 0;
  for (; i + width <= n; i += width) pstoreu(x + i, pmul(ploadu<detail::packet>(x + i), f));
  for (; i < n; ++i) x[i] *= factor;  // one multiplication either way: the same rounding
}

/// gate[i] = silu(gate[i]) · up[i] = gate[i] / (1 + exp(−gate[i])) · up[i].
inline void silu_times(float* gate, float const* up, index_t n) noexcept {
  using namespace Eigen::internal;
  using detail::width;
  detail::packet const one = pset1<detail::packet>(1.f);
  auto const f = [&](detail::packet g, detail::packet u) { return pmul(pdiv(g, padd(one, pexp(pnegate(g)))), u); };
  index_t i = 0;
  for (; i + width <= n; i += width) pstoreu(gate + i, f(ploadu<detail::packet>(gate + i), ploadu<detail::packet>(up + i)));
  if (i < n) detail::store_tail(gate, i, n, f(detail::load_tail(gate, i, n, 0.f), detail::load_tail(up, i, n, 0.f)));
}

}  // namespace rsq::cpu::packet_math
