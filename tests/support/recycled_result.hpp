// SPDX-License-Identifier: MIT
#pragma once
// gptq::solve with a recycled result on backend B (gptq/invariants_test.cpp, on every backend): the same result as a
// fresh solve, the arrays whose sizes match reused, and a failed factorization returning no array of the recycled
// result.

#include <doctest/doctest.h>

#include <utility>

#include <rsq/core/tensor.hpp>
#include <rsq/gptq/solve.hpp>

namespace rsq_test {

template <class T>
void check_same_result(rsq::gptq::result<T> const& a, rsq::gptq::result<T> const& b) {
  CHECK(a.info == b.info);
  CHECK(a.weight.bits == b.weight.bits);
  CHECK(a.weight.codes == b.weight.codes);
  CHECK(a.weight.scales == b.weight.scales);
  CHECK(a.weight.zeros == b.weight.zeros);
  CHECK(a.weight.g_idx == b.weight.g_idx);
  CHECK(a.dequantized == b.dequantized);
  CHECK(a.perm == b.perm);
  CHECK(a.column_loss == b.column_loss);
  CHECK(a.damp_used == b.damp_used);
  CHECK(a.damp_attempts == b.damp_attempts);
}

/// @p w (rows ≥ 2, cols) and @p h (cols, cols) positive definite.
template <class B, class T>
void check_recycled_result(rsq::matrix<T> const& w, rsq::matrix<T> const& h) {
  B const be{};
  rsq::index_t const rows = rsq::index_t(w.shape()[0]), cols = rsq::index_t(w.shape()[1]);
  rsq::quant::grid_spec const g{.bits = 4};
  rsq::gptq::options const per_row{}, grouped{.group_size = 32, .act_order = true};
  auto const f_rows = rsq::gptq::factor(be, h, per_row), f_groups = rsq::gptq::factor(be, h, grouped);
  REQUIRE(f_rows.ok());
  REQUIRE(f_groups.ok());
  auto r = rsq::gptq::solve(be, w, f_rows, g, per_row);
  auto const* const codes = r.weight.codes.data();
  auto const* const deq = r.dequantized.data();
  // Same shape, other options (other groups, act-order): codes and Q are written into the same arrays.
  r = rsq::gptq::solve(be, w, f_groups, g, grouped, std::move(r));
  check_same_result(r, rsq::gptq::solve(be, w, f_groups, g, grouped));
  CHECK(r.weight.codes.data() == codes);
  CHECK(r.dequantized.data() == deq);
  // Fewer rows: new arrays, the same answer as a fresh solve.
  auto w_half = rsq::make_matrix<T>(rows / 2, cols);
  for (rsq::index_t r = 0; r < rows / 2; ++r)
    for (rsq::index_t c = 0; c < cols; ++c) w_half(r, c) = w(r, c);
  r = rsq::gptq::solve(be, w_half, f_rows, g, per_row, std::move(r));
  check_same_result(r, rsq::gptq::solve(be, w_half, f_rows, g, per_row));
  // A failed factorization returns an empty weight, not the recycled arrays.
  rsq::matrix<T> neg = rsq::make_matrix<T>(cols, cols);
  for (rsq::index_t i = 0; i < cols; ++i) neg(i, i) = T(-1);
  auto const f_bad = rsq::gptq::factor(be, neg, rsq::gptq::options{.max_damp_attempts = 2});
  r = rsq::gptq::solve(be, w, f_bad, g, rsq::gptq::options{}, std::move(r));
  CHECK(r.info == rsq::gptq::status::not_positive_definite);
  CHECK(r.weight.codes.size() == 0);
  CHECK(r.dequantized.size() == 0);
  CHECK(r.column_loss.size() == 0);
}

}  // namespace rsq_test
