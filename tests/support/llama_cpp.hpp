// SPDX-License-Identifier: MIT
#pragma once
// A real llama.cpp for the GGUF tests: the prebuilt libraries of the npm package node-llama-cpp (pinned in
// tests/llama_cpp/package.json; scripts/test.sh installs it with `npm ci`). The block quantizers and dequantizers and
// the GGUF reader of libggml-base.so are called through dlopen. Tests call RSQ_NEED_LLAMA_CPP(lib) first, which skips
// the test case *visibly* when the libraries are absent. RSQ_LLAMA_CPP_LIBS overrides the folder.

#include <doctest/doctest.h>

#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

namespace rsq_test {

/// The folder of node-llama-cpp's prebuilt linux-x64 libraries, when installed.
inline std::optional<std::filesystem::path> llama_cpp_libs() {
  std::filesystem::path p = RSQ_LLAMA_CPP_DIR;
  if (char const* env = std::getenv("RSQ_LLAMA_CPP_LIBS")) p = env;
  if (std::filesystem::exists(p / "libggml-base.so")) return p;
  return std::nullopt;
}

/// Functions of llama.cpp's libggml-base.so (ggml-quants.h: k elements, a multiple of 32; blocks as in GGUF).
struct ggml_base {
  using quantize_fn = void (*)(float const* x, void* y, std::int64_t k);
  using dequantize_fn = void (*)(void const* x, float* y, std::int64_t k);
  void* handle = nullptr;
  quantize_fn quantize_q4_0 = nullptr, quantize_q4_1 = nullptr, quantize_q8_0 = nullptr;
  dequantize_fn dequantize_q4_0 = nullptr, dequantize_q4_1 = nullptr, dequantize_q8_0 = nullptr;

  static std::optional<ggml_base> open(std::filesystem::path const& dir) {
    ggml_base g;
    g.handle = dlopen((dir / "libggml-base.so").c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!g.handle) return std::nullopt;
    auto sym = [&](char const* name) { return dlsym(g.handle, name); };
    g.quantize_q4_0 = reinterpret_cast<quantize_fn>(sym("quantize_row_q4_0_ref"));
    g.quantize_q4_1 = reinterpret_cast<quantize_fn>(sym("quantize_row_q4_1_ref"));
    g.quantize_q8_0 = reinterpret_cast<quantize_fn>(sym("quantize_row_q8_0_ref"));
    g.dequantize_q4_0 = reinterpret_cast<dequantize_fn>(sym("dequantize_row_q4_0"));
    g.dequantize_q4_1 = reinterpret_cast<dequantize_fn>(sym("dequantize_row_q4_1"));
    g.dequantize_q8_0 = reinterpret_cast<dequantize_fn>(sym("dequantize_row_q8_0"));
    if (!g.quantize_q4_0 || !g.quantize_q4_1 || !g.quantize_q8_0 || !g.dequantize_q4_0 || !g.dequantize_q4_1 ||
        !g.dequantize_q8_0)
      return std::nullopt;
    return g;
  }
};

}  // namespace rsq_test

#define RSQ_NEED_LLAMA_CPP(var)                                                                            \
  auto const var##_dir = ::rsq_test::llama_cpp_libs();                                                   \
  if (!var##_dir) {                                                                                      \
    MESSAGE("SKIPPED: llama.cpp libraries not found (cd tests/llama_cpp && npm ci; or set RSQ_LLAMA_CPP_LIBS)"); \
    return;                                                                                              \
  }                                                                                                      \
  auto const var##_opt = ::rsq_test::ggml_base::open(*var##_dir);                                        \
  REQUIRE_MESSAGE(var##_opt.has_value(), "libggml-base.so in ", var##_dir->string(),                    \
                  " lacks the block quantizers: ", dlerror());                                           \
  auto const& var = *var##_opt

#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

namespace rsq_test {

/// Whether Node.js and node-llama-cpp are installed (tests/llama_cpp/node_modules).
inline bool node_llama_cpp_available() {
  return std::filesystem::is_directory(std::filesystem::path(RSQ_LLAMA_CPP_SCRIPTS) / "node_modules/node-llama-cpp") &&
         std::system("node --version > /dev/null 2>&1") == 0;
}

/// Runs tests/llama_cpp/evaluate.mjs on @p request (written to @p scratch/request.json) and returns its JSON answer.
inline nlohmann::json run_llama_cpp(nlohmann::json const& request, std::filesystem::path const& scratch) {
  auto const req = scratch / "request.json";
  std::ofstream(req) << request.dump();
  std::string const cmd = "node " + (std::filesystem::path(RSQ_LLAMA_CPP_SCRIPTS) / "evaluate.mjs").string() + " " +
                          req.string() + " 2>&1";
  std::string out;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char buf[4096];
    while (std::size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
    int const status = pclose(p);
    REQUIRE_MESSAGE(status == 0, "node evaluate.mjs failed: ", out);
  }
  auto const brace = out.rfind("\n{");
  return nlohmann::json::parse(brace == std::string::npos ? out : out.substr(brace + 1));
}

}  // namespace rsq_test
