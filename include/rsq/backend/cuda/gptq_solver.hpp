// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The GPTQ solver on the GPU (spec §6), behind the same front end as the CPU solver (<rsq/gptq/solve_api.hpp>):
///   auto f = rsq::gptq::factor(rsq::backend::cuda{stream}, H, opt);          // once per distinct H
///   auto r = rsq::gptq::solve(rsq::backend::cuda{stream}, W, f, grid, opt);  // host result, like the CPU's
/// plus entry points that also take device-resident inputs and keep results on the device (rsq::cuda::factor,
/// rsq::cuda::solve_device). Semantics are exactly the CPU backend's (<rsq/backend/cpu/gptq_solver.hpp>): per-row
/// grids fitted on the original W, dynamic groups refitted on the global W when their first column is reached,
/// static groups fitted up front, the escalation ladder and status of preprocess.hpp.
///
/// This header only declares: the definitions (cuSOLVER, cuBLAS and the kernels) are in
/// <rsq/backend/cuda/impl/gptq_solver.cuh>, compiled by nvcc in rsq_cuda.cu and instantiated for float and double.
/// It needs no CUDA header and no Eigen.

#include <cstdint>
#include <utility>
#include <vector>

#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/gptq/factorization.hpp"
#include "rsq/gptq/options.hpp"
#include "rsq/gptq/result.hpp"
#include "rsq/gptq/solve_api.hpp"
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

/// Options of the CUDA factorization (aggregate with defaults; see docs/cuda.md for the measurements behind them).
struct factor_options {
  factor_precision precision = factor_precision::fp64;
  triangular_inverse inverse = triangular_inverse::recursive;
};

/// Knobs of the CUDA solver for benchmarks and diagnostics (per thread; defaults are what the library uses).
struct solver_tuning {
  /// Columns whose lazy block updates are applied together: after each block of B columns only the rest of its span
  /// is updated (small GEMMs), and W right of the span gets one GEMM with k = span per span. Same arithmetic, fewer
  /// and larger GEMMs. A span ≤ B gives the reference's per-block updates; dynamic groups whose size does not divide
  /// the span use per-block updates (their refits must see every completed block).
  index_t lazy_span = 1024;
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

namespace rsq::cuda {

/// A GPTQ result kept in device memory (for engines that go on with it on the GPU, e.g. packing, and to time the
/// copy back separately). All matrices are row-major, original column order.
template <class T>
struct device_result {
  gptq::factorization_info info;  ///< status, perm, damping, as the factorization gave them
  int bits = 0;
  index_t rows = 0, cols = 0, groups = 0;
  device_matrix<std::uint8_t> codes;  ///< (rows, cols)
  device_matrix<T> dequantized;       ///< (rows, cols): scales(r, g)·(codes(r, c) − zeros(r, g)), g = g_idx(c)
  device_matrix<T> scales;            ///< (rows, groups)
  device_matrix<T> zeros;             ///< (rows, groups)
  device_array<std::int32_t> g_idx;   ///< (cols)
  device_array<T> column_loss;        ///< (cols)

