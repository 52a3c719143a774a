// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Every public declaration of the CUDA backend, without the CPU umbrella (so without Eigen): for CUDA translation
/// units (.cu) that use the backend. Host C++ code includes <rsq/cuda.hpp> instead.

#include "rsq/backend/cuda/attncon.hpp"
#include "rsq/backend/cuda/error.hpp"
#include "rsq/backend/cuda/gptq_solver.hpp"
#include "rsq/backend/cuda/hadamard.hpp"
#include "rsq/backend/cuda/hessian_accumulator.hpp"
#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/cuda/pack.hpp"
#include "rsq/backend/tags.hpp"
