// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CPU backend of the forward-pass pieces (rsq::nn): RMSNorm, RoPE, causal attention with the AttnCon scores,
/// SwiGLU, the token embedding and the next-token loss, as `rsq::backend::implementation<algorithm::X, cpu_eigen>`
/// (<rsq/backend/dispatch.hpp>; the front ends in <rsq/nn/*.hpp> check the arguments and document the members).
///
/// Row reductions and transcendental functions (RMSNorm's mean square, softmax, SwiGLU, log-sum-exp) run on
/// cpu/packet_math.hpp's kernels, whose results do not depend on the row's address: Eigen's own loops peel scalar
/// steps up to the first aligned element, so the same row in another workspace slot could round differently.
///
/// Determinism: every result is bitwise the same for any number of OpenMP threads. The work is split into items whose
/// arithmetic does not depend on which thread runs them (rows, blocks of tokens, (sequence, head, block of queries));
/// matrix products of an item run single-threaded inside the parallel region (Eigen's own multi-threaded product is
/// never called here: its depth blocking changes with the thread count); sums that cross items (the AttnCon column
/// sums, the loss) are taken in a fixed order after the parallel part.
///
/// Memory: no allocation per call once warm. Each thread keeps a work block for its items (logits of a block of
/// queries or tokens) and the calling thread a block for what the items share (AttnCon partial sums, loss terms);
/// both only grow (cpu/scratch.hpp's scratch_block), and the products keep their packing buffers per thread
/// (cpu/gemm.hpp).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <vector>

#include <Eigen/Core>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/eigen_map.hpp"
#include "rsq/backend/cpu/gemm.hpp"
#include "rsq/backend/cpu/packet_math.hpp"
#include "rsq/backend/cpu/scratch.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/precision.hpp"
#include "rsq/core/view.hpp"
#include "rsq/nn/options.hpp"

namespace rsq::cpu::nn_detail {

using row_map = Eigen::Map<eigen_row_matrix<float>, Eigen::Unaligned, Eigen::OuterStride<>>;
using const_row_map = Eigen::Map<const eigen_row_matrix<float>, Eigen::Unaligned, Eigen::OuterStride<>>;
using col_map = Eigen::Map<eigen_col_matrix<float>, Eigen::Unaligned, Eigen::OuterStride<>>;

/// Queries per block of the attention (forward.hpp's head_attention): a block only sees the keys up to its last
/// query, which skips about half of the masked products.
inline constexpr index_t query_block = 64;

/// Elements from one row of @p m to the next (xtensor gives a single row the stride 0).
template <class T>
[[nodiscard]] constexpr index_t pitch(matrix_view<T> m) noexcept {
  return m.rows() > 1 ? m.stride(0) : m.cols();
}

/// Floats per row of the work blocks: whole 64-byte lines, so that every row starts where a SIMD packet does and
/// Eigen's vectorised loops split every row the same way, wherever the block lies.
[[nodiscard]] constexpr index_t padded(index_t n) noexcept { return (n + 15) / 16 * 16; }

/// The calling thread's work block for its items (grows, never shrinks).
[[nodiscard]] inline detail::scratch_block& work_block() noexcept {
  static thread_local detail::scratch_block block;
  return block;
}
/// The calling thread's block for arrays that the items of one call share.
[[nodiscard]] inline detail::scratch_block& shared_block() noexcept {
  static thread_local detail::scratch_block block;
  return block;
}

/// Runs body(i) for i in [0, n), in parallel over items with OpenMP: dynamically scheduled items of unequal work
/// (blocks of queries, of tokens), or @p Even: items of equal work in static shares. Items are independent: which
/// thread runs one does not change what it computes. The first exception is rethrown after the loop (none may leave
/// the parallel region).
template <bool Even = false, class Body>
void for_each_item(index_t n, Body&& body) {
  std::exception_ptr error;
  auto const run = [&](index_t i) {
    try {
      body(i);
    } catch (...) {
#if defined(_OPENMP)
#pragma omp critical(rsq_nn_error)
#endif
      if (!error) error = std::current_exception();
    }
  };
  if constexpr (Even) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
    for (index_t i = 0; i < n; ++i) run(i);
  } else {
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1)
#endif
    for (index_t i = 0; i < n; ++i) run(i);
  }
  if (error) std::rethrow_exception(error);
}

/// Items of about @p target elements each, whole rows: (rows per item, items).
struct row_items {
  index_t rows_per_item, count;
};
[[nodiscard]] inline row_items split_rows(index_t rows, index_t cols, index_t target = 16384) {
  index_t const per = std::max<index_t>(1, target / std::max<index_t>(cols, 1));
  return {per, (rows + per - 1) / per};
}

