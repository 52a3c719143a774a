// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Umbrella header of rsq with the CUDA backend: everything of <rsq/rsq.hpp> plus the CUDA implementations behind the
/// same templates (rsq::backend::cuda{stream} as the backend argument). Needs the CMake target rsq::cuda (which
/// defines RSQ_WITH_CUDA=1, links cudart, cuBLAS and cuSOLVER, and compiles the backend's one CUDA translation unit,
/// rsq/backend/cuda/rsq_cuda.cu, into the target). This header itself includes no CUDA header and no kernel code, so
/// plain C++ translation units (g++, clang++) can include it.

#include "rsq/rsq.hpp"

#include "rsq/backend/cuda/all.hpp"
