// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Rebuilding a rotation from its descriptor (e.g. read back from a quantized model): `make_rotation(
/// rotation_descriptor::from_string(text))`. The result is a std::variant; use std::visit to apply it.

#include <variant>

#include "rsq/core/error.hpp"
#include "rsq/rotation/hadamard_plan.hpp"
#include "rsq/rotation/random_orthogonal.hpp"
#include "rsq/rotation/randomized_hadamard.hpp"
#include "rsq/rotation/rotation.hpp"

namespace rsq::rotation {

/// Any rotation rsq can build.
using any_rotation = std::variant<hadamard_rotation, random_orthogonal>;

/// The rotation that @p d describes, identical to the one that produced it (same signs, same construction).
/// @throws rsq::invalid_argument if the recorded construction is not what this version of rsq builds for n.
[[nodiscard]] inline any_rotation make_rotation(rotation_descriptor const& d) {
  RSQ_EXPECTS(d.n > 0, "make_rotation: n must be positive, got ", d.n);
  switch (d.kind) {
    case rotation_kind::random_orthogonal: return random_orthogonal(d.n, d.seed);
    case rotation_kind::exact_hadamard:
    case rotation_kind::randomized_hadamard:
    case rotation_kind::per_head_hadamard: {
      RSQ_EXPECTS(d.kind != rotation_kind::per_head_hadamard || (d.head_dim > 0 && d.n % d.head_dim == 0),
                  "make_rotation: head_dim must divide n = ", d.n, ", got ", d.head_dim);
      hadamard_rotation r = d.kind == rotation_kind::exact_hadamard ? exact_hadamard(d.n, d.hadamard)
                            : d.kind == rotation_kind::randomized_hadamard
                                ? randomized_hadamard(d.n, d.seed, d.hadamard)
                                : per_head_hadamard(d.n / d.head_dim, d.head_dim, d.hadamard);
      RSQ_EXPECTS(r.descriptor().construction == d.construction, "make_rotation: the descriptor records construction ",
                  d.construction, " but n = ", d.n, " now gets ", r.descriptor().construction);
      return r;
    }
  }
  ::rsq::detail::throw_invalid_argument("make_rotation: unknown rotation kind");
}

/// The descriptor of any rotation.
[[nodiscard]] inline rotation_descriptor const& descriptor_of(any_rotation const& r) {
  return std::visit([](auto const& x) -> rotation_descriptor const& { return x.descriptor(); }, r);
}

}  // namespace rsq::rotation
