// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Options of the GPTQ column solver. Names and defaults mirror the reference `fasterquant()` (spec §6, §8.3).

#include "rsq/core/error.hpp"
#include "rsq/core/view.hpp"

namespace rsq::gptq {

/// Options of gptq::solve().
struct options {
  /// Columns per lazy-update block (the reference's `blocksize`).
  index_t block_size = 128;
  /// Relative damping: damp = damp_percent · mean(diag H) is added to the diagonal (`percdamp`).
  double damp_percent = 0.01;
  /// Input columns per quantization group; −1 quantizes whole rows (`groupsize`). A last partial group is allowed.
  index_t group_size = -1;
  /// Quantize columns in order of decreasing diag(H) (`actorder`).
  bool act_order = false;
  /// Fit every group's grid once, on the weight before any update, in original column order (`static_groups`).
  bool static_groups = false;
  /// Escalation for a Hessian that is not positive definite: attempt k = 1, 2, ... adds k·damp to the diagonal of
  /// the *original* H (never of a partly factored one), up to this many attempts; then solve() returns
  /// status::not_positive_definite. 50 matches RSQ's `--add_until_fail` (1 + 49 retries); 1 is the plain reference.
  int max_damp_attempts = 50;

  /// Throws rsq::invalid_argument naming the first option that is out of range.
  void validate() const {
    RSQ_EXPECTS(block_size >= 1, "gptq options: block_size must be positive, got ", block_size);
    RSQ_EXPECTS(damp_percent >= 0 && damp_percent < 1e6, "gptq options: damp_percent must be finite and >= 0, got ",
                damp_percent);
    RSQ_EXPECTS(group_size == -1 || group_size >= 1,
                "gptq options: group_size must be -1 (per row) or positive, got ", group_size);
    RSQ_EXPECTS(!static_groups || group_size >= 1, "gptq options: static_groups needs a positive group_size");
    RSQ_EXPECTS(max_damp_attempts >= 1, "gptq options: max_damp_attempts must be at least 1, got ",
                max_damp_attempts);
  }
};

}  // namespace rsq::gptq
