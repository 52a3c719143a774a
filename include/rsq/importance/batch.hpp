// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Importance weights of a batch of sequences, one row per sequence (the `importance.npy` layout of the golden data).

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <ranges>
#include <type_traits>
#include <utility>

#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/importance/context.hpp"

namespace rsq::importance {

/// Weights r for sequences 0..n−1, where `make_context(j)` returns the basic_sequence_context<T> of sequence j
/// (built on the fly, so that a pipeline need not hold every sequence's inputs at once). All sequences must have the
/// same number of tokens.
/// @returns weights // (sequences, tokens)
template <class P, class F>
  requires std::invocable<F&, index_t>
[[nodiscard]] auto batch_weights(P const& policy, index_t sequences, F&& make_context) {
  using context = std::remove_cvref_t<std::invoke_result_t<F&, index_t>>;
  using T = typename context::value_type;
  static_assert(importance_policy<P, T>, "rsq: batch_weights needs an importance_policy for this context type");
  RSQ_EXPECTS(sequences >= 1, "batch_weights: need at least one sequence, got ", sequences);
  rsq::matrix<T> out;  // (sequences, tokens)
  for (index_t j = 0; j < sequences; ++j) {
    rsq::vector<T> const r = policy.weights(make_context(j));  // (tokens)
    if (j == 0) out = rsq::matrix<T>::from_shape({std::size_t(sequences), r.size()});
    RSQ_EXPECTS(r.size() == out.shape(1), "batch_weights: sequence ", j, " has ", r.size(),
                " tokens, sequence 0 has ", out.shape(1));
    std::copy(r.begin(), r.end(), out.begin() + std::ptrdiff_t(std::size_t(j) * out.shape(1)));
  }
  return out;
}

/// Weights r of every context in @p contexts (any sized range of basic_sequence_context<T>).
/// @returns weights // (sequences, tokens)
template <class P, std::ranges::random_access_range R>
  requires std::ranges::sized_range<R>
[[nodiscard]] auto batch_weights(P const& policy, R const& contexts) {
  return batch_weights(policy, index_t(std::ranges::size(contexts)),
                       [&](index_t j) -> decltype(auto) { return std::ranges::begin(contexts)[j]; });
}

}  // namespace rsq::importance
