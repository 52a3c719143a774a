// SPDX-License-Identifier: MIT
#pragma once
// Running a command-line tool built from examples/ and capturing what it prints and its exit status.

#include <doctest/doctest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

namespace rsq_test {

struct run_result {
  int status = -1;
  std::string output;  // stdout and stderr together
};

/// Runs `<tools dir>/<tool> <args>` through the shell.
inline run_result run_tool_named(std::string const& tool, std::string const& args) {
  std::string const cmd = std::string(RSQ_TOOLS_DIR) + "/" + tool + " " + args + " 2>&1";
  run_result r;
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::array<char, 4096> buf{};
  while (std::fgets(buf.data(), int(buf.size()), p)) r.output += buf.data();
  int const st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

/// Checks that @p result is a refusal for bad usage: exit status 2, a message containing @p says, and nothing at
/// @p out.
inline void check_refused(run_result const& result, std::string const& says, std::filesystem::path const& out) {
  INFO(result.output);
  CHECK(result.status == 2);
  CHECK(result.output.find(says) != std::string::npos);
  CHECK(!std::filesystem::exists(out));
}

}  // namespace rsq_test
