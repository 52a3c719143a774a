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
#include "rsq/quant/grid.hpp"
#include "rsq/quant/quantized_weight.hpp"
#include "rsq/quant/rtn.hpp"
#include "rsq/hessian/weights.hpp"
#include "rsq/hessian/accumulator.hpp"
#include "rsq/gptq/options.hpp"
#include "rsq/gptq/result.hpp"
#include "rsq/gptq/solve.hpp"
#include "rsq/gptq/proxy_loss.hpp"
#include "rsq/pack/gptq_format.hpp"
#include "rsq/model/llama.hpp"
#include "rsq/model/llama2c.hpp"
#include "rsq/model/tokenizer.hpp"
#include "rsq/model/forward.hpp"
#include "rsq/importance/all.hpp"
