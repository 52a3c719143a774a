// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CUDA backend of the reverse-pass pieces (algorithm::reverse_pass, <rsq/nn/reverse.hpp>), in float only, on
/// device memory and the backend's stream:
///
///  - fill, gather_rows (ids uploaded from host memory), RoPE by ±angle, SwiGLU and its reverse: one element-wise
///    kernel each.
///  - RMSNorm forward and reverse: a warp per row, the sum of squares and the dot product mean(dy ⊙ y) in double.
///  - Attention forward and reverse: per query head h (KV head g = h / (heads / kv_heads)), for a sub-batch of
///    sequences at a time, cuBLAS strided-batched GEMMs over the sequences (strict fp32, or
///    CUBLAS_COMPUTE_32F_FAST_16BF for matmul_precision::bf16): P = q_h k_gᵀ·scale, a causal softmax kernel in place
///    (a warp per row, Σexp in double), then out_h = P v_g. The reverse recomputes P with the very same calls (the same bits), then
///    dv_g (+)= Pᵀ do_h, dP = do_h v_gᵀ, a kernel dS = P ⊙ (dP − rowsum(P ⊙ dP)) (rowsum in double),
///    dq_h = dS k_g·scale, dk_g (+)= dSᵀ q_h·scale: the group's first head overwrites dk_g and dv_g, the others add to
///    them in head order. No probabilities are kept between calls; the scratch (P and dP of a sub-batch) is bounded by
///    reverse_tuning::attention_bytes.
///  - Cross-entropy: a block per row (max and Σexp in double), the row losses downloaded and summed on the host in
///    row order, as the CPU sums them.
/// No float atomics: every result is the same bits from run to run.
///
/// Declarations only; definitions in <rsq/backend/cuda/impl/reverse.cuh> (kernels in kernels/reverse.cuh), compiled
/// by nvcc in rsq_cuda.cu. Needs no CUDA header and no Eigen.

#include <cstdint>
#include <type_traits>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/view.hpp"
#include "rsq/nn/options.hpp"

namespace rsq::cuda {

/// Sizes of the CUDA reverse-pass pieces, per thread. The default is what the library uses; tests shrink it to run
/// the attention's loop over sub-batches of sequences.
struct reverse_tuning {
  /// Device scratch of the attention: P and dP, (L, L) floats each, per sequence of a sub-batch. Sequences per
  /// sub-batch follow from it (at least one); the forward and the reverse choose the same sub-batches.
  index_t attention_bytes = index_t(1) << 30;
};

/// The calling thread's sizes of the reverse-pass pieces.
[[nodiscard]] inline reverse_tuning& reverse_pass_tuning() noexcept {
  thread_local reverse_tuning t;
  return t;
}

}  // namespace rsq::cuda

namespace rsq::cuda::detail {

/// The definitions behind the CUDA implementation of the reverse-pass pieces (impl/reverse.cuh), arguments checked
/// by the front ends. A class template with one instantiation (in rsq_cuda.cu), so that the definitions may be
/// compiled into several objects of one program.
template <class = void>
struct reverse_api {
  static void fill(backend::cuda const& be, matrix_view<float> m, float value);
  static void gather_rows(backend::cuda const& be, matrix_view<const std::int32_t> ids, matrix_view<const float> table,
                          matrix_view<float> out);
  static void rms_forward(backend::cuda const& be, matrix_view<const float> x, float eps, matrix_view<float> y,
                          vector_view<float> r);
  static void rms_backward(backend::cuda const& be, matrix_view<const float> y, vector_view<const float> r,
                           matrix_view<const float> dy, matrix_view<float> dx);
  static void rope(backend::cuda const& be, matrix_view<float> x, matrix_view<const float> cos,
                   matrix_view<const float> sin, index_t head_dim, bool reverse);
  static void attention_forward(backend::cuda const& be, matrix_view<const float> q, matrix_view<const float> k,
                                matrix_view<const float> v, matrix_view<float> out, nn::attention_options const& opt);
  static void attention_backward(backend::cuda const& be, matrix_view<const float> q, matrix_view<const float> k,
                                 matrix_view<const float> v, matrix_view<const float> d_out, matrix_view<float> dq,
                                 matrix_view<float> dk, matrix_view<float> dv, nn::attention_options const& opt);
  static void swiglu_forward(backend::cuda const& be, matrix_view<const float> a, matrix_view<const float> b,
                             matrix_view<float> u);
  static void swiglu_backward(backend::cuda const& be, matrix_view<float> a, matrix_view<float> b,
                              matrix_view<const float> du);
  static double cross_entropy(backend::cuda const& be, matrix_view<float> logits, matrix_view<const std::int32_t> ids,
                              index_t predictions, bool gradient);
};
extern template struct reverse_api<void>;

/// True for the one element type the CUDA reverse pass computes in.
template <class T>
inline constexpr bool reverse_float = std::is_same_v<T, float>;

}  // namespace rsq::cuda::detail

