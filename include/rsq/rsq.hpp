// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Umbrella header of rsq's CPU build. It never includes CUDA headers; for the CUDA backend include <rsq/cuda.hpp>
/// and link rsq::cuda.

#include "rsq/version.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/view.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/io/npy.hpp"
