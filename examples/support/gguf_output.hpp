// SPDX-License-Identifier: MIT
#pragma once
// What the tools print and write for llama.cpp: the summary of a written GGUF (what it holds, what loads it, the
// linears kept in F16) and the importance matrix (GGUF, or llama.cpp's legacy format for a name ending .dat).

#include <cstdio>
#include <filesystem>
#include <string>

#include <rsq/io/imatrix.hpp>
#include <rsq/model/gguf.hpp>

namespace rsq_cli {

/// Prints the summary of a GGUF save_gguf wrote to @p out, each line after @p prefix.
inline void print_gguf_summary(std::FILE* out, char const* prefix, rsq::model::gguf_summary const& s) {
  std::fprintf(out, "%swrote %s: GGUF v3, llama architecture, linears %s, %d tensors, %.1f MB; llama.cpp loads it "
               "(llama-cli -m, llama-server, node-llama-cpp, LM Studio, Ollama)\n", prefix, s.path.string().c_str(),
               std::string(rsq::pack::traits(s.linear_type).name).c_str(), s.tensors, double(s.bytes) / 1e6);
  if (s.kept.empty()) return;
  std::fprintf(out, "%s%zu linears kept in F16 (input size not a multiple of 32):", prefix, s.kept.size());
  for (auto const& k : s.kept) std::fprintf(out, " %s", k.c_str());
  std::fprintf(out, "\n");
}

/// Writes @p m to @p path (legacy .dat for that extension, else GGUF) and prints what was written to @p out.
inline void write_imatrix(std::FILE* out, char const* prefix, std::filesystem::path const& path,
                          rsq::io::imatrix const& m) {
  bool const dat = path.extension() == ".dat";
  if (dat) rsq::io::write_imatrix_dat(path, m);
  else rsq::io::write_imatrix_gguf(path, m);
  std::fprintf(out, "%swrote %s: importance matrix (%s, %zu linears, %d chunks of %d tokens) for llama-quantize "
               "--imatrix\n", prefix, path.string().c_str(), dat ? "legacy .dat" : "GGUF", m.entries.size(),
               m.chunk_count, m.chunk_size);
}

}  // namespace rsq_cli
