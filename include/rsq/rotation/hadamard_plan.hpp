// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Which Hadamard construction a length n gets (spec §3). Plans need neither Eigen nor xtensor, so a CUDA backend
/// can share them.
///
/// Selection, in this order:
///  1. **Reference** (parity with RSQ's `get_hadK`): the first K of 172, 156, 148, 140, 108, 60, 52, 36, 28, 40, 20,
///     48, 12 that divides n, if n/K is a power of two; else, if no K divides n and n is a power of two, K = 1
///     (pure Sylvester). Where the reference asserts, go on:
///  2. **Extensions** (`hadamard_options::extensions`): the smallest K' with n = K' 2^m that is a Paley order,
///     K' = q+1 with q prime = 3 (mod 4) (Paley I) or K' = 2(q+1) with q prime = 1 (mod 4) (Paley II), with
///     K' <= max_order. E.g. Qwen2.5-72B's 29568 = 924 * 32, 924 = 2 (461 + 1).
///  3. **Fallback** (`hadamard_options::fallback`): `block_diagonal` splits n greedily into the largest sizes that
///     have a construction (1 or 2 at the end for odd n), giving an orthogonal block-diagonal transform. Without
///     it, an n with no construction is an rsq::invalid_argument.

#include <algorithm>
#include <bit>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "rsq/core/error.hpp"
#include "rsq/core/view.hpp"
#include "rsq/rotation/hadamard_matrices.hpp"

namespace rsq::rotation {

/// The construction of a planned Hadamard transform.
enum class hadamard_kind {
  sylvester,       ///< n = 2^m: the Sylvester (natural-order Walsh–Hadamard) matrix alone, K = 1
  reference,       ///< hadK (K from the reference table) ⊗ H_{2^m}
  paley1,          ///< Paley I matrix of order q+1 ⊗ H_{2^m} (beyond the reference)
  paley2,          ///< Paley II matrix of order 2(q+1) ⊗ H_{2^m} (beyond the reference)
  block_diagonal,  ///< orthogonal fallback: a block-diagonal of the plans in `blocks`
};

/// What to do for an n that has no Hadamard construction.
enum class hadamard_fallback {
  none,            ///< throw rsq::invalid_argument
  block_diagonal,  ///< block-diagonal Hadamard over a greedy split of n into supported sizes
};

/// How the transform is normalised.
enum class hadamard_scaling {
  orthonormal,        ///< divide by √n in float64: H = M_n/√n is orthogonal to rounding (the default)
  reference_float32,  ///< divide by √n rounded to float32, as the reference does (`torch.tensor(n).sqrt()` is a
                      ///< float32 tensor): bit-level parity with its outputs, but H Hᵀ = I only to ~1e-7
};

/// Options of plan_hadamard and of the transform (aggregate; defaults keep the reference's choice of construction
/// wherever it has one).
struct hadamard_options {
  bool extensions = true;                                ///< try Paley orders where the reference table fails
  hadamard_fallback fallback = hadamard_fallback::none;  ///< for an n without any construction
  index_t max_order = 1024;  ///< largest Paley factor K' accepted (the K-mix costs K' multiply-adds per element)
  hadamard_scaling scaling = hadamard_scaling::orthonormal;  ///< normalisation of the transform (not of the plan)

  bool operator==(hadamard_options const&) const = default;
};

/// A planned construction: M_n = hadK ⊗ H_{2^m} with n = k 2^m (one 1/√n normalises it), or a block-diagonal.
struct hadamard_plan {
  index_t n = 0;                          ///< transform length
  hadamard_kind kind = hadamard_kind::sylvester;
  index_t k = 1;                          ///< order of the small factor hadK (1: Sylvester; 0: block_diagonal)
  index_t m = 0;                          ///< log2(n / k)
  index_t q = 0;                          ///< the prime of a Paley construction (0 otherwise)
  std::vector<hadamard_plan> blocks;      ///< block_diagonal only: the diagonal blocks in order

