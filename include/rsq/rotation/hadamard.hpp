// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The orthonormal Hadamard transform on the CPU: each row x of a matrix becomes H x with H = M_n / √n,
/// M_n = hadK ⊗ H_{n/K} (spec §3). hadK acts on the slow index a = i div (n/K), the Sylvester matrix on the fast
/// index b = i mod (n/K), exactly as the reference's `matmul_hadU`.
///
/// Work per row: an in-place fast Walsh–Hadamard transform of each of the K slices of length p = n/K (radix-8 base
/// case, then radix-4 passes whose inner loops run over contiguous memory and vectorise), then, for K > 1, a K x K
/// times K x p matrix product with hadK/√n (Eigen's kernels). Rows are independent and run in parallel (OpenMP):
/// each row is transformed the same way whichever thread takes it, and the K x p product is rsq's tiled product
/// (cpu/gemm.hpp) where Eigen's own would split it over threads, so results do not depend on the thread count. Views with
/// any strides work: rows that are not contiguous are gathered in groups into a buffer, so columns of a row-major
/// matrix (a transposed view) are transformed at nearly the speed of rows.
///
/// Values are not checked: the map is linear, and non-finite inputs only spread within their row.

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <vector>

#include <Eigen/Core>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/backend/cpu/gemm.hpp"
#include "rsq/backend/cpu/hadamard.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/rotation/hadamard_matrices.hpp"
#include "rsq/rotation/hadamard_plan.hpp"

