// SPDX-License-Identifier: MIT
// GPTQ solver against a literal float64 transcription of the reference loop (spec §6) for many option combinations,
// and the invariants: H = I gives round-to-nearest, H -> cH gives identical codes, escalation and failure status.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <numeric>
#include <random>
#include <string>
#include <utility>

#include <rsq/gptq/proxy_loss.hpp>
#include <rsq/gptq/solve.hpp>
#include <rsq/quant/rtn.hpp>

#include "support/recycled_result.hpp"

namespace {

using Mat = Eigen::MatrixXd;
using rsq::quant::convention;
using rsq::quant::grid_spec;

// The reference fasterquant(), step by step (spec §6), unblocked per column except for the block structure that
// decides which W a dynamic group is fitted on. Returns the dequantized Q.
Mat reference_gptq(Mat w, Mat h, grid_spec const& g, rsq::gptq::options const& o) {
  rsq::index_t const rows = w.rows(), cols = w.cols();
  auto fit_row = [&](Mat const& m, rsq::index_t r, rsq::index_t c0, rsq::index_t n) {
    Eigen::VectorXd row = m.row(r).segment(c0, n).transpose();
    return rsq::quant::fit(g, row.data(), n);
  };
  std::vector<rsq::quant::affine_params<double>> cur(rows);
  for (rsq::index_t r = 0; r < rows; ++r) cur[r] = fit_row(w, r, 0, cols);
  for (rsq::index_t i = 0; i < cols; ++i)
    if (h(i, i) == 0) {
      h(i, i) = 1;
      w.col(i).setZero();
    }
  rsq::index_t const gs = o.group_size;
  std::vector<std::vector<rsq::quant::affine_params<double>>> stat;
  if (o.static_groups)
    for (rsq::index_t c = 0; c < cols; c += gs) {
      stat.emplace_back(rows);
      for (rsq::index_t r = 0; r < rows; ++r) stat.back()[r] = fit_row(w, r, c, std::min(gs, cols - c));
    }
  std::vector<int> perm(cols);
  std::iota(perm.begin(), perm.end(), 0);
  if (o.act_order) {
    std::stable_sort(perm.begin(), perm.end(), [&](int a, int b) { return h(a, a) > h(b, b); });
    Mat w2(rows, cols), h2(cols, cols);
    for (rsq::index_t j = 0; j < cols; ++j) w2.col(j) = w.col(perm[j]);
    for (rsq::index_t i = 0; i < cols; ++i)
      for (rsq::index_t j = 0; j < cols; ++j) h2(i, j) = h(perm[i], perm[j]);
    w = w2;
    h = h2;
  }
  double const damp = o.damp_percent * h.diagonal().mean();
  h.diagonal().array() += damp;
  Mat const hinv = h.llt().solve(Mat::Identity(cols, cols));
  Mat const u = Mat(hinv.llt().matrixU());  // upper, Hinv = U^T U
  Mat q = Mat::Zero(rows, cols);
  for (rsq::index_t i1 = 0; i1 < cols; i1 += o.block_size) {
    rsq::index_t const i2 = std::min(i1 + o.block_size, cols), nb = i2 - i1;
    Mat w1 = w.middleCols(i1, nb), e(rows, nb);
    for (rsq::index_t i = 0; i < nb; ++i) {
      rsq::index_t const col = i1 + i;
      if (gs > 0 && !o.static_groups && col % gs == 0)
        for (rsq::index_t r = 0; r < rows; ++r) cur[r] = fit_row(w, r, col, std::min(gs, cols - col));
      if (o.static_groups)
        for (rsq::index_t r = 0; r < rows; ++r) cur[r] = stat[perm[col] / gs][r];
      for (rsq::index_t r = 0; r < rows; ++r)
        q(r, col) = rsq::quant::quantize_dequantize(w1(r, i), cur[r].scale, cur[r].zero, g.max_code());
      Eigen::VectorXd const err = (w1.col(i) - q.col(col)) / u(col, col);
      for (rsq::index_t j = i; j < nb; ++j) w1.col(j) -= err * u(col, i1 + j);
      e.col(i) = err;
    }
    if (i2 < cols) w.middleCols(i2, cols - i2) -= e * u.block(i1, i2, nb, cols - i2);
  }
  Mat out(rows, cols);
  for (rsq::index_t j = 0; j < cols; ++j) out.col(perm[j]) = q.col(j);
  return out;
}

struct layer {
  Mat w, h;
};

// A weight and a realistic Hessian X^T X with correlated features and some heavy columns.
layer random_layer(rsq::index_t rows, rsq::index_t cols, unsigned seed, rsq::index_t tokens = 0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd;
  layer l{Mat(rows, cols), Mat()};
  for (rsq::index_t i = 0; i < l.w.size(); ++i) l.w.data()[i] = nd(rng);
  if (tokens == 0) tokens = 3 * cols;
  Mat x(tokens, cols);
  for (rsq::index_t i = 0; i < x.size(); ++i) x.data()[i] = nd(rng);
  Mat mix = Mat::Identity(cols, cols);
  for (rsq::index_t i = 0; i + 1 < cols; ++i) mix(i + 1, i) = 0.5;
  x = x * mix;
  for (rsq::index_t c = 0; c < cols; c += 7) x.col(c) *= 4;
  l.h = 2.0 / double(tokens) * x.transpose() * x;
  return l;
}

double identical_fraction(Mat const& a, Mat const& b) {
  return double(((a - b).array().abs() <= 1e-9 * (1 + b.array().abs())).count()) / double(a.size());
}

Mat to_eigen(rsq::matrix<double> const& m) {
  return Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> const>(
      m.data(), Eigen::Index(m.shape()[0]), Eigen::Index(m.shape()[1]));
}

}  // namespace

