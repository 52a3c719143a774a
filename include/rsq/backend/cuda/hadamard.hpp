// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The orthonormal Hadamard transform on the GPU (spec §3): each row x of a matrix becomes diag(post)·op(H)·diag(pre)·x
/// with H = M_n/√n, M_n = hadK ⊗ H_{n/K} (hadK on the slow index, as the reference's matmul_hadU), op(H) = H or Hᵀ.
/// The same constructions as rsq::rotation::hadamard (plan_hadamard: 2^m, the reference K table, Paley orders), the
/// same scaling options, random signs fused into the load and the store. One kernel, one read and one write of each
/// row: the row sits in shared memory, the Sylvester stages run three at a time in registers, the K x K mix runs in
/// registers from shared memory.
/// Declarations only; definitions in <rsq/backend/cuda/impl/hadamard.cuh>.

#include <cstdint>
#include <span>

#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/view.hpp"
#include "rsq/rotation/hadamard_plan.hpp"

namespace rsq::cuda {

/// Largest row length the GPU transform takes (the row lives in shared memory): 49152 in float, 24576 in double.
template <class T>
inline constexpr index_t hadamard_max_length = index_t(196608 / sizeof(T));

/// Transforms every row of @p rows (rows, n), in place: x ← diag(post)·op(H)·diag(pre)·x, op(H) = Hᵀ if
/// @p transpose. @p rows may be in device memory (rows contiguous: column stride 1) or host memory (copied over and
/// back). Signs are host arrays of n values ±1 (empty: none).
/// @throws rsq::invalid_argument for an n without a K·2^m construction (block-diagonal fallbacks run on the CPU), n
///         above hadamard_max_length<T>, a Paley factor above 256, a device view with column stride ≠ 1, or signs of
///         the wrong length or values
///
/// Example (a randomized Hadamard rotation of W's input side, W·Q with Q = D·Hᵀ, on W in device memory):
///   `rsq::cuda::hadamard_transform(rsq::backend::cuda{stream}, w_view, {}, rotation.signs());`
template <class T>
void hadamard_transform(backend::cuda const& be, matrix_view<T> rows, rotation::hadamard_options const& opt = {},
                        std::span<std::int8_t const> pre_signs = {}, std::span<std::int8_t const> post_signs = {},
                        bool transpose = false);

extern template void hadamard_transform<float>(backend::cuda const&, matrix_view<float>,
                                               rotation::hadamard_options const&, std::span<std::int8_t const>,
                                               std::span<std::int8_t const>, bool);
extern template void hadamard_transform<double>(backend::cuda const&, matrix_view<double>,
                                                rotation::hadamard_options const&, std::span<std::int8_t const>,
                                                std::span<std::int8_t const>, bool);

}  // namespace rsq::cuda
