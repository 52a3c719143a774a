// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The llama2c tokenizer: its file format (int32 max_token_length, then per piece float32 score, int32 length and
/// the piece's bytes, little-endian), a validating reader and a writer, and `encode`/`decode` that behave as
/// llama2c's `run.c` does:
///  - encode: optional BOS (id 1); a dummy-prefix piece " " when the text is not empty; each UTF-8 codepoint (a
///    byte plus at most 3 continuation bytes) looked up as a piece, or else one byte-fallback id (byte + 3) per
///    byte; then, while some adjacent pair concatenates to a piece, merge the leftmost pair whose piece has the
///    highest score; optional EOS (id 2).
///  - decode: after BOS a leading space of the piece is dropped; pieces of the form "<0xHH>" stand for the raw byte.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "rsq/core/error.hpp"
#include "rsq/model/binary_io.hpp"

namespace rsq::model {

/// Options of tokenizer::encode.
struct encode_options {
  bool bos = true;   ///< prepend BOS (id 1)
  bool eos = false;  ///< append EOS (id 2)
};

/// A llama2c (sentencepiece-derived) tokenizer: pieces with scores, looked up by their bytes.
class tokenizer {
 public:
  static constexpr std::int32_t unk_id = 0;                ///< "<unk>"
  static constexpr std::int32_t bos_id = 1;                ///< beginning of sequence
  static constexpr std::int32_t eos_id = 2;                ///< end of sequence
  static constexpr std::int32_t byte_fallback_offset = 3;  ///< byte b is id b + 3 when no piece matches
  static constexpr std::int32_t max_piece_length = 1 << 16;  ///< longest piece (and max_token_length) accepted
  static constexpr std::int32_t max_vocab_size = 1 << 24;    ///< most pieces accepted

  tokenizer() = default;

  /// A tokenizer from its pieces and scores (same length). @p max_token_length 0 means "the longest piece".
  /// @throws rsq::invalid_argument if the lengths differ, a piece is empty, longer than max_token_length or
  ///         contains a NUL byte (run.c handles pieces as C strings), or a score is NaN/Inf.
  tokenizer(std::vector<std::string> pieces, std::vector<float> scores, std::int32_t max_token_length = 0)
      : pieces_(std::move(pieces)), scores_(std::move(scores)), max_token_length_(max_token_length) {
    RSQ_EXPECTS(pieces_.size() == scores_.size(), "tokenizer: ", pieces_.size(), " pieces but ", scores_.size(),
                " scores");
    RSQ_EXPECTS(!pieces_.empty() && pieces_.size() <= std::size_t(max_vocab_size),
                "tokenizer: the number of pieces must be in [1, ", max_vocab_size, "], got ", pieces_.size());
    RSQ_EXPECTS(max_token_length_ >= 0 && max_token_length_ <= max_piece_length,
                "tokenizer: max_token_length must be in [0, ", max_piece_length, "], got ", max_token_length_);
    std::size_t longest = 0;
    for (auto const& p : pieces_) longest = std::max(longest, p.size());
    if (max_token_length_ == 0) max_token_length_ = std::int32_t(std::min<std::size_t>(longest, max_piece_length));
    for (std::size_t i = 0; i < pieces_.size(); ++i) {
      auto const& p = pieces_[i];
      RSQ_EXPECTS(!p.empty() && p.size() <= std::size_t(max_token_length_), "tokenizer: piece ", i,
                  " has length ", p.size(), ", expected 1 to max_token_length = ", max_token_length_);
      RSQ_EXPECTS(p.find('\0') == std::string::npos, "tokenizer: piece ", i, " contains a NUL byte");
      RSQ_EXPECTS(std::isfinite(scores_[i]), "tokenizer: score of piece ", i, " is not finite (", scores_[i], ")");
    }
    build_index();
  }

