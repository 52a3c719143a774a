// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// GGUF, llama.cpp's model container (../shared/docs/formats.md §5; ggml's docs/gguf.md), version 3, little-endian:
///
///     "GGUF"  u32 version  u64 tensor_count  u64 metadata_kv_count
///     metadata_kv_count × { string key, u32 value type, value }
///     tensor_count × { string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset }
///     zero padding to general.alignment (u32 key; 32 when absent), then the tensor data section
///
/// A string is a u64 byte count and the bytes (no NUL). A value is one of the 12 scalar types (gguf_type) or an
/// ARRAY: u32 element type, u64 count, the elements. ne[0] is the contiguous dimension: a weight of out_features
/// rows and in_features columns has ne = {in_features, out_features}. Each tensor's offset is relative to the data
/// section and a multiple of the alignment; its bytes (rsq::pack::row_bytes(type, ne[0]) × ne[1] × …) are followed
/// by zeros up to the alignment.
///
/// Writing (gguf_writer) checks every tensor when it is added, as llama.cpp's loader would (a name of at most 63
/// bytes, unique; 1 to 4 dimensions of at least 1; ne[0] a multiple of the type's block; the byte count), so that
/// the file is laid out before any tensor byte exists: tensors come from the caller's memory or from a callback
/// that produces them one at a time while the file is written (a model never needs to be in memory at once). The
/// header goes out in one write, every tensor in one write; the file appears only complete
/// (rsq/io/atomic_file.hpp).
///
/// Reading (gguf_file) maps the file (rsq/io/mapped_file.hpp) and validates all of it before anything is handed
/// out; every refusal is an rsq::io_error naming the file and the field, key or tensor: magic, version (2 and 3 are
/// read: their layouts are the same; version 1 had 32-bit counts), counts that cannot fit in the file, strings and
/// arrays running past its end, unknown value types, nested arrays (llama.cpp refuses them too), a bool that is
/// not 0 or 1, empty or duplicate keys, general.alignment that is not a UINT32 power of two, empty, over-long or
/// duplicate tensor names, n_dims outside 1..4, a dimension of 0 or an element count beyond 2^63, unknown ggml type
/// ids, ne[0] not a multiple of the block, offsets that are not aligned, lie past the end of the file or overlap
/// another tensor.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "rsq/core/error.hpp"
#include "rsq/core/view.hpp"
#include "rsq/io/atomic_file.hpp"
#include "rsq/io/mapped_file.hpp"
#include "rsq/pack/ggml_blocks.hpp"

namespace rsq::io {

static_assert(std::endian::native == std::endian::little, "rsq::io: GGUF files are read and written little-endian");

/// GGUF metadata value types, with the ids the files use.
enum class gguf_type : std::uint32_t {
  u8 = 0,
  i8 = 1,
  u16 = 2,
  i16 = 3,
  u32 = 4,
  i32 = 5,
  f32 = 6,
  boolean = 7,
  string = 8,
  array = 9,
  u64 = 10,
  i64 = 11,
  f64 = 12,
};

/// The name gguf.md uses for @p t ("UINT32", "STRING", …), or "unknown".
[[nodiscard]] constexpr std::string_view to_string(gguf_type t) noexcept {
  constexpr std::string_view names[] = {"UINT8", "INT8",   "UINT16", "INT16",  "UINT32", "INT32", "FLOAT32",
                                        "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64",  "FLOAT64"};
  return std::uint32_t(t) < 13 ? names[std::uint32_t(t)] : std::string_view("unknown");
}

/// GGUF's newest version, the one rsq writes.
inline constexpr std::uint32_t gguf_version = 3;
/// The alignment of the data section and of every tensor when `general.alignment` is absent.
inline constexpr std::uint32_t gguf_default_alignment = 32;
/// The longest tensor name llama.cpp accepts (GGML_MAX_NAME is 64 bytes including the NUL).
inline constexpr std::size_t gguf_max_tensor_name = 63;
/// The most dimensions of a tensor (GGML_MAX_DIMS).
inline constexpr std::size_t gguf_max_dims = 4;

namespace detail {

/// Scalars in the order of their type ids (9, ARRAY, left out), then an array of each.
using gguf_variant =
    std::variant<std::uint8_t, std::int8_t, std::uint16_t, std::int16_t, std::uint32_t, std::int32_t, float, bool,
                 std::string, std::uint64_t, std::int64_t, double, std::vector<std::uint8_t>, std::vector<std::int8_t>,
                 std::vector<std::uint16_t>, std::vector<std::int16_t>, std::vector<std::uint32_t>,
                 std::vector<std::int32_t>, std::vector<float>, std::vector<bool>, std::vector<std::string>,
                 std::vector<std::uint64_t>, std::vector<std::int64_t>, std::vector<double>>;
inline constexpr std::size_t gguf_scalar_count = 12;

template <class T, class V>
struct variant_index;
template <class T, class... Ts>
struct variant_index<T, std::variant<Ts...>> {
  static constexpr std::size_t value = [] {
    constexpr bool same[] = {std::is_same_v<T, Ts>...};
    for (std::size_t i = 0; i < sizeof...(Ts); ++i)
      if (same[i]) return i;
    return sizeof...(Ts);
  }();
};

/// Index of T among the alternatives, or the number of alternatives when T is none of them.
template <class T>
inline constexpr std::size_t gguf_index_v = variant_index<T, gguf_variant>::value;
template <class T>
concept gguf_alternative = gguf_index_v<T> < std::variant_size_v<gguf_variant>;
template <class T>
concept gguf_arithmetic = gguf_alternative<T> && std::is_arithmetic_v<T>;

/// Type id of the scalar alternative @p i (i < 12).
constexpr gguf_type scalar_type_of(std::size_t i) noexcept { return gguf_type(i < 9 ? i : i + 1); }
/// Alternative index of scalar type id @p t (t ≠ ARRAY, t ≤ 12).
constexpr std::size_t scalar_index_of(gguf_type t) noexcept {
  auto const id = std::size_t(t);
  return id < 9 ? id : id - 1;
}

}  // namespace detail

/// One metadata value: a scalar of one of the 12 GGUF types, or an array of one of them. The exact GGUF type is
/// kept (a UINT32 stays a UINT32 and is written back as one).
class gguf_value {
 public:
  gguf_value() = default;  ///< UINT8 0
  /// A value of the GGUF type of @p v: std::uint32_t → UINT32, float → FLOAT32, std::vector<std::string> → an
  /// ARRAY of STRING, …
  template <class T>
    requires detail::gguf_alternative<std::remove_cvref_t<T>>
  gguf_value(T&& v) : v_(std::forward<T>(v)) {}  // NOLINT: implicit on purpose
  /// A STRING.
  gguf_value(char const* s) : v_(std::string(s)) {}        // NOLINT
  gguf_value(std::string_view s) : v_(std::string(s)) {}  // NOLINT
  /// An ARRAY of the arithmetic type T (copied).
  template <detail::gguf_arithmetic T>
  gguf_value(std::span<const T> s) : v_(std::vector<T>(s.begin(), s.end())) {}  // NOLINT
  /// An ARRAY of STRING (copied).
  gguf_value(std::span<const std::string_view> s) : v_(std::vector<std::string>(s.begin(), s.end())) {}  // NOLINT

