// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Definitions of the CUDA element-wise operations (<rsq/backend/cuda/elementwise.hpp>).

#include <algorithm>

#include "rsq/backend/cuda/elementwise.hpp"
#include "rsq/backend/cuda/impl/common.cuh"

namespace rsq::cuda::kernels {

template <class S, class D>
__global__ void convert_kernel(S const* __restrict__ src, index_t s0, index_t s1, index_t rows, index_t cols,
                               D* __restrict__ dst, index_t d0, index_t d1) {
  RSQ_FOR_ROWS(r, rows) RSQ_FOR_COLS(c, cols) dst[r * d0 + c * d1] = D(src[r * s0 + c * s1]);
}

template <class T, class G>
__global__ void scale_columns_kernel(T* __restrict__ w, index_t s0, index_t s1, index_t rows, index_t cols,
                                     G const* __restrict__ g, index_t gs) {
  RSQ_FOR_ROWS(r, rows) RSQ_FOR_COLS(c, cols) w[r * s0 + c * s1] *= T(g[c * gs]);
}

template <class T>
__global__ void axpy_kernel(T alpha, T const* __restrict__ x, index_t xs0, index_t xs1, index_t rows, index_t cols,
                            T* __restrict__ y, index_t ys0, index_t ys1) {
  RSQ_FOR_ROWS(r, rows) RSQ_FOR_COLS(c, cols) y[r * ys0 + c * ys1] += alpha * x[r * xs0 + c * xs1];
}

template <class T>
__global__ void add_to_rows_kernel(T* __restrict__ y, index_t s0, index_t s1, index_t rows, index_t cols,
                                   T const* __restrict__ b, index_t bs) {
  RSQ_FOR_ROWS(r, rows) RSQ_FOR_COLS(c, cols) y[r * s0 + c * s1] += b[c * bs];
}

/// Σ_c a(r, c)·b(r, c) in double for row r = blockIdx.x (256 threads, a fixed reduction tree: the same result on every
/// run).
template <class T>
__global__ void row_dot_kernel(T const* __restrict__ a, index_t as0, index_t as1, T const* __restrict__ b,
                               index_t bs0, index_t bs1, index_t rows, index_t cols, double* __restrict__ out) {
  __shared__ double part[256 / 32];
  for (index_t r = blockIdx.x; r < rows; r += gridDim.x) {
    double s = 0;
    for (index_t c = threadIdx.x; c < cols; c += blockDim.x) s += double(a[r * as0 + c * as1]) * double(b[r * bs0 + c * bs1]);
    s = warp_sum(s);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
      double t = 0;
      for (int w = 0; w < 256 / 32; ++w) t += part[w];
      out[r] = t;
    }
    __syncthreads();
  }
}

}  // namespace rsq::cuda::kernels

namespace rsq::cuda::detail {

template <class S, class D>
void convert_impl(backend::cuda const& be, matrix_view<const S> src, matrix_view<D> dst) {
  auto& ctx = context_for(be.stream);
  kernels::convert_kernel<S, D><<<kernels::grid_2d(src.rows(), src.cols()), 256, 0, ctx.stream()>>>(
      src.data(), src.stride(0), src.stride(1), src.rows(), src.cols(), dst.data(), dst.stride(0), dst.stride(1));
  RSQ_CUDA_CHECK_LAUNCH("convert_kernel");
}

template <class T, class G>
void scale_columns_impl(backend::cuda const& be, matrix_view<T> w, vector_view<const G> g) {
  auto& ctx = context_for(be.stream);
  kernels::scale_columns_kernel<T, G><<<kernels::grid_2d(w.rows(), w.cols()), 256, 0, ctx.stream()>>>(
      w.data(), w.stride(0), w.stride(1), w.rows(), w.cols(), g.data(), g.stride(0));
  RSQ_CUDA_CHECK_LAUNCH("scale_columns_kernel");
}

template <class T>
void add_to_rows_impl(backend::cuda const& be, matrix_view<T> y, vector_view<const T> b) {
  auto& ctx = context_for(be.stream);
  kernels::add_to_rows_kernel<T><<<kernels::grid_2d(y.rows(), y.cols()), 256, 0, ctx.stream()>>>(
      y.data(), y.stride(0), y.stride(1), y.rows(), y.cols(), b.data(), b.stride(0));
  RSQ_CUDA_CHECK_LAUNCH("add_to_rows_kernel");
}

template <class T>
void axpy_impl(backend::cuda const& be, T alpha, matrix_view<const T> x, matrix_view<T> y) {
  auto& ctx = context_for(be.stream);
  kernels::axpy_kernel<T><<<kernels::grid_2d(x.rows(), x.cols()), 256, 0, ctx.stream()>>>(
      alpha, x.data(), x.stride(0), x.stride(1), x.rows(), x.cols(), y.data(), y.stride(0), y.stride(1));
  RSQ_CUDA_CHECK_LAUNCH("axpy_kernel");
}

template <class T>
double dot_impl(backend::cuda const& be, matrix_view<const T> a, matrix_view<const T> b) {
  auto& ctx = context_for(be.stream);
  device_array<double> rows(a.rows());
  kernels::row_dot_kernel<T><<<unsigned(std::min<index_t>(a.rows(), 65535)), 256, 0, ctx.stream()>>>(
      a.data(), a.stride(0), a.stride(1), b.data(), b.stride(0), b.stride(1), a.rows(), a.cols(), rows.data());
  RSQ_CUDA_CHECK_LAUNCH("row_dot_kernel");
  auto const host = rows.to_host(be);
  double total = 0;
  for (double s : host) total += s;  // rows in order, as the CPU sums them
  return total;
}

}  // namespace rsq::cuda::detail
