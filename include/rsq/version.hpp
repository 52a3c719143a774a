// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Library version, kept in step with `project(rsq VERSION ...)` in CMakeLists.txt.

#define RSQ_VERSION_MAJOR 0
#define RSQ_VERSION_MINOR 1
#define RSQ_VERSION_PATCH 0

namespace rsq {
inline constexpr int version_major = RSQ_VERSION_MAJOR;
inline constexpr int version_minor = RSQ_VERSION_MINOR;
inline constexpr int version_patch = RSQ_VERSION_PATCH;
inline constexpr char version_string[] = "0.1.0";
}  // namespace rsq
