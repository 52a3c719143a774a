// SPDX-License-Identifier: MIT
// bench_pipeline: the whole `rsq-llama2c --compare` run on stories260K (FP32, RTN, GPTQ, QuaRot, RSQ; calibration
// stories 0:500, evaluation stories 500:1000) with the seconds of each part: rotation, token importance (AttnCon),
// calibration forward passes, Hessian accumulation, GPTQ solver, perplexity evaluation.
//
//   bench_pipeline [bits=3] [nsamples=128] [seqlen=256]
//
// The model is read from $RSQ_SHARED_DIR/data/... (default: ../shared beside the source tree).

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <rsq/model/calibration.hpp>
#include <rsq/model/llama2c.hpp>
#include <rsq/model/quantize.hpp>
#include <rsq/model/tokenizer.hpp>

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  using namespace rsq::model;
  int const bits = argc > 1 ? std::atoi(argv[1]) : 3;
  rsq::index_t const nsamples = argc > 2 ? std::atol(argv[2]) : 128;
  rsq::index_t const seqlen = argc > 3 ? std::atol(argv[3]) : 256;
  std::filesystem::path shared = std::filesystem::path(__FILE__).parent_path() / "../../shared";
  if (char const* env = std::getenv("RSQ_SHARED_DIR")) shared = env;
  try {
    auto const t_all = std::chrono::steady_clock::now();
    auto const fp = load_llama2c_checkpoint(shared / "data/models/stories260K.bin");
    auto const tok = load_tokenizer(shared / "data/models/tok512.bin", {.vocab_size = fp.config.vocab_size});
    auto const stories = load_stories(shared / "data/text/tinystories_val.txt");
    auto const t_data = std::chrono::steady_clock::now();
    auto const calib = sample_windows(story_tokens(tok, stories, {0, 500}), seqlen, nsamples, 0);
    auto const eval = consecutive_windows(story_tokens(tok, stories, {500, 1000}), seqlen);
    double const data_s = seconds_since(t_data);
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    std::printf("bench_pipeline: stories260K, %d bits per row, %td x %td calibration tokens, %td x %td evaluation "
                "tokens, %d thread(s)\n",
                bits, nsamples, seqlen, rsq::index_t(eval.shape()[0]), seqlen, threads);
    std::printf("data (tokenize, windows): %.2f s\n", data_s);

    auto t0 = std::chrono::steady_clock::now();
    auto const fp_eval = evaluate(fp, rsq::view(eval));
    double const fp_s = seconds_since(t0);
    std::printf("%-7s %8s %8s %9s %8s %8s %8s %8s %8s %10s\n", "method", "total s", "rotate", "importnc", "forward",
                "hessian", "solver", "other", "eval", "perplexity");
    std::printf("%-7s %8.2f %8s %9s %8s %8s %8s %8s %8.2f %10.4f\n", "fp32", fp_s, "-", "-", "-", "-", "-", "-", fp_s,
                fp_eval.perplexity);
    pipeline_timings sum;
    double eval_sum = fp_s;
    for (quant_method m : all_quant_methods) {
      quantize_options opt;
      opt.method = m;
      opt.grid = rsq_script_grid(bits);
      auto const q = quantize_model(fp, rsq::view(calib), opt);
      t0 = std::chrono::steady_clock::now();
      auto const e = evaluate(q.model, rsq::view(eval));
      double const eval_s = seconds_since(t0);
      auto const& t = q.timings;
      double const other = t.total - t.rotation - t.importance - t.forward - t.hessian - t.solver;
      std::printf("%-7s %8.2f %8.3f %9.2f %8.2f %8.2f %8.2f %8.2f %8.2f %10.4f\n", std::string(to_string(m)).c_str(),
                  t.total + eval_s, t.rotation, t.importance, t.forward, t.hessian, t.solver, other, eval_s,
                  e.perplexity);
      sum.rotation += t.rotation;
      sum.importance += t.importance;
      sum.forward += t.forward;
      sum.hessian += t.hessian;
      sum.solver += t.solver;
      sum.total += t.total;
      eval_sum += eval_s;
    }
    double const total = seconds_since(t_all);
    auto share = [&](double s) { return 100.0 * s / total; };
    std::printf("whole --compare run: %.2f s = load and data %.1f%%, rotation %.1f%%, importance %.1f%%, calibration "
                "forward %.1f%%, Hessian %.1f%%, solver %.1f%%, evaluation %.1f%%, other %.1f%%\n",
                total, share(total - sum.total - eval_sum), share(sum.rotation), share(sum.importance),
                share(sum.forward), share(sum.hessian), share(sum.solver), share(eval_sum),
                share(sum.total - sum.rotation - sum.importance - sum.forward - sum.hessian - sum.solver));
  } catch (std::exception const& e) {
    std::fprintf(stderr, "bench_pipeline: %s\n", e.what());
    return 1;
  }
  return 0;
}