namespace rsq::backend {

/// The reverse-pass pieces on the GPU (<rsq/nn/reverse.hpp>), T = float only: a double call stops the compilation
/// with the static_assert below.
template <>
struct implementation<algorithm::reverse_pass, cuda> {
  static constexpr bool available = true;

  template <class T>
  static void fill(cuda const& be, matrix_view<T> m, T value) {
    static_assert(rsq::cuda::detail::reverse_float<T>, "rsq: the CUDA reverse pass computes in float");
    if constexpr (rsq::cuda::detail::reverse_float<T>) rsq::cuda::detail::reverse_api<>::fill(be, m, value);
  }

  template <class T>
  static void gather_rows(cuda const& be, matrix_view<const std::int32_t> ids, matrix_view<const T> table,
                          matrix_view<T> out) {
    static_assert(rsq::cuda::detail::reverse_float<T>, "rsq: the CUDA reverse pass computes in float");
    if constexpr (rsq::cuda::detail::reverse_float<T>)
      rsq::cuda::detail::reverse_api<>::gather_rows(be, ids, table, out);
  }

  template <class T>
  static void rms_forward(cuda const& be, matrix_view<const T> x, float eps, matrix_view<T> y, vector_view<T> r) {
    static_assert(rsq::cuda::detail::reverse_float<T>, "rsq: the CUDA reverse pass computes in float");
    if constexpr (rsq::cuda::detail::reverse_float<T>) rsq::cuda::detail::reverse_api<>::rms_forward(be, x, eps, y, r);
  }

  template <class T>
  static void rms_backward(cuda const& be, matrix_view<const T> y, vector_view<const T> r, matrix_view<const T> dy,
                           matrix_view<T> dx) {
    static_assert(rsq::cuda::detail::reverse_float<T>, "rsq: the CUDA reverse pass computes in float");
    if constexpr (rsq::cuda::detail::reverse_float<T>) rsq::cuda::detail::reverse_api<>::rms_backward(be, y, r, dy, dx);
  }

  template <class T>
  static void rope(cuda const& be, matrix_view<T> x, matrix_view<const T> cos, matrix_view<const T> sin,
                   index_t head_dim, bool reverse) {
    static_assert(rsq::cuda::detail::reverse_float<T>, "rsq: the CUDA reverse pass computes in float");
    if constexpr (rsq::cuda::detail::reverse_float<T>)
      rsq::cuda::detail::reverse_api<>::rope(be, x, cos, sin, head_dim, reverse);
  }

  template <class T>
  static void attention_forward(cuda const& be, matrix_view<const T> q, matrix_view<const T> k, matrix_view<const T> v,
                                matrix_view<T> out, nn::attention_options const& opt) {
    static_assert(rsq::cuda::detail::reverse_float<T>, "rsq: the CUDA reverse pass computes in float");
    if constexpr (rsq::cuda::detail::reverse_float<T>)
      rsq::cuda::detail::reverse_api<>::attention_forward(be, q, k, v, out, opt);
  }

  template <class T>
  static void attention_backward(cuda const& be, matrix_view<const T> q, matrix_view<const T> k,
                                 matrix_view<const T> v, matrix_view<const T> d_out, matrix_view<T> dq,
                                 matrix_view<T> dk, matrix_view<T> dv, nn::attention_options const& opt) {
    static_assert(rsq::cuda::detail::reverse_float<T>, "rsq: the CUDA reverse pass computes in float");
    if constexpr (rsq::cuda::detail::reverse_float<T>)
      rsq::cuda::detail::reverse_api<>::attention_backward(be, q, k, v, d_out, dq, dk, dv, opt);
  }

  template <class T>
  static void swiglu_forward(cuda const& be, matrix_view<const T> a, matrix_view<const T> b, matrix_view<T> u) {
    static_assert(rsq::cuda::detail::reverse_float<T>, "rsq: the CUDA reverse pass computes in float");
    if constexpr (rsq::cuda::detail::reverse_float<T>) rsq::cuda::detail::reverse_api<>::swiglu_forward(be, a, b, u);
  }

  template <class T>
  static void swiglu_backward(cuda const& be, matrix_view<T> a, matrix_view<T> b, matrix_view<const T> du) {
    static_assert(rsq::cuda::detail::reverse_float<T>, "rsq: the CUDA reverse pass computes in float");
    if constexpr (rsq::cuda::detail::reverse_float<T>) rsq::cuda::detail::reverse_api<>::swiglu_backward(be, a, b, du);
  }

  template <class T>
  static double cross_entropy(cuda const& be, matrix_view<T> logits, matrix_view<const std::int32_t> ids,
                              index_t predictions, bool gradient) {
    static_assert(rsq::cuda::detail::reverse_float<T>, "rsq: the CUDA reverse pass computes in float");
    if constexpr (rsq::cuda::detail::reverse_float<T>)
      return rsq::cuda::detail::reverse_api<>::cross_entropy(be, logits, ids, predictions, gradient);
    else
      return 0;
  }
};

}  // namespace rsq::backend
