// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The rotation interface (spec §10, "Rotation interface") and the record that lets a quantized model say which
/// rotation it used.
///
/// A rotation is an orthogonal Q (n, n). Conventions (spec §2.2): a Linear computes y = W x with W (out, in);
/// activations are row vectors, so
///  - input side (q/k/v/up/gate, lm_head, embeddings): W <- W Q                    apply_right
///  - output side (o/down):                               W <- Qᵀ W                  apply_left_transpose
///  - activations (tokens, n):                            x <- x Q                   apply_right
///  - the inverses:                                       W <- W Qᵀ, W <- Q W        apply_right_transpose, apply_left
/// so that (W Q)(Qᵀ x) = W x.

#include <algorithm>
#include <charconv>
#include <concepts>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>

#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/rotation/hadamard_plan.hpp"

namespace rsq::rotation {

/// Which rotation a descriptor names.
enum class rotation_kind {
  exact_hadamard,       ///< Q = M_nᵀ/√n (no signs; the down_proj / o_proj folds of spec §2.3)
  randomized_hadamard,  ///< Q = D M_nᵀ/√n, D = diag of seeded random signs (spec §2.2 "hadamard" mode)
  per_head_hadamard,    ///< Q = I ⊗ H_{h_d}ᵀ/√h_d (the per-head v_proj fold of spec §2.3)
  random_orthogonal,    ///< Haar-random Q from the QR of a seeded Gaussian matrix (spec §2.2 "random" mode)
};

/// The name used in descriptors ("randomized_hadamard", ...).
[[nodiscard]] inline std::string_view to_string(rotation_kind k) {
  switch (k) {
    case rotation_kind::exact_hadamard: return "exact_hadamard";
    case rotation_kind::randomized_hadamard: return "randomized_hadamard";
    case rotation_kind::per_head_hadamard: return "per_head_hadamard";
    case rotation_kind::random_orthogonal: return "random_orthogonal";
  }
  return "?";
}

/// Everything needed to rebuild a rotation bit for bit (kind, n, seed, ...), and its one-line text form, e.g.
/// `rsq-rotation/1 kind=randomized_hadamard n=4096 seed=0 rng=splitmix64 construction=H4096 extensions=1
/// fallback=none max_order=1024`. Seeds refer to the SplitMix64 streams of rsq/core/random.hpp.
struct rotation_descriptor {
  rotation_kind kind = rotation_kind::randomized_hadamard;
  index_t n = 0;                ///< size of Q
  std::uint64_t seed = 0;       ///< randomized_hadamard, random_orthogonal
  index_t head_dim = 0;         ///< per_head_hadamard: block length (n = heads * head_dim)
  hadamard_options hadamard{};  ///< Hadamard kinds: construction options (rotations are always orthonormal)
  std::string construction;     ///< Hadamard kinds: hadamard_plan::to_string(), checked when rebuilt

  bool operator==(rotation_descriptor const&) const = default;

  [[nodiscard]] bool is_hadamard() const noexcept { return kind != rotation_kind::random_orthogonal; }
  [[nodiscard]] bool is_seeded() const noexcept {
    return kind == rotation_kind::randomized_hadamard || kind == rotation_kind::random_orthogonal;
  }

  /// The one-line text form (space-separated key=value after the "rsq-rotation/1" tag).
  [[nodiscard]] std::string to_string() const {
    std::string s = "rsq-rotation/1 kind=" + std::string(rotation::to_string(kind)) + " n=" + std::to_string(n);
    if (kind == rotation_kind::per_head_hadamard) s += " head_dim=" + std::to_string(head_dim);
    if (is_seeded()) s += " seed=" + std::to_string(seed) + " rng=splitmix64";
    if (is_hadamard()) {
      s += " construction=" + construction;
      s += std::string(" extensions=") + (hadamard.extensions ? "1" : "0");
      s += std::string(" fallback=") +
           (hadamard.fallback == hadamard_fallback::block_diagonal ? "block_diagonal" : "none");
      s += " max_order=" + std::to_string(hadamard.max_order);
    }
    return s;
  }