namespace rsq::rotation {

namespace detail {

// Radix-4 butterfly over four disjoint runs of h elements (two Sylvester stages at once). The runs never overlap;
// `restrict` on the parameters lets the compiler vectorise without run-time alias checks.
template <class T>
inline void butterfly4(T* __restrict a, T* __restrict b, T* __restrict c, T* __restrict d, index_t h) noexcept {
  for (index_t j = 0; j < h; ++j) {
    T const s0 = a[j] + b[j], d0 = a[j] - b[j], s1 = c[j] + d[j], d1 = c[j] - d[j];
    a[j] = s0 + s1;
    b[j] = d0 + d1;
    c[j] = s0 - s1;
    d[j] = d0 - d1;
  }
}
// The same with a compile-time run length, for short runs (8: one half-width vector per run).
template <class T, index_t H>
inline void butterfly4_fixed(T* __restrict a, T* __restrict b, T* __restrict c, T* __restrict d) noexcept {
  for (index_t j = 0; j < H; ++j) {
    T const s0 = a[j] + b[j], d0 = a[j] - b[j], s1 = c[j] + d[j], d1 = c[j] - d[j];
    a[j] = s0 + s1;
    b[j] = d0 + d1;
    c[j] = s0 - s1;
    d[j] = d0 - d1;
  }
}
template <class T>
inline void butterfly2(T* __restrict a, T* __restrict b, index_t h) noexcept {
  for (index_t j = 0; j < h; ++j) {
    T const s = a[j] + b[j], t = a[j] - b[j];
    a[j] = s;
    b[j] = t;
  }
}

/// In-place Walsh–Hadamard transform (Sylvester, natural order) of x[0..p), p a power of two, of the input scaled
/// elementwise by @p factors (if not null) or by @p scale: x <- H_p diag(f) x. Scaling the input instead of the
/// output costs nothing: it rides on the first pass. Stages on different bits commute, so any grouping of them
/// gives the same matrix H_p: bits 0-2 per chunk of 8 in registers, then two bits per pass over contiguous runs
/// (vectorised), then one last bit if the count is odd.
template <class T>
void fwht(T* x, index_t p, T const* factors = nullptr, T scale = T(1)) noexcept {
  if (p < 8) {
    for (index_t i = 0; i < p; ++i) x[i] *= factors ? factors[i] : scale;
    for (index_t h = 1; h < p; h *= 2)
      for (index_t i = 0; i < p; i += 2 * h) butterfly2(x + i, x + i + h, h);
    return;
  }
  auto base8 = [x](index_t i, auto const& f) {
    T* v = x + i;
    T const v0 = f(v[0], i), v1 = f(v[1], i + 1), v2 = f(v[2], i + 2), v3 = f(v[3], i + 3);
    T const v4 = f(v[4], i + 4), v5 = f(v[5], i + 5), v6 = f(v[6], i + 6), v7 = f(v[7], i + 7);
    T const b0 = v0 + v1, b1 = v0 - v1, b2 = v2 + v3, b3 = v2 - v3;
    T const b4 = v4 + v5, b5 = v4 - v5, b6 = v6 + v7, b7 = v6 - v7;
    T const c0 = b0 + b2, c2 = b0 - b2, c1 = b1 + b3, c3 = b1 - b3;
    T const c4 = b4 + b6, c6 = b4 - b6, c5 = b5 + b7, c7 = b5 - b7;
    v[0] = c0 + c4;
    v[4] = c0 - c4;
    v[1] = c1 + c5;
    v[5] = c1 - c5;
    v[2] = c2 + c6;
    v[6] = c2 - c6;
    v[3] = c3 + c7;
    v[7] = c3 - c7;
  };
  if (factors)
    for (index_t i = 0; i < p; i += 8) base8(i, [factors](T v, index_t k) { return v * factors[k]; });
  else if (scale != T(1))
    for (index_t i = 0; i < p; i += 8) base8(i, [scale](T v, index_t) { return v * scale; });
  else
    for (index_t i = 0; i < p; i += 8) base8(i, [](T v, index_t) { return v; });
  index_t h = 8;
  if (4 * h <= p) {
    for (index_t i = 0; i < p; i += 32) butterfly4_fixed<T, 8>(x + i, x + i + 8, x + i + 16, x + i + 24);
    h = 32;
  }
  for (; 4 * h <= p; h *= 4)
    for (index_t i = 0; i < p; i += 4 * h) butterfly4(x + i, x + i + h, x + i + 2 * h, x + i + 3 * h, h);
  if (2 * h <= p)
    for (index_t i = 0; i < p; i += 2 * h) butterfly2(x + i, x + i + h, h);
}

/// The same transform on p "elements" that are each a run of g contiguous values (x is (p, g) row-major, one
/// transform per column): every butterfly works on runs of h*g contiguous values, so all stages vectorise. Used
/// for columns of row-major matrices (transposed views).
template <class T>
void fwht_lanes(T* x, index_t p, index_t g) noexcept {
  index_t h = 1;
  for (; 4 * h <= p; h *= 4)
    for (index_t i = 0; i < p; i += 4 * h)
      butterfly4(x + i * g, x + (i + h) * g, x + (i + 2 * h) * g, x + (i + 3 * h) * g, h * g);
  if (2 * h <= p)
    for (index_t i = 0; i < p; i += 2 * h) butterfly2(x + i * g, x + (i + h) * g, h * g);
}

template <class T>
using row_major = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// out (k, p) = mix (k, k) · in (k, p), all row-major and contiguous. A vector (p = 1) is Eigen's matrix-vector
/// product, which runs on one thread and sums each row in a fixed order; wider products are rsq's GEMM (Eigen's
/// would split them over threads, with sums that change with their number, where a single long row leaves this
/// product outside a parallel region).
template <class T>
void mix_slices(row_major<T> const& mix, T const* in, index_t k, index_t p, T* out) {
  if (p == 1) {
    Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>(out, k).noalias() =
        mix * Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(in, k);
    return;
  }
  // As column-major products: outᵀ (p, k) = inᵀ (p, k) · mixᵀ (k, k).
  Eigen::Map<cpu::eigen_col_matrix<T>> out_t(out, p, k);
  out_t.setZero();
  cpu::detail::gemm_update<T>(out_t, Eigen::Map<const cpu::eigen_col_matrix<T>>(in, p, k), mix.transpose(), T(1));
}

}  // namespace detail

/// A planned orthonormal Hadamard transform H = M_n/√n of length n (or a block-diagonal of such transforms).
/// Immutable after construction; apply() may be called concurrently.
class hadamard {
 public:
  /// Plans the transform of length @p n (see plan_hadamard for the choice of construction).
  /// @throws rsq::invalid_argument for n <= 0 or an unsupported n without the fallback.
  explicit hadamard(index_t n, hadamard_options const& opt = {}) : hadamard(plan_hadamard(n, opt), opt.scaling) {}