  /// Number of pieces (the vocabulary size).
  [[nodiscard]] std::int32_t size() const noexcept { return std::int32_t(pieces_.size()); }
  [[nodiscard]] std::int32_t max_token_length() const noexcept { return max_token_length_; }
  [[nodiscard]] std::vector<std::string> const& pieces() const noexcept { return pieces_; }
  [[nodiscard]] std::vector<float> const& scores() const noexcept { return scores_; }
  [[nodiscard]] std::string const& piece(std::int32_t id) const {
    check_id(id, "tokenizer::piece");
    return pieces_[std::size_t(id)];
  }
  [[nodiscard]] float score(std::int32_t id) const {
    check_id(id, "tokenizer::score");
    return scores_[std::size_t(id)];
  }

  /// Id of the piece whose bytes are @p s, or -1. With duplicate pieces, the lowest id.
  [[nodiscard]] std::int32_t find(std::string_view s) const {
    auto it = index_.find(s);
    return it == index_.end() ? -1 : it->second;
  }

  /// Token ids of @p text, as llama2c's run.c `encode` computes them (see the file comment).
  /// @throws rsq::invalid_argument if @p text contains a NUL byte (run.c reads C strings), if the text is not empty
  ///         and there is no " " piece (dummy prefix), if a byte needs the fallback and the vocabulary has fewer
  ///         than 259 pieces, or if BOS/EOS is asked for and the vocabulary has fewer than 3 pieces.
  [[nodiscard]] std::vector<std::int32_t> encode(std::string_view text, encode_options const& opt = {}) const {
    RSQ_EXPECTS(text.find('\0') == std::string_view::npos, "tokenizer::encode: text contains a NUL byte at ",
                text.find('\0'));
    RSQ_EXPECTS(!(opt.bos || opt.eos) || size() > eos_id, "tokenizer::encode: BOS/EOS need at least 3 pieces, got ",
                size());
    std::vector<std::int32_t> t;
    t.reserve(text.size() + 3);
    if (opt.bos) t.push_back(bos_id);
    if (!text.empty()) {
      std::int32_t const prefix = find(" ");
      RSQ_EXPECTS(prefix >= 0, "tokenizer::encode: the vocabulary has no \" \" piece for the dummy prefix");
      t.push_back(prefix);
    }
    // Codepoints: a byte plus up to 3 continuation bytes (10xxxxxx), as run.c groups them.
    for (std::size_t i = 0; i < text.size();) {
      std::size_t j = i + 1;
      while (j < text.size() && (static_cast<unsigned char>(text[j]) & 0xC0) == 0x80 && j - i < 4) ++j;
      std::int32_t const id = find(text.substr(i, j - i));
      if (id >= 0) {
        t.push_back(id);
      } else {
        RSQ_EXPECTS(size() >= 256 + byte_fallback_offset, "tokenizer::encode: byte 0x", std::hex,
                    int(static_cast<unsigned char>(text[i])), std::dec, " at offset ", i,
                    " needs the byte-fallback pieces 3..258, the vocabulary has ", size(), " pieces");
        for (std::size_t k = i; k < j; ++k) t.push_back(std::int32_t(static_cast<unsigned char>(text[k])) + 3);
      }
      i = j;
    }
    merge_pairs(t);
    if (opt.eos) t.push_back(eos_id);
    return t;
  }

  /// The text of @p token when it follows @p prev (run.c's `decode`): after BOS a leading space is dropped, and a
  /// piece "<0xHH>" gives the byte HH. @throws rsq::invalid_argument if @p token is out of range.
  [[nodiscard]] std::string decode_piece(std::int32_t prev, std::int32_t token) const {
    std::string_view p = piece(token);
    if (prev == bos_id && !p.empty() && p.front() == ' ') p.remove_prefix(1);
    if (auto b = byte_piece_value(p)) return std::string(1, char(*b));
    return std::string(p);
  }

