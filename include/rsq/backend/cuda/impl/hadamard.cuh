// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The Hadamard kernels' mix tables and launch (rsq::cuda::detail::dispatch_hadamard), used by
/// <rsq/backend/cuda/impl/hadamard_transform.cuh>. Float rows that are 16-byte aligned go to the fast kernels
/// (had::fwht_kernel for 2^m, had::mix_kernel for K·2^m: kernels/hadamard.cuh), everything else to the legacy kernel.
/// hadamard_tuning() selects a variant for benchmarks (bench_hadamard_cuda measures every one of them).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "rsq/backend/cuda/hadamard.hpp"
#include "rsq/backend/cuda/impl/common.cuh"
#include "rsq/backend/cuda/kernels/hadamard.cuh"
#include "rsq/rotation/hadamard_matrices.hpp"

namespace rsq::cuda::detail {

/// The mix tables of op(hadK), uploaded once per (thread, device, construction, transpose): bits (ceil(K/16), K) with
/// bit q of [c·K + a] set when op(hadK)[16c + q][a] = +1, and floats ±1, (ceil(K/8), K, 8) with
/// [(c·K + a)·8 + q] = op(hadK)[8c + q][a] (the legacy kernel); and the tensor-core A fragments of op(hadK), padded
/// with zeros to mt = ceil(K/16) tiles of 16 x 16, as bf16 and as f16 ±1: (mt, mt, 32 lanes, 4 words), the layout of
/// mma.m16n8k16 (kernels/hadamard.cuh, mma16816), so that a lane loads its fragment with one 16-byte load.
struct hadamard_mix {
  device_array<std::uint16_t> bits;
  device_array<float> signs;
  device_array<std::uint32_t> frag_bf16, frag_f16;
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
  auto op = [&](index_t a, index_t b) -> int {  // op(hadK)[a][b]: output a, input b; 0 outside (the padding)
    if (a >= k || b >= k) return 0;
    return transpose ? (*h)(b, a) : (*h)(a, b);
  };
  std::vector<std::uint16_t> bits(std::size_t(chunks * k), 0);
  std::vector<float> signs(std::size_t((k + 7) / 8 * k * 8), 0.0f);
  for (index_t a = 0; a < k; ++a)      // output index
    for (index_t b = 0; b < k; ++b) {  // input index
      int const v = op(a, b);
      if (v > 0) bits[std::size_t((a / 16) * k + b)] |= std::uint16_t(1u << (a % 16));
      signs[std::size_t(((a / 8) * k + b) * 8 + a % 8)] = float(v);
    }
  int const mt = int(chunks);
  std::vector<std::uint32_t> fb(std::size_t(mt * mt * 32 * 4)), fh(fb.size());
  auto op_int = [&](int a, int b) { return op(a, b); };
  kernels::had::a_fragments(int(k), op_int, false, fb.data());
  kernels::had::a_fragments(int(k), op_int, true, fh.data());
  hadamard_mix t{to_device(bits), to_device(signs), to_device(fb), to_device(fh)};
  return cache.emplace(key, std::move(t)).first->second;
}

/// Knobs of the Hadamard dispatch (per thread; benchmarks and diagnostics). The defaults are the library's choice.
struct hadamard_knobs {
  int kernel = 0;     ///< 0: automatic, 1: always the legacy kernel, 2: the fast kernels wherever they apply
  int prefetch = -1;  ///< fast kernels: -1 automatic (on), 0: no staging of the next tile, 1: staging
  int split = -1;     ///< mix kernel: -1 automatic (3 bf16 parts up to K = 128, 2 f16 parts above), 0: 3 bf16, 1: 2 f16
};
[[nodiscard]] inline hadamard_knobs& hadamard_tuning() noexcept {
  thread_local hadamard_knobs t;
  return t;
}

/// What dispatch_hadamard runs for a launch: the kernel and its configuration (also printed by the benchmark).
struct hadamard_launch {
  enum kind_t { legacy, fwht, mix } kind = legacy;
  int threads = 0, prefetch = 0, split = 0, mb = 0, nb = 0, staged = 0, items = 0;
  unsigned smem = 0;
  [[nodiscard]] std::string name() const {
    std::string s;
    switch (kind) {
      case legacy: s = "legacy"; break;
      case fwht: s = prefetch ? "fwht+stage" : "fwht"; break;
      case mix:
        s = split ? "mma-f16x2" : "mma-bf16x3";
        if (prefetch) s += staged == items ? "+stage" : "+stage" + std::to_string(100 * staged / std::max(items, 1));
        break;
    }
    return s;
  }
};

/// The current device's multiprocessor count and opt-in shared memory per CTA (queried once per device and thread).
struct device_limits {
  int sms = 0;
  unsigned smem_optin = 0;
};
inline device_limits const& current_device_limits() {
  thread_local std::map<int, device_limits> cache;
  int device = 0;
  RSQ_CUDA_CHECK(cudaGetDevice(&device));
  auto it = cache.find(device);
  if (it == cache.end()) {
    device_limits d;
    int optin = 0;
    RSQ_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device));
    RSQ_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    d.smem_optin = unsigned(optin);
    it = cache.emplace(device, d).first;
  }
  return it->second;
}

