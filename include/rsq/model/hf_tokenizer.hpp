// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Hugging Face `tokenizer.json` files of the two kinds the target models use, read and run so that `encode` gives
/// the ids the `tokenizers` library gives (docs/model.md, "tokenizer.json"):
///  - SentencePiece-style BPE (Llama-2, Mistral, lm7m, lm16m): a normalizer that prepends "▁" and replaces " " by
///    "▁" (or the older Metaspace pre-tokenizer), BPE over the text's characters, characters outside the vocabulary
///    as byte pieces "<0xNN>" (byte_fallback), decoding "▁" back to spaces.
///  - byte-level BPE (Llama-3, Qwen2, GPT-2): the file's own regular expression splits the text into pre-tokens
///    (PCRE2, Unicode classes), each pre-token is BPE-merged over its bytes (GPT-2's byte -> character map is undone
///    when the file is read, so encoding works on raw bytes).
/// Both: merges ranked by their position in `model.merges` (lowest rank first, leftmost on ties), added tokens
/// (`<s>`, `<|begin_of_text|>`) split off the text first (longest match), the post_processor's template adds BOS.
/// Everything else (WordPiece, Unigram, other normalizers or pre-tokenizers) is refused with rsq::io_error naming
/// the field and its value.

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include "rsq/core/error.hpp"
#include "rsq/model/binary_io.hpp"

namespace rsq::model {

/// The two kinds of tokenizer.json that hf_tokenizer runs.
enum class hf_tokenizer_kind {
  sentencepiece_bpe,  ///< Llama-2 / Mistral: "▁" for spaces, byte fallback "<0xNN>"
  byte_level_bpe,     ///< Llama-3 / Qwen2 / GPT-2: regex pre-tokenizer, BPE over bytes
};

/// Options of hf_tokenizer::encode.
struct hf_encode_options {
  /// Adds what the file's post_processor template puts around the text (BOS for Llama-2/3, nothing for Qwen2),
  /// adjusted by tokenizer_config.json's add_bos_token/add_eos_token when given; transformers' add_special_tokens.
  bool add_special_tokens = true;
  /// Added tokens written in the text ("<s>", "<|im_end|>") become their ids, as `tokenizers` does by default.
  /// false: special added tokens are encoded as ordinary text (non-special added tokens are always matched).
  bool parse_special = true;
};

/// Options of hf_tokenizer::decode.
struct hf_decode_options {
  bool skip_special_tokens = false;  ///< drop special added tokens (BOS, EOS, ...), as transformers' option
};

/// Options of parse_hf_tokenizer.
struct hf_read_options {
  std::string name = "<memory>";  ///< how messages name the JSON (load_hf_tokenizer sets the path)
  /// The text of tokenizer_config.json, if any: bos_token / eos_token name BOS and EOS, add_bos_token /
  /// add_eos_token override the post_processor's template (LlamaTokenizerFast's behaviour).
  std::optional<std::string> tokenizer_config;
};

namespace detail {

/// GPT-2's byte -> character map: the printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves, the
/// others get 256, 257, ... in byte order, so that every byte is a visible character in vocab.json.
[[nodiscard]] inline std::array<char32_t, 256> const& byte_to_unicode() {
  static std::array<char32_t, 256> const map = [] {
    std::array<char32_t, 256> m{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool const printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      m[std::size_t(b)] = printable ? char32_t(b) : next++;
    }
    return m;
  }();
  return map;
}

/// Inverse of byte_to_unicode for characters below 512 (all of its values are); -1 where none.
[[nodiscard]] inline std::array<std::int16_t, 512> const& unicode_to_byte() {
  static std::array<std::int16_t, 512> const map = [] {
    std::array<std::int16_t, 512> m{};
    m.fill(-1);
    for (int b = 0; b < 256; ++b) m[std::size_t(byte_to_unicode()[std::size_t(b)])] = std::int16_t(b);
    return m;
  }();
  return map;
}

/// Length of the character at @p i: a well-formed UTF-8 sequence, or 1 for a byte that starts none (such bytes
/// are characters of their own, which the byte fallback then encodes).
[[nodiscard]] inline std::size_t utf8_char_length(std::string_view s, std::size_t i) noexcept {
  auto const c = static_cast<unsigned char>(s[i]);
  std::size_t const n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
  if (i + n > s.size()) return 1;
  for (std::size_t k = 1; k < n; ++k)
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 1;
  return n;
}

/// Offset of the first byte that is not part of well-formed UTF-8 (no overlongs, surrogates or values past
/// U+10FFFF: what PCRE2 and Rust's String accept), or npos.
[[nodiscard]] inline std::size_t utf8_error_offset(std::string_view s) noexcept {
  auto at = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  std::size_t i = 0;
  while (i < s.size()) {
    unsigned char const c = at(i);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t n;
    unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) n = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4) n = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else return i;
    if (i + n > s.size() || at(i + 1) < lo || at(i + 1) > hi) return i;
    for (std::size_t k = 2; k < n; ++k)
      if ((at(i + k) & 0xC0) != 0x80) return i;
    i += n;
  }
  return std::string_view::npos;
}

