// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// What an importance policy sees of one calibration sequence at one layer (spec §4, §10 "Policy interface"), what
/// each policy needs of it, and the `importance_policy` concept.

#include <cmath>
#include <concepts>
#include <cstdint>
#include <string_view>

#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/importance/token_frequency.hpp"

namespace rsq::importance {

/// The inputs a policy reads from a sequence_context. A pipeline ORs the requirements of its policy to know what to
/// compute (attention, FP layer outputs, ...) before calling it.
struct needs {
  bool x_in = false;             ///< layer input
  bool x_out = false;            ///< FP layer output
  bool token_ids = false;        ///< token ids of the sequence
  bool attention = false;        ///< attention probabilities, or queries and keys (either one satisfies it)
  bool token_frequency = false;  ///< calibration-set token counts

  [[nodiscard]] constexpr bool operator==(needs const&) const = default;
  /// Union of two requirement sets.
  [[nodiscard]] constexpr needs operator|(needs const& o) const {
    return {x_in || o.x_in, x_out || o.x_out, token_ids || o.token_ids, attention || o.attention,
            token_frequency || o.token_frequency};
  }
};

/// One sequence j at one layer ℓ, filled by the caller with what it has; absent inputs are default-constructed
/// (null) views. Every array that is present must agree on the number of tokens L.
/// @tparam T element type of the activations and of the attention (float or double)
template <std::floating_point T>
struct basic_sequence_context {
  using value_type = T;

  index_t tokens = 0;                      ///< L; optional when any array below is given (0 = infer)
  matrix_view<const T> x_in{};              ///< layer input // (tokens, hidden)
  matrix_view<const T> x_out{};             ///< FP output of the same layer // (tokens, hidden)
  vector_view<const std::int64_t> token_ids{}; ///< // (tokens)
  tensor_view<const T, 3> attention{};      ///< causal softmax probabilities // (heads, tokens, tokens)
  tensor_view<const T, 3> queries{};        ///< after RoPE // (heads, tokens, head_dim)
  tensor_view<const T, 3> keys{};           ///< after RoPE // (kv_heads, tokens, head_dim)
  token_frequency const* frequencies = nullptr;  ///< calibration-set counts (TokenFreq), not owned

  [[nodiscard]] bool has_x_in() const noexcept { return x_in.data() != nullptr; }
  [[nodiscard]] bool has_x_out() const noexcept { return x_out.data() != nullptr; }
  [[nodiscard]] bool has_token_ids() const noexcept { return token_ids.data() != nullptr; }
  [[nodiscard]] bool has_attention() const noexcept { return attention.data() != nullptr; }
  [[nodiscard]] bool has_queries_keys() const noexcept { return queries.data() != nullptr && keys.data() != nullptr; }
  [[nodiscard]] bool has_frequencies() const noexcept { return frequencies != nullptr; }

  /// True when every input named in @p n is present.
  [[nodiscard]] bool satisfies(needs const& n) const noexcept {
    return (!n.x_in || has_x_in()) && (!n.x_out || has_x_out()) && (!n.token_ids || has_token_ids()) &&
           (!n.attention || has_attention() || has_queries_keys()) && (!n.token_frequency || has_frequencies());
  }
};

/// The context of float activations, the common case.
using sequence_context = basic_sequence_context<float>;

/// A token-importance policy: `p.weights(ctx)` returns r (length L, raw score then the policy's normalisation) and
/// `p.requirements()` says which inputs of the context it reads.
template <class P, class T = float>
concept importance_policy = std::floating_point<T> && requires(P const& p, basic_sequence_context<T> const& ctx) {
  { p.weights(ctx) } -> std::convertible_to<rsq::vector<T>>;
  { p.requirements() } -> std::convertible_to<needs>;
};

/// A policy that also exposes its raw, un-normalised scores `p.scores(ctx)`.
template <class P, class T = float>
concept scored_importance_policy = importance_policy<P, T> && requires(P const& p, basic_sequence_context<T> const& c) {
  { p.scores(c) } -> std::convertible_to<rsq::vector<T>>;
};

/// Checks that the arrays of @p ctx agree with one another and returns the number of tokens L (≥ 1).
/// @param who the calling policy, for messages
template <std::floating_point T>
[[nodiscard]] index_t sequence_length(basic_sequence_context<T> const& ctx, std::string_view who) {
  RSQ_EXPECTS(ctx.tokens >= 0, who, ": ctx.tokens must be >= 0, got ", ctx.tokens);
  index_t L = ctx.tokens;
  bool known = ctx.tokens > 0;
  auto agree = [&](index_t n, char const* what) {
    if (!known) {
      L = n;
      known = true;
    } else {
      RSQ_EXPECTS(n == L, who, ": ", what, " has ", n, " tokens, but the context has ", L);
    }
  };
  if (ctx.has_x_in()) agree(ctx.x_in.rows(), "x_in");
  if (ctx.has_x_out()) {
    agree(ctx.x_out.rows(), "x_out");
    if (ctx.has_x_in())
      RSQ_EXPECTS(ctx.x_out.cols() == ctx.x_in.cols(), who, ": x_out ", rsq::detail::shape_string(ctx.x_out),
                  " and x_in ", rsq::detail::shape_string(ctx.x_in), " differ in shape");
  }
  if (ctx.has_token_ids()) agree(ctx.token_ids.extent(0), "token_ids");
  if (ctx.has_attention()) {
    RSQ_EXPECTS(ctx.attention.extent(1) == ctx.attention.extent(2), who,
                ": attention must be (heads x tokens x tokens), got ", rsq::detail::shape_string(ctx.attention));
    agree(ctx.attention.extent(1), "attention");
  }
  if (ctx.queries.data() != nullptr) agree(ctx.queries.extent(1), "queries");
  if (ctx.keys.data() != nullptr) agree(ctx.keys.extent(1), "keys");
  RSQ_EXPECTS(known && L >= 1, who, ": the context has no tokens (set ctx.tokens or give an input array)");
  return L;
}

/// Throws rsq::invalid_argument naming @p who and the first input of @p n that @p ctx lacks.
template <std::floating_point T>
void require(basic_sequence_context<T> const& ctx, needs const& n, std::string_view who) {
  RSQ_EXPECTS(!n.x_in || ctx.has_x_in(), who, ": the context has no layer input (set ctx.x_in)");
  RSQ_EXPECTS(!n.x_out || ctx.has_x_out(), who, ": the context has no FP layer output (set ctx.x_out)");
  RSQ_EXPECTS(!n.token_ids || ctx.has_token_ids(), who, ": the context has no token ids (set ctx.token_ids)");
  RSQ_EXPECTS(!n.attention || ctx.has_attention() || ctx.has_queries_keys(), who,
              ": the context has neither attention probabilities nor queries and keys (set ctx.attention, or "
              "ctx.queries and ctx.keys)");
  RSQ_EXPECTS(!n.token_frequency || ctx.has_frequencies(), who,
              ": the context has no token-frequency table (set ctx.frequencies)");
}

}  // namespace rsq::importance
