// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// safetensors, the checkpoint format of Hugging Face models (../shared/docs/formats.md §1): 8 bytes little-endian
/// header length N, N bytes of JSON `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {…}}`,
/// then one byte buffer that the tensors tile exactly.
///
/// Reading maps the file (rsq/io/mapped_file.hpp) and validates the whole header before any tensor is handed out:
/// a header longer than 100,000,000 bytes, JSON that is not an object of tensor entries, unknown dtypes, negative or
/// non-integer shapes and offsets, sizes that disagree with shape × dtype, offsets that leave holes or overlap, a
/// buffer whose end is not the file's end, and duplicate names are all refused with rsq::io_error naming the file
/// and the tensor. An F32 tensor whose data are 4-byte aligned is read in place (view<float>), without a copy;
/// to_float() converts F32, F16, BF16 and F64 to float.
///
/// Writing pads the header with spaces so that the buffer starts 8-byte aligned, adds `__metadata__`
/// {"format": "pt"} (older transformers refuse a file without it), and writes through a temporary file that is
/// renamed into place (never a partial file). A sharded checkpoint (model-0000k-of-0000N.safetensors plus
/// model.safetensors.index.json) is read and written by safetensors_checkpoint / save_safetensors_checkpoint.

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "rsq/core/error.hpp"
#include "rsq/core/half.hpp"
#include "rsq/core/memory.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/io/atomic_file.hpp"
#include "rsq/io/mapped_file.hpp"

namespace rsq::io {

static_assert(std::endian::native == std::endian::little, "rsq::io: safetensors are little-endian");

/// Element types of safetensors (the names the files use are in to_string()).
enum class tensor_dtype : std::uint8_t { boolean, u8, i8, i16, u16, f16, bf16, i32, u32, f32, f64, i64, u64, f8_e4m3, f8_e5m2 };

namespace detail {

struct dtype_entry {
  tensor_dtype type;
  std::string_view name;
  std::size_t size;
};
inline constexpr std::array<dtype_entry, 15> dtype_table{{{tensor_dtype::boolean, "BOOL", 1},
                                                          {tensor_dtype::u8, "U8", 1},
                                                          {tensor_dtype::i8, "I8", 1},
                                                          {tensor_dtype::i16, "I16", 2},
                                                          {tensor_dtype::u16, "U16", 2},
                                                          {tensor_dtype::f16, "F16", 2},
                                                          {tensor_dtype::bf16, "BF16", 2},
                                                          {tensor_dtype::i32, "I32", 4},
                                                          {tensor_dtype::u32, "U32", 4},
                                                          {tensor_dtype::f32, "F32", 4},
                                                          {tensor_dtype::f64, "F64", 8},
                                                          {tensor_dtype::i64, "I64", 8},
                                                          {tensor_dtype::u64, "U64", 8},
                                                          {tensor_dtype::f8_e4m3, "F8_E4M3", 1},
                                                          {tensor_dtype::f8_e5m2, "F8_E5M2", 1}}};

}  // namespace detail

/// The name a file uses for @p t ("F32", "BF16", …).
[[nodiscard]] constexpr std::string_view to_string(tensor_dtype t) noexcept {
  return detail::dtype_table[std::size_t(t)].name;
}
/// Bytes per element of @p t.
[[nodiscard]] constexpr std::size_t size_of(tensor_dtype t) noexcept { return detail::dtype_table[std::size_t(t)].size; }
/// The dtype named @p name, or nothing for a name rsq does not know.
[[nodiscard]] constexpr std::optional<tensor_dtype> parse_tensor_dtype(std::string_view name) noexcept {
  for (auto const& e : detail::dtype_table)
    if (e.name == name) return e.type;
  return std::nullopt;
}

/// One tensor of a safetensors file: where its bytes lie in the buffer that follows the header.
struct tensor_entry {
  std::string name;
  tensor_dtype dtype = tensor_dtype::f32;
  std::vector<index_t> shape;
  std::uint64_t begin = 0, end = 0;  ///< byte offsets relative to the start of the buffer

