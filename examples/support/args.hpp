// SPDX-License-Identifier: MIT
#pragma once
// A small command-line parser for the rsq tools: --name value and --flag options, with one-line errors.

#include <charconv>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace rsq_cli {

/// Thrown for bad command lines; the tools print it as one line and exit with status 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class args {
 public:
  /// @p flags are options without a value; every other --option takes exactly one value.
  args(int argc, char** argv, std::set<std::string> flags, std::set<std::string> valued) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) throw usage_error("unexpected argument '" + a + "'");
      std::string name = a.substr(2);
      std::optional<std::string> inline_value;
      if (auto eq = name.find('='); eq != std::string::npos) {
        inline_value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      if (flags.count(name)) {
        if (inline_value) throw usage_error("--" + name + " takes no value");
        flags_.insert(name);
      } else if (valued.count(name)) {
        if (values_.count(name)) throw usage_error("--" + name + " given twice");
        if (inline_value) values_[name] = *inline_value;
        else if (i + 1 < argc) values_[name] = argv[++i];
        else throw usage_error("--" + name + " needs a value");
      } else {
        throw usage_error("unknown option --" + name);
      }
    }
  }

  [[nodiscard]] bool flag(std::string const& n) const { return flags_.count(n) > 0; }
  [[nodiscard]] bool has(std::string const& n) const { return values_.count(n) > 0; }
  [[nodiscard]] std::string get(std::string const& n, std::string const& def = {}) const {
    auto it = values_.find(n);
    return it == values_.end() ? def : it->second;
  }
  [[nodiscard]] std::string require(std::string const& n) const {
    if (!has(n)) throw usage_error("--" + n + " is required");
    return get(n);
  }
  [[nodiscard]] long integer(std::string const& n, long def) const {
    if (!has(n)) return def;
    auto const s = get(n);
    long v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || p != s.data() + s.size()) throw usage_error("--" + n + " must be an integer, got '" + s + "'");
    return v;
  }
  [[nodiscard]] double number(std::string const& n, double def) const {
    if (!has(n)) return def;
    auto const s = get(n);
    std::size_t used = 0;
    double v = 0;
    try {
      v = std::stod(s, &used);
    } catch (std::exception const&) {
      used = 0;
    }
    if (used != s.size() || s.empty()) throw usage_error("--" + n + " must be a number, got '" + s + "'");
    return v;
  }
  [[nodiscard]] std::string choice(std::string const& n, std::vector<std::string> const& allowed) const {
    auto const v = get(n, allowed.front());
    for (auto const& a : allowed)
      if (v == a) return v;
    std::string list;
    for (auto const& a : allowed) list += (list.empty() ? "" : "|") + a;
    throw usage_error("--" + n + " must be one of " + list + ", got '" + v + "'");
  }

 private:
  std::set<std::string> flags_;
  std::map<std::string, std::string> values_;
};

/// A JSON string literal for @p s.
inline std::string json_string(std::string const& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      o += ' ';
      continue;
    }
    o += c;
  }
  return o + "\"";
}

}  // namespace rsq_cli