  /// The transform of a given plan (as returned by plan_hadamard).
  explicit hadamard(hadamard_plan plan, hadamard_scaling scaling = hadamard_scaling::orthonormal)
      : plan_(std::move(plan)), scaling_(scaling) {
    RSQ_EXPECTS(plan_.n > 0, "hadamard: the plan has length ", plan_.n);
    switch (plan_.kind) {
      case hadamard_kind::sylvester: break;
      case hadamard_kind::reference:
        // The cached reference matrix lives for the whole program: alias it without ownership.
        small_ = std::shared_ptr<sign_matrix const>(std::shared_ptr<void>(), &reference_hadamard(plan_.k));
        break;
      case hadamard_kind::paley1: small_ = std::make_shared<sign_matrix const>(paley1_hadamard(plan_.q)); break;
      case hadamard_kind::paley2: small_ = std::make_shared<sign_matrix const>(paley2_hadamard(plan_.q)); break;
      case hadamard_kind::block_diagonal: {
        index_t offset = 0;
        for (auto const& b : plan_.blocks) {
          offsets_.push_back(offset);
          // Equal neighbouring blocks (per-head) share one transform and its hadK.
          if (!blocks_.empty() && blocks_.back().plan_.kind == b.kind && blocks_.back().plan_.n == b.n &&
              blocks_.back().plan_.k == b.k && blocks_.back().plan_.q == b.q && b.blocks.empty())
            blocks_.push_back(blocks_.back());
          else
            blocks_.emplace_back(b, scaling_);
          offset += b.n;
        }
        RSQ_EXPECTS(offset == plan_.n, "hadamard: the blocks of the plan cover ", offset, " of ", plan_.n,
                    " elements");
        break;
      }
    }
    if (small_) RSQ_EXPECTS(small_->k * (index_t(1) << plan_.m) == plan_.n, "hadamard: inconsistent plan ",
                            plan_.to_string(), " for n = ", plan_.n);
  }

  /// Block-diagonal transform of @p n_blocks equal blocks of length @p block (e.g. one per attention head, spec §2.3
  /// v_proj: H_{h_d}/√h_d on each chunk of h_d features).
  [[nodiscard]] static hadamard block_diagonal(index_t n_blocks, index_t block, hadamard_options const& opt = {}) {
    RSQ_EXPECTS(n_blocks > 0, "hadamard::block_diagonal: the number of blocks must be positive, got ", n_blocks);
    RSQ_EXPECTS(block > 0, "hadamard::block_diagonal: the block length must be positive, got ", block);
    auto const b = plan_hadamard(block, opt);
    hadamard_plan plan{n_blocks * block, hadamard_kind::block_diagonal, 0, 0, 0,
                       std::vector<hadamard_plan>(std::size_t(n_blocks), b)};
    return hadamard(std::move(plan), opt.scaling);
  }

  /// Transform length n.
  [[nodiscard]] index_t size() const noexcept { return plan_.n; }
  /// The construction used (kind, K, m, q, blocks).
  [[nodiscard]] hadamard_plan const& plan() const noexcept { return plan_; }
  /// The normalisation (orthonormal unless reference_float32 was asked for).
  [[nodiscard]] hadamard_scaling scaling() const noexcept { return scaling_; }
  /// The factor applied after M_n: 1/√n, or 1/fl32(√n) for hadamard_scaling::reference_float32.
  [[nodiscard]] double scale() const noexcept {
    double const n = double(plan_.n);
    return scaling_ == hadamard_scaling::orthonormal ? 1.0 / std::sqrt(n) : 1.0 / double(std::sqrt(float(n)));
  }
  /// The small factor hadK (nullptr for a pure Sylvester or a block-diagonal transform).
  [[nodiscard]] sign_matrix const* small_factor() const noexcept { return small_.get(); }