/// plan_mix, cached per (device limits, arguments): its swizzle search is cheap but not free, and a transform is
/// called once per weight matrix.
inline kernels::had::mix_plan const& cached_mix_plan(int k, int m, int split, bool prefetch, int threads,
                                                      unsigned smem_limit) {
  thread_local std::map<std::tuple<int, int, int, bool, int, unsigned>, kernels::had::mix_plan> cache;
  auto const key = std::make_tuple(k, m, split, prefetch, threads, smem_limit);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, kernels::had::plan_mix(k, m, split, prefetch, threads, smem_limit)).first;
  return it->second;
}

/// fwht_kernel<M>'s threads per CTA: tiles of 8192 elements (256 threads) up to n = 8192, then one row per tile.
template <int M>
inline constexpr int fwht_threads = M <= 13 ? 256 : M == 14 ? 512 : 1024;

/// The fast-kernel launch for float rows, or kind = legacy when none applies (knobs, alignment, sizes, memory).
inline hadamard_launch choose_hadamard(float const* x, index_t ld, rotation::hadamard_plan const& plan) {
  hadamard_launch l;
  auto const& kn = hadamard_tuning();
  if (kn.kernel == 1) return l;
  bool const aligned = reinterpret_cast<std::uintptr_t>(x) % 16 == 0 && ld % 4 == 0;
  int const forced = tuning().hadamard_threads;
  int const m = int(plan.m);
  if (!aligned || (plan.kind != rotation::hadamard_kind::sylvester && plan.kind != rotation::hadamard_kind::reference &&
                   plan.kind != rotation::hadamard_kind::paley1 && plan.kind != rotation::hadamard_kind::paley2))
    return l;
  bool const prefetch = kn.prefetch != 0;
  if (plan.k == 1) {
    if (m < 8 || m > 15) return l;
    int const nt = m <= 13 ? 256 : m == 14 ? 512 : 1024;
    if (forced != 0 && forced != nt) return l;  // the test's launch configurations: other counts run the legacy kernel
    int const t = (nt == 256 ? 8 : nt == 512 ? 9 : 10) + 5;
    unsigned const tile = 4u << t, stage = m == 15 ? 6u * 1024u * 16u : tile, optin = current_device_limits().smem_optin;
    if (tile > optin) return l;  // a device with less shared memory than a Hopper's: the legacy kernel
    l.kind = hadamard_launch::fwht;
    l.threads = nt;
    l.prefetch = prefetch && tile + stage <= optin;
    l.smem = tile + (l.prefetch ? stage : 0u);
    return l;
  }
  if (m < 5 || m > 10 || plan.k > 256) return l;
  if (forced != 0 && forced != 256 && forced != 512) return l;
  int const split = kn.split >= 0 ? kn.split : (plan.k > 128 ? 1 : 0);
  auto const& pl = cached_mix_plan(int(plan.k), m, split, prefetch, forced, current_device_limits().smem_optin);
  if (pl.smem == 0) return l;
  l.kind = hadamard_launch::mix;
  l.threads = pl.nt;
  l.prefetch = prefetch;
  l.split = split;
  l.mb = pl.mb;
  l.nb = pl.nb;
  l.staged = pl.staged;
  l.items = pl.items0;
  l.smem = pl.smem;
  return l;
}

