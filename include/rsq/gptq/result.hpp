// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// What gptq::solve() returns: the quantized weight, its dequantized form, the permutation, per-column losses, and a
/// status that says whether the Hessian could be factored (and with how much damping).

#include <concepts>
#include <cstdint>
#include <string_view>

#include "rsq/backend/cpu/memory.hpp"
#include "rsq/backend/memory.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/quant/quantized_weight.hpp"

namespace rsq::gptq {

/// Numerical outcome of a solve. Bad arguments are exceptions instead (rsq::invalid_argument).
enum class status {
  ok,                     ///< solved; `damp_attempts` says whether the damping had to grow
  not_positive_definite,  ///< H + k·damp·I was not positive definite for every k ≤ max_damp_attempts, or a
                          ///< diagonal entry of H is negative (then nothing is attempted)
  no_live_columns,        ///< every column of H is dead (H_ii = 0: all inputs zero); nothing to solve
};

[[nodiscard]] constexpr std::string_view to_string(status s) noexcept {
  switch (s) {
    case status::ok: return "ok";
    case status::not_positive_definite: return "not_positive_definite";
    case status::no_live_columns: return "no_live_columns";
  }
  return "?";
}

/// Result of gptq::solve() for a (rows, cols) weight; its arrays live in the memory of backend B (host memory by
/// default: what gptq::solve returns on every backend; gptq::solve_resident keeps them where the backend computed).
template <class T, class B = backend::cpu_eigen>
struct result {
  status info = status::not_positive_definite;
  /// Codes (rows, cols) in original column order, scales and zeros (rows, groups), g_idx (cols).
  /// Empty when `info != status::ok`.
  quant::quantized_weight<T, B> weight;
  /// The dequantized weight Q (rows, cols), original column order (what the reference writes into the layer).
  backend::matrix<T, B> dequantized;
  /// Column order of the solve: perm(j) is the original column quantized j-th (identity without act-order).
  /// Always in host memory.
  rsq::vector<std::int32_t> perm;
  /// Σ_rows (w − q)² / (2 d²) per column (the reference's `Losses` summed over rows), original column order.
  backend::array<T, B> column_loss;
  /// Absolute damping added to diag(H) in the successful (or last) attempt.
  double damp_used = 0;
  /// damp_used relative to mean(diag H), i.e. k · damp_percent.
  double damp_percent_used = 0;
  /// Number of factorization attempts made (1 when the first damping sufficed).
  int damp_attempts = 0;
  /// On failure: the original column index of the pivot that failed in the last attempt; −1 otherwise.
  index_t failed_column = -1;

  [[nodiscard]] bool ok() const noexcept { return info == status::ok; }
  /// Σ column_loss: the reference's printed "error" (host results; a resident one goes through gptq::to_host).
  [[nodiscard]] double total_loss() const noexcept
    requires std::same_as<B, backend::cpu_eigen>
  {
    double s = 0;
    for (auto v : column_loss) s += double(v);
    return s;
  }
};

}  // namespace rsq::gptq