  /// The value's type: ARRAY for arrays.
  [[nodiscard]] gguf_type type() const noexcept {
    return is_array() ? gguf_type::array : detail::scalar_type_of(v_.index());
  }
  /// The type of the elements of an array, or type() of a scalar.
  [[nodiscard]] gguf_type element_type() const noexcept {
    return detail::scalar_type_of(v_.index() % detail::gguf_scalar_count);
  }
  [[nodiscard]] bool is_array() const noexcept { return v_.index() >= detail::gguf_scalar_count; }
  /// The number of elements of an array; 1 for a scalar.
  [[nodiscard]] std::size_t size() const noexcept {
    if (!is_array()) return 1;
    return std::visit(
        [](auto const& x) -> std::size_t {
          if constexpr (requires { x.size(); } && !std::is_same_v<std::remove_cvref_t<decltype(x)>, std::string>)
            return x.size();
          else
            return 1;
        },
        v_);
  }
  /// "UINT32", "STRING", "ARRAY[FLOAT32]", …
  [[nodiscard]] std::string type_name() const {
    if (!is_array()) return std::string(to_string(type()));
    return "ARRAY[" + std::string(to_string(element_type())) + "]";
  }

  /// Whether the value is exactly a T (std::uint32_t, std::string, std::vector<float>, …).
  template <detail::gguf_alternative T>
  [[nodiscard]] bool holds() const noexcept {
    return std::holds_alternative<T>(v_);
  }
  /// The value as T.
  /// @param key the key in messages
  /// @throws rsq::io_error naming @p key, the type asked for and the type found, when the value is not a T
  template <detail::gguf_alternative T>
  [[nodiscard]] T const& as(std::string_view key = "?") const {
    if (auto const* p = std::get_if<T>(&v_)) return *p;
    rsq::detail::throw_io_error("GGUF key \"", key, "\" is ", type_name(), ", expected ",
                                gguf_value(T{}).type_name());
  }

  [[nodiscard]] detail::gguf_variant const& variant() const noexcept { return v_; }
  bool operator==(gguf_value const&) const = default;

 private:
  detail::gguf_variant v_;
};

/// One metadata entry.
struct gguf_kv {
  std::string key;
  gguf_value value;
};

/// One tensor of a GGUF file: its name, dimensions (ne order: ne[0] contiguous), ggml type, and where its bytes are.
struct gguf_tensor_info {
  std::string name;
  std::vector<index_t> ne;  ///< 1 to 4 dimensions, ne[0] the contiguous one
  pack::ggml_type type = pack::ggml_type::f32;
  std::uint64_t offset = 0;  ///< from the start of the data section
  std::uint64_t bytes = 0;   ///< without the padding

