// SPDX-License-Identifier: MIT
// The reverse-pass pieces (<rsq/nn/reverse.hpp>) on every backend, in float, against independent float64 references
// written here: the forward pieces (rms_forward, rope, attention_forward, swiglu_forward, cross_entropy's loss)
// against their formulas, the reverses (rms_backward, rope with reverse, attention_backward, swiglu_backward,
// cross_entropy's gradient) against central differences of the forward formula or its derivative. Attention with GQA
// (4 query heads on 2 KV heads), several sequences, lengths that are not powers of two, q/k/v and dq/dk/dv as column
// ranges of fused qkv matrices, bf16 within a stated tolerance, and on the CUDA backend one sequence per sub-batch.
// Also: fill and gather_rows exactly, repeated calls giving the same bits, rejected arguments named in the message, on
// the CPU the same bits for 1 and 2 OpenMP threads, and the CPU's double instance against the differences to 1e-8.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <random>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <rsq/nn/reverse.hpp>

#include "nn/nn_support.hpp"

using namespace nn_test;

namespace {

namespace nn = rsq::nn;
using dvec = std::vector<double>;

dvec to_double(rsq::matrix<float> const& m) { return dvec(m.begin(), m.end()); }

/// The const view of a backend matrix (the front ends deduce T from views of const T).
template <class M>
rsq::matrix_view<const float> cview(M const& m) {
  return rsq::matrix_view<const float>(rsq::view(m));
}

/// A (rows, cols) matrix in backend B's memory, uninitialized.
template <class B>
auto make(index_t rows, index_t cols) {
  return rsq::backend::make_matrix<float>(B{}, rows, cols);
}

/// Token ids (sequences, L) in [0, vocab), seeded.
rsq::matrix<std::int32_t> random_ids(index_t sequences, index_t L, index_t vocab, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int32_t> pick(0, std::int32_t(vocab - 1));
  auto ids = rsq::make_matrix<std::int32_t>(sequences, L);
  for (auto& id : ids) id = pick(rng);
  return ids;
}

rsq::matrix_view<const std::int32_t> ids_view(rsq::matrix<std::int32_t> const& ids) { return rsq::view(ids); }

/// Central difference of @p f at @p x[i] in float64.
template <class F>
double central_difference(dvec& x, std::size_t i, F&& f, double h = 1e-5) {
  double const x0 = x[i];
  x[i] = x0 + h;
  double const up = f();
  x[i] = x0 - h;
  double const down = f();
  x[i] = x0;
  return (up - down) / (2 * h);
}

/// max |got − ref| / max |ref| over all entries of both.
double rel_error(dvec const& got, dvec const& ref) {
  REQUIRE(got.size() == ref.size());
  double num = 0, den = 1e-30;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    num = std::max(num, std::abs(got[i] - ref[i]));
    den = std::max(den, std::abs(ref[i]));
  }
  return num / den;
}

/// All entries of several host matrices, one after the other, as a (1, n) matrix (for the bitwise comparisons).
rsq::matrix<float> flat(std::initializer_list<rsq::matrix<float> const*> parts) {
  index_t n = 0;
  for (auto const* p : parts) n += index_t(p->size());
  auto out = rsq::make_matrix<float>(1, n);
  index_t at = 0;
  for (auto const* p : parts)
    for (float v : *p) out(0, at++) = v;
  return out;
}

// ---- float64 references --------------------------------------------------------------------------------------------

/// RMSNorm with unit gains of one row: x / √(mean x² + eps).
double rms_inverse(double const* x, index_t d, double eps) {
  double ss = 0;
  for (index_t j = 0; j < d; ++j) ss += x[j] * x[j];
  return 1.0 / std::sqrt(ss / double(d) + eps);
}

