// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The Hadamard kernel's mix tables and launch (rsq::cuda::detail::dispatch_hadamard), used by
/// <rsq/backend/cuda/impl/hadamard_transform.cuh>.

#include <cmath>
#include <cstdint>
#include <map>
#include <tuple>
#include <vector>

#include "rsq/backend/cuda/hadamard.hpp"
#include "rsq/backend/cuda/impl/common.cuh"
#include "rsq/backend/cuda/kernels/hadamard.cuh"
#include "rsq/rotation/hadamard_matrices.hpp"

namespace rsq::cuda::detail {

/// The mix tables of op(hadK), uploaded once per (thread, device, construction, transpose): bits (ceil(K/16), K) with
/// bit q of [c·K + a] set when op(hadK)[16c + q][a] = +1, and floats ±1, (ceil(K/8), K, 8) with
/// [(c·K + a)·8 + q] = op(hadK)[8c + q][a].
struct hadamard_mix {
  device_array<std::uint16_t> bits;
  device_array<float> signs;
};

inline hadamard_mix const& hadamard_mix_tables(rotation::hadamard_plan const& plan, bool transpose) {
  thread_local std::map<std::tuple<int, int, index_t, index_t, bool>, hadamard_mix> cache;
  int const device = runtime_api<>::current_device();
  auto const key = std::make_tuple(device, int(plan.kind), plan.k, plan.q, transpose);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  rotation::sign_matrix const* h = nullptr;
  rotation::sign_matrix owned;
  if (plan.kind == rotation::hadamard_kind::reference) {
    h = &rotation::reference_hadamard(plan.k);
  } else {
    owned = plan.kind == rotation::hadamard_kind::paley1 ? rotation::paley1_hadamard(plan.q)
                                                         : rotation::paley2_hadamard(plan.q);
    h = &owned;
  }
  index_t const k = plan.k, chunks = (k + 15) / 16;
  std::vector<std::uint16_t> bits(std::size_t(chunks * k), 0);
  std::vector<float> signs(std::size_t((k + 7) / 8 * k * 8), 0.0f);
  for (index_t a = 0; a < k; ++a)      // output index
    for (index_t b = 0; b < k; ++b) {  // input index
      std::int8_t const v = transpose ? (*h)(b, a) : (*h)(a, b);
      if (v > 0) bits[std::size_t((a / 16) * k + b)] |= std::uint16_t(1u << (a % 16));
      signs[std::size_t(((a / 8) * k + b) * 8 + a % 8)] = float(v);
    }
  hadamard_mix t{to_device(bits), to_device(signs)};
  return cache.emplace(key, std::move(t)).first->second;
}

template <class T, int NT, bool VEC, int PF, bool MIX>
void launch_hadamard(T* x, index_t ld, index_t rows, rotation::hadamard_plan const& plan, int lr,
                     hadamard_mix const* mix, std::int8_t const* pre, std::int8_t const* post, T scale,
                     cudaStream_t s) {
  int const n = int(plan.n), k = int(plan.k), m = int(plan.m), chunks = (k + 15) / 16;
  std::size_t const row_bytes = std::size_t(kernels::padded(n << lr) + 1) * sizeof(T);
  std::size_t const float_table = k > 1 ? std::size_t((k + 7) / 8 * k * 8) * sizeof(float) : 0;
  // The ±1 floats make the mix one FMA per (output, input); where they do not fit next to the row, the bit table.
  bool const use_floats = k > 1 && row_bytes + float_table <= std::size_t(220) << 10;
  std::size_t const smem = row_bytes + (use_floats ? float_table : std::size_t((chunks * k + 7) / 8 * 8) * 2) + 16;
  auto* const kernel = &kernels::hadamard_kernel<T, NT, VEC, PF, MIX>;
  RSQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  int device = 0, sms = 0, per_sm = 0;
  RSQ_CUDA_CHECK(cudaGetDevice(&device));
  RSQ_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  RSQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, NT, smem));
  index_t const iterations = (rows + (index_t(1) << lr) - 1) >> lr;
  index_t const grid = std::min<index_t>(iterations, index_t(sms) * std::max(per_sm, 1));
  float const* signs = use_floats ? mix->signs.data() : nullptr;
  std::uint16_t const* bits = (k > 1 && !use_floats) ? mix->bits.data() : nullptr;
  kernel<<<unsigned(grid), NT, smem, s>>>(x, ld, rows, n, m, k, lr, signs, bits, pre, post, scale);
  RSQ_CUDA_CHECK_LAUNCH("hadamard_kernel");
}

/// Picks the launch: short power-of-two rows are taken 2048/n at a time; threads so that each holds at most 4 groups
/// of 8 elements (the register prefetch), 16-byte loads when rows are aligned.
template <class T>
void dispatch_hadamard(T* x, index_t ld, index_t rows, rotation::hadamard_plan const& plan, hadamard_mix const* mix,
                       std::int8_t const* pre, std::int8_t const* post, T scale, cudaStream_t s) {
  int const n = int(plan.n);
  int lr = 0;
  if (plan.k == 1)
    while ((n << lr) < 2048 && (index_t(1) << (lr + 1)) <= std::max<index_t>(rows, 1)) ++lr;
  int const N = n << lr, groups = N / 8;
  bool const eight = n % 8 == 0;
  // Measured on the H100 (docs/cuda-results.md, threads scan): 256 threads up to 1024 groups of 8, 512 up to 2048,
  // 1024 beyond, except with a large K (its register-hungry mix) and in double (spills at 1024).
  int nt = groups <= 1024 ? 256 : groups <= 2048 ? 512 : 1024;
  if (nt == 1024 && (plan.k > 64 || sizeof(T) == 8)) nt = 512;
  if (int const forced = tuning().hadamard_threads; forced == 256 || forced == 512 || (forced == 1024 && sizeof(T) == 4))
    nt = forced;
  int pf = eight ? (groups + nt - 1) / nt : 0;
  pf = pf == 0 ? 0 : pf <= 2 ? 2 : pf <= 4 ? 4 : 0;
  bool const vec = eight && reinterpret_cast<std::uintptr_t>(x) % 16 == 0 && (ld * index_t(sizeof(T))) % 16 == 0;
  auto go = [&]<int NT>() {
    auto with = [&]<bool VEC, bool MIX>() {
      switch (pf) {
        case 2: launch_hadamard<T, NT, VEC, 2, MIX>(x, ld, rows, plan, lr, mix, pre, post, scale, s); break;
        case 4: launch_hadamard<T, NT, VEC, 4, MIX>(x, ld, rows, plan, lr, mix, pre, post, scale, s); break;
        default: launch_hadamard<T, NT, false, 0, MIX>(x, ld, rows, plan, lr, mix, pre, post, scale, s); break;
      }
    };
    bool const mixed = plan.k > 1;
    if (vec && mixed) with.template operator()<true, true>();
    else if (vec) with.template operator()<true, false>();
    else if (mixed) with.template operator()<false, true>();
    else with.template operator()<false, false>();
  };
  if (nt == 256) go.template operator()<256>();
  else if (nt == 512) go.template operator()<512>();
  else if constexpr (sizeof(T) == 4) go.template operator()<1024>();
}

}  // namespace rsq::cuda::detail