  /// Elements in all.
  [[nodiscard]] index_t elements() const noexcept {
    index_t n = 1;
    for (auto d : ne) n *= d;
    return n;
  }
  /// Rows of ne[0] elements (the product of ne[1], ne[2], …).
  [[nodiscard]] index_t rows() const noexcept { return ne.empty() ? 0 : elements() / ne[0]; }
};

/// A tensor converted to float: values in C order of (ne[n−1], …, ne[1], ne[0]), i.e. rows of ne[0] elements.
struct gguf_float_tensor {
  std::vector<index_t> ne;
  std::vector<float> values;

  /// Rows of ne[0] values (out_features of a weight).
  [[nodiscard]] index_t rows() const noexcept { return ne.empty() ? 0 : index_t(values.size()) / ne[0]; }
  /// Values per row (ne[0]; in_features of a weight).
  [[nodiscard]] index_t cols() const noexcept { return ne.empty() ? 0 : ne[0]; }
};

namespace detail {

/// Bytes of a tensor of type @p t with dimensions @p ne, or nothing when the count overflows 2^63.
inline std::optional<std::uint64_t> gguf_tensor_bytes(pack::ggml_type t, std::span<const index_t> ne) {
  auto const tr = pack::traits(t);
  constexpr auto max = std::uint64_t(std::numeric_limits<std::int64_t>::max());
  std::uint64_t elements = 1;
  for (auto d : ne) {
    if (d < 1 || std::uint64_t(d) > max / elements) return std::nullopt;
    elements *= std::uint64_t(d);
  }
  std::uint64_t const blocks = elements / std::uint64_t(tr.block_elements);
  if (blocks > max / tr.block_bytes) return std::nullopt;
  return blocks * tr.block_bytes;
}

inline std::string gguf_dims_string(std::span<const index_t> ne) {
  std::string s = "{";
  for (std::size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "}";
}

template <class T>
void gguf_put(std::string& out, T const& v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}
inline void gguf_put_string(std::string& out, std::string_view s) {
  gguf_put(out, std::uint64_t(s.size()));
  out.append(s);
}

/// The bytes of @p v after its type id(s).
inline void gguf_put_payload(std::string& out, gguf_value const& v) {
  std::visit(
      [&](auto const& x) {
        using X = std::remove_cvref_t<decltype(x)>;
        if constexpr (std::is_same_v<X, std::string>) {
          gguf_put_string(out, x);
        } else if constexpr (std::is_same_v<X, bool>) {
          out.push_back(char(x ? 1 : 0));
        } else if constexpr (std::is_arithmetic_v<X>) {
          gguf_put(out, x);
        } else {
          using E = typename X::value_type;
          gguf_put(out, std::uint64_t(x.size()));
          if constexpr (std::is_same_v<E, std::string>) {
            for (auto const& s : x) gguf_put_string(out, s);
          } else if constexpr (std::is_same_v<E, bool>) {
            for (bool b : x) out.push_back(char(b ? 1 : 0));
          } else {
            out.append(reinterpret_cast<char const*>(x.data()), x.size() * sizeof(E));
          }
        }
      },
      v.variant());
}

inline std::uint64_t align_up(std::uint64_t x, std::uint64_t a) noexcept { return (x + a - 1) / a * a; }

}  // namespace detail

// ------------------------------------------------------------------------------------------------------------------
// Writing

/// Fills the provided span (exactly the tensor's byte count) with a tensor's bytes: every byte of it (the buffer is reused
/// from tensor to tensor and not cleared).
using gguf_fill = std::function<void(std::span<std::byte>)>;
/// Writes exactly the tensor's byte count to the stream.
using gguf_stream = std::function<void(std::ostream&)>;

/// Builds a GGUF v3 file: metadata in insertion order, then tensors in the order they were added.
///
/// Tensors are described up front (name, dimensions, type); their bytes are taken from the caller's memory
/// (add_tensor: the span must stay valid until write()) or produced during write() by a callback, one tensor at a
/// time (add_tensor_filled: into a buffer the writer provides and reuses; add_tensor_streamed: straight to the
/// output stream). A model can therefore be written with one tensor in memory at a time.
class gguf_writer {
 public:
  /// Sets @p key to @p value. A new key is appended; an existing key keeps its position and gets the new value.
  /// @throws rsq::invalid_argument for an empty key, or `general.alignment` that is not a UINT32 nonzero power of
  ///         two (what llama.cpp accepts) or that changes after a tensor was added
  void set(std::string key, gguf_value value) {
    RSQ_EXPECTS(!key.empty(), "gguf: a metadata key must not be empty");
    if (key == "general.alignment") {
      RSQ_EXPECTS(value.holds<std::uint32_t>(), "gguf: general.alignment must be UINT32, not ", value.type_name());
      auto const a = value.as<std::uint32_t>();
      RSQ_EXPECTS(a != 0 && std::has_single_bit(a), "gguf: general.alignment ", a, " is not a power of two");
      RSQ_EXPECTS(tensors_.empty() || a == alignment_,
                  "gguf: general.alignment must be set before the first tensor is added");
      alignment_ = a;
    }
    auto const it = index_.find(key);
    if (it != index_.end()) {
      kvs_[it->second].value = std::move(value);
      return;
    }
    index_.emplace(key, kvs_.size());
    kvs_.push_back({std::move(key), std::move(value)});
  }