/// RoPE of @p x (rows, heads·d): pair (2i, 2i+1) of each head of row r rotated by ±(r mod L)·theta^(−2i/d).
dvec rope_reference(dvec const& x, index_t rows, index_t cols, index_t L, index_t d, double theta, bool reverse) {
  dvec y(x.size());
  for (index_t r = 0; r < rows; ++r)
    for (index_t h = 0; h < cols / d; ++h)
      for (index_t i = 0; i < d / 2; ++i) {
        double const angle = (reverse ? -1.0 : 1.0) * double(r % L) * std::pow(theta, -double(2 * i) / double(d));
        std::size_t const at = std::size_t(r * cols + h * d + 2 * i);
        double const a = x[at], b = x[at + 1];
        y[at] = a * std::cos(angle) - b * std::sin(angle);
        y[at + 1] = a * std::sin(angle) + b * std::cos(angle);
      }
  return y;
}

struct shape {
  index_t S, L, H, KV, d;
  [[nodiscard]] index_t tokens() const { return S * L; }
  [[nodiscard]] nn::attention_options options(double scale = 0,
                                              rsq::matmul_precision p = rsq::matmul_precision::fp32) const {
    return {.seq_len = L, .heads = H, .kv_heads = KV, .head_dim = d, .softmax_scale = scale, .precision = p};
  }
};

/// Causal softmax attention with GQA in float64: q (tokens, H·d), k and v (tokens, KV·d), row-major.
dvec attention_reference(dvec const& q, dvec const& k, dvec const& v, shape const& s, double scale) {
  index_t const wq = s.H * s.d, wk = s.KV * s.d, group = s.H / s.KV, L = s.L, d = s.d;
  dvec out(std::size_t(s.tokens() * wq), 0.0), p(static_cast<std::size_t>(L));
  for (index_t sq = 0; sq < s.S; ++sq)
    for (index_t h = 0; h < s.H; ++h) {
      index_t const g = h / group;
      for (index_t i = 0; i < L; ++i) {
        double const* qi = q.data() + (sq * L + i) * wq + h * d;
        double mx = -std::numeric_limits<double>::infinity(), sum = 0;
        for (index_t t = 0; t <= i; ++t) {
          double const* kt = k.data() + (sq * L + t) * wk + g * d;
          double dot = 0;
          for (index_t c = 0; c < d; ++c) dot += qi[c] * kt[c];
          p[std::size_t(t)] = dot * scale;
          mx = std::max(mx, p[std::size_t(t)]);
        }
        for (index_t t = 0; t <= i; ++t) sum += (p[std::size_t(t)] = std::exp(p[std::size_t(t)] - mx));
        double* oi = out.data() + (sq * L + i) * wq + h * d;
        for (index_t t = 0; t <= i; ++t) {
          double const* vt = v.data() + (sq * L + t) * wk + g * d;
          for (index_t c = 0; c < d; ++c) oi[c] += p[std::size_t(t)] / sum * vt[c];
        }
      }
    }
  return out;
}

