// SPDX-License-Identifier: MIT
#pragma once
// What every rsq tool's main() does around its own work: the backend chosen by --backend, and the exit codes
// (0 done, 1 runtime error, 2 bad usage; 3, a numerical status, is returned by the tools themselves) with one-line
// error messages.

#include <cstdio>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>

#include <rsq/backend/tags.hpp>
#include <rsq/model/rotate.hpp>
#if defined(RSQ_WITH_CUDA) && RSQ_WITH_CUDA
#include <rsq/cuda.hpp>
#endif

#include "support/args.hpp"

namespace rsq_cli {

/// @p run(backend) on the CUDA backend when @p cuda (a build without it refused the option while parsing), else on
/// the CPU. @throws std::runtime_error when CUDA is asked for on a machine without a device
template <class F>
int on_backend(bool cuda, F&& run) {
#if defined(RSQ_WITH_CUDA) && RSQ_WITH_CUDA
  if (cuda) {
    if (rsq::cuda::device_count() == 0)
      throw std::runtime_error("--backend cuda: no CUDA device is available on this machine");
    return run(rsq::backend::cuda{});
  }
#else
  (void)cuda;
#endif
  return run(rsq::backend::cpu_eigen{});
}

/// One note per Hadamard of the rotation @p r that had no construction and got an orthogonal substitute (6 or 14
/// heads, say), so that the user knows the rotation is not the paper's Hadamard there.
inline void print_rotation_notes(char const* tool, std::optional<rsq::model::rotation_record> const& r) {
  if (!r) return;
  for (auto const& s : rsq::model::substitutes(*r))
    std::fprintf(stderr, "%s: note: %s (function-preserving; docs/rotation.md)\n", tool, s.c_str());
}

/// The exit status of @p body(), or 2 for a usage_error and 1 for any other exception, each printed as
/// "<tool>: error: <message><usage_hint>" (library messages lose their "rsq: " prefix).
template <class F>
int exit_status(char const* tool, F&& body, char const* usage_hint = "") {
  try {
    return body();
  } catch (usage_error const& e) {
    std::fprintf(stderr, "%s: error: %s%s\n", tool, e.what(), usage_hint);
    return 2;
  } catch (std::exception const& e) {
    std::string msg = e.what();
    if (msg.rfind("rsq: ", 0) == 0) msg = msg.substr(5);
    std::fprintf(stderr, "%s: error: %s\n", tool, msg.c_str());
    return 1;
  }
}

}  // namespace rsq_cli