  /// Adds tensor @p name of type @p type and dimensions @p ne (ne[0] contiguous) whose bytes are @p bytes; they
  /// are read during write() and must stay valid until then.
  /// @throws rsq::invalid_argument when the tensor is invalid (see add_tensor_filled) or @p bytes has another size
  void add_tensor(std::string name, std::vector<index_t> ne, pack::ggml_type type, std::span<const std::byte> bytes) {
    auto info = checked_info(std::move(name), std::move(ne), type);
    RSQ_EXPECTS(bytes.size() == info.bytes, "gguf: tensor \"", info.name, "\" of type ", pack::traits(type).name,
                " and dimensions ", detail::gguf_dims_string(info.ne), " needs ", info.bytes, " bytes, ", bytes.size(),
                " given");
    push({std::move(info), bytes, {}, {}});
  }

  /// Adds tensor @p name whose bytes @p fill writes during write(), into a zeroed span of exactly the tensor's byte
  /// count (a buffer the writer reuses for every such tensor).
  /// @throws rsq::invalid_argument for an empty name, one longer than 63 bytes, one added before, no dimensions or
  ///         more than 4, a dimension below 1, ne[0] that is not a multiple of the type's block size, or a byte
  ///         count beyond 2^63
  void add_tensor_filled(std::string name, std::vector<index_t> ne, pack::ggml_type type, gguf_fill fill) {
    RSQ_EXPECTS(static_cast<bool>(fill), "gguf: tensor \"", name, "\": the fill callback is empty");
    push({checked_info(std::move(name), std::move(ne), type), {}, std::move(fill), {}});
  }

  /// Adds tensor @p name whose bytes @p write puts on the output stream during write(); it must write exactly the
  /// tensor's byte count (checked). The same checks as add_tensor_filled.
  void add_tensor_streamed(std::string name, std::vector<index_t> ne, pack::ggml_type type, gguf_stream write) {
    RSQ_EXPECTS(static_cast<bool>(write), "gguf: tensor \"", name, "\": the stream callback is empty");
    push({checked_info(std::move(name), std::move(ne), type), {}, {}, std::move(write)});
  }

  /// The metadata in order.
  [[nodiscard]] std::vector<gguf_kv> const& metadata() const noexcept { return kvs_; }
  /// The tensors as they will be written (offsets relative to the data section).
  [[nodiscard]] std::vector<gguf_tensor_info> tensors() const {
    std::vector<gguf_tensor_info> out;
    for (auto const& t : tensors_) out.push_back(t.info);
    return out;
  }
  [[nodiscard]] std::uint32_t alignment() const noexcept { return alignment_; }

  /// Everything before the data section: the header, metadata, tensor infos and the padding.
  [[nodiscard]] std::string header() const {
    std::string out;
    out.append("GGUF", 4);
    detail::gguf_put(out, gguf_version);
    detail::gguf_put(out, std::uint64_t(tensors_.size()));
    detail::gguf_put(out, std::uint64_t(kvs_.size()));
    for (auto const& kv : kvs_) {
      detail::gguf_put_string(out, kv.key);
      detail::gguf_put(out, std::uint32_t(kv.value.type()));
      if (kv.value.is_array()) detail::gguf_put(out, std::uint32_t(kv.value.element_type()));
      detail::gguf_put_payload(out, kv.value);
    }
    for (auto const& t : tensors_) {
      detail::gguf_put_string(out, t.info.name);
      detail::gguf_put(out, std::uint32_t(t.info.ne.size()));
      for (auto d : t.info.ne) detail::gguf_put(out, std::uint64_t(d));
      detail::gguf_put(out, std::uint32_t(t.info.type));
      detail::gguf_put(out, t.info.offset);
    }
    out.append(std::size_t(detail::align_up(out.size(), alignment_) - out.size()), '\0');
    return out;
  }

  /// The size of the whole file in bytes.
  [[nodiscard]] std::uint64_t file_bytes() const { return header().size() + data_bytes_; }

  /// Writes the file to @p out.
  /// @throws rsq::invalid_argument when a stream callback writes another number of bytes than its tensor has;
  ///         what a callback throws propagates
  void write(std::ostream& out) const {
    std::size_t fill_bytes = 0;
    for (auto const& t : tensors_)
      if (t.fill) fill_bytes = std::max(fill_bytes, std::size_t(t.info.bytes));
    // One buffer for every fill callback, not cleared: a callback writes every byte of its span (gguf_fill). (Filling
    // the next tensor on a second thread while this one is written was measured slower on lm7m: the hand-offs cost
    // more than the overlap saved, docs/benchmarks.md.)
    std::unique_ptr<std::byte[]> const buffer(new std::byte[fill_bytes]);
    std::string const head = header();
    out.write(head.data(), std::streamsize(head.size()));
    static constexpr char zeros[256] = {};
    for (auto const& t : tensors_) {
      auto const n = std::size_t(t.info.bytes);
      if (t.fill) {
        t.fill(std::span<std::byte>(buffer.get(), n));
        out.write(reinterpret_cast<char const*>(buffer.get()), std::streamsize(n));
      } else if (t.stream) {
        auto const before = out.tellp();
        t.stream(out);
        auto const after = out.tellp();
        if (before != std::streampos(-1) && after != std::streampos(-1))
          RSQ_EXPECTS(std::uint64_t(after - before) == t.info.bytes, "gguf: the stream callback of tensor \"",
                      t.info.name, "\" wrote ", std::int64_t(after - before), " bytes, expected ", t.info.bytes);
      } else {
        out.write(reinterpret_cast<char const*>(t.bytes.data()), std::streamsize(n));
      }
      std::uint64_t pad = detail::align_up(t.info.bytes, alignment_) - t.info.bytes;
      for (; pad > 0; pad -= std::min<std::uint64_t>(pad, sizeof zeros))
        out.write(zeros, std::streamsize(std::min<std::uint64_t>(pad, sizeof zeros)));
    }
  }

