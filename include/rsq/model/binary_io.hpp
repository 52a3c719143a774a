// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Little-endian binary reading and writing for the llama2c formats: a bounds-checked cursor over a byte buffer
/// (every read that would run past the end throws rsq::io_error naming the file, the field and the offset), a
/// growing output buffer, whole-file reads, and atomic whole-file writes (temporary file + rename).

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "rsq/core/error.hpp"
#include "rsq/io/atomic_file.hpp"
#include "rsq/io/mapped_file.hpp"

namespace rsq::model::detail {

static_assert(std::endian::native == std::endian::little,
              "rsq::model: the llama2c formats are little-endian; big-endian hosts are not supported");

/// Bounds-checked reading cursor. @p name (a path or "<memory>") and @p kind ("llama2c checkpoint", ...) prefix
/// every message.
class byte_reader {
 public:
  byte_reader(std::span<const std::byte> data, std::string_view name, std::string_view kind)
      : data_(data), name_(name), kind_(kind) {}

  [[nodiscard]] std::size_t offset() const noexcept { return pos_; }
  [[nodiscard]] std::size_t remaining() const noexcept { return data_.size() - pos_; }
  [[nodiscard]] std::size_t size() const noexcept { return data_.size(); }

  /// Throws the io_error for a truncated file unless @p n more bytes are there.
  void need(std::size_t n, std::string_view what) const {
    if (n > remaining())
      fail("truncated: ", what, " needs ", n, " bytes at offset ", pos_, ", only ", remaining(), " remain");
  }

  [[nodiscard]] std::int32_t i32(std::string_view what) {
    need(4, what);
    std::int32_t v;
    std::memcpy(&v, data_.data() + pos_, 4);
    pos_ += 4;
    return v;
  }

  [[nodiscard]] float f32(std::string_view what) {
    need(4, what);
    float v;
    std::memcpy(&v, data_.data() + pos_, 4);
    pos_ += 4;
    return v;
  }

  /// Reads @p n floats into @p out and rejects NaN/Inf, naming @p what and the element index.
  void f32s(float* out, std::size_t n, std::string_view what) {
    if (n > remaining() / 4)
      fail("truncated: ", what, " needs ", n, " floats (", n * 4, " bytes) at offset ", pos_, ", only ",
           remaining(), " bytes remain");
    std::memcpy(out, data_.data() + pos_, n * 4);
    for (std::size_t i = 0; i < n; ++i)
      if (!std::isfinite(out[i])) fail("non-finite value (", out[i], ") in ", what, " at element ", i, " (offset ",
                                        pos_ + 4 * i, ")");
    pos_ += n * 4;
  }

  [[nodiscard]] std::string bytes(std::size_t n, std::string_view what) {
    need(n, what);
    std::string s(reinterpret_cast<char const*>(data_.data() + pos_), n);
    pos_ += n;
    return s;
  }

  /// Throws unless the whole buffer has been read.
  void expect_end() const {
    if (remaining() != 0) fail("has ", remaining(), " unexpected trailing bytes after offset ", pos_);
  }

  template <class... Args>
  [[noreturn]] void fail(Args const&... args) const {
    rsq::detail::throw_io_error(name_, ": ", kind_, " ", args...);
  }

 private:
  std::span<const std::byte> data_;
  std::size_t pos_ = 0;
  std::string name_;
  std::string kind_;
};

/// Growing little-endian output buffer.
class byte_writer {
 public:
  void i32(std::int32_t v) { append(&v, 4); }
  void f32(float v) { append(&v, 4); }
  void f32s(float const* p, std::size_t n) { append(p, n * 4); }
  void bytes(std::string_view s) { append(s.data(), s.size()); }
  void reserve(std::size_t n) { buf_.reserve(n); }
  [[nodiscard]] std::vector<std::byte> take() && { return std::move(buf_); }

 private:
  void append(void const* p, std::size_t n) {
    auto const* b = static_cast<std::byte const*>(p);
    buf_.insert(buf_.end(), b, b + n);
  }
  std::vector<std::byte> buf_;
};

/// The whole content of @p path; throws rsq::io_error if it cannot be opened or read.
[[nodiscard]] inline std::vector<std::byte> read_file(std::filesystem::path const& path) {
  io::expect_regular_file(path);
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) rsq::detail::throw_io_error(path.string(), ": cannot open file");
  auto const end = f.tellg();
  if (end < 0) rsq::detail::throw_io_error(path.string(), ": cannot determine the file size");
  std::vector<std::byte> buf(static_cast<std::size_t>(end));
  f.seekg(0);
  f.read(reinterpret_cast<char*>(buf.data()), std::streamsize(buf.size()));
  if (std::size_t(f.gcount()) != buf.size()) rsq::detail::throw_io_error(path.string(), ": read error");
  return buf;
}

/// Atomic whole-file writes (temporary file + rename): <rsq/io/atomic_file.hpp>.
using rsq::io::write_file_atomic;

}  // namespace rsq::model::detail
