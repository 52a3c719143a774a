// SPDX-License-Identifier: MIT
// The CUDA GPTQ benchmark (issue 5): Llama-3-8B layer shapes, 4-bit, block 128, per row and group 128 with act-order,
// a whole decoder layer with shared Hessians factored once (H given), and a decoder layer with its Hessians built
// from N calibration tokens in strict fp32, TF32 and bf16-input precision; seconds per phase (Hessian, factorization,
// solve, packing, copy back), the library ceilings measured in the same run (device copy, cuBLAS GEMM and SYRK,
// cuSOLVER potrf/trtri, fp32 and fp64), and the GPTQ loss of every fast path against the fp32 path.
//
// usage: bench_gptq_cuda [--tokens N] [--reps R] [--quick] [--out results.md]
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <rsq/gptq/solve.hpp>
#include <rsq/hessian/accumulator.hpp>
#include <rsq/pack/gptq_format.hpp>

#include "../support/report.hpp"
#include "bench_common.cuh"

namespace {

using bench::median_ms;
using rsq::index_t;

struct args {
  index_t tokens = 262144;
  int reps = 3;
  bool quick = false;
  std::string out;
};

using rsq_bench::emit;

cublasHandle_t blas() {
  static cublasHandle_t h = [] {
    cublasHandle_t x;
    RSQ_CUBLAS_CHECK(cublasCreate(&x));
    return x;
  }();
  return h;
}
cusolverDnHandle_t solver() {
  static cusolverDnHandle_t h = [] {
    cusolverDnHandle_t x;
    RSQ_CUSOLVER_CHECK(cusolverDnCreate(&x));
    return x;
  }();
  return h;
}

// ------------------------------------------------------------------------------------------------------------------
bench::ceilings measure_ceilings(args const& a) {
  bench::ceilings c;
  {
    std::size_t const bytes = std::size_t(1) << 30;
    rsq::cuda::device_array<char> x{index_t(bytes)}, y{index_t(bytes)};
    RSQ_CUDA_CHECK(cudaMemset(x.data(), 1, bytes));
    double const ms = median_ms(a.reps * 3, [&] {
      RSQ_CUDA_CHECK(cudaMemcpyAsync(y.data(), x.data(), bytes, cudaMemcpyDeviceToDevice));
    });
    c.copy_gbs = 2.0 * double(bytes) / (ms * 1e-3) / 1e9;
  }
  float const one = 1, zero = 0;
  {
    int const n = a.quick ? 4096 : 8192;
    rsq::cuda::device_array<float> x(index_t(n) * n), y(index_t(n) * n), z(index_t(n) * n);
    bench::fill_normal(x.data(), std::size_t(n) * n, 0, 1);
    bench::fill_normal(y.data(), std::size_t(n) * n, 0, 2);
    RSQ_CUBLAS_CHECK(cublasSetMathMode(blas(), CUBLAS_DEFAULT_MATH));
    double const ms = median_ms(a.reps, [&] {
      RSQ_CUBLAS_CHECK(cublasSgemm(blas(), CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, x.data(), n, y.data(), n, &zero,
                                   z.data(), n));
    });
    c.sgemm_tflops = 2.0 * double(n) * n * n / (ms * 1e-3) / 1e12;
    // The lazy-update shape: Wᵀ[i2:, :] (14336 x 4096) −= U[i1:i2, i2:]ᵀ (14336 x 128) · Eᵀ (128 x 4096).
    int const m = 14336, rows = 4096, k = 128;
    float const minus = -1;
    double const ms2 = median_ms(a.reps * 3, [&] {
      RSQ_CUBLAS_CHECK(cublasSgemm(blas(), CUBLAS_OP_T, CUBLAS_OP_N, m, rows, k, &minus, x.data(), k, y.data(), k,
                                   &one, z.data(), m));
    });
    c.sgemm_k128_tflops = 2.0 * double(m) * rows * k / (ms2 * 1e-3) / 1e12;
  }
  {
    int const d = 4096, N = 32768;
    rsq::cuda::device_array<float> x(index_t(d) * N), h(index_t(d) * d);
    rsq::cuda::device_array<__nv_bfloat16> xb(index_t(d) * N);
    bench::fill_normal(x.data(), std::size_t(d) * N, 0, 3);
    bench::fill_normal(xb.data(), std::size_t(d) * N, 0, 4);
    double const flops = 2.0 * double(N) * d * d;
    double ms = median_ms(a.reps, [&] {
      RSQ_CUBLAS_CHECK(cublasGemmEx(blas(), CUBLAS_OP_T, CUBLAS_OP_N, d, d, N, &one, x.data(), CUDA_R_32F, N, x.data(),
                                    CUDA_R_32F, N, &one, h.data(), CUDA_R_32F, d, CUBLAS_COMPUTE_32F_FAST_TF32,
                                    CUBLAS_GEMM_DEFAULT));
    });
    c.tf32_xtx_tflops = flops / (ms * 1e-3) / 1e12;
    ms = median_ms(a.reps, [&] {
      RSQ_CUBLAS_CHECK(cublasGemmEx(blas(), CUBLAS_OP_T, CUBLAS_OP_N, d, d, N, &one, xb.data(), CUDA_R_16BF, N,
                                    xb.data(), CUDA_R_16BF, N, &one, h.data(), CUDA_R_32F, d, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
    });
    c.bf16_xtx_tflops = flops / (ms * 1e-3) / 1e12;
    ms = median_ms(a.reps, [&] {
      RSQ_CUBLAS_CHECK(cublasSsyrk(blas(), CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, d, N, &one, x.data(), d, &one,
                                   h.data(), d));
    });
    c.ssyrk_tflops = flops / 2 / (ms * 1e-3) / 1e12;
  }
  // cuSOLVER potrf / trtri and cuBLAS trsm (L⁻¹ against I), fp32 and fp64, on SPD matrices.
  int const sizes[2] = {4096, 14336};
  for (int si = 0; si < (a.quick ? 1 : 2); ++si) {
    int const n = sizes[si];
    rsq::cuda::device_array<double> spd(index_t(n) * n), work(index_t(n) * n), ident(index_t(n) * n);
    rsq::cuda::device_array<float> spdf(index_t(n) * n), workf(index_t(n) * n), identf(index_t(n) * n);
    {  // SPD: G Gᵀ/n + I
      rsq::cuda::device_array<double> g(index_t(n) * n);
      bench::fill_normal(g.data(), std::size_t(n) * n, 0, 5);
      double const s = 1.0 / n, o1 = 1;
      RSQ_CUBLAS_CHECK(cublasDsyrk(blas(), CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, n, n, &s, g.data(), n, &o1 /*beta*/,
                                   spd.data(), n));
    }
    std::vector<double> diag_fix(1);
    cusolverDnParams_t params;
    RSQ_CUSOLVER_CHECK(cusolverDnCreateParams(&params));
    rsq::cuda::device_array<int> info(1);
    for (int prec = 0; prec < 2; ++prec) {
      cudaDataType_t const dt = prec == 0 ? CUDA_R_32F : CUDA_R_64F;
      void* A = prec == 0 ? static_cast<void*>(workf.data()) : static_cast<void*>(work.data());
      std::size_t dev = 0, host = 0, tdev = 0, thost = 0;
      RSQ_CUSOLVER_CHECK(cusolverDnXpotrf_bufferSize(solver(), params, CUBLAS_FILL_MODE_LOWER, n, dt, A, n, dt, &dev, &host));
      RSQ_CUSOLVER_CHECK(cusolverDnXtrtri_bufferSize(solver(), CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, n, dt, A, n,
                                                     &tdev, &thost));
      rsq::cuda::device_array<char> dw{index_t(std::max(dev, tdev) + 16)};
      std::vector<char> hw(std::max(host, thost) + 16);
      // fp32 matrix from the fp64 SPD one (lower triangle read only).
      if (prec == 0) {
        std::vector<double> h(std::size_t(n) * n);
        RSQ_CUDA_CHECK(cudaMemcpy(h.data(), spd.data(), h.size() * sizeof(double), cudaMemcpyDeviceToHost));
        std::vector<float> hf(h.begin(), h.end());
        for (int i = 0; i < n; ++i) hf[std::size_t(i) * n + i] += 1.0f;
        RSQ_CUDA_CHECK(cudaMemcpy(spdf.data(), hf.data(), hf.size() * sizeof(float), cudaMemcpyHostToDevice));
      } else {
        std::vector<double> h(std::size_t(n) * n);
        RSQ_CUDA_CHECK(cudaMemcpy(h.data(), spd.data(), h.size() * sizeof(double), cudaMemcpyDeviceToHost));
        for (int i = 0; i < n; ++i) h[std::size_t(i) * n + i] += 1.0;
        RSQ_CUDA_CHECK(cudaMemcpy(spd.data(), h.data(), h.size() * sizeof(double), cudaMemcpyHostToDevice));
      }
      auto restore = [&] {
        if (prec == 0)
          RSQ_CUDA_CHECK(cudaMemcpy(workf.data(), spdf.data(), sizeof(float) * std::size_t(n) * n, cudaMemcpyDeviceToDevice));
        else
          RSQ_CUDA_CHECK(cudaMemcpy(work.data(), spd.data(), sizeof(double) * std::size_t(n) * n, cudaMemcpyDeviceToDevice));
      };
      double const copy_ms = median_ms(a.reps, restore);
      double const potrf = median_ms(a.reps, [&] {
        restore();
        RSQ_CUSOLVER_CHECK(cusolverDnXpotrf(solver(), params, CUBLAS_FILL_MODE_LOWER, n, dt, A, n, dt, dw.data(), dev,
                                            hw.data(), host, info.data()));
      }) - copy_ms;
      c.potrf_ms[si][prec] = potrf;
      // A holds the factor now; trtri in place needs a fresh factor each time: time factor+trtri minus factor.
      double const both = median_ms(a.reps, [&] {
        restore();
        RSQ_CUSOLVER_CHECK(cusolverDnXpotrf(solver(), params, CUBLAS_FILL_MODE_LOWER, n, dt, A, n, dt, dw.data(), dev,
                                            hw.data(), host, info.data()));
        RSQ_CUSOLVER_CHECK(cusolverDnXtrtri(solver(), CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, n, dt, A, n,
                                            dw.data(), tdev, hw.data(), thost, info.data()));
      });
      c.trtri_ms[si][prec] = both - potrf - copy_ms;
      RSQ_CUSOLVER_CHECK(cusolverDnXpotrf(solver(), params, CUBLAS_FILL_MODE_LOWER, n, dt, A, n, dt, dw.data(), dev,
                                          hw.data(), host, info.data()));
      double const trsm = median_ms(a.reps, [&] {
        if (prec == 0) {
          float const o = 1;
          RSQ_CUDA_CHECK(cudaMemcpy(identf.data(), spdf.data(), sizeof(float) * std::size_t(n) * n, cudaMemcpyDeviceToDevice));
          RSQ_CUBLAS_CHECK(cublasStrsm(blas(), CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N,
                                       CUBLAS_DIAG_NON_UNIT, n, n, &o, workf.data(), n, identf.data(), n));
        } else {
          double const o = 1;
          RSQ_CUDA_CHECK(cudaMemcpy(ident.data(), spd.data(), sizeof(double) * std::size_t(n) * n, cudaMemcpyDeviceToDevice));
          RSQ_CUBLAS_CHECK(cublasDtrsm(blas(), CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N,
                                       CUBLAS_DIAG_NON_UNIT, n, n, &o, work.data(), n, ident.data(), n));
        }
      }) - copy_ms;
      c.trsm_ms[si][prec] = trsm;
    }
    RSQ_CUSOLVER_CHECK(cusolverDnDestroyParams(params));
  }
  return c;
}

// ------------------------------------------------------------------------------------------------------------------
struct hess_set {
  std::map<index_t, rsq::cuda::device_matrix<float>> by_cols;
};

/// An H (cols, cols) from 2·cols random tokens (the accumulator, strict fp32): the "H given" of the benchmark.
rsq::cuda::device_matrix<float> make_hessian(index_t cols, std::uint64_t seed) {
  index_t const tokens = std::max<index_t>(8192, 2 * cols);
  rsq::cuda::device_array<float> x(tokens * cols);
  bench::fill_normal(x.data(), std::size_t(tokens * cols), cols, seed);
  rsq::hessian_accumulator<float, rsq::backend::cuda> acc(cols, {});
  acc.add(rsq::matrix_view<const float>(x.data(), tokens, cols));
  return acc.hessian_resident();
}

using result_d = rsq::gptq::result<float, rsq::backend::cuda>;

struct phase_times {
  double factor = 0, solve = 0, pack = 0, copy_back = 0;
};

double gemm_flops(index_t rows, index_t cols, index_t block) {
  double f = 0;
  for (index_t i1 = 0; i1 < cols; i1 += block) {
    index_t const i2 = std::min(i1 + block, cols);
    f += 2.0 * double(rows) * double(i2 - i1) * double(cols - i2);
  }
  return f;
}

struct shape {
  char const* name;
  index_t rows, cols;
};

}  // namespace

int main(int argc, char** argv) {
  args a;
  for (int i = 1; i < argc; ++i) {
    std::string const s = argv[i];
    if (s == "--tokens" && i + 1 < argc) a.tokens = std::stol(argv[++i]);
    else if (s == "--reps" && i + 1 < argc) a.reps = std::stoi(argv[++i]);
    else if (s == "--quick") a.quick = true;
    else if (s == "--out" && i + 1 < argc) a.out = argv[++i];
  }
  rsq_bench::open_report(a.out);
  if (rsq::cuda::device_count() == 0) {
    std::printf("no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop{};
  RSQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  emit("# bench_gptq_cuda on %s (%d SMs), tokens %ld, median of %d\n\n", prop.name, prop.multiProcessorCount,
       long(a.tokens), a.reps);
  rsq::backend::cuda const be{};

  // ---- ceilings
  auto const c = measure_ceilings(a);
  emit("## Ceilings measured in this run\n\n| operation | rate / time |\n|---|---|\n");
  emit("| device-to-device copy (read + write) | %.0f GB/s |\n", c.copy_gbs);
  emit("| SGEMM fp32 (TF32 off), %d^3 | %.1f TFLOP/s |\n", a.quick ? 4096 : 8192, c.sgemm_tflops);
  emit("| SGEMM fp32, lazy-update shape 14336x4096x128 | %.1f TFLOP/s |\n", c.sgemm_k128_tflops);
  emit("| SSYRK fp32, XᵀX N=32768 d=4096 (as 2·N·d² flops) | %.1f TFLOP/s |\n", c.ssyrk_tflops * 2);
  emit("| TF32 GEMM XᵀX (TN), N=32768 d=4096 | %.1f TFLOP/s |\n", c.tf32_xtx_tflops);
  emit("| bf16-in fp32-out GEMM XᵀX (TN), N=32768 d=4096 | %.1f TFLOP/s |\n", c.bf16_xtx_tflops);
  for (int si = 0; si < (a.quick ? 1 : 2); ++si) {
    int const n = si == 0 ? 4096 : 14336;
    emit("| potrf n=%d fp32 / fp64 | %.2f / %.2f ms |\n", n, c.potrf_ms[si][0], c.potrf_ms[si][1]);
    emit("| trtri n=%d fp32 / fp64 | %.2f / %.2f ms |\n", n, c.trtri_ms[si][0], c.trtri_ms[si][1]);
    emit("| trsm (L⁻¹ vs I) n=%d fp32 / fp64 | %.2f / %.2f ms |\n", n, c.trsm_ms[si][0], c.trsm_ms[si][1]);
  }
  emit("\n");

  // ---- Hessians given
  std::map<index_t, rsq::cuda::device_matrix<float>> hs;
  hs.emplace(4096, make_hessian(4096, 11));
  if (!a.quick) hs.emplace(14336, make_hessian(14336, 12));

  std::vector<shape> shapes = {{"q/o 4096x4096", 4096, 4096}, {"k/v 1024x4096", 1024, 4096}};
  if (!a.quick) {
    shapes.push_back({"gate/up 14336x4096", 14336, 4096});
    shapes.push_back({"down 4096x14336", 4096, 14336});
  }
  struct config {
    char const* name;
    rsq::gptq::options opt;
  };
  config const configs[2] = {{"per row", {}}, {"g128 act", {.group_size = 128, .act_order = true}}};
  rsq::quant::grid_spec const grid{.bits = 4};

  // ---- factorization variants through the library (fp32 vs fp64, three triangular inverses)
  emit("## gptq::factor variants (H given; build + potrf + inverse + U, validation included)\n\n");
  emit("| n | precision | recursive TRMM ms | trsm vs I ms | trtri ms |\n|---|---|---|---|---|\n");
  for (auto const& [n, h] : hs) {
    for (auto prec : {rsq::cuda::factor_precision::fp64, rsq::cuda::factor_precision::input}) {
      double t[3];
      int k = 0;
      for (auto inv : {rsq::cuda::triangular_inverse::recursive, rsq::cuda::triangular_inverse::trsm,
                       rsq::cuda::triangular_inverse::trtri}) {
        rsq::gptq::factorization<float, rsq::backend::cuda> f;
        rsq::cuda::tuning().precision = prec;
        rsq::cuda::tuning().inverse = inv;
        t[k++] = median_ms(a.reps, [&] { f = rsq::gptq::factor(be, h.view()); });
      }
      rsq::cuda::tuning() = {};
      emit("| %ld | %s | %.2f | %.2f | %.2f |\n", long(n), prec == rsq::cuda::factor_precision::fp64 ? "fp64" : "fp32",
           t[0], t[1], t[2]);
    }
  }
  emit("\n");

  emit("## Per weight (H given), 4-bit asym, block 128\n\n");
  emit("| weight | config | factor ms | solve ms | pack ms | copy-back ms | factor+solve ms | solve GEMM TFLOP/s | solve vs SGEMM ceiling |\n|---|---|---|---|---|---|---|---|---|\n");
  for (auto const& sh : shapes) {
    rsq::cuda::device_matrix<float> w(sh.rows, sh.cols);
    bench::fill_normal(w.data(), std::size_t(w.size()), 0, 100 + sh.rows);
    auto const& h = hs.at(sh.cols);
    for (auto const& cf : configs) {
      rsq::gptq::factorization<float, rsq::backend::cuda> f;
      double const tf = median_ms(a.reps, [&] { f = rsq::gptq::factor(be, h.view(), cf.opt); });
      result_d r;
      double const ts = median_ms(a.reps, [&] { r = rsq::gptq::solve_resident(be, w.view(), f, grid, cf.opt); });
      double tp = 0;
      if (r.ok()) tp = median_ms(a.reps, [&] { (void)rsq::pack::pack_gptq_resident(be, r.weight, rsq::pack::zero_format::v2); });
      double const tc = median_ms(1, [&] { (void)rsq::gptq::to_host(be, std::move(r)); }, false);
      double const fl = gemm_flops(sh.rows, sh.cols, 128);
      emit("| %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f | %.0f%% |\n", sh.name, cf.name, tf, ts, tp, tc, tf + ts,
           fl / (ts * 1e-3) / 1e12, 100.0 * (fl / (c.sgemm_k128_tflops * 1e12) * 1e3) / ts);
    }
  }
  emit("\n");

  // ---- whole decoder layer, H given
  if (!a.quick) {
    struct lin {
      char const* name;
      index_t rows, cols;
      int h;  // which Hessian: 0 attn (q,k,v), 1 o, 2 mlp (gate, up), 3 down
    };
    lin const layer[7] = {{"q", 4096, 4096, 0},     {"k", 1024, 4096, 0},     {"v", 1024, 4096, 0},
                          {"o", 4096, 4096, 1},     {"gate", 14336, 4096, 2}, {"up", 14336, 4096, 2},
                          {"down", 4096, 14336, 3}};
    std::vector<rsq::cuda::device_matrix<float>> ws;
    for (int i = 0; i < 7; ++i) {
      ws.emplace_back(layer[i].rows, layer[i].cols);
      bench::fill_normal(ws.back().data(), std::size_t(ws.back().size()), 0, 200 + i);
    }
    std::vector<rsq::cuda::device_matrix<float>> hl;
    for (int k = 0; k < 4; ++k) hl.push_back(make_hessian(k == 3 ? 14336 : 4096, 300 + k));

    auto run_layer = [&](rsq::gptq::options const& opt, std::vector<rsq::cuda::device_matrix<float>> const& H,
                         phase_times& t, std::vector<result_d>* keep) {
      std::vector<rsq::gptq::factorization<float, rsq::backend::cuda>> fs(4);
      t.factor = median_ms(1, [&] {
        for (int k = 0; k < 4; ++k) fs[std::size_t(k)] = rsq::gptq::factor(be, H[std::size_t(k)].view(), opt);
      }, false);
      std::vector<result_d> rs(7);
      t.solve = median_ms(1, [&] {
        for (int i = 0; i < 7; ++i)
          rs[std::size_t(i)] = rsq::gptq::solve_resident(be, ws[std::size_t(i)].view(), fs[std::size_t(layer[i].h)], grid, opt);
      }, false);
      t.pack = median_ms(1, [&] {
        for (int i = 0; i < 7; ++i) (void)rsq::pack::pack_gptq_resident(be, rs[std::size_t(i)].weight, rsq::pack::zero_format::v2);
      }, false);
      if (keep) {  // the caller goes on with the results on the device
        *keep = std::move(rs);
        return;
      }
      t.copy_back = median_ms(1, [&] {
        for (int i = 0; i < 7; ++i) (void)rsq::gptq::to_host(be, std::move(rs[std::size_t(i)]));
      }, false);
    };
    emit("## Decoder layer (q, k, v, o, gate, up, down), H given, 4 distinct Hessians factored once\n\n");
    emit("| config | factorization s | solve s | packing s | total s (no copy-back) | copy-back s |\n|---|---|---|---|---|---|\n");
    for (auto const& cf : configs) {
      phase_times best{1e30, 1e30, 1e30, 1e30};
      for (int r = 0; r < a.reps + 1; ++r) {  // first run warms up
        phase_times t;
        run_layer(cf.opt, hl, t, nullptr);
        if (r == 0) continue;
        if (t.factor + t.solve + t.pack < best.factor + best.solve + best.pack) best = t;
      }
      emit("| %s | %.3f | %.3f | %.3f | %.3f | %.3f |\n", cf.name, best.factor / 1e3, best.solve / 1e3,
           best.pack / 1e3, (best.factor + best.solve + best.pack) / 1e3, best.copy_back / 1e3);
    }
    emit("\n(best of %d after a warm-up)\n\n", a.reps);

    // Where the time goes: one profiled run (phases synchronized, so slightly slower), and per-block lazy updates.
    {
      phase_times t;
      rsq::cuda::profile() = {};
      rsq::cuda::tuning().profile = true;
      run_layer(configs[1].opt, hl, t, nullptr);
      rsq::cuda::tuning().profile = false;
      auto const& p = rsq::cuda::profile();
      emit("### Phase profile of one layer (g128 act; each phase synchronized)\n\n| phase | ms |\n|---|---|\n");
      emit("| factor: validate H | %.1f |\n| factor: build J·P(H+damp)Pᵀ·J | %.1f |\n| factor: potrf | %.1f |\n",
           p.validate, p.factor_build, p.potrf);
      emit("| factor: triangular inverse | %.1f |\n| factor: extract U | %.1f |\n", p.inverse, p.extract);
      emit("| solve: prepare (copies, fits, permutation) | %.1f |\n| solve: group refits | %.1f |\n", p.prepare, p.fit);
      emit("| solve: column kernels | %.1f |\n| solve: GEMMs inside spans | %.1f |\n| solve: span GEMMs | %.1f |\n",
           p.column_kernel, p.gemm_in_span, p.gemm_lazy);
      emit("| solve: finalize (codes, Q, losses) | %.1f |\n\n", p.finalize);
      for (index_t span : {index_t(128), index_t(512), index_t(2048)}) {
        rsq::cuda::tuning().lazy_span = span;
        phase_times best{1e30, 1e30, 1e30, 1e30};
        for (int r = 0; r < a.reps; ++r) {
          run_layer(configs[1].opt, hl, t, nullptr);
          if (t.solve < best.solve) best = t;
        }
        emit("lazy_span %ld: layer solve %.3f s\n\n", long(span), best.solve / 1e3);
      }
      rsq::cuda::tuning().lazy_span = 1024;
    }

    // ---- decoder layer with Hessians from N tokens
    index_t const N = a.tokens, L = 4096, seqs = N / L;
    emit("## Decoder layer with Hessians from N = %ld tokens (%ld sequences of %ld, AttnCon-like importances)\n\n",
         long(N), long(seqs), long(L));
    rsq::cuda::device_array<float> x(N * 14336), imp(N);
    bench::fill_uniform(imp.data(), std::size_t(N), 77, 0.005f, 1.0f);
    struct prec {
      char const* name;
      rsq::hessian::precision p;
    };
    prec const precs[3] = {{"fp32 strict", rsq::hessian::precision::strict},
                           {"tf32", rsq::hessian::precision::tf32},
                           {"bf16 inputs", rsq::hessian::precision::bf16}};
    std::vector<rsq::cuda::device_matrix<float>> h_strict;
    std::vector<double> loss_strict(7, 0.0);
    emit("| Hessian precision | Hessian s | factorization s | solve s | packing s | total s | Hessian TFLOP/s (GEMM-equiv.) | GPTQ loss vs fp32 path (layer / worst weight) |\n|---|---|---|---|---|---|---|---|\n");
    for (auto const& pr : precs) {
      std::vector<rsq::cuda::device_matrix<float>> H;
      double th = 0;
      for (int k = 0; k < 4; ++k) {
        index_t const d = k == 3 ? 14336 : 4096;
        bench::fill_normal(x.data(), std::size_t(N * d), d, 400 + k);
        RSQ_CUDA_CHECK(cudaDeviceSynchronize());
        rsq::cuda::device_matrix<float> hk;
        th += median_ms(1, [&] {
          rsq::hessian_accumulator<float, rsq::backend::cuda> acc(d, be, {}, {.precision = pr.p});
          acc.add(rsq::batch_view<const float>(x.data(), {seqs, L, d}),
                  rsq::matrix_view<const float>(imp.data(), seqs, L));
          hk = acc.hessian_resident();
        }, false);
        H.push_back(std::move(hk));
      }
      double const hflops = 2.0 * double(N) * (3.0 * 4096.0 * 4096.0 + 14336.0 * 14336.0);
      phase_times t;
      std::vector<result_d> rs;
      run_layer(configs[0].opt, H, t, &rs);
      // GPTQ loss with the strict fp32 Hessian of the layer.
      if (h_strict.empty()) h_strict = std::move(H);
      std::vector<double> loss(7);
      double tot = 0, tot_ref = 0, worst = 0;
      for (int i = 0; i < 7; ++i) {
        auto const& hh = h_strict[std::size_t(layer[i].h)];
        loss[std::size_t(i)] = bench::proxy_loss(blas(), ws[std::size_t(i)].data(), rs[std::size_t(i)].dequantized.data(),
                                                 hh.data(), layer[i].rows, layer[i].cols);
      }
      bool const first = loss_strict[0] == 0;
      if (first) loss_strict = loss;
      for (int i = 0; i < 7; ++i) {
        tot += loss[std::size_t(i)];
        tot_ref += loss_strict[std::size_t(i)];
        worst = std::max(worst, std::abs(loss[std::size_t(i)] / loss_strict[std::size_t(i)] - 1));
      }
      emit("| %s | %.3f | %.3f | %.3f | %.3f | %.3f | %.0f | %+.4f%% / %.4f%% |\n", pr.name, th / 1e3, t.factor / 1e3,
           t.solve / 1e3, t.pack / 1e3, (th + t.factor + t.solve + t.pack) / 1e3, hflops / (th * 1e-3) / 1e12,
           100.0 * (tot / tot_ref - 1), 100.0 * worst);
    }
    emit("\n(one run each; the Hessian phase includes the device-side checks and weighting of the inputs)\n\n");
  }
  rsq_bench::close_report();
  return 0;
}
