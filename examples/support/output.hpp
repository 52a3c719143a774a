// SPDX-License-Identifier: MIT
#pragma once
// Output folders the rsq tools can be trusted with: checked before any work (a missing parent, no write permission,
// a file where a folder is expected, a non-empty folder without --overwrite), written into a staging folder next to
// the target, and moved into place whole at the end, so that a failed run leaves nothing and an overwritten folder
// never mixes new files with stale ones.

#include <unistd.h>

#include <filesystem>
#include <string>
#include <system_error>

#include "support/args.hpp"

namespace rsq_cli {

class output_folder {
 public:
  /// Checks that @p target can be written (throws usage_error naming what is wrong) and creates the staging folder.
  output_folder(std::filesystem::path target, bool overwrite) : target_(std::move(target)) {
    namespace fs = std::filesystem;
    if (target_.filename().empty()) target_ = target_.parent_path();  // "out/" → "out"
    fs::path const parent = target_.has_parent_path() ? target_.parent_path() : fs::path(".");
    std::error_code ec;
    if (!fs::is_directory(parent, ec))
      throw usage_error("the output's parent folder " + parent.string() + " does not exist");
    if (::access(parent.c_str(), W_OK | X_OK) != 0)
      throw usage_error("no permission to write in " + parent.string());
    if (fs::exists(target_, ec)) {
      if (!fs::is_directory(target_, ec)) throw usage_error(target_.string() + " exists and is not a folder");
      if (!fs::is_empty(target_, ec) && !overwrite)
        throw usage_error(target_.string() + " is not empty (pass --overwrite to replace it whole)");
    }
    staging_ = parent / ("." + target_.filename().string() + ".partial-" + std::to_string(::getpid()));
    fs::remove_all(staging_, ec);
    if (!fs::create_directory(staging_, ec))
      throw usage_error("cannot create a folder in " + parent.string() + ": " + ec.message());
  }
  output_folder(output_folder const&) = delete;
  output_folder& operator=(output_folder const&) = delete;
  /// A run that did not commit leaves nothing behind.
  ~output_folder() {
    std::error_code ec;
    if (!committed_) std::filesystem::remove_all(staging_, ec);
  }

  /// Where the files go until commit().
  [[nodiscard]] std::filesystem::path const& staging() const noexcept { return staging_; }
  [[nodiscard]] std::filesystem::path const& target() const noexcept { return target_; }

  /// Replaces the target with the staging folder.
  void commit() {
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::remove_all(target_, ec);
    if (ec) throw std::runtime_error("cannot remove the old " + target_.string() + ": " + ec.message());
    fs::rename(staging_, target_, ec);
    if (ec) throw std::runtime_error("cannot move the output into " + target_.string() + ": " + ec.message());
    committed_ = true;
  }

 private:
  std::filesystem::path target_, staging_;
  bool committed_ = false;
};

/// Checks, before any work, that the file @p path can be written: its folder exists and is writable, and it is not a
/// folder; an existing file is refused unless @p overwrite (the writers replace files atomically).
inline void check_output_file(std::filesystem::path const& path, std::string const& option, bool overwrite) {
  namespace fs = std::filesystem;
  fs::path const parent = path.has_parent_path() ? path.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(parent, ec))
    throw usage_error(option + " " + path.string() + ": the folder " + parent.string() + " does not exist");
  if (::access(parent.c_str(), W_OK | X_OK) != 0)
    throw usage_error(option + " " + path.string() + ": no permission to write in " + parent.string());
  if (fs::is_directory(path, ec)) throw usage_error(option + " " + path.string() + ": is a folder, not a file");
  if (fs::exists(path, ec) && !overwrite)
    throw usage_error(option + " " + path.string() + " exists (pass --overwrite to replace it)");
}

/// Throws usage_error unless @p path names a readable regular file (a folder, a device or a missing file is named).
inline void expect_readable_file(std::filesystem::path const& path, std::string const& option) {
  std::error_code ec;
  auto const st = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(st)) throw usage_error(option + " " + path.string() + ": no such file");
  if (std::filesystem::is_directory(st)) throw usage_error(option + " " + path.string() + ": is a folder, not a file");
  if (!std::filesystem::is_regular_file(st)) throw usage_error(option + " " + path.string() + ": is not a regular file");
  if (::access(path.c_str(), R_OK) != 0) throw usage_error(option + " " + path.string() + ": not readable");
}

}  // namespace rsq_cli