/// y = g ⊙ x / √(mean(x²) + eps) for one row of @p n features (forward.hpp's rms_norm); @p y may be @p x.
inline void rms_norm_row(float const* x, float const* g, index_t n, float eps, float* y) {
  Eigen::Map<const Eigen::RowVectorXf> const xr(x, n), gain(g, n);
  float const ms = cpu::packet_math::squared_norm(x, n) / float(n);
  float const inv = 1.f / std::sqrt(ms + eps);
  Eigen::Map<Eigen::RowVectorXf>(y, n) = (xr * inv).cwiseProduct(gain);
}

/// C (m, n) = A (m, k) · B (n, k)ᵀ, all row-major with row strides: as the column-major Cᵀ = B·Aᵀ on Eigen's
/// kernels with the packing buffers kept per thread (cpu/gemm.hpp), single-threaded inside a parallel region.
inline void product_abt(float const* a, index_t lda, float const* b, index_t ldb, float* c, index_t ldc, index_t m,
                        index_t n, index_t k) {
  col_map ct(c, n, m, Eigen::OuterStride<>(ldc));  // (n, m) = Cᵀ
  ct.setZero();
  const_row_map const bm(b, n, k, Eigen::OuterStride<>(ldb));  // (n, k)
  const_row_map const am(a, m, k, Eigen::OuterStride<>(lda));  // (m, k)
  detail::gemm_update<float>(ct, bm, am.transpose(), 1.f);
}

/// C (m, n) = A (m, k) · B (k, n), all row-major with row strides (Cᵀ = Bᵀ·Aᵀ column-major).
inline void product_ab(float const* a, index_t lda, float const* b, index_t ldb, float* c, index_t ldc, index_t m,
                       index_t n, index_t k) {
  col_map ct(c, n, m, Eigen::OuterStride<>(ldc));  // (n, m) = Cᵀ
  ct.setZero();
  const_row_map const bm(b, k, n, Eigen::OuterStride<>(ldb));  // (k, n)
  const_row_map const am(a, m, k, Eigen::OuterStride<>(lda));  // (m, k)
  detail::gemm_update<float>(ct, bm.transpose(), am.transpose(), 1.f);
}

/// cos/sin(pos·f_i) for pos < positions, i < head_dim/2 (f_i: nn::rope_inverse_frequency), computed in double and
/// rounded to float, kept per thread for the last (head_dim, theta, scaling) and grown to longer sequences.
struct rope_tables {
  index_t positions = 0, head_dim = 0;
  double theta = 0;
  nn::rope_scaling scaling;
  std::vector<float> cos, sin;  // (positions, head_dim / 2)
};

[[nodiscard]] inline rope_tables const& rope_tables_for(index_t positions, nn::rope_options const& opt) {
  static thread_local rope_tables t;
  index_t const head_dim = opt.head_dim;
  double const theta = opt.theta;
  if (t.head_dim == head_dim && t.theta == theta && t.scaling == opt.scaling && t.positions >= positions) return t;
  index_t const half = head_dim / 2;
  t.cos.resize(std::size_t(positions * half));
  t.sin.resize(std::size_t(positions * half));
  for (index_t i = 0; i < half; ++i) {
    double const freq = nn::rope_inverse_frequency(theta, head_dim, opt.scaling, i);
    for (index_t p = 0; p < positions; ++p) {
      t.cos[std::size_t(p * half + i)] = float(std::cos(double(p) * freq));
      t.sin[std::size_t(p * half + i)] = float(std::sin(double(p) * freq));
    }
  }
  t.positions = positions;
  t.head_dim = head_dim;
  t.theta = theta;
  t.scaling = opt.scaling;
  return t;
}

/// The operands of one causal_attention call.
struct attention_problem {
  float const *q, *k, *v;
  index_t q_stride, k_stride, v_stride;
  float* out;  // null: scores only
  index_t out_stride;
  index_t seq_len, heads, group, head_dim;
  float scale;
};

