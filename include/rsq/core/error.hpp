// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The three error channels of rsq (docs/design.md, "Errors"):
///  - bad arguments at the public boundary throw rsq::invalid_argument (always checked, never compiled out);
///  - unreadable or corrupt files throw rsq::io_error;
///  - numerical outcomes (a Hessian that is not positive definite) are *not* exceptions: they come back as a
///    status in the result, like Eigen's `info()`.
/// Internal invariants use RSQ_ASSERT, which is compiled out under NDEBUG and can be overridden.

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace rsq {

/// A precondition on the arguments of a public function does not hold (shape, range, NaN/Inf, ...).
class invalid_argument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// A file cannot be read or written, or its content is corrupt or of the wrong kind.
class io_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

/// Streams all arguments into one string; used to build error messages that print shapes and values.
template <class... Args>
[[nodiscard]] std::string concat(Args const&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

template <class... Args>
[[noreturn]] void throw_invalid_argument(Args const&... args) {
  throw rsq::invalid_argument(concat("rsq: ", args...));
}

template <class... Args>
[[noreturn]] void throw_io_error(Args const&... args) {
  throw rsq::io_error(concat("rsq: ", args...));
}

}  // namespace detail
}  // namespace rsq

/// Checks a precondition of a public function and throws rsq::invalid_argument with the streamed message.
/// Always on: bad input must never become a crash or a silent wrong answer.
#define RSQ_EXPECTS(cond, ...)                                        \
  do {                                                                \
    if (!(cond)) ::rsq::detail::throw_invalid_argument(__VA_ARGS__); \
  } while (false)

#ifndef RSQ_ASSERT
#ifdef NDEBUG
#define RSQ_ASSERT(cond) ((void)0)
#else
#include <cassert>
#define RSQ_ASSERT(cond) assert(cond)
#endif
#endif