  /// Each row x of @p rows (rows, n) becomes H x, in place.
  template <std::floating_point T>
  void apply(matrix_view<T> rows) const {
    check(rows, "hadamard::apply");
    apply_impl(rows, false);
  }
  /// Each row x of @p rows (rows, n) becomes Hᵀ x = H⁻¹ x, in place.
  template <std::floating_point T>
  void apply_transpose(matrix_view<T> rows) const {
    check(rows, "hadamard::apply_transpose");
    apply_impl(rows, true);
  }
  /// x becomes H x, in place.
  template <std::floating_point T>
  void apply(vector_view<T> x) const {
    apply(matrix_view<T>(x.data(), {1, x.extent(0)}, {x.extent(0) * x.stride(0), x.stride(0)}));
  }
  /// x becomes Hᵀ x, in place.
  template <std::floating_point T>
  void apply_transpose(vector_view<T> x) const {
    apply_transpose(matrix_view<T>(x.data(), {1, x.extent(0)}, {x.extent(0) * x.stride(0), x.stride(0)}));
  }

  /// Each row x of @p rows becomes diag(post) op(H) diag(pre) x, with op(H) = H or Hᵀ (@p transpose); an empty
  /// span means no signs. The signs are applied inside the transform, without extra passes over memory; this is
  /// how randomized Hadamard rotations apply their diagonal D.
  template <std::floating_point T>
  void apply_with_signs(matrix_view<T> rows, bool transpose, std::span<std::int8_t const> pre,
                        std::span<std::int8_t const> post) const {
    check(rows, "hadamard::apply_with_signs");
    RSQ_EXPECTS(pre.empty() || index_t(pre.size()) == plan_.n, "hadamard::apply_with_signs: ", pre.size(),
                " signs before the transform, expected ", plan_.n);
    RSQ_EXPECTS(post.empty() || index_t(post.size()) == plan_.n, "hadamard::apply_with_signs: ", post.size(),
                " signs after the transform, expected ", plan_.n);
    apply_impl(rows, transpose, pre.empty() ? nullptr : pre.data(), post.empty() ? nullptr : post.data());
  }

  /// The same transform on backend @p be (the first argument of every algorithm): @p rows in host memory or in the
  /// backend's memory (device memory for CUDA), any strides.
  ///
  /// An implementation of algorithm::hadamard_transform provides
  ///   template <class H, class T> static void run(B const&, H const& h, tensor_view<T, 3> rows, bool transpose,
  ///                                               std::span<std::int8_t const> pre, std::span<std::int8_t const> post);
  /// (arguments checked; h is this transform: h.plan(), h.scaling(); rows(a, b, :) for every a, b is one row).
  /// @throws rsq::invalid_argument as apply_with_signs(rows, ...), and for what a backend cannot take (docs/cuda.md)
  template <backend_tag B, std::floating_point T>
  void apply_with_signs(B const& be, matrix_view<T> rows, bool transpose, std::span<std::int8_t const> pre,
                        std::span<std::int8_t const> post) const {
    apply_with_signs(be, tensor_view<T, 3>(rows.data(), {1, rows.rows(), rows.cols()},
                                           {rows.rows() * rows.stride(0), rows.stride(0), rows.stride(1)}),
                     transpose, pre, post);
  }
  /// The transform of every row (a, b, :) of a batch of matrices @p rows (batch, rows, n), on backend @p be: e.g. the
  /// online Hadamard across the heads of each token's attention output, (tokens, head_dim, heads) with strides
  /// (dim, 1, head_dim).
  template <backend_tag B, std::floating_point T>
  void apply_with_signs(B const& be, tensor_view<T, 3> rows, bool transpose, std::span<std::int8_t const> pre,
                        std::span<std::int8_t const> post) const {
    RSQ_EXPECTS(rows.extent(2) == plan_.n, "hadamard::apply_with_signs: rows have length ", rows.extent(2),
                ", the transform has length ", plan_.n, " (the array is ", ::rsq::detail::shape_string(rows), ")");
    RSQ_EXPECTS(rows.size() > 0 && rows.data() != nullptr, "hadamard::apply_with_signs: the array is empty ",
                ::rsq::detail::shape_string(rows));
    RSQ_EXPECTS(pre.empty() || index_t(pre.size()) == plan_.n, "hadamard::apply_with_signs: ", pre.size(),
                " signs before the transform, expected ", plan_.n);
    RSQ_EXPECTS(post.empty() || index_t(post.size()) == plan_.n, "hadamard::apply_with_signs: ", post.size(),
                " signs after the transform, expected ", plan_.n);
    backend::implementation_t<algorithm::hadamard_transform, B>::run(be, *this, rows, transpose, pre, post);
  }
  /// Each row x of @p rows (a matrix or a batch of matrices) becomes H x, on backend @p be.
  template <backend_tag B, std::floating_point T, std::size_t N>
    requires(N == 2 || N == 3)
  void apply(B const& be, tensor_view<T, N> rows) const {
    apply_with_signs(be, rows, false, {}, {});
  }
  /// Each row x of @p rows becomes Hᵀ x, on backend @p be.
  template <backend_tag B, std::floating_point T, std::size_t N>
    requires(N == 2 || N == 3)
  void apply_transpose(B const& be, tensor_view<T, N> rows) const {
    apply_with_signs(be, rows, true, {}, {});
  }

