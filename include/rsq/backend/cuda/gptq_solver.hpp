// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The GPTQ solver on the GPU (spec §6): the CUDA implementation of algorithm::gptq behind gptq::factor(),
/// gptq::solve() and gptq::solve_resident() (<rsq/gptq/solve.hpp>):
///   auto f = rsq::gptq::factor(rsq::backend::cuda{stream}, h, opt);                   // once per distinct H
///   auto r = rsq::gptq::solve(rsq::backend::cuda{stream}, w, f, grid, opt);           // host result
///   auto d = rsq::gptq::solve_resident(rsq::backend::cuda{stream}, w, f, grid, opt);  // result in device memory
/// H and W may be in host or device memory (device memory is checked on the device, with the host's messages).
/// Semantics are exactly the CPU backend's (<rsq/backend/cpu/gptq_solver.hpp>): per-row grids fitted on the original
/// W, dynamic groups refitted on the global W when their first column is reached, static groups fitted up front, the
/// escalation ladder and status of preprocess.hpp.
///
/// This header only declares: the definitions (cuSOLVER, cuBLAS and the kernels) are in
/// <rsq/backend/cuda/impl/gptq_solver.cuh>, compiled by nvcc in rsq_cuda.cu and instantiated for float and double.
/// It needs no CUDA header and no Eigen.

#include <cstdint>
#include <utility>
#include <vector>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/gptq/factorization.hpp"
#include "rsq/gptq/options.hpp"
#include "rsq/gptq/result.hpp"
#include "rsq/quant/grid.hpp"

namespace rsq::cuda {

/// Precision of the Cholesky factorization and triangular inverse for a float Hessian.
enum class factor_precision {
  fp64,   ///< convert H to double, factor and invert in double, round U to float (as fast as fp32 on an H100)
  input,  ///< factor in the precision of H (the CPU backend's choice)
};

/// How L̃⁻¹ is formed from the Cholesky factor L̃.
enum class triangular_inverse {
  recursive,  ///< 2x2 block recursion: L⁻¹₂₁ = −L⁻¹₂₂·L₂₁·L⁻¹₁₁ by two cuBLAS TRMMs per level, trtri below 512 (n³/3)
  trsm,       ///< cublas<t>trsm against the identity (n³ flops, but at near-GEMM speed)
  trtri,      ///< cusolverDnXtrtri (n³/3 flops)
};

/// Knobs of the CUDA backend for benchmarks and diagnostics (per thread; the defaults are what the library uses and
/// were measured best, docs/cuda.md).
struct solver_tuning {
  /// Columns whose lazy block updates are applied together: after each block of B columns only the rest of its span
  /// is updated (small GEMMs), and W right of the span gets one GEMM with k = span per span. Same arithmetic, fewer
  /// and larger GEMMs. A span ≤ B gives the reference's per-block updates; dynamic groups whose size does not divide
  /// the span use per-block updates (their refits must see every completed block).
  index_t lazy_span = 1024;
  /// Precision of the factorization of a float Hessian.
  factor_precision precision = factor_precision::fp64;
  /// How the factorization inverts the triangular factor.
  triangular_inverse inverse = triangular_inverse::recursive;
  /// Record the time of each phase in profile() (synchronizes the stream around every phase: slower).
  bool profile = false;
  /// Threads per CTA of the Hadamard kernel (256, 512 or 1024; 0 chooses by row length).
  int hadamard_threads = 0;
};

/// Accumulated phase times (ms) of the calls made while solver_tuning::profile was on.
struct solver_profile {
  double validate = 0, prepare = 0, fit = 0, column_kernel = 0, gemm_in_span = 0, gemm_lazy = 0, finalize = 0;
  double factor_build = 0, potrf = 0, inverse = 0, extract = 0;
};

/// The calling thread's tuning knobs.
[[nodiscard]] inline solver_tuning& tuning() noexcept {
  thread_local solver_tuning t;
  return t;
}
/// The calling thread's profile (reset it with `profile() = {}`).
[[nodiscard]] inline solver_profile& profile() noexcept {
  thread_local solver_profile p;
  return p;
}

}  // namespace rsq::cuda

namespace rsq::gptq {

/// CUDA factorization: factorization_info (host) plus U, the upper Cholesky factor of (P(H + damp·I)Pᵀ)⁻¹, in device
/// memory, column-major (cols, cols), solve order; on the device that was current when it was made.
template <class T>
class factorization<T, backend::cuda> : public factorization_info {
 public:
  cuda::device_array<T> u;  ///< (cols, cols) column-major: U(i, j) = u[i + j·cols], zero below the diagonal
  int device = 0;           ///< the device U lives on
};

}  // namespace rsq::gptq

namespace rsq::cuda::detail {

/// The definitions behind implementation<algorithm::gptq, cuda> (impl/gptq_solver.cuh).
template <class T>
[[nodiscard]] gptq::factorization<T, backend::cuda> factor_impl(backend::cuda const& be, matrix_view<const T> h,
                                                                gptq::options const& opt);
template <class T>
[[nodiscard]] gptq::result<T, backend::cuda> solve_impl(backend::cuda const& be, matrix_view<const T> w,
                                                        gptq::factorization<T, backend::cuda> const& f,
                                                        quant::grid_spec const& grid, gptq::options const& opt);
template <class T>
[[nodiscard]] gptq::result<T> to_host_impl(backend::cuda const& be, gptq::result<T, backend::cuda> const& r,
                                           gptq::result<T>&& recycled);

#define RSQ_CUDA_GPTQ_EXTERN(T)                                                                                     \
  extern template gptq::factorization<T, backend::cuda> factor_impl<T>(backend::cuda const&, matrix_view<const T>, \
                                                                       gptq::options const&);                      \
  extern template gptq::result<T, backend::cuda> solve_impl<T>(                                                    \
      backend::cuda const&, matrix_view<const T>, gptq::factorization<T, backend::cuda> const&,                    \
      quant::grid_spec const&, gptq::options const&);                                                              \
  extern template gptq::result<T> to_host_impl<T>(backend::cuda const&, gptq::result<T, backend::cuda> const&,     \
                                                  gptq::result<T>&&);
RSQ_CUDA_GPTQ_EXTERN(float)
RSQ_CUDA_GPTQ_EXTERN(double)
#undef RSQ_CUDA_GPTQ_EXTERN

}  // namespace rsq::cuda::detail

namespace rsq::backend {

/// The CUDA backend of gptq::factor(), gptq::solve() and gptq::solve_resident() (<rsq/gptq/solve.hpp>).
template <>
struct implementation<algorithm::gptq, cuda> {
  static constexpr bool available = true;

  template <class T>
  static gptq::factorization<T, cuda> factor(cuda const& be, matrix_view<const T> h, gptq::options const& opt) {
    return rsq::cuda::detail::factor_impl<T>(be, h, opt);
  }
  template <class T>
  static gptq::result<T, cuda> solve(cuda const& be, matrix_view<const T> w, gptq::factorization<T, cuda> const& f,
                                     quant::grid_spec const& grid, gptq::options const& opt,
                                     gptq::result<T, cuda>&& /*recycled: device results are not recycled*/) {
    return rsq::cuda::detail::solve_impl<T>(be, w, f, grid, opt);
  }
  template <class T>
  static gptq::result<T> to_host(cuda const& be, gptq::result<T, cuda> const& r, gptq::result<T>&& recycled) {
    return rsq::cuda::detail::to_host_impl<T>(be, r, std::move(recycled));
  }
};

}  // namespace rsq::backend
