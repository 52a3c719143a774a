// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// llama.cpp's importance matrices (`llama-imatrix` writes them, `llama-quantize --imatrix` reads them;
/// ../shared/docs/formats.md §5): for every weight, the sum over calibration tokens of the squared input of each
/// input column, Σx², and the number of token rows summed.
///
/// Two files hold them:
///  - GGUF (current): `general.type = "imatrix"`, `imatrix.datasets` (ARRAY of STRING), `imatrix.chunk_count` and
///    `imatrix.chunk_size` (UINT32), and per weight `<name>.in_sum2` (F32, ne = {n_in, 1}: Σx²) and
///    `<name>.counts` (F32, ne = {1, 1}: the rows). llama-quantize uses in_sum2 / counts (1 where counts is 0) and
///    needs all three keys and at least one tensor pair. Tensors of other names (`<name>.in_sum`, Σx, which newer
///    llama-imatrix adds) are ignored; expert weights (ne[1] > 1) are refused.
///  - legacy `.dat`: i32 entry count, then per entry i32 name length, the name, i32 ncall, i32 nval, nval f32
///    values = Σx² / count · ncall (llama-imatrix takes ncall = ⌈count / chunk_size⌉), then i32 the last chunk and
///    the dataset name (i32 length, bytes); llama-quantize divides the values by ncall. The chunk size is not
///    stored: reading one gives count = ncall · chunk_size and Σx² = value · chunk_size, with chunk_size from
///    imatrix_read_options (llama-imatrix does the same with its context size), which keeps Σx² / count exact.
///
/// Both writers go through a temporary file (rsq/io/atomic_file.hpp). read_imatrix() tells the formats apart by
/// the GGUF magic and validates everything, refusing with rsq::io_error that names the file, the entry and the
/// field: truncated entries, negative or oversized lengths, nval mismatches, missing counts tensors, tensors that
/// are not F32 or of the wrong shape, NaN, Inf or negative sums and counts.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "rsq/core/error.hpp"
#include "rsq/io/atomic_file.hpp"
#include "rsq/io/gguf.hpp"
#include "rsq/io/mapped_file.hpp"

namespace rsq::io {

/// One weight's statistics.
struct imatrix_entry {
  std::string name;            ///< the weight's GGUF name ("blk.0.attn_q.weight")
  std::vector<float> in_sum2;  ///< Σx² per input column (n_in)
  float count = 0;             ///< activation rows summed
};

/// An importance matrix: what llama-imatrix collects and llama-quantize reads.
struct imatrix {
  std::vector<std::string> datasets;  ///< calibration files
  int chunk_count = 0;                ///< chunks processed
  int chunk_size = 0;                 ///< tokens per chunk
  std::vector<imatrix_entry> entries; ///< in file order