/// The codepoint of the well-formed sequence at @p i of length @p n.
[[nodiscard]] inline char32_t utf8_decode(std::string_view s, std::size_t i, std::size_t n) noexcept {
  auto const c = static_cast<unsigned char>(s[i]);
  char32_t v = n == 1 ? c : n == 2 ? c & 0x1F : n == 3 ? c & 0x0F : c & 0x07;
  for (std::size_t k = 1; k < n; ++k) v = (v << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  return v;
}

inline void utf8_append(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += char(c);
  } else if (c < 0x800) {
    out += char(0xC0 | (c >> 6));
    out += char(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += char(0xE0 | (c >> 12));
    out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  } else {
    out += char(0xF0 | (c >> 18));
    out += char(0x80 | ((c >> 12) & 0x3F));
    out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  }
}

/// Characters that NFC leaves alone whatever follows or precedes them, in the scripts we meet: Latin-1 and ASCII
/// (below the combining diacritics U+0300), Greek and Cyrillic (but a few singletons), general punctuation
/// (dashes, quotes, ellipsis), currency, letterlike symbols, arrows, dingbats,
/// mathematical operators and shapes, CJK symbols, kana without the combining voicing marks, CJK ideographs,
/// full- and half-width forms, emoji.
/// rsq has no Unicode composition tables: text with any other character is refused by a tokenizer whose normalizer
/// is NFC (Qwen2) rather than normalized wrongly.
[[nodiscard]] inline bool nfc_inert(char32_t c) noexcept {
  return c < 0x300 || (c >= 0x370 && c <= 0x373) || (c >= 0x375 && c <= 0x37D) || (c >= 0x37F && c <= 0x386) ||
         (c >= 0x388 && c <= 0x3FF) ||  // Greek, not the singletons 0374, 037E, 0387
         (c >= 0x400 && c <= 0x482) || (c >= 0x48A && c <= 0x52F) || (c >= 0x2002 && c <= 0x206F) ||
         (c >= 0x20A0 && c <= 0x20CF) || (c >= 0x2100 && c <= 0x2125) || (c >= 0x2127 && c <= 0x2129) ||
         (c >= 0x212C && c <= 0x218F) ||  // currency, letterlike (not Ω K Å 2126/212A/212B), number forms
         (c >= 0x2190 && c <= 0x2328) || (c >= 0x232B && c <= 0x27BF) ||  // arrows ... dingbats, not 2329/232A
         (c >= 0x3000 && c <= 0x3098) || (c >= 0x309B && c <= 0x30FF) || (c >= 0x4E00 && c <= 0x9FFF) ||
         (c >= 0xFF01 && c <= 0xFFEE) || (c >= 0x1F000 && c <= 0x1FAFF);
}

/// The merges as a flat open-addressing table: (left id, right id) -> (rank, merged id). The hot loop of BPE looks
/// up every adjacent pair, which a node-based map would make cache-unfriendly.
class merge_table {
 public:
  struct entry {
    std::uint64_t key = empty;
    std::int32_t rank = 0;
    std::int32_t id = 0;
  };
  static constexpr std::uint64_t empty = ~std::uint64_t(0);  // left id 0xFFFFFFFF: no id is that large

  void reserve(std::size_t n) {
    std::size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    slots_.assign(cap, entry{});
    size_ = 0;
  }

  /// Inserts or replaces (a later duplicate merge wins, as in `tokenizers`' builder).
  void insert(std::int32_t a, std::int32_t b, std::int32_t rank, std::int32_t id) {
    if (2 * (size_ + 1) > slots_.size()) grow();
    entry& e = slot(key(a, b));
    if (e.key == empty) ++size_;
    e = {key(a, b), rank, id};
  }

  /// The entry of (a, b), or nullptr.
  [[nodiscard]] entry const* find(std::int32_t a, std::int32_t b) const noexcept {
    if (slots_.empty()) return nullptr;
    std::uint64_t const k = key(a, b);
    std::size_t const mask = slots_.size() - 1;
    for (std::size_t i = hash(k) & mask;; i = (i + 1) & mask) {
      if (slots_[i].key == k) return &slots_[i];
      if (slots_[i].key == empty) return nullptr;
    }
  }

  [[nodiscard]] std::size_t size() const noexcept { return size_; }

  /// Calls @p f(entry) for every merge, in no particular order.
  template <class F>
  void for_each(F&& f) const {
    for (auto const& e : slots_)
      if (e.key != empty) f(e);
  }

 private:
  static std::uint64_t key(std::int32_t a, std::int32_t b) noexcept {
    return (std::uint64_t(std::uint32_t(a)) << 32) | std::uint32_t(b);
  }
  static std::size_t hash(std::uint64_t k) noexcept { return std::size_t((k * 0x9E3779B97F4A7C15ull) >> 20); }

  entry& slot(std::uint64_t k) {
    std::size_t const mask = slots_.size() - 1;
    for (std::size_t i = hash(k) & mask;; i = (i + 1) & mask)
      if (slots_[i].key == k || slots_[i].key == empty) return slots_[i];
  }

  void grow() {
    auto old = std::move(slots_);
    reserve(std::max<std::size_t>(16, old.size()));
    for (auto const& e : old)
      if (e.key != empty) insert(std::int32_t(e.key >> 32), std::int32_t(e.key & 0xFFFFFFFFu), e.rank, e.id);
  }

  std::vector<entry> slots_;
  std::size_t size_ = 0;
};

/// A compiled PCRE2 pattern (UTF + UCP: \p{L}, \s and \w are Unicode-aware, as in the Oniguruma engine
/// `tokenizers` uses), JIT-compiled when the library can. Shared by copies of the tokenizer: matching only reads it.
class regex {
 public:
  /// @throws rsq::io_error naming @p what when PCRE2 cannot compile @p pattern.
  regex(std::string_view pattern, std::string_view what) {
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_code* c = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                  PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
    if (!c) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      rsq::detail::throw_io_error(what, ": the regular expression does not compile at offset ", off, ": ",
                                  reinterpret_cast<char const*>(msg));
    }
    code_.reset(c, pcre2_code_free);
    (void)pcre2_jit_compile(c, PCRE2_JIT_COMPLETE);  // interpreted when JIT is unavailable: same matches
  }

  [[nodiscard]] pcre2_code const* code() const noexcept { return code_.get(); }

 private:
  std::shared_ptr<pcre2_code> code_;
};

/// Match data for one thread, sized for the largest pattern of a tokenizer.
struct match_data_deleter {
  void operator()(pcre2_match_data* m) const noexcept { pcre2_match_data_free(m); }
};
using match_data_ptr = std::unique_ptr<pcre2_match_data, match_data_deleter>;

