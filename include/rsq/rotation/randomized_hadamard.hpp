// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Hadamard rotations (spec §2.2, §2.3): Q = D Hᵀ with H = M_n/√n the orthonormal Hadamard transform of
/// rsq/rotation/hadamard.hpp and D = diag(s) a diagonal of signs.
///  - randomized_hadamard(n, seed): s_i = sign i of the SplitMix64 stream of `seed` (rsq/core/random.hpp);
///  - exact_hadamard(n): s = 1, so W Q = had_in(W) of spec §2.3 (each row w becomes M_n w/√n);
///  - per_head_hadamard(heads, head_dim): Q = I ⊗ H_{h_d}ᵀ/√h_d, so Qᵀ W applies H_{h_d}/√h_d to each chunk of
///    h_d output features (the v_proj fold of spec §2.3).
/// Nothing is materialized: X Q scales the columns of X by s and transforms every row (row·Mᵀ = (M·rowᵀ)ᵀ, spec
/// §3); Qᵀ W does the same along columns. The signs are applied inside the transform, so each product reads and
/// writes W once.

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <span>
#include <string_view>
#include <utility>

#include "rsq/core/error.hpp"
#include "rsq/core/random.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/rotation/hadamard.hpp"
#include "rsq/rotation/hadamard_plan.hpp"
#include "rsq/rotation/rotation.hpp"

namespace rsq::rotation {

/// A rotation Q = D Hᵀ built on a Hadamard transform (see the file comment); models rotation_for<float/double>.
class hadamard_rotation {
 public:
  /// Low-level constructor: a transform, its signs (empty for none, else +-1 of length n) and the descriptor that
  /// records them. Prefer exact_hadamard, randomized_hadamard and per_head_hadamard.
  hadamard_rotation(hadamard transform, rsq::vector<std::int8_t> signs, rotation_descriptor descriptor)
      : h_(std::move(transform)), signs_(std::move(signs)), d_(std::move(descriptor)) {
    RSQ_EXPECTS(signs_.size() == 0 || index_t(signs_.size()) == h_.size(), "hadamard_rotation: ", signs_.size(),
                " signs for a rotation of size ", h_.size());
    for (std::size_t i = 0; i < signs_.size(); ++i)
      RSQ_EXPECTS(signs_(i) == 1 || signs_(i) == -1, "hadamard_rotation: sign ", i, " is ", int(signs_(i)),
                  ", expected +1 or -1");
    RSQ_EXPECTS(h_.scaling() == hadamard_scaling::orthonormal,
                "hadamard_rotation: rotations must be orthonormal (hadamard_scaling::orthonormal)");
    RSQ_EXPECTS(d_.n == h_.size(), "hadamard_rotation: the descriptor says n = ", d_.n, ", the transform has ",
                h_.size());
  }

  /// Size n of Q.
  [[nodiscard]] index_t size() const noexcept { return h_.size(); }

  /// W <- W Q (input side; activations x <- x Q).
  template <std::floating_point T>
  void apply_right(matrix_view<T> w) const {
    detail::check_side(w, size(), true, name(), "apply_right");
    h_.apply_with_signs(w, false, signs(), {});  // rows: w <- H (s ⊙ w)
  }
  /// W <- W Qᵀ (inverse of apply_right).
  template <std::floating_point T>
  void apply_right_transpose(matrix_view<T> w) const {
    detail::check_side(w, size(), true, name(), "apply_right_transpose");
    h_.apply_with_signs(w, true, {}, signs());  // rows: w <- s ⊙ (Hᵀ w)
  }
  /// W <- Qᵀ W (output side).
  template <std::floating_point T>
  void apply_left_transpose(matrix_view<T> w) const {
    detail::check_side(w, size(), false, name(), "apply_left_transpose");
    h_.apply_with_signs(transposed(w), false, signs(), {});  // columns: c <- H (s ⊙ c)
  }
  /// W <- Q W (inverse of apply_left_transpose).
  template <std::floating_point T>
  void apply_left(matrix_view<T> w) const {
    detail::check_side(w, size(), false, name(), "apply_left");
    h_.apply_with_signs(transposed(w), true, {}, signs());  // columns: c <- s ⊙ (Hᵀ c)
  }

