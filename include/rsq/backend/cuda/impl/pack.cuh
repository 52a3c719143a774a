// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// GPU packing into the GPTQ int32 layout (<rsq/backend/cuda/pack.hpp>): one thread per run block of 32 values,
/// using pack::pack_block (constexpr, __host__ __device__), so the bit layout is the host packer's by construction.

#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "rsq/backend/cuda/impl/common.cuh"
#include "rsq/backend/cuda/pack.hpp"
#include "rsq/pack/bitstream.hpp"

namespace rsq::cuda::kernels {

/// qweight(w0 + i, r) = word i of the block of codes [c0, c0 + 32) of row r; consecutive threads take consecutive
/// rows, so the int32 stores are coalesced.
template <int Bits>
__global__ void pack_codes_kernel(std::uint8_t const* __restrict__ codes, index_t rows, index_t cols,
                                  std::int32_t* __restrict__ qweight) {
  index_t const blocks = (cols + pack::block_values - 1) / pack::block_values;
  index_t const n_items = rows * blocks;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n_items;
       idx += index_t(gridDim.x) * blockDim.x) {
    index_t const r = idx % rows, b = idx / rows, c0 = b * pack::block_values;
    index_t const n = cols - c0 < pack::block_values ? cols - c0 : pack::block_values;
    // 32-bit lanes: the byte path of pack_block (memcpy, is_constant_evaluated) is host-only.
    std::uint32_t v[pack::block_values];
    for (int j = 0; j < pack::block_values; ++j) v[j] = j < n ? codes[r * cols + c0 + j] : 0u;
    std::uint32_t words[Bits];
    pack::pack_block<Bits>(v, words);
    index_t const w0 = c0 * Bits / 32, nw = n * Bits / 32;
    for (index_t i = 0; i < nw; ++i) qweight[(w0 + i) * rows + r] = std::int32_t(words[i]);
  }
}

/// qzeros(g, ·): the zeros of all rows of group g as one run (v1 stores zero − 1); scales transposed to (groups, rows).
/// Records the first (row, group) whose zero cannot be stored, in row-major order of zeros.
template <int Bits, class T>
__global__ void pack_zeros_kernel(T const* __restrict__ zeros, T const* __restrict__ scales, index_t rows,
                                  index_t groups, bool v1, std::int32_t* __restrict__ qzeros,
                                  float* __restrict__ scales_t, validation_record* rec) {
  index_t const blocks = (rows + pack::block_values - 1) / pack::block_values;
  index_t const zero_words = rows * Bits / 32;
  index_t const n_items = groups * blocks;
  constexpr int maxq = (1 << Bits) - 1;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n_items;
       idx += index_t(gridDim.x) * blockDim.x) {
    index_t const g = idx / blocks, b0 = (idx % blocks) * pack::block_values;
    index_t const n = rows - b0 < pack::block_values ? rows - b0 : pack::block_values;
    std::uint32_t stored[pack::block_values];
    for (int j = 0; j < pack::block_values; ++j) {
      stored[j] = 0;
      if (j >= n) continue;
      index_t const r = b0 + j;
      T const z = zeros[r * groups + g];
      T const s = scales[r * groups + g];
      scales_t[g * rows + r] = float(s);
      // (a NaN scale fails the comparison too)
      bool const ok = z == floor(z) && z >= T(0) && z <= T(maxq) && (!v1 || z >= T(1)) &&
                      fabs(s) <= T(3.4028234663852886e38);
      if (!ok) atomicMin(&rec->first_bad, static_cast<unsigned long long>(r * groups + g));
      else stored[j] = std::uint32_t(z) - (v1 ? 1u : 0u);
    }
    std::uint32_t words[Bits];
    pack::pack_block<Bits>(stored, words);
    index_t const w0 = b0 * Bits / 32, nw = n * Bits / 32;
    for (index_t i = 0; i < nw; ++i) qzeros[g * zero_words + w0 + i] = std::int32_t(words[i]);
  }
}

/// Records the first code (row-major order) above @p maxq.
template <class C>
__global__ void codes_range_kernel(C const* __restrict__ codes, index_t n, unsigned maxq, validation_record* rec) {
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += index_t(gridDim.x) * blockDim.x)
    if (codes[i] > maxq) atomicMin(&rec->first_bad, static_cast<unsigned long long>(i));
}

}  // namespace rsq::cuda::kernels

