// SPDX-License-Identifier: MIT
// The CPU backend gives the same bits for every thread count (issue 14, "Determinism"): each multi-threaded path is
// run with omp_set_num_threads(1), 2 and 3 (3 threads on a 2-core machine still split the work three ways) and its
// results compared bit for bit:
//  - rsq::linalg::gemm (depth past Eigen's 320 cap on several threads, odd sizes, every op) and the kernels' product
//    gemm_update inside and outside a parallel region;
//  - the Cholesky, the triangular inverse, GPTQ's upper Cholesky factor of H⁻¹ and the SYRK (tile task graphs);
//  - the Hessian accumulator with and without token weights (features past 320);
//  - gptq::factor and gptq::solve (512+ columns, row counts whose panels split differently with the thread count,
//    act-order, groups, static groups, float and double);
//  - the Hadamard transform (2^m, K·2^m on contiguous rows, on columns, a single long row);
//  - AttnCon from queries and keys, and from probabilities.
// Without OpenMP there is one thread: the cases say SKIPPED.
#include <doctest/doctest.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <rsq/backend/cpu/gemm.hpp>
#include <rsq/backend/cpu/linalg.hpp>
#include <rsq/core/tensor.hpp>
#include <rsq/gptq/solve.hpp>
#include <rsq/hessian/accumulator.hpp>
#include <rsq/importance/attncon.hpp>
#include <rsq/linalg/gemm.hpp>
#include <rsq/rotation/hadamard.hpp>

#include "linalg/linalg_support.hpp"

namespace {

using rsq::index_t;

#if defined(_OPENMP)

/// Runs @p f with the OpenMP (and Eigen) thread count set to @p n, restoring the old count after it.
template <class F>
auto with_threads(int n, F&& f) {
  int const saved = omp_get_max_threads();
  omp_set_num_threads(n);
  Eigen::setNbThreads(n);
  struct restore {
    int n;
    ~restore() {
      omp_set_num_threads(n);
      Eigen::setNbThreads(n);
    }
  } const r{saved};
  return f();
}

/// @p f's result with 1, 2 and 3 threads; CHECKs that they are identical (operator== of the result type).
template <class F>
void check_same_for_thread_counts(F&& f, std::string const& what) {
  auto const one = with_threads(1, f);
  for (int n : {2, 3}) {
    auto const other = with_threads(n, f);
    CHECK_MESSAGE(bool(other == one), what, ": ", n, " threads differ from 1");
  }
}

using linalg_test::uniform_matrix;

/// Bit patterns of a float array, so that NaN == NaN and -0 != +0 where results are compared.
template <class A>
std::vector<std::uint64_t> bits(A const& a) {
  std::vector<std::uint64_t> out;
  out.reserve(a.size());
  for (auto v : a) {
    using V = std::remove_cvref_t<decltype(v)>;
    if constexpr (sizeof(V) == 8) {
      std::uint64_t b;
      std::memcpy(&b, &v, 8);
      out.push_back(b);
    } else if constexpr (sizeof(V) == 4) {
      std::uint32_t b;
      std::memcpy(&b, &v, 4);
      out.push_back(b);
    } else {
      out.push_back(std::uint64_t(v));
    }
  }
  return out;
}

/// A symmetric positive definite Hessian X Xᵀ-like (n, n) with a spread diagonal, as from calibration data.
template <class T>
rsq::matrix<T> hessian_of(index_t n, std::uint64_t seed) {
  auto const x = uniform_matrix<double>(n + 64, n, seed);  // (tokens, features)
  Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> const> xm(x.data(), n + 64, n);
  Eigen::MatrixXd h = xm.transpose() * xm / double(n);
  for (index_t i = 0; i < n; ++i) h(i, i) += 0.01 * double(1 + i % 7);
  auto out = rsq::make_matrix_for_overwrite<T>(n, n);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n; ++j) out(i, j) = T(h(i, j));
  return out;
}

TEST_SUITE("determinism") {

TEST_CASE_TEMPLATE("linalg::gemm gives the same bits for 1, 2 and 3 threads", T, float, double) {
  using rsq::linalg::op;
  // Depth past the 320 at which Eigen's multi-threaded product starts cutting it; odd sizes leave partial panels.
  for (auto const& [m, n, k] : {std::array<index_t, 3>{301, 517, 703}, {1000, 777, 1500}, {8, 2049, 641},
                               {2049, 8, 641}, {1, 333, 1001}, {97, 1, 1001}}) {
    for (op oa : {op::none, op::transpose})
      for (op ob : {op::none, op::transpose}) {
        auto const a = oa == op::none ? uniform_matrix<T>(m, k, 1) : uniform_matrix<T>(k, m, 1);
        auto const b = ob == op::none ? uniform_matrix<T>(k, n, 2) : uniform_matrix<T>(n, k, 2);
        auto const c0 = uniform_matrix<T>(m, n, 3);
        check_same_for_thread_counts(
            [&] {
              auto c = c0;
              rsq::linalg::gemm(rsq::backend::cpu_eigen{}, rsq::view(a), oa, rsq::view(b), ob, rsq::view(c),
                                {.alpha = 0.75, .beta = -1.5});
              return bits(c);
            },
            "gemm " + std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k) + " ops " +
                std::to_string(int(oa)) + std::to_string(int(ob)));
      }
  }
}

