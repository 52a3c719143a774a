// SPDX-License-Identifier: MIT
// Encoding throughput of rsq::model::hf_tokenizer on one thread: lm7m's tokenizer.json (SentencePiece BPE with byte
// fallback) over mix_train.txt (3,029 documents, 18.9 MB), one encode call per document. Rows:
//  - cold: a fresh tokenizer, whose word cache fills during the pass (what a first pass over a corpus costs);
//  - warm: the median of the following passes (the cache holds the corpus's words);
//  - byte-level BPE: tests/model/fixtures/generated/llama3.tokenizer.json (Llama-3's regex pre-tokenizer through
//    PCRE2, a 660-piece vocabulary) on the same text, cold and warm.
// The `tokenizers` library's figures on the same work are measured outside this program (docs/model.md).
// Second table: the llama2.c tokenizer (rsq::model::tokenizer, heap-ordered merges) with lm16m's tokenizer.bin on
// prose_calib.txt, whole documents (up to 1.3 MB: run.c's rescanning merge loop never finished them) against the
// same text cut into 3 KB stories; the per-byte cost should not grow with the document.
//
// Usage: bench_tokenizer [reps]   (default 3; the text is read from $RSQ_SHARED_DIR or ../shared)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <rsq/model/calibration.hpp>
#include <rsq/model/hf_tokenizer.hpp>
#include <rsq/model/tokenizer.hpp>

#include "support/median_seconds.hpp"

namespace {

double seconds_of(auto&& f) {
  auto const t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  using namespace rsq::model;
  int const reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 3;
  std::filesystem::path shared = std::filesystem::path(__FILE__).parent_path() / "../../shared";
  if (char const* env = std::getenv("RSQ_SHARED_DIR")) shared = env;
  auto const text_path = shared / "data/text/mix_train.txt";
  auto const hf_path = shared / "data/models/lm7m/hf/tokenizer.json";
  if (!std::filesystem::exists(text_path) || !std::filesystem::exists(hf_path)) {
    std::printf("SKIPPED: %s or %s not found (set RSQ_SHARED_DIR)\n", text_path.string().c_str(),
                hf_path.string().c_str());
    return 0;
  }
  auto const docs = load_stories(text_path);
  double mb = 0;
  for (auto const& d : docs) mb += double(d.size()) / 1e6;
  std::size_t n_ids = 0;
  auto encode_all = [&](auto const& tok, auto const& opt) {
    n_ids = 0;
    for (auto const& d : docs) n_ids += tok.encode(d, opt).size();
  };

  struct row {
    std::string what;
    double s;
    std::size_t ids;
  };
  std::vector<row> rows;
  {
    auto const t = load_hf_tokenizer(hf_path);
    hf_encode_options const opt{.add_special_tokens = false};
    double const cold = seconds_of([&] { encode_all(t, opt); });
    rows.push_back({"lm7m tokenizer.json, cold cache", cold, n_ids});
    double const warm = rsq_bench::median_seconds(reps, [&] { encode_all(t, opt); });
    rows.push_back({"lm7m tokenizer.json, warm cache", warm, n_ids});
  }
  auto const bl_path = std::filesystem::path(__FILE__).parent_path() /
                       "../tests/model/fixtures/generated/llama3.tokenizer.json";
  if (std::filesystem::exists(bl_path)) {
    auto const t = load_hf_tokenizer(bl_path);
    hf_encode_options const opt{.add_special_tokens = false};
    double const cold = seconds_of([&] { encode_all(t, opt); });
    rows.push_back({"byte-level (Llama-3 regex), cold", cold, n_ids});
    double const warm = rsq_bench::median_seconds(reps, [&] { encode_all(t, opt); });
    rows.push_back({"byte-level (Llama-3 regex), warm", warm, n_ids});
  }

  std::printf("Encoding %s: %zu documents, %.1f MB, one thread (warm: median of %d)\n\n", text_path.string().c_str(),
              docs.size(), mb, reps);
  std::printf("| %-38s | %8s | %8s | %10s |\n", "tokenizer", "s", "MB/s", "ids");
  std::printf("|%s|%s|%s|%s|\n", std::string(40, '-').c_str(), std::string(10, '-').c_str(),
              std::string(10, '-').c_str(), std::string(12, '-').c_str());
  for (auto const& r : rows) std::printf("| %-38s | %8.3f | %8.1f | %10zu |\n", r.what.c_str(), r.s, mb / r.s, r.ids);

  auto const prose = shared / "data/text/prose_calib.txt", bin = shared / "data/models/lm16m/llama2c/tokenizer.bin";
  if (!std::filesystem::exists(prose) || !std::filesystem::exists(bin)) return 0;
  auto const tok = load_tokenizer(bin);
  auto const whole = load_stories(prose);
  std::vector<std::string> pieces;  // the same bytes in 3 KB stories, cut at a space where there is one
  std::size_t longest = 0;
  double prose_mb = 0;
  for (auto const& d : whole) {
    longest = std::max(longest, d.size());
    prose_mb += double(d.size()) / 1e6;
    for (std::size_t at = 0; at < d.size();) {
      std::size_t end = std::min(d.size(), at + 3000);
      if (end < d.size())
        if (auto sp = d.rfind(' ', end); sp != std::string::npos && sp > at) end = sp;
      pieces.push_back(d.substr(at, end - at));
      at = end;
    }
  }
  auto encode_docs = [&](std::vector<std::string> const& ds) {
    std::size_t n = 0;
    for (auto const& d : ds) n += tok.encode(d, {.bos = true}).size();
    return n;
  };
  std::size_t ids_whole = 0, ids_pieces = 0;
  double const t_whole = rsq_bench::median_seconds(reps, [&] { ids_whole = encode_docs(whole); });
  double const t_pieces = rsq_bench::median_seconds(reps, [&] { ids_pieces = encode_docs(pieces); });
  std::printf("\nllama2.c tokenizer (lm16m tokenizer.bin) on %s: %.1f MB, longest document %.2f MB, one thread "
              "(median of %d)\n\n", prose.string().c_str(), prose_mb, double(longest) / 1e6, reps);
  std::printf("| %-38s | %8s | %8s | %10s |\n", "documents", "s", "MB/s", "ids");
  std::printf("|%s|%s|%s|%s|\n", std::string(40, '-').c_str(), std::string(10, '-').c_str(),
              std::string(10, '-').c_str(), std::string(12, '-').c_str());
  std::printf("| %-38s | %8.3f | %8.1f | %10zu |\n", (std::to_string(whole.size()) + " whole documents").c_str(),
              t_whole, prose_mb / t_whole, ids_whole);
  std::printf("| %-38s | %8.3f | %8.1f | %10zu |\n", (std::to_string(pieces.size()) + " stories of 3 KB").c_str(),
              t_pieces, prose_mb / t_pieces, ids_pieces);
  return 0;
}