/// Calls @p emit for every piece of @p s split by @p re with `tokenizers`' "Isolated" behaviour: each match is a
/// piece and so is each stretch between matches. @p s must be valid UTF-8 (checked once by the caller, so that
/// PCRE2 does not re-check the whole subject at every match).
template <class Emit>
void split_isolated(regex const& re, pcre2_match_data* md, std::string_view s, Emit&& emit) {
  auto const* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  std::size_t pos = 0, last = 0;
  while (pos < s.size()) {
    int rc = pcre2_match(re.code(), subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // deep backtracking: the interpreter keeps its stack on the heap
      rc = pcre2_match(re.code(), subject, s.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      rsq::detail::throw_invalid_argument("hf_tokenizer::encode: the pre-tokenizer's regular expression failed at "
                                          "offset ", pos, ": ", reinterpret_cast<char const*>(msg));
    }
    PCRE2_SIZE const* ov = pcre2_get_ovector_pointer(md);
    std::size_t const b = ov[0], e = ov[1];
    if (e <= b) {  // an empty match gives no piece; step over one character
      pos = b + utf8_char_length(s, b);
      continue;
    }
    if (b > last) emit(s.substr(last, b - last));
    emit(s.substr(b, e - b));
    last = pos = e;
  }
  if (last < s.size()) emit(s.substr(last));
}

/// Heterogeneous string hashing, so that lookups by std::string_view allocate nothing.
struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

/// Word -> ids, shared by the copies of a tokenizer and taken by one encode call at a time (try_lock: a call that
/// finds it busy encodes without it). Ids of all words live in one array, so a new word costs one key allocation.
struct word_cache {
  static constexpr std::size_t max_words = 1 << 18;
  static constexpr std::size_t max_ids = 1 << 24;
  static constexpr std::size_t max_word_bytes = 256;  // longer words are rare and only fill the cache

  std::mutex mutex;
  std::unordered_map<std::string, std::pair<std::uint32_t, std::uint32_t>, string_hash, std::equal_to<>> words;
  std::vector<std::int32_t> ids;
};

/// The scratch space of one encode call: BPE symbols and heap, the normalized text, PCRE2 match data.
struct encode_scratch {
  struct symbol {
    std::int32_t id;
    std::int32_t prev, next;  // neighbours in the linked list, -1 at the ends
    bool alive;
  };
  struct candidate {  // a mergeable pair (pos, next(pos)) when it was pushed
    std::int32_t rank, pos, left, right, merged;
    bool operator>(candidate const& o) const noexcept { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<symbol> symbols;
  std::vector<candidate> heap;
  std::vector<std::int32_t> word_ids;
  std::string normalized, prefixed;
  match_data_ptr match;
};

/// tokenizer.json reading: messages name the file and the JSON field.
class hf_json {
 public:
  explicit hf_json(std::string name) : name_(std::move(name)) {}

  template <class... Args>
  [[noreturn]] void fail(Args const&... args) const {
    rsq::detail::throw_io_error(name_, ": ", args...);
  }

  /// Parses @p text with a nesting limit and a check for duplicate keys (a vocabulary that names a piece twice).
  [[nodiscard]] nlohmann::json parse(std::string_view text, std::string_view what) const {
    std::vector<std::unordered_set<std::string>> keys;
    auto cb = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) -> bool {
      if (depth > 64) fail(what, ": JSON nested deeper than 64 levels");
      if (ev == nlohmann::json::parse_event_t::object_start) keys.emplace_back();
      if (ev == nlohmann::json::parse_event_t::object_end && !keys.empty()) keys.pop_back();
      if (ev == nlohmann::json::parse_event_t::key && !keys.empty() && parsed.is_string() &&
          !keys.back().insert(parsed.get_ref<std::string const&>()).second)
        fail(what, ": duplicate key \"", parsed.get_ref<std::string const&>(), "\" in a JSON object");
      return true;
    };
    try {
      return nlohmann::json::parse(text.begin(), text.end(), cb);
    } catch (nlohmann::json::exception const& e) {
      fail(what, " is not valid JSON: ", e.what());
    }
  }

  /// j[key] where j must be an object; nullptr when absent.
  [[nodiscard]] nlohmann::json const* field(nlohmann::json const& j, std::string_view key,
                                            std::string const& path) const {
    if (!j.is_object()) fail("field \"", path, "\" must be a JSON object, got ", j.type_name());
    auto it = j.find(key);
    return it == j.end() ? nullptr : &*it;
  }

  [[nodiscard]] std::string const& string(nlohmann::json const& j, std::string_view key,
                                          std::string const& path) const {
    auto const* v = field(j, key, path);
    if (!v || !v->is_string()) fail("field \"", join(path, key), "\" must be a string");
    return v->get_ref<std::string const&>();
  }

  [[nodiscard]] bool boolean(nlohmann::json const& j, std::string_view key, std::string const& path, bool dflt) const {
    auto const* v = field(j, key, path);
    if (!v || v->is_null()) return dflt;
    if (!v->is_boolean()) fail("field \"", join(path, key), "\" must be true or false, got ", v->dump());
    return v->get<bool>();
  }

  /// A token id: an integer in [0, limit).
  [[nodiscard]] std::int32_t id(nlohmann::json const& v, std::string const& path, std::int64_t limit) const {
    if (!v.is_number_integer()) fail("field \"", path, "\" must be an integer id, got ", v.dump());
    if (v.is_number_unsigned() ? v.get<std::uint64_t>() >= std::uint64_t(limit)
                               : (v.get<std::int64_t>() < 0 || v.get<std::int64_t>() >= limit))
      fail("field \"", path, "\" = ", v.dump(), " is outside [0, ", limit, ")");
    return std::int32_t(v.get<std::int64_t>());
  }

  /// The "type" of a component, refused unless in @p supported.
  [[nodiscard]] std::string const& type(nlohmann::json const& j, std::string const& path,
                                        std::initializer_list<std::string_view> supported) const {
    std::string const& t = string(j, "type", path);
    if (std::find(supported.begin(), supported.end(), t) == supported.end()) {
      std::string list;
      for (auto s : supported) list += (list.empty() ? "" : ", ") + std::string(s);
      fail("field \"", join(path, "type"), "\" = \"", t, "\" is not supported (supported: ", list, ")");
    }
    return t;
  }

  [[nodiscard]] static std::string join(std::string const& path, std::string_view key) {
    return path.empty() ? std::string(key) : path + "." + std::string(key);
  }

 private:
  std::string name_;
};

}  // namespace detail

/// A Hugging Face tokenizer.json of one of the two supported kinds (file comment), ready to encode and decode.
/// Copies share the (read-only) regular expressions and the word cache; encode and decode may run on many threads.
class hf_tokenizer {
 public:
  static constexpr std::int64_t max_vocab_size = 1 << 24;  ///< most ids accepted

  hf_tokenizer() = default;

  [[nodiscard]] hf_tokenizer_kind kind() const noexcept { return kind_; }
  /// Number of ids: the vocabulary and the added tokens (ids are 0 .. vocab_size()-1 without gaps).
  [[nodiscard]] std::int32_t vocab_size() const noexcept { return std::int32_t(pieces_.size()); }
  /// BOS / EOS ids (tokenizer_config.json, else the post_processor's template, else "<s>"-like pieces), or -1.
  [[nodiscard]] std::int32_t bos_id() const noexcept { return bos_id_; }
  [[nodiscard]] std::int32_t eos_id() const noexcept { return eos_id_; }
  /// The unknown-token id (model.unk_token), or -1.
  [[nodiscard]] std::int32_t unk_id() const noexcept { return unk_id_; }
  /// What encode puts before and after the text when add_special_tokens is set.
  [[nodiscard]] std::vector<std::int32_t> const& template_prefix() const noexcept { return prefix_; }
  [[nodiscard]] std::vector<std::int32_t> const& template_suffix() const noexcept { return suffix_; }

  /// The piece of @p id as the file writes it ("▁the", "Ġthe", "<0x0A>", "<s>").
  /// @throws rsq::invalid_argument if @p id is out of range.
  [[nodiscard]] std::string const& piece(std::int32_t id) const {
    check_id(id, "hf_tokenizer::piece");
    return pieces_[std::size_t(id)];
  }
  /// Id of a piece as the file writes it, or -1.
  [[nodiscard]] std::int32_t find(std::string_view piece) const {
    auto it = index_.find(piece);
    return it == index_.end() ? -1 : it->second;
  }
  /// Per id, the rank of the lowest-ranked merge that makes it (its position in `model.merges`), or −1 where no
  /// merge does (bytes, single characters, added tokens).
  [[nodiscard]] std::vector<std::int32_t> merge_ranks() const {
    std::vector<std::int32_t> r(pieces_.size(), -1);
    merges_.for_each([&](detail::merge_table::entry const& e) {
      auto& v = r[std::size_t(e.id)];
      if (v < 0 || e.rank < v) v = e.rank;
    });
    return r;
  }
  /// Whether @p id is a special added token (skipped by decode with skip_special_tokens).
  [[nodiscard]] bool is_special(std::int32_t id) const {
    check_id(id, "hf_tokenizer::is_special");
    return special_[std::size_t(id)] != 0;
  }

  /// Token ids of @p text, as `tokenizers`' Tokenizer.encode(text, add_special_tokens).ids.
  /// The SentencePiece kind takes any bytes (ill-formed UTF-8 goes through the byte fallback byte by byte, where
  /// `tokenizers` only takes valid strings).
  /// @throws rsq::invalid_argument if the byte-level kind gets ill-formed UTF-8, if an NFC normalizer meets a
  ///         character rsq cannot normalize (nfc_inert), or if a byte has no piece and there is no unk_token.
  [[nodiscard]] std::vector<std::int32_t> encode(std::string_view text, hf_encode_options const& opt = {}) const {
    RSQ_EXPECTS(!pieces_.empty(), "hf_tokenizer::encode: the tokenizer is empty (default-constructed)");
    if (kind_ == hf_tokenizer_kind::byte_level_bpe) {
      auto const bad = detail::utf8_error_offset(text);
      RSQ_EXPECTS(bad == std::string_view::npos, "hf_tokenizer::encode: the text is not valid UTF-8 at byte ", bad,
                  " (a byte-level BPE tokenizer takes Unicode text)");
    }
    std::vector<std::int32_t> out;
    out.reserve(text.size() / 3 + 4);
    if (opt.add_special_tokens) out.insert(out.end(), prefix_.begin(), prefix_.end());
    detail::encode_scratch scratch;
    if (!regexes_.empty()) {
      // One match-data block sized for the pattern with the most groups.
      std::uint32_t groups = 0;
      for (auto const& re : regexes_) {
        std::uint32_t n = 0;
        pcre2_pattern_info(re.code(), PCRE2_INFO_CAPTURECOUNT, &n);
        groups = std::max(groups, n + 1);
      }
      scratch.match.reset(pcre2_match_data_create(groups, nullptr));
      RSQ_EXPECTS(scratch.match != nullptr, "hf_tokenizer::encode: out of memory for PCRE2 match data");
    }
    std::unique_lock<std::mutex> lock;
    detail::word_cache* cache = nullptr;
    if (cache_) {
      lock = std::unique_lock<std::mutex>(cache_->mutex, std::try_to_lock);
      if (lock.owns_lock()) cache = cache_.get();
    }
    split_added(text, opt.parse_special, [&](std::string_view segment, bool first) {
      encode_segment(segment, first, out, scratch, cache);
    }, out);
    if (opt.add_special_tokens) out.insert(out.end(), suffix_.begin(), suffix_.end());
    return out;
  }

  /// The text of @p ids, as `tokenizers`' decode: "▁" back to spaces and byte pieces to bytes then the leading
  /// space stripped (SentencePiece kind), bytes back from GPT-2's characters (byte-level kind). Byte sequences that
  /// are not valid UTF-8 come out as they are, where `tokenizers` writes U+FFFD.
  /// @throws rsq::invalid_argument if an id is out of range.
  [[nodiscard]] std::string decode(std::span<const std::int32_t> ids, hf_decode_options const& opt = {}) const {
    std::string out;
    bool first = true;
    for (std::int32_t id : ids) {
      check_id(id, "hf_tokenizer::decode");
      if (opt.skip_special_tokens && special_[std::size_t(id)]) continue;
      std::string_view t = decoded_[std::size_t(id)];
      if (first && strip_first_token_space_ && !t.empty() && t.front() == ' ') t.remove_prefix(1);
      if (!first && join_with_space_) out += ' ';
      out += t;
      first = false;
    }
    // Strip after Fuse: up to n copies of the content at each end of the whole text.
    for (std::size_t k = 0; k < strip_start_ && !strip_content_.empty() && out.starts_with(strip_content_); ++k)
      out.erase(0, strip_content_.size());
    for (std::size_t k = 0; k < strip_stop_ && !strip_content_.empty() && out.ends_with(strip_content_); ++k)
      out.erase(out.size() - strip_content_.size());
    return out;
  }

  friend hf_tokenizer parse_hf_tokenizer(std::string_view json, hf_read_options const& opt);

 private:
  struct added_token {
    std::string content;
    std::int32_t id;
    bool special, lstrip, rstrip;
  };
  enum class prepend_scheme { always, first, never };
  struct normalizer_step {
    enum { prepend, replace, nfc } op;
    std::string from, to;  // prepend: to; replace: from -> to
  };
  struct metaspace_step {
    std::string replacement;
    prepend_scheme scheme = prepend_scheme::always;
    bool split = true;
  };
  struct pre_step {  // byte-level kind: a regex split, or ByteLevel (prefix space, then maybe its own regex)
    int regex = -1;  // index into regexes_, or -1
    bool byte_level = false;
    bool add_prefix_space = false;
  };

  // Reading (parse_hf_tokenizer): one routine per component of the file, each refusing what it does not support.
  using json = nlohmann::json;
  void read_model(detail::hf_json const& r, json const& model, json const* added);
  void read_merges(detail::hf_json const& r, json const& merges);
  void read_normalizer(detail::hf_json const& r, json const& n, std::string const& path);
  void read_pre_tokenizer(detail::hf_json const& r, json const& p, std::string const& path);
  void read_decoder(detail::hf_json const& r, json const& d, std::string const& path);
  void read_post_processor(detail::hf_json const& r, json const& p, std::string const& path);
  void read_config(std::string_view config_text, std::string const& name);
  void build_indices();

  void check_id(std::int32_t id, char const* who) const {
    RSQ_EXPECTS(id >= 0 && id < vocab_size(), who, ": token id ", id, " is outside the vocabulary [0, ",
                vocab_size(), ")");
  }

  /// Splits @p text on the added tokens (leftmost, then longest match, as `tokenizers`' Aho-Corasick matcher),
  /// appending their ids to @p out and handing the text between them to @p segment (with whether it starts the
  /// text, for Metaspace's prepend_scheme "first").
  template <class Segment>
  void split_added(std::string_view text, bool parse_special, Segment&& segment, std::vector<std::int32_t>& out) const {
    std::size_t start = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
      auto const c = static_cast<unsigned char>(text[i]);
      if (added_by_byte_[c].empty()) continue;
      added_token const* hit = nullptr;
      for (std::int32_t k : added_by_byte_[c]) {  // longest first
        auto const& a = added_[std::size_t(k)];
        if ((parse_special || !a.special) && text.compare(i, a.content.size(), a.content) == 0) {
          hit = &a;
          break;
        }
      }
      if (!hit) continue;
      std::size_t b = i, e = i + hit->content.size();
      auto space = [](char ch) { return ch == ' ' || (ch >= '\t' && ch <= '\r'); };
      if (hit->lstrip)
        while (b > start && space(text[b - 1])) --b;
      if (hit->rstrip)
        while (e < text.size() && space(text[e])) ++e;
      if (b > start) segment(text.substr(start, b - start), start == 0);
      out.push_back(hit->id);
      start = e;
      i = e - 1;
    }
    if (start < text.size()) segment(text.substr(start), start == 0);
  }

  /// Normalizes one segment and runs BPE on its words.
  void encode_segment(std::string_view seg, bool first, std::vector<std::int32_t>& out,
                      detail::encode_scratch& s, detail::word_cache* cache) const {
    std::string_view text = seg;
    if (!normalizers_.empty() || metaspace_) {
      s.normalized.assign(seg);
      normalize(s.normalized, first);
      text = s.normalized;
    }
    if (text.empty()) return;
    if (kind_ == hf_tokenizer_kind::byte_level_bpe) {
      pre_tokenize(text, 0, s, [&](std::string_view w) { encode_word(w, out, s, cache); });
      return;
    }
    // SentencePiece kind: words begin at "▁" (Metaspace split), at a "▁" after another character when no merge
    // can cross that boundary (chunk_at_meta_, decided when the file is read), or the segment is one word.
    bool const split_every = metaspace_ && metaspace_->split;
    if (!split_every && !chunk_at_meta_) {
      encode_word(text, out, s, cache);
      return;
    }
    std::string_view const meta = meta_piece_;
    std::size_t start = 0;
    for (std::size_t i = text.find(meta, 1); i != std::string_view::npos; i = text.find(meta, i + meta.size())) {
      bool const after_meta = i >= meta.size() && text.compare(i - meta.size(), meta.size(), meta) == 0;
      if ((split_every || !after_meta) && i > start) {
        encode_word(text.substr(start, i - start), out, s, cache);
        start = i;
      }
    }
    encode_word(text.substr(start), out, s, cache);
  }

  /// The normalizer steps and Metaspace's replacement and prefix, in place.
  void normalize(std::string& t, bool first) const {
    for (auto const& n : normalizers_) {
      if (n.op == normalizer_step::prepend) {
        if (!t.empty()) t.insert(0, n.to);
      } else if (n.op == normalizer_step::replace) {
        replace_all(t, n.from, n.to);
      } else {
        check_nfc(t);
      }
    }
    if (metaspace_) {
      replace_all(t, " ", metaspace_->replacement);
      bool const prepend = metaspace_->scheme == prepend_scheme::always ||
                           (metaspace_->scheme == prepend_scheme::first && first);
      if (prepend && !t.empty() && !t.starts_with(metaspace_->replacement)) t.insert(0, metaspace_->replacement);
    }
  }

  static void replace_all(std::string& t, std::string_view from, std::string_view to) {
    if (from.empty() || t.find(from) == std::string::npos) return;
    std::string r;
    r.reserve(t.size() + t.size() / 4 * (to.size() > from.size() ? to.size() - from.size() : 0) + 16);
    std::size_t i = 0;
    for (std::size_t j; (j = t.find(from, i)) != std::string::npos; i = j + from.size()) {
      r.append(t, i, j - i);
      r.append(to);
    }
    r.append(t, i);
    t = std::move(r);
  }

  static void check_nfc(std::string_view t) {
    for (std::size_t i = 0; i < t.size();) {
      std::size_t const n = detail::utf8_char_length(t, i);
      char32_t const c = detail::utf8_decode(t, i, n);
      RSQ_EXPECTS(n > 1 || c < 0x80, "hf_tokenizer::encode: NFC normalizer: the text is not valid UTF-8 at byte ", i);
      RSQ_EXPECTS(detail::nfc_inert(c), "hf_tokenizer::encode: the NFC normalizer of this tokenizer would need Unicode "
                  "composition tables for U+", std::hex, std::uppercase, std::uint32_t(c), std::dec, " at byte ", i,
                  ", which rsq does not have (docs/model.md)");
      i += n;
    }
  }

  /// Byte-level pre-tokenizers from step @p k on, applied to @p text; @p emit gets each pre-token.
  template <class Emit>
  void pre_tokenize(std::string_view text, std::size_t k, detail::encode_scratch& s, Emit&& emit) const {
    if (k == pre_steps_.size()) {
      emit(text);
      return;
    }
    auto const& step = pre_steps_[k];
    if (step.byte_level && step.add_prefix_space && !text.starts_with(' ')) {
      std::string prefixed = " " + std::string(text);  // rare (GPT-2 style files that set it): not the hot path
      pre_tokenize_regex(prefixed, k, s, emit);
      return;
    }
    pre_tokenize_regex(text, k, s, emit);
  }

  template <class Emit>
  void pre_tokenize_regex(std::string_view text, std::size_t k, detail::encode_scratch& s, Emit&& emit) const {
    auto const& step = pre_steps_[k];
    if (step.regex < 0) {
      pre_tokenize(text, k + 1, s, emit);
      return;
    }
    detail::split_isolated(regexes_[std::size_t(step.regex)], s.match.get(), text,
                           [&](std::string_view piece) { pre_tokenize(piece, k + 1, s, emit); });
  }

  /// Appends the ids of one word (a pre-token), through the cache when there is one.
  void encode_word(std::string_view w, std::vector<std::int32_t>& out, detail::encode_scratch& s,
                   detail::word_cache* cache) const {
    if (cache && w.size() <= detail::word_cache::max_word_bytes) {
      auto it = cache->words.find(w);
      if (it != cache->words.end()) {
        auto const* p = cache->ids.data() + it->second.first;
        out.insert(out.end(), p, p + it->second.second);
        return;
      }
      bpe(w, s);
      if (cache->words.size() >= detail::word_cache::max_words ||
          cache->ids.size() + s.word_ids.size() > detail::word_cache::max_ids) {
        cache->words.clear();  // a fresh start keeps the words of the current text
        cache->ids.clear();
      }
      cache->words.emplace(std::string(w), std::pair<std::uint32_t, std::uint32_t>(
                                               std::uint32_t(cache->ids.size()), std::uint32_t(s.word_ids.size())));
      cache->ids.insert(cache->ids.end(), s.word_ids.begin(), s.word_ids.end());
    } else {
      bpe(w, s);
    }
    out.insert(out.end(), s.word_ids.begin(), s.word_ids.end());
  }

  /// BPE of one word into s.word_ids: initial symbols (characters or bytes, with byte fallback and unk), then the
  /// merges of lowest rank first, leftmost first on ties (a heap of candidate pairs, stale entries skipped: the
  /// symbol at a position only ever grows, so equal ids mean the pair is still there).
  void bpe(std::string_view w, detail::encode_scratch& s) const {
    s.word_ids.clear();
    if (ignore_merges_) {
      auto it = enc_index_.find(w);
      if (it != enc_index_.end()) {
        s.word_ids.push_back(it->second);
        return;
      }
    }
    auto& sym = s.symbols;
    sym.clear();
    bool last_unk = false;
    auto push = [&](std::int32_t id) {
      sym.push_back({id, std::int32_t(sym.size()) - 1, -1, true});
      last_unk = false;
    };
    for (std::size_t i = 0; i < w.size();) {
      std::size_t const n = kind_ == hf_tokenizer_kind::byte_level_bpe ? 1 : detail::utf8_char_length(w, i);
      std::int32_t id = -1;
      if (n == 1) {
        id = char_ids_[static_cast<unsigned char>(w[i])];
      } else {
        auto it = enc_index_.find(w.substr(i, n));
        if (it != enc_index_.end()) id = it->second;
      }
      if (id >= 0) {
        push(id);
      } else if (byte_fallback_ && all_bytes_have_pieces(w.substr(i, n))) {
        for (std::size_t k = i; k < i + n; ++k) push(byte_ids_[static_cast<unsigned char>(w[k])]);
      } else if (unk_id_ >= 0) {
        if (!(fuse_unk_ && last_unk)) push(unk_id_);
        last_unk = true;
      } else {
        // `tokenizers` drops such a character silently; a text that needs it is better refused.
        rsq::detail::throw_invalid_argument("hf_tokenizer::encode: the character at byte ", i, " of \"", w,
                                            "\" has no piece, no byte-fallback piece and the model has no unk_token");
      }
      i += n;
    }
    for (std::size_t k = 0; k + 1 < sym.size(); ++k) sym[k].next = std::int32_t(k + 1);
    auto& heap = s.heap;
    heap.clear();
    auto consider = [&](std::int32_t pos) {
      std::int32_t const nx = sym[std::size_t(pos)].next;
      if (nx < 0) return;
      auto const* m = merges_.find(sym[std::size_t(pos)].id, sym[std::size_t(nx)].id);
      if (!m) return;
      heap.push_back({m->rank, pos, sym[std::size_t(pos)].id, sym[std::size_t(nx)].id, m->id});
      std::push_heap(heap.begin(), heap.end(), std::greater<>{});
    };
    for (std::size_t k = 0; k + 1 < sym.size(); ++k) consider(std::int32_t(k));
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<>{});
      auto const c = heap.back();
      heap.pop_back();
      auto& a = sym[std::size_t(c.pos)];
      if (!a.alive || a.id != c.left || a.next < 0 || sym[std::size_t(a.next)].id != c.right) continue;
      auto& b = sym[std::size_t(a.next)];
      a.id = c.merged;
      b.alive = false;
      a.next = b.next;
      if (b.next >= 0) sym[std::size_t(b.next)].prev = c.pos;
      if (a.prev >= 0) consider(a.prev);
      consider(c.pos);
    }
    for (std::int32_t k = sym.empty() ? -1 : 0; k >= 0; k = sym[std::size_t(k)].next)
      s.word_ids.push_back(sym[std::size_t(k)].id);
  }

  [[nodiscard]] bool all_bytes_have_pieces(std::string_view c) const noexcept {
    for (char b : c)
      if (byte_ids_[static_cast<unsigned char>(b)] < 0) return false;
    return true;
  }

  hf_tokenizer_kind kind_ = hf_tokenizer_kind::sentencepiece_bpe;
  std::vector<std::string> pieces_;    // by id, as the file writes them
  std::vector<std::string> decoded_;   // by id, the text decode gives
  std::vector<std::uint8_t> special_;  // by id
  std::unordered_map<std::string, std::int32_t, detail::string_hash, std::equal_to<>> index_;      // file form
  std::unordered_map<std::string, std::int32_t, detail::string_hash, std::equal_to<>> enc_index_;  // model vocab,
                                                                       // as encode sees text (raw bytes, byte level)
  std::array<std::int32_t, 256> char_ids_{};  // id of the one-byte character (SentencePiece) or byte (byte level)
  std::array<std::int32_t, 256> byte_ids_{};  // id of "<0xNN>"
  detail::merge_table merges_;
  std::int32_t unk_id_ = -1, bos_id_ = -1, eos_id_ = -1;
  bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
  std::vector<normalizer_step> normalizers_;
  std::optional<metaspace_step> metaspace_;
  std::vector<pre_step> pre_steps_;
  std::vector<detail::regex> regexes_;
  std::string meta_piece_ = "\xE2\x96\x81";  // "▁"
  bool chunk_at_meta_ = false;
  std::vector<added_token> added_;
  std::array<std::vector<std::int32_t>, 256> added_by_byte_;  // indices into added_, longest content first
  std::vector<std::int32_t> prefix_, suffix_;
  bool strip_first_token_space_ = false, join_with_space_ = false;
  std::string strip_content_;
  std::size_t strip_start_ = 0, strip_stop_ = 0;
  struct decode_op {  // a per-token step of the decoder, applied to every piece once, when the file is read
    enum { replace, byte_fallback, byte_level } op;
    std::string from, to;
  };
  std::vector<decode_op> decode_ops_;
  bool decoder_fused_ = false;
  std::shared_ptr<detail::word_cache> cache_ = std::make_shared<detail::word_cache>();
};