  /// Writes the file to @p path atomically (a temporary file renamed into place; nothing is left on failure).
  /// @throws rsq::io_error when the file cannot be written; see write(std::ostream&)
  void write(std::filesystem::path const& path) const {
    write_file_atomic(path, [&](std::ostream& f) { write(f); });
  }

 private:
  struct tensor {
    gguf_tensor_info info;
    std::span<const std::byte> bytes;
    gguf_fill fill;
    gguf_stream stream;
  };

  gguf_tensor_info checked_info(std::string name, std::vector<index_t> ne, pack::ggml_type type) const {
    RSQ_EXPECTS(!name.empty(), "gguf: a tensor name must not be empty");
    RSQ_EXPECTS(name.size() <= gguf_max_tensor_name, "gguf: tensor name \"", name, "\" has ", name.size(),
                " bytes; llama.cpp accepts at most ", gguf_max_tensor_name);
    RSQ_EXPECTS(names_.find(name) == names_.end(), "gguf: tensor \"", name, "\" added twice");
    RSQ_EXPECTS(!ne.empty() && ne.size() <= gguf_max_dims, "gguf: tensor \"", name, "\" has ", ne.size(),
                " dimensions; 1 to 4 are allowed");
    for (auto d : ne)
      RSQ_EXPECTS(d >= 1, "gguf: tensor \"", name, "\" has dimensions ", detail::gguf_dims_string(ne),
                  "; each must be at least 1");
    auto const tr = pack::traits(type);
    RSQ_EXPECTS(ne[0] % tr.block_elements == 0, "gguf: tensor \"", name, "\" of type ", tr.name, ": ne[0] = ", ne[0],
                " is not a multiple of the block size ", tr.block_elements);
    auto const bytes = detail::gguf_tensor_bytes(type, ne);
    RSQ_EXPECTS(bytes.has_value(), "gguf: tensor \"", name, "\" with dimensions ", detail::gguf_dims_string(ne),
                " is too large");
    return {std::move(name), std::move(ne), type, data_bytes_, *bytes};
  }

  void push(tensor t) {
    data_bytes_ += detail::align_up(t.info.bytes, alignment_);
    names_.emplace(t.info.name);
    tensors_.push_back(std::move(t));
  }

  std::vector<gguf_kv> kvs_;
  std::map<std::string, std::size_t, std::less<>> index_;
  std::vector<tensor> tensors_;
  std::set<std::string, std::less<>> names_;
  std::uint32_t alignment_ = gguf_default_alignment;
  std::uint64_t data_bytes_ = 0;
};

// ------------------------------------------------------------------------------------------------------------------
// Reading

namespace detail {

/// Reads the header and metadata of a GGUF file, refusing what does not fit.
class gguf_cursor {
 public:
  gguf_cursor(std::span<const std::byte> bytes, std::string_view file) : b_(bytes), file_(file) {}

  template <class... Args>
  [[noreturn]] void fail(Args const&... args) const {
    rsq::detail::throw_io_error(file_, ": not a valid GGUF file: ", args...);
  }

  [[nodiscard]] std::uint64_t pos() const noexcept { return pos_; }
  [[nodiscard]] std::uint64_t left() const noexcept { return b_.size() - pos_; }

  /// A scalar; @p what names the field in the message when the file ends first.
  template <class T, class... What>
  T read(What const&... what) {
    if (left() < sizeof(T))
      fail(what..., ": needs ", sizeof(T), " bytes at offset ", pos_, ", the file ends at ", b_.size());
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  template <class... What>
  std::string read_string(What const&... what) {
    auto const n = read<std::uint64_t>(what..., " (string length)");
    if (n > left())
      fail(what..., ": a string of ", n, " bytes at offset ", pos_, " runs past the end of the file (", left(),
           " bytes left)");
    std::string s(reinterpret_cast<char const*>(b_.data() + pos_), std::size_t(n));
    pos_ += n;
    return s;
  }

  /// One value of scalar type @p t (not ARRAY) as the alternative of that type.
  template <class T>
  T read_scalar(std::string_view key) {
    if constexpr (std::is_same_v<T, std::string>) {
      return read_string("key \"", key, "\"");
    } else if constexpr (std::is_same_v<T, bool>) {
      auto const v = read<std::uint8_t>("key \"", key, "\"");
      if (v > 1) fail("key \"", key, "\": BOOL value ", int(v), " at offset ", pos_ - 1, " is neither 0 nor 1");
      return v == 1;
    } else {
      return read<T>("key \"", key, "\"");
    }
  }

  template <class T>
  std::vector<T> read_array(std::string_view key, std::uint64_t n) {
    // Every element takes at least one byte (a string its 8-byte length): a count the file cannot hold is refused
    // before anything is allocated.
    std::uint64_t const min_size = std::is_same_v<T, std::string> ? 8 : std::is_same_v<T, bool> ? 1 : sizeof(T);
    if (n > left() / min_size)
      fail("key \"", key, "\": an array of ", n, " elements of at least ", min_size, " bytes at offset ", pos_,
           " runs past the end of the file (", left(), " bytes left)");
    std::vector<T> out;
    if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
      out.resize(std::size_t(n));
      if (n > 0) std::memcpy(out.data(), b_.data() + pos_, std::size_t(n) * sizeof(T));
      pos_ += n * sizeof(T);
    } else {
      out.reserve(std::size_t(n));
      for (std::uint64_t i = 0; i < n; ++i) out.push_back(read_scalar<T>(key));
    }
    return out;
  }

