// SPDX-License-Identifier: MIT
// Writing lm7m as GGUF against writing the same bytes with one plain buffered write (issue 16: within 1.5x), side by
// side in one run:
//  - the model quantized by round to nearest on llama.cpp's Q4_0 blocks (quantize_model, outside the timing), written
//    by save_gguf: the blocks packed from the solver's codes, the vocabulary, the F16 embedding;
//  - the float model written with F16 linears (the conversion from float inside the timing);
//  - the baseline: the finished file's bytes (read into memory first) written with one std::ofstream::write to a
//    temporary name and renamed, as save_gguf does.
// The two writes alternate, median of the repetitions after one warm-up; every write goes to the same folder.
//
// Usage: bench_gguf [reps]   (default 7; lm7m from $RSQ_SHARED_DIR or ../shared)
#include <algorithm>
#include <cstdio>
#include <functional>
#include <utility>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <rsq/model/gguf.hpp>
#include <rsq/model/llama2c.hpp>
#include <rsq/model/quantize.hpp>
#include <rsq/model/tokenizer.hpp>

#include "support/median_seconds.hpp"

namespace fs = std::filesystem;

namespace {

/// Median seconds of save_gguf (@p write) and of the plain write of the bytes it wrote, the two alternating so that
/// both see the same state of the machine and the page cache.
std::pair<double, double> alternate(std::function<void(fs::path const&)> const& write, fs::path const& file,
                                    fs::path const& copy, int reps) {
  write(file);  // warm-up, and the bytes for the plain write
  std::ifstream in(file, std::ios::binary);
  std::vector<char> const bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  std::vector<double> ours, plain;
  for (int r = 0; r < reps; ++r) {
    ours.push_back(rsq_bench::median_seconds(1, [&] { write(file); }));
    plain.push_back(rsq_bench::median_seconds(1, [&] {
      fs::path const tmp = copy.string() + ".tmp";
      {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        f.write(bytes.data(), std::streamsize(bytes.size()));
      }
      fs::rename(tmp, copy);
    }));
  }
  std::sort(ours.begin(), ours.end());
  std::sort(plain.begin(), plain.end());
  return {ours[ours.size() / 2], plain[plain.size() / 2]};
}

void row(char const* what, double bytes, double base, double t) {
  std::printf("| %s | %.4f | %.0f | %.2f |\n", what, t, bytes / t / 1e6, t / base);
}

}  // namespace

int main(int argc, char** argv) {
  int const reps = argc > 1 ? std::atoi(argv[1]) : 7;
  char const* env = std::getenv("RSQ_SHARED_DIR");
  fs::path const shared = env ? fs::path(env) : fs::path("../shared");
  auto const model_path = shared / "data/models/lm7m/llama2c/model.bin";
  if (!fs::exists(model_path)) {
    std::printf("lm7m not found under %s: set RSQ_SHARED_DIR\n", shared.string().c_str());
    return 1;
  }
  auto const fp = rsq::model::load_llama2c_checkpoint(model_path);
  auto const tok = rsq::model::load_tokenizer(shared / "data/models/lm7m/llama2c/tokenizer.bin",
                                              {.vocab_size = fp.config.vocab_size, .name = {}});
  auto const vocab = rsq::model::to_gguf_vocab(tok);
  rsq::model::quantize_options opt;
  opt.method = rsq::model::quant_method::rtn;
  opt.grid = rsq::pack::block_grid(rsq::pack::ggml_type::q4_0);
  opt.solver.group_size = 32;
  auto const q = rsq::model::quantize_model(rsq::backend::cpu_eigen{}, rsq::model::llama_model(fp), {}, opt);

  auto const dir = fs::temp_directory_path() / "rsq_bench_gguf";
  fs::create_directories(dir);
  std::printf("# bench_gguf: writing lm7m as GGUF against one plain buffered write of the same bytes (median of %d)\n",
              reps);
  struct variant {
    char const* label;
    std::function<void(fs::path const&)> write;
  };
  for (variant const& v :
       {variant{"Q4_0 blocks from the solver's codes (save_gguf of a quantized_model)",
                [&](fs::path const& p) { (void)rsq::model::save_gguf(p, q, vocab); }},
        variant{"F16 linears from the float model (save_gguf of a llama_model)", [&](fs::path const& p) {
                  (void)rsq::model::save_gguf(p, fp, vocab, {.linear_type = rsq::pack::ggml_type::f16});
                }}}) {
    auto const [ours, base] = alternate(v.write, dir / "model.gguf", dir / "copy.gguf", reps);
    double const bytes = double(fs::file_size(dir / "model.gguf"));
    std::printf("\n### %s (%.1f MB)\n\n| write | seconds | MB/s | vs plain write |\n|---|---|---|---|\n", v.label,
                bytes / 1e6);
    row("plain buffered write of the same bytes", bytes, base, base);
    row("save_gguf", bytes, base, ours);
  }
  fs::remove_all(dir);
  return 0;
}
