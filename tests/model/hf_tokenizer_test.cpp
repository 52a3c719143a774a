// SPDX-License-Identifier: MIT
// rsq::model::hf_tokenizer: Hugging Face tokenizer.json of the two kinds (SentencePiece BPE with byte fallback,
// byte-level BPE with a regex pre-tokenizer). References:
//  - lm7m / lm16m: the `tokenizers` library's ids of every validation document (hashed below: tokenizers 0.23.2, its
//    Node binding), and the llama2.c twin tokenizer.bin (tokenizer.hpp), which llama2.c merges by piece score;
//  - hand-made byte-level fixtures (tests/model/fixtures/*_hand.tokenizer.json) whose ids are worked out by hand
//    in the comments (and checked once against tokenizers 0.23.2: the same ids);
//  - generated fixtures: tiny tokenizers with Llama-3's and Qwen2's pre-tokenizers, trained by `tokenizers`, and the
//    ids it gives for a mixed text; made twice, through its Node binding (tests/model/fixtures/generated/,
//    scripts/make-tokenizer-fixtures.mjs, tokenizers 0.23.2) and through Python on the GPU machine
//    (generated_python/, scripts/make-tokenizer-fixtures.py, 2026-12-05; its training gives other merges).
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <rsq/model/calibration.hpp>
#include <rsq/model/hf_tokenizer.hpp>
#include <rsq/model/tokenizer.hpp>

#include "support/shared_data.hpp"

using namespace rsq::model;
using ids = std::vector<std::int32_t>;

