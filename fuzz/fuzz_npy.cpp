// SPDX-License-Identifier: MIT
// libFuzzer target: rsq::io::read_npy_header and load_npy on arbitrary bytes. load_npy reads from a path, so each
// input is written to a per-process temporary file first. Corrupt input must give rsq::io_error; a file that loads
// must have the element count its header announces.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include <unistd.h>

#include <rsq/io/npy.hpp>

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  // One file per process, removed when the fuzzer exits.
  static struct scratch_file {
    std::filesystem::path path =
        std::filesystem::temp_directory_path() / ("rsq_fuzz_npy_" + std::to_string(::getpid()) + ".npy");
    ~scratch_file() {
      std::error_code ec;
      std::filesystem::remove(path, ec);
    }
  } const scratch;
  auto const& path = scratch.path;
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<char const*>(data), std::streamsize(size));
  }
  try {
    auto const h = rsq::io::read_npy_header(path);
    if (h.data_offset > size) __builtin_trap();
  } catch (rsq::io_error const&) {
  }
  try {
    auto const a = rsq::io::load_npy<float, 2>(path, rsq::io::npy_conversion::numeric);
    if (a.size() != a.shape()[0] * a.shape()[1]) __builtin_trap();
  } catch (rsq::io_error const&) {
  }
  try {
    (void)rsq::io::load_npy<double, 1>(path, rsq::io::npy_conversion::exact);
  } catch (rsq::io_error const&) {
  }
  try {
    (void)rsq::io::load_npy<std::int32_t, 3>(path, rsq::io::npy_conversion::numeric);
  } catch (rsq::io_error const&) {
  }
  return 0;
}
