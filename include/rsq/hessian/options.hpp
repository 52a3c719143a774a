// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Options of rsq::hessian_accumulator, shared by every backend (Eigen-free and CUDA-free).

#include "rsq/core/view.hpp"

namespace rsq::hessian {

/// Arithmetic of the Hessian update.
enum class precision {
  strict,  ///< T's own precision: fp32 products for float (no TF32), fp64 for double (the default)
  tf32,    ///< TF32 tensor-core products with fp32 accumulation (float only; opt-in)
  bf16,    ///< √w·x rounded to bf16, tensor-core products with fp32 accumulation (float only; opt-in)
};

/// Options of hessian_accumulator. A backend without tensor cores computes `strict` for tf32 and bf16 (the CPU
/// backend does): more accurate than asked.
struct options {
  hessian::precision precision = precision::strict;
  /// Tokens staged per update on a device backend; 0 chooses about 512 MB of staging (at least 1024, at most 65536).
  index_t chunk_tokens = 0;
};

}  // namespace rsq::hessian
