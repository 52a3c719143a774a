// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CPU backend of the reverse-pass pieces (<rsq/nn/reverse.hpp>), in float and double. Rows, and (sequence, KV
/// head) items of the attention, are split over the OpenMP threads; an item's arithmetic does not depend on the
/// thread that runs it (its products run single-threaded inside the parallel region), and the loss is summed in token
/// order after the parallel part: the same bits for any number of threads.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/gemm.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/view.hpp"
#include "rsq/nn/options.hpp"

namespace rsq::cpu::reverse_detail {

/// C ← α·op(A)·op(B) + β·C on the CPU's deterministic product.
template <class T>
void gemm(matrix_view<const T> a, linalg::op oa, matrix_view<const T> b, linalg::op ob, matrix_view<T> c,
          double beta = 0, double alpha = 1) {
  backend::implementation<algorithm::gemm, backend::cpu_eigen>::run(
      backend::cpu_eigen{}, a, oa, b, ob, c, linalg::gemm_options{.alpha = alpha, .beta = beta});
}

/// Columns [c0, c0 + n) of rows [r0, r0 + rows) of @p m.
template <class T>
[[nodiscard]] matrix_view<T> block(matrix_view<T> m, index_t r0, index_t rows, index_t c0, index_t n) {
  return matrix_view<T>(m.data() + r0 * m.stride(0) + c0, {rows, n}, {m.stride(0), 1});
}

/// Whether a loop over @p elements is worth a parallel region: below this, waking the threads (and, on a loaded
/// machine, waiting for them) costs more than the arithmetic.
[[nodiscard]] inline bool parallel_worth(index_t elements) noexcept { return elements >= (index_t(1) << 16); }

template <class T>
[[nodiscard]] T sigmoid(T a) {
  return T(1) / (T(1) + std::exp(-a));
}

/// The causal softmax of rows [0, L) of @p p, (L, L) logits, in place: row i over columns 0..i, zero beyond.
template <class T>
void causal_softmax(matrix_view<T> p) {
  index_t const L = p.rows();
  for (index_t i = 0; i < L; ++i) {
    T* row = p.data() + i * p.stride(0);
    T mx = row[0];
    for (index_t j = 1; j <= i; ++j) mx = std::max(mx, row[j]);
    double sum = 0;
    for (index_t j = 0; j <= i; ++j) {
      row[j] = T(std::exp(double(row[j] - mx)));
      sum += double(row[j]);
    }
    T const inv = T(1.0 / sum);
    for (index_t j = 0; j <= i; ++j) row[j] *= inv;
    for (index_t j = i + 1; j < L; ++j) row[j] = T(0);
  }
}

/// @p n elements of the calling thread's scratch number @p Slot, kept from call to call (they only grow): an (L, L)
/// block allocated per item would be fresh pages, whose first touch costs more than the products on them.
template <class T, int Slot>
[[nodiscard]] T* thread_scratch(index_t n) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < std::size_t(n)) buffer.resize(std::size_t(n));
  return buffer.data();
}

/// body(s, g) for every (sequence, KV head) item of the attention, in parallel: each item owns its rows of every
/// output and its own scratch, so the result does not depend on which thread runs it.
template <class Body>
void for_each_kv_item(nn::attention_options const& opt, index_t rows, Body&& body) {
  index_t const S = rows / opt.seq_len, KV = opt.kv_heads;
#pragma omp parallel for schedule(dynamic, 1)
  for (index_t item = 0; item < S * KV; ++item) body(item / KV, item % KV);
}

}  // namespace rsq::cpu::reverse_detail

namespace rsq::backend {

/// The reverse-pass pieces on the CPU (<rsq/nn/reverse.hpp>).
template <>
struct implementation<algorithm::reverse_pass, cpu_eigen> {
  static constexpr bool available = true;

  template <class T>
  static void fill(cpu_eigen const&, matrix_view<T> m, T value) {
    for (index_t i = 0; i < m.rows(); ++i) std::fill_n(m.data() + i * m.stride(0), m.cols(), value);
  }

  template <class T>
  static void gather_rows(cpu_eigen const&, matrix_view<const std::int32_t> ids, matrix_view<const T> table,
                          matrix_view<T> out) {
    index_t const L = ids.cols(), d = table.cols();
    for (index_t s = 0; s < ids.rows(); ++s)
      for (index_t t = 0; t < L; ++t)
        std::copy_n(table.data() + index_t(ids(s, t)) * table.stride(0), d, out.data() + (s * L + t) * out.stride(0));
  }

