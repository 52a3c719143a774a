// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Definitions of the CUDA GPTQ solver declared in <rsq/backend/cuda/gptq_solver.hpp> (spec §6, §10).
///
/// factor(): F = J·P(H + k·damp·I)Pᵀ·J (one kernel, from the original H for every attempt of the escalation ladder),
/// cuSOLVER potrf (lower), then trtri (or trsm against I) for L̃⁻¹, and U = J·L̃⁻¹·J: the upper Cholesky factor of
/// the damped inverse from one Cholesky and one triangular inverse, at half the flops of the reference's trio
/// (docs/performance.md). devInfo > 0 is not an error: it is the failing pivot fed to the escalation.
///
/// solve(): fits (per-row on the original W, static groups on W after the dead-column step, dynamic groups on the
/// global W at the start of the block that contains their first column, which is the state the reference refits
/// on), then per block of B columns: the column kernel on sub-blocks of ≤ SUB columns (in-block propagation between
/// sub-blocks by a GEMM on a copy W1 of the block), then the lazy update W[:, i2:] −= E·U[i1:i2, i2:] (cuBLAS).

#include <cstdint>
#include <numeric>
#include <optional>
#include <vector>

#include "rsq/backend/cuda/gptq_solver.hpp"
#include "rsq/backend/cuda/impl/common.cuh"
#include "rsq/backend/cuda/kernels/gptq.cuh"
#include "rsq/gptq/preprocess.hpp"

