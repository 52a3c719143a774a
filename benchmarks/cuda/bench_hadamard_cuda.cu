// SPDX-License-Identifier: MIT
// Throughput of every variant of the CUDA Hadamard transform (float rows, in place, random pre-signs fused) against a
// device-to-device copy of the same bytes measured in the same run (bytes read + written), for 2^m and for K·2^m of
// real models (every K of the reference table that plan_hadamard picks at some n >= 256; K = 12 and 20 only occur at
// n = 12, 20, 24, so they run as forced plans). Each variant is first checked against a float64 CPU transform: sample
// rows of the full buffer (pre- and post-signs) and a small strided matrix (row stride n + 8, guard words between rows,
// a partial last tile; pre- and post-signs, Hᵀ for K > 1). The compact table at the end gives, per size, the fastest
// correct variant and the default dispatch's, in % of the copy. docs/cuda-hadamard-notes.md has the predictions.
//
// usage: bench_hadamard_cuda [--bytes B] [--reps R] [--sizes n,n,...] [--out results.md]
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "../support/report.hpp"
#include "bench_common.cuh"

#include <rsq/backend/cuda/impl/runtime.cuh>
#include <rsq/backend/cuda/impl/hadamard.cuh>
#include <rsq/rotation/hadamard_plan.hpp>

namespace {

using rsq::index_t;
using rsq_bench::emit;
namespace det = rsq::cuda::detail;

struct variant {
  std::string name;
  det::hadamard_knobs knobs;
};

std::vector<variant> variants_for(rsq::rotation::hadamard_plan const& plan) {
  std::vector<variant> v{{"default", {}}, {"legacy", {1, -1, -1}}};
  if (plan.k == 1) {
    v.push_back({"fwht", {2, 0, -1}});
    v.push_back({"fwht+stage", {2, 1, -1}});
  } else {
    v.push_back({"mma-bf16x3", {2, 0, 0}});
    v.push_back({"mma-bf16x3+stage", {2, 1, 0}});
    v.push_back({"mma-f16x2", {2, 0, 1}});
    v.push_back({"mma-f16x2+stage", {2, 1, 1}});
  }
  return v;
}

/// op(hadK)[a][b] as ±1 (K = 1: 1).
struct mix_matrix {
  rsq::rotation::sign_matrix const* h = nullptr;
  bool transpose = false;
  int operator()(index_t a, index_t b) const {
    if (!h) return 1;
    return transpose ? (*h)(b, a) : (*h)(a, b);
  }
};

/// y = diag(post)·scale·(op(hadK) ⊗ H_p)·diag(pre)·x in float64 (the definition, independent of the library's CPU code).
std::vector<double> reference_row(rsq::rotation::hadamard_plan const& plan, mix_matrix const& op, float const* x,
                                  std::vector<std::int8_t> const& pre, std::vector<std::int8_t> const& post,
                                  double scale) {
  index_t const n = plan.n, k = plan.k, p = n / k;
  std::vector<double> v(std::size_t(n), 0.0), y(std::size_t(n), 0.0);
  for (index_t i = 0; i < n; ++i) v[std::size_t(i)] = double(x[i]) * (pre.empty() ? 1 : pre[std::size_t(i)]);
  for (index_t a = 0; a < k; ++a)
    for (index_t h = 1; h < p; h <<= 1)
      for (index_t b = 0; b < p; ++b)
        if (!(b & h)) {
          double const u = v[std::size_t(a * p + b)], w = v[std::size_t(a * p + b + h)];
          v[std::size_t(a * p + b)] = u + w;
          v[std::size_t(a * p + b + h)] = u - w;
        }
  for (index_t a = 0; a < k; ++a)
    for (index_t a2 = 0; a2 < k; ++a2) {
      int const s = op(a, a2);
      for (index_t b = 0; b < p; ++b) y[std::size_t(a * p + b)] += s * v[std::size_t(a2 * p + b)];
    }
  for (index_t i = 0; i < n; ++i) y[std::size_t(i)] *= scale * (post.empty() ? 1 : post[std::size_t(i)]);
  return y;
}

std::vector<std::int8_t> random_signs(index_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<std::int8_t> s(static_cast<std::size_t>(n));
  for (auto& v : s) v = (rng() & 1u) ? std::int8_t(1) : std::int8_t(-1);
  return s;
}

void run(float* x, index_t ld, index_t rows, rsq::rotation::hadamard_plan const& plan, bool transpose,
         std::int8_t const* pre, std::int8_t const* post, float scale) {
  det::hadamard_mix const* mix = plan.k > 1 ? &det::hadamard_mix_tables(plan, transpose) : nullptr;
  det::dispatch_hadamard<float>(x, ld, rows, plan, mix, pre, post, scale, cudaStream_t{});
}

/// Max |gpu - ref| / max |ref| over @p rows rows of a (rows, ld) host copy, and guard words between rows.
double compare(rsq::rotation::hadamard_plan const& plan, mix_matrix const& op, std::vector<float> const& before,
               std::vector<float> const& after, index_t rows, index_t ld, std::vector<std::int8_t> const& pre,
               std::vector<std::int8_t> const& post, double scale, float guard) {
  double num = 0, den = 0;
  index_t const n = plan.n;
  for (index_t r = 0; r < rows; ++r) {
    auto const y = reference_row(plan, op, before.data() + r * ld, pre, post, scale);
    for (index_t i = 0; i < n; ++i) {
      double const g = after[std::size_t(r * ld + i)];
      if (!std::isfinite(g)) return INFINITY;
      num = std::max(num, std::abs(g - y[std::size_t(i)]));
      den = std::max(den, std::abs(y[std::size_t(i)]));
    }
    for (index_t c = n; c < ld; ++c)
      if (after[std::size_t(r * ld + c)] != guard) return INFINITY;  // a write outside the rows
  }
  return den > 0 ? num / den : num;
}

struct result {
  std::string variant, launched;
  double gbs = 0, err = 0;
};

}  // namespace

