// SPDX-License-Identifier: MIT
// The GPTQ solver on every backend (one body per property, TEST_CASE_TEMPLATE over RSQ_TEST_BACKENDS):
//  - a literal float64 transcription of the reference loop (spec §6) for many option combinations (block sizes below,
//    at and above the CUDA kernel's sub-block, groups that start mid-block and span blocks, act-order, static groups,
//    clip search, both conventions), and on a backend other than the CPU the CPU backend's result (double and float);
//  - row-major weights over several of the CPU's panels (tiled load and store, dead columns) against the literal loop;
//  - invariants: H = I gives round-to-nearest exactly, H -> cH gives identical codes, the AutoGPTQ g_idx and the
//    act-order permutation, dead columns, damping of a singular H, the escalation ladder and the failure status, one
//    factorization for several weights;
//  - a recycled result (the same answer as a fresh one, its arrays reused);
//  - inputs in the backend's memory (device memory for CUDA) and resident results equal the host path, also for
//    strided views; bad values there and bad arguments rejected with messages that name them and where they are;
//  - CUDA only: the factorization's precision and triangular-inverse knobs (rsq::cuda::tuning()).
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include <xtensor/xmanipulation.hpp>

#include <rsq/gptq/proxy_loss.hpp>
#include <rsq/gptq/solve.hpp>
#include <rsq/quant/rtn.hpp>

#include "gptq/gptq_support.hpp"
#include "support/backend_data.hpp"
#include "support/backends.hpp"
#include "support/recycled_result.hpp"