/// Parses a tokenizer.json held in memory (what the fuzz target calls).
/// @throws rsq::io_error naming opt.name and the JSON field: corrupt JSON, wrong types, ids out of range or with
///         gaps, duplicate pieces, merges of unknown pieces, and every component that is not supported (model
///         types other than BPE, normalizers other than Prepend/Replace(String)/NFC, pre-tokenizers other than
///         Metaspace/Split(Isolated)/ByteLevel, decoders other than Replace/ByteFallback/Fuse/Strip/Metaspace/
///         ByteLevel, post-processors other than TemplateProcessing/ByteLevel).
[[nodiscard]] inline hf_tokenizer parse_hf_tokenizer(std::string_view json, hf_read_options const& opt = {});

inline hf_tokenizer parse_hf_tokenizer(std::string_view json, hf_read_options const& opt) {
  detail::hf_json const r(opt.name);
  auto const root = r.parse(json, "tokenizer.json");
  if (!root.is_object()) r.fail("tokenizer.json must be a JSON object, got ", root.type_name());
  auto const* model = r.field(root, "model", "");
  if (!model) r.fail("field \"model\" is missing");
  hf_tokenizer t;
  t.read_model(r, *model, r.field(root, "added_tokens", ""));
  auto component = [&](std::string_view key, auto read) {
    auto const* v = r.field(root, key, "");
    if (v && !v->is_null()) (t.*read)(r, *v, std::string(key));
  };
  component("normalizer", &hf_tokenizer::read_normalizer);
  component("pre_tokenizer", &hf_tokenizer::read_pre_tokenizer);
  component("decoder", &hf_tokenizer::read_decoder);
  component("post_processor", &hf_tokenizer::read_post_processor);
  if (t.kind_ == hf_tokenizer_kind::sentencepiece_bpe && !t.pre_steps_.empty())
    r.fail("field \"pre_tokenizer\": Split without ByteLevel is not supported");
  auto const* decoder = r.field(root, "decoder", "");
  t.join_with_space_ = !decoder || decoder->is_null();  // `tokenizers` joins the pieces with " " without a decoder
  t.build_indices();
  if (opt.tokenizer_config) t.read_config(*opt.tokenizer_config, opt.name + " (tokenizer_config.json)");
  return t;
}