int main(int argc, char** argv) {
  std::size_t bytes = std::size_t(1) << 29;
  int reps = 7;
  int const batch = 4;  // calls per timed sample: the host work of a call overlaps the previous call's kernel
  std::string out, sizes_arg;
  for (int i = 1; i < argc; ++i) {
    std::string const s = argv[i];
    if (s == "--bytes" && i + 1 < argc) bytes = std::stoull(argv[++i]);
    else if (s == "--reps" && i + 1 < argc) reps = std::stoi(argv[++i]);
    else if (s == "--sizes" && i + 1 < argc) sizes_arg = argv[++i];
    else if (s == "--out" && i + 1 < argc) out = argv[++i];
  }
  if (rsq::cuda::device_count() == 0) return 1;
  rsq_bench::open_report(out);
  cudaDeviceProp prop{};
  RSQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  emit("# bench_hadamard_cuda on %s (%d SMs): %zu MB of float rows, in place, random pre-signs, median of %d samples of %d calls\n\n",
       prop.name, prop.multiProcessorCount, bytes >> 20, reps, batch);

  // (n, forced K): K = 0 takes plan_hadamard's construction; K = 12, 20 are forced (plan_hadamard picks 48 and 40).
  std::vector<std::pair<index_t, index_t>> sizes = {
      {256, 0},   {512, 0},   {1024, 0},  {2048, 0},  {4096, 0},  {8192, 0},  {16384, 0}, {32768, 0},
      {3584, 0},  {14336, 0}, {28672, 0}, {4608, 0},  {9216, 0},  {5120, 0},  {12288, 0}, {13312, 0},
      {15360, 0}, {13824, 0}, {27648, 0}, {8960, 0},  {18944, 0}, {19968, 0}, {11008, 0}, {12 * 1024, 12},
      {20 * 512, 20}};
  if (!sizes_arg.empty()) {
    sizes.clear();
    std::stringstream ss(sizes_arg);
    for (std::string tok; std::getline(ss, tok, ',');) sizes.emplace_back(std::stoll(tok), 0);
  }
  index_t const total = index_t(bytes / sizeof(float));
  rsq::cuda::device_array<float> x{total}, y{total};

  emit("| n | construction | variant | kernel launched | GB/s | vs copy | max rel err |\n");
  emit("|---|---|---|---|---|---|---|\n");
  struct summary {
    index_t n;
    std::string construction;
    double copy_gbs;
    std::vector<result> results;
  };
  std::vector<summary> all;
  unsigned seed = 1;
  for (auto const& [n, forced_k] : sizes) {
    auto plan = rsq::rotation::plan_hadamard(n);
    if (forced_k > 0) {
      plan.kind = rsq::rotation::hadamard_kind::reference;
      plan.k = forced_k;
      plan.m = std::countr_zero(std::uint64_t(n / forced_k));
    }
    std::string construction = plan.to_string();
    if (forced_k > 0) construction += " (forced)";
    index_t const rows = total / n;
    std::size_t const used = std::size_t(rows * n) * sizeof(float);
    double const scale = 1.0 / std::sqrt(double(n));
    auto const pre = random_signs(n, seed++), post = random_signs(n, seed++);
    auto const pre_d = rsq::cuda::to_device(pre), post_d = rsq::cuda::to_device(post);
    double const tc = bench::median_ms(reps, [&] {
                        for (int b = 0; b < batch; ++b)
                          RSQ_CUDA_CHECK(cudaMemcpyAsync(y.data(), x.data(), used, cudaMemcpyDeviceToDevice));
                      }) / batch;
    double const copy_gbs = 2.0 * double(used) / (tc * 1e-3) / 1e9;
    summary sm{n, construction, copy_gbs, {}};

    // The sample rows of the full buffer and the small strided matrix (37 rows, or 2.5 tiles of short rows).
    std::vector<index_t> sample = {0, 1, 2, rows / 3, rows / 2, (2 * rows) / 3, rows - 2, rows - 1};
    index_t const small_rows = std::max<index_t>(37, index_t(8192 * 5 / 2) / n + 1), small_ld = n + 8;
    float const guard = 7777.0f;
    for (auto const& v : variants_for(plan)) {
      det::hadamard_tuning() = v.knobs;
      result r;
      r.variant = v.name;
      r.launched = det::choose_hadamard(x.data(), n, plan).name();
      if (v.name != "default" && v.name != "legacy" && r.launched == "legacy") {
        emit("| %ld | %s | %s | (does not apply) | | | |\n", long(n), construction.c_str(), v.name.c_str());
        continue;
      }
      // 1. Full buffer, sample rows: pre- and post-signs, H.
      bench::fill_normal(x.data(), std::size_t(rows * n), n, seed++);
      std::vector<float> before(sample.size() * std::size_t(n)), after(before.size());
      for (std::size_t s = 0; s < sample.size(); ++s)
        RSQ_CUDA_CHECK(cudaMemcpy(before.data() + s * std::size_t(n), x.data() + sample[s] * n,
                                  std::size_t(n) * sizeof(float), cudaMemcpyDeviceToHost));
      run(x.data(), n, rows, plan, false, pre_d.data(), post_d.data(), float(scale));
      RSQ_CUDA_CHECK(cudaDeviceSynchronize());
      for (std::size_t s = 0; s < sample.size(); ++s)
        RSQ_CUDA_CHECK(cudaMemcpy(after.data() + s * std::size_t(n), x.data() + sample[s] * n,
                                  std::size_t(n) * sizeof(float), cudaMemcpyDeviceToHost));
      mix_matrix const op{plan.k > 1 ? &rsq::rotation::reference_hadamard(plan.k) : nullptr, false};
      double const e1 = compare(plan, op, before, after, index_t(sample.size()), n, pre, post, scale, guard);
      // 2. Small strided matrix with guards, Hᵀ for K > 1.
      std::vector<float> sb(std::size_t(small_rows * small_ld), guard);
      {
        std::mt19937 rng(seed++);
        std::normal_distribution<float> nd;
        for (index_t rr = 0; rr < small_rows; ++rr)
          for (index_t c = 0; c < n; ++c) sb[std::size_t(rr * small_ld + c)] = nd(rng);
      }
      rsq::cuda::device_array<float> sd{small_rows * small_ld};
      RSQ_CUDA_CHECK(cudaMemcpy(sd.data(), sb.data(), sb.size() * sizeof(float), cudaMemcpyHostToDevice));
      bool const tr = plan.k > 1;
      run(sd.data(), small_ld, small_rows, plan, tr, pre_d.data(), post_d.data(), float(scale));
      std::vector<float> sa(sb.size());
      RSQ_CUDA_CHECK(cudaMemcpy(sa.data(), sd.data(), sa.size() * sizeof(float), cudaMemcpyDeviceToHost));
      mix_matrix const opt{op.h, tr};
      double const e2 = compare(plan, opt, sb, sa, small_rows, small_ld, pre, post, scale, guard);
      r.err = std::max(e1, e2);
      // 3. Time: the full buffer with the pre-signs (a randomized Hadamard rotation).
      double const t = bench::median_ms(reps, [&] {
                         for (int b = 0; b < batch; ++b)
                           run(x.data(), n, rows, plan, false, pre_d.data(), nullptr, float(scale));
                       }) / batch;
      r.gbs = 2.0 * double(used) / (t * 1e-3) / 1e9;
      auto const l = det::choose_hadamard(x.data(), n, plan);
      std::string launched = r.launched;
      if (l.kind == det::hadamard_launch::fwht)
        launched += " " + std::to_string(l.threads) + "t " + std::to_string(l.smem >> 10) + "KB";
      else if (l.kind == det::hadamard_launch::mix)
        launched += " " + std::to_string(l.threads) + "t " + std::to_string(l.mb) + "x" + std::to_string(l.nb) +
                    " " + std::to_string(l.smem >> 10) + "KB";
      emit("| %ld | %s | %s | %s | %.0f | %.0f%% | %.1e%s |\n", long(n), construction.c_str(), v.name.c_str(),
           launched.c_str(), r.gbs, 100.0 * r.gbs / copy_gbs, r.err, r.err < 1e-5 ? "" : " FAIL");
      sm.results.push_back(r);
    }
    det::hadamard_tuning() = {};
    all.push_back(sm);
  }

  emit("\nPer size: the fastest variant whose error is under 1e-5, and the default dispatch (target: 85%% of the copy "
       "for 2^m, 70%% for K·2^m).\n\n");
  emit("| n | construction | copy GB/s | best variant | best vs copy | default runs | default vs copy | target |\n");
  emit("|---|---|---|---|---|---|---|---|\n");
  int failures = 0;
  for (auto const& s : all) {
    result const* best = nullptr;
    result const* def = nullptr;
    for (auto const& r : s.results) {
      if (r.err >= 1e-5) ++failures;
      if (r.variant == "default") def = &r;
      else if (r.err < 1e-5 && (!best || r.gbs > best->gbs)) best = &r;
    }
    bool const pow2 = s.construction.rfind("H", 0) == 0;
    double const target = pow2 ? 85.0 : 70.0;
    double const dp = def ? 100.0 * def->gbs / s.copy_gbs : 0, bp = best ? 100.0 * best->gbs / s.copy_gbs : 0;
    emit("| %ld | %s | %.0f | %s | %.0f%% | %s | %.0f%% | %.0f%% %s |\n", long(s.n), s.construction.c_str(),
         s.copy_gbs, best ? best->variant.c_str() : "-", bp, def ? def->launched.c_str() : "-", dp, target,
         dp >= target ? "met" : bp >= target ? "met by best" : "missed");
  }
  emit("\n%d variant(s) over the 1e-5 error bound\n", failures);
  rsq_bench::close_report();
  return failures == 0 ? 0 : 2;
}
