// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// A factored Hessian: what GPTQ needs from H, computed once and reused by every weight that shares H (q/k/v share
/// the attention input's H; gate/up share the FFN input's H). Eigen-free, so CUDA translation units can use it.

#include <cstdint>
#include <vector>

#include "rsq/core/view.hpp"
#include "rsq/gptq/result.hpp"

namespace rsq::gptq {

/// Backend-independent part of a factorization (spec §6 steps 2, 4–6).
struct factorization_info {
  status info = status::not_positive_definite;
  index_t cols = 0;
  bool act_order = false;
  std::vector<std::int32_t> perm;  ///< (cols) solve order: perm[j] = original column quantized j-th
  std::vector<char> dead;          ///< (cols) H_ii == 0: the column of W is zeroed (original order)
  double damp_used = 0;            ///< absolute damping of the successful (or last) attempt
  double damp_percent_used = 0;    ///< damp_used / mean(diag H)
  int damp_attempts = 0;
  index_t failed_column = -1;      ///< original column of the failing pivot when info != ok

  [[nodiscard]] bool ok() const noexcept { return info == status::ok; }
};

/// The factored Hessian of backend B: factorization_info plus U, the upper Cholesky factor of (P(H + damp·I)Pᵀ)⁻¹,
/// stored where B computes (host memory for cpu_eigen, device memory for cuda). Made by gptq::factor().
template <class T, class B>
class factorization;

}  // namespace rsq::gptq
