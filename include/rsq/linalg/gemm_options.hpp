// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Options of rsq::linalg::gemm, shared by the backends (Eigen-free, CUDA-free).

#include "rsq/core/precision.hpp"

namespace rsq::linalg {

/// Whether an operand enters the product as it is or transposed.
enum class op { none, transpose };

/// Options of linalg::gemm: C ← α·op(A)·op(B) + β·C.
struct gemm_options {
  double alpha = 1.0;
  double beta = 0.0;
  matmul_precision precision = matmul_precision::fp32;
};

}  // namespace rsq::linalg
