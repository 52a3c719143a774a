// SPDX-License-Identifier: MIT
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <rsq/model/tokenizer.hpp>

#include "model/model_test_support.hpp"
#include "support/shared_data.hpp"

using namespace rsq::model;

namespace {

using bytes = std::vector<std::byte>;

/// run.c's encode, literally: sorted vocabulary with binary search (std::lower_bound on strcmp order), and the merge
/// loop that rescans every adjacent pair after each merge. An independent reference for tokenizer::encode.
std::vector<std::int32_t> naive_encode(tokenizer const& t, std::string const& text, bool bos, bool eos) {
  std::vector<std::pair<std::string, std::int32_t>> sorted;
  for (std::int32_t i = 0; i < t.size(); ++i) sorted.emplace_back(t.pieces()[std::size_t(i)], i);
  std::stable_sort(sorted.begin(), sorted.end(), [](auto const& a, auto const& b) { return a.first < b.first; });
  auto lookup = [&](std::string const& s) -> std::int32_t {
    auto it = std::lower_bound(sorted.begin(), sorted.end(), s, [](auto const& a, std::string const& k) { return a.first < k; });
    return it != sorted.end() && it->first == s ? it->second : -1;
  };
  std::vector<std::int32_t> tokens;
  if (bos) tokens.push_back(1);
  if (!text.empty()) tokens.push_back(lookup(" "));
  std::string buf;
  for (std::size_t c = 0; c < text.size(); ++c) {
    if ((static_cast<unsigned char>(text[c]) & 0xC0) != 0x80) buf.clear();
    buf += text[c];
    char const next = c + 1 < text.size() ? text[c + 1] : '\0';
    if ((static_cast<unsigned char>(next) & 0xC0) == 0x80 && buf.size() < 4) continue;
    std::int32_t const id = lookup(buf);
    if (id != -1) {
      tokens.push_back(id);
    } else {
      for (char b : buf) tokens.push_back(std::int32_t(static_cast<unsigned char>(b)) + 3);
    }
    buf.clear();
  }
  for (;;) {
    float best_score = -1e10f;
    std::int32_t best_id = -1;
    std::ptrdiff_t best_idx = -1;
    for (std::size_t i = 0; i + 1 < tokens.size(); ++i) {
      std::int32_t const id = lookup(t.pieces()[std::size_t(tokens[i])] + t.pieces()[std::size_t(tokens[i + 1])]);
      if (id != -1 && t.scores()[std::size_t(id)] > best_score) {
        best_score = t.scores()[std::size_t(id)];
        best_id = id;
        best_idx = std::ptrdiff_t(i);
      }
    }
    if (best_idx == -1) break;
    tokens[std::size_t(best_idx)] = best_id;
    tokens.erase(tokens.begin() + best_idx + 1);
  }
  if (eos) tokens.push_back(2);
  return tokens;
}

void set_i32(bytes& b, std::size_t off, std::int32_t v) { std::memcpy(b.data() + off, &v, 4); }
void set_f32(bytes& b, std::size_t off, float v) { std::memcpy(b.data() + off, &v, 4); }

/// A tiny tokenizer: "<unk>", BOS, EOS, then pieces with scores, without byte fallbacks.
tokenizer toy() {
  return tokenizer({"<unk>", "\n<s>\n", "\n</s>\n", " ", "a", "b", "ab", " a", " ab", "ba"},
                   {0.f, 0.f, 0.f, -1.f, -2.f, -3.f, -0.5f, -0.7f, -0.2f, -0.1f});
}

}  // namespace