/// model (BPE only) and added_tokens: the pieces, ids 0..n-1 without gaps, each piece once.
inline void hf_tokenizer::read_model(detail::hf_json const& r, json const& model, json const* added) {
  (void)r.type(model, "model", {"BPE"});
  auto const* vocab = r.field(model, "vocab", "model");
  if (!vocab || !vocab->is_object()) r.fail("field \"model.vocab\" must be a JSON object of piece -> id");
  std::vector<std::pair<std::int32_t, std::string const*>> ids;  // (id, piece): the model's vocabulary, then added
  ids.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {  // keys live as long as the parsed document
    std::string const& piece = it.key();
    if (piece.empty()) r.fail("field \"model.vocab\" holds an empty piece");
    ids.emplace_back(r.id(it.value(), "model.vocab[\"" + piece + "\"]", max_vocab_size), &piece);
  }
  std::size_t const n_model = ids.size();
  if (added && !added->is_null()) {
    if (!added->is_array()) r.fail("field \"added_tokens\" must be an array");
    added_.reserve(added->size());  // ids point at the contents
    for (std::size_t i = 0; i < added->size(); ++i) {
      auto const& a = (*added)[i];
      std::string const path = "added_tokens[" + std::to_string(i) + "]";
      std::string const& content = r.string(a, "content", path);
      if (content.empty()) r.fail("field \"", path, ".content\" is empty");
      if (r.boolean(a, "single_word", path, false))
        r.fail("field \"", path, ".single_word\" = true is not supported");
      (void)r.boolean(a, "normalized", path, false);  // matched in the raw text either way (docs/model.md)
      auto const* id = r.field(a, "id", path);
      if (!id) r.fail("field \"", path, ".id\" is missing");
      std::int32_t const v = r.id(*id, path + ".id", max_vocab_size);
      added_.push_back({content, v, r.boolean(a, "special", path, false), r.boolean(a, "lstrip", path, false),
                        r.boolean(a, "rstrip", path, false)});
      ids.emplace_back(v, &added_.back().content);
    }
  }
  // Ids 0..n-1 without gaps: a piece at every id, one piece per id (an added token may repeat its vocab entry).
  std::int32_t n = 0;
  for (auto const& e : ids) n = std::max(n, e.first + 1);
  if (std::size_t(n) > ids.size())
    r.fail("the ids of model.vocab and added_tokens leave gaps: the largest is ", n - 1, " but there are only ",
           ids.size(), " pieces");
  pieces_.assign(std::size_t(n), {});
  special_.assign(std::size_t(n), 0);
  std::vector<std::uint8_t> seen(std::size_t(n), 0);
  for (std::size_t k = 0; k < ids.size(); ++k) {
    auto const [id, piece] = ids[k];
    std::string const what = k < n_model ? "model.vocab" : "added_tokens[" + std::to_string(k - n_model) + "]";
    if (seen[std::size_t(id)] && (k < n_model || pieces_[std::size_t(id)] != *piece))
      r.fail(what, ": id ", id, " is given to both \"", pieces_[std::size_t(id)], "\" and \"", *piece, "\"");
    pieces_[std::size_t(id)] = *piece;
    seen[std::size_t(id)] = 1;
    auto const [it, fresh] = index_.emplace(*piece, id);
    if (!fresh && it->second != id)
      r.fail(what, ": duplicate piece \"", *piece, "\" with ids ", it->second, " and ", id);
    if (k < n_model) enc_index_.emplace(*piece, id);
    else special_[std::size_t(id)] = added_[k - n_model].special;
  }
  for (std::int32_t id = 0; id < n; ++id)
    if (!seen[std::size_t(id)]) r.fail("model.vocab and added_tokens give no piece for id ", id);
  if (n == 0) r.fail("field \"model.vocab\" is empty");

  byte_fallback_ = r.boolean(model, "byte_fallback", "model", false);
  fuse_unk_ = r.boolean(model, "fuse_unk", "model", false);
  ignore_merges_ = r.boolean(model, "ignore_merges", "model", false);
  if (auto const* unk = r.field(model, "unk_token", "model"); unk && !unk->is_null()) {
    if (!unk->is_string()) r.fail("field \"model.unk_token\" must be a string or null");
    auto it = enc_index_.find(unk->get_ref<std::string const&>());
    if (it == enc_index_.end())
      r.fail("model.unk_token \"", unk->get_ref<std::string const&>(), "\" is not in model.vocab");
    unk_id_ = it->second;
  }
  auto const* dropout = r.field(model, "dropout", "model");
  if (auto const* d = dropout; d && !d->is_null() && !(d->is_number() && d->get<double>() == 0))
    r.fail("field \"model.dropout\" = ", d->dump(), " is not supported (dropout makes encoding random)");
  for (char const* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (auto const* v = r.field(model, key, "model");
        v && !v->is_null() && !(v->is_string() && v->get<std::string>().empty()))
      r.fail("field \"model.", key, "\" = ", v->dump(), " is not supported");
  auto const* merges = r.field(model, "merges", "model");
  if (!merges || !merges->is_array()) r.fail("field \"model.merges\" must be an array");
  read_merges(r, *merges);
}

/// model.merges: "a b" strings or ["a", "b"] pairs; the rank of a merge is its position.
inline void hf_tokenizer::read_merges(detail::hf_json const& r, json const& merges) {
  merges_.reserve(merges.size());
  std::string joined;
  for (std::size_t k = 0; k < merges.size(); ++k) {
    auto const& m = merges[k];
    std::string_view a, b;
    if (m.is_string()) {
      std::string_view const s = m.get_ref<std::string const&>();
      auto const sp = s.find(' ');
      if (sp == std::string_view::npos || s.find(' ', sp + 1) != std::string_view::npos)
        r.fail("field \"model.merges[", k, "]\" = \"", s, "\" must be two pieces separated by one space");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get_ref<std::string const&>();
      b = m[1].get_ref<std::string const&>();
    } else {
      r.fail("field \"model.merges[", k, "]\" must be \"a b\" or [\"a\", \"b\"], got ", m.dump());
    }
    auto ia = enc_index_.find(a), ib = enc_index_.find(b);
    joined.assign(a).append(b);
    auto im = enc_index_.find(joined);
    if (ia == enc_index_.end() || ib == enc_index_.end() || im == enc_index_.end())
      r.fail("model.merges[", k, "]: \"", ia == enc_index_.end() ? a : ib == enc_index_.end() ? b : joined,
             "\" is not in model.vocab");
    merges_.insert(ia->second, ib->second, std::int32_t(k), im->second);
  }
}

inline void hf_tokenizer::read_normalizer(detail::hf_json const& r, json const& n, std::string const& path) {
  auto const& type = r.type(n, path, {"Sequence", "Prepend", "Replace", "NFC"});
  if (type == "Sequence") {
    auto const* list = r.field(n, "normalizers", path);
    if (!list || !list->is_array()) r.fail("field \"", path, ".normalizers\" must be an array");
    for (std::size_t i = 0; i < list->size(); ++i)
      read_normalizer(r, (*list)[i], path + ".normalizers[" + std::to_string(i) + "]");
  } else if (type == "Prepend") {
    normalizers_.push_back({normalizer_step::prepend, {}, r.string(n, "prepend", path)});
  } else if (type == "Replace") {
    auto const* pattern = r.field(n, "pattern", path);
    if (!pattern || !pattern->is_object()) r.fail("field \"", path, ".pattern\" must be an object");
    if (!r.field(*pattern, "String", path + ".pattern"))
      r.fail("field \"", path, ".pattern\" = ", pattern->dump(), " is not supported (only {\"String\": ...})");
    std::string const& from = r.string(*pattern, "String", path + ".pattern");
    if (from.empty()) r.fail("field \"", path, ".pattern.String\" is empty");
    normalizers_.push_back({normalizer_step::replace, from, r.string(n, "content", path)});
  } else {
    normalizers_.push_back({normalizer_step::nfc, {}, {}});
  }
}

inline void hf_tokenizer::read_pre_tokenizer(detail::hf_json const& r, json const& p, std::string const& path) {
  auto const& type = r.type(p, path, {"Sequence", "Metaspace", "Split", "ByteLevel"});
  if (type == "Sequence") {
    auto const* list = r.field(p, "pretokenizers", path);
    if (!list || !list->is_array()) r.fail("field \"", path, ".pretokenizers\" must be an array");
    for (std::size_t i = 0; i < list->size(); ++i)
      read_pre_tokenizer(r, (*list)[i], path + ".pretokenizers[" + std::to_string(i) + "]");
    return;
  }
  bool const after_byte_level = !pre_steps_.empty() && pre_steps_.back().byte_level;
  if (metaspace_ || after_byte_level)
    r.fail("field \"", path, "\": a ", type, " pre-tokenizer after ", metaspace_ ? "Metaspace" : "ByteLevel",
           " is not supported");
  if (type == "Metaspace") {
    if (!pre_steps_.empty()) r.fail("field \"", path, "\": Metaspace after Split is not supported");
    metaspace_step m;
    m.replacement = r.string(p, "replacement", path);
    if (m.replacement.empty()) r.fail("field \"", path, ".replacement\" is empty");
    if (auto const* s = r.field(p, "prepend_scheme", path); s && !s->is_null()) {
      std::string const v = s->is_string() ? s->get<std::string>() : s->dump();
      if (v == "always") m.scheme = prepend_scheme::always;
      else if (v == "first") m.scheme = prepend_scheme::first;
      else if (v == "never") m.scheme = prepend_scheme::never;
      else r.fail("field \"", path, ".prepend_scheme\" = ", s->dump(), " is not one of always, first, never");
    } else {
      m.scheme = r.boolean(p, "add_prefix_space", path, true) ? prepend_scheme::always : prepend_scheme::never;
    }
    m.split = r.boolean(p, "split", path, true);
    meta_piece_ = m.replacement;
    metaspace_ = std::move(m);
    return;
  }
  pre_step step;
  if (type == "Split") {
    auto const* pattern = r.field(p, "pattern", path);
    if (!pattern || !pattern->is_object()) r.fail("field \"", path, ".pattern\" must be an object");
    std::string re;
    if (r.field(*pattern, "Regex", path + ".pattern")) {
      re = r.string(*pattern, "Regex", path + ".pattern");
    } else {
      // A literal: escape every ASCII punctuation character (PCRE2 takes "\x" as a literal x for those).
      for (char c : r.string(*pattern, "String", path + ".pattern")) {
        if (static_cast<unsigned char>(c) < 0x80 && !std::isalnum(static_cast<unsigned char>(c))) re += '\\';
        re += c;
      }
    }
    std::string const& behavior = r.string(p, "behavior", path);
    if (behavior != "Isolated")
      r.fail("field \"", path, ".behavior\" = \"", behavior, "\" is not supported (supported: Isolated)");
    if (r.boolean(p, "invert", path, false)) r.fail("field \"", path, ".invert\" = true is not supported");
    regexes_.emplace_back(re, "field \"" + path + ".pattern\"");
    step.regex = std::int32_t(regexes_.size() - 1);
  } else {  // ByteLevel: the prefix space, GPT-2's own split when use_regex, then bytes (kind_)
    step.byte_level = true;
    step.add_prefix_space = r.boolean(p, "add_prefix_space", path, true);
    if (r.boolean(p, "use_regex", path, true)) {
      regexes_.emplace_back(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)",
                            "GPT-2's pre-tokenizer pattern");
      step.regex = std::int32_t(regexes_.size() - 1);
    }
    kind_ = hf_tokenizer_kind::byte_level_bpe;
  }
  pre_steps_.push_back(step);
}

