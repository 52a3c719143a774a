// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// GPU packing into the GPTQ int32 layout (<rsq/backend/cuda/pack.hpp>): one thread per run block of 32 values,
/// using pack::pack_block (constexpr, __host__ __device__), so the bit layout is the host packer's by construction.

#include <climits>
#include <cstdint>
#include <limits>

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

}  // namespace rsq::cuda::kernels

namespace rsq::cuda {

template <class T>
device_gptq_tensors pack_gptq_device(backend::cuda const& be, device_result<T> const& r, pack::zero_format fmt) {
  RSQ_EXPECTS(r.ok(), "pack_gptq: the GPTQ result is not ok (", gptq::to_string(r.info.info), ")");
  int const bits = r.bits;
  pack::detail::check_bits(bits, "pack_gptq");
  index_t const rows = r.rows, cols = r.cols, groups = r.groups;
  pack::detail::check_whole_words(cols, bits, "pack_gptq", "in_features");
  pack::detail::check_whole_words(rows, bits, "pack_gptq", "out_features");
  auto& ctx = detail::context_for(be.stream);
  cudaStream_t const s = ctx.stream();
  device_gptq_tensors t;
  t.bits = bits;
  t.format = fmt;
  t.qweight = device_matrix<std::int32_t>(cols * bits / 32, rows);
  t.qzeros = device_matrix<std::int32_t>(groups, rows * bits / 32);
  t.scales = device_matrix<float>(groups, rows);
  t.g_idx = device_array<std::int32_t>(cols);
  RSQ_CUDA_CHECK(cudaMemcpyAsync(t.g_idx.data(), r.g_idx.data(), std::size_t(cols) * sizeof(std::int32_t),
                                 cudaMemcpyDeviceToDevice, s));
  auto* rec = detail::fresh_record(ctx);
  index_t const code_items = rows * ((cols + 31) / 32), zero_items = groups * ((rows + 31) / 32);
  auto launch = [&]<int Bits>() {
    kernels::pack_codes_kernel<Bits><<<kernels::blocks_for(code_items, 128), 128, 0, s>>>(r.codes.data(), rows, cols,
                                                                                         t.qweight.data());
    RSQ_CUDA_CHECK_LAUNCH("pack_codes_kernel");
    kernels::pack_zeros_kernel<Bits, T><<<kernels::blocks_for(zero_items, 128), 128, 0, s>>>(
        r.zeros.data(), r.scales.data(), rows, groups, fmt == pack::zero_format::v1, t.qzeros.data(), t.scales.data(),
        rec);
    RSQ_CUDA_CHECK_LAUNCH("pack_zeros_kernel");
  };
  switch (bits) {
    case 2: launch.template operator()<2>(); break;
    case 3: launch.template operator()<3>(); break;
    case 4: launch.template operator()<4>(); break;
    default: launch.template operator()<8>(); break;
  }
  auto const bad = detail::read_back(rec, s).first_bad;
  if (bad != ULLONG_MAX) {
    index_t const row = index_t(bad) / groups, g = index_t(bad) % groups;
    T const z = detail::read_back(r.zeros.data() + bad, s), sc = detail::read_back(r.scales.data() + bad, s);
    RSQ_EXPECTS(std::abs(sc) <= T(std::numeric_limits<float>::max()), "pack_gptq: scales(row ", row, ", group ", g,
                ") = ", sc, " overflows float");
    if (fmt == pack::zero_format::v1 && z == T(0))
      rsq::detail::throw_invalid_argument(
          "pack_gptq: zeros(row ", row, ", group ", g,
          ") is 0, which zero_format::v1 cannot store (AutoGPTQ stores zero - 1, so 0 would wrap to -1 and corrupt "
          "its int32 word); use zero_format::v2 (GPTQModel) for this weight");
    rsq::detail::throw_invalid_argument("pack_gptq: zeros(row ", row, ", group ", g, ") = ", z,
                                        " is not an integer in [0, ", (1 << bits) - 1, "] for ", bits, "-bit codes");
  }
  return t;
}

template <class B>
pack::gptq_tensors device_gptq_tensors::to_host(B const& be) const {
  pack::gptq_tensors t;
  t.bits = bits;
  t.format = format;
  t.qweight = xt::xtensor<std::int32_t, 2>::from_shape({std::size_t(qweight.rows()), std::size_t(qweight.cols())});
  t.qzeros = xt::xtensor<std::int32_t, 2>::from_shape({std::size_t(qzeros.rows()), std::size_t(qzeros.cols())});
  t.scales = xt::xtensor<float, 2>::from_shape({std::size_t(scales.rows()), std::size_t(scales.cols())});
  t.g_idx = xt::xtensor<std::int32_t, 1>::from_shape({std::size_t(g_idx.size())});
  auto copy = [&](auto* dst, auto const* src, index_t n) {
    detail::runtime_api<>::copy(dst, src, std::size_t(n) * sizeof(*src), be.stream);
  };
  copy(t.qweight.data(), qweight.data(), qweight.size());
  copy(t.qzeros.data(), qzeros.data(), qzeros.size());
  copy(t.scales.data(), scales.data(), scales.size());
  copy(t.g_idx.data(), g_idx.data(), g_idx.size());
  return t;
}

}  // namespace rsq::cuda