namespace rsq::cuda::detail {

/// Device validation of a contiguous (n, n) H: finite, symmetric within 1e-3·max|diag| (gptq::detail::validate_hessian).
template <class T>
void validate_hessian_device(context& ctx, T const* h, index_t n) {
  check_finite_device(ctx, matrix_view<const T>(h, n, n), "gptq::solve: Hessian");
  auto* rec = fresh_record(ctx);
  dim3 const grid(unsigned((n + 31) / 32), unsigned((n + 31) / 32)), block(32, 8);
  kernels::symmetry_kernel<<<grid, block, 0, ctx.stream()>>>(h, n, rec);
  RSQ_CUDA_CHECK_LAUNCH("symmetry_kernel");
  auto const r = read_back(rec, ctx.stream());
  double const max_diag = key_magnitude(r.max_diag), max_asym = key_magnitude(r.max_asym);
  if (!(max_asym <= 1e-3 * max_diag)) {
    index_t const where = index_t(r.max_asym & 0xffffffffull);
    index_t const ai = where / n, aj = where % n;
    T const a = read_back(h + ai * n + aj, ctx.stream()), b = read_back(h + aj * n + ai, ctx.stream());
    rsq::detail::throw_invalid_argument("gptq::solve: Hessian is not symmetric: H(", ai, ", ", aj, ") = ", a,
                                        " but H(", aj, ", ", ai, ") = ", b);
  }
}

/// In-place inverse of the lower triangular, column-major (n, n) block at @p a (leading dimension lda) by the 2 x 2
/// recursion L⁻¹ = [[L₁₁⁻¹, 0], [−L₂₂⁻¹·L₂₁·L₁₁⁻¹, L₂₂⁻¹]]: two TRMMs per level (n³/3 flops in all, at TRMM speed),
/// cusolverDnXtrtri below 512. @p work holds (n/2 + 256)·n/2 elements.
template <class F>
void invert_lower_recursive(context& ctx, F* a, index_t n, index_t lda, F* work, void* twork, std::size_t tbytes,
                            void* hwork, std::size_t hbytes, int* info) {
  if (n <= 512) {
    RSQ_CUSOLVER_CHECK(cusolverDnXtrtri(ctx.solver(), CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, n, data_type<F>, a,
                                        lda, twork, tbytes, hwork, hbytes, info));
    return;
  }
  index_t const n1 = std::min<index_t>(n - 1, (n / 2 + 255) / 256 * 256), n2 = n - n1;
  F* const a11 = a;
  F* const a21 = a + n1;
  F* const a22 = a + n1 + n1 * lda;
  invert_lower_recursive(ctx, a11, n1, lda, work, twork, tbytes, hwork, hbytes, info);
  invert_lower_recursive(ctx, a22, n2, lda, work, twork, tbytes, hwork, hbytes, info);
  F const one = F(1), minus = F(-1);
  // work (n2 x n1) = L₂₁·L₁₁⁻¹, then L₂₁ ← −L₂₂⁻¹·work (cuBLAS TRMM is out of place).
  if constexpr (std::is_same_v<F, float>) {
    RSQ_CUBLAS_CHECK(cublasStrmm(ctx.blas(), CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N,
                                 CUBLAS_DIAG_NON_UNIT, int(n2), int(n1), &one, a11, int(lda), a21, int(lda), work,
                                 int(n2)));
    RSQ_CUBLAS_CHECK(cublasStrmm(ctx.blas(), CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N,
                                 CUBLAS_DIAG_NON_UNIT, int(n2), int(n1), &minus, a22, int(lda), work, int(n2), a21,
                                 int(lda)));
  } else {
    RSQ_CUBLAS_CHECK(cublasDtrmm(ctx.blas(), CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N,
                                 CUBLAS_DIAG_NON_UNIT, int(n2), int(n1), &one, a11, int(lda), a21, int(lda), work,
                                 int(n2)));
    RSQ_CUBLAS_CHECK(cublasDtrmm(ctx.blas(), CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N,
                                 CUBLAS_DIAG_NON_UNIT, int(n2), int(n1), &minus, a22, int(lda), work, int(n2), a21,
                                 int(lda)));
  }
}

/// The factorization in precision F (float or double) of T's Hessian hd (device, contiguous).
template <class T, class F>
void factor_in(context& ctx, T const* hd, index_t n, gptq::detail::factor_plan<T>& plan, gptq::options const& opt,
               gptq::factorization<T, backend::cuda>& f) {
  solver_tuning const& fopt = tuning();
  cudaStream_t const s = ctx.stream();
  auto& prof = profile();
  std::vector<int> perm(plan.info.perm.begin(), plan.info.perm.end());
  auto const perm_d = to_device(perm, backend::cuda{s});
  auto const diag_d = to_device(plan.diag, backend::cuda{s});
  F* a = ctx.buffer<F>(scratch::factor, std::size_t(n * n));  // (n, n) column-major
  // Workspaces: potrf's, and trtri's (for the trtri inverse, or the recursion's base case), behind an info word.
  std::size_t dev_bytes = 0, host_bytes = 0, tdev = 0, thost = 0;
  RSQ_CUSOLVER_CHECK(cusolverDnXpotrf_bufferSize(ctx.solver(), ctx.params(), CUBLAS_FILL_MODE_LOWER, n,
                                                 data_type<F>, a, n, data_type<F>, &dev_bytes, &host_bytes));
  if (fopt.inverse != triangular_inverse::trsm)
    RSQ_CUSOLVER_CHECK(cusolverDnXtrtri_bufferSize(ctx.solver(), CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT,
                                                   fopt.inverse == triangular_inverse::trtri ? n : std::min<index_t>(n, 512),
                                                   data_type<F>, a, n, &tdev, &thost));
  auto* work = static_cast<unsigned char*>(ctx.buffer(scratch::solver_work, std::max(dev_bytes, tdev) + 256));
  int* info_d = reinterpret_cast<int*>(work);
  void* dwork = work + 256;
  void* hwork = ctx.host_buffer(std::max(host_bytes, thost));

  gptq::detail::escalate(plan, opt, [&](T damp) -> index_t {
    {
      phase_timer t(s, prof.factor_build);
      kernels::build_factor_input_kernel<T, F><<<kernels::grid_2d(n, n), 256, 0, s>>>(hd, n, n, perm_d.data(),
                                                                                     diag_d.data(), damp, a);
      RSQ_CUDA_CHECK_LAUNCH("build_factor_input_kernel");
    }
    phase_timer t(s, prof.potrf);
    RSQ_CUSOLVER_CHECK(cusolverDnXpotrf(ctx.solver(), ctx.params(), CUBLAS_FILL_MODE_LOWER, n, data_type<F>, a, n,
                                        data_type<F>, dwork, dev_bytes, hwork, host_bytes, info_d));
    int const info = read_back(info_d, s);
    if (info < 0)
      throw cuda_error(cuda_error::source::cusolver, info,
                       rsq::detail::concat("rsq: cusolverDnXpotrf rejected parameter ", -info));
    // devInfo = i > 0: the leading minor of order i of J·H·J is not positive definite, i.e. pivot i−1 in reversed
    // order, n − i in solve order (what the CPU's factor_invert reports).
    return info > 0 ? n - index_t(info) : index_t(-1);
  });
  if (!plan.info.ok()) return;

  F const* inv = a;
  {
    phase_timer t(s, prof.inverse);
    if (fopt.inverse == triangular_inverse::trsm) {
      F* x = ctx.buffer<F>(scratch::hessian_stage, std::size_t(n * n));
      kernels::identity_kernel<<<kernels::grid_2d(n, n), 256, 0, s>>>(x, n);
      RSQ_CUDA_CHECK_LAUNCH("identity_kernel");
      trsm<F>(ctx.blas(), CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT, n, n, F(1), a,
              n, x, n);
      inv = x;
    } else {
      if (fopt.inverse == triangular_inverse::trtri) {
        RSQ_CUSOLVER_CHECK(cusolverDnXtrtri(ctx.solver(), CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, n,
                                            data_type<F>, a, n, dwork, tdev, hwork, thost, info_d));
      } else {
        index_t const half = n / 2 + 256;
        F* x = ctx.buffer<F>(scratch::hessian_stage, std::size_t(half * half));
        invert_lower_recursive<F>(ctx, a, n, n, x, dwork, tdev, hwork, thost, info_d);
      }
      int const info = read_back(info_d, s);
      if (info != 0)  // impossible after a successful potrf (positive diagonal): report it as a library failure
        throw cuda_error(cuda_error::source::cusolver, info,
                         rsq::detail::concat("rsq: cusolverDnXtrtri reported info = ", info,
                                             " after a successful Cholesky factorization"));
    }
  }
  phase_timer t(s, prof.extract);
  f.u = device_array<T>(n * n);
  kernels::extract_u_kernel<<<kernels::grid_2d(n, n), 256, 0, s>>>(inv, n, f.u.data());
  RSQ_CUDA_CHECK_LAUNCH("extract_u_kernel");
}

template <class T>
gptq::factorization<T, backend::cuda> factor_impl(backend::cuda const& be, matrix_view<const T> h,
                                                  gptq::options const& opt) {
  auto& ctx = context_for(be.stream);
  bool const on_device = resident_here(h.data(), "gptq::factor: the Hessian");
  if (!on_device) gptq::detail::validate_hessian(h);
  index_t const n = h.rows();
  // A contiguous device copy unless H is one already (factor never writes to H).
  device_array<T> own;
  T const* hd = h.data();
  if (!(on_device && h.is_contiguous())) {
    own = to_device_matrix<T, T>(h, on_device, ctx.stream());
    hd = own.data();
  }
  if (on_device) {
    phase_timer t(ctx.stream(), profile().validate);
    validate_hessian_device(ctx, hd, n);
  }

  // plan_factorization reads only the diagonal: give it a view whose (i, i) is diag[i] (strides {1, 0}).
  std::vector<T> diag(static_cast<std::size_t>(n));
  RSQ_CUDA_CHECK(cudaMemcpy2DAsync(diag.data(), sizeof(T), hd, std::size_t(n + 1) * sizeof(T), sizeof(T),
                                   std::size_t(n), cudaMemcpyDeviceToHost, ctx.stream()));
  RSQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
  auto plan = gptq::detail::plan_factorization(matrix_view<const T>(diag.data(), {n, n}, {1, 0}), opt);

  gptq::factorization<T, backend::cuda> f;
  f.device = ctx.device();
  if (std::is_same_v<T, double> || tuning().precision == factor_precision::fp64)
    factor_in<T, double>(ctx, hd, n, plan, opt, f);
  else
    factor_in<T, float>(ctx, hd, n, plan, opt, f);
  static_cast<gptq::factorization_info&>(f) = std::move(plan.info);
  if (!f.ok()) f.u.reset();
  RSQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));  // the scratch buffers are free for the next call's use
  return f;
}