  [[nodiscard]] index_t elements() const noexcept {
    index_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
};

namespace detail {

/// Largest header a reader accepts (formats.md §1).
inline constexpr std::uint64_t max_header_bytes = 100'000'000;

template <class... Args>
[[noreturn]] void bad_file(std::string_view file, Args const&... args) {
  rsq::detail::throw_io_error(file, ": not a valid safetensors file: ", args...);
}

/// The JSON of the header; duplicate keys (which JSON parsers silently collapse) are refused.
inline nlohmann::json parse_header_json(std::string_view text, std::string_view file) {
  std::unordered_set<std::string> names;
  std::string duplicate;
  auto const on_event = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1 && parsed.is_string() &&
        !names.insert(parsed.get<std::string>()).second && duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  auto j = nlohmann::json::parse(text.begin(), text.end(), on_event, /*allow_exceptions=*/false);
  if (j.is_discarded()) bad_file(file, "the header is not valid JSON");
  if (!duplicate.empty()) bad_file(file, "tensor \"", duplicate, "\" appears twice in the header");
  if (!j.is_object()) bad_file(file, "the header is not a JSON object");
  return j;
}

inline std::uint64_t unsigned_field(nlohmann::json const& v, std::string_view file, std::string_view name,
                                    std::string_view what) {
  if (!v.is_number_unsigned()) bad_file(file, "tensor \"", name, "\": ", what, " must be a non-negative integer");
  return v.get<std::uint64_t>();
}

/// One tensor's entry of the header, checked on its own (dtype known, shape and offsets integers, size consistent).
inline tensor_entry parse_entry(std::string const& name, nlohmann::json const& e, std::string_view file) {
  if (!e.is_object()) bad_file(file, "tensor \"", name, "\" is not an object");
  auto const dt = e.find("dtype"), sh = e.find("shape"), off = e.find("data_offsets");
  if (dt == e.end() || sh == e.end() || off == e.end())
    bad_file(file, "tensor \"", name, "\" needs \"dtype\", \"shape\" and \"data_offsets\"");
  if (!dt->is_string()) bad_file(file, "tensor \"", name, "\": dtype is not a string");
  auto const type = parse_tensor_dtype(dt->get<std::string>());
  if (!type) bad_file(file, "tensor \"", name, "\": unknown dtype \"", dt->get<std::string>(), "\"");
  if (!sh->is_array()) bad_file(file, "tensor \"", name, "\": shape is not an array");
  if (!off->is_array() || off->size() != 2) bad_file(file, "tensor \"", name, "\": data_offsets is not [begin, end]");
  tensor_entry t{name, *type, {}, unsigned_field((*off)[0], file, name, "data_offsets[0]"),
                 unsigned_field((*off)[1], file, name, "data_offsets[1]")};
  if (t.end < t.begin) bad_file(file, "tensor \"", name, "\": data_offsets end ", t.end, " < begin ", t.begin);
  // Element count × size must equal the byte span; checked without overflow.
  std::uint64_t count = 1;
  for (auto const& d : *sh) {
    std::uint64_t const n = unsigned_field(d, file, name, "a shape entry");
    if (n > std::uint64_t(std::numeric_limits<index_t>::max())) bad_file(file, "tensor \"", name, "\": shape too large");
    if (n != 0 && count > (t.end - t.begin) / n) count = std::numeric_limits<std::uint64_t>::max();
    else count *= n;
    t.shape.push_back(index_t(n));
  }
  std::uint64_t const bytes = t.end - t.begin;
  if (count == std::numeric_limits<std::uint64_t>::max() || count * size_of(t.dtype) != bytes)
    bad_file(file, "tensor \"", name, "\": ", bytes, " bytes for shape ", sh->dump(), " of ", to_string(t.dtype));
  return t;
}

/// Checks that the entries tile the buffer [0, buffer_bytes) exactly: no hole, no overlap, nothing left over.
inline void check_tiling(std::vector<tensor_entry>& entries, std::uint64_t buffer_bytes, std::string_view file) {
  std::sort(entries.begin(), entries.end(), [](tensor_entry const& a, tensor_entry const& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t at = 0;
  for (auto const& t : entries) {
    if (t.begin != at)
      bad_file(file, "tensor \"", t.name, "\" starts at byte ", t.begin, " of the buffer, expected ", at,
               t.begin < at ? " (overlap)" : " (a hole)");
    at = t.end;
  }
  if (at != buffer_bytes)
    bad_file(file, "the tensors cover ", at, " bytes of a ", buffer_bytes, "-byte buffer (the file length must be ",
             "8 + header + buffer)");
}

}  // namespace detail

/// A safetensors file, validated, its tensors readable in place.
class safetensors_file {
 public:
  /// Maps and validates the file at @p path. @throws rsq::io_error naming the file (and the tensor) on any violation
  static safetensors_file open(std::filesystem::path const& path) {
    mapped_file m(path);
    auto const bytes = m.bytes();
    safetensors_file f = parse(bytes, m.path());
    f.map_ = std::move(m);
    return f;
  }

  /// Validates @p bytes (a whole file held by the caller, which must outlive the result); @p name in messages.
  static safetensors_file parse(std::span<const std::byte> bytes, std::string name = "<memory>") {
    safetensors_file f;
    f.name_ = std::move(name);
    if (bytes.size() < 8) detail::bad_file(f.name_, bytes.size(), " bytes, shorter than the 8-byte header length");
    std::uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    if (n > detail::max_header_bytes)
      detail::bad_file(f.name_, "header length ", n, " exceeds the limit of ", detail::max_header_bytes, " bytes");
    if (n > bytes.size() - 8) detail::bad_file(f.name_, "header length ", n, " runs past the end of the file");
    std::string_view const text(reinterpret_cast<char const*>(bytes.data()) + 8, std::size_t(n));
    if (text.empty() || text.front() != '{') detail::bad_file(f.name_, "the header does not start with '{'");
    auto const json = detail::parse_header_json(text, f.name_);
    for (auto const& [key, value] : json.items()) {
      if (key == "__metadata__") f.read_metadata(value);
      else f.entries_.push_back(detail::parse_entry(key, value, f.name_));
    }
    f.buffer_ = bytes.subspan(8 + std::size_t(n));
    detail::check_tiling(f.entries_, f.buffer_.size(), f.name_);
    for (std::size_t i = 0; i < f.entries_.size(); ++i) f.index_.emplace(f.entries_[i].name, i);
    return f;
  }

  /// The tensors in the order of their bytes.
  [[nodiscard]] std::vector<tensor_entry> const& tensors() const noexcept { return entries_; }
  /// The `__metadata__` map (empty when absent).
  [[nodiscard]] std::map<std::string, std::string> const& metadata() const noexcept { return metadata_; }
  /// The file's path (or the name given to parse()).
  [[nodiscard]] std::string const& name() const noexcept { return name_; }

  /// The entry named @p tensor, or nullptr.
  [[nodiscard]] tensor_entry const* find(std::string_view tensor) const {
    auto const it = index_.find(std::string(tensor));
    return it == index_.end() ? nullptr : &entries_[it->second];
  }
  /// The entry named @p tensor. @throws rsq::io_error naming the file when there is none
  [[nodiscard]] tensor_entry const& at(std::string_view tensor) const {
    auto const* e = find(tensor);
    if (!e) rsq::detail::throw_io_error(name_, ": has no tensor \"", tensor, "\"");
    return *e;
  }

  /// The bytes of @p e (an entry of this file).
  [[nodiscard]] std::span<const std::byte> bytes(tensor_entry const& e) const noexcept {
    return buffer_.subspan(std::size_t(e.begin), std::size_t(e.end - e.begin));
  }

  /// The F32 tensor @p tensor of rank N, in place (no copy).
  /// @throws rsq::io_error when it is missing, of another dtype or rank, or not 4-byte aligned in memory (then use
  ///         to_float)
  template <std::size_t N>
  [[nodiscard]] tensor_view<const float, N> view_float(std::string_view tensor) const {
    auto const& e = checked(tensor, N);
    if (e.dtype != tensor_dtype::f32)
      rsq::detail::throw_io_error(name_, ": tensor \"", tensor, "\" is ", to_string(e.dtype), ", not F32");
    auto const b = bytes(e);
    if (reinterpret_cast<std::uintptr_t>(b.data()) % alignof(float) != 0)
      rsq::detail::throw_io_error(name_, ": tensor \"", tensor, "\" is not 4-byte aligned in the file");
    std::array<index_t, N> ext{};
    std::copy(e.shape.begin(), e.shape.end(), ext.begin());
    return tensor_view<const float, N>(reinterpret_cast<float const*>(b.data()), ext);
  }

  /// Tensor @p tensor of rank N converted to float (exact for F32, F16, BF16; rounded for F64).
  /// @throws rsq::io_error when it is missing, of another rank, of an integer dtype, or holds NaN/Inf
  template <std::size_t N>
  [[nodiscard]] xt::xtensor<float, N> to_float(std::string_view tensor) const {
    auto const& e = checked(tensor, N);
    std::array<std::size_t, N> ext{};
    std::copy(e.shape.begin(), e.shape.end(), ext.begin());
    auto out = xt::xtensor<float, N>::from_shape(ext);
    // Fresh pages cost a first touch each (docs/gptq.md): transparent huge pages make that 512 times rarer.
    rsq::detail::advise_huge_pages(out.data(), out.size() * sizeof(float));
    rsq::detail::prefault(out.data(), out.size() * sizeof(float), /*for_write=*/true);
    rsq::detail::prefault(bytes(e).data(), bytes(e).size(), /*for_write=*/false);
    convert_to_float(e, out.data());
    return out;
  }

 private:
  tensor_entry const& checked(std::string_view tensor, std::size_t rank) const {
    auto const& e = at(tensor);
    if (e.shape.size() != rank)
      rsq::detail::throw_io_error(name_, ": tensor \"", tensor, "\" has rank ", e.shape.size(), ", expected ", rank);
    return e;
  }

  template <class Stored, class Convert>
  void convert_each(tensor_entry const& e, float* out, Convert convert) const {
    auto const b = bytes(e);
    index_t const n = e.elements();
    // Converted in blocks, each checked after it is written: a loop without an early exit vectorizes.
    constexpr index_t block = 4096;
    for (index_t i0 = 0; i0 < n; i0 += block) {
      index_t const i1 = std::min(n, i0 + block);
      bool finite = true;
      for (index_t i = i0; i < i1; ++i) {
        Stored s;
        std::memcpy(&s, b.data() + std::size_t(i) * sizeof(Stored), sizeof(Stored));
        out[i] = convert(s);
        finite &= std::isfinite(out[i]);
      }
      if (!finite)
        for (index_t i = i0; i < i1; ++i)
          if (!std::isfinite(out[i]))
            rsq::detail::throw_io_error(name_, ": tensor \"", e.name, "\" has a non-finite value at element ", i);
    }
  }

  void convert_to_float(tensor_entry const& e, float* out) const {
    switch (e.dtype) {
      case tensor_dtype::f32: return convert_each<float>(e, out, [](float v) { return v; });
      case tensor_dtype::f16: return convert_each<std::uint16_t>(e, out, f16_to_float);
      case tensor_dtype::bf16: return convert_each<std::uint16_t>(e, out, bf16_to_float);
      case tensor_dtype::f64: return convert_each<double>(e, out, [](double v) { return float(v); });
      default:
        rsq::detail::throw_io_error(name_, ": tensor \"", e.name, "\" is ", to_string(e.dtype),
                                    "; a floating-point tensor (F32, F16, BF16, F64) is needed");
    }
  }

  void read_metadata(nlohmann::json const& m) {
    if (!m.is_object()) detail::bad_file(name_, "__metadata__ is not an object");
    for (auto const& [k, v] : m.items()) {
      if (!v.is_string()) detail::bad_file(name_, "__metadata__ value of \"", k, "\" is not a string");
      metadata_.emplace(k, v.get<std::string>());
    }
  }

  std::string name_;
  mapped_file map_;
  std::span<const std::byte> buffer_;
  std::vector<tensor_entry> entries_;
  std::unordered_map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// ------------------------------------------------------------------------------------------------------------------
// Writing

/// A tensor to write: its bytes (little-endian, C order) stay owned by the caller or by `storage`.
struct tensor_record {
  std::string name;
  tensor_dtype dtype = tensor_dtype::f32;
  std::vector<index_t> shape;
  std::span<const std::byte> data;
  std::vector<std::byte> storage;  ///< holds converted data when the record owns them (see make_record)

  [[nodiscard]] std::size_t bytes() const noexcept { return data.size(); }
};

/// A record of @p values (row-major, @p shape) stored as @p dtype: F32 refers to the caller's floats, F16 and BF16
/// own their rounded copy (ties to even).
/// @throws rsq::invalid_argument for another dtype or a shape that does not match the number of values
inline tensor_record make_record(std::string name, std::span<const float> values, std::vector<index_t> shape,
                                 tensor_dtype dtype = tensor_dtype::f32) {
  index_t n = 1;
  for (auto d : shape) n *= d;
  RSQ_EXPECTS(n == index_t(values.size()), "safetensors: tensor \"", name, "\" has ", values.size(),
              " values for a shape of ", n, " elements");
  tensor_record r{std::move(name), dtype, std::move(shape), {}, {}};
  if (dtype == tensor_dtype::f32) {
    r.data = std::as_bytes(values);
    return r;
  }
  RSQ_EXPECTS(dtype == tensor_dtype::f16 || dtype == tensor_dtype::bf16, "safetensors: tensor \"", r.name,
              "\": float values are written as F32, F16 or BF16, not ", to_string(dtype));
  r.storage.resize(values.size() * 2);
  for (std::size_t i = 0; i < values.size(); ++i) {
    std::uint16_t const h = dtype == tensor_dtype::f16 ? float_to_f16(values[i]) : float_to_bf16(values[i]);
    std::memcpy(r.storage.data() + 2 * i, &h, 2);
  }
  r.data = r.storage;
  return r;
}

/// A record of raw @p values of an integer or float type (I32 qweight, F16 scales as std::uint16_t bits, …).
template <class T>
[[nodiscard]] tensor_record make_raw_record(std::string name, std::span<const T> values, std::vector<index_t> shape,
                                            tensor_dtype dtype) {
  RSQ_EXPECTS(size_of(dtype) == sizeof(T), "safetensors: tensor \"", name, "\": ", sizeof(T),
              "-byte values cannot be stored as ", to_string(dtype));
  index_t n = 1;
  for (auto d : shape) n *= d;
  RSQ_EXPECTS(n == index_t(values.size()), "safetensors: tensor \"", name, "\" has ", values.size(),
              " values for a shape of ", n, " elements");
  return {std::move(name), dtype, std::move(shape), std::as_bytes(values), {}};
}

namespace detail {

/// The header (JSON padded with spaces to a multiple of 8 bytes) for @p records in their order.
inline std::string header_for(std::span<const tensor_record> records, std::map<std::string, std::string> const& meta) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!meta.empty()) j["__metadata__"] = meta;
  std::uint64_t at = 0;
  std::unordered_set<std::string_view> names;
  for (auto const& r : records) {
    RSQ_EXPECTS(!r.name.empty() && r.name != "__metadata__", "safetensors: invalid tensor name \"", r.name, "\"");
    RSQ_EXPECTS(names.insert(r.name).second, "safetensors: tensor \"", r.name, "\" given twice");
    index_t n = 1;
    for (auto d : r.shape) n *= d;
    RSQ_EXPECTS(std::uint64_t(n) * size_of(r.dtype) == r.bytes(), "safetensors: tensor \"", r.name, "\" has ",
                r.bytes(), " bytes for ", n, " elements of ", to_string(r.dtype));
    j[r.name] = {{"dtype", to_string(r.dtype)}, {"shape", r.shape}, {"data_offsets", {at, at + r.bytes()}}};
    at += r.bytes();
  }
  std::string text = j.dump();
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');  // the buffer starts 8-byte aligned
  return text;
}

}  // namespace detail

/// Writes @p records to @p path as one safetensors file, atomically, with `__metadata__` @p meta.
/// @throws rsq::invalid_argument for duplicate or empty names and sizes that disagree with the shapes;
///         rsq::io_error when the file cannot be written (nothing is left behind)
inline void save_safetensors(std::filesystem::path const& path, std::span<const tensor_record> records,
                             std::map<std::string, std::string> const& meta = {{"format", "pt"}}) {
  std::string const header = detail::header_for(records, meta);
  write_file_atomic(path, [&](std::ostream& f) {
    std::uint64_t const n = header.size();
    f.write(reinterpret_cast<char const*>(&n), 8);
    f.write(header.data(), std::streamsize(header.size()));
    for (auto const& r : records) f.write(reinterpret_cast<char const*>(r.data.data()), std::streamsize(r.bytes()));
  });
}

// ------------------------------------------------------------------------------------------------------------------
// Checkpoints: one file or shards with an index

/// Names of a checkpoint's files.
inline constexpr std::string_view single_file_name = "model.safetensors";
inline constexpr std::string_view index_file_name = "model.safetensors.index.json";

/// Options of save_safetensors_checkpoint.
struct shard_options {
  /// Largest shard in bytes (tensors are never split; a tensor larger than this gets a shard of its own).
  std::uint64_t max_shard_bytes = 5'000'000'000;
};

/// Writes @p records into folder @p dir as `model.safetensors`, or, when they exceed options::max_shard_bytes, as
/// `model-0000k-of-0000N.safetensors` plus `model.safetensors.index.json` (formats.md §1). Every file is written
/// atomically. @returns the names of the files written
inline std::vector<std::string> save_safetensors_checkpoint(std::filesystem::path const& dir,
                                                            std::span<const tensor_record> records,
                                                            shard_options const& opt = {}) {
  RSQ_EXPECTS(opt.max_shard_bytes > 0, "safetensors: max_shard_bytes must be positive");
  std::vector<std::span<const tensor_record>> shards;
  std::size_t first = 0;
  std::uint64_t bytes = 0, total = 0;
  for (std::size_t i = 0; i < records.size(); ++i) {
    if (i > first && bytes + records[i].bytes() > opt.max_shard_bytes) {
      shards.push_back(records.subspan(first, i - first));
      first = i;
      bytes = 0;
    }
    bytes += records[i].bytes();
    total += records[i].bytes();
  }
  shards.push_back(records.subspan(first));
  if (shards.size() == 1) {
    save_safetensors(dir / single_file_name, records);
    return {std::string(single_file_name)};
  }
  auto shard_name = [&](std::size_t k) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", k + 1, shards.size());
    return std::string(buf);
  };
  std::vector<std::string> written;
  nlohmann::ordered_json map;
  for (std::size_t k = 0; k < shards.size(); ++k) {
    written.push_back(shard_name(k));
    save_safetensors(dir / written.back(), shards[k]);
    for (auto const& r : shards[k]) map[r.name] = written.back();
  }
  nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}}, {"weight_map", map}};
  write_text_file_atomic(dir / index_file_name, index.dump(2) + "\n");
  written.emplace_back(index_file_name);
  return written;
}