TEST_CASE_TEMPLATE("the kernels' gemm_update: the same bits inside and outside a parallel region", T, float,
                   double) {
  using mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  using row_mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  for (auto const& [m, n, k] : {std::array<index_t, 3>{1003, 517, 911}, {400, 1200, 333}, {4096, 64, 1024}}) {
    mat const a = mat::Random(m, k);
    row_mat const b = row_mat::Random(k, n);
    mat const c0 = mat::Random(m, n);
    auto outside = [&] {
      mat c = c0;
      rsq::cpu::detail::gemm_update<T>(c, a, b, T(-1));
      return bits(c.reshaped());
    };
    check_same_for_thread_counts(outside, "gemm_update " + std::to_string(m) + "x" + std::to_string(n));
    // Inside a parallel region every product is one sequential product: the same bits as the tiled one.
    mat c_inside = c0;
#pragma omp parallel num_threads(2)
#pragma omp single
    rsq::cpu::detail::gemm_update<T>(c_inside, a, b, T(-1));
    CHECK(bits(c_inside.reshaped()) == with_threads(2, outside));
  }
}

TEST_CASE_TEMPLATE("Cholesky, triangular inverse, upper Cholesky of H^-1 and SYRK: the same bits for 1, 2, 3 threads",
                   T, float, double) {
  using mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  for (index_t n : {300, 700, 1100}) {  // below, at and above two tiles (the task graphs)
    auto const h = hessian_of<T>(n, std::uint64_t(n));
    mat const a = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> const>(h.data(), n, n);
    std::string const at = " n " + std::to_string(n);
    check_same_for_thread_counts(
        [&] {
          mat l = a;
          auto const info = rsq::cpu::cholesky_lower_inplace(l);
          return std::pair(info, bits(l.reshaped()));
        },
        "cholesky_lower_inplace" + at);
    mat l = a;
    REQUIRE(rsq::cpu::cholesky_lower_inplace(l) < 0);
    check_same_for_thread_counts(
        [&] {
          mat inv = l;
          rsq::cpu::invert_lower_triangular_inplace(inv);
          return bits(inv.reshaped());
        },
        "invert_lower_triangular_inplace" + at);
    check_same_for_thread_counts(
        [&] {
          mat u = a;
          auto const info = rsq::cpu::upper_cholesky_of_inverse_inplace(u);
          return std::pair(info, bits(u.reshaped()));
        },
        "upper_cholesky_of_inverse_inplace" + at);
    // SYRK of tokens x n inputs, both storage orders (row-major is how activations come).
    auto const x = uniform_matrix<T>(1500, n, 5);
    Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> const> xr(x.data(), 1500, n);
    mat const xc = xr;
    check_same_for_thread_counts(
        [&] {
          mat c = mat::Zero(n, n);
          rsq::cpu::syrk_lower_update(c, xr, T(1));
          rsq::cpu::syrk_lower_update(c, xc, T(-0.5));
          return bits(c.reshaped());
        },
        "syrk_lower_update" + at);
  }
}

TEST_CASE_TEMPLATE("the Hessian accumulator gives the same bits for 1, 2 and 3 threads", T, float, double) {
  index_t const sequences = 3, tokens = 517;
  for (index_t features : {333, 1030}) {
    auto const x = uniform_matrix<float>(sequences * tokens, features, 7);  // (sequences · tokens, features)
    rsq::batch_view<const float> const xb(x.data(), {sequences, tokens, features});
    auto r = uniform_matrix<float>(sequences, tokens, 8);  // importances in [0.005, 1]
    for (auto& v : r) v = 0.5025f + 0.4975f * v;
    for (bool weighted : {false, true})
      check_same_for_thread_counts(
          [&] {
            rsq::hessian_accumulator<T> acc(features);
            if (weighted)
              acc.add(xb, rsq::view(std::as_const(r)));
            else
              acc.add(xb);
            acc.add(rsq::batch_view<const float>(x.data(), {1, 300, features}));  // a second, smaller batch
            return bits(acc.hessian());
          },
          std::string(weighted ? "weighted" : "unweighted") + " Hessian, " + std::to_string(features) + " features");
  }
}

