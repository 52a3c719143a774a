// SPDX-License-Identifier: MIT
// A benchmark's table goes to stdout and, when --out named a file, to that file too (the copy that goes into docs/).
#pragma once

#include <cstdarg>
#include <cstdio>
#include <string>

namespace rsq_bench {

inline FILE*& report_file() {
  static FILE* f = nullptr;
  return f;
}

/// Opens @p path for the copy of the table (nothing when empty).
inline void open_report(std::string const& path) {
  if (!path.empty()) report_file() = std::fopen(path.c_str(), "w");
}

inline void close_report() {
  if (report_file()) std::fclose(report_file());
  report_file() = nullptr;
}

/// printf to stdout (flushed: the device's reply carries the end of the output) and to the report file.
inline void emit(char const* fmt, ...) __attribute__((format(printf, 1, 2)));
inline void emit(char const* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vprintf(fmt, ap);
  va_end(ap);
  if (FILE* f = report_file()) {
    va_start(ap, fmt);
    std::vfprintf(f, fmt, ap);
    va_end(ap);
  }
  std::fflush(stdout);
}

}  // namespace rsq_bench