/// Queries [i0, i0 + rows) of head h of sequence s (forward.hpp's head_attention for one block): the probabilities
/// into @p p (rows, n = i0 + rows) with row stride @p ldp (zero right of the diagonal), the block's output rows, and
/// when @p column_sums is given, Σ_rows P[·, t] added to column_sums[t] in double, row by row.
inline void attention_block(attention_problem const& a, index_t s, index_t h, index_t i0, float* p, index_t ldp,
                            double* column_sums) {
  index_t const rows = std::min(query_block, a.seq_len - i0), n = i0 + rows;
  index_t const row0 = s * a.seq_len, kv_col = (h / a.group) * a.head_dim, q_col = h * a.head_dim;
  // Logits q·kᵀ, unscaled (rows, n).
  product_abt(a.q + (row0 + i0) * a.q_stride + q_col, a.q_stride, a.k + row0 * a.k_stride + kv_col, a.k_stride, p, ldp,
              rows, n, a.head_dim);
  for (index_t r = 0; r < rows; ++r) {
    index_t const i = i0 + r;
    float* const row = p + r * ldp;
    // Causal softmax of query i over keys 0..i; scale > 0, so the maximum commutes with it.
    float const mx = Eigen::Map<Eigen::ArrayXf>(row, i + 1).maxCoeff();
    float const sum = cpu::packet_math::sum_exp(row, i + 1, mx, a.scale, row);
    cpu::packet_math::scale(row, i + 1, 1.f / sum);
    std::fill(row + i + 1, row + n, 0.f);
    if (column_sums != nullptr)
      for (index_t t = 0; t <= i; ++t) column_sums[t] += double(row[t]);
  }
  if (a.out != nullptr)
    product_ab(p, ldp, a.v + row0 * a.v_stride + kv_col, a.v_stride, a.out + (row0 + i0) * a.out_stride + q_col,
               a.out_stride, rows, a.head_dim, n);
}

/// Token rows per block of the classifier: a (block, vocab) block of logits of at most about 4M floats, a multiple
/// of 4 (the width of Eigen's kernel panels), at most 64.
[[nodiscard]] inline index_t token_block(index_t vocab) {
  index_t const b = (index_t(1) << 22) / std::max<index_t>(vocab, 1) / 4 * 4;
  return std::clamp<index_t>(b, 4, 64);
}

/// RMSNorm of rows [r0, r0 + rows) of @p hidden into @p n (rows, dim) with row stride @p ldn.
inline void normalize_rows(matrix_view<const float> hidden, float const* gains, float eps, index_t r0, index_t rows,
                           float* n, index_t ldn) {
  for (index_t r = 0; r < rows; ++r)
    rms_norm_row(hidden.data() + (r0 + r) * cpu::nn_detail::pitch(hidden), gains, hidden.cols(), eps, n + r * ldn);
}

}  // namespace rsq::cpu::nn_detail

namespace rsq::backend {

/// RMSNorm on the CPU: rows in parallel (forward.hpp's rms_norm per row).
template <>
struct implementation<algorithm::rms_norm, cpu_eigen> {
  static constexpr bool available = true;

  static void run(cpu_eigen const&, matrix_view<const float> x, vector_view<const float> gains, float eps,
                  matrix_view<float> y) {
    auto const items = cpu::nn_detail::split_rows(x.rows(), x.cols());
    cpu::nn_detail::for_each_item<true>(items.count, [&](index_t item) {
      index_t const r0 = item * items.rows_per_item, r1 = std::min(x.rows(), r0 + items.rows_per_item);
      for (index_t r = r0; r < r1; ++r)
        cpu::nn_detail::rms_norm_row(x.data() + r * cpu::nn_detail::pitch(x), gains.data(), x.cols(), eps,
                                     y.data() + r * cpu::nn_detail::pitch(y));
    });
  }
};

/// RoPE on the CPU: the tables of forward.hpp's make_rope (kept per thread), rows in parallel.
template <>
struct implementation<algorithm::rope, cpu_eigen> {
  static constexpr bool available = true;

  static void run(cpu_eigen const&, matrix_view<float> x, nn::rope_options const& opt) {
    index_t const L = opt.seq_len, d = opt.head_dim, half = d / 2, heads = x.cols() / d;
    auto const& t = cpu::nn_detail::rope_tables_for(std::min(L, x.rows()), opt);
    auto const items = cpu::nn_detail::split_rows(x.rows(), x.cols());
    cpu::nn_detail::for_each_item<true>(items.count, [&](index_t item) {
      index_t const r0 = item * items.rows_per_item, r1 = std::min(x.rows(), r0 + items.rows_per_item);
      for (index_t r = r0; r < r1; ++r) {
        float const* const c = t.cos.data() + (r % L) * half;
        float const* const s = t.sin.data() + (r % L) * half;
        float* const row = x.data() + r * cpu::nn_detail::pitch(x);
        for (index_t h = 0; h < heads; ++h) {
          float* const v = row + h * d;
          for (index_t i = 0; i < half; ++i) {
            float const a = v[2 * i], b = v[2 * i + 1];
            v[2 * i] = a * c[i] - b * s[i];
            v[2 * i + 1] = a * s[i] + b * c[i];
          }
        }
      }
    });
  }
};

/// Causal attention on the CPU: forward.hpp's head_attention in blocks of 64 queries. Items are (sequence, head,
/// block) for the output alone; with the AttnCon scores they are (sequence, head), each adding its blocks' column
/// sums in double in query order into its own row of partial sums, which are then summed over heads in head order.
template <>
struct implementation<algorithm::causal_attention, cpu_eigen> {
  static constexpr bool available = true;