/// The column loop and lazy updates for one weight.
template <class T>
gptq::result<T, backend::cuda> solve_impl(backend::cuda const& be, matrix_view<const T> w,
                                          gptq::factorization<T, backend::cuda> const& f, quant::grid_spec const& grid,
                                          gptq::options const& opt) {
  auto& ctx = context_for(be.stream);
  cudaStream_t const s = ctx.stream();
  bool const on_device = resident_here(w.data(), "gptq::solve: the weight");
  if (on_device) {
    phase_timer t(s, profile().validate);
    check_finite_device(ctx, w, "gptq::solve: weight");
  } else {
    rsq::detail::check_finite(w, "gptq::solve: weight");
  }
  RSQ_EXPECTS(!f.ok() || f.device == ctx.device(), "gptq::solve: the factorization lives on device ", f.device,
              " but the current device is ", ctx.device());

  index_t const rows = w.rows(), cols = w.cols();
  index_t const G = opt.group_size > 0 ? opt.group_size : cols;
  index_t const groups = gptq::detail::group_count(cols, opt.group_size);
  bool const dynamic_groups = opt.group_size > 0 && !opt.static_groups;
  auto const dg = kernels::device_grid::from(grid);

  auto res = gptq::detail::start_result(f, gptq::result<T, backend::cuda>{});
  if (!f.ok()) return res;
  auto& qw = res.weight;
  qw.bits = grid.bits;
  qw.offset = grid.offset_form();

  bool const permuted = opt.act_order;
  std::vector<int> perm(f.perm.begin(), f.perm.end()), invperm(perm.size()), gcol(perm.size());
  for (std::size_t j = 0; j < perm.size(); ++j) invperm[std::size_t(perm[j])] = int(j);
  for (index_t j = 0; j < cols; ++j)
    gcol[std::size_t(j)] = opt.group_size <= 0 ? 0 : opt.static_groups ? int(perm[std::size_t(j)] / G) : int(j / G);
  auto const g_idx_host = gptq::detail::group_index(f.perm, opt);
  std::vector<std::int32_t> g_idx(g_idx_host.begin(), g_idx_host.end());
  backend::cuda const bs{s};
  auto const gcol_d = to_device(gcol, bs);
  qw.g_idx = to_device(g_idx, bs);
  device_array<int> perm_d, invperm_d;
  if (permuted) {
    perm_d = to_device(perm, bs);
    invperm_d = to_device(invperm, bs);
  }

  std::optional<phase_timer> prep;
  prep.emplace(s, profile().prepare);
  qw.scales = device_matrix<T>(rows, groups);
  qw.zeros = device_matrix<T>(rows, groups);
  T* const scales = qw.scales.data();
  T* const zeros = qw.zeros.data();
  int const fit_threads = 128, fit_warps = fit_threads / 32;
  auto fit = [&](T const* x, index_t seg_start, index_t seg_len, index_t seg_count, index_t g0) {
    index_t const tasks = rows * seg_count;
    kernels::fit_kernel<T><<<unsigned((tasks + fit_warps - 1) / fit_warps), fit_threads, 0, s>>>(
        x, cols, rows, cols, seg_start, seg_len, seg_count, g0, dg, scales, zeros, groups);
    RSQ_CUDA_CHECK_LAUNCH("fit_kernel");
  };

  // W in original order: per-row grids on it as given, then the dead-column step, then static groups (spec §6 1–3).
  device_array<T> w_orig = to_device_matrix<T, T>(w, on_device, s);  // (rows, cols)
  if (opt.group_size <= 0) fit(w_orig.data(), 0, cols, 1, 0);
  if (std::any_of(f.dead.begin(), f.dead.end(), [](char d) { return d != 0; })) {
    std::vector<std::uint8_t> dead(f.dead.begin(), f.dead.end());
    auto const dead_d = to_device(dead, bs);
    kernels::zero_dead_kernel<<<kernels::grid_2d(rows, cols), 256, 0, s>>>(
        w_orig.data(), rows, cols, dead_d.data());
    RSQ_CUDA_CHECK_LAUNCH("zero_dead_kernel");
    RSQ_CUDA_CHECK(cudaStreamSynchronize(s));  // dead_d is freed at the end of this scope
  }
  if (opt.static_groups) fit(w_orig.data(), 0, G, groups, 0);

  // W in solve order (the global W of the reference, updated by the lazy block updates).
  device_array<T> w_perm;
  T* wp = w_orig.data();
  if (permuted) {
    w_perm = device_array<T>(rows * cols);
    kernels::permute_columns_kernel<<<kernels::grid_2d(rows, cols), 256, 0, s>>>(
        w_orig.data(), rows, cols, perm_d.data(), w_perm.data());
    RSQ_CUDA_CHECK_LAUNCH("permute_columns_kernel");
    wp = w_perm.data();
  }

  using cfg = kernels::block_kernel_config<T>;
  constexpr int SUB = cfg::sub, TPR = cfg::tpr;
  // Many rows (gate/up): CTAs of 256 threads, twice the warps per SM at the same shared memory per CTA; fewer rows:
  // CTAs of 128, so that more SMs take part.
  bool const large = rows >= 12288;
  int const NT = large ? cfg::threads_large : cfg::threads;
  auto const launch_block = [&](auto... args) {
    auto go = [&]<int N>() {
      constexpr std::size_t smem = kernels::block_kernel_smem<T, SUB, TPR, N>();
      auto* const kernel = &kernels::gptq_block_kernel<T, SUB, TPR, N>;
      RSQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      kernel<<<unsigned((rows + N / TPR - 1) / (N / TPR)), N, smem, s>>>(args...);
    };
    if (large) go.template operator()<cfg::threads_large>();
    else go.template operator()<cfg::threads>();
    RSQ_CUDA_CHECK_LAUNCH("gptq_block_kernel");
  };
  index_t const ctas = (rows + NT / TPR - 1) / (NT / TPR);
  index_t const B = std::min(opt.block_size, cols);

  device_array<std::uint8_t> codes_perm;
  qw.codes = device_matrix<std::uint8_t>(rows, cols);
  std::uint8_t* codes_solve = qw.codes.data();
  if (permuted) {
    codes_perm = device_array<std::uint8_t>(rows * cols);
    codes_solve = codes_perm.data();
  }
  // Lazy updates over spans of whole blocks (solver_tuning::lazy_span): inside a span only the span's remaining
  // columns are updated after each block; the columns right of the span get one GEMM with k = span at its end. Every
  // column still has every completed block's update before a block or a group refit reads it (for dynamic groups only
  // when G divides the span, so that a group never reaches beyond the span it starts in).
  index_t span = std::max(B, tuning().lazy_span / B * B);
  if (dynamic_groups && span % G != 0) span = B;
  double* loss_partial = ctx.buffer<double>(scratch::reduce, std::size_t(ctas * cols));
  T* e = ctx.buffer<T>(scratch::gptq_e, std::size_t(rows * span));  // (rows, span): E of the span's blocks
  T* w1 = B > SUB ? ctx.buffer<T>(scratch::gptq_w1, std::size_t(rows * B)) : nullptr;
  T const* u = f.u.data();
  cublasHandle_t const blas = ctx.blas();
  auto& prof = profile();
  prep.reset();

  for (index_t i1 = 0; i1 < cols; i1 += B) {
    index_t const i2 = std::min(i1 + B, cols), nb = i2 - i1;
    index_t const p0 = i1 / span * span, p1 = std::min(p0 + span, cols);  // the span of this block
    T* const eb = e + (i1 - p0);                                          // this block's E, leading dimension span
    if (dynamic_groups) {
      // Every group whose first column lies in [i1, i2) is refitted on the global W as it is now: the reference
      // refits when it reaches that column, and the global W does not change inside a block.
      index_t const gs = (i1 + G - 1) / G * G;
      if (gs < i2) {
        phase_timer t(s, prof.fit);
        fit(wp, gs, G, (i2 - 1 - gs) / G + 1, gs / G);
      }
    }
    T* src = wp + i1;
    index_t ld_src = cols;
    if (nb > SUB) {
      RSQ_CUDA_CHECK(cudaMemcpy2DAsync(w1, std::size_t(nb) * sizeof(T), wp + i1, std::size_t(cols) * sizeof(T),
                                       std::size_t(nb) * sizeof(T), std::size_t(rows), cudaMemcpyDeviceToDevice, s));
      src = w1;
      ld_src = nb;
    }
    for (index_t s0 = 0; s0 < nb; s0 += SUB) {
      index_t const s1 = std::min(s0 + SUB, nb);
      index_t const c0 = i1 + s0;
      {
        phase_timer t(s, prof.column_kernel);
        launch_block(static_cast<T const*>(src + s0), ld_src, static_cast<T const*>(u + c0 + c0 * cols), cols,
                     int(s1 - s0), rows, static_cast<T const*>(scales), static_cast<T const*>(zeros), groups,
                     static_cast<int const*>(gcol_d.data() + c0), dg.max_code, dg.offset, codes_solve + c0, cols, eb + s0, span,
                     loss_partial + c0, cols);
      }
      if (s1 < nb) {  // W1[:, s1:nb] −= E[:, s0:s1]·U[c0:i1+s1, i1+s1:i2]
        phase_timer t(s, prof.gemm_in_span);
        gemm<T>(blas, CUBLAS_OP_T, CUBLAS_OP_N, nb - s1, rows, s1 - s0, T(-1), u + c0 + (i1 + s1) * cols, cols,
                eb + s0, span, T(1), w1 + s1, nb);
      }
    }
    // Lazy batch update W[:, i2:] −= E·U[i1:i2, i2:] (as Wᵀ[i2:, :] −= U[i1:i2, i2:]ᵀ·Eᵀ), split at the span's end.
    if (i2 < p1) {
      phase_timer t(s, prof.gemm_in_span);
      gemm<T>(blas, CUBLAS_OP_T, CUBLAS_OP_N, p1 - i2, rows, nb, T(-1), u + i1 + i2 * cols, cols, eb, span, T(1),
              wp + i2, cols);
    }
    if (i2 == p1 && p1 < cols) {
      phase_timer t(s, prof.gemm_lazy);
      gemm<T>(blas, CUBLAS_OP_T, CUBLAS_OP_N, cols - p1, rows, p1 - p0, T(-1), u + p0 + p1 * cols, cols, e, span,
              T(1), wp + p1, cols);
    }
  }

  phase_timer fin(s, prof.finalize);
  res.dequantized = device_matrix<T>(rows, cols);
  kernels::finalize_kernel<<<kernels::grid_2d(rows, cols), 256, 0, s>>>(
      codes_solve, permuted ? invperm_d.data() : nullptr, qw.g_idx.data(), scales, zeros, groups, dg.offset, rows, cols,
      qw.codes.data(), res.dequantized.data());
  RSQ_CUDA_CHECK_LAUNCH("finalize_kernel");
  res.column_loss = device_array<T>(cols);
  kernels::loss_reduce_kernel<<<kernels::blocks_for(cols, threads_1d), threads_1d, 0, s>>>(
      loss_partial, ctas, cols, permuted ? perm_d.data() : nullptr, res.column_loss.data());
  RSQ_CUDA_CHECK_LAUNCH("loss_reduce_kernel");
  // The temporaries (w_orig, w_perm, codes_perm, index arrays) are freed on return; cudaFree waits for the device.
  return res;
}