namespace {

using Mat = Eigen::MatrixXd;
using gptq_test::check_against_cpu;
using gptq_test::code_agreement;
using gptq_test::random_layer;
using rsq::index_t;
using rsq::quant::convention;
using rsq::quant::grid_spec;

// The reference fasterquant(), step by step (spec §6), unblocked per column except for the block structure that
// decides which W a dynamic group is fitted on. Returns the dequantized Q.
Mat reference_gptq(Mat w, Mat h, grid_spec const& g, rsq::gptq::options const& o) {
  index_t const rows = w.rows(), cols = w.cols();
  auto fit_row = [&](Mat const& m, index_t r, index_t c0, index_t n) {
    Eigen::VectorXd row = m.row(r).segment(c0, n).transpose();
    return rsq::quant::fit(g, row.data(), n);
  };
  std::vector<rsq::quant::affine_params<double>> cur(rows);
  for (index_t r = 0; r < rows; ++r) cur[r] = fit_row(w, r, 0, cols);
  for (index_t i = 0; i < cols; ++i)
    if (h(i, i) == 0) {
      h(i, i) = 1;
      w.col(i).setZero();
    }
  index_t const gs = o.group_size;
  std::vector<std::vector<rsq::quant::affine_params<double>>> stat;
  if (o.static_groups)
    for (index_t c = 0; c < cols; c += gs) {
      stat.emplace_back(rows);
      for (index_t r = 0; r < rows; ++r) stat.back()[r] = fit_row(w, r, c, std::min(gs, cols - c));
    }
  std::vector<int> perm(cols);
  std::iota(perm.begin(), perm.end(), 0);
  if (o.act_order) {
    std::stable_sort(perm.begin(), perm.end(), [&](int a, int b) { return h(a, a) > h(b, b); });
    Mat w2(rows, cols), h2(cols, cols);
    for (index_t j = 0; j < cols; ++j) w2.col(j) = w.col(perm[j]);
    for (index_t i = 0; i < cols; ++i)
      for (index_t j = 0; j < cols; ++j) h2(i, j) = h(perm[i], perm[j]);
    w = w2;
    h = h2;
  }
  double const damp = o.damp_percent * h.diagonal().mean();
  h.diagonal().array() += damp;
  Mat const hinv = h.llt().solve(Mat::Identity(cols, cols));
  Mat const u = Mat(hinv.llt().matrixU());  // upper, Hinv = U^T U
  Mat q = Mat::Zero(rows, cols);
  for (index_t i1 = 0; i1 < cols; i1 += o.block_size) {
    index_t const i2 = std::min(i1 + o.block_size, cols), nb = i2 - i1;
    Mat w1 = w.middleCols(i1, nb), e(rows, nb);
    for (index_t i = 0; i < nb; ++i) {
      index_t const col = i1 + i;
      if (gs > 0 && !o.static_groups && col % gs == 0)
        for (index_t r = 0; r < rows; ++r) cur[r] = fit_row(w, r, col, std::min(gs, cols - col));
      if (o.static_groups)
        for (index_t r = 0; r < rows; ++r) cur[r] = stat[perm[col] / gs][r];
      for (index_t r = 0; r < rows; ++r)
        q(r, col) = rsq::quant::decode(g, rsq::quant::encode(g, w1(r, i), cur[r]), cur[r]);
      Eigen::VectorXd const err = (w1.col(i) - q.col(col)) / u(col, col);
      for (index_t j = i; j < nb; ++j) w1.col(j) -= err * u(col, i1 + j);
      e.col(i) = err;
    }
    // (a coefficient-wise product: Eigen's threaded GEMM costs more than it saves on these small blocks)
    if (i2 < cols) w.middleCols(i2, cols - i2) -= e.lazyProduct(u.block(i1, i2, nb, cols - i2));
  }
  Mat out(rows, cols);
  for (index_t j = 0; j < cols; ++j) out.col(perm[j]) = q.col(j);
  return out;
}

Mat to_eigen(rsq::matrix<double> const& m) {
  return Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> const>(
      m.data(), Eigen::Index(m.shape()[0]), Eigen::Index(m.shape()[1]));
}

double identical_fraction(Mat const& a, Mat const& b) {
  return double(((a - b).array().abs() <= 1e-9 * (1 + b.array().abs())).count()) / double(a.size());
}

// The result against the literal reference loop: >= 99.9% identical values and the proxy loss within 1e-6 (1% on the
// ist symmetric grid, whose rounding ties make the codes depend on the last bit of the update order).
void check_against_reference(rsq::gptq::result<double> const& res, Mat const& w, Mat const& h, grid_spec const& g,
                             rsq::gptq::options const& o, bool tie_prone = false) {
  REQUIRE(res.ok());
  Mat const ref = reference_gptq(w, h, g, o);
  Mat const got = to_eigen(res.dequantized);
  double const frac = identical_fraction(got, ref);
  INFO("identical to the literal loop: ", frac);
  if (!tie_prone) CHECK(frac >= 0.999);
  CHECK(rsq::gptq::proxy_loss(w, got, h) ==
        doctest::Approx(rsq::gptq::proxy_loss(w, ref, h)).epsilon(tie_prone ? 1e-2 : 1e-6));
}

// U of a factorization in host memory, column-major (cols, cols).
template <class T, class B>
std::vector<T> factor_u(B const& be, rsq::gptq::factorization<T, B> const& f) {
  if constexpr (rsq_test::is_cpu<B>) {
    (void)be;
    return std::vector<T>(f.u.data(), f.u.data() + f.u.size());
  } else {
    return f.u.to_host(be);
  }
}

}  // namespace