  /// A value of type @p t (ids checked by the caller), arrays included.
  gguf_value read_value(std::string_view key, std::uint32_t t) {
    if (t == std::uint32_t(gguf_type::array)) {
      auto const et = read<std::uint32_t>("key \"", key, "\" (array element type)");
      if (et == std::uint32_t(gguf_type::array))
        fail("key \"", key, "\" is an array of arrays, which rsq (like llama.cpp) does not read");
      if (et > 12) fail("key \"", key, "\": unknown array element type ", et, " (known: 0 to 12)");
      auto const n = read<std::uint64_t>("key \"", key, "\" (array length)");
      return read_typed<true>(key, scalar_index_of(gguf_type(et)), n);
    }
    if (t > 12) fail("key \"", key, "\": unknown value type ", t, " (known: 0 to 12)");
    return read_typed<false>(key, scalar_index_of(gguf_type(t)), 1);
  }

 private:
  template <bool Array, std::size_t I = 0>
  gguf_value read_typed(std::string_view key, std::size_t index, std::uint64_t n) {
    if constexpr (I < gguf_scalar_count) {
      if (index != I) return read_typed<Array, I + 1>(key, index, n);
      using T = std::variant_alternative_t<I, gguf_variant>;
      if constexpr (Array) return gguf_value(read_array<T>(key, n));
      else return gguf_value(read_scalar<T>(key));
    } else {
      fail("key \"", key, "\": internal error, type index ", index);
    }
  }

  std::span<const std::byte> b_;
  std::string_view file_;
  std::uint64_t pos_ = 0;
};

}  // namespace detail

/// A GGUF file (version 2 or 3), validated, its tensors readable in place.
class gguf_file {
 public:
  /// Maps and validates the file at @p path.
  /// @throws rsq::io_error naming the file and the field, key or tensor on any violation (see the file comment)
  static gguf_file open(std::filesystem::path const& path) {
    mapped_file m(path);
    auto const bytes = m.bytes();
    gguf_file f = parse(bytes, m.path());
    f.map_ = std::move(m);
    return f;
  }

  /// Validates @p bytes (a whole file held by the caller, which must outlive the result); @p name in messages.
  /// @throws rsq::io_error naming @p name and the field, key or tensor on any violation
  static gguf_file parse(std::span<const std::byte> bytes, std::string name = "<memory>") {
    gguf_file f;
    f.name_ = std::move(name);
    detail::gguf_cursor c(bytes, f.name_);
    if (bytes.size() < 4 || std::memcmp(bytes.data(), "GGUF", 4) != 0)
      c.fail("bad magic (the file must start with \"GGUF\")");
    (void)c.read<std::uint32_t>("magic");
    f.version_ = c.read<std::uint32_t>("version");
    if (f.version_ != 2 && f.version_ != 3)
      c.fail("version ", f.version_, " is not supported (rsq reads versions 2 and 3)");
    auto const n_tensors = c.read<std::uint64_t>("tensor_count");
    auto const n_kv = c.read<std::uint64_t>("metadata_kv_count");
    // The smallest metadata entry is 13 bytes (an 8-byte key length, a 1-byte key, a type id, a 1-byte value), the
    // smallest tensor info 33 (name length, a 1-byte name, n_dims, one dimension, type, offset).
    if (n_kv > c.left() / 13)
      c.fail("metadata_kv_count ", n_kv, " cannot fit in the ", c.left(), " bytes after the header");
    if (n_tensors > c.left() / 33)
      c.fail("tensor_count ", n_tensors, " cannot fit in the ", c.left(), " bytes after the header");

    f.kvs_.reserve(std::size_t(n_kv));
    for (std::uint64_t i = 0; i < n_kv; ++i) {
      auto key = c.read_string("metadata key ", i);
      if (key.empty()) c.fail("metadata key ", i, " is empty");
      if (f.index_.find(key) != f.index_.end()) c.fail("duplicate metadata key \"", key, "\"");
      auto const type = c.read<std::uint32_t>("key \"", key, "\" (value type)");
      auto value = c.read_value(key, type);
      f.index_.emplace(key, f.kvs_.size());
      f.kvs_.push_back({std::move(key), std::move(value)});
    }
    if (auto const* a = f.find("general.alignment")) {
      if (!a->holds<std::uint32_t>()) c.fail("general.alignment is ", a->type_name(), ", it must be UINT32");
      f.alignment_ = a->as<std::uint32_t>();
      if (f.alignment_ == 0 || !std::has_single_bit(f.alignment_))
        c.fail("general.alignment ", f.alignment_, " is not a power of two");
    }

    f.tensors_.reserve(std::size_t(n_tensors));
    for (std::uint64_t i = 0; i < n_tensors; ++i) {
      f.tensors_.push_back(read_tensor_info(c, i, f));
      f.tensor_index_.emplace(f.tensors_.back().name, f.tensors_.size() - 1);
    }
    std::uint64_t const data_start = detail::align_up(c.pos(), f.alignment_);
    if (n_tensors > 0 && data_start > bytes.size())
      c.fail("the data section (at offset ", data_start, " after padding to ", f.alignment_,
             ") starts past the end of the file (", bytes.size(), " bytes)");
    f.data_offset_ = std::min<std::uint64_t>(data_start, bytes.size());
    f.data_ = bytes.subspan(std::size_t(f.data_offset_));
    f.check_layout(c);
    return f;
  }

