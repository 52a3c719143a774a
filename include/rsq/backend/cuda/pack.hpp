// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CUDA backend of pack::pack_gptq / pack_gptq_resident (<rsq/pack/gptq_format.hpp>): packing into the
/// AutoGPTQ / GPTQModel int32 checkpoint layout on the GPU, the same tensors bit for bit as the host packer (the bit
/// layout is <rsq/pack/bitstream.hpp>, shared with the kernels). Inputs in device or host memory; the checks of the
/// values (g_idx range, integer zeros, scales that fit a float) name the first bad element as the host packer does.
/// Declarations only; definitions in <rsq/backend/cuda/impl/pack.cuh>.

#include <cstdint>

// pack/bitstream.hpp's byte fast path calls std::is_constant_evaluated() (host-only) inside __host__ __device__
// functions that the host packer instantiates; nvcc notes it in every CUDA translation unit. The GPU kernels never take
// that path (they pack 32-bit lanes). Silence the note under nvcc.
#if defined(__CUDACC__)
#pragma nv_diag_suppress 20013
#pragma nv_diag_suppress 20015
#endif

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/pack/gptq_format.hpp"

namespace rsq::cuda::detail {

/// The definitions behind implementation<algorithm::pack_gptq, cuda> (impl/pack.cuh).
template <class S>
[[nodiscard]] pack::basic_gptq_tensors<backend::cuda> pack_impl(backend::cuda const& be,
                                                                matrix_view<const std::uint8_t> codes,
                                                                matrix_view<const S> scales, matrix_view<const S> zeros,
                                                                vector_view<const std::int32_t> g_idx, int bits,
                                                                pack::zero_format fmt);
template <class B>
[[nodiscard]] pack::gptq_tensors packed_to_host(B const& be, pack::basic_gptq_tensors<B> const& t);

extern template pack::basic_gptq_tensors<backend::cuda> pack_impl<float>(
    backend::cuda const&, matrix_view<const std::uint8_t>, matrix_view<const float>, matrix_view<const float>,
    vector_view<const std::int32_t>, int, pack::zero_format);
extern template pack::basic_gptq_tensors<backend::cuda> pack_impl<double>(
    backend::cuda const&, matrix_view<const std::uint8_t>, matrix_view<const double>, matrix_view<const double>,
    vector_view<const std::int32_t>, int, pack::zero_format);
extern template pack::gptq_tensors packed_to_host<backend::cuda>(backend::cuda const&,
                                                                pack::basic_gptq_tensors<backend::cuda> const&);

}  // namespace rsq::cuda::detail

namespace rsq::backend {

/// The CUDA backend of pack::pack_gptq (<rsq/pack/gptq_format.hpp>).
template <>
struct implementation<algorithm::pack_gptq, cuda> {
  static constexpr bool available = true;

  template <class S>
  static pack::basic_gptq_tensors<cuda> pack(cuda const& be, matrix_view<const std::uint8_t> codes,
                                             matrix_view<const S> scales, matrix_view<const S> zeros,
                                             vector_view<const std::int32_t> g_idx, int bits, pack::zero_format fmt) {
    return rsq::cuda::detail::pack_impl<S>(be, codes, scales, zeros, g_idx, bits, fmt);
  }
  static pack::gptq_tensors to_host(cuda const& be, pack::basic_gptq_tensors<cuda> const& t) {
    return rsq::cuda::detail::packed_to_host<cuda>(be, t);
  }
};

}  // namespace rsq::backend
