// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// SwiGLU, the gate of Llama's feed-forward block: gate ← silu(gate) ⊙ up, silu(g) = g / (1 + e^(−g)).
///
/// An implementation of algorithm::swiglu provides
///   static void run(B const&, matrix_view<float> gate, matrix_view<const float> up);   // arguments checked

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/nn.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/nn/checks.hpp"

namespace rsq::nn {

/// gate ← silu(gate) ⊙ up, element by element; @p gate and @p up (tokens, hidden) in @p be's memory.
/// @throws rsq::invalid_argument for shapes that differ, arrays elsewhere
template <backend_tag B>
void swiglu(B const& be, matrix_view<float> gate, matrix_view<const float> up) {
  detail::expect_operand(be, gate, "swiglu", "gate");
  detail::expect_operand(be, up, "swiglu", "up");
  detail::expect_shape(up, gate.rows(), gate.cols(), "swiglu", "up");
  backend::implementation_t<algorithm::swiglu, B>::run(be, gate, up);
}

}  // namespace rsq::nn
