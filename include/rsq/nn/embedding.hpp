// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The token embedding: row t of the activations is the embedding of token id t.
///
/// An implementation of algorithm::embedding provides
///   static void run(B const&, matrix_view<const std::int32_t> ids, matrix_view<const float> table,
///                   matrix_view<float> x);   // arguments checked, every id in [0, table.rows())

#include <cstdint>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/nn.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/nn/checks.hpp"

namespace rsq::nn {

/// x (sequences·L, dim) ← table[ids], @p ids (sequences, L) in host memory, @p table (vocab, dim) and @p x in
/// @p be's memory.
/// @throws rsq::invalid_argument for an id outside [0, vocab) (naming its place), shapes that do not match
template <backend_tag B>
void embed(B const& be, matrix_view<const std::int32_t> ids, matrix_view<const float> table, matrix_view<float> x) {
  RSQ_EXPECTS(ids.rows() > 0 && ids.cols() > 0, "embed: ids must be a non-empty (sequences x L) array, got ",
              rsq::detail::shape_string(ids));
  detail::expect_operand(be, table, "embed", "the embedding table");
  detail::expect_operand(be, x, "embed", "x");
  detail::expect_shape(x, ids.rows() * ids.cols(), table.cols(), "embed", "x");
  for (index_t s = 0; s < ids.rows(); ++s)
    for (index_t t = 0; t < ids.cols(); ++t)
      RSQ_EXPECTS(ids(s, t) >= 0 && index_t(ids(s, t)) < table.rows(), "embed: token id ", ids(s, t), " at (", s,
                  ", ", t, ") is outside the vocabulary [0, ", table.rows(), ")");
  backend::implementation_t<algorithm::embedding, B>::run(be, ids, table, x);
}

}  // namespace rsq::nn
