// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The tags of every algorithm that runs on a backend: what a new backend specializes
/// rsq::backend::implementation<tag, backend> for (<rsq/backend/dispatch.hpp>). Each tag names the front-end header
/// whose `detail` comment lists the static members an implementation provides; the CPU implementations
/// (backend/cpu/) and the CUDA ones (backend/cuda/) are the worked examples.

namespace rsq::algorithm {

// Memory and checks every front end relies on.
struct memory {};              ///< owned arrays, copies, where a pointer lives       <rsq/backend/memory.hpp>
struct validation {};          ///< NaN/Inf and symmetry checks on the backend's data  <rsq/backend/validation.hpp>
struct host_downloads {};      ///< copies to host memory that overlap the backend's work <rsq/backend/transfer.hpp>

// Quantize.
struct gemm {};                ///< C = α·op(A)·op(B) + β·C in fp32, bf16 inputs or fp64 <rsq/linalg/gemm.hpp>
struct lu_solve {};            ///< A·Y = B in place, LU with partial pivoting, fp64    <rsq/linalg/lu_solve.hpp>
struct rtn {};                 ///< round to nearest on a grid                          <rsq/quant/rtn.hpp>
struct hessian_accumulation {};///< importance-weighted Σ w x xᵀ                       <rsq/hessian/accumulator.hpp>
struct gptq {};                ///< factor a Hessian; the column solver                 <rsq/gptq/solve.hpp>
struct pack_gptq {};           ///< AutoGPTQ / GPTQModel int32 packing                  <rsq/pack/gptq_format.hpp>

// Rotate.
struct hadamard_transform {};  ///< rows x ← diag(post)·op(H)·diag(pre)·x                <rsq/rotation/hadamard.hpp>
struct elementwise {};         ///< conversions float ↔ double, W ← W·diag(g)          <rsq/linalg/elementwise.hpp>

// Scale: token importance.
struct attncon {};             ///< attention received per token, from P or from Q/K   <rsq/importance/attncon.hpp>
struct activation_scores {};   ///< ActNorm, ActDiff, TokenSim raw scores <rsq/importance/activation_scores.hpp>

// The pieces of the Llama forward pass.
struct embedding {};           ///< token ids → rows of the embedding                  <rsq/nn/embedding.hpp>
struct rms_norm {};            ///< y = g ⊙ x / √(mean x² + ε)                          <rsq/nn/rms_norm.hpp>
struct rope {};                ///< rotary position embedding, in place                 <rsq/nn/rope.hpp>
struct causal_attention {};    ///< causal softmax attention (GQA), AttnCon on the way  <rsq/nn/attention.hpp>
struct swiglu {};              ///< gate ← silu(gate) ⊙ up                              <rsq/nn/swiglu.hpp>
struct next_token_loss {};     ///< final RMSNorm, classifier, Σ −log p(next token)     <rsq/nn/loss.hpp>

// Its reverse, for learning rotations.
struct reverse_pass {};        ///< the forward pieces that keep what their reverse needs, and their reverses
                               ///< (RMSNorm, RoPE, attention, SwiGLU, cross-entropy)   <rsq/nn/reverse.hpp>

}  // namespace rsq::algorithm
