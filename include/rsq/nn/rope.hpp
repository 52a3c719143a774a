// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Rotary position embedding (RoPE) of Llama, in place on queries or keys.
///
/// An implementation of algorithm::rope provides
///   static void run(B const&, matrix_view<float> x, rope_options const&);   // arguments checked
/// The cos/sin tables are cos(pos·f_i), sin(pos·f_i) with f_i = theta^(−2i/head_dim), computed in float64 and
/// rounded to float (every backend uses the same tables, so that they agree to float rounding).

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/nn.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/nn/checks.hpp"
#include "rsq/nn/options.hpp"

namespace rsq::nn {

/// Rotates the adjacent pairs (2i, 2i+1) of every head of @p x (sequences·seq_len, heads·head_dim), in place, by
/// pos·theta^(−2i/head_dim), pos = row mod seq_len; @p x in @p be's memory with contiguous rows.
/// @throws rsq::invalid_argument for a row count that is not a multiple of seq_len, a width that is not a multiple
///         of head_dim, an odd head_dim, theta not in (1, 1e12)
template <backend_tag B>
void rope(B const& be, matrix_view<float> x, rope_options const& opt) {
  detail::expect_operand(be, x, "rope", "x");
  RSQ_EXPECTS(opt.seq_len > 0 && x.rows() % opt.seq_len == 0, "rope: ", x.rows(),
              " rows are not whole sequences of seq_len = ", opt.seq_len);
  RSQ_EXPECTS(opt.head_dim > 0 && opt.head_dim % 2 == 0 && x.cols() % opt.head_dim == 0, "rope: head_dim ",
              opt.head_dim, " must be even and divide the ", x.cols(), " features");
  RSQ_EXPECTS(opt.theta > 1.0 && opt.theta < 1e12, "rope: theta must be in (1, 1e12), got ", opt.theta);
  backend::implementation_t<algorithm::rope, B>::run(be, x, opt);
}

}  // namespace rsq::nn