inline void hf_tokenizer::read_decoder(detail::hf_json const& r, json const& d, std::string const& path) {
  auto const& type =
      r.type(d, path, {"Sequence", "Replace", "ByteFallback", "Fuse", "Strip", "Metaspace", "ByteLevel"});
  if (type == "Sequence") {
    auto const* list = r.field(d, "decoders", path);
    if (!list || !list->is_array()) r.fail("field \"", path, ".decoders\" must be an array");
    for (std::size_t i = 0; i < list->size(); ++i)
      read_decoder(r, (*list)[i], path + ".decoders[" + std::to_string(i) + "]");
  } else if (type == "Replace") {
    auto const* pattern = r.field(d, "pattern", path);
    if (!pattern || !pattern->is_object() || !r.field(*pattern, "String", path + ".pattern"))
      r.fail("field \"", path, ".pattern\" is not supported (only {\"String\": ...})");
    std::string const& from = r.string(*pattern, "String", path + ".pattern");
    if (from.empty()) r.fail("field \"", path, ".pattern.String\" is empty");
    decode_ops_.push_back({decode_op::replace, from, r.string(d, "content", path)});
  } else if (type == "ByteFallback") {
    decode_ops_.push_back({decode_op::byte_fallback, {}, {}});
  } else if (type == "Fuse") {
    decoder_fused_ = true;
  } else if (type == "Strip") {
    // Before Fuse it would strip every token; the files we read strip the fused text once.
    if (!decoder_fused_) r.fail("field \"", path, "\": Strip before Fuse is not supported");
    strip_content_ = r.string(d, "content", path);
    auto count = [&](char const* key) {
      auto const* v = r.field(d, key, path);
      if (!v || !v->is_number_unsigned() || v->get<std::uint64_t>() > 1024)
        r.fail("field \"", path, ".", key, "\" must be an integer in [0, 1024]");
      return std::size_t(v->get<std::uint64_t>());
    };
    strip_start_ = count("start");
    strip_stop_ = count("stop");
  } else if (type == "Metaspace") {
    std::string const& rep = r.string(d, "replacement", path);
    if (rep.empty()) r.fail("field \"", path, ".replacement\" is empty");
    decode_ops_.push_back({decode_op::replace, rep, " "});
    bool strip = r.boolean(d, "add_prefix_space", path, true);
    if (auto const* s = r.field(d, "prepend_scheme", path); s && !s->is_null()) strip = *s != "never";
    strip_first_token_space_ = strip;
  } else {
    decode_ops_.push_back({decode_op::byte_level, {}, {}});
  }
}