  /// The matrix H (n, n) in float64 (orthonormal unless reference_float32 scaling), so that apply() maps x to H x.
  [[nodiscard]] rsq::matrix<double> dense() const {
    auto h = rsq::matrix<double>::from_shape({std::size_t(plan_.n), std::size_t(plan_.n)});  // (n, n)
    std::fill(h.begin(), h.end(), 0.0);
    for (index_t i = 0; i < plan_.n; ++i) h(std::size_t(i), std::size_t(i)) = 1.0;
    // Row i of the result is (Hᵀ e_i)ᵀ = row i of H.
    apply_impl(matrix_view<double>(h.data(), plan_.n, plan_.n), true);
    return h;
  }

 private:
  template <class T>
  void check(matrix_view<T> rows, char const* what) const {
    RSQ_EXPECTS(rows.cols() == plan_.n, what, ": rows have length ", rows.cols(), ", the transform has length ",
                plan_.n, " (the matrix is ", ::rsq::detail::shape_string(rows), ")");
    RSQ_EXPECTS(rows.rows() > 0, what, ": the matrix is empty ", ::rsq::detail::shape_string(rows));
    RSQ_EXPECTS(rows.data() != nullptr, what, ": the view has no data");
  }

  template <class T>
  void apply_impl(matrix_view<T> x, bool transpose, std::int8_t const* pre = nullptr,
                  std::int8_t const* post = nullptr) const {
    if (plan_.kind == hadamard_kind::block_diagonal) {
      apply_blocks(x, transpose, pre, post);
      return;
    }
    index_t const n = plan_.n, rows = x.rows();
    index_t const k = small_ ? small_->k : 1, p = n / k;
    T const scale = T(this->scale());
    // hadK/√n (or its transpose) as T, shared by all rows.
    detail::row_major<T> mix;
    if (small_) {
      mix.resize(k, k);
      for (index_t i = 0; i < k; ++i)
        for (index_t j = 0; j < k; ++j) mix(i, j) = scale * T(transpose ? (*small_)(j, i) : (*small_)(i, j));
    }
    // Pre-signs as factors of the first FWHT pass; for K = 1 they also carry 1/√n.
    std::vector<T> pre_factors;
    if (pre) {
      pre_factors.resize(std::size_t(n));
      for (index_t i = 0; i < n; ++i) pre_factors[std::size_t(i)] = T(pre[i]) * (k == 1 ? scale : T(1));
    }
    T const* const pre_f = pre ? pre_factors.data() : nullptr;
    // Three layouts: contiguous rows (transformed in place one by one); "columns", i.e. rows whose elements are
    // further apart than the rows themselves (a transposed view: columns of a row-major matrix), copied g at a
    // time into a (n, g) buffer and transformed together; anything else gathered row by row into a buffer.
    enum class layout { rows, columns, gather };
    layout const how = x.stride(1) == 1                              ? layout::rows
                       : std::abs(x.stride(0)) < std::abs(x.stride(1)) ? layout::columns
                                                                       : layout::gather;
    index_t group = 1;
    if (how == layout::columns) {
      // As many columns as keep the (n, g) buffer near 512 KiB (L2), between 16 and 64.
      group = 16;
      while (group < 64 && 2 * group * n * index_t(sizeof(T)) <= (index_t(512) << 10)) group *= 2;
    } else if (how == layout::gather) {
      group = 16;
    }
    index_t const n_groups = (rows + group - 1) / group;
    [[maybe_unused]] bool const parallel = n_groups > 1 && rows * n >= (index_t(1) << 15);
#ifdef _OPENMP
#pragma omp parallel if (parallel)
#endif
    {
      std::vector<T> scratch(small_ ? std::size_t(n * (how == layout::columns ? group : 1)) : 0);
      index_t const ld = n + 16;  // padded leading dimension of the gather buffer
      std::vector<T> buffer(how == layout::rows ? 0 : std::size_t(group * ld));
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (index_t g = 0; g < n_groups; ++g) {
        index_t const r0 = g * group, r1 = std::min(rows, r0 + group);
        switch (how) {
          case layout::rows:
            transform_row(x.data() + r0 * x.stride(0), k, p, scale, mix, scratch.data(), pre_f, post);
            break;
          case layout::columns:
            copy_columns<T, true>(x, r0, r1, buffer.data());
            transform_columns(buffer.data(), k, p, r1 - r0, scale, mix, scratch.data(), pre, post);
            copy_columns<T, false>(x, r0, r1, buffer.data());
            break;
          case layout::gather:
            copy_rows<T, true>(x, r0, r1, buffer.data(), ld);
            for (index_t r = r0; r < r1; ++r)
              transform_row(buffer.data() + (r - r0) * ld, k, p, scale, mix, scratch.data(), pre_f, post);
            copy_rows<T, false>(x, r0, r1, buffer.data(), ld);
            break;
        }
      }
    }
  }

