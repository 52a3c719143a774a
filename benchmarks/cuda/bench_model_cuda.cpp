// SPDX-License-Identifier: MIT
// A whole model quantized on one GPU: a model with Llama-3-8B's shapes (32 layers, hidden 4096, 32 query and 8 KV
// heads of 128, intermediate 14336, vocabulary 128256; random weights made in memory, no file) quantized with RSQ
// (randomized Hadamard rotation, AttnCon, GPTQ 4-bit, group 128, act-order) from S sequences of L tokens by
// rsq::model::quantize_model on the CUDA backend, end to end (calibration forward passes included). Prints the
// per-phase seconds, the peak device memory and, for the layers that both runs quantize, each linear's GPTQ proxy loss
// with the bf16 opt-ins (forward products and Hessian inputs) next to the fp32 path.
//
// usage: bench_model_cuda [--layers 32] [--sequences 128] [--seq-len 2048] [--fp32-layers 4] [--no-bf16] [--quick]
//                         [--out FILE]
//   --fp32-layers N  also quantize the first N layers in strict fp32 (0: skip) and compare the losses per linear
//   --quick          a small model (4 layers of 512, 8 heads) for a smoke test
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <rsq/cuda.hpp>
#include <rsq/model/quantize.hpp>

#include "../support/llama3_shapes.hpp"
#include "../support/report.hpp"

namespace {

using rsq::index_t;
using namespace rsq::model;
using rsq_bench::make_model;
using rsq_bench::random_tokens;

struct run_result {
  quantized_model q;
  double seconds = 0;
};

run_result run(llama_model&& m, rsq::matrix<std::int32_t> const& tokens, bool bf16, char const* label) {
  quantize_options opt;
  opt.method = quant_method::rsq;
  opt.grid = rsq_script_grid(4);
  opt.solver.group_size = 128;
  opt.solver.act_order = true;
  opt.rotation.kind = residual_rotation::randomized_hadamard;
  if (bf16) {
    opt.forward.precision = rsq::matmul_precision::bf16;
    opt.hessian.precision = rsq::hessian::precision::bf16;
  }
  quantize_observer obs;
  auto const t0 = std::chrono::steady_clock::now();
  obs.on_layer = [&](layer_report const& r) {
    double const s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s: layer %d/%d done in %.2f s (%.1f s so far, about %.0f s left)\n", label, r.layer + 1, r.n_layers,
                r.seconds, s, s / double(r.layer + 1) * double(r.n_layers - r.layer - 1));
    std::fflush(stdout);
  };
  run_result out;
  out.q = quantize_model(rsq::backend::cuda{}, std::move(m), rsq::view(tokens), opt, obs);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

void phases(char const* label, run_result const& r) {
  auto const& t = r.q.timings;
  rsq_bench::emit("| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", label,
                  r.seconds, t.forward, t.rotation, t.importance, t.hessian, t.factorization, t.solver, t.loss,
                  t.copies, r.seconds - (t.forward + t.rotation + t.importance + t.hessian + t.factorization +
                                         t.solver + t.loss + t.copies),
                  double(t.peak_backend_bytes) / double(1 << 30));
}

}  // namespace

int main(int argc, char** argv) {
  int layers = 32, fp32_layers = 4;
  index_t sequences = 128, seq_len = 2048;
  bool quick = false, bf16 = true;
  std::string out;
  for (int i = 1; i < argc; ++i) {
    std::string const a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--layers") layers = std::stoi(next());
    else if (a == "--sequences") sequences = std::stol(next());
    else if (a == "--seq-len") seq_len = std::stol(next());
    else if (a == "--fp32-layers") fp32_layers = std::stoi(next());
    else if (a == "--no-bf16") bf16 = false;
    else if (a == "--quick") quick = true;
    else if (a == "--out") out = next();
    else {
      std::fprintf(stderr, "bench_model_cuda: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (quick) {
    layers = std::min(layers, 4);
    sequences = std::min<index_t>(sequences, 16);
    seq_len = std::min<index_t>(seq_len, 256);
    fp32_layers = std::min(fp32_layers, layers);
  }
  if (rsq::cuda::device_count() == 0) {
    std::printf("bench_model_cuda: SKIPPED, no CUDA device\n");
    return 0;
  }
  rsq_bench::open_report(out);
  using rsq_bench::emit;
  auto const tokens = random_tokens(sequences, seq_len, quick ? 4096 : 128256);
  emit("# bench_model_cuda: %s shapes, %d layers, %td x %td calibration tokens, RSQ 4-bit g128 act-order\n\n",
       quick ? "quick" : "Llama-3-8B", layers, sequences, seq_len);
  emit("| run | total s | forward | rotation | importance | Hessian | factor | solve | loss | copies | other | peak GiB |\n");
  emit("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  auto const t_make = std::chrono::steady_clock::now();
  auto model = make_model(layers, quick);
  std::printf("model of %d layers made in memory in %.1f s\n", layers,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t_make).count());
  auto const main_run = run(std::move(model), tokens, bf16, bf16 ? "bf16" : "fp32");
  if (!main_run.q.ok()) {
    std::printf("bench_model_cuda: not positive definite at layer %d\n", main_run.q.failed_layer);
    return 1;
  }
  phases(bf16 ? "bf16 opt-ins" : "fp32", main_run);
  if (fp32_layers > 0 && bf16) {
    auto const fp32_run = run(make_model(fp32_layers, quick), tokens, false, "fp32");
    phases((std::string("fp32, ") + std::to_string(fp32_layers) + " layers").c_str(), fp32_run);
    emit("\nfp32 extrapolated to %d layers: %.0f s\n\nGPTQ proxy loss per linear, bf16 opt-ins / fp32 (first %d "
         "layers):\n\n| layer | linear | fp32 loss | bf16 / fp32 |\n|---|---|---|---|\n",
         layers, fp32_run.seconds / fp32_layers * layers, fp32_layers);
    double worst = 0;
    for (int l = 0; l < fp32_layers; ++l)
      for (std::size_t i = 0; i < fp32_run.q.layers[std::size_t(l)].linears.size(); ++i) {
        auto const& a = main_run.q.layers[std::size_t(l)].linears[i];
        auto const& b = fp32_run.q.layers[std::size_t(l)].linears[i];
        double const ratio = a.loss / b.loss;
        worst = std::max(worst, std::abs(ratio - 1.0));
        emit("| %d | %s | %.6g | %.5f |\n", l, std::string(name(b.linear)).c_str(), b.loss, ratio);
      }
    emit("\nlargest relative difference of a linear's loss: %.3f%%\n", 100.0 * worst);
  }
  rsq_bench::close_report();
  return 0;
}