  /// A one-word description, e.g. "reference(K=28)xH512", "paley2(q=461,K=924)xH32",
  /// "block_diagonal[paley1(q=499,K=500)xH2,H1]".
  [[nodiscard]] std::string to_string() const {
    // Built by appending (GCC 12 warns falsely on `"literal" + std::string`, -Wrestrict).
    std::string s;
    switch (kind) {
      case hadamard_kind::sylvester:
        s.append("H").append(std::to_string(n));
        return s;
      case hadamard_kind::reference:
      case hadamard_kind::paley1:
      case hadamard_kind::paley2:
        if (kind == hadamard_kind::reference) {
          s.append("reference(K=");
        } else {
          s.append(kind == hadamard_kind::paley1 ? "paley1" : "paley2").append("(q=").append(std::to_string(q));
          s.append(",K=");
        }
        s.append(std::to_string(k)).append(")xH").append(std::to_string(n / k));
        return s;
      case hadamard_kind::block_diagonal:
        s.append("block_diagonal[");
        for (std::size_t i = 0; i < blocks.size(); ++i) {
          if (i) s.push_back(',');
          s.append(blocks[i].to_string());
        }
        s.push_back(']');
        return s;
    }
    return "?";
  }
};

namespace detail {

[[nodiscard]] constexpr bool is_pow2(index_t n) noexcept { return n > 0 && (n & (n - 1)) == 0; }

/// The construction for exactly n (no fallback), or nullopt.
[[nodiscard]] inline std::optional<hadamard_plan> construction_for(index_t n, hadamard_options const& opt) {
  // 1. The reference: first dividing K decides (get_hadK asserts n/K is a power of two).
  for (index_t const k : reference_hadamard_orders) {
    if (n % k != 0) continue;
    if (!is_pow2(n / k)) break;  // the reference fails here
    return hadamard_plan{n, hadamard_kind::reference, k, std::countr_zero(std::uint64_t(n / k)), 0, {}};
  }
  if (is_pow2(n)) {
    bool const divisible = std::any_of(reference_hadamard_orders.begin(), reference_hadamard_orders.end(),
                                       [&](index_t k) { return n % k == 0; });
    if (!divisible) return hadamard_plan{n, hadamard_kind::sylvester, 1, std::countr_zero(std::uint64_t(n)), 0, {}};
  }
  if (!opt.extensions) return std::nullopt;
  // 2. Paley orders, smallest factor first (cheapest K-mix).
  int const twos = std::countr_zero(std::uint64_t(n));
  for (int m = twos; m >= 0; --m) {
    index_t const kp = n >> m;
    if (kp > opt.max_order) break;
    if (kp % 4 != 0 || is_pow2(kp)) continue;
    if (is_prime(kp - 1) && (kp - 1) % 4 == 3) return hadamard_plan{n, hadamard_kind::paley1, kp, m, kp - 1, {}};
    index_t const q = kp / 2 - 1;
    if (kp % 8 == 4 && is_prime(q) && q % 4 == 1) return hadamard_plan{n, hadamard_kind::paley2, kp, m, q, {}};
  }
  return std::nullopt;
}

}  // namespace detail

/// The K that RSQ's `get_hadK(n)` returns (1 for a power of two), or nullopt where the reference asserts.
[[nodiscard]] inline std::optional<index_t> reference_hadk(index_t n) {
  RSQ_EXPECTS(n > 0, "reference_hadk: n must be positive, got ", n);
  auto const p = detail::construction_for(n, {.extensions = false});
  if (!p) return std::nullopt;
  return p->k;
}

/// The construction that n gets (reference first, then extensions, then the fallback if allowed).
/// @throws rsq::invalid_argument for n <= 0, or for an n without a construction when the fallback is off.
[[nodiscard]] inline hadamard_plan plan_hadamard(index_t n, hadamard_options const& opt = {}) {
  RSQ_EXPECTS(n > 0, "plan_hadamard: n must be positive, got ", n);
  RSQ_EXPECTS(opt.max_order >= 1, "plan_hadamard: max_order must be >= 1, got ", opt.max_order);
  if (auto p = detail::construction_for(n, opt)) return *p;
  if (opt.fallback == hadamard_fallback::none)
    ::rsq::detail::throw_invalid_argument(
        "plan_hadamard: no Hadamard construction for n = ", n,
        " (supported: K * 2^m with K from the reference table {12, 20, 28, 36, 40, 48, 52, 60, 108, 140, 148, 156, "
        "172}, or a Paley order K = q+1 (q prime = 3 mod 4) / K = 2(q+1) (q prime = 1 mod 4) up to max_order = ",
        opt.max_order,
        "); set hadamard_options::fallback = hadamard_fallback::block_diagonal for a block-diagonal orthogonal "
        "transform, or use a random_orthogonal rotation");
  // 3. Greedy block-diagonal split: the largest supported size first. Sizes other than 1 and 2 are multiples of 4.
  hadamard_plan plan{n, hadamard_kind::block_diagonal, 0, 0, 0, {}};
  index_t rest = n;
  while (rest > 0) {
    std::optional<hadamard_plan> block;
    for (index_t s = rest - rest % 4; s >= 4 && !block; s -= 4) block = detail::construction_for(s, opt);
    if (!block) block = detail::construction_for(std::min<index_t>(rest, 2), opt);
    plan.blocks.push_back(*block);
    rest -= block->n;
  }
  return plan;
}

}  // namespace rsq::rotation
