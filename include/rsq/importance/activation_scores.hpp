// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The raw scores of the activation-based importance policies (spec §4.4) for a batch of sequences, on a backend:
///   norm      s_t = ‖x_t‖₂                                   (ActNorm, importance::actnorm)
///   distance  s_t = ‖x_t − x_ref,t‖₂                         (ActDiff, importance::actdiff: x = x_in, x_ref = x_out)
///   spread    s_t = ‖x_t − μ‖² + (1/L) Σ_j ‖x_j − μ‖²       (TokenSim, importance::tokensim; μ the sequence's mean
///             token; the same quantity as (1/L) Σ_j ‖x_t − x_j‖², in O(L·d) and without the Gram expansion's
///             cancellation)
/// Every sum is in float64 and each score is rounded to float once. The policies' scores() compute through the CPU
/// implementation of this algorithm (<rsq/backend/cpu/activation_scores.hpp>), so there is one implementation of
/// each formula.
///
/// An implementation of algorithm::activation_scores provides
///   template <class T> static void run(B const&, importance::activation_statistic stat, matrix_view<const T> x,
///                                      matrix_view<const T> x_ref, index_t seq_len, matrix_view<float> out,
///                                      importance::activation_names const& names);
/// (shapes checked, arrays non-empty with contiguous rows in the backend's memory; x_ref only read for distance).
/// It rejects a NaN or Inf of x (then of x_ref) with the host message "<name> has a non-finite value (v) at row r,
/// column c" naming the first one in row-major order, and gives the same bits for any number of threads and from
/// run to run (fixed reduction orders, no floating-point atomics).

#include <concepts>
#include <string_view>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/activation_scores.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/memory.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/view.hpp"
#include "rsq/importance/activation_scores_options.hpp"

namespace rsq::importance {

namespace detail {

/// Throws unless @p m is non-empty, has contiguous rows and lives in @p be's memory.
template <backend_tag B, class T>
void expect_activation_operand(B const& be, matrix_view<T> m, std::string_view what) {
  RSQ_EXPECTS(m.data() != nullptr && m.size() > 0, "activation_scores: ", what, " is empty ",
              rsq::detail::shape_string(m));
  // (xtensor gives an axis of extent 1 the stride 0: such an axis is contiguous whatever its stride.)
  RSQ_EXPECTS(m.stride(1) == 1 || m.cols() == 1, "activation_scores: ", what,
              " must have contiguous rows (column stride 1), got stride ", m.stride(1));
  RSQ_EXPECTS(backend::resident(be, m.data()), "activation_scores: ", what,
              " is not in the backend's memory (device memory of the current device for the CUDA backend)");
}

}  // namespace detail

/// The raw activation scores of a batch of sequences on backend @p be (spec §4.4; see the file comment for the
/// formulas). Sums in float64, each score rounded to float once; the same bits for any number of OpenMP threads on
/// the CPU and from run to run on a GPU. Asynchronous on a device backend: @p out is written in the stream order.
/// @param stat which score (norm: ActNorm, distance: ActDiff, spread: TokenSim)
/// @param x activations, sequence j in rows [j·seq_len, (j + 1)·seq_len) // (sequences·seq_len, hidden)
/// @param x_ref the reference activations of distance (ActDiff's FP layer output), not read otherwise (may be
///              empty) // (sequences·seq_len, hidden)
/// @param seq_len L, the tokens of each sequence (≥ 1)
/// @param out the scores, row j for sequence j // (sequences, seq_len)
/// @param names what the messages call x and x_ref
/// Every array is in @p be's memory with contiguous rows (any row stride); @p out does not overlap x or x_ref.
/// @throws rsq::invalid_argument for shapes that do not agree (named in the message), an empty x, arrays elsewhere,
///         a NaN or Inf in x (or in x_ref for distance), named by row and column
template <backend_tag B, class T>
  requires(std::same_as<T, float> || std::same_as<T, double>)
void activation_scores(B const& be, activation_statistic stat, matrix_view<const T> x, matrix_view<const T> x_ref,
                       index_t seq_len, matrix_view<float> out, activation_names const& names = {}) {
  using rsq::detail::shape_string;
  RSQ_EXPECTS(stat == activation_statistic::norm || stat == activation_statistic::distance ||
                  stat == activation_statistic::spread,
              "activation_scores: unknown statistic ", int(stat), " (expected norm, distance or spread)");
  RSQ_EXPECTS(seq_len >= 1, "activation_scores: seq_len must be >= 1, got ", seq_len);
  detail::expect_activation_operand(be, x, "x");
  RSQ_EXPECTS(x.rows() % seq_len == 0, "activation_scores: x ", shape_string(x),
              " must be (sequences·seq_len x hidden), but its ", x.rows(), " rows are not a multiple of seq_len ",
              seq_len);
  if (stat == activation_statistic::distance) {
    RSQ_EXPECTS(x_ref.data() != nullptr, "activation_scores: the distance statistic needs x_ref (ActDiff's x_out)");
    RSQ_EXPECTS(x_ref.rows() == x.rows() && x_ref.cols() == x.cols(), "activation_scores: x_ref ",
                shape_string(x_ref), " must have the shape of x ", shape_string(x));
    detail::expect_activation_operand(be, x_ref, "x_ref");
  }
  index_t const sequences = x.rows() / seq_len;
  RSQ_EXPECTS(out.rows() == sequences && out.cols() == seq_len, "activation_scores: out must be (", sequences, " x ",
              seq_len, ") (sequences x seq_len), got ", shape_string(out));
  detail::expect_activation_operand(be, out, "out");
  backend::implementation_t<algorithm::activation_scores, B>::template run<T>(be, stat, x, x_ref, seq_len, out, names);
}

}  // namespace rsq::importance
