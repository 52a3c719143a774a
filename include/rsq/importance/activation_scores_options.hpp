// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The options of importance::activation_scores (<rsq/importance/activation_scores.hpp>), shared by its backends:
/// which statistic to compute and what the messages call the arrays.

#include <string_view>

namespace rsq::importance {

/// Which raw score activation_scores() computes for each token t of a sequence of L tokens.
enum class activation_statistic {
  norm,      ///< ActNorm: ‖x_t‖₂
  distance,  ///< ActDiff: ‖x_t − x_ref,t‖₂
  spread,    ///< TokenSim: ‖x_t − μ‖² + (1/L) Σ_j ‖x_j − μ‖², μ the sequence's mean token
};

/// What the messages call the two activation arrays (the policies say "x_in" and "x_out").
struct activation_names {
  std::string_view x = "activation_scores: x";
  std::string_view x_ref = "activation_scores: x_ref";
};

}  // namespace rsq::importance