  template <class T>
  static void rms_forward(cpu_eigen const&, matrix_view<const T> x, float eps, matrix_view<T> y, vector_view<T> r) {
    index_t const rows = x.rows(), d = x.cols();
#pragma omp parallel for schedule(static) if (cpu::reverse_detail::parallel_worth(rows * d))
    for (index_t i = 0; i < rows; ++i) {
      T const* xr = x.data() + i * x.stride(0);
      double ss = 0;
      for (index_t j = 0; j < d; ++j) ss += double(xr[j]) * double(xr[j]);
      T const ri = T(1.0 / std::sqrt(ss / double(d) + double(eps)));
      r(i) = ri;
      for (index_t j = 0; j < d; ++j) y.data()[i * y.stride(0) + j] = xr[j] * ri;
    }
  }

  template <class T>
  static void rms_backward(cpu_eigen const&, matrix_view<const T> y, vector_view<const T> r, matrix_view<const T> dy,
                           matrix_view<T> dx) {
    index_t const rows = y.rows(), d = y.cols();
#pragma omp parallel for schedule(static) if (cpu::reverse_detail::parallel_worth(rows * d))
    for (index_t i = 0; i < rows; ++i) {
      T const* yr = y.data() + i * y.stride(0);
      T const* g = dy.data() + i * dy.stride(0);
      double dot = 0;
      for (index_t j = 0; j < d; ++j) dot += double(g[j]) * double(yr[j]);
      T const mean = T(dot / double(d)), ri = r(i);
      for (index_t j = 0; j < d; ++j) dx.data()[i * dx.stride(0) + j] += ri * (g[j] - yr[j] * mean);
    }
  }

  template <class T>
  static void rope(cpu_eigen const&, matrix_view<T> x, matrix_view<const T> cos, matrix_view<const T> sin,
                   index_t head_dim, bool reverse) {
    index_t const rows = x.rows(), L = cos.rows(), half = head_dim / 2, heads = x.cols() / head_dim;
    T const sign = reverse ? T(-1) : T(1);
#pragma omp parallel for schedule(static) if (cpu::reverse_detail::parallel_worth(x.size()))
    for (index_t r = 0; r < rows; ++r) {
      T const* c = cos.data() + (r % L) * cos.stride(0);
      T const* s = sin.data() + (r % L) * sin.stride(0);
      for (index_t h = 0; h < heads; ++h) {
        T* v = x.data() + r * x.stride(0) + h * head_dim;
        for (index_t i = 0; i < half; ++i) {
          T const a = v[2 * i], b = v[2 * i + 1], ci = c[i], si = sign * s[i];
          v[2 * i] = a * ci - b * si;
          v[2 * i + 1] = a * si + b * ci;
        }
      }
    }
  }

  template <class T>
  static void attention_forward(cpu_eigen const&, matrix_view<const T> q, matrix_view<const T> k,
                                matrix_view<const T> v, matrix_view<T> out, nn::attention_options const& opt) {
    using namespace cpu::reverse_detail;
    using linalg::op;
    index_t const L = opt.seq_len, hd = opt.head_dim, group = opt.heads / opt.kv_heads;
    double const scale = scale_of<T>(opt);
    for_each_kv_item(opt, q.rows(), [&](index_t s, index_t g) {
      matrix_view<T> const p(thread_scratch<T, 0>(L * L), {L, L}, {L, 1});
      for (index_t h = g * group; h < (g + 1) * group; ++h) {
        probabilities(q, k, s, g, h, opt, p, scale);
        gemm<T>(matrix_view<const T>(p), op::none, block(v, s * L, L, g * hd, hd), op::none,
                block(out, s * L, L, h * hd, hd));
      }
    });
  }

  template <class T>
  static void attention_backward(cpu_eigen const&, matrix_view<const T> q, matrix_view<const T> k,
                                 matrix_view<const T> v, matrix_view<const T> d_out, matrix_view<T> dq,
                                 matrix_view<T> dk, matrix_view<T> dv, nn::attention_options const& opt) {
    using namespace cpu::reverse_detail;
    using linalg::op;
    index_t const L = opt.seq_len, hd = opt.head_dim, group = opt.heads / opt.kv_heads;
    double const scale = scale_of<T>(opt);
    for_each_kv_item(opt, q.rows(), [&](index_t s, index_t g) {
      matrix_view<T> const p(thread_scratch<T, 0>(L * L), {L, L}, {L, 1});
      matrix_view<T> const dp(thread_scratch<T, 1>(L * L), {L, L}, {L, 1});
      auto const kb = block(k, s * L, L, g * hd, hd), vb = block(v, s * L, L, g * hd, hd);
      auto const dks = block(dk, s * L, L, g * hd, hd), dvs = block(dv, s * L, L, g * hd, hd);
      for (index_t h = g * group; h < (g + 1) * group; ++h) {
        double const beta = h == g * group ? 0 : 1;  // the group's first head overwrites dk and dv
        probabilities(q, k, s, g, h, opt, p, scale);
        auto const go = block(d_out, s * L, L, h * hd, hd);
        gemm<T>(matrix_view<const T>(p), op::transpose, go, op::none, dvs, beta);  // dv += Pᵀ do
        gemm<T>(go, op::none, vb, op::transpose, dp);                              // dP = do vᵀ
        for (index_t i = 0; i < L; ++i) {                                          // dS = P ⊙ (dP − Σ_j P dP)
          T* dr = dp.data() + i * L;
          T const* pr = p.data() + i * L;
          double dot = 0;
          for (index_t j = 0; j <= i; ++j) dot += double(dr[j]) * double(pr[j]);
          for (index_t j = 0; j <= i; ++j) dr[j] = pr[j] * (dr[j] - T(dot));
          for (index_t j = i + 1; j < L; ++j) dr[j] = T(0);
        }
        gemm<T>(matrix_view<const T>(dp), op::none, kb, op::none, block(dq, s * L, L, h * hd, hd), 0, scale);
        gemm<T>(matrix_view<const T>(dp), op::transpose, block(q, s * L, L, h * hd, hd), op::none, dks, beta, scale);
      }
    });
  }

