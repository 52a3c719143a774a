// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Packing a GPTQ result into the AutoGPTQ / GPTQModel int32 checkpoint layout on the GPU, straight from a
/// device-resident solver result: the same tensors, bit for bit, as rsq::pack::pack_gptq on the host
/// (<rsq/pack/gptq_format.hpp>; the bit layout is <rsq/pack/bitstream.hpp>, shared with the kernels).
/// Declarations only; definitions in <rsq/backend/cuda/impl/pack.cuh>.

#include <cstdint>

// pack/bitstream.hpp's byte fast path calls std::is_constant_evaluated() (host-only) inside __host__ __device__
// functions that the host packer instantiates; nvcc notes it in every CUDA translation unit. The GPU kernels never take
// that path (they pack 32-bit lanes). Silence the note under nvcc.
#if defined(__CUDACC__)
#pragma nv_diag_suppress 20013
#pragma nv_diag_suppress 20015
#endif

#include "rsq/backend/cuda/gptq_solver.hpp"
#include "rsq/backend/cuda/memory.hpp"
#include "rsq/pack/gptq_format.hpp"


namespace rsq::cuda {

/// The GPTQ checkpoint tensors in device memory (see pack::gptq_tensors for shapes and meaning).
struct device_gptq_tensors {
  device_matrix<std::int32_t> qweight;  ///< (in_features·bits/32, out_features)
  device_matrix<std::int32_t> qzeros;   ///< (groups, out_features·bits/32)
  device_matrix<float> scales;          ///< (groups, out_features)
  device_array<std::int32_t> g_idx;     ///< (in_features)
  int bits = 4;
  pack::zero_format format = pack::zero_format::v1;

  /// The same tensors in host memory (waits for the stream). (A template only so that its one definition, in
  /// rsq_cuda.cu, may be compiled into several objects of a program.)
  template <class B = backend::cuda>
  [[nodiscard]] pack::gptq_tensors to_host(B const& be = {}) const;
};

/// Packs the device result @p r (codes, scales, zeros, g_idx) on the GPU.
/// @throws rsq::invalid_argument as pack::pack_gptq: bits not in {2, 3, 4, 8}, in/out features that do not fill whole
///         int32 words, a zero of 0 with zero_format::v1 (naming row and group), a scale that overflows float, or a
///         result that is not ok()
///
/// Example: `auto packed = rsq::cuda::pack_gptq_device(be, rsq::cuda::solve_device(be, w, f, {.bits = 4}));`
template <class T>
[[nodiscard]] device_gptq_tensors pack_gptq_device(backend::cuda const& be, device_result<T> const& r,
                                                   pack::zero_format fmt = pack::zero_format::v1);

/// pack_gptq_device() followed by to_host(): what pack::pack_gptq gives for the host result.
template <class T>
[[nodiscard]] pack::gptq_tensors pack_gptq(backend::cuda const& be, device_result<T> const& r,
                                           pack::zero_format fmt = pack::zero_format::v1) {
  return pack_gptq_device<T>(be, r, fmt).to_host(be);
}

extern template pack::gptq_tensors device_gptq_tensors::to_host<backend::cuda>(backend::cuda const&) const;
extern template device_gptq_tensors pack_gptq_device<float>(backend::cuda const&, device_result<float> const&,
                                                            pack::zero_format);
extern template device_gptq_tensors pack_gptq_device<double>(backend::cuda const&, device_result<double> const&,
                                                             pack::zero_format);

}  // namespace rsq::cuda
