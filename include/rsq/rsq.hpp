// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Umbrella header of rsq's CPU build. It never includes CUDA headers; for the CUDA backend also include
/// <rsq/cuda.hpp> and link rsq::cuda.

// Core: errors, views, owned arrays, backend tags, seeded RNG, .npy files.
#include "rsq/version.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/view.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/random.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/io/npy.hpp"

// Quantize: grids, round-to-nearest, the importance-weighted Hessian, the GPTQ solver, checkpoint packing.
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

// Rotate: Hadamard transforms of every size, randomized Hadamard and random orthogonal rotations.
#include "rsq/rotation/hadamard_matrices.hpp"
#include "rsq/rotation/hadamard_plan.hpp"
#include "rsq/rotation/hadamard.hpp"
#include "rsq/rotation/rotation.hpp"
#include "rsq/rotation/randomized_hadamard.hpp"
#include "rsq/rotation/random_orthogonal.hpp"
#include "rsq/rotation/any_rotation.hpp"

// Scale: token-importance policies (AttnCon and the others) and their normalisation.
#include "rsq/importance/all.hpp"

// Models: llama2c checkpoints and tokenizers, the Llama forward pass with quantizer hooks, whole-model rotation,
// calibration data, layer-by-layer quantization (RTN, GPTQ, QuaRot, RSQ) and exports.
#include "rsq/model/llama.hpp"
#include "rsq/model/llama2c.hpp"
#include "rsq/model/tokenizer.hpp"
#include "rsq/model/forward.hpp"
#include "rsq/model/calibration.hpp"
#include "rsq/model/rotate.hpp"
#include "rsq/model/quantize.hpp"
#include "rsq/model/export.hpp"

// The one-layer RSQ pipeline: rotate, scale, then quantize a linear layer in one call.
#include "rsq/pipeline/quantize_layer.hpp"