  /// The entry of weight @p name, or nullptr.
  [[nodiscard]] imatrix_entry const* find(std::string_view name) const {
    auto const it = std::find_if(entries.begin(), entries.end(), [&](auto const& e) { return e.name == name; });
    return it == entries.end() ? nullptr : &*it;
  }
};

/// Options of read_imatrix().
struct imatrix_read_options {
  /// Tokens per chunk assumed for a legacy `.dat` file, which does not store it (llama-imatrix's default context).
  int dat_chunk_size = 512;
};

namespace detail {

inline constexpr std::string_view imatrix_sum_suffix = ".in_sum2";
inline constexpr std::string_view imatrix_count_suffix = ".counts";

/// The checks both writers make: entries present, names unique, sums and counts finite and ≥ 0.
inline void check_imatrix(imatrix const& m, std::string_view what) {
  RSQ_EXPECTS(!m.entries.empty(), what, ": an imatrix needs at least one entry (llama-quantize refuses none)");
  RSQ_EXPECTS(m.chunk_count >= 0 && m.chunk_size >= 0, what, ": chunk_count ", m.chunk_count, " and chunk_size ",
              m.chunk_size, " must not be negative");
  std::map<std::string_view, int> names;
  for (auto const& e : m.entries) {
    RSQ_EXPECTS(!e.name.empty(), what, ": an entry has an empty name");
    RSQ_EXPECTS(names.emplace(e.name, 0).second, what, ": entry \"", e.name, "\" appears twice");
    RSQ_EXPECTS(!e.in_sum2.empty(), what, ": entry \"", e.name, "\" has no in_sum2 values");
    RSQ_EXPECTS(std::isfinite(e.count) && e.count >= 0, what, ": entry \"", e.name, "\" has count ", e.count,
                "; it must be finite and not negative");
    for (std::size_t i = 0; i < e.in_sum2.size(); ++i)
      RSQ_EXPECTS(std::isfinite(e.in_sum2[i]) && e.in_sum2[i] >= 0, what, ": entry \"", e.name, "\" in_sum2[", i,
                  "] = ", e.in_sum2[i], "; sums of squares must be finite and not negative");
  }
}

template <class... Args>
[[noreturn]] void bad_imatrix(std::string_view file, Args const&... args) {
  rsq::detail::throw_io_error(file, ": not a valid imatrix file: ", args...);
}

}  // namespace detail

/// Writes @p m to @p path as an imatrix GGUF (the current format of llama-imatrix), atomically.
/// @throws rsq::invalid_argument when @p m has no entry, no dataset (llama-quantize prints the first), duplicate
///         or over-long names (`<name>.in_sum2` must fit llama.cpp's 63 bytes), negative chunk fields, or NaN,
///         Inf or negative sums or counts; rsq::io_error when the file cannot be written
inline void write_imatrix_gguf(std::filesystem::path const& path, imatrix const& m) {
  detail::check_imatrix(m, "imatrix GGUF");
  RSQ_EXPECTS(!m.datasets.empty(), "imatrix GGUF: at least one dataset name is needed (llama-quantize prints it)");
  gguf_writer w;
  w.set("general.type", "imatrix");
  w.set("imatrix.datasets", m.datasets);
  w.set("imatrix.chunk_count", std::uint32_t(m.chunk_count));
  w.set("imatrix.chunk_size", std::uint32_t(m.chunk_size));
  for (auto const& e : m.entries) {
    w.add_tensor(e.name + std::string(detail::imatrix_sum_suffix), {index_t(e.in_sum2.size()), 1},
                 pack::ggml_type::f32, std::as_bytes(std::span(e.in_sum2)));
    w.add_tensor(e.name + std::string(detail::imatrix_count_suffix), {1, 1}, pack::ggml_type::f32,
                 std::as_bytes(std::span(&e.count, 1)));
  }
  w.write(path);
}

/// Writes @p m to @p path in llama.cpp's legacy `.dat` format, atomically: ncall = ⌈count / chunk_size⌉ and
/// values Σx² / count · ncall per entry, then chunk_count and the last dataset name (empty when there is none).
/// @throws rsq::invalid_argument as write_imatrix_gguf (without the dataset rule), for chunk_size < 1, an entry
///         whose count is 0 (the format cannot store it) or whose ncall or length exceeds int32
inline void write_imatrix_dat(std::filesystem::path const& path, imatrix const& m) {
  detail::check_imatrix(m, "imatrix .dat");
  RSQ_EXPECTS(m.chunk_size >= 1, "imatrix .dat: chunk_size ", m.chunk_size, " must be at least 1");
  RSQ_EXPECTS(m.entries.size() <= std::size_t(std::numeric_limits<std::int32_t>::max()),
              "imatrix .dat: too many entries");
  std::string out;
  auto put = [&](auto v) {
    char b[sizeof v];
    std::memcpy(b, &v, sizeof v);
    out.append(b, sizeof v);
  };
  constexpr auto i32_max = std::size_t(std::numeric_limits<std::int32_t>::max());
  put(std::int32_t(m.entries.size()));
  for (auto const& e : m.entries) {
    RSQ_EXPECTS(e.count > 0, "imatrix .dat: entry \"", e.name, "\" has count 0, which the legacy format cannot store");
    double const calls = std::ceil(double(e.count) / m.chunk_size);
    RSQ_EXPECTS(calls <= double(i32_max) && e.name.size() <= i32_max && e.in_sum2.size() <= i32_max,
                "imatrix .dat: entry \"", e.name, "\" does not fit the format's 32-bit fields");
    auto const ncall = std::int32_t(calls);
    put(std::int32_t(e.name.size()));
    out.append(e.name);
    put(ncall);
    put(std::int32_t(e.in_sum2.size()));
    for (float s : e.in_sum2) put(float(s / e.count * float(ncall)));
  }
  put(std::int32_t(m.chunk_count));
  std::string const dataset = m.datasets.empty() ? std::string() : m.datasets.back();
  RSQ_EXPECTS(dataset.size() <= i32_max, "imatrix .dat: the dataset name is too long");
  put(std::int32_t(dataset.size()));
  out.append(dataset);
  write_file_atomic(path, std::as_bytes(std::span(out.data(), out.size())));
}

/// The imatrix of a validated GGUF file @p f (see the file comment for what is refused).
/// @throws rsq::io_error naming the file, and the key or entry
inline imatrix parse_imatrix_gguf(gguf_file const& f) {
  auto const& file = f.name();
  imatrix m;
  if (auto const* t = f.find("general.type"); t && !(t->holds<std::string>() && t->as<std::string>() == "imatrix"))
    detail::bad_imatrix(file, "general.type is ", t->holds<std::string>() ? "\"" + t->as<std::string>() + "\"" : t->type_name(),
                        ", expected \"imatrix\"");
  for (std::string_view key : {"imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"})
    if (!f.find(key)) detail::bad_imatrix(file, "the key ", key, " is missing (llama-quantize needs it)");
  m.datasets = f.get<std::vector<std::string>>("imatrix.datasets");
  auto const chunk_field = [&](std::string_view key) {
    auto const v = f.get<std::uint32_t>(key);
    if (v > std::uint32_t(std::numeric_limits<int>::max())) detail::bad_imatrix(file, key, " = ", v, " is too large");
    return int(v);
  };
  m.chunk_count = chunk_field("imatrix.chunk_count");
  m.chunk_size = chunk_field("imatrix.chunk_size");

  auto strip = [](std::string_view name, std::string_view suffix) -> std::string_view {
    if (name.size() > suffix.size() && name.substr(name.size() - suffix.size()) == suffix)
      return name.substr(0, name.size() - suffix.size());
    return {};
  };
  auto f32 = [&](gguf_tensor_info const& t, std::string_view what) {
    if (t.type != pack::ggml_type::f32)
      detail::bad_imatrix(file, "tensor \"", t.name, "\" (", what, ") is ", pack::traits(t.type).name, ", expected F32");
  };
  for (auto const& t : f.tensors()) {
    auto const base = strip(t.name, detail::imatrix_sum_suffix);
    if (base.empty()) {
      if (auto const b = strip(t.name, detail::imatrix_count_suffix); !b.empty()) {
        auto const* s = f.find_tensor(std::string(b) + std::string(detail::imatrix_sum_suffix));
        if (!s) detail::bad_imatrix(file, "tensor \"", t.name, "\" has no in_sum2 tensor \"", b, ".in_sum2\"");
      }
      continue;  // other tensors (.in_sum) are not needed
    }
    f32(t, "in_sum2");
    if (t.ne.size() > 2 || (t.ne.size() == 2 && t.ne[1] != 1))
      detail::bad_imatrix(file, "tensor \"", t.name, "\" has dimensions ", detail::gguf_dims_string(t.ne),
                          "; expected {n_in, 1} (expert weights with several matrices are not supported)");
    std::string const count_name = std::string(base) + std::string(detail::imatrix_count_suffix);
    auto const* c = f.find_tensor(count_name);
    if (!c) detail::bad_imatrix(file, "entry \"", base, "\": the counts tensor \"", count_name, "\" is missing");
    f32(*c, "counts");
    if (c->elements() != 1)
      detail::bad_imatrix(file, "tensor \"", count_name, "\" has dimensions ", detail::gguf_dims_string(c->ne),
                          "; expected {1, 1}");
    imatrix_entry e{std::string(base), std::vector<float>(std::size_t(t.ne[0])), 0.f};
    std::memcpy(e.in_sum2.data(), f.bytes(t).data(), e.in_sum2.size() * sizeof(float));
    std::memcpy(&e.count, f.bytes(*c).data(), sizeof(float));
    if (!std::isfinite(e.count) || e.count < 0)
      detail::bad_imatrix(file, "entry \"", e.name, "\": count ", e.count, " is not a finite non-negative number");
    for (std::size_t i = 0; i < e.in_sum2.size(); ++i)
      if (!std::isfinite(e.in_sum2[i]) || e.in_sum2[i] < 0)
        detail::bad_imatrix(file, "entry \"", e.name, "\": in_sum2[", i, "] = ", e.in_sum2[i],
                            " is not a finite non-negative sum of squares");
    m.entries.push_back(std::move(e));
  }
  if (m.entries.empty()) detail::bad_imatrix(file, "no <name>.in_sum2 tensor (llama-quantize needs at least one)");
  return m;
}

/// The imatrix of the legacy `.dat` bytes @p bytes (see the file comment); @p file names it in messages.
/// @throws rsq::io_error naming the file, the entry and the field on any violation
inline imatrix parse_imatrix_dat(std::span<const std::byte> bytes, std::string_view file = "<memory>",
                                 imatrix_read_options const& opt = {}) {
  RSQ_EXPECTS(opt.dat_chunk_size >= 1, "imatrix: dat_chunk_size ", opt.dat_chunk_size, " must be at least 1");
  std::size_t pos = 0;
  auto left = [&] { return bytes.size() - pos; };
  auto read_i32 = [&](auto const&... what) {
    if (left() < 4)
      detail::bad_imatrix(file, what..., ": truncated (needs 4 bytes at offset ", pos, ", the file has ",
                          bytes.size(), ")");
    std::int32_t v;
    std::memcpy(&v, bytes.data() + pos, 4);
    pos += 4;
    return v;
  };
  imatrix m;
  m.chunk_size = opt.dat_chunk_size;
  auto const n = read_i32("entry count");
  if (n < 1) detail::bad_imatrix(file, "entry count ", n, " (at least 1 is needed)");
  // An entry takes at least 17 bytes (three int32, a 1-byte name, one value).
  if (std::size_t(n) > left() / 17) detail::bad_imatrix(file, "entry count ", n, " cannot fit in the file");
  std::map<std::string, int, std::less<>> seen;
  for (std::int32_t i = 0; i < n; ++i) {
    auto const len = read_i32("entry ", i, " name length");
    if (len < 1 || std::size_t(len) > left())
      detail::bad_imatrix(file, "entry ", i, ": name length ", len, " is not in 1..", left(), " (the bytes left)");
    imatrix_entry e;
    e.name.assign(reinterpret_cast<char const*>(bytes.data() + pos), std::size_t(len));
    pos += std::size_t(len);
    if (!seen.emplace(e.name, 0).second) detail::bad_imatrix(file, "entry \"", e.name, "\" appears twice");
    auto const ncall = read_i32("entry \"", e.name, "\" ncall");
    if (ncall < 0) detail::bad_imatrix(file, "entry \"", e.name, "\": ncall ", ncall, " is negative");
    auto const nval = read_i32("entry \"", e.name, "\" nval");
    if (nval < 1 || std::size_t(nval) > left() / 4)
      detail::bad_imatrix(file, "entry \"", e.name, "\": nval ", nval, " does not match the file (", left() / 4,
                          " values left)");
    e.in_sum2.resize(std::size_t(nval));
    std::memcpy(e.in_sum2.data(), bytes.data() + pos, std::size_t(nval) * 4);
    pos += std::size_t(nval) * 4;
    // value = Σx²/count · ncall; count = ncall · chunk_size, hence Σx² = value · chunk_size. An entry of ncall 0
    // holds means (llama-quantize uses them as they are): count 1.
    double const scale = ncall > 0 ? double(opt.dat_chunk_size) : 1.0;
    e.count = ncall > 0 ? float(double(ncall) * opt.dat_chunk_size) : 1.f;
    for (std::size_t j = 0; j < e.in_sum2.size(); ++j) {
      float const v = e.in_sum2[j];
      if (!std::isfinite(v) || v < 0)
        detail::bad_imatrix(file, "entry \"", e.name, "\": value ", j, " = ", v,
                            " is not a finite non-negative mean of squares");
      e.in_sum2[j] = float(double(v) * scale);
    }
    m.entries.push_back(std::move(e));
  }
  // The last chunk and the dataset name are absent from the oldest files.
  if (left() > 0) {
    auto const last = read_i32("the last chunk");
    if (last < 0) detail::bad_imatrix(file, "the last chunk ", last, " is negative");
    m.chunk_count = last;
    auto const len = read_i32("the dataset name length");
    if (len < 0 || std::size_t(len) > left())
      detail::bad_imatrix(file, "the dataset name length ", len, " is not in 0..", left(), " (the bytes left)");
    m.datasets.emplace_back(reinterpret_cast<char const*>(bytes.data() + pos), std::size_t(len));
    pos += std::size_t(len);
    if (left() > 0) detail::bad_imatrix(file, left(), " bytes after the dataset name");
  }
  return m;
}

/// The imatrix of the whole file @p bytes, GGUF or legacy `.dat` (told apart by the GGUF magic); @p file names it
/// in messages. @throws rsq::io_error naming the file, the entry and the field on any violation
inline imatrix parse_imatrix(std::span<const std::byte> bytes, std::string_view file = "<memory>",
                             imatrix_read_options const& opt = {}) {
  if (bytes.size() >= 4 && std::memcmp(bytes.data(), "GGUF", 4) == 0)
    return parse_imatrix_gguf(gguf_file::parse(bytes, std::string(file)));
  return parse_imatrix_dat(bytes, file, opt);
}

/// Reads the imatrix at @p path, GGUF or legacy `.dat` (told apart by the GGUF magic).
/// @throws rsq::io_error naming the file, the entry and the field on any violation (see the file comment)
inline imatrix read_imatrix(std::filesystem::path const& path, imatrix_read_options const& opt = {}) {
  mapped_file map(path);
  return parse_imatrix(map.bytes(), map.path(), opt);
}

}  // namespace rsq::io
