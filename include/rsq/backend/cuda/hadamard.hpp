// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CUDA backend of the Hadamard transform (algorithm::hadamard_transform, <rsq/rotation/hadamard.hpp>): each row x
/// becomes diag(post)·op(H)·diag(pre)·x with H = M_n/√n, M_n = hadK ⊗ H_{n/K} (hadK on the slow index, as the
/// reference's matmul_hadU), op(H) = H or Hᵀ; the constructions of plan_hadamard (2^m, the reference K table, Paley
/// orders, block-diagonal fallbacks block by block). One kernel reads and writes each row once: the row sits in
/// shared memory, the Sylvester stages run in registers, the K x K mix runs from shared memory; random signs are fused
/// into the load and the store. Rows in device memory with any strides (rows that are not contiguous are gathered
/// into a contiguous scratch and scattered back), or in host memory (copied over and back).
/// Declarations only; definitions in <rsq/backend/cuda/impl/hadamard_transform.cuh> and impl/hadamard.cuh.

#include <cstdint>
#include <span>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/core/view.hpp"
#include "rsq/rotation/hadamard_plan.hpp"

namespace rsq::cuda {

/// Longest row (or block of a block-diagonal plan) the GPU transform takes (the row lives in shared memory): 49152 in
/// float, 24576 in double.
template <class T>
inline constexpr index_t hadamard_max_length = index_t(196608 / sizeof(T));

namespace detail {

/// rows(a, b, :) ← diag(post)·op(H)·diag(pre)·rows(a, b, :) for the transform of @p plan with @p scaling (1/√n of every block, or the
/// reference's float32 scaling). Signs are host arrays of n values ±1 (empty: none).
template <class T>
void hadamard_transform_impl(backend::cuda const& be, rotation::hadamard_plan const& plan,
                             rotation::hadamard_scaling scaling, tensor_view<T, 3> rows, bool transpose,
                             std::span<std::int8_t const> pre, std::span<std::int8_t const> post);

extern template void hadamard_transform_impl<float>(backend::cuda const&, rotation::hadamard_plan const&,
                                                    rotation::hadamard_scaling,
                                                    tensor_view<float, 3>, bool, std::span<std::int8_t const>,
                                                    std::span<std::int8_t const>);
extern template void hadamard_transform_impl<double>(backend::cuda const&, rotation::hadamard_plan const&,
                                                    rotation::hadamard_scaling,
                                                     tensor_view<double, 3>, bool, std::span<std::int8_t const>,
                                                     std::span<std::int8_t const>);

}  // namespace detail
}  // namespace rsq::cuda

namespace rsq::backend {

template <>
struct implementation<algorithm::hadamard_transform, cuda> {
  static constexpr bool available = true;

  /// rows ← diag(post)·op(H)·diag(pre)·rows for the planned transform @p h (a rotation::hadamard).
  template <class H, class T>
  static void run(cuda const& be, H const& h, tensor_view<T, 3> rows, bool transpose,
                  std::span<std::int8_t const> pre, std::span<std::int8_t const> post) {
    rsq::cuda::detail::hadamard_transform_impl<T>(be, h.plan(), h.scaling(), rows, transpose, pre, post);
  }
};

}  // namespace rsq::backend
