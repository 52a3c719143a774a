// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Definition of rsq::cuda::detail::hadamard_transform_impl (<rsq/backend/cuda/hadamard.hpp>): argument checks that
/// need the plan, staging of host or strided rows, block-diagonal plans block by block, and the kernel launch
/// (impl/hadamard.cuh).

#include <cmath>
#include <cstdint>
#include <vector>

#include "rsq/backend/cuda/hadamard.hpp"
#include "rsq/backend/cuda/impl/common.cuh"
#include "rsq/backend/cuda/impl/hadamard.cuh"

namespace rsq::cuda::detail {

/// One transform of a (non block-diagonal) plan on contiguous device rows with leading dimension @p ld.
template <class T>
void hadamard_rows(context& ctx, rotation::hadamard_plan const& plan, double scale, T* x, index_t ld, index_t rows,
                   bool transpose, std::int8_t const* pre, std::int8_t const* post) {
  RSQ_EXPECTS(plan.n <= hadamard_max_length<T>, "hadamard_transform: rows of length ", plan.n,
              " do not fit in shared memory on the GPU (at most ", hadamard_max_length<T>, " for this type)");
  RSQ_EXPECTS(plan.k <= 256, "hadamard_transform: the construction ", plan.to_string(), " has a factor of order ",
              plan.k, " > 256, which the GPU mix does not take");
  hadamard_mix const* mix = plan.k > 1 ? &hadamard_mix_tables(plan, transpose) : nullptr;
  dispatch_hadamard<T>(x, ld, rows, plan, mix, pre, post, T(scale), ctx.stream());
}

/// The factor after M_n, as rotation::hadamard::scale() computes it.
inline double scale_of(index_t n, rotation::hadamard_scaling scaling) {
  return scaling == rotation::hadamard_scaling::orthonormal ? 1.0 / std::sqrt(double(n))
                                                              : 1.0 / double(std::sqrt(float(n)));
}

template <class T>
void hadamard_transform_impl(backend::cuda const& be, rotation::hadamard_plan const& plan,
                             rotation::hadamard_scaling scaling, tensor_view<T, 3> rows, bool transpose,
                             std::span<std::int8_t const> pre_signs, std::span<std::int8_t const> post_signs) {
  index_t const n = rows.extent(2), count = rows.extent(0) * rows.extent(1);
  for (auto const* sg : {&pre_signs, &post_signs})
    for (std::size_t i = 0; i < sg->size(); ++i)
      RSQ_EXPECTS((*sg)[i] == 1 || (*sg)[i] == -1, "hadamard_transform: sign ", i, " is ", int((*sg)[i]),
                  ", expected +1 or -1");
  bool const on_device = resident_here(rows.data(), "hadamard_transform: the rows");
  auto& ctx = context_for(be.stream);
  cudaStream_t const s = ctx.stream();
  backend::cuda const bs{s};
  device_array<std::int8_t> pre, post;
  if (!pre_signs.empty()) pre = to_device(std::vector<std::int8_t>(pre_signs.begin(), pre_signs.end()), bs);
  if (!post_signs.empty()) post = to_device(std::vector<std::int8_t>(post_signs.begin(), post_signs.end()), bs);

  // Rows that form one matrix of contiguous rows in device memory: in place; anything else through a contiguous
  // device copy (count, n).
  bool const one_matrix = rows.extent(0) == 1 || rows.stride(0) == rows.extent(1) * rows.stride(1);
  bool const in_place = on_device && one_matrix && rows.stride(2) == 1 && rows.stride(1) >= n;
  device_array<T> staged;
  T* x = rows.data();
  index_t ld = rows.stride(1);
  if (!in_place) {
    staged = device_array<T>(count * n);
    x = staged.data();
    ld = n;
    if (on_device) {
      kernels::gather3_kernel<<<kernels::grid_2d(count, n), 256, 0, s>>>(
          rows.data(), rows.stride(0), rows.stride(1), rows.stride(2), rows.extent(0), rows.extent(1), n, x);
      RSQ_CUDA_CHECK_LAUNCH("gather3_kernel");
    } else {
      std::vector<T> packed(static_cast<std::size_t>(count * n));
      for (index_t a = 0; a < rows.extent(0); ++a)
        for (index_t b = 0; b < rows.extent(1); ++b)
          for (index_t c = 0; c < n; ++c) packed[std::size_t((a * rows.extent(1) + b) * n + c)] = rows(a, b, c);
      runtime_api<>::copy(x, packed.data(), packed.size() * sizeof(T), s);
    }
  }
  if (plan.kind == rotation::hadamard_kind::block_diagonal) {
    // Each block on its columns of the rows (a strided sub-matrix: through a contiguous copy of the block).
    index_t offset = 0;
    for (auto const& b : plan.blocks) {
      RSQ_EXPECTS(b.kind != rotation::hadamard_kind::block_diagonal, "hadamard_transform: nested block plans");
      device_array<T> block(count * b.n);
      kernels::gather_kernel<<<kernels::grid_2d(count, b.n), 256, 0, s>>>(x + offset, ld, index_t(1), count, b.n,
                                                                          block.data());
      RSQ_CUDA_CHECK_LAUNCH("gather_kernel");
      hadamard_rows<T>(ctx, b, scale_of(b.n, scaling), block.data(), b.n, count, transpose,
                       pre.empty() ? nullptr : pre.data() + offset, post.empty() ? nullptr : post.data() + offset);
      kernels::scatter_kernel<<<kernels::grid_2d(count, b.n), 256, 0, s>>>(block.data(), count, b.n, x + offset, ld,
                                                                           index_t(1));
      RSQ_CUDA_CHECK_LAUNCH("scatter_kernel");
      RSQ_CUDA_CHECK(cudaStreamSynchronize(s));  // `block` is freed at the end of the iteration
      offset += b.n;
    }
  } else {
    hadamard_rows<T>(ctx, plan, scale_of(n, scaling), x, ld, count, transpose, pre.data(), post.data());
  }
  if (!in_place) {
    if (on_device) {
      kernels::scatter3_kernel<<<kernels::grid_2d(count, n), 256, 0, s>>>(
          x, rows.extent(0), rows.extent(1), n, rows.data(), rows.stride(0), rows.stride(1), rows.stride(2));
      RSQ_CUDA_CHECK_LAUNCH("scatter3_kernel");
    } else {
      std::vector<T> back(static_cast<std::size_t>(count * n));
      runtime_api<>::copy(back.data(), x, back.size() * sizeof(T), s);
      for (index_t a = 0; a < rows.extent(0); ++a)
        for (index_t b = 0; b < rows.extent(1); ++b)
          for (index_t c = 0; c < n; ++c) rows(a, b, c) = back[std::size_t((a * rows.extent(1) + b) * n + c)];
    }
  }
  RSQ_CUDA_CHECK(cudaStreamSynchronize(s));  // the sign arrays and the staging copy are freed on return
}

}  // namespace rsq::cuda::detail
