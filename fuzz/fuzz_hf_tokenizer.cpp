// SPDX-License-Identifier: MIT
// libFuzzer target: rsq::model::parse_hf_tokenizer on arbitrary bytes (a tokenizer.json). Corrupt or unsupported
// input must give rsq::io_error. A file that parses must encode a fixed text (ASCII, Latin-1, CJK, emoji, added-token
// look-alikes, whitespace runs) to ids inside the vocabulary, or refuse with rsq::invalid_argument (a byte with no
// piece and no unk_token, a character an NFC normalizer cannot handle), and decoding the ids must not fail.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <rsq/model/hf_tokenizer.hpp>

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  using namespace rsq::model;
  std::string_view const json(reinterpret_cast<char const*>(data), size);
  hf_tokenizer t;
  try {
    t = parse_hf_tokenizer(json);
  } catch (rsq::io_error const&) {
    return 0;
  }
  constexpr std::string_view text =
      "The cat's 12345 caf\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x98\x80\n\n  <s></s><|endoftext|>\t x   y";
  for (bool special : {true, false}) {
    try {
      auto const ids = t.encode(text, {.add_special_tokens = special, .parse_special = special});
      for (auto id : ids)
        if (id < 0 || id >= t.vocab_size()) __builtin_trap();
      (void)t.decode(ids, {.skip_special_tokens = !special});
    } catch (rsq::invalid_argument const&) {
    }
  }
  return 0;
}