  /// The same four products on backend @p be (W in host memory or the backend's memory, any strides).
  template <backend_tag B, std::floating_point T>
  void apply_right(B const& be, matrix_view<T> w) const {
    detail::check_side(w, size(), true, name(), "apply_right");
    h_.apply_with_signs(be, w, false, signs(), {});
  }
  template <backend_tag B, std::floating_point T>
  void apply_right_transpose(B const& be, matrix_view<T> w) const {
    detail::check_side(w, size(), true, name(), "apply_right_transpose");
    h_.apply_with_signs(be, w, true, {}, signs());
  }
  template <backend_tag B, std::floating_point T>
  void apply_left_transpose(B const& be, matrix_view<T> w) const {
    detail::check_side(w, size(), false, name(), "apply_left_transpose");
    h_.apply_with_signs(be, transposed(w), false, signs(), {});
  }
  template <backend_tag B, std::floating_point T>
  void apply_left(B const& be, matrix_view<T> w) const {
    detail::check_side(w, size(), false, name(), "apply_left");
    h_.apply_with_signs(be, transposed(w), true, {}, signs());
  }

  /// Q (n, n) in float64.
  [[nodiscard]] rsq::matrix<double> dense() const {
    auto q = rsq::matrix<double>::from_shape({std::size_t(size()), std::size_t(size())});  // (n, n)
    std::fill(q.begin(), q.end(), 0.0);
    for (index_t i = 0; i < size(); ++i) q(std::size_t(i), std::size_t(i)) = 1.0;
    apply_right(rsq::view(q));  // I Q
    return q;
  }

  /// What this rotation is (kind, n, seed, construction); its to_string() is the serialized form.
  [[nodiscard]] rotation_descriptor const& descriptor() const noexcept { return d_; }
  /// The diagonal of D (empty for exact and per-head rotations, which have none).
  [[nodiscard]] std::span<std::int8_t const> signs() const noexcept {
    return {signs_.data(), signs_.size()};
  }
  /// The Hadamard transform H.
  [[nodiscard]] hadamard const& transform() const noexcept { return h_; }

 private:
  [[nodiscard]] std::string_view name() const noexcept { return to_string(d_.kind); }

  hadamard h_;
  rsq::vector<std::int8_t> signs_;
  rotation_descriptor d_;
};

namespace detail {

[[nodiscard]] inline hadamard_options rotation_options(hadamard_options opt, std::string_view who) {
  RSQ_EXPECTS(opt.scaling == hadamard_scaling::orthonormal, who,
              ": rotations are orthonormal; hadamard_scaling::reference_float32 is only for parity checks of the "
              "transform");
  return opt;
}

}  // namespace detail

/// Q = M_nᵀ/√n without signs: W Q is the reference's `had_in(W, n)` (spec §2.3: down_proj, o_proj folds).
[[nodiscard]] inline hadamard_rotation exact_hadamard(index_t n, hadamard_options const& opt = {}) {
  RSQ_EXPECTS(n > 0, "exact_hadamard: n must be positive, got ", n);
  auto const o = detail::rotation_options(opt, "exact_hadamard");
  hadamard h(n, o);
  rotation_descriptor d{rotation_kind::exact_hadamard, n, 0, 0, o, h.plan().to_string()};
  return {std::move(h), rsq::vector<std::int8_t>::from_shape({0}), std::move(d)};
}

/// Q = D M_nᵀ/√n with D = diag(sign 0..n-1 of the SplitMix64 stream of @p seed) (spec §2.2, rotate_mode hadamard).
[[nodiscard]] inline hadamard_rotation randomized_hadamard(index_t n, std::uint64_t seed,
                                                           hadamard_options const& opt = {}) {
  RSQ_EXPECTS(n > 0, "randomized_hadamard: n must be positive, got ", n);
  auto const o = detail::rotation_options(opt, "randomized_hadamard");
  hadamard h(n, o);
  rotation_descriptor d{rotation_kind::randomized_hadamard, n, seed, 0, o, h.plan().to_string()};
  return {std::move(h), random::signs(seed, n), std::move(d)};
}

/// Q = I_heads ⊗ H_{head_dim}ᵀ/√head_dim (size heads * head_dim): Qᵀ W applies H_{h_d}/√h_d to each chunk of h_d
/// rows of W, the per-head v_proj fold of spec §2.3. The reference needs a power-of-two head_dim; rsq takes any
/// head_dim that has a construction.
[[nodiscard]] inline hadamard_rotation per_head_hadamard(index_t heads, index_t head_dim,
                                                         hadamard_options const& opt = {}) {
  RSQ_EXPECTS(heads > 0, "per_head_hadamard: the number of heads must be positive, got ", heads);
  RSQ_EXPECTS(head_dim > 0, "per_head_hadamard: head_dim must be positive, got ", head_dim);
  auto const o = detail::rotation_options(opt, "per_head_hadamard");
  hadamard h = hadamard::block_diagonal(heads, head_dim, o);
  // The construction recorded is the one of a single head.
  rotation_descriptor d{rotation_kind::per_head_hadamard, heads * head_dim, 0, head_dim, o,
                        h.plan().blocks.front().to_string()};
  return {std::move(h), rsq::vector<std::int8_t>::from_shape({0}), std::move(d)};
}

}  // namespace rsq::rotation