/// post_processor: the ids TemplateProcessing puts around a single sequence ($A); ByteLevel changes no id.
inline void hf_tokenizer::read_post_processor(detail::hf_json const& r, json const& p, std::string const& path) {
  auto const& type = r.type(p, path, {"TemplateProcessing", "ByteLevel", "Sequence"});
  if (type == "Sequence") {
    auto const* list = r.field(p, "processors", path);
    if (!list || !list->is_array()) r.fail("field \"", path, ".processors\" must be an array");
    for (std::size_t i = 0; i < list->size(); ++i)
      read_post_processor(r, (*list)[i], path + ".processors[" + std::to_string(i) + "]");
    return;
  }
  if (type == "ByteLevel") return;
  if (!prefix_.empty() || !suffix_.empty())
    r.fail("field \"", path, "\": a second TemplateProcessing is not supported");
  auto const* single = r.field(p, "single", path);
  if (!single || !single->is_array()) r.fail("field \"", path, ".single\" must be an array");
  auto const* specials = r.field(p, "special_tokens", path);
  bool seen_a = false;
  for (std::size_t i = 0; i < single->size(); ++i) {
    auto const& item = (*single)[i];
    std::string const ipath = path + ".single[" + std::to_string(i) + "]";
    if (auto const* seq = r.field(item, "Sequence", ipath)) {
      if (r.string(*seq, "id", ipath + ".Sequence") != "A" || seen_a)
        r.fail("field \"", ipath, "\": the single template must hold $A once");
      seen_a = true;
      continue;
    }
    auto const* sp = r.field(item, "SpecialToken", ipath);
    if (!sp) r.fail("field \"", ipath, "\" must be a Sequence or a SpecialToken");
    std::string const& name = r.string(*sp, "id", ipath + ".SpecialToken");
    auto const* def = specials ? r.field(*specials, name, path + ".special_tokens") : nullptr;
    if (!def) r.fail("field \"", ipath, "\": special token \"", name, "\" is not in ", path, ".special_tokens");
    auto const* list = r.field(*def, "ids", path + ".special_tokens." + name);
    if (!list || !list->is_array()) r.fail("field \"", path, ".special_tokens.", name, ".ids\" must be an array");
    for (std::size_t k = 0; k < list->size(); ++k)
      (seen_a ? suffix_ : prefix_).push_back(
          r.id((*list)[k], path + ".special_tokens." + name + ".ids[" + std::to_string(k) + "]", vocab_size()));
  }
  if (!seen_a) r.fail("field \"", path, ".single\" has no $A");
}