  /// The text of a token sequence: decode_piece of each token after its predecessor; BOS and EOS give no text.
  [[nodiscard]] std::string decode(std::span<const std::int32_t> tokens) const {
    std::string out;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] == bos_id || tokens[i] == eos_id) {
        check_id(tokens[i], "tokenizer::decode");
        continue;
      }
      out += decode_piece(i ? tokens[i - 1] : -1, tokens[i]);
    }
    return out;
  }

  friend bool operator==(tokenizer const& a, tokenizer const& b) {
    return a.max_token_length_ == b.max_token_length_ && a.pieces_ == b.pieces_ && a.scores_ == b.scores_;
  }

 private:
  struct string_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };

  void build_index() {
    index_.clear();
    index_.reserve(pieces_.size());
    for (std::size_t i = 0; i < pieces_.size(); ++i) index_.emplace(pieces_[i], std::int32_t(i));  // keeps the first
  }

  void check_id(std::int32_t id, char const* who) const {
    RSQ_EXPECTS(id >= 0 && id < size(), who, ": token id ", id, " is outside the vocabulary [0, ", size(), ")");
  }

  /// run.c tests pieces with sscanf("<0x%02hhX>"): "<0x", optional white space, then one or two hex digits.
  [[nodiscard]] static std::optional<unsigned char> byte_piece_value(std::string_view p) {
    if (p.substr(0, 3) != "<0x") return std::nullopt;
    p.remove_prefix(3);
    while (!p.empty() && (p.front() == ' ' || (p.front() >= '\t' && p.front() <= '\r'))) p.remove_prefix(1);
    auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    if (p.empty() || hex(p[0]) < 0) return std::nullopt;
    int v = hex(p[0]);
    if (p.size() > 1 && hex(p[1]) >= 0) v = v * 16 + hex(p[1]);
    return static_cast<unsigned char>(v);
  }

  /// The merge loop of run.c: repeatedly merge the leftmost adjacent pair whose concatenation is a piece with the
  /// highest score (strictly above -1e10, run.c's starting value). run.c rescans every pair after each merge
  /// (quadratic: a 1.3 MB document never finishes); here the symbols form a linked list and the candidate pairs a
  /// heap ordered by (score, then leftmost), so each merge costs O(log n). A heap entry whose two symbols have changed
  /// since it was pushed is skipped when it surfaces; the survivors come out in run.c's order, so the ids are the same.
  void merge_pairs(std::vector<std::int32_t>& t) const {
    std::size_t const n = t.size();
    if (n < 2) return;
    constexpr std::size_t none = std::size_t(-1);
    std::vector<std::size_t> next(n), prev(n);
    for (std::size_t k = 0; k < n; ++k) {
      next[k] = k + 1 < n ? k + 1 : none;
      prev[k] = k > 0 ? k - 1 : none;
    }
    struct candidate {
      float score;
      std::size_t left, right;
      std::int32_t left_id, right_id, merged;
    };
    // std::priority_queue puts the "largest" on top: higher score first, then the smaller (leftmost) position.
    auto const later = [](candidate const& a, candidate const& b) {
      return a.score != b.score ? a.score < b.score : a.left > b.left;
    };
    std::priority_queue<candidate, std::vector<candidate>, decltype(later)> heap(later);
    std::string buf;
    auto const push = [&](std::size_t a) {
      if (a == none || next[a] == none) return;
      std::size_t const b = next[a];
      buf.assign(pieces_[std::size_t(t[a])]);
      buf += pieces_[std::size_t(t[b])];
      std::int32_t const id = find(buf);
      if (id >= 0 && scores_[std::size_t(id)] > -1e10f) heap.push({scores_[std::size_t(id)], a, b, t[a], t[b], id});
    };
    for (std::size_t k = 0; k + 1 < n; ++k) push(k);
    std::vector<bool> alive(n, true);
    while (!heap.empty()) {
      auto const c = heap.top();
      heap.pop();
      if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right || t[c.left] != c.left_id ||
          t[c.right] != c.right_id)
        continue;  // stale: one of its symbols took part in a merge since
      t[c.left] = c.merged;
      alive[c.right] = false;
      next[c.left] = next[c.right];
      if (next[c.right] != none) prev[next[c.right]] = c.left;
      push(prev[c.left]);
      push(c.left);
    }
    std::size_t w = 0;
    for (std::size_t k = 0; k < n; ++k)
      if (alive[k]) t[w++] = t[k];
    t.resize(w);
  }

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::int32_t max_token_length_ = 0;
  std::unordered_map<std::string, std::int32_t, string_hash, std::equal_to<>> index_;
};

