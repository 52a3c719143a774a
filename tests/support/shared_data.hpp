// SPDX-License-Identifier: MIT
#pragma once
// Locating ../shared (golden data of the reference implementations, the real model). Tests that need it call
// RSQ_NEED_SHARED(), which skips the test case *visibly* (a doctest MESSAGE "SKIPPED ...") when it is absent.
// The environment variable RSQ_SHARED_DIR overrides the folder configured at build time.

#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>

namespace rsq_test {

inline std::optional<std::filesystem::path> shared_dir() {
  std::filesystem::path p = RSQ_SHARED_DIR;
  if (char const* env = std::getenv("RSQ_SHARED_DIR")) p = env;
  if (std::filesystem::is_directory(p / "golden")) return p;
  return std::nullopt;
}

/// A fresh, empty scratch directory for a test.
inline std::filesystem::path temp_dir(std::string const& name) {
  auto p = std::filesystem::path(RSQ_TEST_TMP_DIR) / name;
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

/// Reads a small text file (meta.json and the like).
inline std::string read_text(std::filesystem::path const& p) {
  std::ifstream f(p);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

}  // namespace rsq_test

#define RSQ_NEED_SHARED(var)                                                                   \
  auto const var##_opt = ::rsq_test::shared_dir();                                           \
  if (!var##_opt) {                                                                          \
    MESSAGE("SKIPPED: ../shared (golden data) not found; set RSQ_SHARED_DIR to run this test"); \
    return;                                                                                  \
  }                                                                                          \
  std::filesystem::path const var = *var##_opt