  // Transform of g interleaved rows: buf is (n, g), element j of row r at buf[j*g + r].
  template <class T>
  static void transform_columns(T* buf, index_t k, index_t p, index_t g, T scale, detail::row_major<T> const& mix,
                                T* scratch, std::int8_t const* pre, std::int8_t const* post) {
    index_t const n = k * p;
    if (pre)
      for (index_t j = 0; j < n; ++j) {
        T const s = T(pre[j]);
        for (index_t r = 0; r < g; ++r) buf[j * g + r] *= s;
      }
    for (index_t a = 0; a < k; ++a) detail::fwht_lanes(buf + a * p * g, p, g);
    T* out = buf;
    if (k > 1) {
      // (K, p*g) <- hadK/√n · (K, p*g): one product for all g rows.
      detail::mix_slices(mix, buf, k, p * g, scratch);
      out = scratch;
      scale = T(1);
    }
    for (index_t j = 0; j < n; ++j) {
      T const s = post ? scale * T(post[j]) : scale;
      for (index_t r = 0; r < g; ++r) buf[j * g + r] = out[j * g + r] * s;
    }
  }

  // Rows r0..r1 of a column-like view to/from the interleaved (n, r1-r0) buffer.
  template <class T, bool ToBuffer>
  static void copy_columns(matrix_view<T> x, index_t r0, index_t r1, T* buf) {
    index_t const n = x.cols(), g = r1 - r0, s0 = x.stride(0), s1 = x.stride(1);
    for (index_t j = 0; j < n; ++j) {
      T* line = x.data() + r0 * s0 + j * s1;
      T* b = buf + j * g;
      if (s0 == 1) {  // the common case (transposed row-major matrix): a contiguous run
        if constexpr (ToBuffer)
          std::copy(line, line + g, b);
        else
          std::copy(b, b + g, line);
      } else {
        for (index_t r = 0; r < g; ++r) {
          if constexpr (ToBuffer)
            b[r] = line[r * s0];
          else
            line[r * s0] = b[r];
        }
      }
    }
  }