double inner(dvec const& a, dvec const& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

/// ∂/∂q, ∂/∂k, ∂/∂v of ⟨d_out, attention(q, k, v)⟩ by central differences in float64.
struct attention_grads {
  dvec dq, dk, dv;
};
attention_grads attention_differences(dvec q, dvec k, dvec v, dvec const& d_out, shape const& s, double scale) {
  auto const f = [&] { return inner(d_out, attention_reference(q, k, v, s, scale)); };
  attention_grads g{dvec(q.size()), dvec(k.size()), dvec(v.size())};
  for (std::size_t i = 0; i < q.size(); ++i) g.dq[i] = central_difference(q, i, f);
  for (std::size_t i = 0; i < k.size(); ++i) g.dk[i] = central_difference(k, i, f);
  for (std::size_t i = 0; i < v.size(); ++i) g.dv[i] = central_difference(v, i, f);
  return g;
}

/// −log softmax(z)[target] of one row in float64.
double row_loss(double const* z, index_t vocab, index_t target) {
  double mx = z[0], sum = 0;
  for (index_t j = 1; j < vocab; ++j) mx = std::max(mx, z[j]);
  for (index_t j = 0; j < vocab; ++j) sum += std::exp(z[j] - mx);
  return std::log(sum) + mx - z[target];
}

// ---- running the pieces on a backend -------------------------------------------------------------------------------

/// For one scope, the CUDA attention's scratch shrunk to one sequence per sub-batch; nothing for the CPU backend.
template <class B>
struct one_sequence_batches {
#if defined(RSQ_WITH_CUDA) && RSQ_WITH_CUDA
  rsq::cuda::reverse_tuning saved = rsq::cuda::reverse_pass_tuning();
  one_sequence_batches() {
    if constexpr (std::is_same_v<B, rsq::backend::cuda>) rsq::cuda::reverse_pass_tuning().attention_bytes = 1;
  }
  ~one_sequence_batches() { rsq::cuda::reverse_pass_tuning() = saved; }
#else
  one_sequence_batches() = default;
#endif
  one_sequence_batches(one_sequence_batches const&) = delete;
  one_sequence_batches& operator=(one_sequence_batches const&) = delete;
};

struct qkv {
  rsq::matrix<float> q, k, v;
};
qkv random_qkv(shape const& s, unsigned seed) {
  return {random_matrix(s.tokens(), s.H * s.d, seed), random_matrix(s.tokens(), s.KV * s.d, seed + 1),
          random_matrix(s.tokens(), s.KV * s.d, seed + 2)};
}

/// The host matrix [q | k | v] (tokens, (H + 2·KV)·d).
rsq::matrix<float> fuse(qkv const& in, shape const& s) {
  index_t const wq = s.H * s.d, wk = s.KV * s.d;
  auto out = rsq::make_matrix<float>(s.tokens(), wq + 2 * wk);
  for (index_t r = 0; r < s.tokens(); ++r) {
    for (index_t c = 0; c < wq; ++c) out(r, c) = in.q(r, c);
    for (index_t c = 0; c < wk; ++c) {
      out(r, wq + c) = in.k(r, c);
      out(r, wq + wk + c) = in.v(r, c);
    }
  }
  return out;
}

/// attention_forward on backend B; with @p fused, q, k and v are column ranges of one [q | k | v] matrix.
template <class B>
rsq::matrix<float> run_attention_forward(qkv const& in, shape const& s, nn::attention_options const& opt,
                                         bool fused = false) {
  index_t const wq = s.H * s.d, wk = s.KV * s.d;
  auto out = make<B>(s.tokens(), wq);
  if (fused) {
    auto all = upload<B>(fuse(in, s));
    nn::attention_forward(B{}, rsq::matrix_view<const float>(column_view(all, 0, wq)),
                          rsq::matrix_view<const float>(column_view(all, wq, wk)),
                          rsq::matrix_view<const float>(column_view(all, wq + wk, wk)), rsq::view(out), opt);
  } else {
    auto const q = upload<B>(in.q);
    auto const k = upload<B>(in.k);
    auto const v = upload<B>(in.v);
    nn::attention_forward(B{}, cview(q), cview(k), cview(v), rsq::view(out), opt);
  }
  return download<B>(out);
}

struct grads {
  rsq::matrix<float> dq, dk, dv;
};

/// attention_backward on backend B, the gradients' memory holding 7s before (they must be overwritten); with
/// @p fused, q/k/v and dq/dk/dv are column ranges of fused matrices.
template <class B>
grads run_attention_backward(qkv const& in, rsq::matrix<float> const& d_out, shape const& s,
                             nn::attention_options const& opt, bool fused = false) {
  B const be;
  index_t const wq = s.H * s.d, wk = s.KV * s.d, T = s.tokens();
  auto const g = upload<B>(d_out);
  if (fused) {
    auto all = upload<B>(fuse(in, s));
    auto dall = make<B>(T, wq + 2 * wk);
    nn::fill(be, rsq::view(dall), 7.f);
    nn::attention_backward(be, rsq::matrix_view<const float>(column_view(all, 0, wq)),
                           rsq::matrix_view<const float>(column_view(all, wq, wk)),
                           rsq::matrix_view<const float>(column_view(all, wq + wk, wk)), cview(g),
                           column_view(dall, 0, wq), column_view(dall, wq, wk), column_view(dall, wq + wk, wk), opt);
    return {download_columns<B>(dall, 0, wq), download_columns<B>(dall, wq, wk),
            download_columns<B>(dall, wq + wk, wk)};
  }
  auto const q = upload<B>(in.q);
  auto const k = upload<B>(in.k);
  auto const v = upload<B>(in.v);
  auto dq = make<B>(T, wq);
  auto dk = make<B>(T, wk);
  auto dv = make<B>(T, wk);
  for (auto* m : {&dq, &dk, &dv}) nn::fill(be, rsq::view(*m), 7.f);
  nn::attention_backward(be, cview(q), cview(k), cview(v), cview(g), rsq::view(dq), rsq::view(dk), rsq::view(dv), opt);
  return {download<B>(dq), download<B>(dk), download<B>(dv)};
}

/// cross_entropy on backend B: the loss and the logits after the call.
template <class B>
std::pair<double, rsq::matrix<float>> run_cross_entropy(rsq::matrix<float> const& logits,
                                                        rsq::matrix<std::int32_t> const& ids, index_t predictions,
                                                        bool gradient) {
  auto z = upload<B>(logits);
  double const loss = nn::cross_entropy(B{}, rsq::view(z), ids_view(ids), predictions, gradient);
  return {loss, download<B>(z)};
}

}  // namespace

