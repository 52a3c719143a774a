// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Whole-file writes that never leave a half-written file under the final name: the bytes go to `<path>.tmp` in the
/// same folder (so the rename cannot cross file systems), which is renamed over the final name only after every byte
/// was written and flushed; on any failure the temporary file is removed and rsq::io_error names the file.

#include <concepts>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <string_view>
#include <system_error>

#include "rsq/core/error.hpp"

namespace rsq::io {

/// Calls @p write(std::ostream&) on a stream to `path.tmp`, then renames that file to @p path.
/// @throws rsq::io_error when the file cannot be created, a write fails (a full disk), or the rename fails;
///         exceptions of @p write propagate; in every case nothing is left under either name
template <class Write>
  requires std::invocable<Write&, std::ostream&>
void write_file_atomic(std::filesystem::path const& path, Write&& write) {
  std::filesystem::path const tmp = path.string() + ".tmp";
  auto discard = [&] {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
  };
  try {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) rsq::detail::throw_io_error(tmp.string(), ": cannot open for writing");
    write(static_cast<std::ostream&>(f));
    f.flush();
    if (!f) rsq::detail::throw_io_error(tmp.string(), ": write failed (disk full?)");
  } catch (...) {
    discard();
    throw;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    discard();
    rsq::detail::throw_io_error(path.string(), ": cannot move the written file into place: ", ec.message());
  }
}

/// Writes @p data to @p path atomically (see above).
inline void write_file_atomic(std::filesystem::path const& path, std::span<const std::byte> data) {
  write_file_atomic(path, [&](std::ostream& f) {
    f.write(reinterpret_cast<char const*>(data.data()), std::streamsize(data.size()));
  });
}

/// Writes the text @p text to @p path atomically (see above).
inline void write_text_file_atomic(std::filesystem::path const& path, std::string_view text) {
  write_file_atomic(path, [&](std::ostream& f) { f.write(text.data(), std::streamsize(text.size())); });
}

}  // namespace rsq::io