namespace {

std::filesystem::path fixtures() { return std::filesystem::path(__FILE__).parent_path() / "fixtures"; }

/// FNV-1a over the ids of every document (int32 little-endian), with 0xFFFFFFFF after each document.
struct ids_hash {
  std::uint64_t h = 1469598103934665603ull;
  std::size_t n = 0;
  void add(std::uint32_t v) {
    for (int k = 0; k < 4; ++k) {
      h ^= (v >> (8 * k)) & 0xFF;
      h *= 1099511628211ull;
    }
  }
  void add_document(ids const& e) {
    for (auto id : e) add(std::uint32_t(id));
    add(0xFFFFFFFFu);
    n += e.size();
  }
};

/// Whether @p text holds the content of an added token (which `tokenizers` splits off, llama2.c does not).
bool has_added_token_text(hf_tokenizer const& t, std::string const& text) {
  for (std::int32_t id = 0; id < t.vocab_size(); ++id)
    if (t.is_special(id) && text.find(t.piece(id)) != std::string::npos) return true;
  return false;
}

struct twin_report {
  std::size_t documents = 0, equal = 0, with_added_text = 0, equal_without_specials = 0, round_trips = 0;
  std::size_t twin_checked = 0;  ///< documents compared with the llama2.c twin (see compare_with_twin)
  ids_hash hash;
};

/// The llama2.c encoder merges in O(n²) per document: the twin sees the documents up to this size (most of them;
/// the hash of the tokenizers library's ids covers every document).
constexpr std::size_t max_twin_bytes = 8192;

/// Encodes every document with the tokenizer.json and with the llama2.c twin.
twin_report compare_with_twin(std::filesystem::path const& hf, std::filesystem::path const& bin,
                              std::filesystem::path const& text) {
  auto const t = load_hf_tokenizer(hf);
  auto const twin = load_tokenizer(bin);
  twin_report r;
  for (auto const& d : load_stories(text)) {
    auto const e = t.encode(d, {.add_special_tokens = false});
    auto const plain = t.encode(d, {.add_special_tokens = false, .parse_special = false});
    r.hash.add_document(e);
    ++r.documents;
    bool const added_text = has_added_token_text(t, d);
    r.with_added_text += added_text;
    r.round_trips += t.decode(plain) == d;
    if (d.size() > max_twin_bytes) continue;
    auto const l2 = twin.encode(d, {.bos = false});
    ++r.twin_checked;
    r.equal += e == l2 || added_text;
    if (!added_text) CHECK(e == l2);  // every difference is explained by an added token's text
    r.equal_without_specials += plain == l2;
  }
  return r;
}

ids read_ids(std::filesystem::path const& p) {
  std::istringstream in(rsq_test::read_text(p));
  ids out;
  std::int32_t v;
  while (in >> v) out.push_back(v);
  return out;
}

/// The byte values of @p s as ids (the hand fixtures give byte b the id b).
ids bytes_of(std::string const& s) {
  ids out;
  for (char c : s) out.push_back(std::int32_t(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

TEST_SUITE("model.hf_tokenizer") {
  TEST_CASE("lm7m: every mix_valid document encodes as tokenizers does and as the llama2.c twin, bar '<unk>' text") {
    RSQ_NEED_SHARED(shared);
    auto const m = shared / "data/models/lm7m";
    auto const r = compare_with_twin(m / "hf", m / "llama2c/tokenizer.bin", shared / "data/text/mix_valid.txt");
    CHECK(r.documents == 159);
    // tokenizers 0.23.2 on the same documents (add_special_tokens=False): 278,106 ids with this hash.
    CHECK(r.hash.n == 278106);
    CHECK(r.hash.h == 0x8686fd5c25ba56b3ull);
    // Two WikiText documents hold the literal text "<unk>": tokenizers makes it the added token <unk> (id 0) and
    // starts a new "▁"-prefixed segment after it; llama2.c spells it out. Every other document the twin sees is
    // identical, and all of them are when added tokens are not parsed.
    CHECK(r.with_added_text == 2);
    CHECK(r.twin_checked >= 100);
    CHECK(r.equal == r.twin_checked);  // identical, or differing only by "<unk>" text
    CHECK(r.equal_without_specials == r.twin_checked);
    CHECK(r.round_trips == 159);
  }

  TEST_CASE("lm16m: every prose_valid document encodes as tokenizers does and as the llama2.c twin") {
    RSQ_NEED_SHARED(shared);
    auto const m = shared / "data/models/lm16m";
    auto const r = compare_with_twin(m / "hf", m / "llama2c/tokenizer.bin", shared / "data/text/prose_valid.txt");
    CHECK(r.documents == 464);
    CHECK(r.hash.n == 361523);  // tokenizers 0.23.2
    CHECK(r.hash.h == 0x9b0991a1d503a04cull);
    CHECK(r.with_added_text == 0);
    CHECK(r.twin_checked >= 400);
    CHECK(r.equal == r.twin_checked);
    CHECK(r.round_trips == 464);
  }

  TEST_CASE("lm7m: pieces, BOS from the template, byte fallback, decode") {
    RSQ_NEED_SHARED(shared);
    // [snippet:hf_tokenizer_encode]
    auto const t = rsq::model::load_hf_tokenizer(shared / "data/models/lm7m/hf");  // folder or tokenizer.json
    std::vector<std::int32_t> const e = t.encode("Hello world, café 😀!");   // BOS per the post_processor
    std::string const back = t.decode(e, {.skip_special_tokens = true});      // "Hello world, café 😀!"
    // [snippet:hf_tokenizer_encode]
    CHECK(t.kind() == hf_tokenizer_kind::sentencepiece_bpe);
    CHECK(t.vocab_size() == 4096);
    CHECK(t.bos_id() == 1);
    CHECK(t.eos_id() == 2);
    CHECK(t.unk_id() == 0);
    CHECK(t.piece(1) == "<s>");
    CHECK(t.find("<0x0A>") == 13);
    // tokenizers: <s> ▁He ll o ▁world , ▁ca f <0xC3> <0xA9> ▁ <0xF0> <0x9F> <0x98> <0x80> !
    CHECK(e == ids{1, 493, 287, 4015, 778, 4031, 2035, 4026, 198, 172, 4011, 243, 162, 155, 131, 4067});
    CHECK(back == "Hello world, café 😀!");
    CHECK(t.decode(e) == "<s> Hello world, café 😀!");  // the leading space is stripped only from the fused text
    CHECK(t.encode("Hello", {.add_special_tokens = false}) == ids{493, 287, 4015});
    CHECK(t.encode("").size() == 1);
    CHECK(t.encode("", {.add_special_tokens = false}).empty());
    // Added tokens in the text: "<s>" is its id, and the text after it is a new segment with its own "▁".
    CHECK(t.encode("<s>Hello", {.add_special_tokens = false}) == ids{1, 493, 287, 4015});
    CHECK(t.encode("a<s>", {.add_special_tokens = false}).back() == 1);
    // Ill-formed UTF-8 goes through the byte fallback byte by byte (tokenizers would not take it).
    auto const bad = t.encode("\xFF", {.add_special_tokens = false});
    CHECK(bad == ids{4011, 0xFF + 3});
    CHECK(t.decode(bad) == "\xFF");
    // The llama2.c twin reads the same pieces (" " for "▁").
    auto const twin = load_tokenizer(shared / "data/models/lm7m/llama2c/tokenizer.bin");
    CHECK(twin.encode("Hello world, café 😀!") == e);
    CHECK_THROWS_AS((void)t.decode(ids{4096}), rsq::invalid_argument);
    CHECK_THROWS_AS((void)t.piece(-1), rsq::invalid_argument);
  }

  TEST_CASE("byte-level, Llama-3 pre-tokenizer (hand-made fixture)") {
    // llama3_hand.tokenizer.json: the 256 bytes with id = byte value (GPT-2 characters: "Ġ" is the space, 32),
    // merges by rank: 0 Ġ+t=256, 1 h+e=257, 2 Ġt+he=258, 3 '+s=259, 4 1+2=260, 5 12+3=261, 6 Ġ+Ġ=262, 7 i+n=263,
    // 8 in+g=264, 9 Ã+©=265 ("é" = C3 A9); "Ġhello"=266 with no merge reaching it; ignore_merges true; added
    // specials 267 <|begin_of_text|>, 268 <|end_of_text|>, 269 <|eot_id|>, 270 <pad>, 271 <pad><pad>; the template
    // puts 267 first. Pattern: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
    // ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
    auto const t = load_hf_tokenizer(fixtures() / "llama3_hand.tokenizer.json");
    CHECK(t.kind() == hf_tokenizer_kind::byte_level_bpe);
    CHECK(t.vocab_size() == 272);
    CHECK(t.bos_id() == 267);
    CHECK(t.eos_id() == 268);
    CHECK(t.piece(32) == "Ġ");
    CHECK(t.piece(258) == "Ġthe");
    hf_encode_options const raw{.add_special_tokens = false};
    // "the" "␣cat" "'s" "␣" "123" "45": the space before a digit is its own pre-token (\s+ alone: \s+(?!\S) fails
    // before "1"); t h e -> t he (no "t he" merge); 1 2 3 -> 12 3 -> 123; digits go by three.
    CHECK(t.encode("the cat's 12345") == ids{267, 116, 257, 32, 99, 97, 116, 259, 32, 261, 52, 53});
    // Contractions are case-insensitive in the pattern, merges are not: "IT" "'S" -> I T ' S.
    CHECK(t.encode("IT'S", raw) == ids{73, 84, 39, 83});
    CHECK(t.encode("don't", raw) == ids{100, 111, 110, 39, 116});
    // Digits: "123" "456" "7"; "12" "␣" "123".
    CHECK(t.encode("1234567", raw) == ids{261, 52, 53, 54, 55});
    CHECK(t.encode("12 123", raw) == ids{260, 32, 261});
    // Two spaces: "the" "␣" "␣the" (\s+(?!\S) leaves the last space to the word); Ġthe is a piece (ignore_merges)
    // and also its merges: Ġ t h e -> Ġt h e -> Ġt he -> Ġthe.
    CHECK(t.encode("the  the", raw) == ids{116, 257, 32, 258});
    // Three spaces: "x" "␣␣" "␣y": Ġ Ġ -> ĠĠ (262).
    CHECK(t.encode("x   y", raw) == ids{120, 262, 32, 121});
    // Newlines: "a" "\n\n" (\s*[\r\n]+) "␣" "␣b".
    CHECK(t.encode("a\n\n  b", raw) == ids{97, 10, 10, 32, 32, 98});
    // Punctuation run with its newline: "Hi" "!!\n".
    CHECK(t.encode("Hi!!\n", raw) == ids{72, 105, 33, 33, 10});
    // Unicode letters are one pre-token: c a f Ã © -> c a f é; "naïve": ï (C3 AF) has no merge.
    CHECK(t.encode("café", raw) == ids{99, 97, 102, 265});
    CHECK(t.encode("naïve", raw) == bytes_of("naïve"));
    CHECK(t.encode("Привет мир", raw) == bytes_of("Привет мир"));  // "Привет" "␣мир": no merges, bytes
    CHECK(t.encode("sing", raw) == ids{115, 264});                   // i+n, then in+g
    // ignore_merges: "say" "␣hello"; Ġhello is a piece, so the pre-token is one id without merging.
    CHECK(t.encode("say hello", raw) == ids{115, 97, 121, 266});
    // Added tokens: split off first, longest match ("<pad><pad>" before "<pad>").
    CHECK(t.encode("<|begin_of_text|>hi<|eot_id|>", raw) == ids{267, 104, 105, 269});
    CHECK(t.encode("<pad><pad><pad>", raw) == ids{271, 270});
    // parse_special = false: "<|" "eot" "_id" "|>" as text.
    CHECK(t.encode("<|eot_id|>", {.add_special_tokens = false, .parse_special = false}) ==
          ids{60, 124, 101, 111, 116, 95, 105, 100, 124, 62});
    // Decode undoes the byte map; special tokens are kept unless skipped.
    std::string const text = "The cat's 1234567 café\n\n  naïve  <|eot_id|> 😀";
    CHECK(t.decode(t.encode(text)) == "<|begin_of_text|>" + text);
    CHECK(t.decode(t.encode(text), {.skip_special_tokens = true}) == "The cat's 1234567 café\n\n  naïve   😀");
    // Byte-level BPE needs Unicode text.
    CHECK_THROWS_AS((void)t.encode("ab\xC3("), rsq::invalid_argument);
    CHECK_THROWS_AS((void)t.encode("\xED\xA0\x80"), rsq::invalid_argument);  // a surrogate
  }

  TEST_CASE("byte-level, Qwen2 pre-tokenizer and NFC (hand-made fixture)") {
    // qwen2_hand.tokenizer.json: the vocabulary and merges of llama3_hand (merges written "a b"), ignore_merges
    // false, normalizer NFC, no template (post_processor ByteLevel); added 267 <|endoftext|>, 268 <|im_start|>,
    // 269 <|im_end|>. The pattern differs in \p{N}: one digit per pre-token.
    auto const t = load_hf_tokenizer(fixtures() / "qwen2_hand.tokenizer.json");
    CHECK(t.vocab_size() == 270);
    CHECK(t.template_prefix().empty());
    CHECK(t.bos_id() == -1);
    CHECK(t.eos_id() == 267);
    // No BOS; "1" "2" "3" "4" "5" one by one (the 1+2 merge cannot apply across pre-tokens).
    CHECK(t.encode("the cat's 12345") == ids{116, 257, 32, 99, 97, 116, 259, 32, 49, 50, 51, 52, 53});
    // ignore_merges off: Ġ h e l l o -> Ġ he l l o, not the piece Ġhello.
    CHECK(t.encode("say hello") == ids{115, 97, 121, 32, 257, 108, 108, 111});
    CHECK(t.encode("<|im_start|>user\nhi<|im_end|>") == ids{268, 117, 115, 101, 114, 10, 104, 105, 269});
    CHECK(t.encode("你好") == bytes_of("你好"));
    // NFC: precomposed text passes; a combining accent would need composition tables rsq does not have.
    CHECK(t.encode("café") == ids{99, 97, 102, 265});
    CHECK_THROWS_WITH_AS((void)t.encode("cafe\xCC\x81"), doctest::Contains("U+301"), rsq::invalid_argument);
  }

  TEST_CASE("byte-level, generated fixtures: ids of the tokenizers library (Node and Python bindings)") {
    for (char const* folder : {"generated", "generated_python"}) {
      for (char const* name : {"llama3", "qwen2"}) {
        CAPTURE(folder);
        CAPTURE(name);
        auto const base = fixtures() / folder / name;
        auto const json = std::filesystem::path(base.string() + ".tokenizer.json");
        if (!std::filesystem::exists(json)) {
          MESSAGE("SKIPPED: ", json.string(), " not found; run scripts/make-tokenizer-fixtures.py (or .mjs)");
          continue;
        }
        auto const t = load_hf_tokenizer(json);
        auto const text = rsq_test::read_text(base.string() + ".text.txt");
        auto const want = read_ids(base.string() + ".ids.txt");
        auto const got = t.encode(text);
        CHECK(got.size() == want.size());
        CHECK(got == want);
        CHECK(t.decode(got, {.skip_special_tokens = false}).ends_with(text));
      }
    }
  }

  TEST_CASE("tokenizer_config.json turns BOS and EOS on and off") {
    auto const json = rsq_test::read_text(fixtures() / "llama3_hand.tokenizer.json");
    auto const t = parse_hf_tokenizer(json, {.name = "x", .tokenizer_config = R"({"bos_token": "<|begin_of_text|>",
        "eos_token": {"content": "<|eot_id|>"}, "add_bos_token": false, "add_eos_token": true})"});
    CHECK(t.bos_id() == 267);
    CHECK(t.eos_id() == 269);
    CHECK(t.encode("hi") == ids{104, 105, 269});
    CHECK_THROWS_WITH_AS((void)parse_hf_tokenizer(json, {.name = "x", .tokenizer_config = R"({"bos_token": "<q>"})"}),
                         doctest::Contains("bos_token"), rsq::io_error);
  }

  TEST_CASE("Metaspace pre-tokenizer (the older SentencePiece form) encodes as the normalizer form") {
    RSQ_NEED_SHARED(shared);
    auto j = nlohmann::json::parse(rsq_test::read_text(shared / "data/models/lm7m/hf/tokenizer.json"));
    auto const modern = parse_hf_tokenizer(j.dump());
    j["normalizer"] = nullptr;
    j["pre_tokenizer"] = {
        {"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "always"}, {"split", false}};
    auto const old = parse_hf_tokenizer(j.dump());
    auto const stories = load_stories(shared / "data/text/mix_valid.txt");
    for (std::size_t i = 0; i < 20; ++i) CHECK(old.encode(stories[i]) == modern.encode(stories[i]));
  }

  TEST_CASE("refusals name the field and the value") {
    auto const base = nlohmann::json::parse(rsq_test::read_text(fixtures() / "llama3_hand.tokenizer.json"));
    auto refused = [&](auto edit, char const* what) {
      auto j = base;
      edit(j);
      CAPTURE(what);
      CHECK_THROWS_WITH_AS((void)parse_hf_tokenizer(j.dump(), {.name = "bad.json", .tokenizer_config = {}}),
                           doctest::Contains(what),
                           rsq::io_error);
    };
    using J = nlohmann::json;
    // Other kinds of tokenizer and components.
    refused([](J& j) { j["model"]["type"] = "WordPiece"; }, "\"model.type\" = \"WordPiece\" is not supported");
    refused([](J& j) { j["model"]["type"] = "Unigram"; }, "Unigram");
    refused([](J& j) { j["normalizer"] = {{"type", "Lowercase"}}; }, "\"normalizer.type\" = \"Lowercase\"");
    refused([](J& j) { j["normalizer"] = {{"type", "NFKC"}}; }, "NFKC");
    refused([](J& j) { j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"Regex", " "}}}, {"content", "x"}}; },
            "normalizer.pattern");
    refused([](J& j) { j["pre_tokenizer"]["pretokenizers"][0] = {{"type", "Digits"}}; },
            "\"pre_tokenizer.pretokenizers[0].type\" = \"Digits\"");
    refused([](J& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; }, "Whitespace");
    refused([](J& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; }, "behavior\" = \"Removed\"");
    refused([](J& j) { j["pre_tokenizer"]["pretokenizers"][0]["invert"] = true; }, "invert");
    refused([](J& j) { j["pre_tokenizer"] = j["pre_tokenizer"]["pretokenizers"][0]; }, "Split without ByteLevel");
    refused([](J& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(a"; }, "does not compile");
    refused([](J& j) { j["decoder"] = {{"type", "WordPiece"}}; }, "\"decoder.type\" = \"WordPiece\"");
    refused([](J& j) { j["decoder"] = {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}; },
            "Strip before Fuse");
    refused([](J& j) { j["post_processor"] = {{"type", "BertProcessing"}}; }, "BertProcessing");
    refused([](J& j) { j["post_processor"]["processors"][1]["single"].erase(1); }, "has no $A");
    refused([](J& j) { j["model"]["dropout"] = 0.1; }, "model.dropout");
    refused([](J& j) { j["model"]["continuing_subword_prefix"] = "##"; }, "continuing_subword_prefix");
    refused([](J& j) { j["added_tokens"][0]["single_word"] = true; }, "single_word");
    // Wrong types and values.
    refused([](J& j) { j["model"]["vocab"] = J::array(); }, "model.vocab");
    refused([](J& j) { j["model"]["vocab"]["Ġt"] = "256"; }, "model.vocab[\"Ġt\"]");
    refused([](J& j) { j["model"]["merges"] = 3; }, "model.merges");
    refused([](J& j) { j["model"]["merges"][0] = "Ġt"; }, "model.merges[0]");
    refused([](J& j) { j["model"]["merges"][0] = J::array({"Ġ", "q", "x"}); }, "model.merges[0]");
    refused([](J& j) { j["model"]["merges"][1] = J::array({"h", "zz"}); }, "\"zz\" is not in model.vocab");
    refused([](J& j) { j["model"]["unk_token"] = "<unk>"; }, "model.unk_token");
    refused([](J& j) { j["model"]["byte_fallback"] = "yes"; }, "model.byte_fallback");
    refused([](J& j) { j["added_tokens"] = J::object(); }, "added_tokens");
    refused([](J& j) { j["added_tokens"][0]["content"] = 5; }, "added_tokens[0].content");
    refused([](J& j) { j["post_processor"]["processors"][1]["special_tokens"]["<|begin_of_text|>"]["ids"][0] = 9999; },
            "is outside [0, 272)");
    // Ids out of range, gaps, duplicates.
    refused([](J& j) { j["model"]["vocab"]["Ġt"] = -1; }, "outside [0, 16777216)");
    refused([](J& j) { j["model"]["vocab"]["Ġt"] = 1u << 24; }, "outside [0, 16777216)");
    refused([](J& j) { j["model"]["vocab"]["Ġt"] = 3.5; }, "must be an integer id");
    refused([](J& j) { j["model"]["vocab"]["Ġt"] = 300; }, "gaps");
    refused([](J& j) { j["model"]["vocab"]["Ġt"] = 0; }, "id 0 is given to both");
    refused([](J& j) { j["added_tokens"][1]["content"] = "<|begin_of_text|>"; }, "duplicate piece");
    refused([](J& j) { j["added_tokens"][0]["id"] = 5; }, "id 5 is given to both");
    // A JSON object naming a piece twice, corrupt JSON, deep nesting, not an object.
    auto const json = base.dump();
    auto const dup = json.substr(0, json.find("\"Ġt\":")) + "\"Ġt\": 256, " + json.substr(json.find("\"Ġt\":"));
    CHECK_THROWS_WITH_AS((void)parse_hf_tokenizer(dup), doctest::Contains("duplicate key \"Ġt\""), rsq::io_error);
    auto const half = json.substr(0, json.size() / 2);
    CHECK_THROWS_WITH_AS((void)parse_hf_tokenizer(half, {.name = "half.json", .tokenizer_config = {}}),
                         doctest::Contains("half.json: tokenizer.json is not valid JSON"), rsq::io_error);
    CHECK_THROWS_WITH_AS((void)parse_hf_tokenizer(std::string(100000, '[')), doctest::Contains("deeper than 64"),
                         rsq::io_error);
    CHECK_THROWS_AS((void)parse_hf_tokenizer("[]"), rsq::io_error);
    CHECK_THROWS_WITH_AS((void)parse_hf_tokenizer("{}"), doctest::Contains("\"model\" is missing"), rsq::io_error);
    CHECK_THROWS_WITH_AS((void)load_hf_tokenizer("/nonexistent/tokenizer.json"),
                         doctest::Contains("/nonexistent/tokenizer.json"), rsq::io_error);
    // A default-constructed tokenizer refuses to encode.
    CHECK_THROWS_AS((void)hf_tokenizer{}.encode("x"), rsq::invalid_argument);
  }

  TEST_CASE("a byte with no piece and no unk_token is refused at encode time") {
    auto j = nlohmann::json::parse(rsq_test::read_text(fixtures() / "llama3_hand.tokenizer.json"));
    // Remove byte 0x01 ("ā" in GPT-2's map) and give its id to the last added token.
    j["model"]["vocab"].erase("ā");
    j["added_tokens"][4]["id"] = 1;  // "<pad><pad>" takes id 1
    auto const t = parse_hf_tokenizer(j.dump());
    CHECK(t.encode("ab", {.add_special_tokens = false}) == ids{97, 98});
    CHECK_THROWS_WITH_AS((void)t.encode("a\x01"), doctest::Contains("no unk_token"), rsq::invalid_argument);
  }
}
