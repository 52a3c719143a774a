// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// A policy chosen at run time, e.g. from a command-line string: a std::variant of every importance policy.

#include <concepts>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/importance/actdiff.hpp"
#include "rsq/importance/actnorm.hpp"
#include "rsq/importance/attncon.hpp"
#include "rsq/importance/context.hpp"
#include "rsq/importance/first_n.hpp"
#include "rsq/importance/normalize.hpp"
#include "rsq/importance/tokenfreq.hpp"
#include "rsq/importance/tokensim.hpp"
#include "rsq/importance/uniform.hpp"

namespace rsq::importance {

/// Any of the importance policies, selected at run time. It is itself an importance_policy.
class any_policy {
 public:
  using variant_type = std::variant<uniform, first_n, attncon, actnorm, actdiff, tokensim, tokenfreq>;

  /// The uniform policy.
  any_policy() = default;

  /// Wraps one policy.
  template <class P>
    requires std::constructible_from<variant_type, P&&> && (!std::same_as<std::remove_cvref_t<P>, any_policy>)
  any_policy(P&& p) : policy_(std::forward<P>(p)) {}  // NOLINT(google-explicit-constructor)

  /// Parses a command-line policy string:
  /// `uniform`, `first_n:P1,P2,.../P` (e.g. `first_n:0/8`, `first_n:0,31/32`), `attncon`, `actnorm`, `actdiff`,
  /// `tokensim`, `tokenfreq`. The scored policies get [r_min, r_max] and otherwise their yaml defaults (reverse for
  /// actdiff and tokenfreq); uniform and first_n ignore the range. A scored policy followed by `:cap_peak`
  /// (`attncon:cap_peak`, the sink-aware AttnCon) caps each sequence's highest score (normalize_options::cap_peak).
  [[nodiscard]] static any_policy parse(std::string_view spec, double r_min = 0.005, double r_max = 1.0) {
    normalize_options range{.r_min = r_min, .r_max = r_max};
    validate(range, "policy");
    auto const colon = spec.find(':');
    std::string_view const kind = spec.substr(0, colon);
    std::string_view const arg = colon == std::string_view::npos ? std::string_view{} : spec.substr(colon + 1);
    if (kind == first_n::name) {
      RSQ_EXPECTS(colon != std::string_view::npos, "policy: \"", spec,
                  "\" needs its chunks, e.g. first_n:0/8 (First-N) or first_n:0,31/32 (First&Last-N)");
      return first_n::from_list(arg);
    }
    bool const scored = kind != uniform::name;
    RSQ_EXPECTS(colon == std::string_view::npos || (scored && arg == "cap_peak"), "policy: \"", kind,
                "\" takes no argument", scored ? " but cap_peak" : "", ", got \"", spec, "\"");
    range.cap_peak = colon != std::string_view::npos;
    if (kind == uniform::name) return uniform{};
    if (kind == attncon::name) return attncon{.normalization = range};
    if (kind == actnorm::name) return actnorm{.normalization = range};
    if (kind == tokensim::name) return tokensim{.normalization = range};
    range.reverse = true;  // yaml defaults of MaxDiffWeighting and TokenFreqWeighting
    if (kind == actdiff::name) return actdiff{.normalization = range};
    if (kind == tokenfreq::name) return tokenfreq{.normalization = range};
    rsq::detail::throw_invalid_argument("policy: unknown policy \"", spec,
                                        "\"; expected uniform, first_n:P1,P2/P, attncon, actnorm, actdiff, tokensim "
                                        "or tokenfreq");
  }

  /// The policy's name ("attncon", ...).
  [[nodiscard]] std::string_view name() const {
    return std::visit([](auto const& p) { return std::string_view(p.name); }, policy_);
  }

  /// What the policy reads from a context.
  [[nodiscard]] needs requirements() const {
    return std::visit([](auto const& p) { return needs(p.requirements()); }, policy_);
  }

  /// True for the policies with raw scores (all but uniform and first_n).
  [[nodiscard]] bool has_scores() const {
    return std::visit([](auto const& p) { return scored_importance_policy<std::remove_cvref_t<decltype(p)>>; },
                      policy_);
  }

  /// @returns importances r // (tokens)
  template <std::floating_point T>
  [[nodiscard]] rsq::vector<T> weights(basic_sequence_context<T> const& ctx) const {
    return std::visit([&](auto const& p) -> rsq::vector<T> { return p.weights(ctx); }, policy_);
  }

  /// Raw scores; throws rsq::invalid_argument for uniform and first_n, which have none.
  /// @returns scores // (tokens)
  template <std::floating_point T>
  [[nodiscard]] rsq::vector<T> scores(basic_sequence_context<T> const& ctx) const {
    return std::visit(
        [&](auto const& p) -> rsq::vector<T> {
          if constexpr (scored_importance_policy<std::remove_cvref_t<decltype(p)>, T>) {
            return p.scores(ctx);
          } else {
            rsq::detail::throw_invalid_argument("policy: ", p.name, " has no raw scores, only weights");
          }
        },
        policy_);
  }

  /// The wrapped policy.
  [[nodiscard]] variant_type const& get() const noexcept { return policy_; }

 private:
  variant_type policy_{};
};

/// How an activation-based policy (ActNorm, ActDiff, TokenSim) scores a whole batch on a backend with
/// importance::activation_scores, so that a pipeline need not copy the activations to the host: the statistic, which
/// activations it reads, what the messages call them, and the normalization that turns the scores into weights.
struct activation_form {
  std::string_view policy;
  activation_statistic statistic;
  bool reads_input;   ///< x is the layer input x_in
  bool reads_output;  ///< x is the FP layer output x_out (or, for distance, x_ref is)
  activation_names names;
  normalize_options normalization;
};

/// The activation form of @p p, or nothing when p is not an activation-based policy.
[[nodiscard]] inline std::optional<activation_form> activation_form_of(any_policy const& p) {
  auto const by_source = [](auto const& q, activation_statistic stat) {
    bool const in = q.source == activation_source::input;
    return activation_form{.policy = q.name, .statistic = stat, .reads_input = in, .reads_output = !in,
                           .names = detail::activation_names_of(q.source), .normalization = q.normalization};
  };
  if (auto const* q = std::get_if<actnorm>(&p.get())) return by_source(*q, activation_statistic::norm);
  if (auto const* q = std::get_if<tokensim>(&p.get())) return by_source(*q, activation_statistic::spread);
  if (auto const* q = std::get_if<actdiff>(&p.get()))
    return activation_form{.policy = q->name, .statistic = activation_statistic::distance, .reads_input = true,
                           .reads_output = true, .names = {.x = "x_in", .x_ref = "x_out"},
                           .normalization = q->normalization};
  return std::nullopt;
}

}  // namespace rsq::importance