/// Options of parse_tokenizer / load_tokenizer.
struct tokenizer_read_options {
  /// Number of pieces to read (run.c reads exactly the model's vocab_size and ignores the rest); bytes after them
  /// are rejected. Without it, pieces are read up to the end of the buffer.
  std::optional<std::int32_t> vocab_size;
  std::string name = "<memory>";  ///< how messages name the buffer (the file overload sets the path)
};

/// Parses a llama2c tokenizer held in memory (what the fuzz target calls).
/// @throws rsq::io_error on truncation, trailing bytes (with a vocab_size), a max_token_length outside
///         [1, 65536], a piece length outside [1, max_token_length], a NUL byte in a piece, or a NaN/Inf score.
[[nodiscard]] inline tokenizer parse_tokenizer(std::span<const std::byte> data, tokenizer_read_options const& opt = {}) {
  detail::byte_reader r(data, opt.name, "llama2c tokenizer");
  if (opt.vocab_size)
    RSQ_EXPECTS(*opt.vocab_size > 0 && *opt.vocab_size <= tokenizer::max_vocab_size,
                "parse_tokenizer: vocab_size must be in [1, ", tokenizer::max_vocab_size, "], got ", *opt.vocab_size);
  std::int32_t const max_len = r.i32("max_token_length");
  if (max_len <= 0 || max_len > tokenizer::max_piece_length)
    r.fail("header: max_token_length = ", max_len, " is outside [1, ", tokenizer::max_piece_length, "]");
  std::vector<std::string> pieces;
  std::vector<float> scores;
  auto more = [&] { return opt.vocab_size ? pieces.size() < std::size_t(*opt.vocab_size) : r.remaining() > 0; };
  while (more()) {
    if (pieces.size() >= std::size_t(tokenizer::max_vocab_size))
      r.fail("holds more than ", tokenizer::max_vocab_size, " pieces");
    std::string const what = "piece " + std::to_string(pieces.size());
    float const score = r.f32(what + " score");
    if (!std::isfinite(score)) r.fail(what, " has a non-finite score (", score, ") at offset ", r.offset() - 4);
    std::int32_t const len = r.i32(what + " length");
    if (len <= 0 || len > max_len)
      r.fail(what, " has length ", len, " at offset ", r.offset() - 4, ", outside [1, max_token_length = ", max_len,
             "]");
    std::string p = r.bytes(std::size_t(len), what + " bytes");
    if (p.find('\0') != std::string::npos) r.fail(what, " contains a NUL byte");
    pieces.push_back(std::move(p));
    scores.push_back(score);
  }
  if (opt.vocab_size) r.expect_end();
  if (pieces.empty()) r.fail("holds no pieces");
  return tokenizer(std::move(pieces), std::move(scores), max_len);
}

/// Reads the llama2c tokenizer at @p path. @throws rsq::io_error naming the file.
[[nodiscard]] inline tokenizer load_tokenizer(std::filesystem::path const& path, tokenizer_read_options opt = {}) {
  auto const bytes = detail::read_file(path);
  opt.name = path.string();
  return parse_tokenizer(bytes, opt);
}

/// The bytes of @p t in the llama2c tokenizer format.
[[nodiscard]] inline std::vector<std::byte> serialize_tokenizer(tokenizer const& t) {
  RSQ_EXPECTS(t.size() > 0, "serialize_tokenizer: the tokenizer is empty");
  detail::byte_writer w;
  w.i32(t.max_token_length());
  for (std::int32_t i = 0; i < t.size(); ++i) {
    w.f32(t.scores()[std::size_t(i)]);
    w.i32(std::int32_t(t.pieces()[std::size_t(i)].size()));
    w.bytes(t.pieces()[std::size_t(i)]);
  }
  return std::move(w).take();
}

/// Writes @p t to @p path in the llama2c tokenizer format, atomically (temporary file + rename).
inline void save_tokenizer(std::filesystem::path const& path, tokenizer const& t) {
  auto const bytes = serialize_tokenizer(t);
  detail::write_file_atomic(path, bytes);
}

}  // namespace rsq::model
