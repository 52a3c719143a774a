// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Reading and writing llama2c checkpoints in the legacy "v0" float32 layout (the one `run.c` reads).
///
/// Layout (little-endian): a 28-byte header of seven int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
/// vocab_size, seq_len), then float32 arrays, row-major (out x in):
/// token_embedding (vocab x dim), rms_att (L x dim), wq (L x dim x dim), wk (L x kv_dim x dim), wv (L x kv_dim x dim),
/// wo (L x dim x dim), rms_ffn (L x dim), w1 (L x hidden x dim), w2 (L x dim x hidden), w3 (L x hidden x dim),
/// rms_final (dim), two RoPE tables of seq_len x head_size/2 floats (cos, then sin; `run.c` skips them), and, when
/// the header's vocab_size is negative, a separate classifier (vocab x dim). A positive vocab_size means the
/// classifier is the token embedding.
///
/// The reader checks everything before it allocates: header fields (positive, plausible, divisibility), the exact
/// file size the header implies (truncated files and trailing bytes are both rejected), and every float (NaN/Inf).
/// Any problem is an rsq::io_error naming the file and what is wrong.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <array>
#include <filesystem>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/model/binary_io.hpp"
#include "rsq/model/llama.hpp"

namespace rsq::model {

/// Options of parse_llama2c_checkpoint / load_llama2c_checkpoint.
struct checkpoint_read_options {
  std::string name = "<memory>";  ///< how messages name the buffer (the file overload sets the path)
};

/// How the writer stores the classifier.
enum class classifier_storage {
  automatic,  ///< shared (positive vocab in the header) iff the classifier equals the token embedding bit for bit
  shared,     ///< shared; the classifier must equal the token embedding
  separate,   ///< always written after the RoPE tables (negative vocab in the header)
};

/// What the writer puts in the two RoPE tables that `run.c` skips.
enum class rope_table_content {
  frequencies,  ///< cos/sin of pos * theta^(-2i/head_size), as llama2c's export.py writes them
  zeros,        ///< zeros
};

/// Options of serialize_llama2c_checkpoint / save_llama2c_checkpoint.
struct checkpoint_write_options {
  classifier_storage classifier = classifier_storage::automatic;
  rope_table_content rope_tables = rope_table_content::frequencies;
};

/// Limits beyond which a header field is taken as corrupt rather than as a (very) large model.
struct llama2c_limits {
  static constexpr std::int64_t max_dim = 1 << 20;         ///< dim and hidden_dim
  static constexpr std::int64_t max_layers = 1 << 16;      ///< n_layers
  static constexpr std::int64_t max_vocab = 1 << 24;       ///< |vocab_size|
  static constexpr std::int64_t max_seq_len = 1 << 24;     ///< seq_len
};

/// The first int32 of the newer llama2c formats (version 1 and 2, `export.py --version`): "ak42".
inline constexpr std::int32_t llama2c_magic = 0x616b3432;

namespace detail {

/// Number of float32 values the file holds after the header, with the counts computed in 64 bits (the limits keep
/// every product far below 2^63).
struct checkpoint_layout {
  std::uint64_t embedding, per_layer_vectors, wq, wk, wv, wo, w1, w2, w3, rms_final, rope_table, classifier;
  [[nodiscard]] std::uint64_t total_floats() const {
    return embedding + 2 * per_layer_vectors + wq + wk + wv + wo + w1 + w2 + w3 + rms_final + 2 * rope_table +
           classifier;
  }
};

inline checkpoint_layout layout_of(llama_config const& c, bool separate_classifier) {
  std::uint64_t const d = std::uint64_t(c.dim), h = std::uint64_t(c.hidden_dim), L = std::uint64_t(c.n_layers),
                      v = std::uint64_t(c.vocab_size), kv = std::uint64_t(c.kv_dim()),
                      hs = std::uint64_t(c.head_size()), s = std::uint64_t(c.seq_len);
  return {v * d,  L * d,     L * d * d, L * kv * d,    L * kv * d, L * d * d,
          L * h * d, L * d * h, L * h * d, d, s * (hs / 2), separate_classifier ? v * d : 0};
}

/// The RoPE table llama2c's export.py writes: value(pos, i) = f(pos * theta^(-2i/head_size)), with the frequency
/// and the angle rounded to float32 as PyTorch computes them, then cos/sin evaluated in double and rounded once.
inline std::vector<float> rope_table(llama_config const& c, bool sine) {
  int const half = c.head_size() / 2;
  std::vector<float> t(std::size_t(c.seq_len) * std::size_t(half));
  for (int i = 0; i < half; ++i) {
    float const freq = float(1.0 / std::pow(c.rope_theta, double(2 * i) / double(c.head_size())));
    for (int p = 0; p < c.seq_len; ++p) {
      double const angle = double(float(p) * freq);
      t[std::size_t(p) * half + i] = float(sine ? std::sin(angle) : std::cos(angle));
    }
  }
  return t;
}

template <class... Args>
[[noreturn]] void header_error(byte_reader const& r, Args const&... args) {
  r.fail("header: ", args...);
}

inline llama_config read_checkpoint_header(byte_reader& r, bool& separate_classifier) {
  if (r.size() < 28)
    r.fail("truncated: the header needs 28 bytes, the file has ", r.size());
  std::int32_t f[7];
  for (auto& x : f) x = r.i32("header");
  if (f[0] == llama2c_magic)
    header_error(r, "magic 'ak42' of a llama2c version-1/2 export; only the legacy v0 float32 layout is supported");
  char const* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  std::int64_t const limits[7] = {llama2c_limits::max_dim, llama2c_limits::max_dim, llama2c_limits::max_layers,
                                  llama2c_limits::max_dim, llama2c_limits::max_dim, llama2c_limits::max_vocab,
                                  llama2c_limits::max_seq_len};
  for (int i = 0; i < 7; ++i) {
    std::int64_t const v = i == 5 ? (f[i] < 0 ? -std::int64_t(f[i]) : std::int64_t(f[i])) : std::int64_t(f[i]);
    if (v <= 0) header_error(r, names[i], " = ", f[i], i == 5 ? " must not be zero" : " must be positive");
    if (v > limits[i]) header_error(r, names[i], " = ", f[i], " is implausibly large (limit ", limits[i], ")");
  }
  llama_config c;
  c.dim = f[0];
  c.hidden_dim = f[1];
  c.n_layers = f[2];
  c.n_heads = f[3];
  c.n_kv_heads = f[4];
  c.vocab_size = f[5] < 0 ? -f[5] : f[5];
  c.seq_len = f[6];
  separate_classifier = f[5] < 0;
  if (c.dim % c.n_heads != 0) header_error(r, "dim = ", c.dim, " is not divisible by n_heads = ", c.n_heads);
  if (c.n_heads % c.n_kv_heads != 0)
    header_error(r, "n_heads = ", c.n_heads, " is not divisible by n_kv_heads = ", c.n_kv_heads);
  if (c.head_size() % 2 != 0)
    header_error(r, "head size dim/n_heads = ", c.head_size(), " is odd (RoPE rotates pairs)");
  return c;
}

}  // namespace detail

/// Parses a llama2c v0 checkpoint held in memory (what the fuzz target calls).
/// @throws rsq::io_error on a truncated buffer, trailing bytes, a corrupt header or a NaN/Inf value.
[[nodiscard]] inline llama_model parse_llama2c_checkpoint(std::span<const std::byte> data,
                                                          checkpoint_read_options const& opt = {}) {
  detail::byte_reader r(data, opt.name, "llama2c checkpoint");
  bool separate = false;
  llama_model m;
  m.config = detail::read_checkpoint_header(r, separate);
  auto const& c = m.config;
  // Check the size the header implies before allocating anything: a corrupt header cannot ask for more memory
  // than the file holds.
  std::uint64_t const need = 28 + 4 * detail::layout_of(c, separate).total_floats();
  if (data.size() < need)
    r.fail("truncated: the header (dim ", c.dim, ", hidden_dim ", c.hidden_dim, ", n_layers ", c.n_layers,
           ", n_heads ", c.n_heads, ", n_kv_heads ", c.n_kv_heads, ", vocab_size ", separate ? -c.vocab_size : c.vocab_size,
           ", seq_len ", c.seq_len, ") implies ", need, " bytes, the file has ", data.size());
  if (data.size() > need)
    r.fail("has ", data.size() - need, " unexpected trailing bytes (the header implies ", need, " bytes)");

  std::size_t const d = std::size_t(c.dim), h = std::size_t(c.hidden_dim), kv = std::size_t(c.kv_dim()),
                    v = std::size_t(c.vocab_size);
  m.token_embedding = rsq::matrix<float>(rsq::matrix<float>::shape_type{v, d});
  r.f32s(m.token_embedding.data(), v * d, "token_embedding");
  m.layers.resize(std::size_t(c.n_layers));
  auto per_layer = [&](auto member, std::array<std::size_t, 2> shape, char const* what) {
    for (std::size_t l = 0; l < m.layers.size(); ++l) {
      auto& w = m.layers[l].*member;
      w = std::remove_reference_t<decltype(w)>(shape);
      r.f32s(w.data(), shape[0] * shape[1], std::string(what) + " of layer " + std::to_string(l));
    }
  };
  auto per_layer_vec = [&](rsq::vector<float> decoder_layer::*member, char const* what) {
    for (std::size_t l = 0; l < m.layers.size(); ++l) {
      auto& g = m.layers[l].*member;
      g = rsq::vector<float>(rsq::vector<float>::shape_type{d});
      r.f32s(g.data(), d, std::string(what) + " of layer " + std::to_string(l));
    }
  };
  using mat = rsq::matrix<float> decoder_layer::*;
  per_layer_vec(&decoder_layer::rms_att, "rms_att");
  per_layer(mat(&decoder_layer::wq), {d, d}, "wq");
  per_layer(mat(&decoder_layer::wk), {kv, d}, "wk");
  per_layer(mat(&decoder_layer::wv), {kv, d}, "wv");
  per_layer(mat(&decoder_layer::wo), {d, d}, "wo");
  per_layer_vec(&decoder_layer::rms_ffn, "rms_ffn");
  per_layer(mat(&decoder_layer::w1), {h, d}, "w1");
  per_layer(mat(&decoder_layer::w2), {d, h}, "w2");
  per_layer(mat(&decoder_layer::w3), {h, d}, "w3");
  m.rms_final = rsq::vector<float>(rsq::vector<float>::shape_type{d});
  r.f32s(m.rms_final.data(), d, "rms_final");
  // The RoPE tables are unused (run.c skips them and recomputes the rotation); they are still checked for NaN/Inf.
  std::vector<float> table(std::size_t(c.seq_len) * std::size_t(c.head_size() / 2));
  r.f32s(table.data(), table.size(), "RoPE cos table");
  r.f32s(table.data(), table.size(), "RoPE sin table");
  if (separate) {
    m.classifier = rsq::matrix<float>(rsq::matrix<float>::shape_type{v, d});
    r.f32s(m.classifier.data(), v * d, "classifier");
  } else {
    m.classifier = m.token_embedding;
  }
  r.expect_end();
  return m;
}

/// Reads the llama2c v0 checkpoint at @p path. @throws rsq::io_error naming the file.
[[nodiscard]] inline llama_model load_llama2c_checkpoint(std::filesystem::path const& path) {
  auto const bytes = detail::read_file(path);
  return parse_llama2c_checkpoint(bytes, {.name = path.string()});
}

/// The bytes of @p m as a llama2c v0 checkpoint.
/// @throws rsq::invalid_argument if @p m is malformed (shapes, NaN/Inf), if its sizes do not fit the header, or if
///         classifier_storage::shared is asked for while the classifier differs from the token embedding.
[[nodiscard]] inline std::vector<std::byte> serialize_llama2c_checkpoint(llama_model const& m,
                                                                         checkpoint_write_options const& opt = {}) {
  validate(m, /*check_finite=*/true);
  auto const& c = m.config;
  RSQ_EXPECTS(c.dim <= llama2c_limits::max_dim && c.hidden_dim <= llama2c_limits::max_dim &&
                  c.n_layers <= llama2c_limits::max_layers && c.vocab_size <= llama2c_limits::max_vocab &&
                  c.seq_len <= llama2c_limits::max_seq_len,
              "serialize_llama2c_checkpoint: the model's sizes exceed what the reader accepts");
  RSQ_EXPECTS(!c.rope_scaling.enabled(), "serialize_llama2c_checkpoint: llama2c's run.c has no RoPE scaling");
  RSQ_EXPECTS(!c.qkv_bias && !c.o_bias && !c.mlp_bias, "serialize_llama2c_checkpoint: a llama2c checkpoint has no biases");
  RSQ_EXPECTS(c.head_dim == 0, "serialize_llama2c_checkpoint: a llama2c checkpoint has heads of dim / n_heads, the model's "
              "are ", c.head_dim, " wide");
  RSQ_EXPECTS(c.rope_theta == 10000.0,
              "serialize_llama2c_checkpoint: llama2c's run.c hard-codes RoPE theta 10000, the model has ", c.rope_theta);
  RSQ_EXPECTS(c.norm_eps == 1e-5f, "serialize_llama2c_checkpoint: llama2c's run.c hard-codes RMSNorm eps 1e-5, the model has ",
              c.norm_eps);
  bool const equal = m.classifier.size() == m.token_embedding.size() &&
                     std::memcmp(m.classifier.data(), m.token_embedding.data(), m.classifier.size() * sizeof(float)) == 0;
  bool separate = false;
  switch (opt.classifier) {
    case classifier_storage::automatic: separate = !equal; break;
    case classifier_storage::shared:
      RSQ_EXPECTS(equal, "serialize_llama2c_checkpoint: classifier_storage::shared needs the classifier to equal "
                         "the token embedding, they differ");
      break;
    case classifier_storage::separate: separate = true; break;
  }
  detail::byte_writer w;
  w.reserve(std::size_t(28 + 4 * detail::layout_of(c, separate).total_floats()));
  for (int f : {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, separate ? -c.vocab_size : c.vocab_size,
                c.seq_len})
    w.i32(f);
  w.f32s(m.token_embedding.data(), m.token_embedding.size());
  auto put = [&](auto get) {
    for (auto const& L : m.layers) {
      auto const& a = get(L);
      w.f32s(a.data(), a.size());
    }
  };
  put([](decoder_layer const& L) -> auto const& { return L.rms_att; });
  put([](decoder_layer const& L) -> auto const& { return L.wq; });
  put([](decoder_layer const& L) -> auto const& { return L.wk; });
  put([](decoder_layer const& L) -> auto const& { return L.wv; });
  put([](decoder_layer const& L) -> auto const& { return L.wo; });
  put([](decoder_layer const& L) -> auto const& { return L.rms_ffn; });
  put([](decoder_layer const& L) -> auto const& { return L.w1; });
  put([](decoder_layer const& L) -> auto const& { return L.w2; });
  put([](decoder_layer const& L) -> auto const& { return L.w3; });
  w.f32s(m.rms_final.data(), m.rms_final.size());
  for (bool sine : {false, true}) {
    std::vector<float> t = opt.rope_tables == rope_table_content::frequencies
                               ? detail::rope_table(c, sine)
                               : std::vector<float>(std::size_t(c.seq_len) * std::size_t(c.head_size() / 2), 0.f);
    w.f32s(t.data(), t.size());
  }
  if (separate) w.f32s(m.classifier.data(), m.classifier.size());
  return std::move(w).take();
}

/// Writes @p m to @p path as a llama2c v0 checkpoint that an unmodified `run.c` reads, atomically (temporary file
/// + rename). @throws rsq::invalid_argument for a malformed model, rsq::io_error if the file cannot be written.
inline void save_llama2c_checkpoint(std::filesystem::path const& path, llama_model const& m,
                                    checkpoint_write_options const& opt = {}) {
  auto const bytes = serialize_llama2c_checkpoint(m, opt);
  detail::write_file_atomic(path, bytes);
}

}  // namespace rsq::model