/// tokenizer_config.json: bos_token / eos_token ("<s>" or {"content": "<s>", ...}), add_bos_token / add_eos_token.
inline void hf_tokenizer::read_config(std::string_view config_text, std::string const& name) {
  detail::hf_json const r(name);
  auto const c = r.parse(config_text, "tokenizer_config.json");
  if (!c.is_object()) r.fail("tokenizer_config.json must be a JSON object");
  auto token = [&](char const* key) -> std::int32_t {
    auto const* v = r.field(c, key, "");
    if (!v || v->is_null()) return -2;  // not given
    std::string const* s = v->is_string() ? &v->get_ref<std::string const&>() : nullptr;
    if (v->is_object()) s = &r.string(*v, "content", key);
    if (!s) r.fail("field \"", key, "\" must be a string, an object with \"content\", or null");
    std::int32_t const id = find(*s);
    if (id < 0) r.fail("field \"", key, "\" = \"", *s, "\" is not a piece of tokenizer.json");
    return id;
  };
  if (auto const id = token("bos_token"); id != -2) bos_id_ = id;
  if (auto const id = token("eos_token"); id != -2) eos_id_ = id;
  auto toggle = [&](char const* key, std::int32_t id, std::vector<std::int32_t>& ids, bool front) {
    auto const* v = r.field(c, key, "");
    if (!v || v->is_null()) return;
    if (!v->is_boolean()) r.fail("field \"", key, "\" must be true or false");
    std::erase(ids, id);
    if (v->get<bool>()) {
      if (id < 0) r.fail("field \"", key, "\" is true but there is no such token");
      ids.insert(front ? ids.begin() : ids.end(), id);
    }
  };
  toggle("add_bos_token", bos_id_, prefix_, true);
  toggle("add_eos_token", eos_id_, suffix_, false);
}

/// Lookup tables of encode, decoded text of every piece, default BOS/EOS, and whether SentencePiece words may be
/// encoded one "▁"-word at a time.
inline void hf_tokenizer::build_indices() {
  bool const byte_level = kind_ == hf_tokenizer_kind::byte_level_bpe;
  auto const& inverse = detail::unicode_to_byte();
  // The file's characters -> bytes (byte-level); nullopt if some character is not one of GPT-2's 256.
  auto to_bytes = [&](std::string_view p) -> std::optional<std::string> {
    std::string out;
    for (std::size_t i = 0; i < p.size();) {
      std::size_t const n = detail::utf8_char_length(p, i);
      char32_t const c = detail::utf8_decode(p, i, n);
      if ((n == 1 && c >= 0x80) || c >= 512 || inverse[c] < 0) return std::nullopt;
      out += char(inverse[c]);
      i += n;
    }
    return out;
  };
  if (byte_level) {
    decltype(enc_index_) raw;
    for (auto const& [p, id] : enc_index_)
      if (auto b = to_bytes(p)) raw.emplace(std::move(*b), id);
    enc_index_ = std::move(raw);
  }
  char_ids_.fill(-1);
  byte_ids_.fill(-1);
  for (int b = 0; b < 256; ++b) {
    auto it = enc_index_.find(std::string(1, char(b)));
    if (it != enc_index_.end()) char_ids_[std::size_t(b)] = it->second;
    char hex[8];  // "<0x0A>": printable ASCII, the same in the file's and in raw form
    std::snprintf(hex, sizeof hex, "<0x%02X>", b);
    if (auto jt = enc_index_.find(std::string_view(hex)); jt != enc_index_.end())
      byte_ids_[std::size_t(b)] = jt->second;
  }
  // Decoded text of each piece: the decoder's per-token steps in order.
  decoded_.resize(pieces_.size());
  for (std::size_t id = 0; id < pieces_.size(); ++id) {
    std::string t = pieces_[id];
    for (auto const& op : decode_ops_) {
      if (op.op == decode_op::replace) {
        replace_all(t, op.from, op.to);
      } else if (op.op == decode_op::byte_fallback) {
        unsigned v = 0;
        auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
        if (t.size() == 6 && t.starts_with("<0x") && t.back() == '>' && hex(t[3]) && hex(t[4]) &&
            std::sscanf(t.c_str() + 3, "%2x", &v) == 1)
          t.assign(1, char(v));
      } else if (auto b = to_bytes(t)) {
        t = std::move(*b);
      }
    }
    decoded_[id] = std::move(t);
  }
  // Added tokens by first byte, longest first (leftmost-longest matching).
  for (std::size_t k = 0; k < added_.size(); ++k)
    added_by_byte_[static_cast<unsigned char>(added_[k].content[0])].push_back(std::int32_t(k));
  for (auto& v : added_by_byte_)
    std::stable_sort(v.begin(), v.end(), [&](std::int32_t a, std::int32_t b) {
      return added_[std::size_t(a)].content.size() > added_[std::size_t(b)].content.size();
    });
  // Default BOS / EOS: the template's, else pieces the target models use.
  auto first_of = [&](std::initializer_list<char const*> names) {
    for (auto n : names)
      if (auto id = find(n); id >= 0) return id;
    return std::int32_t(-1);
  };
  bos_id_ = !prefix_.empty() ? prefix_.front() : first_of({"<s>", "<|begin_of_text|>"});
  eos_id_ = !suffix_.empty() ? suffix_.back() : first_of({"</s>", "<|end_of_text|>", "<|endoftext|>"});
  // SentencePiece words: no merge may join a character to a following "▁" (then a "▁" after another character
  // starts a word that BPE can finish alone), "▁" itself must be a piece (no unk fusing across), and ignore_merges
  // must not look at whole segments.
  chunk_at_meta_ = false;
  if (!byte_level && !ignore_merges_ && enc_index_.count(meta_piece_)) {
    chunk_at_meta_ = true;
    for (auto const& [p, id] : enc_index_) {
      for (std::size_t i = p.find(meta_piece_, 1); i != std::string::npos; i = p.find(meta_piece_, i + 1))
        if (i < meta_piece_.size() || p.compare(i - meta_piece_.size(), meta_piece_.size(), meta_piece_) != 0) {
          chunk_at_meta_ = false;
          break;
        }
      if (!chunk_at_meta_) break;
    }
  }
}

/// Reads @p path: a tokenizer.json file, or a model folder that holds one. tokenizer_config.json next to it, when
/// present, names BOS/EOS and may turn them on or off. @throws rsq::io_error naming the file.
[[nodiscard]] inline hf_tokenizer load_hf_tokenizer(std::filesystem::path const& path) {
  std::filesystem::path const file = std::filesystem::is_directory(path) ? path / "tokenizer.json" : path;
  auto const bytes = detail::read_file(file);
  hf_read_options opt;
  opt.name = file.string();
  auto const config = file.parent_path() / "tokenizer_config.json";
  if (std::filesystem::is_regular_file(config)) {
    auto const c = detail::read_file(config);
    opt.tokenizer_config = std::string(reinterpret_cast<char const*>(c.data()), c.size());
  }
  return parse_hf_tokenizer(std::string_view(reinterpret_cast<char const*>(bytes.data()), bytes.size()), opt);
}

}  // namespace rsq::model
