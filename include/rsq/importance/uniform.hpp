// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The uniform policy: every token weighs the same (plain GPTQ / QuaRot, spec §1 "Baselines").

#include <concepts>
#include <string_view>

#include "rsq/core/tensor.hpp"
#include "rsq/importance/context.hpp"

namespace rsq::importance {

/// r ≡ 1 for every token. Needs only the sequence length (ctx.tokens or any input array).
struct uniform {
  static constexpr std::string_view name = "uniform";

  [[nodiscard]] constexpr needs requirements() const noexcept { return {}; }

  /// @returns ones // (tokens)
  template <std::floating_point T>
  [[nodiscard]] rsq::vector<T> weights(basic_sequence_context<T> const& ctx) const {
    auto const L = sequence_length(ctx, name);
    rsq::vector<T> r = rsq::vector<T>::from_shape({std::size_t(L)});  // (tokens)
    r.fill(T(1));
    return r;
  }
};

}  // namespace rsq::importance
