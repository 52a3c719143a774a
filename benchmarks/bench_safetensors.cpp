// SPDX-License-Identifier: MIT
// Loading checkpoints against reading their bytes, side by side in one run (issue 15: within 1.5x of `cat`):
//  - a generated safetensors file of about 1 GB (F32 and BF16 tensors of Llama-like shapes), written by rsq;
//  - lm7m's model.safetensors and the whole model through load_hf_model (../shared, when present).
// Each row: `cat FILE > /dev/null` (the bytes, from the page cache after a warm-up), opening the file (header
// validation only), every tensor converted to float (to_float: reads every byte), and for F32 the in-place views
// summed (view_float: no copy). Median of the repetitions after one warm-up; the files stay in the page cache, so the
// figures compare the work on the bytes, not the disk.
//
// Usage: bench_safetensors [megabytes reps]   (defaults 1024 5)
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <rsq/io/safetensors.hpp>
#include <rsq/model/hf_model.hpp>

#include "support/median_seconds.hpp"

namespace fs = std::filesystem;
using rsq::index_t;

namespace {

double cat_seconds(fs::path const& p, int reps) {
  std::string const cmd = "cat '" + p.string() + "' > /dev/null";
  return rsq_bench::median_seconds(reps, [&] {
    if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "cat failed\n");
  });
}

/// Sum of every F32 tensor read in place (so the compiler cannot drop the reads).
double sum_in_place(rsq::io::safetensors_file const& f) {
  double s = 0;
  for (auto const& e : f.tensors()) {
    if (e.dtype != rsq::io::tensor_dtype::f32 || e.shape.size() != 2) continue;
    auto const v = f.view_float<2>(e.name);
    float acc = 0;
    for (index_t i = 0; i < v.rows(); ++i)
      for (index_t j = 0; j < v.cols(); ++j) acc += v(i, j);
    s += acc;
  }
  return s;
}

double convert_all(rsq::io::safetensors_file const& f) {
  double s = 0;
  for (auto const& e : f.tensors()) {
    if (e.shape.size() == 2) s += f.to_float<2>(e.name)(0, 0);
    if (e.shape.size() == 1) s += f.to_float<1>(e.name)(0);
  }
  return s;
}

void row(char const* what, double bytes, double cat, double t) {
  std::printf("| %s | %.3f | %.0f | %.2f |\n", what, t, bytes / t / 1e6, t / cat);
}

void bench_file(char const* label, fs::path const& p, int reps) {
  double const bytes = double(fs::file_size(p));
  double const cat = cat_seconds(p, reps);
  double sink = 0;
  double const open = rsq_bench::median_seconds(reps, [&] { sink += double(rsq::io::safetensors_file::open(p).tensors().size()); });
  double const conv = rsq_bench::median_seconds(reps, [&] { sink += convert_all(rsq::io::safetensors_file::open(p)); });
  double const view = rsq_bench::median_seconds(reps, [&] { sink += sum_in_place(rsq::io::safetensors_file::open(p)); });
  std::printf("\n### %s (%.0f MB)\n\n| operation | seconds | MB/s | vs cat |\n|---|---|---|---|\n", label, bytes / 1e6);
  row("cat FILE > /dev/null", bytes, cat, cat);
  row("open (map + validate the header)", bytes, cat, open);
  row("open + every tensor to float", bytes, cat, conv);
  row("open + F32 tensors summed in place", bytes, cat, view);
  if (sink == 12345.678) std::printf("(sink)\n");
}

}  // namespace

int main(int argc, char** argv) {
  double const megabytes = argc > 1 ? std::atof(argv[1]) : 1024;
  int const reps = argc > 2 ? std::atoi(argv[2]) : 5;
  std::printf("# bench_safetensors: loading against reading the bytes (median of %d, page cache warm)\n", reps);

  // ~1 GB of Llama-like tensors: 4096 x 4096 F32 and 14336 x 4096 BF16, alternating.
  auto const dir = fs::temp_directory_path() / "rsq_bench_safetensors";
  fs::create_directories(dir);
  std::vector<std::vector<float>> data;
  std::vector<rsq::io::tensor_record> recs;
  double total = 0;
  for (int k = 0; total < megabytes * 1e6; ++k) {
    bool const big = k % 2 == 1;
    index_t const rows = big ? 14336 : 4096, cols = 4096;
    data.emplace_back(std::size_t(rows * cols), 0.001f * float(k + 1));
    auto const dtype = big ? rsq::io::tensor_dtype::bf16 : rsq::io::tensor_dtype::f32;
    recs.push_back(rsq::io::make_record("model.layers." + std::to_string(k) + ".weight", data.back(), {rows, cols}, dtype));
    total += double(recs.back().bytes());
    if (big) data.back() = {};  // BF16 records own their copy
  }
  auto const file = dir / "model.safetensors";
  rsq::io::save_safetensors(file, recs);
  recs.clear();
  data.clear();
  bench_file("generated, F32 and BF16", file, reps);
  fs::remove_all(dir);

  char const* env = std::getenv("RSQ_SHARED_DIR");
  fs::path const shared = env ? fs::path(env) : fs::path("../shared");
  auto const lm7m = shared / "data/models/lm7m/hf";
  if (fs::exists(lm7m / "model.safetensors")) {
    bench_file("lm7m model.safetensors, F32", lm7m / "model.safetensors", reps);
    double const cat = cat_seconds(lm7m / "model.safetensors", reps);
    double const load = rsq_bench::median_seconds(reps, [&] { (void)rsq::model::load_hf_model(lm7m); });
    std::printf("| load_hf_model (config, weights to the model, q/k permuted) | %.3f | %.0f | %.2f |\n", load,
                double(fs::file_size(lm7m / "model.safetensors")) / load / 1e6, load / cat);
  } else {
    std::printf("\n(lm7m not found under %s: set RSQ_SHARED_DIR)\n", shared.string().c_str());
  }
  return 0;
}