TEST_SUITE("nn.reverse") {
  TEST_CASE_TEMPLATE("fill and gather_rows write exactly what they are given", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be;
    auto const m0 = random_matrix(5, 12, 1);
    auto m = upload<B>(m0);
    nn::fill(be, column_view(m, 3, 6), 2.5f);  // rows with a stride: columns 3..8 only
    auto const got = download<B>(m);
    for (index_t r = 0; r < 5; ++r)
      for (index_t c = 0; c < 12; ++c) CHECK(got(r, c) == (c >= 3 && c < 9 ? 2.5f : m0(r, c)));

    auto const table = random_matrix(11, 7, 2);
    auto const ids = random_ids(2, 5, 11, 3);
    auto const td = upload<B>(table);
    auto out = make<B>(10, 7);
    nn::gather_rows(be, ids_view(ids), cview(td), rsq::view(out));
    auto const rows = download<B>(out);
    for (index_t s = 0; s < 2; ++s)
      for (index_t t = 0; t < 5; ++t)
        for (index_t c = 0; c < 7; ++c) CHECK(rows(s * 5 + t, c) == table(ids(s, t), c));
  }

  TEST_CASE_TEMPLATE("rms_forward and rms_backward against float64", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be;
    for (auto const& item : {std::tuple<index_t, index_t, double>{1, 5, 1.0}, {13, 37, 2.0}, {5, 300, 0.01}}) {
      auto const rows = std::get<0>(item);
      auto const d = std::get<1>(item);
      auto const sd = std::get<2>(item);
      CAPTURE(rows);
      CAPTURE(d);
      double const eps = 1e-5;
      auto const x = random_matrix(rows, d, 10, sd);
      auto const dy = random_matrix(rows, d, 11);
      auto const dx0 = random_matrix(rows, d, 12);
      auto const xd = upload<B>(x);
      auto const dyd = upload<B>(dy);
      auto y = make<B>(rows, d);
      auto r = make<B>(1, rows);
      rsq::vector_view<float> const rv(rsq::view(r).data(), rows);
      nn::rms_forward(be, cview(xd), float(eps), rsq::view(y), rv);
      auto dx = upload<B>(dx0);
      nn::rms_backward(be, cview(y), rsq::vector_view<const float>(rv), cview(dyd), rsq::view(dx));

      dvec xs = to_double(x), y_ref(xs.size()), r_ref(static_cast<std::size_t>(rows)), dx_ref(xs.size());
      for (index_t i = 0; i < rows; ++i) {
        double* xr = xs.data() + i * d;
        r_ref[std::size_t(i)] = rms_inverse(xr, d, eps);
        for (index_t j = 0; j < d; ++j) y_ref[std::size_t(i * d + j)] = xr[j] * r_ref[std::size_t(i)];
        auto const f = [&] {  // ⟨dy_i, rms(x_i)⟩
          double const ri = rms_inverse(xr, d, eps);
          double s = 0;
          for (index_t j = 0; j < d; ++j) s += double(dy(i, j)) * xr[j] * ri;
          return s;
        };
        for (index_t j = 0; j < d; ++j)
          dx_ref[std::size_t(i * d + j)] = central_difference(xs, std::size_t(i * d + j), f, 1e-6 * sd);
      }
      CHECK(max_rel(download<B>(y), y_ref) < 1e-6);
      CHECK(max_rel(download<B>(r), r_ref) < 1e-6);
      auto const got = to_double(download<B>(dx));
      dvec step(got.size());
      for (std::size_t i = 0; i < got.size(); ++i) step[i] = got[i] - double(dx0.data()[i]);
      CHECK(rel_error(step, dx_ref) < 1e-5);
    }
  }

  TEST_CASE_TEMPLATE("rope by +angle and its reverse by -angle against float64", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be;
    index_t const S = 3, L = 6, heads = 3, d = 8, half = d / 2, T = S * L, cols = heads * d;
    double const theta = 1e4;
    auto cos_t = rsq::make_matrix<float>(L, half);
    auto sin_t = rsq::make_matrix<float>(L, half);
    for (index_t p = 0; p < L; ++p)
      for (index_t i = 0; i < half; ++i) {
        double const angle = double(p) * std::pow(theta, -double(2 * i) / double(d));
        cos_t(p, i) = float(std::cos(angle));
        sin_t(p, i) = float(std::sin(angle));
      }
    auto const cd = upload<B>(cos_t);
    auto const sd = upload<B>(sin_t);
    auto const x = random_matrix(T, cols + 5, 20);  // the rotated columns and 5 more that stay
    for (bool const reverse : {false, true}) {
      CAPTURE(reverse);
      auto xd = upload<B>(x);
      nn::rope(be, column_view(xd, 0, cols), cview(cd), cview(sd), d, reverse);
      auto const got = download<B>(xd);
      CHECK(max_rel(columns(got, 0, cols), rope_reference(to_double(columns(x, 0, cols)), T, cols, L, d, theta,
                                                          reverse)) < 1e-6);
      CHECK(same_bits(columns(got, cols, 5), columns(x, cols, 5)));
    }
    // The reverse undoes the rotation (it is its transpose).
    auto xd = upload<B>(x);
    nn::rope(be, column_view(xd, 0, cols), cview(cd), cview(sd), d, false);
    nn::rope(be, column_view(xd, 0, cols), cview(cd), cview(sd), d, true);
    CHECK(max_abs(download<B>(xd), to_double(x)) < 2e-6);
  }

  TEST_CASE_TEMPLATE("attention_forward equals causal softmax attention (GQA) in float64", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    for (auto const& item : {std::tuple<shape, double>{{3, 7, 4, 2, 8}, 0.0},
                                             {{1, 1, 2, 1, 4}, 0.0},
                                             {{2, 19, 4, 2, 16}, 0.3},
                                             {{2, 5, 3, 3, 6}, 0.0}}) {
      auto const s = std::get<0>(item);
      auto const explicit_scale = std::get<1>(item);
      CAPTURE(s.S);
      CAPTURE(s.L);
      CAPTURE(s.H);
      CAPTURE(s.KV);
      CAPTURE(s.d);
      double const scale = explicit_scale > 0 ? explicit_scale : 1.0 / std::sqrt(double(s.d));
      auto const in = random_qkv(s, 30);
      auto const ref = attention_reference(to_double(in.q), to_double(in.k), to_double(in.v), s, scale);
      auto const opt = s.options(explicit_scale);
      auto const out = run_attention_forward<B>(in, s, opt);
      CHECK(max_rel(out, ref) < 1e-5);
      CHECK(same_bits(run_attention_forward<B>(in, s, opt), out));  // the same bits from run to run
      CHECK(max_rel(run_attention_forward<B>(in, s, opt, true), ref) < 1e-5);  // fused qkv: rows with a stride
      {
        [[maybe_unused]] one_sequence_batches<B> const small;
        CHECK(max_rel(run_attention_forward<B>(in, s, opt), ref) < 1e-5);
      }
      CHECK(max_rel(run_attention_forward<B>(in, s, s.options(explicit_scale, rsq::matmul_precision::bf16)), ref) <
            5e-2);
    }
  }

  TEST_CASE_TEMPLATE("attention_backward against central differences of <d_out, attention>", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    for (auto const& s : {shape{3, 7, 4, 2, 8}, shape{2, 5, 2, 2, 6}, shape{1, 1, 4, 2, 4}}) {
      CAPTURE(s.S);
      CAPTURE(s.L);
      CAPTURE(s.H);
      CAPTURE(s.KV);
      CAPTURE(s.d);
      double const scale = 1.0 / std::sqrt(double(s.d));
      auto const in = random_qkv(s, 40);
      auto const d_out = random_matrix(s.tokens(), s.H * s.d, 43);
      auto const ref = attention_differences(to_double(in.q), to_double(in.k), to_double(in.v), to_double(d_out), s,
                                             scale);
      auto const check = [&](grads const& g, double tol) {
        CHECK(rel_error(to_double(g.dq), ref.dq) < tol);
        CHECK(rel_error(to_double(g.dk), ref.dk) < tol);
        CHECK(rel_error(to_double(g.dv), ref.dv) < tol);
      };
      auto const opt = s.options();
      auto const g = run_attention_backward<B>(in, d_out, s, opt);
      check(g, 1e-5);
      auto const again = run_attention_backward<B>(in, d_out, s, opt);
      CHECK(same_bits(flat({&g.dq, &g.dk, &g.dv}), flat({&again.dq, &again.dk, &again.dv})));
      check(run_attention_backward<B>(in, d_out, s, opt, true), 1e-5);  // fused q/k/v and dq/dk/dv
      {
        [[maybe_unused]] one_sequence_batches<B> const small;
        check(run_attention_backward<B>(in, d_out, s, opt), 1e-5);
      }
      check(run_attention_backward<B>(in, d_out, s, s.options(0, rsq::matmul_precision::bf16)), 5e-2);
    }
  }

  TEST_CASE_TEMPLATE("swiglu_forward and swiglu_backward against float64", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be;
    for (double const sd : {1.0, 3.0, 30.0}) {
      CAPTURE(sd);
      index_t const rows = 9, cols = 23;
      auto const a = random_matrix(rows, cols, 50, sd);
      auto const b = random_matrix(rows, cols, 51);
      auto const du = random_matrix(rows, cols, 52);
      auto ad = upload<B>(a);
      auto bd = upload<B>(b);
      auto const dud = upload<B>(du);
      auto u = make<B>(rows, cols);
      nn::swiglu_forward(be, cview(ad), cview(bd), rsq::view(u));
      nn::swiglu_backward(be, rsq::view(ad), rsq::view(bd), cview(dud));
      dvec u_ref(a.size()), da_ref(a.size()), db_ref(a.size());
      for (std::size_t i = 0; i < a.size(); ++i) {
        double const x = a.data()[i], y = b.data()[i], g = du.data()[i], sg = 1.0 / (1.0 + std::exp(-x));
        u_ref[i] = x * sg * y;
        da_ref[i] = g * y * sg * (1.0 + x * (1.0 - sg));  // d/da of a·σ(a)·b
        db_ref[i] = g * x * sg;
      }
      CHECK(max_rel(download<B>(u), u_ref) < 1e-6);
      CHECK(max_rel(download<B>(ad), da_ref) < 1e-6);
      CHECK(max_rel(download<B>(bd), db_ref) < 1e-6);
    }
  }

  TEST_CASE_TEMPLATE("cross_entropy: the loss sum against float64, the gradient against central differences", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    for (auto const& item : {std::tuple<index_t, index_t, index_t>{3, 5, 37}, {2, 3, 1000}, {1, 2, 2}}) {
      auto const S = std::get<0>(item);
      auto const L = std::get<1>(item);
      auto const V = std::get<2>(item);
      CAPTURE(S);
      CAPTURE(L);
      CAPTURE(V);
      index_t const rows = S * L, predictions = S * (L - 1) + 7;  // as if another chunk had 7 more predictions
      auto const logits = random_matrix(rows, V, 60, 2.0);
      auto const ids = random_ids(S, L, V, 61);
      dvec z = to_double(logits), grad_ref(z.size(), 0.0);
      double loss_ref = 0;
      for (index_t r = 0; r < rows; ++r) {
        index_t const s = r / L, t = r % L;
        if (t == L - 1) continue;
        double* zr = z.data() + r * V;
        index_t const target = ids(s, t + 1);
        loss_ref += row_loss(zr, V, target);
        auto const f = [&] { return row_loss(zr, V, target) / double(predictions); };  // its share of the mean
        for (index_t j = 0; j < V; ++j)
          grad_ref[std::size_t(r * V + j)] = central_difference(z, std::size_t(r * V + j), f);
      }
      auto const plain = run_cross_entropy<B>(logits, ids, predictions, false);
      CHECK(plain.first == doctest::Approx(loss_ref).epsilon(1e-6));
      CHECK(same_bits(plain.second, logits));  // no gradient: the logits untouched
      auto const with_gradient = run_cross_entropy<B>(logits, ids, predictions, true);
      CHECK(with_gradient.first == plain.first);  // the same bits with and without the gradient
      auto const& grad = with_gradient.second;
      CHECK(rel_error(to_double(grad), grad_ref) < 1e-5);
      for (index_t s = 0; s < S; ++s)
        for (index_t j = 0; j < V; ++j) CHECK(grad(s * L + L - 1, j) == 0.f);
      auto const again = run_cross_entropy<B>(logits, ids, predictions, true);
      CHECK(again.first == plain.first);
      CHECK(same_bits(again.second, grad));
    }
  }

  TEST_CASE_TEMPLATE("the reverse-pass pieces reject bad arguments, naming them", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be;
    shape const s{2, 3, 4, 2, 4};
    auto const in = random_qkv(s, 70);
    auto const q = upload<B>(in.q);
    auto const k = upload<B>(in.k);
    auto const v = upload<B>(in.v);
    auto out = make<B>(s.tokens(), s.H * s.d - 1);
    CHECK_THROWS_WITH_AS(nn::attention_forward(be, cview(q), cview(k), cview(v), rsq::view(out), s.options()),
                         doctest::Contains("attention_forward: out must be (6 x 16), got (6 x 15)"),
                         rsq::invalid_argument);
    auto out_ok = make<B>(s.tokens(), s.H * s.d);
    auto bad = s.options();
    bad.kv_heads = 3;
    CHECK_THROWS_WITH_AS(nn::attention_forward(be, cview(q), cview(k), cview(v), rsq::view(out_ok), bad),
                         doctest::Contains("attention_forward: seq_len, heads, kv_heads and head_dim must be positive"),
                         rsq::invalid_argument);

    auto const table = upload<B>(random_matrix(11, 7, 71));
    auto ids = random_ids(2, 3, 11, 72);
    ids(1, 2) = 11;
    auto rows = make<B>(6, 7);
    CHECK_THROWS_WITH_AS(nn::gather_rows(be, ids_view(ids), cview(table), rsq::view(rows)),
                         doctest::Contains("gather_rows: token id 11 at (1, 2) is outside [0, 11)"),
                         rsq::invalid_argument);
    auto logits = upload<B>(random_matrix(6, 11, 73));
    ids(1, 2) = -1;
    CHECK_THROWS_WITH_AS((void)nn::cross_entropy(be, rsq::view(logits), ids_view(ids), 4, true),
                         doctest::Contains("cross_entropy: token id -1 at (1, 2) is outside [0, 11)"),
                         rsq::invalid_argument);

    auto const x = upload<B>(random_matrix(4, 8, 74));
    auto y = make<B>(4, 8);
    auto r = make<B>(1, 3);
    rsq::vector_view<float> const r3(rsq::view(r).data(), 3);
    CHECK_THROWS_WITH_AS(nn::rms_forward(be, cview(x), 1e-5f, rsq::view(y), r3),
                         doctest::Contains("rms_forward: r has 3 values for 4 rows"), rsq::invalid_argument);
  }

#if defined(_OPENMP)
  TEST_CASE("the reverse-pass pieces on the CPU: the same bits for 1 and 2 OpenMP threads") {
    rsq::backend::cpu_eigen const be;
    shape const s{4, 13, 4, 2, 8};
    auto const in = random_qkv(s, 80);
    auto const d_out = random_matrix(s.tokens(), s.H * s.d, 83);
    CHECK(same_bits_for_1_and_2_threads([&] {
      auto out = rsq::make_matrix<float>(s.tokens(), s.H * s.d);
      nn::attention_forward(be, cview(in.q), cview(in.k), cview(in.v), rsq::view(out), s.options());
      auto const g = run_attention_backward<rsq::backend::cpu_eigen>(in, d_out, s, s.options());
      return flat({&out, &g.dq, &g.dk, &g.dv});
    }));

    auto const x = random_matrix(200, 64, 84);
    auto const dy = random_matrix(200, 64, 85);
    CHECK(same_bits_for_1_and_2_threads([&] {
      auto y = rsq::make_matrix<float>(200, 64), dx = rsq::make_matrix<float>(200, 64);
      auto r = rsq::make_matrix<float>(1, 200);
      rsq::vector_view<float> const rv(r.data(), 200);
      nn::rms_forward(be, cview(x), 1e-5f, rsq::view(y), rv);
      nn::fill(be, rsq::view(dx), 0.f);
      nn::rms_backward(be, cview(y), rsq::vector_view<const float>(rv), cview(dy), rsq::view(dx));
      auto a = x, b = dy, u = rsq::make_matrix<float>(200, 64);
      nn::swiglu_forward(be, cview(a), cview(b), rsq::view(u));
      nn::swiglu_backward(be, rsq::view(a), rsq::view(b), cview(y));
      return flat({&y, &r, &dx, &u, &a, &b});
    }));

    auto const logits = random_matrix(150, 300, 86, 2.0);
    auto const ids = random_ids(10, 15, 300, 87);
    double loss1 = 0, loss2 = 0;
    rsq::matrix<float> g1, g2;
    {
      omp_threads const one(1);
      std::tie(loss1, g1) = run_cross_entropy<rsq::backend::cpu_eigen>(logits, ids, 140, true);
    }
    {
      omp_threads const two(2);
      std::tie(loss2, g2) = run_cross_entropy<rsq::backend::cpu_eigen>(logits, ids, 140, true);
    }
    CHECK(loss1 == loss2);
    CHECK(same_bits(g1, g2));
  }
#endif

  TEST_CASE("attention_backward in double on the CPU matches central differences to 1e-8") {
    rsq::backend::cpu_eigen const be;
    shape const s{2, 6, 4, 2, 4};
    double const scale = 1.0 / std::sqrt(double(s.d));
    auto const in = random_qkv(s, 90);
    auto const d_out = random_matrix(s.tokens(), s.H * s.d, 93);
    auto const to_d = [](rsq::matrix<float> const& m) {
      auto out = rsq::make_matrix<double>(index_t(m.shape()[0]), index_t(m.shape()[1]));
      std::copy(m.begin(), m.end(), out.begin());
      return out;
    };
    auto const q = to_d(in.q), k = to_d(in.k), v = to_d(in.v), g = to_d(d_out);
    auto dq = rsq::make_matrix<double>(s.tokens(), s.H * s.d);
    auto dk = rsq::make_matrix<double>(s.tokens(), s.KV * s.d);
    auto dv = rsq::make_matrix<double>(s.tokens(), s.KV * s.d);
    using cd = rsq::matrix_view<const double>;
    nn::attention_backward(be, cd(rsq::view(q)), cd(rsq::view(k)), cd(rsq::view(v)), cd(rsq::view(g)), rsq::view(dq),
                           rsq::view(dk), rsq::view(dv), s.options());
    auto const ref = attention_differences(to_double(in.q), to_double(in.k), to_double(in.v), to_double(d_out), s,
                                           scale);
    CHECK(rel_error(dvec(dq.begin(), dq.end()), ref.dq) < 1e-8);
    CHECK(rel_error(dvec(dk.begin(), dk.end()), ref.dk) < 1e-8);
    CHECK(rel_error(dvec(dv.begin(), dv.end()), ref.dv) < 1e-8);
  }
}
