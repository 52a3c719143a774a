// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// gptq::factor() and gptq::solve() (spec §6) with the CPU backend. The front end and its documentation are in
/// <rsq/gptq/solve_api.hpp>; the CPU implementation in <rsq/backend/cpu/gptq_solver.hpp>.

#include "rsq/backend/cpu/gptq_solver.hpp"
#include "rsq/gptq/solve_api.hpp"