TEST_SUITE("gptq.solve") {
  TEST_CASE("equals the literal reference loop for block sizes, groups, act-order, static groups and clip search") {
    auto const l = random_layer(23, 150, 42);
    int combos = 0;
    for (rsq::index_t block : {1, 5, 16, 64, 128, 400})
      for (rsq::index_t group : {-1, 8, 13, 64})
        for (int flags = 0; flags < 4; ++flags) {
          rsq::gptq::options o{.block_size = block, .group_size = group, .act_order = bool(flags & 1),
                               .static_groups = bool(flags & 2) && group > 0};
          if ((flags & 2) && group < 0) continue;
          grid_spec g{.bits = 2 + (combos % 5), .symmetric = combos % 2 == 0,
                      .conv = combos % 3 == 0 ? convention::rsq : convention::ist};
          g.clip.enabled = combos % 4 == 1;
          CAPTURE(block);
          CAPTURE(group);
          CAPTURE(flags);
          auto const res = rsq::gptq::solve(rsq::backend::cpu_eigen{}, l.w, l.h, g, o);
          REQUIRE(res.ok());
          Mat const ref = reference_gptq(l.w, l.h, g, o);
          Mat const got = to_eigen(res.dequantized);
          // The ist symmetric grid puts a group's largest |w| exactly on a rounding tie (x/s = ±(2^b − 1)/2), so
          // there a last-bit difference in the update order may flip one code and, through it, later ones.
          bool const tie_prone = g.symmetric && g.conv == convention::ist;
          if (!tie_prone) CHECK(identical_fraction(got, ref) >= 0.999);
          CHECK(rsq::gptq::proxy_loss(l.w, got, l.h) ==
                doctest::Approx(rsq::gptq::proxy_loss(l.w, ref, l.h)).epsilon(tie_prone ? 1e-2 : 1e-6));
          ++combos;
        }
    CHECK(combos > 60);
  }

  TEST_CASE_TEMPLATE("H = I (and any diagonal H) gives round-to-nearest exactly", T, float, double) {
    auto const l = random_layer(40, 96, 5);
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> const w = l.w.cast<T>();
    for (rsq::index_t group : {-1, 32, 20}) {
      grid_spec const g{.bits = 3, .symmetric = group == 20};
      auto const rtn = rsq::quant::quantize_rtn(rsq::make_const_view<2>(w), g, group);
      Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> h = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>::Identity(96, 96);
      for (int diag_kind = 0; diag_kind < 2; ++diag_kind) {
        if (diag_kind == 1)
          for (int i = 0; i < 96; ++i) h(i, i) = T(0.5 + (i % 7));
        auto const res = rsq::gptq::solve(rsq::backend::cpu_eigen{}, w, h, g, {.group_size = group});
        REQUIRE(res.ok());
        CHECK(res.weight.codes == rtn.codes);
        CHECK(res.weight.scales == rtn.scales);
        CHECK(res.weight.zeros == rtn.zeros);
        CHECK(res.weight.g_idx == rtn.g_idx);
      }
    }
  }

  TEST_CASE("H -> c H gives identical codes") {
    auto const l = random_layer(32, 200, 8);
    for (bool act : {false, true}) {
      rsq::gptq::options const o{.group_size = 64, .act_order = act};
      grid_spec const g{.bits = 4};
      auto const base = rsq::gptq::solve(rsq::backend::cpu_eigen{}, l.w, l.h, g, o);
      for (double c : {0.25, 3.7, 1e3}) {
        Mat const hc = c * l.h;
        auto const scaled = rsq::gptq::solve(rsq::backend::cpu_eigen{}, l.w, hc, g, o);
        CHECK(scaled.weight.codes == base.weight.codes);
      }
    }
  }

  TEST_CASE("g_idx follows the AutoGPTQ convention and perm sorts diag(H) descending") {
    auto const l = random_layer(8, 40, 3);
    auto const res = rsq::gptq::solve(rsq::backend::cpu_eigen{}, l.w, l.h, {}, {.group_size = 16, .act_order = true});
    for (rsq::index_t j = 0; j + 1 < 40; ++j) CHECK(l.h(res.perm(j), res.perm(j)) >= l.h(res.perm(j + 1), res.perm(j + 1)));
    for (rsq::index_t j = 0; j < 40; ++j) CHECK(res.weight.g_idx(res.perm(j)) == j / 16);
    auto const st = rsq::gptq::solve(rsq::backend::cpu_eigen{}, l.w, l.h, {},
                                     {.group_size = 16, .act_order = true, .static_groups = true});
    for (rsq::index_t c = 0; c < 40; ++c) CHECK(st.weight.g_idx(c) == c / 16);
    auto const rows = rsq::gptq::solve(rsq::backend::cpu_eigen{}, l.w, l.h, {}, {});
    CHECK(rows.weight.groups() == 1);
    for (rsq::index_t c = 0; c < 40; ++c) CHECK(rows.weight.g_idx(c) == 0);
    // Losses: per column, summing to the reference's "error".
    CHECK(res.total_loss() > 0);
  }

  TEST_CASE("row-major weights over several panels (tiled load and store, padded rows) equal the literal loop") {
    // 300 rows: more than one panel per thread, a last panel that is not a multiple of the leaf's 64-row chunk, and
    // row-major storage, so the register-tile transposes (not the strided fallback) load W and store the results.
    auto l = random_layer(300, 150, 9);
    for (int c : {3, 77}) {  // dead columns, placed by act-order among the others
      l.h.row(c).setZero();
      l.h.col(c).setZero();
    }
    Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> const w_rows = l.w;
    for (rsq::index_t group : {-1, 32}) {
      rsq::gptq::options const o{.group_size = group, .act_order = true};
      grid_spec const g{.bits = 3};
      CAPTURE(group);
      auto const res = rsq::gptq::solve(rsq::backend::cpu_eigen{}, w_rows, l.h, g, o);
      REQUIRE(res.ok());
      Mat const ref = reference_gptq(l.w, l.h, g, o);
      CHECK(identical_fraction(to_eigen(res.dequantized), ref) >= 0.999);
      CHECK(rsq::gptq::proxy_loss(l.w, to_eigen(res.dequantized), l.h) ==
            doctest::Approx(rsq::gptq::proxy_loss(l.w, ref, l.h)).epsilon(1e-6));
      for (int r = 0; r < 300; ++r) CHECK(res.dequantized(r, 77) == 0.0);
      // Codes decode to the dequantized values (both went through the store's permutation).
      int mismatches = 0;
      for (rsq::index_t r = 0; r < 300; ++r)
        for (rsq::index_t c = 0; c < 150; ++c) {
          auto const gi = res.weight.g_idx(c);
          double const q = res.weight.scales(r, gi) * (double(res.weight.codes(r, c)) - res.weight.zeros(r, gi));
          mismatches += q != res.dequantized(r, c);
        }
      CHECK(mismatches == 0);
    }
  }

  TEST_CASE("a NaN or Inf anywhere in W is reported with its position by a solve with a factorization") {
    // The CPU solver checks W as it loads its panels: tile interiors, edge columns (150 = 9 · 16 + 6), edge rows of a
    // last partial panel (1100 rows: panels of up to 512), the strided (column-major) load, static groups (checked
    // up front), with and without act-order's permutation, float and double.
    auto const l = random_layer(1100, 150, 21);
    auto check_type = [&]<class T>(T) {
      using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
      using ColMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
      RowMajor const w = l.w.cast<T>();
      ColMajor const h = l.h.cast<T>();
      grid_spec const g{.bits = 4};
      for (int variant = 0; variant < 3; ++variant) {
        rsq::gptq::options const o{.group_size = variant == 0 ? -1 : 32, .act_order = variant != 1,
                                   .static_groups = variant == 2};
        auto const f = rsq::gptq::factor(rsq::backend::cpu_eigen{}, h, o);
        REQUIRE(f.ok());
        for (auto [r, c] : {std::pair{700, 33}, {5, 149}, {1099, 17}, {1099, 149}, {0, 0}}) {
          for (T bad : {T(NAN), T(INFINITY), -T(INFINITY)}) {
            RowMajor wr = w;
            wr(r, c) = bad;
            ColMajor const wc = wr;
            std::string const where = "at row " + std::to_string(r) + ", column " + std::to_string(c);
            CAPTURE(variant);
            CAPTURE(where);
            CHECK_THROWS_WITH_AS((void)rsq::gptq::solve(rsq::backend::cpu_eigen{}, wr, f, g, o),
                                 doctest::Contains(where.c_str()), rsq::invalid_argument);
            CHECK_THROWS_WITH_AS((void)rsq::gptq::solve(rsq::backend::cpu_eigen{}, wc, f, g, o),
                                 doctest::Contains(where.c_str()), rsq::invalid_argument);
          }
        }
        auto const clean = rsq::gptq::solve(rsq::backend::cpu_eigen{}, w, f, g, o);  // and a finite W still solves
        CHECK(clean.ok());
      }
    };
    check_type(float{});
    check_type(double{});
  }

  TEST_CASE("a recycled result gives the fresh result, reusing the arrays whose sizes match") {
    auto const l = random_layer(300, 150, 12);
    auto w = rsq::make_matrix<float>(300, 150), h = rsq::make_matrix<float>(150, 150);
    for (rsq::index_t r = 0; r < 300; ++r)
      for (rsq::index_t c = 0; c < 150; ++c) w(r, c) = float(l.w(r, c));
    for (rsq::index_t r = 0; r < 150; ++r)
      for (rsq::index_t c = 0; c < 150; ++c) h(r, c) = float(l.h(r, c));
    rsq_test::check_recycled_result<rsq::backend::cpu_eigen>(w, h);
  }

  TEST_CASE("dead columns are zeroed and quantize to 0") {
    auto l = random_layer(10, 30, 4);
    for (int c : {0, 7, 29}) {
      l.h.row(c).setZero();
      l.h.col(c).setZero();
    }
    auto const res = rsq::gptq::solve(rsq::backend::cpu_eigen{}, l.w, l.h, {.bits = 4, .symmetric = true}, {});
    REQUIRE(res.ok());
    for (int c : {0, 7, 29})
      for (int r = 0; r < 10; ++r) CHECK(res.dequantized(r, c) == 0.0);
    Mat const ref = reference_gptq(l.w, l.h, {.bits = 4, .symmetric = true}, {});
    CHECK(identical_fraction(to_eigen(res.dequantized), ref) >= 0.999);
  }

  TEST_CASE("a singular (rank-deficient) H is fixed by the first damping") {
    auto const l = random_layer(12, 64, 6, /*tokens=*/20);  // rank 20 < 64
    auto const res = rsq::gptq::solve(rsq::backend::cpu_eigen{}, l.w, l.h, {}, {});
    CHECK(res.ok());
    CHECK(res.damp_attempts == 1);
  }

  TEST_CASE("an indefinite H escalates the damping from the original H, then reports a status") {
    // diag(1, ..., 1, -0.2) with n = 10: damp = 0.01 * 0.88, and k * damp > 0.2 needs k = 23.
    Mat h = Mat::Identity(10, 10);
    h(9, 9) = -0.2;
    Mat const w = Mat::Ones(3, 10);
    auto const ok = rsq::gptq::solve(rsq::backend::cpu_eigen{}, w, h, {}, {});
    CHECK(ok.ok());
    CHECK(ok.damp_attempts == 23);
    CHECK(ok.damp_percent_used == doctest::Approx(0.23));
    CHECK(ok.damp_used == doctest::Approx(23 * 0.01 * 0.88));
    auto const bad = rsq::gptq::solve(rsq::backend::cpu_eigen{}, w, h, {}, {.max_damp_attempts = 10});
    CHECK(bad.info == rsq::gptq::status::not_positive_definite);
    CHECK_FALSE(bad.ok());
    CHECK(bad.damp_attempts == 10);
    CHECK(bad.failed_column == 9);
    CHECK(bad.weight.codes.size() == 0);
    CHECK(rsq::gptq::to_string(bad.info) == "not_positive_definite");
    // Strongly indefinite: fails with the default 50 attempts too.
    Mat neg = -Mat::Identity(10, 10);
    auto const fail = rsq::gptq::solve(rsq::backend::cpu_eigen{}, w, neg, {}, {});
    CHECK(fail.info == rsq::gptq::status::not_positive_definite);
    CHECK(fail.damp_attempts == 50);
    // A failed factorization loads no panel, but a NaN in W is still reported first.
    auto const failed = rsq::gptq::factor(rsq::backend::cpu_eigen{}, neg, {});
    REQUIRE_FALSE(failed.ok());
    Mat wn = w;
    wn(1, 4) = NAN;
    CHECK_THROWS_WITH_AS((void)rsq::gptq::solve(rsq::backend::cpu_eigen{}, wn, failed, grid_spec{}, {}),
                         doctest::Contains("at row 1, column 4"), rsq::invalid_argument);
  }

  TEST_CASE("bad arguments are rejected with messages that name them") {
    auto const l = random_layer(4, 16, 1);
    using rsq::invalid_argument;
    auto solve = [&](Mat const& w, Mat const& h, grid_spec g = {}, rsq::gptq::options o = {}) {
      return rsq::gptq::solve(rsq::backend::cpu_eigen{}, w, h, g, o);
    };
    CHECK_THROWS_WITH_AS(solve(l.w, Mat::Identity(15, 15)), doctest::Contains("Hessian must be (cols x cols)"),
                         invalid_argument);
    CHECK_THROWS_WITH_AS(solve(Mat(0, 16), l.h), doctest::Contains("empty"), invalid_argument);
    Mat wn = l.w;
    wn(2, 5) = NAN;
    CHECK_THROWS_WITH_AS(solve(wn, l.h), doctest::Contains("weight has a non-finite value"), invalid_argument);
    Mat hn = l.h;
    hn(3, 4) = INFINITY;
    CHECK_THROWS_WITH_AS(solve(l.w, hn), doctest::Contains("Hessian has a non-finite value"), invalid_argument);
    Mat ha = l.h;
    ha(3, 4) += 1.0;
    CHECK_THROWS_WITH_AS(solve(l.w, ha), doctest::Contains("not symmetric"), invalid_argument);
    CHECK_THROWS_WITH_AS(solve(l.w, l.h, {.bits = 1}), doctest::Contains("bits"), invalid_argument);
    CHECK_THROWS_WITH_AS(solve(l.w, l.h, {.bits = 9}), doctest::Contains("bits"), invalid_argument);
    CHECK_THROWS_WITH_AS(solve(l.w, l.h, {}, {.group_size = 0}), doctest::Contains("group_size"), invalid_argument);
    CHECK_THROWS_WITH_AS(solve(l.w, l.h, {}, {.block_size = 0}), doctest::Contains("block_size"), invalid_argument);
    CHECK_THROWS_WITH_AS(solve(l.w, l.h, {}, {.damp_percent = -0.1}), doctest::Contains("damp_percent"),
                         invalid_argument);
    CHECK_THROWS_WITH_AS(solve(l.w, l.h, {}, {.static_groups = true}), doctest::Contains("static_groups"),
                         invalid_argument);
    CHECK_THROWS_WITH_AS(solve(l.w, l.h, {}, {.max_damp_attempts = 0}), doctest::Contains("max_damp_attempts"),
                         invalid_argument);
  }
}