  /// The file's path (or the name given to parse()).
  [[nodiscard]] std::string const& name() const noexcept { return name_; }
  /// The GGUF version of the file (2 or 3).
  [[nodiscard]] std::uint32_t version() const noexcept { return version_; }
  /// The alignment of the data section and the tensors.
  [[nodiscard]] std::uint32_t alignment() const noexcept { return alignment_; }
  /// Where the data section starts in the file.
  [[nodiscard]] std::uint64_t data_offset() const noexcept { return data_offset_; }

  /// The metadata in file order.
  [[nodiscard]] std::vector<gguf_kv> const& metadata() const noexcept { return kvs_; }
  /// The value of @p key, or nullptr.
  [[nodiscard]] gguf_value const* find(std::string_view key) const {
    auto const it = index_.find(key);
    return it == index_.end() ? nullptr : &kvs_[it->second].value;
  }
  /// The value of @p key. @throws rsq::io_error naming the file and the key when it is absent
  [[nodiscard]] gguf_value const& at(std::string_view key) const {
    auto const* v = find(key);
    if (!v) rsq::detail::throw_io_error(name_, ": has no metadata key \"", key, "\"");
    return *v;
  }
  /// The value of @p key as T (std::uint32_t, std::string, std::vector<std::string>, …): the exact GGUF type.
  /// @throws rsq::io_error naming the file, the key, the type asked for and the type found
  template <detail::gguf_alternative T>
  [[nodiscard]] T const& get(std::string_view key) const {
    auto const& v = at(key);
    if (!v.holds<T>())
      rsq::detail::throw_io_error(name_, ": metadata key \"", key, "\" is ", v.type_name(), ", expected ",
                                  gguf_value(T{}).type_name());
    return v.as<T>(key);
  }
  /// The value of @p key as T, or @p fallback when the key is absent. @throws rsq::io_error as get()
  template <detail::gguf_alternative T>
  [[nodiscard]] T get_or(std::string_view key, T fallback) const {
    return find(key) ? get<T>(key) : fallback;
  }

  /// The tensors in file order.
  [[nodiscard]] std::vector<gguf_tensor_info> const& tensors() const noexcept { return tensors_; }
  /// The tensor named @p tensor, or nullptr.
  [[nodiscard]] gguf_tensor_info const* find_tensor(std::string_view tensor) const {
    auto const it = tensor_index_.find(tensor);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
  }
  /// The tensor named @p tensor. @throws rsq::io_error naming the file when there is none
  [[nodiscard]] gguf_tensor_info const& tensor(std::string_view tensor) const {
    auto const* t = find_tensor(tensor);
    if (!t) rsq::detail::throw_io_error(name_, ": has no tensor \"", tensor, "\"");
    return *t;
  }
  /// The bytes of @p t (a tensor of this file), in place.
  [[nodiscard]] std::span<const std::byte> bytes(gguf_tensor_info const& t) const noexcept {
    return data_.subspan(std::size_t(t.offset), std::size_t(t.bytes));
  }
  /// The bytes of tensor @p tensor, in place. @throws rsq::io_error when there is none
  [[nodiscard]] std::span<const std::byte> bytes(std::string_view tensor) const { return bytes(this->tensor(tensor)); }

