// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Every declaration of the CUDA backend (the specializations of rsq::backend::implementation for
/// rsq::backend::cuda), without Eigen and without CUDA headers. Included by <rsq/cuda.hpp>.

#include "rsq/backend/cuda/activation_scores.hpp"
#include "rsq/backend/cuda/attncon.hpp"
#include "rsq/backend/cuda/elementwise.hpp"
#include "rsq/backend/cuda/error.hpp"
#include "rsq/backend/cuda/gemm.hpp"
#include "rsq/backend/cuda/gptq_solver.hpp"
#include "rsq/backend/cuda/hadamard.hpp"
#include "rsq/backend/cuda/hessian_accumulator.hpp"
#include "rsq/backend/cuda/lu_solve.hpp"
#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/cuda/nn.hpp"
#include "rsq/backend/cuda/pack.hpp"
#include "rsq/backend/cuda/reverse.hpp"
#include "rsq/backend/cuda/rtn.hpp"
#include "rsq/backend/cuda/transfer.hpp"
#include "rsq/backend/tags.hpp"
