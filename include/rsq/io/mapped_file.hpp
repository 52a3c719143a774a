// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// A read-only memory mapping of a whole file (POSIX mmap): checkpoint tensors are read where they lie, without a
/// copy, and only the pages a caller touches are read from disk.

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <utility>

#include "rsq/core/error.hpp"

namespace rsq::io {

/// Throws rsq::io_error naming @p path unless it is an existing regular file: a folder, a device or a missing file
/// given where a file is expected gets a message that says so, before anything is read.
inline void expect_regular_file(std::filesystem::path const& path) {
  std::error_code ec;
  auto const status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) rsq::detail::throw_io_error(path.string(), ": no such file");
  if (std::filesystem::is_directory(status)) rsq::detail::throw_io_error(path.string(), ": is a directory, not a file");
  if (!std::filesystem::is_regular_file(status)) rsq::detail::throw_io_error(path.string(), ": is not a regular file");
}

/// A file mapped read-only into memory; move-only, unmapped on destruction.
class mapped_file {
 public:
  mapped_file() = default;

  /// Maps @p path.
  /// @throws rsq::io_error naming the file when it is missing, a directory or another non-regular file, or cannot
  ///         be opened or mapped (with the system's reason)
  explicit mapped_file(std::filesystem::path const& path) : path_(path.string()) {
    expect_regular_file(path);
    int const fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) rsq::detail::throw_io_error(path_, ": cannot open: ", std::strerror(errno));
    struct ::stat st {};
    if (::fstat(fd, &st) != 0) {
      int const e = errno;
      ::close(fd);
      rsq::detail::throw_io_error(path_, ": cannot stat: ", std::strerror(e));
    }
    size_ = std::size_t(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        int const e = errno;
        ::close(fd);
        rsq::detail::throw_io_error(path_, ": cannot map ", size_, " bytes: ", std::strerror(e));
      }
      data_ = static_cast<std::byte const*>(p);
      // Checkpoints are read front to back, most of them whole: ask for aggressive read-ahead.
      (void)::madvise(p, size_, MADV_SEQUENTIAL);
      (void)::madvise(p, size_, MADV_WILLNEED);
    }
    ::close(fd);  // the mapping stays valid without the descriptor
  }

  mapped_file(mapped_file&& o) noexcept
      : path_(std::move(o.path_)), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  mapped_file& operator=(mapped_file&& o) noexcept {
    if (this != &o) {
      unmap();
      path_ = std::move(o.path_);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  mapped_file(mapped_file const&) = delete;
  mapped_file& operator=(mapped_file const&) = delete;
  ~mapped_file() { unmap(); }

  [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  [[nodiscard]] std::string const& path() const noexcept { return path_; }

 private:
  void unmap() noexcept {
    if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
    data_ = nullptr;
    size_ = 0;
  }

  std::string path_;
  std::byte const* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace rsq::io