TEST_SUITE("model.tokenizer") {
  TEST_CASE("tok512: pieces as documented, and the first story is 85 tokens with BOS") {
    RSQ_NEED_SHARED(shared);
    auto const t = load_tokenizer(shared / "data/models/tok512.bin", {.vocab_size = 512});
    CHECK(t.size() == 512);
    for (int b = 0; b < 256; ++b) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "<0x%02X>", b);
      CHECK(t.piece(3 + b) == buf);
      CHECK(t.decode_piece(5, 3 + b) == std::string(1, char(b)));
    }
    auto const stories = rsq_test::split_stories(rsq_test::read_text(shared / "data/text/tinystories_val.txt"));
    auto const e = t.encode(stories.at(0), {.bos = true});
    CHECK(e.size() == 85);
    CHECK(e.front() == tokenizer::bos_id);
    CHECK(t.encode(stories.at(0), {.bos = false}).size() == 84);
    auto const with_eos = t.encode(stories.at(0), {.bos = true, .eos = true});
    CHECK(with_eos.size() == 86);
    CHECK(with_eos.back() == tokenizer::eos_id);
    // Reading to the end of the file finds the same 512 pieces.
    CHECK(load_tokenizer(shared / "data/models/tok512.bin") == t);
  }

  TEST_CASE("tok512: encode equals run.c's literal algorithm, decode inverts it") {
    RSQ_NEED_SHARED(shared);
    auto const t = load_tokenizer(shared / "data/models/tok512.bin", {.vocab_size = 512});
    auto stories = rsq_test::split_stories(rsq_test::read_text(shared / "data/text/tinystories_val.txt"));
    stories.resize(120);
    // Texts that need the byte fallback, multi-byte codepoints, stray continuation bytes and over-long sequences.
    stories.push_back("caf\xC3\xA9 na\xC3\xAFve \xF0\x9F\x98\x80 \xE2\x80\x94 end");
    stories.push_back("\x80\x80\x80\x80\x80\x80 stray");
    stories.push_back("\xF8\x88\x80\x80\x80\x80 overlong");
    stories.push_back("  leading and trailing spaces  \n\ttabs\n");
    stories.push_back("x");
    for (auto const& s : stories) {
      CAPTURE(s);
      for (bool bos : {true, false}) {
        auto const e = t.encode(s, {.bos = bos, .eos = !bos});
        CHECK(e == naive_encode(t, s, bos, !bos));
        CHECK(t.decode(e) == (bos ? s : " " + s));
      }
    }
  }

  TEST_CASE("lm7m and lm16m: encode (heap-ordered merges) equals run.c's literal algorithm on their texts") {
    RSQ_NEED_SHARED(shared);
    struct model_text {
      char const* tokenizer;
      char const* text;
    };
    for (auto const& pair : {model_text{"data/models/lm7m/llama2c/tokenizer.bin", "data/text/mix_valid.txt"},
                             model_text{"data/models/lm16m/llama2c/tokenizer.bin", "data/text/prose_valid.txt"}}) {
      std::string const tok_path = pair.tokenizer, text_path = pair.text;  // (clang: no structured bindings in CAPTURE)
      CAPTURE(tok_path);
      if (!std::filesystem::exists(shared / tok_path) || !std::filesystem::exists(shared / text_path)) {
        MESSAGE("SKIPPED: ", tok_path, " or ", text_path, " not in ../shared");
        continue;
      }
      auto const t = load_tokenizer(shared / tok_path);
      auto docs = rsq_test::split_stories(rsq_test::read_text(shared / text_path));
      std::size_t compared = 0;
      for (auto const& d : docs) {
        if (d.size() > 6000) continue;  // the literal algorithm is quadratic
        CHECK(t.encode(d, {.bos = true}) == naive_encode(t, d, true, false));
        if (++compared == 40) break;
      }
      CHECK(compared == 40);
    }
  }

  TEST_CASE("byte fallback and the empty text") {
    RSQ_NEED_SHARED(shared);
    auto const t = load_tokenizer(shared / "data/models/tok512.bin", {.vocab_size = 512});
    std::string const emoji = "\xF0\x9F\x98\x80";
    REQUIRE(t.find(emoji) == -1);
    REQUIRE(t.find(" ") >= 0);
    std::vector<std::int32_t> const want = {1, t.find(" "), 0xF0 + 3, 0x9F + 3, 0x98 + 3, 0x80 + 3};
    CHECK(t.encode(emoji) == want);
    CHECK(t.encode("", {.bos = true}) == std::vector<std::int32_t>{1});
    CHECK(t.encode("", {.bos = false}).empty());
    CHECK(t.encode("", {.bos = true, .eos = true}) == std::vector<std::int32_t>{1, 2});
  }

  TEST_CASE("merges: highest score first, leftmost on ties, scores at or below -1e10 never merge") {
    auto const t = toy();
    // " " a b: candidates " a" (-0.7), "ab" (-0.5) -> ab; then " " + "ab" = " ab" (-0.2).
    CHECK(t.encode("ab", {.bos = false}) == std::vector<std::int32_t>{8});
    // " " b a: candidates "ba" (-0.1) -> " " "ba"; " ba" is no piece.
    CHECK(t.encode("ba", {.bos = false}) == std::vector<std::int32_t>{3, 9});
    // Ties: "abab" -> " " a b a b; pairs ab(-0.5) ba(-0.1) ab(-0.5): "ba" first -> " " a ba b; then " a" (-0.7).
    CHECK(t.encode("abab", {.bos = false}) == naive_encode(t, "abab", false, false));
    tokenizer tie({"<unk>", "s", "e", " ", "x", "xx"}, {0.f, 0.f, 0.f, 0.f, 0.f, 1.f});
    // " " x x x: (x,x) at 1 and 2 tie; the leftmost merges.
    CHECK(tie.encode("xxx", {.bos = false}) == std::vector<std::int32_t>{3, 5, 4});
    tokenizer never({"<unk>", "s", "e", " ", "x", "xx"}, {0.f, 0.f, 0.f, 0.f, 0.f, -1e10f});
    CHECK(never.encode("xx", {.bos = false}) == std::vector<std::int32_t>{3, 4, 4});
    CHECK(tie.decode(std::vector<std::int32_t>{1, 3, 5}) == "xx");  // after BOS the leading space is dropped
    CHECK(tie.decode_piece(1, 3).empty());
    CHECK(tie.decode_piece(4, 3) == " ");
  }

  TEST_CASE("bad arguments") {
    auto const t = toy();
    CHECK_THROWS_WITH_AS((void)t.encode(std::string("a\0b", 3)), doctest::Contains("NUL byte at 1"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)t.encode("a\xC3\xA9"), doctest::Contains("needs the byte-fallback pieces 3..258"),
                         rsq::invalid_argument);
    tokenizer no_space({"<unk>", "s", "e", "x"}, {0.f, 0.f, 0.f, 0.f});
    CHECK_THROWS_WITH_AS((void)no_space.encode("x"), doctest::Contains("no \" \" piece"), rsq::invalid_argument);
    tokenizer two({"a", " "}, {0.f, 0.f});
    CHECK_THROWS_WITH_AS((void)two.encode("a"), doctest::Contains("BOS/EOS need at least 3 pieces"),
                         rsq::invalid_argument);
    CHECK(two.encode("a", {.bos = false}) == std::vector<std::int32_t>{1, 0});
    CHECK_THROWS_WITH_AS((void)t.decode_piece(0, 10), doctest::Contains("token id 10 is outside the vocabulary [0, 10)"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)t.decode(std::vector<std::int32_t>{4, -1}), doctest::Contains("token id -1"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(tokenizer({"a", "b"}, {0.f}), doctest::Contains("2 pieces but 1 scores"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(tokenizer({}, {}), doctest::Contains("number of pieces must be in [1,"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(tokenizer({"a", ""}, {0.f, 0.f}), doctest::Contains("piece 1 has length 0"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(tokenizer({"abc"}, {0.f}, 2), doctest::Contains("piece 0 has length 3"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(tokenizer({std::string("a\0", 2)}, {0.f}), doctest::Contains("piece 0 contains a NUL byte"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(tokenizer({"a"}, {std::numeric_limits<float>::quiet_NaN()}),
                         doctest::Contains("score of piece 0 is not finite"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(tokenizer({"a"}, {0.f}, -1), doctest::Contains("max_token_length must be in [0,"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)parse_tokenizer(serialize_tokenizer(t), {.vocab_size = 0}),
                         doctest::Contains("vocab_size must be in [1,"), rsq::invalid_argument);
  }

  TEST_CASE("write-read round trip is exact; tok512 is reproduced byte for byte") {
    auto const t = toy();
    auto const b = serialize_tokenizer(t);
    CHECK(parse_tokenizer(b) == t);
    CHECK(parse_tokenizer(b, {.vocab_size = 10}) == t);
    CHECK(parse_tokenizer(b).max_token_length() == 6);  // "\n</s>\n"
    auto const dir = rsq_test::temp_dir("tokenizer_roundtrip");
    save_tokenizer(dir / "tok.bin", t);
    CHECK_FALSE(std::filesystem::exists(dir / "tok.bin.tmp"));
    CHECK(load_tokenizer(dir / "tok.bin") == t);
    CHECK_THROWS_WITH_AS(save_tokenizer("/nonexistent/dir/tok.bin", t), doctest::Contains("cannot open for writing"),
                         rsq::io_error);
    CHECK_THROWS_WITH_AS((void)load_tokenizer("/nonexistent/dir/tok.bin"),
                         doctest::Contains("/nonexistent/dir/tok.bin: no such file"), rsq::io_error);
    RSQ_NEED_SHARED(shared);
    auto const raw = rsq::model::detail::read_file(shared / "data/models/tok512.bin");
    CHECK(serialize_tokenizer(parse_tokenizer(raw)) == raw);
  }

  TEST_CASE("corrupt tokenizer files are rejected with clear messages") {
    auto const good = serialize_tokenizer(toy());
    SUBCASE("truncated at every offset (with the vocabulary size known)") {
      for (std::size_t n = 0; n < good.size(); ++n)
        CHECK_THROWS_WITH_AS((void)parse_tokenizer(std::span<const std::byte>(good.data(), n),
                                                   {.vocab_size = 10, .name = "t.bin"}),
                             doctest::Contains("t.bin: llama2c tokenizer truncated"), rsq::io_error);
    }
    SUBCASE("truncated inside a piece (reading to the end)") {
      for (std::size_t n = 5; n < good.size(); ++n) {
        std::span<const std::byte> cut(good.data(), n);
        // Cuts at a piece boundary give a valid, shorter tokenizer; any other cut is truncated.
        try {
          auto const t = parse_tokenizer(cut);
          CHECK(t.size() < 10);
          CHECK(serialize_tokenizer(t).size() == n);
        } catch (rsq::io_error const& e) {
          CHECK(std::string(e.what()).find("truncated") != std::string::npos);
        }
      }
    }
    SUBCASE("trailing bytes after the announced pieces") {
      auto b = good;
      b.resize(b.size() + 3, std::byte{7});
      CHECK_THROWS_WITH_AS((void)parse_tokenizer(b, {.vocab_size = 10}), doctest::Contains("3 unexpected trailing bytes"),
                           rsq::io_error);
      CHECK_THROWS_WITH_AS((void)parse_tokenizer(good, {.vocab_size = 9}), doctest::Contains("unexpected trailing bytes"),
                           rsq::io_error);
      CHECK_THROWS_WITH_AS((void)parse_tokenizer(good, {.vocab_size = 11}), doctest::Contains("truncated"), rsq::io_error);
    }
    SUBCASE("bad max_token_length") {
      for (std::int32_t v : {0, -1, (1 << 16) + 1, std::numeric_limits<std::int32_t>::min()}) {
        auto b = good;
        set_i32(b, 0, v);
        CHECK_THROWS_WITH_AS((void)parse_tokenizer(b), doctest::Contains(("max_token_length = " + std::to_string(v)).c_str()),
                             rsq::io_error);
      }
      auto b = good;
      set_i32(b, 0, 3);  // shorter than "<unk>"
      CHECK_THROWS_WITH_AS((void)parse_tokenizer(b), doctest::Contains("piece 0 has length 5 at offset 8, outside [1, max_token_length = 3]"),
                           rsq::io_error);
    }
    SUBCASE("bad piece lengths, NaN scores, NUL bytes") {
      // Piece 0 ("<unk>"): score at offset 4, length at 8, bytes at 12.
      for (std::int32_t v : {0, -1, 7, 1 << 30}) {
        auto b = good;
        set_i32(b, 8, v);
        CHECK_THROWS_WITH_AS((void)parse_tokenizer(b), doctest::Contains(("piece 0 has length " + std::to_string(v)).c_str()),
                             rsq::io_error);
      }
      for (float v : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
        auto b = good;
        set_f32(b, 4, v);
        CHECK_THROWS_WITH_AS((void)parse_tokenizer(b), doctest::Contains("piece 0 has a non-finite score"), rsq::io_error);
      }
      auto b = good;
      b[13] = std::byte{0};
      CHECK_THROWS_WITH_AS((void)parse_tokenizer(b), doctest::Contains("piece 0 contains a NUL byte"), rsq::io_error);
      bytes only_header(good.begin(), good.begin() + 4);
      CHECK_THROWS_WITH_AS((void)parse_tokenizer(only_header), doctest::Contains("holds no pieces"), rsq::io_error);
    }
  }
}
