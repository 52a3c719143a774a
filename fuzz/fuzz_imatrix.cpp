// SPDX-License-Identifier: MIT
// libFuzzer target: rsq::io::parse_imatrix (GGUF or legacy .dat, told apart by the magic) on arbitrary bytes.
// Corrupt input must give rsq::io_error; an imatrix that parses has at least one entry, and every entry a name, at
// least one value, and finite non-negative sums and count.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>

#include <rsq/io/imatrix.hpp>

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  try {
    auto const m = rsq::io::parse_imatrix(std::as_bytes(std::span(data, size)));
    if (m.entries.empty() || m.chunk_count < 0 || m.chunk_size < 0) __builtin_trap();
    for (auto const& e : m.entries) {
      if (e.name.empty() || e.in_sum2.empty()) __builtin_trap();
      if (!std::isfinite(e.count) || e.count < 0) __builtin_trap();
      for (float v : e.in_sum2)
        if (!(v >= 0)) __builtin_trap();  // finite, except that a huge .dat value times the chunk size may be Inf
    }
  } catch (rsq::io_error const&) {
  }
  return 0;
}
