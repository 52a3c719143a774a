// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The one place that knows where xtensor's headers live: flat in 0.24/0.25 (`xtensor/xtensor.hpp`), nested from
/// 0.26 on (`xtensor/containers/xtensor.hpp`).

#if __has_include(<xtensor/containers/xtensor.hpp>)
#include <xtensor/containers/xarray.hpp>
#include <xtensor/containers/xtensor.hpp>
#include <xtensor/containers/xadapt.hpp>
#else
#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xtensor.hpp>
#endif