template <class T>
gptq::result<T> to_host_impl(backend::cuda const& be, gptq::result<T, backend::cuda> const& d,
                             gptq::result<T>&& recycled) {
  // A failed solve has no arrays (as on the CPU); a successful one reuses recycled's.
  gptq::result<T> r = d.ok() ? std::move(recycled) : gptq::result<T>{};
  r.info = d.info;
  r.damp_used = d.damp_used;
  r.damp_percent_used = d.damp_percent_used;
  r.damp_attempts = d.damp_attempts;
  r.failed_column = d.failed_column;
  r.perm = d.perm;
  if (!d.ok()) return r;
  index_t const rows = d.weight.rows(), cols = d.weight.cols(), groups = d.weight.groups();
  auto& w = r.weight;
  w.bits = d.weight.bits;
  w.offset = d.weight.offset;
  // Every element is copied below.
  rsq::reshape_for_overwrite(w.codes, rows, cols);
  rsq::reshape_for_overwrite(w.scales, rows, groups);
  rsq::reshape_for_overwrite(w.zeros, rows, groups);
  rsq::reshape_for_overwrite(w.g_idx, cols);
  rsq::reshape_for_overwrite(r.dequantized, rows, cols);
  rsq::reshape_for_overwrite(r.column_loss, cols);
  auto const copy = [&](auto* dst, auto const* src, index_t n) {
    runtime_api<>::copy(dst, src, std::size_t(n) * sizeof(*src), be.stream);
  };
  copy(w.codes.data(), d.weight.codes.data(), rows * cols);
  copy(w.scales.data(), d.weight.scales.data(), rows * groups);
  copy(w.zeros.data(), d.weight.zeros.data(), rows * groups);
  copy(w.g_idx.data(), d.weight.g_idx.data(), cols);
  copy(r.dequantized.data(), d.dequantized.data(), rows * cols);
  copy(r.column_loss.data(), d.column_loss.data(), cols);
  return r;
}

}  // namespace rsq::cuda::detail