namespace rsq::cuda::detail {

template <class S>
pack::basic_gptq_tensors<backend::cuda> pack_impl(backend::cuda const& be, matrix_view<const std::uint8_t> codes_in,
                                                  matrix_view<const S> scales_in, matrix_view<const S> zeros_in,
                                                  vector_view<const std::int32_t> g_idx_in, int bits,
                                                  pack::zero_format fmt) {
  auto& ctx = context_for(be.stream);
  cudaStream_t const s = ctx.stream();
  index_t const rows = codes_in.rows(), cols = codes_in.cols(), groups = scales_in.cols();
  // Contiguous device copies of what is not already that (a host result, a strided view).
  auto const dev = [&](auto v, char const* what) {
    using V = std::remove_const_t<typename decltype(v)::element_type>;
    bool const on_device = resident_here(v.data(), what);
    return to_device_matrix<V, V>(v, on_device, s);
  };
  auto const codes = dev(codes_in, "pack_gptq: codes");
  auto const scales = dev(scales_in, "pack_gptq: scales");
  auto const zeros = dev(zeros_in, "pack_gptq: zeros");
  // g_idx is small: checked on the host with the host packer's messages.
  std::vector<std::int32_t> gi(static_cast<std::size_t>(cols));
  if (resident_here(g_idx_in.data(), "pack_gptq: g_idx")) {
    RSQ_EXPECTS(g_idx_in.stride(0) == 1, "pack_gptq: a device g_idx must be contiguous");
    runtime_api<>::copy(gi.data(), g_idx_in.data(), gi.size() * sizeof(std::int32_t), s);
  } else {
    for (index_t c = 0; c < cols; ++c) gi[std::size_t(c)] = g_idx_in(c);
  }
  pack::detail::check_g_idx(vector_view<const std::int32_t>(gi.data(), cols), cols, groups, "pack_gptq");
  // The host packer's checks, in its order and with its messages: codes in range, finite scales and zeros.
  {
    auto* rec = fresh_record(ctx);
    kernels::codes_range_kernel<<<kernels::blocks_for(rows * cols, 256), 256, 0, s>>>(
        codes.data(), rows * cols, unsigned((1 << bits) - 1), rec);
    RSQ_CUDA_CHECK_LAUNCH("codes_range_kernel");
    if (auto const bad = read_back(rec, s).first_bad; bad != ULLONG_MAX)
      rsq::detail::throw_invalid_argument("pack_gptq: codes(", index_t(bad) / cols, ", ", index_t(bad) % cols, ") = ",
                                          int(read_back(codes.data() + bad, s)), " is outside [0, ", (1 << bits) - 1,
                                          "] for ", bits, "-bit codes");
  }
  check_finite_device(ctx, matrix_view<const S>(scales.data(), rows, groups), "pack_gptq: scales");
  check_finite_device(ctx, matrix_view<const S>(zeros.data(), rows, groups), "pack_gptq: zeros");

  pack::basic_gptq_tensors<backend::cuda> t;
  t.bits = bits;
  t.format = fmt;
  t.qweight = device_matrix<std::int32_t>(cols * bits / 32, rows);
  t.qzeros = device_matrix<std::int32_t>(groups, rows * bits / 32);
  t.scales = device_matrix<float>(groups, rows);
  t.g_idx = to_device(gi, be);
  auto* rec = fresh_record(ctx);
  index_t const code_items = rows * ((cols + 31) / 32), zero_items = groups * ((rows + 31) / 32);
  auto launch = [&]<int Bits>() {
    kernels::pack_codes_kernel<Bits><<<kernels::blocks_for(code_items, 128), 128, 0, s>>>(codes.data(), rows, cols,
                                                                                         t.qweight.data());
    RSQ_CUDA_CHECK_LAUNCH("pack_codes_kernel");
    kernels::pack_zeros_kernel<Bits, S><<<kernels::blocks_for(zero_items, 128), 128, 0, s>>>(
        zeros.data(), scales.data(), rows, groups, fmt == pack::zero_format::v1, t.qzeros.data(), t.scales.data(),
        rec);
    RSQ_CUDA_CHECK_LAUNCH("pack_zeros_kernel");
  };
  switch (bits) {
    case 2: launch.template operator()<2>(); break;
    case 3: launch.template operator()<3>(); break;
    case 4: launch.template operator()<4>(); break;
    default: launch.template operator()<8>(); break;
  }
  auto const bad = read_back(rec, s).first_bad;
  if (bad != ULLONG_MAX) {
    index_t const row = index_t(bad) / groups, g = index_t(bad) % groups;
    S const z = read_back(zeros.data() + bad, s), sc = read_back(scales.data() + bad, s);
    RSQ_EXPECTS(std::abs(sc) <= S(std::numeric_limits<float>::max()), "pack_gptq: scales(row ", row, ", group ", g,
                ") = ", sc, " overflows float");
    if (fmt == pack::zero_format::v1 && z == S(0))
      rsq::detail::throw_invalid_argument(
          "pack_gptq: zeros(row ", row, ", group ", g,
          ") is 0, which zero_format::v1 cannot store (AutoGPTQ stores zero - 1, so 0 would wrap to -1 and corrupt "
          "its int32 word); use zero_format::v2 (GPTQModel) for this weight");
    rsq::detail::throw_invalid_argument("pack_gptq: zeros(row ", row, ", group ", g, ") = ", z,
                                        " is not an integer in [0, ", (1 << bits) - 1, "] for ", bits, "-bit codes");
  }
  RSQ_CUDA_CHECK(cudaStreamSynchronize(s));  // the staged copies are freed on return
  return t;
}

template <class B>
pack::gptq_tensors packed_to_host(B const& be, pack::basic_gptq_tensors<B> const& d) {
  pack::gptq_tensors t;
  t.bits = d.bits;
  t.format = d.format;
  t.qweight = rsq::make_matrix_for_overwrite<std::int32_t>(d.qweight.rows(), d.qweight.cols());
  t.qzeros = rsq::make_matrix_for_overwrite<std::int32_t>(d.qzeros.rows(), d.qzeros.cols());
  t.scales = rsq::make_matrix_for_overwrite<float>(d.scales.rows(), d.scales.cols());
  t.g_idx = xt::xtensor<std::int32_t, 1>::from_shape({std::size_t(d.g_idx.size())});
  auto copy = [&](auto* dst, auto const* src, index_t n) {
    runtime_api<>::copy(dst, src, std::size_t(n) * sizeof(*src), be.stream);
  };
  copy(t.qweight.data(), d.qweight.data(), d.qweight.size());
  copy(t.qzeros.data(), d.qzeros.data(), d.qzeros.size());
  copy(t.scales.data(), d.scales.data(), d.scales.size());
  copy(t.g_idx.data(), d.g_idx.data(), d.g_idx.size());
  return t;
}

}  // namespace rsq::cuda::detail