  static void run(cpu_eigen const&, matrix_view<const float> q, matrix_view<const float> k, matrix_view<const float> v,
                  matrix_view<float> out, nn::attention_options const& opt, matrix_view<float> scores) {
    using namespace cpu::nn_detail;
    index_t const L = opt.seq_len, H = opt.heads, d = opt.head_dim, S = q.rows() / L;
    bool const with_output = out.data() != nullptr;
    attention_problem const a{q.data(),
                              k.data(),
                              with_output ? v.data() : nullptr,
                              cpu::nn_detail::pitch(q),
                              cpu::nn_detail::pitch(k),
                              with_output ? cpu::nn_detail::pitch(v) : 0,
                              with_output ? out.data() : nullptr,
                              with_output ? cpu::nn_detail::pitch(out) : 0,
                              L,
                              H,
                              H / opt.kv_heads,
                              d,
                              opt.softmax_scale > 0 ? float(opt.softmax_scale) : 1.f / std::sqrt(float(d))};
    index_t const blocks = (L + query_block - 1) / query_block, ldp = padded(L);
    std::size_t const work_bytes = std::size_t(std::min(query_block, L) * ldp) * sizeof(float);
    auto const probs_block = [&] { return reinterpret_cast<float*>(work_block().reserve(work_bytes)); };

    if (scores.data() == nullptr) {
      for_each_item(S * H * blocks, [&](index_t item) {
        index_t const sh = item / blocks, b = item % blocks;
        attention_block(a, sh / H, sh % H, b * query_block, probs_block(), ldp, nullptr);
      });
      return;
    }
    // (sequences, heads, L) partial column sums, one row per item.
    auto* const partial = reinterpret_cast<double*>(shared_block().reserve(std::size_t(S * H * L) * sizeof(double)));
    for_each_item(S * H, [&](index_t sh) {
      double* const acc = partial + sh * L;
      std::fill(acc, acc + L, 0.0);
      float* const p = probs_block();
      for (index_t b = 0; b < blocks; ++b) attention_block(a, sh / H, sh % H, b * query_block, p, ldp, acc);
    });
    for_each_item<true>(S, [&](index_t s) {
      for (index_t t = 0; t < L; ++t) {
        double sum = 0;
        for (index_t h = 0; h < H; ++h) sum += partial[(s * H + h) * L + t];
        scores.data()[s * scores.stride(0) + t * scores.stride(1)] = float(sum);
      }
    });
  }
};

/// SwiGLU on the CPU: pieces of 16384 elements when both arrays are contiguous (threads share long rows), else row by
/// row; each element's arithmetic is the same either way (cpu/packet_math.hpp).
template <>
struct implementation<algorithm::swiglu, cpu_eigen> {
  static constexpr bool available = true;

  static void run(cpu_eigen const&, matrix_view<float> gate, matrix_view<const float> up) {
    if (gate.is_contiguous() && up.is_contiguous()) {
      constexpr index_t piece = 16384;
      index_t const n = gate.size(), pieces = (n + piece - 1) / piece;
      cpu::nn_detail::for_each_item<true>(pieces, [&](index_t i) {
        index_t const off = i * piece;
        cpu::packet_math::silu_times(gate.data() + off, up.data() + off, std::min(piece, n - off));
      });
      return;
    }
    auto const items = cpu::nn_detail::split_rows(gate.rows(), gate.cols());
    cpu::nn_detail::for_each_item<true>(items.count, [&](index_t item) {
      index_t const r0 = item * items.rows_per_item, r1 = std::min(gate.rows(), r0 + items.rows_per_item);
      for (index_t r = r0; r < r1; ++r)
        cpu::packet_math::silu_times(gate.data() + r * cpu::nn_detail::pitch(gate),
                                     up.data() + r * cpu::nn_detail::pitch(up), gate.cols());
    });
  }
};

/// The token embedding on the CPU: row copies, tokens in parallel.
template <>
struct implementation<algorithm::embedding, cpu_eigen> {
  static constexpr bool available = true;