/// Grid of a persistent kernel: every SM full (by the occupancy of this launch), at most one CTA per work unit. The
/// dynamic shared-memory limit of a kernel is only ever raised, and the occupancy is cached per (device, kernel,
/// threads, bytes), so that a call costs a map lookup and the launch.
template <class K>
index_t persistent_grid(K* kernel, int threads, unsigned smem, index_t units) {
  thread_local std::map<std::pair<int, void const*>, unsigned> limit;
  thread_local std::map<std::tuple<int, void const*, int, unsigned>, int> occupancy;
  int device = 0;
  RSQ_CUDA_CHECK(cudaGetDevice(&device));
  void const* const f = reinterpret_cast<void const*>(kernel);
  unsigned& set = limit[{device, f}];
  if (smem > set) {
    RSQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    set = smem;
  }
  auto const key = std::make_tuple(device, f, threads, smem);
  auto it = occupancy.find(key);
  if (it == occupancy.end()) {
    int per_sm = 0;
    RSQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
    it = occupancy.emplace(key, std::max(per_sm, 1)).first;
  }
  int const sms = current_device_limits().sms;
  return std::max<index_t>(1, std::min<index_t>(units, index_t(sms) * it->second));
}

template <int M>
void launch_fwht(float* x, index_t ld, index_t rows, std::int8_t const* pre, std::int8_t const* post, float scale,
                 hadamard_launch const& l, cudaStream_t s) {
  constexpr int NT = fwht_threads<M>, T = (NT == 256 ? 8 : NT == 512 ? 9 : 10) + 5;
  auto* const kernel = &kernels::had::fwht_kernel<M, NT, M == 15>;
  index_t const per_tile = index_t(1) << (T - M), tiles = (rows + per_tile - 1) / per_tile;
  kernels::had::fwht_args a{x, ld, rows, tiles, scale, pre, post, l.prefetch};
  index_t const grid = persistent_grid(kernel, NT, l.smem, tiles);
  kernel<<<unsigned(grid), NT, l.smem, s>>>(a);
  RSQ_CUDA_CHECK_LAUNCH("had::fwht_kernel");
}

template <int MB, int NB, int SPLIT>
void launch_mix_kernel(kernels::had::mix_args const& a, kernels::had::mix_plan const& pl, cudaStream_t s) {
  auto* const kernel = &kernels::had::mix_kernel<MB, NB, SPLIT>;
  index_t const grid = persistent_grid(kernel, pl.nt, pl.smem, a.rows);
  kernel<<<unsigned(grid), unsigned(pl.nt), pl.smem, s>>>(a);
  RSQ_CUDA_CHECK_LAUNCH("had::mix_kernel");
}

