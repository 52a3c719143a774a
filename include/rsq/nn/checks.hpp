// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Argument checks shared by the forward-pass pieces: shapes, and that every array is in the backend's own memory
/// (host memory for cpu_eigen, device memory of the current device for cuda).

#include <string_view>

#include "rsq/backend/cpu/memory.hpp"
#include "rsq/backend/memory.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/view.hpp"

namespace rsq::nn::detail {

/// Throws unless @p m is non-empty, has contiguous rows (column stride 1) and lives in @p be's memory.
template <backend_tag B, class T, std::size_t N>
void expect_operand(B const& be, tensor_view<T, N> m, std::string_view who, std::string_view what) {
  RSQ_EXPECTS(m.data() != nullptr && m.size() > 0, who, ": ", what, " is empty ", rsq::detail::shape_string(m));
  // (xtensor gives an axis of extent 1 the stride 0: such an axis is contiguous whatever its stride.)
  RSQ_EXPECTS(m.stride(N - 1) == 1 || m.extent(N - 1) == 1, who, ": ", what,
              " must have contiguous rows (last stride 1), got stride ", m.stride(N - 1));
  RSQ_EXPECTS(backend::resident(be, m.data()), who, ": ", what,
              " is not in the backend's memory (device memory of the current device for the CUDA backend)");
}

/// Throws unless @p m is (rows, cols).
template <class T>
void expect_shape(matrix_view<T> m, index_t rows, index_t cols, std::string_view who, std::string_view what) {
  RSQ_EXPECTS(m.rows() == rows && m.cols() == cols, who, ": ", what, " must be (", rows, " x ", cols, "), got ",
              rsq::detail::shape_string(m));
}

}  // namespace rsq::nn::detail