  template <class T>
  static void swiglu_forward(cpu_eigen const&, matrix_view<const T> a, matrix_view<const T> b, matrix_view<T> u) {
    using cpu::reverse_detail::sigmoid;
#pragma omp parallel for schedule(static) if (cpu::reverse_detail::parallel_worth(a.size()))
    for (index_t i = 0; i < a.rows(); ++i)
      for (index_t j = 0; j < a.cols(); ++j) {
        T const x = a(i, j);
        u(i, j) = x * sigmoid(x) * b(i, j);
      }
  }

  template <class T>
  static void swiglu_backward(cpu_eigen const&, matrix_view<T> a, matrix_view<T> b, matrix_view<const T> du) {
    using cpu::reverse_detail::sigmoid;
#pragma omp parallel for schedule(static) if (cpu::reverse_detail::parallel_worth(a.size()))
    for (index_t i = 0; i < a.rows(); ++i)
      for (index_t j = 0; j < a.cols(); ++j) {
        T const x = a(i, j), sg = sigmoid(x), gu = du(i, j);
        a(i, j) = gu * b(i, j) * sg * (T(1) + x * (T(1) - sg));
        b(i, j) = gu * x * sg;
      }
  }

  template <class T>
  static double cross_entropy(cpu_eigen const&, matrix_view<T> logits, matrix_view<const std::int32_t> ids,
                              index_t predictions, bool gradient) {
    index_t const rows = logits.rows(), V = logits.cols(), L = ids.cols();
    std::vector<double> row_loss(std::size_t(rows), 0.0);
#pragma omp parallel for schedule(static) if (cpu::reverse_detail::parallel_worth(logits.size()))
    for (index_t r = 0; r < rows; ++r) {
      T* z = logits.data() + r * logits.stride(0);
      index_t const s = r / L, t = r % L;
      if (t == L - 1) {
        if (gradient) std::fill(z, z + V, T(0));
        continue;
      }
      index_t const target = ids(s, t + 1);
      T mx = z[0];
      for (index_t j = 1; j < V; ++j) mx = std::max(mx, z[j]);
      double sum = 0;
      for (index_t j = 0; j < V; ++j) sum += std::exp(double(z[j] - mx));
      row_loss[std::size_t(r)] = std::log(sum) + double(mx) - double(z[target]);
      if (!gradient) continue;
      double const scale = 1.0 / sum / double(predictions);
      for (index_t j = 0; j < V; ++j) z[j] = T(std::exp(double(z[j] - mx)) * scale);
      z[target] -= T(1.0 / double(predictions));
    }
    double total = 0;
    for (double v : row_loss) total += v;  // in token order: the same sum for any thread count
    return total;
  }

 private:
  /// The softmax scale, rounded to T (as the products' α).
  template <class T>
  [[nodiscard]] static double scale_of(nn::attention_options const& opt) {
    return double(T(opt.softmax_scale > 0 ? opt.softmax_scale : 1.0 / std::sqrt(double(opt.head_dim))));
  }

  /// P ← causal_softmax(q_h k_gᵀ · scale) of sequence @p s into @p p (L, L).
  template <class T>
  static void probabilities(matrix_view<const T> q, matrix_view<const T> k, index_t s, index_t g, index_t h,
                            nn::attention_options const& opt, matrix_view<T> p, double scale) {
    using namespace cpu::reverse_detail;
    index_t const L = opt.seq_len, hd = opt.head_dim;
    gemm<T>(block(q, s * L, L, h * hd, hd), linalg::op::none, block(k, s * L, L, g * hd, hd), linalg::op::transpose, p,
            0, scale);
    causal_softmax(p);
  }
};

}  // namespace rsq::backend