  [[nodiscard]] bool ok() const noexcept { return info.ok(); }
  /// The result in host memory, the same types as the CPU backend's (waits for the stream); the arrays of
  /// @p recycled, a host result the caller no longer needs, are reused where their sizes match.
  [[nodiscard]] gptq::result<T> to_host(backend::cuda const& be = {}, gptq::result<T>&& recycled = {}) const;
};

namespace detail {
/// The implementations; @p validate = false when the host front end (gptq::factor / gptq::solve) already checked the
/// arguments.
template <class T>
[[nodiscard]] gptq::factorization<T, backend::cuda> factor_impl(backend::cuda const& be, matrix_view<const T> h,
                                                                gptq::options const& opt, factor_options const& fopt,
                                                                bool validate);
template <class T>
[[nodiscard]] device_result<T> solve_device_impl(backend::cuda const& be, matrix_view<const T> w,
                                                 gptq::factorization<T, backend::cuda> const& f,
                                                 quant::grid_spec const& grid, gptq::options const& opt,
                                                 bool validate);

extern template gptq::factorization<float, backend::cuda> factor_impl<float>(backend::cuda const&,
                                                                             matrix_view<const float>,
                                                                             gptq::options const&,
                                                                             factor_options const&, bool);
extern template gptq::factorization<double, backend::cuda> factor_impl<double>(backend::cuda const&,
                                                                               matrix_view<const double>,
                                                                               gptq::options const&,
                                                                               factor_options const&, bool);
extern template device_result<float> solve_device_impl<float>(backend::cuda const&, matrix_view<const float>,
                                                              gptq::factorization<float, backend::cuda> const&,
                                                              quant::grid_spec const&, gptq::options const&, bool);
extern template device_result<double> solve_device_impl<double>(backend::cuda const&, matrix_view<const double>,
                                                                gptq::factorization<double, backend::cuda> const&,
                                                                quant::grid_spec const&, gptq::options const&, bool);
}  // namespace detail

extern template struct device_result<float>;
extern template struct device_result<double>;

/// gptq::factor() on the GPU, for a Hessian @p h (cols, cols) in host or device memory (device memory is validated
/// on the device: finite, symmetric to 1e-3·max|diag H|, as on the host). Factor once per distinct H (q/k/v share
/// one, gate/up share one) and pass the result to solve()/solve_device() for every weight that shares it.
/// @throws rsq::invalid_argument for a bad H or options, rsq::cuda_error for a CUDA failure
///
/// Example: `auto f = rsq::cuda::factor(rsq::backend::cuda{stream}, h_view, {.act_order = true});`
template <class T>
[[nodiscard]] gptq::factorization<T, backend::cuda> factor(backend::cuda const& be, matrix_view<const T> h,
                                                           gptq::options const& opt = {},
                                                           factor_options const& fopt = {}) {
  return detail::factor_impl<T>(be, h, opt, fopt, true);
}

/// gptq::solve() on the GPU with the result left in device memory. @p w (rows, cols) may be in host or device
/// memory, any strides (device memory is checked for NaN/Inf on the device).
/// @throws rsq::invalid_argument as gptq::solve(), rsq::cuda_error for a CUDA failure
///
/// Example: `auto r = rsq::cuda::solve_device(be, w_view, f, {.bits = 4}, {.group_size = 128}); auto h = r.to_host(be);`
template <class T>
[[nodiscard]] device_result<T> solve_device(backend::cuda const& be, matrix_view<const T> w,
                                            gptq::factorization<T, backend::cuda> const& f,
                                            quant::grid_spec const& grid, gptq::options const& opt = {}) {
  return detail::solve_device_impl<T>(be, w, f, grid, opt, true);
}

/// solve_device() followed by device_result::to_host(): what gptq::solve(backend::cuda, ...) returns.
template <class T>
[[nodiscard]] gptq::result<T> solve(backend::cuda const& be, matrix_view<const T> w,
                                    gptq::factorization<T, backend::cuda> const& f, quant::grid_spec const& grid,
                                    gptq::options const& opt = {}) {
  return solve_device<T>(be, w, f, grid, opt).to_host(be);
}

/// factor() for any viewable H (Eigen, xtensor, views of host or device memory, writable or not).
template <viewable<2> HA>
[[nodiscard]] auto factor(backend::cuda const& be, HA const& h, gptq::options const& opt = {},
                          factor_options const& fopt = {}) {
  auto const hv = make_const_view<2>(h);
  using T = typename decltype(hv)::value_type;
  return factor<T>(be, hv, opt, fopt);
}

/// solve_device() for any viewable W.
template <viewable<2> WA, class T>
[[nodiscard]] device_result<T> solve_device(backend::cuda const& be, WA const& w,
                                            gptq::factorization<T, backend::cuda> const& f,
                                            quant::grid_spec const& grid, gptq::options const& opt = {}) {
  return solve_device<T>(be, matrix_view<const T>(make_const_view<2>(w)), f, grid, opt);
}

/// solve() for any viewable W.
template <viewable<2> WA, class T>
[[nodiscard]] gptq::result<T> solve(backend::cuda const& be, WA const& w, gptq::factorization<T, backend::cuda> const& f,
                                    quant::grid_spec const& grid, gptq::options const& opt = {}) {
  return solve<T>(be, matrix_view<const T>(make_const_view<2>(w)), f, grid, opt);
}

}  // namespace rsq::cuda

namespace rsq::gptq::detail {

/// The CUDA backend of gptq::factor() and gptq::solve() (arguments arrive validated on the host).
template <>
struct solver<backend::cuda> {
  template <class T>
  static factorization<T, backend::cuda> factor(backend::cuda const& be, matrix_view<const T> h,
                                                options const& opt) {
    return cuda::detail::factor_impl<T>(be, h, opt, {}, false);
  }
  template <class T>
  static result<T> solve(backend::cuda const& be, matrix_view<const T> w, factorization<T, backend::cuda> const& f,
                         quant::grid_spec const& grid, options const& opt, result<T>&& recycled) {
    return cuda::detail::solve_device_impl<T>(be, w, f, grid, opt, false).to_host(be, std::move(recycled));
  }
};

}  // namespace rsq::gptq::detail
