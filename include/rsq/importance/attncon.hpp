// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// AttnCon, the RSQ default policy (spec §4.2): the attention a key token receives, summed over heads and queries,
///     s_t = Σ_h Σ_{i ≥ t} A_h[i, t],
/// then min-max scaled to [r_min, r_max]. The scores come either from materialised causal attention probabilities
/// (heads × L × L) or straight from queries and keys, without ever holding an L × L matrix: per head and block of
/// queries, the logits of the block are formed, each row's log-sum-exp is found (pass 1), and the column sums of
/// exp(S − lse) are accumulated (pass 2), as §4.2 "Memory-efficient implementation" describes.

#include <algorithm>
#include <cmath>
#include <concepts>
#include <exception>
#include <string_view>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/core/checks.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/memory.hpp"
#include "rsq/importance/attncon_options.hpp"
#include "rsq/importance/context.hpp"
#include "rsq/importance/normalize.hpp"

namespace rsq::importance {

namespace detail {

inline void validate(attncon_options const& opt) {
  RSQ_EXPECTS(opt.query_block >= 1, "attncon: query_block must be >= 1, got ", opt.query_block);
  RSQ_EXPECTS(opt.block_bytes > 0, "attncon: block_bytes must be positive, got ", opt.block_bytes);
  RSQ_EXPECTS(std::isfinite(opt.softmax_scale) && opt.softmax_scale >= 0,
              "attncon: softmax_scale must be finite and >= 0 (0 = 1/sqrt(head_dim)), got ", opt.softmax_scale);
  RSQ_EXPECTS(opt.row_sum_tolerance >= 0, "attncon: row_sum_tolerance must be >= 0, got ", opt.row_sum_tolerance);
}

/// Runs body(h) for every head, in parallel over heads when OpenMP is on. Exceptions inside the loop are caught and
/// the first one is rethrown after it (an exception may not leave an OpenMP region).
template <class Body>
void for_each_head(index_t heads, Body&& body) {
  std::exception_ptr error;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1)
#endif
  for (index_t h = 0; h < heads; ++h) {
    try {
      body(h);
    } catch (...) {
#ifdef _OPENMP
#pragma omp critical(rsq_importance_attncon_error)
#endif
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

[[nodiscard]] inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

[[nodiscard]] inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

/// First non-finite value of a rank-3 view, for the error message.
template <class T>
void check_finite3(tensor_view<const T, 3> a, std::string_view what) {
  for (index_t h = 0; h < a.extent(0); ++h)
    for (index_t i = 0; i < a.extent(1); ++i)
      for (index_t k = 0; k < a.extent(2); ++k)
        if (!std::isfinite(a(h, i, k)))
          rsq::detail::throw_invalid_argument(what, " has a non-finite value (", a(h, i, k), ") at [", h, ", ", i,
                                              ", ", k, "]");
}

/// Shapes and values of queries (heads, L, head_dim) and keys (kv_heads, L, head_dim).
template <class T>
void check_queries_keys(tensor_view<const T, 3> q, tensor_view<const T, 3> k) {
  using rsq::detail::shape_string;
  RSQ_EXPECTS(q.extent(0) >= 1 && q.extent(1) >= 1 && q.extent(2) >= 1,
              "attncon: queries must be (heads x tokens x head_dim) with no empty axis, got ", shape_string(q));
  RSQ_EXPECTS(k.extent(0) >= 1, "attncon: keys must have at least one head, got ", shape_string(k));
  RSQ_EXPECTS(k.extent(1) == q.extent(1) && k.extent(2) == q.extent(2), "attncon: keys ", shape_string(k),
              " must be (kv_heads x tokens x head_dim) with the tokens and head_dim of queries ", shape_string(q));
  RSQ_EXPECTS(q.extent(0) % k.extent(0) == 0, "attncon: the ", q.extent(0),
              " query heads are not a multiple of the ", k.extent(0), " key heads (GQA)");
  RSQ_EXPECTS(q.data() != nullptr && k.data() != nullptr, "attncon: queries and keys must both be given");
  check_finite3(q, "attncon: queries");
  check_finite3(k, "attncon: keys");
}

/// Per-thread buffers of the query-block kernel.
template <class T>
struct softmax_workspace {
  cpu::eigen_row_matrix<T> e;    // (query_block, tokens): logits, then exp(S − rowmax), 0 above the diagonal
  cpu::eigen_vector<T> inv_sum;  // (query_block): 1 / Σ_k exp(S − rowmax) = exp(rowmax − lse)
  cpu::eigen_vector<T> col;      // (tokens): column sums of one block
  cpu::eigen_row_matrix<T> q, k;  // (tokens, head_dim): contiguous copies, so that the GEMM reads them directly
};

/// Causal softmax of queries [i0, i0 + b) of one head against keys [0, i0 + b) (the only keys they see):
/// ws.e(r, k) = exp(S_rk − max_r) for k ≤ i0 + r, 0 beyond, and ws.inv_sum(r) so that P = diag(inv_sum)·e.
template <class T, class QMap, class KMap>
void causal_softmax_block(QMap const& q, KMap const& k, index_t i0, index_t b, T scale, softmax_workspace<T>& ws) {
  index_t const n = i0 + b;
  auto e = ws.e.topLeftCorner(b, n);
  e.noalias() = scale * (q.middleRows(i0, b) * k.topRows(n).transpose());  // (b, n) logits
  for (index_t r = 0; r < b; ++r) {
    index_t const visible = i0 + r + 1;
    auto row = e.row(r).head(visible).array();
    T const m = row.maxCoeff();                // pass 1: lse = m + log Σ exp(S − m)
    row = (row - m).exp();
    ws.inv_sum(r) = T(1) / row.sum();          // exp(S − lse) = exp(S − m) · inv_sum
    e.row(r).tail(n - visible).setZero();      // causal mask
  }
}

template <class T>
[[nodiscard]] cpu::eigen_strided_map<const T> head_map(tensor_view<const T, 3> a, index_t h) {
  return cpu::as_eigen(matrix_view<const T>(a.data() + h * a.stride(0), {a.extent(1), a.extent(2)},
                                            {a.stride(1), a.stride(2)}));
}

template <class T>
[[nodiscard]] T logit_scale(tensor_view<const T, 3> q, attncon_options const& opt) {
  return T(opt.softmax_scale > 0 ? opt.softmax_scale : 1.0 / std::sqrt(double(q.extent(2))));
}

/// AttnCon of one sequence from given probabilities; accumulates in double.
template <class T>
[[nodiscard]] rsq::vector<T> attncon_scores_probs(tensor_view<const T, 3> a, attncon_options const& opt) {
  validate(opt);
  RSQ_EXPECTS(a.data() != nullptr && a.extent(0) >= 1 && a.extent(1) >= 1 && a.extent(1) == a.extent(2),
              "attncon: attention must be (heads x tokens x tokens) with heads, tokens >= 1, got ",
              rsq::detail::shape_string(a));
  index_t const heads = a.extent(0), L = a.extent(1);
  std::vector<double> partial(std::size_t(heads * L), 0.0);  // (heads, tokens)
  for_each_head(heads, [&](index_t h) {
    double* acc = partial.data() + h * L;
    for (index_t i = 0; i < L; ++i) {
      T const* row = a.data() + h * a.stride(0) + i * a.stride(1);
      index_t const s2 = a.stride(2);
      double row_sum = 0;
      for (index_t k = 0; k <= i; ++k) {  // causal part only; entries above the diagonal are not read
        T const v = row[k * s2];
        if (!(std::isfinite(v) && v >= 0))
          rsq::detail::throw_invalid_argument("attncon: attention probabilities must be finite and >= 0, got ", v,
                                              " at [", h, ", ", i, ", ", k, "]");
        row_sum += double(v);
        acc[k] += double(v);
      }
      if (!(std::abs(row_sum - 1.0) <= opt.row_sum_tolerance))
        rsq::detail::throw_invalid_argument("attncon: attention row [", h, ", ", i, "] sums to ", row_sum,
                                            " over keys 0..", i, " (causal part), not 1 within ",
                                            opt.row_sum_tolerance, ": expected causal softmax probabilities");
    }
  });
  auto s = rsq::vector<T>::from_shape({std::size_t(L)});  // (tokens)
  for (index_t t = 0; t < L; ++t) {
    double v = 0;
    for (index_t h = 0; h < heads; ++h) v += partial[std::size_t(h * L + t)];
    s(std::size_t(t)) = T(v);
  }
  return s;
}

template <class T>
[[nodiscard]] rsq::vector<T> attncon_scores_qk(tensor_view<const T, 3> q, tensor_view<const T, 3> k,
                                               attncon_options const& opt) {
  validate(opt);
  check_queries_keys(q, k);
  index_t const heads = q.extent(0), L = q.extent(1), group = q.extent(0) / k.extent(0);
  index_t const block = std::min(opt.query_block, L);
  T const scale = logit_scale(q, opt);
  std::vector<double> partial(std::size_t(heads * L), 0.0);  // (heads, tokens)
  std::vector<softmax_workspace<T>> work(static_cast<std::size_t>(max_threads()));
  for_each_head(heads, [&](index_t h) {
    auto& ws = work[std::size_t(thread_id())];
    ws.e.resize(block, L);
    ws.inv_sum.resize(block);
    ws.col.resize(L);
    ws.q = head_map(q, h);          // (tokens, head_dim)
    ws.k = head_map(k, h / group);  // (tokens, head_dim): query head h uses KV head h div (n_h / n_kv)
    double* acc = partial.data() + h * L;
    for (index_t i0 = 0; i0 < L; i0 += block) {
      index_t const b = std::min(block, L - i0), n = i0 + b;
      causal_softmax_block(ws.q, ws.k, i0, b, scale, ws);
      // pass 2: column sums Σ_i exp(S_it − lse_i) of this block, a GEMV; accumulated across blocks in double
      ws.col.head(n).noalias() = ws.e.topLeftCorner(b, n).transpose() * ws.inv_sum.head(b);
      for (index_t t = 0; t < n; ++t) acc[t] += double(ws.col(t));
    }
  });
  auto s = rsq::vector<T>::from_shape({std::size_t(L)});  // (tokens)
  for (index_t t = 0; t < L; ++t) {
    double v = 0;
    for (index_t h = 0; h < heads; ++h) v += partial[std::size_t(h * L + t)];
    s(std::size_t(t)) = T(v);
  }
  return s;
}

template <class T>
[[nodiscard]] xt::xtensor<T, 3> causal_attention(tensor_view<const T, 3> q, tensor_view<const T, 3> k,
                                                 attncon_options const& opt) {
  validate(opt);
  check_queries_keys(q, k);
  index_t const heads = q.extent(0), L = q.extent(1), group = q.extent(0) / k.extent(0);
  index_t const block = std::min(opt.query_block, L);
  T const scale = logit_scale(q, opt);
  auto probs = xt::xtensor<T, 3>::from_shape({std::size_t(heads), std::size_t(L), std::size_t(L)});
  std::vector<softmax_workspace<T>> work(static_cast<std::size_t>(max_threads()));
  for_each_head(heads, [&](index_t h) {
    auto& ws = work[std::size_t(thread_id())];
    ws.e.resize(block, L);
    ws.inv_sum.resize(block);
    ws.q = head_map(q, h);
    ws.k = head_map(k, h / group);
    Eigen::Map<cpu::eigen_row_matrix<T>> out(probs.data() + h * L * L, L, L);  // (tokens, tokens)
    for (index_t i0 = 0; i0 < L; i0 += block) {
      index_t const b = std::min(block, L - i0), n = i0 + b;
      causal_softmax_block(ws.q, ws.k, i0, b, scale, ws);
      out.block(i0, 0, b, n) = ws.inv_sum.head(b).asDiagonal() * ws.e.topLeftCorner(b, n);
      out.block(i0, n, b, L - n).setZero();
    }
  });
  return probs;
}

}  // namespace detail

/// AttnCon raw scores of one sequence from causal attention probabilities: s_t = Σ_h Σ_{i ≥ t} A[h, i, t] (§4.2).
/// Only the causal part (k ≤ i) is read; each of its rows must be finite, ≥ 0 and sum to 1 within
/// `opt.row_sum_tolerance`. Sums are accumulated in double.
/// @param attention // (heads, tokens, tokens)
/// @returns scores // (tokens)
template <class T>
  requires std::floating_point<std::remove_const_t<T>>
[[nodiscard]] rsq::vector<std::remove_const_t<T>> attncon_scores(tensor_view<T, 3> attention,
                                                                 attncon_options const& opt = {}) {
  return detail::attncon_scores_probs(tensor_view<const std::remove_const_t<T>, 3>(attention), opt);
}

/// AttnCon raw scores of a batch: one row per sequence.
/// @param attention // (batch, heads, tokens, tokens)
/// @returns scores // (batch, tokens)
template <class T>
  requires std::floating_point<std::remove_const_t<T>>
[[nodiscard]] rsq::matrix<std::remove_const_t<T>> attncon_scores(tensor_view<T, 4> attention,
                                                                 attncon_options const& opt = {}) {
  using value_type = std::remove_const_t<T>;
  RSQ_EXPECTS(attention.data() != nullptr && attention.extent(0) >= 1,
              "attncon: a batch of attention must be (batch x heads x tokens x tokens) with batch >= 1, got ",
              rsq::detail::shape_string(attention));
  index_t const batch = attention.extent(0), L = attention.extent(2);
  auto s = rsq::matrix<value_type>::from_shape({std::size_t(batch), std::size_t(L)});  // (batch, tokens)
  for (index_t j = 0; j < batch; ++j) {
    auto const row = detail::attncon_scores_probs(tensor_view<const value_type, 3>(attention[j]), opt);
    std::copy(row.begin(), row.end(), s.begin() + j * L);
  }
  return s;
}

/// Owned-array overloads.
template <std::floating_point T, std::size_t N>
  requires(N == 3 || N == 4)
[[nodiscard]] auto attncon_scores(xt::xtensor<T, N> const& attention, attncon_options const& opt = {}) {
  return attncon_scores(tensor_view<const T, N>(attention), opt);
}

/// AttnCon raw scores straight from queries and keys (after RoPE), without materialising the L × L attention:
/// causal, logits scaled by `opt.softmax_scale` (default 1/√head_dim), GQA with query head h reading KV head
/// h div (heads / kv_heads). Logits and exponentials are in T, per-block column sums are accumulated in double;
/// memory is query_block × L values of T per thread plus heads × L doubles. Parallel over heads with OpenMP.
/// @param queries // (heads, tokens, head_dim)
/// @param keys // (kv_heads, tokens, head_dim)
/// @returns scores // (tokens)
template <class T>
  requires std::floating_point<std::remove_const_t<T>>
[[nodiscard]] rsq::vector<std::remove_const_t<T>> attncon_scores_qk(tensor_view<T, 3> queries, tensor_view<T, 3> keys,
                                                                    attncon_options const& opt = {}) {
  using V = tensor_view<const std::remove_const_t<T>, 3>;
  return detail::attncon_scores_qk(V(queries), V(keys), opt);
}

/// Owned-array overload.
template <std::floating_point T>
[[nodiscard]] rsq::vector<T> attncon_scores_qk(xt::xtensor<T, 3> const& queries, xt::xtensor<T, 3> const& keys,
                                               attncon_options const& opt = {}) {
  return detail::attncon_scores_qk(tensor_view<const T, 3>(queries), tensor_view<const T, 3>(keys), opt);
}

/// The materialised causal softmax attention of queries and keys (same conventions as attncon_scores_qk); the
/// entries above the diagonal are 0. Needs heads × L × L values: meant for tests and comparisons.
/// @returns probabilities // (heads, tokens, tokens)
template <class T>
  requires std::floating_point<std::remove_const_t<T>>
[[nodiscard]] xt::xtensor<std::remove_const_t<T>, 3> causal_attention(tensor_view<T, 3> queries,
                                                                      tensor_view<T, 3> keys,
                                                                      attncon_options const& opt = {}) {
  using V = tensor_view<const std::remove_const_t<T>, 3>;
  return detail::causal_attention(V(queries), V(keys), opt);
}

/// Owned-array overload.
template <std::floating_point T>
[[nodiscard]] xt::xtensor<T, 3> causal_attention(xt::xtensor<T, 3> const& queries, xt::xtensor<T, 3> const& keys,
                                                 attncon_options const& opt = {}) {
  return detail::causal_attention(tensor_view<const T, 3>(queries), tensor_view<const T, 3>(keys), opt);
}

/// AttnCon raw scores of one sequence on backend @p be (the first argument of every algorithm), from causal attention
/// probabilities @p attention (heads, tokens, tokens) or from @p queries (heads, tokens, head_dim) and @p keys
/// (kv_heads, tokens, head_dim), in host memory or in the backend's memory, any strides; the same conventions and
/// checks as the CPU functions above. @returns scores // (tokens), in host memory
///
/// An implementation of algorithm::attncon provides
///   template <class T> static void from_probabilities(B const&, tensor_view<const T, 3> a, vector_view<T> out,
///                                                     attncon_options const&);
///   template <class T> static void from_queries_keys(B const&, tensor_view<const T, 3> q, tensor_view<const T, 3> k,
///                                                    vector_view<T> out, attncon_options const&);
/// (options and shapes checked; values checked there; @p out (tokens) in the backend's memory).
template <backend_tag B, std::floating_point T>
[[nodiscard]] rsq::vector<T> attncon_scores(B const& be, tensor_view<const T, 3> attention,
                                            attncon_options const& opt = {}) {
  detail::validate(opt);
  RSQ_EXPECTS(attention.data() != nullptr && attention.extent(0) >= 1 && attention.extent(1) >= 1 &&
                  attention.extent(1) == attention.extent(2),
              "attncon: attention must be (heads x tokens x tokens) with heads, tokens >= 1, got ",
              rsq::detail::shape_string(attention));
  auto out = backend::make_matrix<T>(be, 1, attention.extent(1));
  backend::implementation_t<algorithm::attncon, B>::template from_probabilities<T>(
      be, attention, vector_view<T>(rsq::view(out).data(), attention.extent(1)), opt);
  auto host = rsq::vector<T>::from_shape({std::size_t(rsq::view(out).cols())});  // (tokens)
  backend::copy(be, host.data(), rsq::view(out).data(), rsq::view(out).cols());
  return host;
}

/// AttnCon raw scores from queries and keys on backend @p be, written into @p out (tokens) in the backend's memory
/// (device memory for CUDA: the scores stay where the engine's tensors are).
template <backend_tag B, std::floating_point T>
void attncon_scores_qk(B const& be, tensor_view<const T, 3> queries, tensor_view<const T, 3> keys, vector_view<T> out,
                       attncon_options const& opt = {}) {
  detail::validate(opt);
  RSQ_EXPECTS(queries.extent(0) >= 1 && queries.extent(1) >= 1 && queries.extent(2) >= 1,
              "attncon: queries must be (heads x tokens x head_dim) with no empty axis, got ",
              rsq::detail::shape_string(queries));
  RSQ_EXPECTS(keys.extent(0) >= 1 && keys.extent(1) == queries.extent(1) && keys.extent(2) == queries.extent(2),
              "attncon: keys ", rsq::detail::shape_string(keys),
              " must be (kv_heads x tokens x head_dim) with the tokens and head_dim of queries ",
              rsq::detail::shape_string(queries));
  RSQ_EXPECTS(queries.extent(0) % keys.extent(0) == 0, "attncon: the ", queries.extent(0),
              " query heads are not a multiple of the ", keys.extent(0), " key heads (GQA)");
  RSQ_EXPECTS(queries.data() != nullptr && keys.data() != nullptr, "attncon: queries and keys must both be given");
  RSQ_EXPECTS(out.extent(0) == queries.extent(1) && out.stride(0) == 1 && out.data() != nullptr &&
                  backend::resident(be, out.data()),
              "attncon: the scores must be a contiguous vector of ", queries.extent(1),
              " tokens in the backend's memory");
  backend::implementation_t<algorithm::attncon, B>::template from_queries_keys<T>(be, queries, keys, out, opt);
}

/// AttnCon raw scores from queries and keys on backend @p be. @returns scores // (tokens), in host memory
template <backend_tag B, std::floating_point T>
[[nodiscard]] rsq::vector<T> attncon_scores_qk(B const& be, tensor_view<const T, 3> queries,
                                               tensor_view<const T, 3> keys, attncon_options const& opt = {}) {
  auto out = backend::make_matrix<T>(be, 1, queries.extent(1));
  attncon_scores_qk<B, T>(be, queries, keys, vector_view<T>(rsq::view(out).data(), queries.extent(1)), opt);
  auto host = rsq::vector<T>::from_shape({std::size_t(rsq::view(out).cols())});  // (tokens)
  backend::copy(be, host.data(), rsq::view(out).data(), rsq::view(out).cols());
  return host;
}

/// The AttnCon policy (§4.2): raw scores from ctx.attention when present, otherwise from ctx.queries / ctx.keys,
/// then `normalization` (default: min-max to [0.005, 1], the RSQ scripts' setting).
struct attncon {
  static constexpr std::string_view name = "attncon";

  normalize_options normalization{};
  attncon_options attention{};

  [[nodiscard]] constexpr needs requirements() const noexcept { return {.attention = true}; }

  /// @returns raw scores // (tokens)
  template <std::floating_point T>
  [[nodiscard]] rsq::vector<T> scores(basic_sequence_context<T> const& ctx) const {
    require(ctx, requirements(), name);
    (void)sequence_length(ctx, name);
    if (ctx.has_attention()) return detail::attncon_scores_probs(ctx.attention, attention);
    return detail::attncon_scores_qk(ctx.queries, ctx.keys, attention);
  }

  /// @returns importances r // (tokens)
  template <std::floating_point T>
  [[nodiscard]] rsq::vector<T> weights(basic_sequence_context<T> const& ctx) const {
    validate(normalization, name);
    return normalize(scores(ctx), normalization);
  }
};

}  // namespace rsq::importance

namespace rsq::backend {

/// The CPU backend of importance::attncon_scores / attncon_scores_qk (host memory in and out).
template <>
struct implementation<algorithm::attncon, cpu_eigen> {
  static constexpr bool available = true;

  template <class T>
  static void from_probabilities(cpu_eigen const&, tensor_view<const T, 3> a, vector_view<T> out,
                                 importance::attncon_options const& opt) {
    auto const s = importance::detail::attncon_scores_probs(a, opt);
    for (index_t t = 0; t < out.extent(0); ++t) out(t) = s(std::size_t(t));
  }
  template <class T>
  static void from_queries_keys(cpu_eigen const&, tensor_view<const T, 3> q, tensor_view<const T, 3> k,
                                vector_view<T> out, importance::attncon_options const& opt) {
    auto const s = importance::detail::attncon_scores_qk(q, k, opt);
    for (index_t t = 0; t < out.extent(0); ++t) out(t) = s(std::size_t(t));
  }
};

}  // namespace rsq::backend
