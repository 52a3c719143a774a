// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Precision of the inputs of matrix products (rsq::linalg::gemm and the forward-pass pieces built on it).

namespace rsq {

/// Products always accumulate in fp32 (fp64 for double operands); bf16 is an opt-in that rounds float inputs to
/// bfloat16 (tensor cores on the GPU). A backend without bf16 products computes fp32 instead, more accurate than
/// asked (the CPU backend does).
enum class matmul_precision {
  fp32,  ///< strict fp32 (no TF32); double operands always compute in fp64
  bf16,  ///< float inputs rounded to bf16, fp32 accumulation
};

}  // namespace rsq
