// SPDX-License-Identifier: MIT
// libFuzzer target: rsq::model::parse_llama2c_checkpoint on arbitrary bytes. Corrupt input must give rsq::io_error
// (anything else escaping, a sanitizer report or a trap is a bug). A buffer that parses must serialize back to the
// same bytes outside the unused RoPE tables, and must run through a short forward pass.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include <rsq/model/forward.hpp>
#include <rsq/model/llama2c.hpp>

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  using namespace rsq::model;
  std::span<const std::byte> in(reinterpret_cast<std::byte const*>(data), size);
  llama_model m;
  try {
    m = parse_llama2c_checkpoint(in);
  } catch (rsq::io_error const&) {
    return 0;
  }
  std::int32_t vocab_field;
  std::memcpy(&vocab_field, data + 20, 4);
  auto const out = serialize_llama2c_checkpoint(
      m, {.classifier = vocab_field < 0 ? classifier_storage::separate : classifier_storage::shared});
  if (out.size() != size) __builtin_trap();
  auto const& c = m.config;
  std::size_t const rope_bytes = 4 * 2 * std::size_t(c.seq_len) * std::size_t(c.head_size() / 2);
  std::size_t const cls_bytes = vocab_field < 0 ? 4 * std::size_t(c.vocab_size) * std::size_t(c.dim) : 0;
  std::size_t const rope_begin = size - cls_bytes - rope_bytes;
  if (std::memcmp(out.data(), data, rope_begin) != 0) __builtin_trap();
  if (std::memcmp(out.data() + rope_begin + rope_bytes, data + rope_begin + rope_bytes, cls_bytes) != 0)
    __builtin_trap();
  // A short forward: tokens 0 and vocab-1. Weights are finite but arbitrary, so activations may overflow to Inf,
  // which forward_layer reports as rsq::invalid_argument.
  std::vector<std::int32_t> tokens = {0, c.vocab_size - 1};
  int const L = c.seq_len >= 2 ? 2 : 1;
  try {
    auto const logits = forward(m, rsq::matrix_view<const std::int32_t>(tokens.data(), 1, L));
    if (logits.size() != std::size_t(L) * std::size_t(c.vocab_size)) __builtin_trap();
  } catch (rsq::invalid_argument const&) {
  }
  return 0;
}