  /// Tensor @p tensor converted to float row by row (rsq::pack::dequantize_row).
  /// @throws rsq::io_error naming the tensor when it is missing, of a type rsq cannot decode, or holds NaN/Inf
  [[nodiscard]] gguf_float_tensor to_float(std::string_view tensor) const {
    auto const& t = this->tensor(tensor);
    auto const tr = pack::traits(t.type);
    if (!tr.decodable)
      rsq::detail::throw_io_error(name_, ": tensor \"", t.name, "\" is ", tr.name,
                                  ", which rsq cannot convert to float (F32, F16, BF16, Q4_0, Q4_1, Q8_0 only)");
    gguf_float_tensor out{t.ne, std::vector<float>(std::size_t(t.elements()))};
    auto const src = bytes(t);
    std::size_t const rb = pack::row_bytes(t.type, t.ne[0]), n0 = std::size_t(t.ne[0]);
    for (std::size_t r = 0; r < std::size_t(t.rows()); ++r) {
      std::span<float> row(out.values.data() + r * n0, n0);
      pack::dequantize_row(t.type, src.subspan(r * rb, rb), row);
      bool finite = true;
      for (float v : row) finite &= std::isfinite(v);
      if (!finite)
        for (std::size_t j = 0; j < n0; ++j)
          if (!std::isfinite(row[j]))
            rsq::detail::throw_io_error(name_, ": tensor \"", t.name, "\" has a non-finite value at element ",
                                        r * n0 + j);
    }
    return out;
  }

 private:
  static gguf_tensor_info read_tensor_info(detail::gguf_cursor& c, std::uint64_t i, gguf_file const& f) {
    gguf_tensor_info t;
    t.name = c.read_string("tensor ", i, " (name)");
    if (t.name.empty()) c.fail("tensor ", i, " has an empty name");
    if (t.name.size() > gguf_max_tensor_name)
      c.fail("tensor ", i, " name \"", t.name.substr(0, 80), "\" has ", t.name.size(),
             " bytes; llama.cpp accepts at most ", gguf_max_tensor_name);
    if (f.tensor_index_.find(t.name) != f.tensor_index_.end()) c.fail("duplicate tensor name \"", t.name, "\"");
    auto const n_dims = c.read<std::uint32_t>("tensor \"", t.name, "\" (n_dims)");
    if (n_dims < 1 || n_dims > gguf_max_dims)
      c.fail("tensor \"", t.name, "\": n_dims ", n_dims, " is outside 1..", gguf_max_dims);
    for (std::uint32_t d = 0; d < n_dims; ++d) {
      auto const n = c.read<std::uint64_t>("tensor \"", t.name, "\" (ne[", d, "])");
      if (n == 0) c.fail("tensor \"", t.name, "\": ne[", d, "] is 0");
      if (n > std::uint64_t(std::numeric_limits<std::int64_t>::max()))
        c.fail("tensor \"", t.name, "\": ne[", d, "] = ", n, " is beyond 2^63");
      t.ne.push_back(index_t(n));
    }
    auto const id = c.read<std::uint32_t>("tensor \"", t.name, "\" (type)");
    auto const tr = pack::find_ggml_type(id);
    if (!tr) c.fail("tensor \"", t.name, "\": unknown ggml type id ", id);
    t.type = tr->type;
    if (t.ne[0] % tr->block_elements != 0)
      c.fail("tensor \"", t.name, "\" of type ", tr->name, ": ne[0] = ", t.ne[0], " is not a multiple of the block size ",
             tr->block_elements);
    auto const bytes = detail::gguf_tensor_bytes(t.type, t.ne);
    if (!bytes) c.fail("tensor \"", t.name, "\": dimensions ", detail::gguf_dims_string(t.ne), " overflow 2^63 elements");
    t.bytes = *bytes;
    t.offset = c.read<std::uint64_t>("tensor \"", t.name, "\" (offset)");
    if (t.offset % f.alignment_ != 0)
      c.fail("tensor \"", t.name, "\": offset ", t.offset, " is not a multiple of the alignment ", f.alignment_);
    return t;
  }

  /// Every tensor inside the data section, none overlapping another.
  void check_layout(detail::gguf_cursor const& c) const {
    std::uint64_t const size = data_.size();
    std::vector<gguf_tensor_info const*> by_offset;
    for (auto const& t : tensors_) {
      if (t.offset > size || t.bytes > size - t.offset)
        c.fail("tensor \"", t.name, "\": its ", t.bytes, " bytes at offset ", t.offset,
               " of the data section run past the end of the file (the data section has ", size, " bytes)");
      by_offset.push_back(&t);
    }
    std::sort(by_offset.begin(), by_offset.end(),
              [](auto const* a, auto const* b) { return a->offset < b->offset; });
    for (std::size_t i = 1; i < by_offset.size(); ++i) {
      auto const& a = *by_offset[i - 1];
      auto const& b = *by_offset[i];
      if (b.offset < a.offset + a.bytes)
        c.fail("tensor \"", b.name, "\" at offset ", b.offset, " overlaps tensor \"", a.name, "\" (", a.bytes,
               " bytes at offset ", a.offset, ")");
    }
  }

  std::string name_;
  mapped_file map_;
  std::uint32_t version_ = gguf_version;
  std::uint32_t alignment_ = gguf_default_alignment;
  std::uint64_t data_offset_ = 0;
  std::span<const std::byte> data_;
  std::vector<gguf_kv> kvs_;
  std::map<std::string, std::size_t, std::less<>> index_;
  std::vector<gguf_tensor_info> tensors_;
  std::map<std::string, std::size_t, std::less<>> tensor_index_;
};

}  // namespace rsq::io