  static void run(cpu_eigen const&, matrix_view<const std::int32_t> ids, matrix_view<const float> table,
                  matrix_view<float> x) {
    index_t const L = ids.cols(), D = table.cols();
    auto const items = cpu::nn_detail::split_rows(x.rows(), D);
    cpu::nn_detail::for_each_item<true>(items.count, [&](index_t item) {
      index_t const r0 = item * items.rows_per_item, r1 = std::min(x.rows(), r0 + items.rows_per_item);
      for (index_t r = r0; r < r1; ++r)
        std::copy_n(table.data() + index_t(ids(r / L, r % L)) * cpu::nn_detail::pitch(table), D,
                    x.data() + r * cpu::nn_detail::pitch(x));
    });
  }
};

/// The classifier and the next-token loss on the CPU: blocks of tokens in parallel, each RMSNorm → logits (its
/// own product, single-threaded) → hidden_loss's log-sum-exp per row into a term; the terms are then summed in
/// token order, as hidden_loss sums them. bf16 is computed in fp32 (precision.hpp).
template <>
struct implementation<algorithm::next_token_loss, cpu_eigen> {
  static constexpr bool available = true;

  static nn::loss_sum run(cpu_eigen const&, matrix_view<const float> hidden, vector_view<const float> final_gains,
                          matrix_view<const float> classifier, matrix_view<const std::int32_t> ids,
                          nn::loss_options const& opt) {
    using namespace cpu::nn_detail;
    index_t const T = hidden.rows(), D = hidden.cols(), V = classifier.rows(), L = opt.seq_len;
    index_t const block = token_block(V), blocks = (T + block - 1) / block, ldn = padded(D), ldz = padded(V);
    std::size_t const n_bytes = std::size_t(block * ldn) * sizeof(float);
    std::size_t const work_bytes = n_bytes + std::size_t(block * ldz) * sizeof(float);
    auto* const terms = reinterpret_cast<double*>(shared_block().reserve(std::size_t(T) * sizeof(double)));  // (T)
    for_each_item(blocks, [&](index_t b) {
      index_t const r0 = b * block, rows = std::min(block, T - r0);
      std::byte* const w = work_block().reserve(work_bytes);
      auto* const n = reinterpret_cast<float*>(w);            // (rows, D)
      auto* const z = reinterpret_cast<float*>(w + n_bytes);  // (rows, V)
      normalize_rows(hidden, final_gains.data(), opt.norm_eps, r0, rows, n, ldn);
      product_abt(n, ldn, classifier.data(), cpu::nn_detail::pitch(classifier), z, ldz, rows, V, D);
      for (index_t r = 0; r < rows; ++r) {
        index_t const token = r0 + r, t = token % L;
        if (t + 1 == L) continue;  // the last position of a sequence predicts nothing
        std::int32_t const target = ids(token / L, t + 1);
        // log-sum-exp with the max subtracted (float, vectorised), accumulated in double (hidden_loss).
        Eigen::Map<const Eigen::ArrayXf> const zr(z + r * ldz, V);
        float const mx = zr.maxCoeff();
        double const sum = double(cpu::packet_math::sum_exp(zr.data(), V, mx, 1.f, nullptr));
        terms[token] = double(mx) + std::log(sum) - double(zr(target));
      }
    });
    nn::loss_sum r;
    for (index_t token = 0; token < T; ++token)
      if (token % L + 1 != L) r.sum += terms[token];
    r.count = (T / L) * (L - 1);
    return r;
  }

  static void logits(cpu_eigen const&, matrix_view<const float> hidden, vector_view<const float> final_gains,
                     matrix_view<const float> classifier, float norm_eps, matmul_precision, matrix_view<float> logits) {
    using namespace cpu::nn_detail;
    index_t const T = hidden.rows(), D = hidden.cols(), V = classifier.rows();
    index_t const block = token_block(V), blocks = (T + block - 1) / block, ldn = padded(D);
    std::size_t const n_bytes = std::size_t(block * ldn) * sizeof(float);
    for_each_item(blocks, [&](index_t b) {
      index_t const r0 = b * block, rows = std::min(block, T - r0);
      auto* const n = reinterpret_cast<float*>(work_block().reserve(n_bytes));  // (rows, D)
      normalize_rows(hidden, final_gains.data(), norm_eps, r0, rows, n, ldn);
      product_abt(n, ldn, classifier.data(), cpu::nn_detail::pitch(classifier),
                  logits.data() + r0 * cpu::nn_detail::pitch(logits), cpu::nn_detail::pitch(logits), rows, V, D);
    });
  }
};

}  // namespace rsq::backend
