// SPDX-License-Identifier: MIT
#pragma once
// Loading a golden solver case of ../shared/golden (<name>.<f32|f64>/{W,H,Q,X,importance,...}.npy + meta.json).

#include <filesystem>
#include <stdexcept>
#include <string>

#include <rsq/io/npy.hpp>
#include <rsq/quant/grid.hpp>

#include "support/shared_data.hpp"

namespace rsq_test {

/// Value text of "key" in a flat JSON object (numbers, true/false, strings without escapes).
inline std::string json_value(std::string const& json, std::string const& key) {
  auto const k = json.find("\"" + key + "\"");
  if (k == std::string::npos) return {};
  auto p = json.find(':', k) + 1;
  while (json[p] == ' ') ++p;
  if (json[p] == '"') return json.substr(p + 1, json.find('"', p + 1) - p - 1);
  auto const e = json.find_first_of(",}\n", p);
  return json.substr(p, e - p);
}

struct golden_meta {
  int bits = 0;
  bool sym = false, mse = false, actorder = false, static_groups = false;
  long groupsize = -1, rows = 0, cols = 0;
  std::string quantizer, dtype, policy;
  double proxy_loss = 0, r_min = 0, r_max = 0;

  [[nodiscard]] rsq::quant::grid_spec grid() const {
    rsq::quant::grid_spec g;
    g.bits = bits;
    g.symmetric = sym;
    g.conv = quantizer == "rsq" ? rsq::quant::convention::rsq : rsq::quant::convention::ist;
    g.clip.enabled = mse;
    return g;
  }
};

inline golden_meta read_meta(std::filesystem::path const& dir) {
  auto const j = read_text(dir / "meta.json");
  if (j.empty()) throw std::runtime_error("cannot read " + (dir / "meta.json").string());
  golden_meta m;
  m.bits = std::stoi(json_value(j, "bits"));
  m.sym = json_value(j, "sym") == "true";
  m.mse = json_value(j, "mse") == "true";
  m.actorder = json_value(j, "actorder") == "true";
  m.static_groups = json_value(j, "static_groups") == "true";
  m.groupsize = std::stol(json_value(j, "groupsize"));
  m.rows = std::stol(json_value(j, "rows"));
  m.cols = std::stol(json_value(j, "cols"));
  m.quantizer = json_value(j, "quantizer");
  m.dtype = json_value(j, "dtype");
  m.policy = json_value(j, "policy");
  m.proxy_loss = std::stod(json_value(j, "proxy_loss"));
  if (auto v = json_value(j, "r_min"); !v.empty()) m.r_min = std::stod(v);
  if (auto v = json_value(j, "r_max"); !v.empty()) m.r_max = std::stod(v);
  return m;
}

/// Names of all solver cases (directories with a meta.json that has "quantizer").
inline std::vector<std::string> solver_cases(std::filesystem::path const& golden) {
  std::vector<std::string> names;
  for (auto const& e : std::filesystem::directory_iterator(golden))
    if (e.is_directory() && std::filesystem::exists(e.path() / "W.npy")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace rsq_test
