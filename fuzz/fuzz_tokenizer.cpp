// SPDX-License-Identifier: MIT
// libFuzzer target: rsq::model::parse_tokenizer on arbitrary bytes. Corrupt input must give rsq::io_error. A buffer
// that parses must serialize back to exactly the same bytes; encoding a text taken from the input must give ids
// inside the vocabulary (or rsq::invalid_argument when the vocabulary lacks " " or the byte fallbacks), and
// decoding them must not fail.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include <rsq/model/tokenizer.hpp>

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  using namespace rsq::model;
  std::span<const std::byte> in(reinterpret_cast<std::byte const*>(data), size);
  tokenizer t;
  try {
    t = parse_tokenizer(in);
  } catch (rsq::io_error const&) {
    return 0;
  }
  auto const out = serialize_tokenizer(t);
  if (out.size() != size || std::memcmp(out.data(), data, size) != 0) __builtin_trap();
  // Text: the last bytes of the input, NULs replaced (run.c reads C strings).
  std::size_t const n = size < 48 ? size : 48;
  std::string text(reinterpret_cast<char const*>(data + size - n), n);
  for (char& ch : text)
    if (ch == '\0') ch = ' ';
  for (bool bos : {true, false}) {
    try {
      auto const ids = t.encode(text, {.bos = bos, .eos = !bos});
      for (auto id : ids)
        if (id < 0 || id >= t.size()) __builtin_trap();
      (void)t.decode(ids);
    } catch (rsq::invalid_argument const&) {
    }
  }
  return 0;
}
