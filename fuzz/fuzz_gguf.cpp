// SPDX-License-Identifier: MIT
// libFuzzer target: rsq::io::gguf_file::parse on arbitrary bytes. Corrupt input must give rsq::io_error; a file
// that parses must have every tensor inside the file with the byte count of its type and dimensions, must convert
// to float (or refuse with rsq::io_error), and must survive a round trip through gguf_writer: what the reader
// accepts the writer accepts, and the file it writes parses to the same metadata and tensors.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <sstream>
#include <string>

#include <rsq/io/gguf.hpp>

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  auto const bytes = std::as_bytes(std::span(data, size));
  rsq::io::gguf_file f;
  try {
    f = rsq::io::gguf_file::parse(bytes);
  } catch (rsq::io_error const&) {
    return 0;
  }
  rsq::io::gguf_writer w;
  for (auto const& kv : f.metadata()) {
    if (f.find(kv.key) != &kv.value) __builtin_trap();
    w.set(kv.key, kv.value);
  }
  for (auto const& t : f.tensors()) {
    auto const b = f.bytes(t);
    if (b.data() < bytes.data() || b.data() + b.size() > bytes.data() + bytes.size()) __builtin_trap();
    if (b.size() != t.bytes || t.offset % f.alignment() != 0) __builtin_trap();
    if (t.elements() <= (1 << 16)) {
      try {
        auto const v = f.to_float(t.name);
        if (v.values.size() != std::size_t(t.elements())) __builtin_trap();
      } catch (rsq::io_error const&) {
      }
    }
    w.add_tensor(t.name, t.ne, t.type, b);  // never throws for a tensor the reader accepted
  }
  std::ostringstream os;
  w.write(os);
  std::string const again = os.str();
  auto const g = rsq::io::gguf_file::parse(std::as_bytes(std::span(again.data(), again.size())));
  if (g.metadata().size() != f.metadata().size() || g.tensors().size() != f.tensors().size()) __builtin_trap();
  // The metadata compared bit for bit (a NaN value is not == itself): the header written from the second parse is
  // the first one's.
  rsq::io::gguf_writer w2;
  for (auto const& kv : g.metadata()) w2.set(kv.key, kv.value);
  for (auto const& t : g.tensors()) w2.add_tensor(t.name, t.ne, t.type, g.bytes(t));
  if (w2.header() != w.header()) __builtin_trap();
  for (std::size_t i = 0; i < g.tensors().size(); ++i) {
    auto const& a = f.tensors()[i];
    auto const& b = g.tensors()[i];
    if (a.name != b.name || a.ne != b.ne || a.type != b.type) __builtin_trap();
    if (std::memcmp(f.bytes(a).data(), g.bytes(b).data(), a.bytes) != 0) __builtin_trap();
  }
  return 0;
}