inline void launch_mix(float* x, index_t ld, index_t rows, rotation::hadamard_plan const& plan,
                       hadamard_mix const* mix, std::int8_t const* pre, std::int8_t const* post, float scale,
                       hadamard_launch const& l, cudaStream_t s) {
  auto const& pl = cached_mix_plan(int(plan.k), int(plan.m), l.split, l.prefetch != 0, tuning().hadamard_threads,
                                   current_device_limits().smem_optin);
  kernels::had::mix_args a{};
  a.x = x;
  a.ld = ld;
  a.rows = rows;
  a.k = pl.k;
  a.m = pl.m;
  a.mt = pl.mt;
  a.rows_buf = pl.rows_buf;
  a.items0 = pl.items0;
  a.items1 = pl.items1;
  a.staged = pl.staged;
  a.tasks = pl.tasks;
  a.ng = pl.ng;
  a.scale = scale;
  a.pre = pre;
  a.post = post;
  a.frag = reinterpret_cast<uint4 const*>(pl.split ? mix->frag_f16.data() : mix->frag_bf16.data());
  a.sw = pl.sw;
  a.off_work = pl.off_work;
  a.off_stage = pl.off_stage;
  a.off_lut = pl.off_lut;
  a.off_pre = pl.off_pre;
  a.off_post = pl.off_post;
  a.off_wmax = pl.off_wmax;
  auto go = [&]<int MB>() {
    if (pl.nb == 4) {
      if (pl.split) launch_mix_kernel<MB, 4, 1>(a, pl, s);
      else launch_mix_kernel<MB, 4, 0>(a, pl, s);
    } else {
      if (pl.split) launch_mix_kernel<MB, 2, 1>(a, pl, s);
      else launch_mix_kernel<MB, 2, 0>(a, pl, s);
    }
  };
  switch (pl.mb) {
    case 1: go.template operator()<1>(); break;
    case 2: go.template operator()<2>(); break;
    case 3: go.template operator()<3>(); break;
    default: go.template operator()<4>(); break;
  }
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
  index_t const iterations = (rows + (index_t(1) << lr) - 1) >> lr;
  index_t const grid = persistent_grid(kernel, NT, unsigned(smem), iterations);
  float const* signs = use_floats ? mix->signs.data() : nullptr;
  std::uint16_t const* bits = (k > 1 && !use_floats) ? mix->bits.data() : nullptr;
  kernel<<<unsigned(grid), NT, smem, s>>>(x, ld, rows, n, m, k, lr, signs, bits, pre, post, scale);
  RSQ_CUDA_CHECK_LAUNCH("hadamard_kernel");
}

/// The legacy launch: short power-of-two rows are taken 2048/n at a time; threads so that each holds at most 4
/// groups of 8 elements (the register prefetch), 16-byte loads when rows are aligned.
template <class T>
void dispatch_legacy(T* x, index_t ld, index_t rows, rotation::hadamard_plan const& plan, hadamard_mix const* mix,
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

/// rows ← diag(post)·op(H)·diag(pre)·rows·scale on device rows (column stride 1, row stride ld; device sign arrays
/// of n values or null; the mix tables for K > 1). Float rows go to the fast kernels where they apply
/// (choose_hadamard: rows and row stride 16-byte aligned, signs 4-byte aligned, n = 2^m with 256 <= n <= 32768, or
/// n = K·2^m with 32 <= 2^m <= 1024, K <= 256 and the tile in shared memory), the rest to the legacy kernel.
template <class T>
void dispatch_hadamard(T* x, index_t ld, index_t rows, rotation::hadamard_plan const& plan, hadamard_mix const* mix,
                       std::int8_t const* pre, std::int8_t const* post, T scale, cudaStream_t s) {
  // The fast kernels read the signs 4 bytes at a time (device arrays from cudaMalloc always qualify).
  bool const signs_aligned = reinterpret_cast<std::uintptr_t>(pre) % 4 == 0 && reinterpret_cast<std::uintptr_t>(post) % 4 == 0;
  if constexpr (std::is_same_v<T, float>) {
    auto const l = signs_aligned ? choose_hadamard(x, ld, plan) : hadamard_launch{};
    if (l.kind == hadamard_launch::fwht) {
      switch (plan.m) {
        case 8: launch_fwht<8>(x, ld, rows, pre, post, scale, l, s); return;
        case 9: launch_fwht<9>(x, ld, rows, pre, post, scale, l, s); return;
        case 10: launch_fwht<10>(x, ld, rows, pre, post, scale, l, s); return;
        case 11: launch_fwht<11>(x, ld, rows, pre, post, scale, l, s); return;
        case 12: launch_fwht<12>(x, ld, rows, pre, post, scale, l, s); return;
        case 13: launch_fwht<13>(x, ld, rows, pre, post, scale, l, s); return;
        case 14: launch_fwht<14>(x, ld, rows, pre, post, scale, l, s); return;
        default: launch_fwht<15>(x, ld, rows, pre, post, scale, l, s); return;
      }
    }
    if (l.kind == hadamard_launch::mix && mix != nullptr) {
      launch_mix(x, ld, rows, plan, mix, pre, post, scale, l, s);
      return;
    }
  }
  dispatch_legacy<T>(x, ld, rows, plan, mix, pre, post, scale, s);
}

}  // namespace rsq::cuda::detail
