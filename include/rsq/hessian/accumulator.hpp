// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// rsq::hessian_accumulator (spec §5.1) with the CPU backend. The shared front end and its documentation are in
/// <rsq/hessian/accumulator_api.hpp>; the CPU implementation in <rsq/backend/cpu/hessian_accumulator.hpp>.

#include "rsq/backend/cpu/hessian_accumulator.hpp"
#include "rsq/hessian/accumulator_api.hpp"