TEST_SUITE("gptq.solve") {
  TEST_CASE_TEMPLATE("equals the literal reference loop (and the CPU backend) for block sizes, groups, act-order, "
                     "static groups, clip search and both conventions",
                     B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const ld = random_layer<double>(37, 300, 42);
    auto const lf = random_layer<float>(37, 300, 42);
    Mat const w = to_eigen(ld.w), h = to_eigen(ld.h);
    int combos = 0;
    for (index_t block : {1, 5, 16, 64, 128, 200, 400})
      for (index_t group : {-1, 8, 13, 64, 130})
        for (int flags = 0; flags < 4; ++flags) {
          if ((flags & 2) && group < 0) continue;
          rsq::gptq::options const o{.block_size = block, .group_size = group, .act_order = bool(flags & 1),
                                     .static_groups = bool(flags & 2)};
          grid_spec g{.bits = 2 + (combos % 5), .symmetric = combos % 2 == 0,
                      .conv = combos % 3 == 0 ? convention::rsq : convention::ist};
          g.clip.enabled = combos % 4 == 1;
          CAPTURE(block);
          CAPTURE(group);
          CAPTURE(flags);
          CAPTURE(g.bits);
          auto const res = rsq::gptq::solve(B{}, ld.w, ld.h, g, o);
          // The ist symmetric grid puts a group's largest |w| exactly on a rounding tie (x/s = ±(2^b − 1)/2), so
          // there a last-bit difference in the update order may flip one code and, through it, later ones.
          bool const tie_prone = g.symmetric && g.conv == convention::ist;
          check_against_reference(res, w, h, g, o, tie_prone);
          if constexpr (!rsq_test::is_cpu<B>) {
            if (!tie_prone) check_against_cpu(res, ld.w, ld.h, g, o);
            if (combos % 3 == 0) check_against_cpu(rsq::gptq::solve(B{}, lf.w, lf.h, g, o), lf.w, lf.h, g, o);
          }
          ++combos;
        }
    CHECK(combos > 120);
  }

  TEST_CASE_TEMPLATE("equals the literal reference loop on llama.cpp's block grids (Q4_0, Q4_1, Q8_0)", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const ld = random_layer<double>(37, 256, 43);
    Mat const w = to_eigen(ld.w), h = to_eigen(ld.h);
    for (auto conv : {convention::q4_0, convention::q4_1, convention::q8_0})
      for (index_t block : {16, 128})
        for (index_t group : {32, 96})
          for (int flags = 0; flags < 3; ++flags) {  // plain, static groups, act-order with static groups
            rsq::gptq::options const o{.block_size = block, .group_size = group, .act_order = flags == 2,
                                       .static_groups = flags >= 1};
            grid_spec g{.bits = conv == convention::q8_0 ? 8 : 4, .conv = conv};
            g.clip.enabled = flags == 1;
            CAPTURE(int(conv));
            CAPTURE(block);
            CAPTURE(group);
            CAPTURE(flags);
            auto const res = rsq::gptq::solve(B{}, ld.w, ld.h, g, o);
            check_against_reference(res, w, h, g, o);
            if constexpr (!rsq_test::is_cpu<B>) check_against_cpu(res, ld.w, ld.h, g, o);
          }
  }

  TEST_CASE_TEMPLATE("row-major weights over several panels (tiled load and store, padded rows) equal the literal loop",
                     B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    // 300 rows: more than one panel per CPU thread, a last panel that is not a multiple of the leaf's 64-row chunk,
    // and row-major storage, so that the CPU's register-tile transposes (not the strided fallback) load W and store
    // the results.
    auto l = random_layer<double>(300, 150, 9);
    for (index_t c : {3, 77})  // dead columns, placed by act-order among the others
      for (index_t k = 0; k < 150; ++k) l.h(c, k) = l.h(k, c) = 0;
    Mat const w = to_eigen(l.w), h = to_eigen(l.h);
    for (index_t group : {-1, 32}) {
      rsq::gptq::options const o{.group_size = group, .act_order = true};
      grid_spec const g{.bits = 3};
      CAPTURE(group);
      auto const res = rsq::gptq::solve(B{}, l.w, l.h, g, o);
      check_against_reference(res, w, h, g, o);
      for (int r = 0; r < 300; ++r) CHECK(res.dequantized(r, 77) == 0.0);
      // Codes decode to the dequantized values (both went through the store's permutation).
      int mismatches = 0;
      for (index_t r = 0; r < 300; ++r)
        for (index_t c = 0; c < 150; ++c) {
          auto const gi = res.weight.g_idx(c);
          double const q = res.weight.scales(r, gi) * (double(res.weight.codes(r, c)) - res.weight.zeros(r, gi));
          mismatches += q != res.dequantized(r, c);
        }
      CHECK(mismatches == 0);
    }
  }

  TEST_CASE_TEMPLATE("H = I (and any diagonal H) gives round-to-nearest exactly", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto check_type = [&]<class T>(T) {
      CAPTURE(sizeof(T));
      auto const l = random_layer<T>(40, 96, 5);
      for (index_t group : {index_t(-1), index_t(32), index_t(20)}) {
        grid_spec const g{.bits = 3, .symmetric = group == 20};
        auto const rtn = rsq::quant::quantize_rtn(rsq::view(l.w), g, group);  // the CPU's round to nearest
        auto h = rsq::make_matrix<T>(96, 96);
        for (int diag_kind = 0; diag_kind < 2; ++diag_kind) {
          CAPTURE(group);
          CAPTURE(diag_kind);
          for (int i = 0; i < 96; ++i) h(i, i) = diag_kind == 0 ? T(1) : T(0.5 + (i % 7));
          auto const res = rsq::gptq::solve(B{}, l.w, h, g, {.group_size = group});
          REQUIRE(res.ok());
          CHECK(res.weight.codes == rtn.codes);
          CHECK(res.weight.scales == rtn.scales);
          CHECK(res.weight.zeros == rtn.zeros);
          CHECK(res.weight.g_idx == rtn.g_idx);
        }
      }
    };
    check_type(float{});
    check_type(double{});
  }

  TEST_CASE_TEMPLATE("H -> c H gives identical codes", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const l = random_layer<double>(32, 200, 8);
    for (bool act : {false, true}) {
      rsq::gptq::options const o{.group_size = 64, .act_order = act};
      auto const base = rsq::gptq::solve(B{}, l.w, l.h, {.bits = 4}, o);
      REQUIRE(base.ok());
      for (double c : {0.25, 3.7, 1e3}) {
        CAPTURE(c);
        rsq::matrix<double> hc = c * l.h;
        CHECK(rsq::gptq::solve(B{}, l.w, hc, {.bits = 4}, o).weight.codes == base.weight.codes);
      }
    }
  }

  TEST_CASE_TEMPLATE("g_idx follows the AutoGPTQ convention and perm sorts diag(H) descending", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const l = random_layer<double>(8, 40, 3);
    auto const res = rsq::gptq::solve(B{}, l.w, l.h, {}, {.group_size = 16, .act_order = true});
    REQUIRE(res.ok());
    for (index_t j = 0; j + 1 < 40; ++j) CHECK(l.h(res.perm(j), res.perm(j)) >= l.h(res.perm(j + 1), res.perm(j + 1)));
    for (index_t j = 0; j < 40; ++j) CHECK(res.weight.g_idx(res.perm(j)) == j / 16);
    auto const st = rsq::gptq::solve(B{}, l.w, l.h, {}, {.group_size = 16, .act_order = true, .static_groups = true});
    for (index_t c = 0; c < 40; ++c) CHECK(st.weight.g_idx(c) == c / 16);
    auto const rows = rsq::gptq::solve(B{}, l.w, l.h, {}, {});
    CHECK(rows.weight.groups() == 1);
    for (index_t c = 0; c < 40; ++c) CHECK(rows.weight.g_idx(c) == 0);
    // Losses: per column, summing to the reference's "error".
    CHECK(res.total_loss() > 0);
  }

  TEST_CASE_TEMPLATE("a NaN or Inf anywhere in W is reported with its position by a solve with a factorization", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    // The CPU solver checks W as it loads its panels: tile interiors, edge columns (150 = 9 · 16 + 6), edge rows of a
    // last partial panel (1100 rows: panels of up to 512), the strided (column-major) load, static groups (checked
    // up front), with and without act-order's permutation, float and double.
    auto const l = random_layer<double>(1100, 150, 21);
    auto check_type = [&]<class T>(T) {
      using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
      using ColMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
      RowMajor const w = to_eigen(l.w).cast<T>();
      ColMajor const h = to_eigen(l.h).cast<T>();
      grid_spec const g{.bits = 4};
      for (int variant = 0; variant < 3; ++variant) {
        rsq::gptq::options const o{.group_size = variant == 0 ? -1 : 32, .act_order = variant != 1,
                                   .static_groups = variant == 2};
        auto const f = rsq::gptq::factor(B{}, h, o);
        REQUIRE(f.ok());
        for (auto [r, c] : {std::pair{700, 33}, {5, 149}, {1099, 17}, {1099, 149}, {0, 0}}) {
          for (T bad : {T(NAN), T(INFINITY), -T(INFINITY)}) {
            RowMajor wr = w;
            wr(r, c) = bad;
            ColMajor const wc = wr;
            std::string const where = "at row " + std::to_string(r) + ", column " + std::to_string(c);
            CAPTURE(variant);
            CAPTURE(where);
            CHECK_THROWS_WITH_AS((void)rsq::gptq::solve(B{}, wr, f, g, o), doctest::Contains(where.c_str()),
                                 rsq::invalid_argument);
            CHECK_THROWS_WITH_AS((void)rsq::gptq::solve(B{}, wc, f, g, o), doctest::Contains(where.c_str()),
                                 rsq::invalid_argument);
          }
        }
        auto const clean = rsq::gptq::solve(B{}, w, f, g, o);  // and a finite W still solves
        CHECK(clean.ok());
      }
    };
    check_type(float{});
    check_type(double{});
  }

  TEST_CASE_TEMPLATE("a recycled result gives the fresh result, reusing the arrays whose sizes match", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const l = random_layer<float>(300, 150, 13);
    rsq_test::check_recycled_result<B>(l.w, l.h);
  }

  TEST_CASE_TEMPLATE("dead columns are zeroed and quantize to 0", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto l = random_layer<double>(10, 30, 4);
    for (int c : {0, 7, 29})
      for (int k = 0; k < 30; ++k) l.h(c, k) = l.h(k, c) = 0;
    Mat const w = to_eigen(l.w), h = to_eigen(l.h);
    grid_spec const g{.bits = 4, .symmetric = true};
    for (rsq::gptq::options const o : {rsq::gptq::options{}, rsq::gptq::options{.group_size = 8},
                                       rsq::gptq::options{.group_size = 8, .act_order = true, .static_groups = true}}) {
      CAPTURE(o.group_size);
      CAPTURE(o.act_order);
      auto const res = rsq::gptq::solve(B{}, l.w, l.h, g, o);
      REQUIRE(res.ok());
      for (int c : {0, 7, 29})
        for (int r = 0; r < 10; ++r) CHECK(res.dequantized(r, c) == 0.0);
      check_against_reference(res, w, h, g, o);
      if constexpr (!rsq_test::is_cpu<B>) check_against_cpu(res, l.w, l.h, g, o);
    }
  }

  TEST_CASE_TEMPLATE("a singular (rank-deficient) H is fixed by the first damping", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const l = random_layer<double>(12, 64, 6, /*tokens=*/20);  // rank 20 < 64
    auto const res = rsq::gptq::solve(B{}, l.w, l.h, {}, {});
    CHECK(res.ok());
    CHECK(res.damp_attempts == 1);
  }

  TEST_CASE_TEMPLATE("an indefinite H escalates the damping from the original H, then reports a status", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    // diag(1, ..., 1, -0.2) with n = 10: damp = 0.01 * 0.88, and k * damp > 0.2 needs k = 23.
    auto h = rsq::make_matrix<double>(10, 10);
    for (int i = 0; i < 10; ++i) h(i, i) = 1;
    h(9, 9) = -0.2;
    rsq::matrix<double> w = rsq::make_matrix<double>(3, 10) + 1.0;
    auto const ok = rsq::gptq::solve(B{}, w, h, {}, {});
    CHECK(ok.ok());
    CHECK(ok.damp_attempts == 23);
    CHECK(ok.damp_percent_used == doctest::Approx(0.23));
    CHECK(ok.damp_used == doctest::Approx(23 * 0.01 * 0.88));
    auto const bad = rsq::gptq::solve(B{}, w, h, {}, {.max_damp_attempts = 10});
    CHECK(bad.info == rsq::gptq::status::not_positive_definite);
    CHECK_FALSE(bad.ok());
    CHECK(bad.damp_attempts == 10);
    CHECK(bad.failed_column == 9);
    CHECK(bad.weight.codes.size() == 0);
    CHECK(rsq::gptq::to_string(bad.info) == "not_positive_definite");
    // Strongly indefinite, mean(diag H) < 0: the damping would be negative, so nothing is attempted and the damping
    // reported is 0, never negative.
    rsq::matrix<double> neg = -1.0 * h;
    for (int i = 0; i < 10; ++i) neg(i, i) = -1;
    auto const fail = rsq::gptq::solve(B{}, w, neg, {}, {});
    CHECK(fail.info == rsq::gptq::status::not_positive_definite);
    CHECK(fail.damp_attempts == 0);
    CHECK(fail.damp_used == 0);
    CHECK(fail.failed_column == 0);
    // Every column dead (all inputs zero): reported, not a zero layer with status ok.
    auto const dead = rsq::gptq::solve(B{}, w, rsq::matrix<double>(rsq::make_matrix<double>(10, 10)), {}, {});
    CHECK(dead.info == rsq::gptq::status::no_live_columns);
    CHECK(rsq::gptq::to_string(dead.info) == "no_live_columns");
    CHECK(dead.damp_used == 0);
    CHECK(dead.weight.codes.size() == 0);
    // A failed factorization solves nothing, but a NaN in W is still reported first.
    auto const failed = rsq::gptq::factor(B{}, neg, {});
    REQUIRE_FALSE(failed.ok());
    rsq::matrix<double> wn = w;
    wn(1, 4) = NAN;
    CHECK_THROWS_WITH_AS((void)rsq::gptq::solve(B{}, wn, failed, grid_spec{}, {}),
                         doctest::Contains("at row 1, column 4"), rsq::invalid_argument);
    // A factorization made once serves several weights (q/k/v share H).
    auto const l = random_layer<float>(16, 64, 11);
    auto const f = rsq::gptq::factor(B{}, l.h, {.act_order = true});
    REQUIRE(f.ok());
    auto const r1 = rsq::gptq::solve(B{}, l.w, f, {.bits = 3}, {.act_order = true});
    auto const r2 = rsq::gptq::solve(B{}, l.w, l.h, {.bits = 3}, {.act_order = true});
    CHECK(r1.weight.codes == r2.weight.codes);
    auto const other = random_layer<float>(24, 64, 14);
    CHECK(rsq::gptq::solve(B{}, other.w, f, {.bits = 3}, {.act_order = true}).weight.codes ==
          rsq::gptq::solve(B{}, other.w, l.h, {.bits = 3}, {.act_order = true}).weight.codes);
    CHECK_THROWS_WITH_AS((void)rsq::gptq::solve(B{}, l.w, f, {.bits = 3}, {.act_order = false}),
                         doctest::Contains("act_order"), rsq::invalid_argument);
    auto const narrow = random_layer<float>(16, 32, 12);
    CHECK_THROWS_WITH_AS((void)rsq::gptq::solve(B{}, narrow.w, f, {.bits = 3}, {.act_order = true}),
                         doctest::Contains("the factorization is for 64 columns"), rsq::invalid_argument);
  }

  TEST_CASE_TEMPLATE("bad arguments are rejected with messages that name them", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const l = random_layer<double>(4, 16, 1);
    Mat const w = to_eigen(l.w), h = to_eigen(l.h);
    using rsq::invalid_argument;
    auto solve = [&](Mat const& wa, Mat const& ha, grid_spec g = {}, rsq::gptq::options o = {}) {
      return rsq::gptq::solve(B{}, wa, ha, g, o);
    };
    CHECK_THROWS_WITH_AS(solve(w, Mat::Identity(15, 15)), doctest::Contains("Hessian must be (cols x cols)"),
                         invalid_argument);
    CHECK_THROWS_WITH_AS(solve(Mat(0, 16), h), doctest::Contains("empty"), invalid_argument);
    Mat wn = w;
    wn(2, 5) = NAN;
    CHECK_THROWS_WITH_AS(solve(wn, h), doctest::Contains("weight has a non-finite value (nan) at row 2, column 5"),
                         invalid_argument);
    Mat hn = h;
    hn(3, 4) = INFINITY;
    CHECK_THROWS_WITH_AS(solve(w, hn), doctest::Contains("Hessian has a non-finite value"), invalid_argument);
    Mat ha = h;
    ha(3, 4) += 1.0;
    CHECK_THROWS_WITH_AS(solve(w, ha), doctest::Contains("not symmetric: H(4, 3)"), invalid_argument);
    CHECK_THROWS_WITH_AS(solve(w, h, {.bits = 1}), doctest::Contains("bits"), invalid_argument);
    CHECK_THROWS_WITH_AS(solve(w, h, {.bits = 9}), doctest::Contains("bits"), invalid_argument);
    CHECK_THROWS_WITH_AS(solve(w, h, {}, {.group_size = 0}), doctest::Contains("group_size"), invalid_argument);
    CHECK_THROWS_WITH_AS(solve(w, h, {}, {.block_size = 0}), doctest::Contains("block_size"), invalid_argument);
    CHECK_THROWS_WITH_AS(solve(w, h, {}, {.damp_percent = -0.1}), doctest::Contains("damp_percent"),
                         invalid_argument);
    CHECK_THROWS_WITH_AS(solve(w, h, {}, {.static_groups = true}), doctest::Contains("static_groups"),
                         invalid_argument);
    CHECK_THROWS_WITH_AS(solve(w, h, {}, {.max_damp_attempts = 0}), doctest::Contains("max_damp_attempts"),
                         invalid_argument);
  }

  TEST_CASE_TEMPLATE("inputs in the backend's memory and resident results equal the host path", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    auto const l = random_layer<float>(48, 256, 21);
    auto const wd = rsq::backend::to_backend(be, rsq::matrix_view<const float>(rsq::view(l.w)));
    auto const hd = rsq::backend::to_backend(be, rsq::matrix_view<const float>(rsq::view(l.h)));
    CHECK(rsq::backend::resident(be, rsq::view(wd).data()));
    if constexpr (!rsq_test::is_cpu<B>) CHECK_FALSE(rsq::backend::resident(be, l.w.data()));
    rsq::gptq::options const o{.group_size = 64, .act_order = true};
    auto const f = rsq::gptq::factor(be, rsq::view(hd), o);  // H in the backend's memory
    auto const fh = rsq::gptq::factor(be, l.h, o);          // H in host memory
    REQUIRE(f.ok());
    REQUIRE(fh.ok());
    CHECK(f.perm == fh.perm);
    CHECK(factor_u(be, f) == factor_u(be, fh));
    auto const ref = rsq::gptq::solve(be, l.w, l.h, {.bits = 4}, o);  // host in, host out
    REQUIRE(ref.ok());
    // The result left in the backend's memory, then copied to the host.
    auto dr = rsq::gptq::solve_resident(be, rsq::view(wd), f, {.bits = 4}, o);
    REQUIRE(dr.ok());
    CHECK(dr.perm == ref.perm);
    CHECK(rsq_test::download(be, rsq::view(dr.dequantized)) == ref.dequantized);
    auto const r = rsq::gptq::to_host(be, std::move(dr));
    REQUIRE(r.ok());
    CHECK(r.weight.bits == 4);
    CHECK(r.weight.codes == ref.weight.codes);
    CHECK(r.weight.scales == ref.weight.scales);
    CHECK(r.weight.zeros == ref.weight.zeros);
    CHECK(r.weight.g_idx == ref.weight.g_idx);
    CHECK(r.dequantized == ref.dequantized);
    CHECK(r.column_loss == ref.column_loss);
    CHECK(r.damp_attempts == ref.damp_attempts);
    CHECK(r.damp_used == ref.damp_used);
    // W and H both views of the backend's memory, through solve(be, w, h, ...).
    auto const both = rsq::gptq::solve(be, rsq::view(wd), rsq::view(hd), {.bits = 4}, o);
    CHECK(both.weight.codes == ref.weight.codes);
    CHECK(both.dequantized == ref.dequantized);
    // A strided (transposed) view of the backend's memory.
    rsq::matrix<float> wt = xt::transpose(l.w);
    auto const wtd = rsq::backend::to_backend(be, rsq::matrix_view<const float>(rsq::view(wt)));  // (256, 48)
    rsq::matrix_view<const float> strided(rsq::view(wtd).data(), {48, 256}, {1, 48});
    CHECK(rsq::gptq::solve(be, strided, f, {.bits = 4}, o).weight.codes == ref.weight.codes);
  }

  TEST_CASE_TEMPLATE("bad values in the backend's memory are rejected with the host messages", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    auto l = random_layer<float>(8, 32, 3);
    l.w(2, 5) = NAN;
    auto const wd = rsq::backend::to_backend(be, rsq::matrix_view<const float>(rsq::view(l.w)));
    auto hd = rsq::backend::to_backend(be, rsq::matrix_view<const float>(rsq::view(l.h)));
    auto const f = rsq::gptq::factor(be, rsq::view(hd), {});
    REQUIRE(f.ok());
    CHECK_THROWS_WITH_AS((void)rsq::gptq::solve_resident(be, rsq::view(wd), f, {}, {}),
                         doctest::Contains("weight has a non-finite value (nan) at row 2, column 5"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)rsq::gptq::solve(be, rsq::view(wd), f, {}, {}),
                         doctest::Contains("weight has a non-finite value (nan) at row 2, column 5"),
                         rsq::invalid_argument);
    auto ha = l.h;
    ha(3, 4) += 1.0f;
    rsq::backend::copy(be, rsq::view(hd).data(), ha.data(), index_t(ha.size()));
    CHECK_THROWS_WITH_AS((void)rsq::gptq::factor(be, rsq::view(hd), {}), doctest::Contains("not symmetric: H(4, 3)"),
                         rsq::invalid_argument);
    ha = l.h;
    ha(6, 1) = INFINITY;
    rsq::backend::copy(be, rsq::view(hd).data(), ha.data(), index_t(ha.size()));
    CHECK_THROWS_WITH_AS((void)rsq::gptq::factor(be, rsq::view(hd), {}),
                         doctest::Contains("Hessian has a non-finite value (inf) at row 6, column 1"),
                         rsq::invalid_argument);
    rsq::matrix_view<const float> wide(rsq::view(hd).data(), {32, 16}, {32, 1});
    CHECK_THROWS_WITH_AS((void)rsq::gptq::factor(be, wide, {}), doctest::Contains("square"), rsq::invalid_argument);
  }
}