/// The safetensors of a model folder: `model.safetensors`, or the shards that `model.safetensors.index.json` names.
class safetensors_checkpoint {
 public:
  /// Opens and validates every file of the checkpoint in @p dir.
  /// @throws rsq::io_error when @p dir is not a folder or has neither file, the index is not valid JSON of the
  ///         documented form, a shard is missing, a tensor of the index is not in its shard, or a name is in two
  ///         shards
  static safetensors_checkpoint open(std::filesystem::path const& dir) {
    safetensors_checkpoint c;
    if (!std::filesystem::is_directory(dir)) rsq::detail::throw_io_error(dir.string(), ": is not a folder");
    if (std::filesystem::exists(dir / index_file_name)) c.open_sharded(dir);
    else if (std::filesystem::exists(dir / single_file_name)) c.add_file(dir / single_file_name);
    else
      rsq::detail::throw_io_error(dir.string(), ": has neither ", single_file_name, " nor ", index_file_name);
    return c;
  }

  /// Every tensor name, sorted.
  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (auto const& [n, f] : where_) out.push_back(n);
    std::sort(out.begin(), out.end());
    return out;
  }
  [[nodiscard]] bool contains(std::string_view tensor) const { return where_.count(std::string(tensor)) > 0; }
  /// The file holding @p tensor. @throws rsq::io_error naming the checkpoint when no file has it
  [[nodiscard]] safetensors_file const& file_of(std::string_view tensor) const {
    auto const it = where_.find(std::string(tensor));
    if (it == where_.end()) rsq::detail::throw_io_error(folder_, ": the checkpoint has no tensor \"", tensor, "\"");
    return files_[it->second];
  }
  [[nodiscard]] tensor_entry const& at(std::string_view tensor) const { return file_of(tensor).at(tensor); }
  template <std::size_t N>
  [[nodiscard]] xt::xtensor<float, N> to_float(std::string_view tensor) const {
    return file_of(tensor).template to_float<N>(tensor);
  }
  [[nodiscard]] std::vector<safetensors_file> const& files() const noexcept { return files_; }

 private:
  void add_file(std::filesystem::path const& p) {
    folder_ = p.parent_path().string();
    files_.push_back(safetensors_file::open(p));
    for (auto const& e : files_.back().tensors()) {
      if (!where_.emplace(e.name, files_.size() - 1).second)
        rsq::detail::throw_io_error(folder_, ": tensor \"", e.name, "\" is in two shards");
    }
  }

  void open_sharded(std::filesystem::path const& dir) {
    auto const index_path = (dir / index_file_name).string();
    mapped_file m(dir / index_file_name);
    auto const text = m.bytes();
    auto const j = nlohmann::json::parse(reinterpret_cast<char const*>(text.data()),
                                         reinterpret_cast<char const*>(text.data()) + text.size(), nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      rsq::detail::throw_io_error(index_path, ": not a safetensors index (a JSON object with a \"weight_map\")");
    std::map<std::string, std::vector<std::string>> by_file;
    for (auto const& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) rsq::detail::throw_io_error(index_path, ": weight_map[\"", name, "\"] is not a file name");
      auto const f = file.get<std::string>();
      if (f.find('/') != std::string::npos || f.find("..") != std::string::npos)
        rsq::detail::throw_io_error(index_path, ": shard name \"", f, "\" is not a plain file name");
      by_file[f].push_back(name);
    }
    for (auto const& [f, names] : by_file) {
      if (!std::filesystem::exists(dir / f))
        rsq::detail::throw_io_error(index_path, ": shard ", f, " is missing from ", dir.string());
      add_file(dir / f);
      for (auto const& n : names)
        if (!files_.back().find(n)) rsq::detail::throw_io_error(index_path, ": tensor \"", n, "\" is not in ", f);
    }
  }

  std::string folder_;
  std::vector<safetensors_file> files_;
  std::unordered_map<std::string, std::size_t> where_;
};

}  // namespace rsq::io