  // One contiguous row: H_p on the fast index of each of the K slices (the input scaled by the pre-sign factors
  // and, for K = 1, by 1/√n inside the first pass), then hadK/√n on the slow index, then post-signs.
  template <class T>
  static void transform_row(T* row, index_t k, index_t p, T scale, detail::row_major<T> const& mix, T* scratch,
                            T const* pre_factors, std::int8_t const* post) {
    index_t const n = k * p;
    T const first_scale = k == 1 ? scale : T(1);
    for (index_t a = 0; a < k; ++a)
      detail::fwht(row + a * p, p, pre_factors ? pre_factors + a * p : nullptr, first_scale);
    if (k == 1) {
      if (post)
        for (index_t i = 0; i < n; ++i) row[i] *= T(post[i]);
      return;
    }
    // hadK on the slow index: (K, p) <- hadK/√n · (K, p).
    detail::mix_slices(mix, row, k, p, scratch);
    if (post)
      for (index_t i = 0; i < n; ++i) row[i] = scratch[i] * T(post[i]);
    else
      std::copy(scratch, scratch + n, row);
  }

  // Rows r0..r1 of x to/from a buffer of rows with leading dimension ld. When the columns are closer in memory
  // than the rows (e.g. a transposed view), walk the group's rows in the inner loop, so that each step reads or
  // writes one run of neighbouring elements of x; ld is padded so the buffer rows do not all map to the same
  // cache sets.
  template <class T, bool ToBuffer>
  static void copy_rows(matrix_view<T> x, index_t r0, index_t r1, T* buf, index_t ld) {
    index_t const n = x.cols(), s0 = x.stride(0), s1 = x.stride(1);
    T* base = x.data();
    auto move = [&](index_t r, index_t j) {
      if constexpr (ToBuffer)
        buf[(r - r0) * ld + j] = base[r * s0 + j * s1];
      else
        base[r * s0 + j * s1] = buf[(r - r0) * ld + j];
    };
    if (std::abs(s0) < std::abs(s1)) {
      for (index_t j = 0; j < n; ++j)
        for (index_t r = r0; r < r1; ++r) move(r, j);
    } else {
      for (index_t r = r0; r < r1; ++r)
        for (index_t j = 0; j < n; ++j) move(r, j);
    }
  }

  template <class T>
  void apply_blocks(matrix_view<T> x, bool transpose, std::int8_t const* pre, std::int8_t const* post) const {
    bool const uniform = std::all_of(blocks_.begin(), blocks_.end(),
                                     [&](hadamard const& b) { return b.plan_.n == blocks_.front().plan_.n; });
    index_t const b = blocks_.front().plan_.n, nb = index_t(blocks_.size());
    if (uniform && !pre && !post && x.stride(1) == 1 && x.stride(0) == plan_.n) {
      // Contiguous rows of equal blocks: one batch of (rows * n_blocks, block) rows.
      blocks_.front().apply_impl(matrix_view<T>(x.data(), x.rows() * nb, b), transpose);
      return;
    }
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      matrix_view<T> sub(x.data() + offsets_[i] * x.stride(1), {x.rows(), blocks_[i].plan_.n}, x.strides());
      blocks_[i].apply_impl(sub, transpose, pre ? pre + offsets_[i] : nullptr, post ? post + offsets_[i] : nullptr);
    }
  }

  hadamard_plan plan_;
  hadamard_scaling scaling_ = hadamard_scaling::orthonormal;
  std::shared_ptr<sign_matrix const> small_;  // hadK (null for K = 1 and for block-diagonal plans)
  std::vector<hadamard> blocks_;              // block-diagonal: one transform per block
  std::vector<index_t> offsets_;              // block-diagonal: first element of each block
};

/// Convenience: each row x of @p rows becomes M_n x/√n with n = rows.cols(), on backend @p be (plans the transform
/// on every call; keep a rsq::rotation::hadamard to reuse a plan).
template <backend_tag B, std::floating_point T>
void hadamard_transform(B const& be, matrix_view<T> rows, hadamard_options const& opt = {}) {
  RSQ_EXPECTS(rows.cols() > 0, "hadamard_transform: the matrix is empty ", ::rsq::detail::shape_string(rows));
  hadamard(rows.cols(), opt).apply(be, rows);
}
/// The same on the CPU backend.
template <std::floating_point T>
void hadamard_transform(matrix_view<T> rows, hadamard_options const& opt = {}) {
  hadamard_transform(backend::cpu_eigen{}, rows, opt);
}

}  // namespace rsq::rotation