  /// Parses to_string()'s format. @throws rsq::invalid_argument naming the offending token.
  [[nodiscard]] static rotation_descriptor from_string(std::string_view text) {
    std::map<std::string, std::string, std::less<>> kv;
    bool tagged = false;
    std::size_t pos = 0;
    while (pos < text.size()) {
      if (text[pos] == ' ') {
        ++pos;
        continue;
      }
      std::size_t const end = std::min(text.find(' ', pos), text.size());
      std::string_view const token = text.substr(pos, end - pos);
      pos = end;
      if (!tagged) {
        RSQ_EXPECTS(token == "rsq-rotation/1", "rotation_descriptor: the text must start with \"rsq-rotation/1\", got \"",
                    token, "\"");
        tagged = true;
        continue;
      }
      std::size_t const eq = token.find('=');
      RSQ_EXPECTS(eq != std::string_view::npos && eq > 0, "rotation_descriptor: expected key=value, got \"", token,
                  "\"");
      std::string key(token.substr(0, eq));
      RSQ_EXPECTS(!kv.contains(key), "rotation_descriptor: key \"", key, "\" appears twice");
      kv.emplace(std::move(key), std::string(token.substr(eq + 1)));
    }
    RSQ_EXPECTS(tagged, "rotation_descriptor: empty text");
    auto take = [&](std::string_view key) -> std::string {
      auto it = kv.find(key);
      RSQ_EXPECTS(it != kv.end(), "rotation_descriptor: missing key \"", key, "\" in \"", text, "\"");
      std::string v = it->second;
      kv.erase(it);
      return v;
    };
    auto number = [&](std::string_view key) -> std::uint64_t {
      std::string const v = take(key);
      std::uint64_t x = 0;
      auto const [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
      RSQ_EXPECTS(ec == std::errc() && ptr == v.data() + v.size() && !v.empty(), "rotation_descriptor: ", key,
                  " must be a non-negative integer, got \"", v, "\"");
      return x;
    };
    rotation_descriptor d;
    std::string const kind = take("kind");
    if (kind == "exact_hadamard") d.kind = rotation_kind::exact_hadamard;
    else if (kind == "randomized_hadamard") d.kind = rotation_kind::randomized_hadamard;
    else if (kind == "per_head_hadamard") d.kind = rotation_kind::per_head_hadamard;
    else if (kind == "random_orthogonal") d.kind = rotation_kind::random_orthogonal;
    else ::rsq::detail::throw_invalid_argument("rotation_descriptor: unknown kind \"", kind, "\"");
    std::uint64_t const n = number("n");
    RSQ_EXPECTS(n > 0 && n < (std::uint64_t(1) << 40), "rotation_descriptor: n must be positive, got ", n);
    d.n = index_t(n);
    if (d.kind == rotation_kind::per_head_hadamard) {
      std::uint64_t const hd = number("head_dim");
      RSQ_EXPECTS(hd > 0 && d.n % index_t(hd) == 0, "rotation_descriptor: head_dim must divide n = ", d.n, ", got ",
                  hd);
      d.head_dim = index_t(hd);
    }
    if (d.is_seeded()) {
      d.seed = number("seed");
      std::string const rng = take("rng");
      RSQ_EXPECTS(rng == "splitmix64", "rotation_descriptor: unknown rng \"", rng, "\" (rsq uses splitmix64)");
    }
    if (d.is_hadamard()) {
      d.construction = take("construction");
      std::string const ext = take("extensions");
      RSQ_EXPECTS(ext == "0" || ext == "1", "rotation_descriptor: extensions must be 0 or 1, got \"", ext, "\"");
      d.hadamard.extensions = ext == "1";
      std::string const fb = take("fallback");
      if (fb == "none") d.hadamard.fallback = hadamard_fallback::none;
      else if (fb == "block_diagonal") d.hadamard.fallback = hadamard_fallback::block_diagonal;
      else ::rsq::detail::throw_invalid_argument("rotation_descriptor: unknown fallback \"", fb, "\"");
      std::uint64_t const mo = number("max_order");
      RSQ_EXPECTS(mo >= 1 && mo < (std::uint64_t(1) << 31), "rotation_descriptor: max_order must be >= 1, got ", mo);
      d.hadamard.max_order = index_t(mo);
    }
    RSQ_EXPECTS(kv.empty(), "rotation_descriptor: unexpected key \"", kv.empty() ? "" : kv.begin()->first,
                "\" for kind ", kind);
    return d;
  }
};

/// R rotates views of T: W <- W Q (apply_right), W <- W Qᵀ, W <- Qᵀ W, W <- Q W, materializes Q (dense) and says
/// what it is (descriptor).
template <class R, class T>
concept rotation_for = std::floating_point<T> && requires(R const& r, matrix_view<T> w) {
  { r.size() } -> std::convertible_to<index_t>;
  r.apply_right(w);
  r.apply_right_transpose(w);
  r.apply_left_transpose(w);
  r.apply_left(w);
  { r.dense() } -> std::same_as<rsq::matrix<double>>;
  { r.descriptor() } -> std::convertible_to<rotation_descriptor const&>;
};

/// A vector seen as one row (1, n), to rotate a single activation: `r.apply_right(as_row(x))`.
template <class T>
[[nodiscard]] matrix_view<T> as_row(vector_view<T> x) noexcept {
  return matrix_view<T>(x.data(), {1, x.extent(0)}, {x.extent(0) * x.stride(0), x.stride(0)});
}

/// x <- x Q for every sequence of a batch of activations (sequences, tokens, n).
template <class R, class T>
  requires rotation_for<R, T>
void apply_right(R const& r, batch_view<T> x) {
  RSQ_EXPECTS(x.extent(0) > 0, "apply_right: the batch is empty ", ::rsq::detail::shape_string(x));
  for (index_t i = 0; i < x.extent(0); ++i) r.apply_right(x[i]);
}

/// The transposed view (cols, rows) of a matrix view, without copying.
template <class T>
[[nodiscard]] matrix_view<T> transposed(matrix_view<T> w) noexcept {
  return matrix_view<T>(w.data(), {w.cols(), w.rows()}, {w.stride(1), w.stride(0)});
}

namespace detail {

template <class T>
void check_side(matrix_view<T> w, index_t n, bool right, std::string_view who, std::string_view what) {
  RSQ_EXPECTS(w.rows() > 0 && w.cols() > 0, who, "::", what, ": the matrix is empty ",
              ::rsq::detail::shape_string(w));
  RSQ_EXPECTS(w.data() != nullptr, who, "::", what, ": the view has no data");
  if (right)
    RSQ_EXPECTS(w.cols() == n, who, "::", what, ": W has ", w.cols(), " columns, the rotation has size ", n,
                " (W is ", ::rsq::detail::shape_string(w), ")");
  else
    RSQ_EXPECTS(w.rows() == n, who, "::", what, ": W has ", w.rows(), " rows, the rotation has size ", n, " (W is ",
                ::rsq::detail::shape_string(w), ")");
}

}  // namespace detail
}  // namespace rsq::rotation