TEST_CASE_TEMPLATE("gptq::factor and gptq::solve give the same bits for 1, 2 and 3 threads", T, float, double) {
  // The RSQ scripts' grid (clip search on) per row; the others without the clip search, which dominates the time.
  rsq::quant::grid_spec const clip_grid{.bits = 4, .symmetric = true, .conv = rsq::quant::convention::rsq,
                                        .clip = {.enabled = true}};
  rsq::quant::grid_spec const plain_grid{.bits = 3, .symmetric = false};
  index_t const cols = 640;
  auto const h = hessian_of<T>(cols, 11);
  // 250 rows: one panel of 256 rows on one thread (its last 16 rows in Eigen's 1-packet kernel panel), panels of 128
  // and 122 on two, 128, 128 and 0 on three; 1000 rows: two to eight panels.
  for (index_t rows : {250, 1000}) {
    auto const w = uniform_matrix<T>(rows, cols, 12);
    for (auto const& opt : {rsq::gptq::options{}, rsq::gptq::options{.group_size = 128, .act_order = true},
                            rsq::gptq::options{.group_size = 64, .act_order = true, .static_groups = true},
                            rsq::gptq::options{.block_size = 96, .group_size = 100}}) {
      std::string const what = std::to_string(rows) + " rows, group " + std::to_string(opt.group_size) +
                               (opt.act_order ? ", act-order" : "") + (opt.static_groups ? ", static" : "");
      check_same_for_thread_counts(
          [&] {
            auto const f = rsq::gptq::factor(rsq::backend::cpu_eigen{}, rsq::view(h), opt);
            auto const& grid = opt.group_size <= 0 ? clip_grid : plain_grid;
            auto const r = rsq::gptq::solve(rsq::backend::cpu_eigen{}, rsq::view(w), f, grid, opt);
            REQUIRE(r.ok());
            return std::vector{bits(f.u.reshaped()),   bits(r.weight.codes), bits(r.dequantized),
                               bits(r.weight.scales), bits(r.weight.zeros), bits(r.column_loss)};
          },
          "factor and solve, " + what);
    }
  }
}

TEST_CASE_TEMPLATE("the Hadamard transform gives the same bits for 1, 2 and 3 threads", T, float, double) {
  // 2^m; K·2^m with hadK = 12, 28 and 172 (the K x p product); single rows, which leave the transform outside a
  // parallel region, where the product used to be Eigen's multi-threaded one (29568 = Paley K = 924 x 32: a depth
  // past Eigen's 320 cap).
  for (auto const& shape : {std::pair<index_t, index_t>{300, 4096}, {300, 12 * 64}, {200, 172 * 32},
                            {1, 172 * 256}, {3, 28 * 1024}, {1, 29568}}) {
    index_t const rows = shape.first, n = shape.second;  // (clang 14 lambdas cannot capture structured bindings)
    rsq::rotation::hadamard const had(n);
    auto const x0 = uniform_matrix<T>(rows, n, 21);
    check_same_for_thread_counts(
        [&] {
          auto x = x0;
          had.apply(rsq::view(x));
          return bits(x);
        },
        "rows of " + std::to_string(n));
    // The columns of a row-major (n, rows) matrix: the grouped column layout.
    auto const y0 = uniform_matrix<T>(n, rows, 22);
    check_same_for_thread_counts(
        [&] {
          auto y = y0;
          rsq::matrix_view<T> cols(y.data(), {rows, n}, {1, rows});
          had.apply_transpose(cols);
          return bits(y);
        },
        "columns of " + std::to_string(n));
  }
}

TEST_CASE_TEMPLATE("AttnCon gives the same bits for 1, 2 and 3 threads", T, float, double) {
  index_t const heads = 8, kv_heads = 2, tokens = 301, head_dim = 64;
  auto const q = uniform_matrix<T>(heads * tokens, head_dim, 31);
  auto const k = uniform_matrix<T>(kv_heads * tokens, head_dim, 32);
  rsq::tensor_view<const T, 3> const qv(q.data(), {heads, tokens, head_dim});
  rsq::tensor_view<const T, 3> const kv(k.data(), {kv_heads, tokens, head_dim});
  check_same_for_thread_counts([&] { return bits(rsq::importance::attncon_scores_qk(qv, kv)); }, "scores from Q/K");
  check_same_for_thread_counts(
      [&] {
        rsq::importance::sequence_context ctx;
        ctx.tokens = tokens;
        if constexpr (std::is_same_v<T, float>) {
          ctx.queries = qv;
          ctx.keys = kv;
          return bits(rsq::importance::attncon{}.weights(ctx));
        } else {
          return bits(rsq::importance::attncon_scores_qk(qv, kv, {.query_block = 17}));
        }
      },
      "importances from Q/K");
  auto const probs = rsq::importance::causal_attention(qv, kv);  // (heads, tokens, tokens)
  check_same_for_thread_counts([&] { return bits(rsq::importance::causal_attention(qv, kv)); }, "probabilities");
  check_same_for_thread_counts([&] { return bits(rsq::importance::attncon_scores(probs)); }, "scores from P");
}

}  // TEST_SUITE

#else

TEST_CASE("determinism across thread counts") { MESSAGE("SKIPPED: built without OpenMP, one thread only"); }

#endif

}  // namespace