#if defined(RSQ_WITH_CUDA) && RSQ_WITH_CUDA
TEST_SUITE("gptq.cuda") {
  TEST_CASE("the factorization's precision and triangular inverse are tuning knobs that give nearly the same codes") {
    RSQ_NEED_DEVICE(rsq::backend::cuda);
    rsq::backend::cuda const be{};
    auto const l = random_layer<float>(48, 256, 21);
    rsq::gptq::options const o{.group_size = 64, .act_order = true};
    auto const ref = rsq::gptq::solve(be, l.w, l.h, {.bits = 4}, o);  // fp64 factor, recursive inverse
    REQUIRE(ref.ok());
    auto& knobs = rsq::cuda::tuning();
    auto const saved = knobs;
    knobs.precision = rsq::cuda::factor_precision::input;  // an fp32 factorization of a float H
    auto const f32 = rsq::gptq::factor(be, l.h, o);
    knobs = saved;
    knobs.inverse = rsq::cuda::triangular_inverse::trsm;
    auto const ftrsm = rsq::gptq::factor(be, l.h, o);
    knobs = saved;
    knobs.inverse = rsq::cuda::triangular_inverse::trtri;
    auto const ftrtri = rsq::gptq::factor(be, l.h, o);
    knobs = saved;
    REQUIRE(f32.ok());
    REQUIRE(ftrsm.ok());
    REQUIRE(ftrtri.ok());
    CHECK(code_agreement(rsq::gptq::solve(be, l.w, f32, {.bits = 4}, o), ref) >= 0.99);
    CHECK(code_agreement(rsq::gptq::solve(be, l.w, ftrsm, {.bits = 4}, o), ref) >= 0.99);
    CHECK(code_agreement(rsq::gptq::solve(be, l.w, ftrtri, {.bits = 4}, o), ref) >= 0.99);
  }
}
#endif
