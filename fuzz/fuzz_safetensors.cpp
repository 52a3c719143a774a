// SPDX-License-Identifier: MIT
// libFuzzer target: rsq::io::safetensors_file::parse on arbitrary bytes, then every tensor converted to float.
// Corrupt input must give rsq::io_error; a file that parses must have tensors inside its buffer whose byte counts
// match their shapes.
#include <cstddef>
#include <cstdint>
#include <span>

#include <rsq/io/safetensors.hpp>

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  auto const bytes = std::as_bytes(std::span(data, size));
  try {
    auto const f = rsq::io::safetensors_file::parse(bytes);
    for (auto const& e : f.tensors()) {
      auto const b = f.bytes(e);
      if (b.data() < bytes.data() || b.data() + b.size() > bytes.data() + bytes.size()) __builtin_trap();
      if (std::uint64_t(e.elements()) * rsq::io::size_of(e.dtype) != b.size()) __builtin_trap();
      try {
        if (e.shape.size() == 1) (void)f.to_float<1>(e.name);
        if (e.shape.size() == 2) (void)f.to_float<2>(e.name);
      } catch (rsq::io_error const&) {
      }
    }
  } catch (rsq::io_error const&) {
  }
  return 0;
}
