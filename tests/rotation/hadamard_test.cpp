// SPDX-License-Identifier: MIT
// Hadamard matrices, construction choice and the fast transform, against the reference's golden data
// (../shared/golden/hadamard_*), brute-force float64 formulas and exact integer identities.
//  - The matrices and plans (hadK as stored by the reference, Paley and Sylvester constructions, the construction
//    table, unsupported sizes and the block-diagonal fallback) and the CPU's own transform of a Paley size beyond the
//    GPU's mix: host code, tested once.
//  - The transform on every backend (TEST_CASE_TEMPLATE over RSQ_TEST_BACKENDS, through
//    rotation::hadamard::apply_with_signs(be, ...)): the golden y = (hadK ⊗ H_{n/K})·x/√n, the dense float64 matrix
//    for every K of the reference table and powers of two up to 32768, fused signs with H and Hᵀ, strided views and
//    rows in the backend's memory (a row stride, a column stride, a batch of rows as the online Hadamard across
//    heads), block-diagonal plans, float against float64, bad shapes and signs.
//  - CUDA only: every launch configuration of the kernel, and the inputs the GPU does not take.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <xtensor/xmanipulation.hpp>

#include <rsq/backend/cpu/eigen_map.hpp>
#include <rsq/io/npy.hpp>
#include <rsq/rotation/hadamard.hpp>
#include <rsq/rotation/hadamard_matrices.hpp>
#include <rsq/rotation/hadamard_plan.hpp>
#include <rsq/rotation/randomized_hadamard.hpp>

#include "support/backend_data.hpp"
#include "support/backends.hpp"
#include "support/compare.hpp"
#include "support/shared_data.hpp"

namespace {

using rsq::index_t;
using namespace rsq::rotation;

// Reads an integer field ("n": 1024) from the golden meta.json.
index_t json_int(std::string const& text, std::string const& key) {
  auto const at = text.find("\"" + key + "\"");
  REQUIRE(at != std::string::npos);
  auto const colon = text.find(':', at);
  return index_t(std::stoll(text.substr(colon + 1)));
}

Eigen::MatrixXd to_eigen(sign_matrix const& s) {
  Eigen::MatrixXd m(s.k, s.k);
  for (index_t i = 0; i < s.k; ++i)
    for (index_t j = 0; j < s.k; ++j) m(i, j) = s(i, j);
  return m;
}

// Exact check of S Sᵀ = k I (products of +-1 sums are exact integers in double).
void check_hadamard_identity(sign_matrix const& s) {
  Eigen::MatrixXd const m = to_eigen(s);
  Eigen::MatrixXd const g = m * m.transpose();
  CHECK((g - double(s.k) * Eigen::MatrixXd::Identity(s.k, s.k)).cwiseAbs().maxCoeff() == 0.0);
  CHECK(m.cwiseAbs().minCoeff() == 1.0);
}

// Brute-force (hadK ⊗ H_p)/√n from the definition: hadK on the slow index, Sylvester on the fast index.
Eigen::MatrixXd kronecker_reference(sign_matrix const* hadk, index_t n) {
  index_t const k = hadk ? hadk->k : 1, p = n / k;
  Eigen::MatrixXd m(n, n);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n; ++j) {
      double const slow = hadk ? double((*hadk)(i / p, j / p)) : 1.0;
      double const fast = (std::popcount(std::uint64_t((i % p) & (j % p))) % 2) ? -1.0 : 1.0;
      m(i, j) = slow * fast / std::sqrt(double(n));
    }
  return m;
}

Eigen::MatrixXd dense_of(hadamard const& h) {
  auto const d = h.dense();
  Eigen::MatrixXd m(h.size(), h.size());
  for (index_t i = 0; i < h.size(); ++i)
    for (index_t j = 0; j < h.size(); ++j) m(i, j) = d(std::size_t(i), std::size_t(j));
  return m;
}

// Deterministic test data without the library's RNG: a fixed irrational-step sequence.
template <class T>
rsq::matrix<T> test_matrix(index_t rows, index_t cols, double phase = 0.0) {
  auto a = rsq::matrix<T>::from_shape({std::size_t(rows), std::size_t(cols)});
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j)
      a(std::size_t(i), std::size_t(j)) = T(std::sin(0.7 * double(i * cols + j) + phase) + 0.1 * double(j % 5));
  return a;
}

// The backend's transform of every row: diag(post)·op(H)·diag(pre)·x.
template <class B, class T>
void transform(rsq::matrix_view<T> rows, hadamard_options const& opt = {}, std::span<std::int8_t const> pre = {},
               std::span<std::int8_t const> post = {}, bool transpose = false) {
  hadamard(rows.cols(), opt).apply_with_signs(B{}, rows, transpose, pre, post);
}

template <class T>
rsq::matrix<T> random_rows(index_t rows, index_t n, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd;
  auto m = rsq::make_matrix<T>(rows, n);
  for (auto& v : m) v = T(nd(rng));
  return m;
}


// max |a − b|
template <class A, class C>
double max_abs(A const& a, C const& b) {
  REQUIRE(a.size() == b.size());
  double e = 0;
  for (std::size_t i = 0; i < a.size(); ++i) e = std::max(e, std::abs(double(a.data()[i]) - double(b.data()[i])));
  return e;
}

// y = x·Hᵀ (each row x becomes H x) with the dense float64 H.
rsq::matrix<double> dense_apply(rsq::matrix<double> const& h, rsq::matrix<double> const& x) {
  auto const n = index_t(h.shape()[0]), rows = index_t(x.shape()[0]);
  auto y = rsq::make_matrix<double>(rows, n);
  for (index_t r = 0; r < rows; ++r)
    for (index_t i = 0; i < n; ++i) {
      double s = 0;
      for (index_t j = 0; j < n; ++j) s += h(i, j) * x(r, j);
      y(r, i) = s;
    }
  return y;
}

}  // namespace

TEST_SUITE("rotation.hadamard") {
  TEST_CASE("every reference hadK equals the reference's matrix, as stored (not transposed)") {
    RSQ_NEED_SHARED(shared);
    for (index_t const k : reference_hadamard_orders) {
      CAPTURE(k);
      auto const golden = rsq::io::load_npy<std::int8_t, 2>(shared / "golden" / ("hadamard_K" + std::to_string(k)) /
                                                            "hadK.npy");
      REQUIRE(golden.shape()[0] == std::size_t(k));
      REQUIRE(golden.shape()[1] == std::size_t(k));
      auto const& mine = reference_hadamard(k);
      REQUIRE(mine.k == k);
      index_t mismatches = 0;
      for (index_t i = 0; i < k; ++i)
        for (index_t j = 0; j < k; ++j) mismatches += golden(std::size_t(i), std::size_t(j)) != mine(i, j);
      CHECK(mismatches == 0);
      auto const meta = rsq_test::read_text(shared / "golden" / ("hadamard_K" + std::to_string(k)) / "meta.json");
      if (meta.find("\"K\"") != std::string::npos) CHECK(json_int(meta, "K") == k);
    }
  }

  TEST_CASE("every reference hadK is Hadamard: H Hᵀ = K I, entries +-1") {
    for (index_t const k : reference_hadamard_orders) {
      CAPTURE(k);
      check_hadamard_identity(reference_hadamard(k));
    }
    // Most are not symmetric, so the orientation matters (spec §3: only had28 and had36 are).
    CHECK(to_eigen(reference_hadamard(28)).isApprox(to_eigen(reference_hadamard(28)).transpose()));
    CHECK(to_eigen(reference_hadamard(36)).isApprox(to_eigen(reference_hadamard(36)).transpose()));
    CHECK_FALSE(to_eigen(reference_hadamard(12)).isApprox(to_eigen(reference_hadamard(12)).transpose()));
    CHECK_FALSE(to_eigen(reference_hadamard(172)).isApprox(to_eigen(reference_hadamard(172)).transpose()));
  }

  TEST_CASE("Paley and Sylvester constructions are Hadamard matrices") {
    for (index_t const q : {3, 7, 11, 19, 23, 31, 43, 47, 59, 67, 83, 107, 139, 499}) {
      CAPTURE(q);
      check_hadamard_identity(paley1_hadamard(q));
    }
    for (index_t const q : {5, 13, 17, 29, 37, 41, 53, 461}) {
      CAPTURE(q);
      check_hadamard_identity(paley2_hadamard(q));
    }
    for (index_t const k : {1, 2, 4, 8, 64}) check_hadamard_identity(sylvester_hadamard(k));
    CHECK(sylvester_hadamard(4)(3, 3) == 1);
    CHECK(sylvester_hadamard(4)(1, 3) == -1);
  }

  TEST_CASE("the transform is (hadK ⊗ H_{n/K})/√n from the definition, and orthonormal") {
    // Every reference K (times 4), powers of two, and Paley extensions.
    std::vector<index_t> sizes = {1, 2, 4, 8, 64, 1024, 44 * 8, 924, 924 * 2, 84 * 4};
    for (index_t const k : reference_hadamard_orders) sizes.push_back(k * 4);
    for (index_t const n : sizes) {
      CAPTURE(n);
      hadamard const h(n);
      Eigen::MatrixXd const d = dense_of(h);
      CHECK((d * d.transpose() - Eigen::MatrixXd::Identity(n, n)).cwiseAbs().maxCoeff() < 1e-12);
      if (n <= 1024) CHECK((d - kronecker_reference(h.small_factor(), n)).cwiseAbs().maxCoeff() < 1e-13);
    }
  }

  TEST_CASE("construction table of spec §2.4 (reference K first), and Paley beyond it") {
    struct row {
      index_t n;
      hadamard_kind kind;
      index_t k, m;
    };
    for (auto const& r : {row{4096, hadamard_kind::sylvester, 1, 12}, row{14336, hadamard_kind::reference, 28, 9},
                          row{11008, hadamard_kind::reference, 172, 6}, row{5120, hadamard_kind::reference, 40, 7},
                          row{3584, hadamard_kind::reference, 28, 7}, row{18944, hadamard_kind::reference, 148, 7},
                          row{13824, hadamard_kind::reference, 108, 7}, row{27648, hadamard_kind::reference, 108, 8},
                          row{28672, hadamard_kind::reference, 28, 10}, row{8192, hadamard_kind::sylvester, 1, 13},
                          row{128, hadamard_kind::sylvester, 1, 7}, row{96, hadamard_kind::reference, 48, 1},
                          row{12, hadamard_kind::reference, 12, 0}}) {
      CAPTURE(r.n);
      auto const p = plan_hadamard(r.n);
      CHECK(p.kind == r.kind);
      CHECK(p.k == r.k);
      CHECK(p.m == r.m);
      CHECK(p.k * (index_t(1) << p.m) == r.n);
      REQUIRE(reference_hadk(r.n).has_value());
      CHECK(*reference_hadk(r.n) == r.k);
    }
    // Qwen2.5-72B's intermediate size: the reference asserts (29568 = 28 * 1056); rsq uses Paley II of order 924.
    CHECK_FALSE(reference_hadk(29568).has_value());
    auto const p = plan_hadamard(29568);
    CHECK(p.kind == hadamard_kind::paley2);
    CHECK(p.k == 924);
    CHECK(p.m == 5);
    CHECK(p.q == 461);
    CHECK(p.to_string() == "paley2(q=461,K=924)xH32");
    CHECK(plan_hadamard(14336).to_string() == "reference(K=28)xH512");
    CHECK(plan_hadamard(4096).to_string() == "H4096");
    auto const p1 = plan_hadamard(44 * 16);  // 43 = 3 mod 4: Paley I
    CHECK(p1.kind == hadamard_kind::paley1);
    CHECK(p1.k == 44);
    CHECK(p1.q == 43);
  }

  TEST_CASE("a large transform of a Paley size matches the dense Kronecker product row by row") {
    index_t const n = 29568;
    hadamard const h(n);
    auto x = test_matrix<double>(2, n);
    auto const x0 = x;
    h.apply(rsq::view(x));
    // Row 0 of the result, entries i = a*p + b for a few (a, b), by the definition.
    index_t const p = n / 924;
    auto const& hk = *h.small_factor();
    for (index_t const i : {index_t(0), index_t(1), index_t(p + 3), index_t(500 * p + 17), n - 1}) {
      double s = 0.0;
      for (index_t j = 0; j < n; ++j) {
        double const fast = (std::popcount(std::uint64_t((i % p) & (j % p))) % 2) ? -1.0 : 1.0;
        s += double(hk(i / p, j / p)) * fast * x0(1, std::size_t(j));
      }
      CHECK(x(1, std::size_t(i)) == doctest::Approx(s / std::sqrt(double(n))).epsilon(1e-12));
    }
  }

  TEST_CASE("unsupported sizes: a clear error, or the block-diagonal fallback when asked") {
    CHECK_THROWS_WITH_AS((void)plan_hadamard(1001), doctest::Contains("no Hadamard construction for n = 1001"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(hadamard(1001), doctest::Contains("hadamard_fallback::block_diagonal"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)plan_hadamard(29568, {.extensions = false}),
                         doctest::Contains("no Hadamard construction for n = 29568"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)plan_hadamard(29568, {.max_order = 512}), doctest::Contains("max_order = 512"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)plan_hadamard(0), doctest::Contains("n must be positive, got 0"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)plan_hadamard(-8), doctest::Contains("got -8"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)plan_hadamard(64, {.max_order = 0}), doctest::Contains("max_order must be >= 1"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)reference_hadk(0), doctest::Contains("n must be positive"), rsq::invalid_argument);

    for (index_t const n : {index_t(1001), index_t(3), index_t(92 * 4), index_t(1000)}) {
      CAPTURE(n);
      auto const p = plan_hadamard(n, {.fallback = hadamard_fallback::block_diagonal});
      index_t covered = 0;
      if (p.kind == hadamard_kind::block_diagonal)
        for (auto const& b : p.blocks) covered += b.n;
      else
        covered = p.n;
      CHECK(covered == n);
      hadamard const h(n, {.fallback = hadamard_fallback::block_diagonal});
      Eigen::MatrixXd const d = dense_of(h);
      CHECK((d * d.transpose() - Eigen::MatrixXd::Identity(n, n)).cwiseAbs().maxCoeff() < 1e-12);
    }
    // 1000 = 500 * 2 with Paley I (q = 499): no fallback needed.
    CHECK(plan_hadamard(1000).kind == hadamard_kind::paley1);
    auto const p1001 = plan_hadamard(1001, {.fallback = hadamard_fallback::block_diagonal});
    CHECK(p1001.to_string() == "block_diagonal[paley1(q=499,K=500)xH2,H1]");
  }

  TEST_CASE("bad factory arguments") {
    CHECK_THROWS_WITH_AS((void)reference_hadamard(13), doctest::Contains("no reference matrix of order 13"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)paley1_hadamard(13), doctest::Contains("prime = 3 (mod 4), got 13"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)paley1_hadamard(15), doctest::Contains("got 15"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)paley2_hadamard(11), doctest::Contains("prime = 1 (mod 4), got 11"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)sylvester_hadamard(12), doctest::Contains("power of two, got 12"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)hadamard::block_diagonal(0, 8), doctest::Contains("number of blocks must be positive"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)hadamard::block_diagonal(4, 0), doctest::Contains("block length must be positive"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)hadamard::block_diagonal(4, 1001), doctest::Contains("n = 1001"),
                         rsq::invalid_argument);
    // The CPU's own members (no backend argument) check the shapes as well.
    hadamard const h(64);
    auto wrong = test_matrix<float>(3, 32);
    CHECK_THROWS_WITH_AS(h.apply(rsq::view(wrong)),
                         doctest::Contains("rows have length 32, the transform has length 64"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(h.apply_transpose(rsq::view(wrong)), doctest::Contains("(3 x 32)"), rsq::invalid_argument);
    rsq::matrix<float> empty = rsq::matrix<float>::from_shape({0, 64});
    CHECK_THROWS_WITH_AS(h.apply(rsq::view(empty)), doctest::Contains("empty"), rsq::invalid_argument);
  }

  TEST_CASE_TEMPLATE("the golden transforms are reproduced to 1e-12 in float64, and inverted by the transpose", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    RSQ_NEED_SHARED(shared);
    B const be{};
    // The CPU's measure is max |error|; the other backends' max |error| / max |y|.
    auto err = [](auto const& a, auto const& b) { return rsq_test::is_cpu<B> ? max_abs(a, b) : rsq_test::max_norm_rel(a, b); };
    int cases = 0;
    for (auto const& entry : std::filesystem::directory_iterator(shared / "golden")) {
      std::string const name = entry.path().filename().string();
      if (name.rfind("hadamard_n", 0) != 0) continue;
      CAPTURE(name);
      auto const meta = rsq_test::read_text(entry.path() / "meta.json");
      index_t const n = json_int(meta, "n"), k = json_int(meta, "K");
      auto x = rsq::io::load_npy<double, 2>(entry.path() / "x.npy");  // (3, n)
      auto const y = rsq::io::load_npy<double, 2>(entry.path() / "y.npy");
      REQUIRE(x.shape()[1] == std::size_t(n));
      REQUIRE(reference_hadk(n).has_value());
      CHECK(*reference_hadk(n) == k);
      // The reference divides by torch.tensor(n).sqrt(), a float32 value: parity needs that scaling.
      hadamard const parity(n, {.scaling = hadamard_scaling::reference_float32});
      CHECK(parity.plan().k == k);
      auto const x0 = x;
      auto xp = x;
      parity.apply(be, rsq::view(xp));
      CHECK(err(xp, y) <= 1e-12);
      // The default is exactly orthonormal: the same up to the factor √n/fl32(√n), and inverted by the transpose.
      hadamard const h(n);
      h.apply(be, rsq::view(x));
      double const ratio = std::sqrt(double(n)) / double(std::sqrt(float(n)));
      rsq::matrix<double> const scaled = x * ratio;
      CHECK(err(scaled, y) <= 1e-12);
      h.apply_transpose(be, rsq::view(x));
      CHECK(err(x, x0) <= 1e-12);
      ++cases;
    }
    CHECK(cases >= 16);
  }

  TEST_CASE_TEMPLATE("every K of the reference table and powers of two up to 32768 match the dense matrix", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    // n = K·2^m with m = 0 and 1 too (rows not a multiple of 8 take the GPU kernel's plain load).
    std::vector<index_t> sizes = {1, 2, 4, 8, 16, 64, 256, 1024, 12, 24, 20, 40, 172, 344};
    for (index_t k : reference_hadamard_orders) sizes.push_back(k * 4);
    sizes.push_back(28 * 64);
    sizes.push_back(44 * 4);  // Paley I beyond the reference table (q = 43)
    sizes.push_back(76 * 4);  // Paley II beyond the reference table (q = 37)
    for (index_t n : sizes) {
      CAPTURE(n);
      hadamard_options opt;
      auto const plan = plan_hadamard(n, opt);
      if (plan.kind == hadamard_kind::block_diagonal) continue;
      auto const h = hadamard(n, opt).dense();  // (n, n) float64
      auto x = random_rows<double>(3, n, unsigned(n));
      auto const ref = dense_apply(h, x);
      transform<B>(rsq::view(x));
      CHECK(rsq_test::max_norm_rel(x, ref) < 1e-12);
      auto xf = random_rows<float>(5, n, unsigned(n + 1));
      rsq::matrix<double> xd = xt::cast<double>(xf);
      transform<B>(rsq::view(xf));
      CHECK(rsq_test::max_norm_rel(xf, dense_apply(h, xd)) < 2e-6);
    }
    // Large powers of two and K·2^m of real models: against the CPU transform (float) and the round trip (double).
    for (index_t n : {index_t(4096), index_t(32768), index_t(28 * 512), index_t(148 * 128), index_t(40 * 128),
                      index_t(172 * 64)}) {
      CAPTURE(n);
      auto x = random_rows<float>(4, n, unsigned(3 * n));
      auto ref = x;
      hadamard(n).apply(rsq::view(ref));
      transform<B>(rsq::view(x));
      CHECK(rsq_test::max_norm_rel(x, ref) < 1e-5);
      if (n > 24576) continue;  // double rows beyond 24576 do not fit in the GPU kernel's shared memory
      auto xd = random_rows<double>(2, n, unsigned(5 * n));
      auto const orig = xd;
      transform<B>(rsq::view(xd));
      transform<B>(rsq::view(xd), {}, {}, {}, true);  // Hᵀ H = I
      CHECK(rsq_test::max_norm_rel(xd, orig) < 1e-13);
    }
  }

  TEST_CASE_TEMPLATE("signs are fused on both sides, with H or its transpose (randomized Hadamard rotations)", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    for (index_t n : {index_t(512), index_t(28 * 32), index_t(12 * 8)}) {
      CAPTURE(n);
      auto const rot = randomized_hadamard(n, 1234);
      auto const signs = rot.signs();
      auto const h = hadamard(n).dense();
      for (bool transpose : {false, true}) {
        auto x = random_rows<double>(3, n, unsigned(n + transpose));
        // Reference: diag(post)·op(H)·diag(pre)·x in float64, signs on both sides.
        auto pre_x = x;
        for (index_t r = 0; r < 3; ++r)
          for (index_t j = 0; j < n; ++j) pre_x(r, j) *= signs[std::size_t(j)];
        rsq::matrix<double> hop = h;
        if (transpose) hop = xt::transpose(h);
        auto ref = dense_apply(hop, pre_x);
        for (index_t r = 0; r < 3; ++r)
          for (index_t j = 0; j < n; ++j) ref(r, j) *= signs[std::size_t((j * 7) % n)] * signs[std::size_t(j)];
        std::vector<std::int8_t> post(static_cast<std::size_t>(n));
        for (index_t j = 0; j < n; ++j)
          post[std::size_t(j)] = std::int8_t(signs[std::size_t((j * 7) % n)] * signs[std::size_t(j)]);
        transform<B>(rsq::view(x), {}, signs, post, transpose);
        CHECK(rsq_test::max_norm_rel(x, ref) < 1e-12);
      }
      // The rotation's own W·Q equals the transform with pre-signs.
      auto w = random_rows<double>(4, n, 99);
      auto w_ref = w;
      rot.apply_right(rsq::view(w_ref));
      transform<B>(rsq::view(w), {}, signs);
      CHECK(rsq_test::max_norm_rel(w, w_ref) < 1e-12);
    }
  }

  TEST_CASE_TEMPLATE("rows in the backend's memory: a row stride, a column stride, a batch of rows across heads", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    // Rows with a leading dimension larger than n: the padding columns are untouched.
    index_t const n = 28 * 64, ld = n + 40;
    auto const x = random_rows<float>(6, ld, 5);
    auto ref = x;
    hadamard(n).apply(rsq::matrix_view<float>(ref.data(), {6, n}, {ld, 1}));
    auto d = rsq_test::upload(be, x);
    hadamard(n).apply(be, rsq::matrix_view<float>(d.data(), {6, n}, {ld, 1}));
    auto const back = rsq_test::download(be, d.view());
    int bad = 0;
    for (index_t r = 0; r < 6; ++r)
      for (index_t c = 0; c < ld; ++c) {
        double const want = c < n ? ref(r, c) : x(r, c);
        bad += !(std::abs(back(r, c) - want) <= 1e-5 * (1 + std::abs(want)));
      }
    CHECK(bad == 0);
    // Every other column of the backend's rows (gathered and scattered back), with signs.
    auto const rot = randomized_hadamard(96, 3);
    auto const y = random_rows<double>(5, 200, 6);
    auto y_ref = y;
    rsq::matrix_view<double> every_other_ref(y_ref.data(), {5, 96}, {200, 2});
    hadamard(96).apply_with_signs(every_other_ref, true, {}, rot.signs());
    auto yd = rsq_test::upload(be, y);
    hadamard(96).apply_with_signs(be, rsq::matrix_view<double>(yd.data(), {5, 96}, {200, 2}), true, {}, rot.signs());
    CHECK(rsq_test::max_norm_rel(rsq_test::download(be, yd.view()), y_ref) < 1e-13);
    // The online Hadamard across the heads of each token: (tokens, head_dim, heads) rows of a (tokens, heads·head_dim)
    // array, with strides (heads·head_dim, 1, head_dim).
    index_t const tokens = 5, head_dim = 8, heads = 12;
    auto const a = random_rows<double>(tokens, heads * head_dim, 7);
    auto a_ref = a;
    for (index_t t = 0; t < tokens; ++t)
      hadamard(heads).apply(
          rsq::matrix_view<double>(a_ref.data() + t * heads * head_dim, {head_dim, heads}, {1, head_dim}));
    auto ad = rsq_test::upload(be, a);
    hadamard(heads).apply(be, rsq::tensor_view<double, 3>(ad.data(), {tokens, head_dim, heads},
                                                          {heads * head_dim, 1, head_dim}));
    CHECK(rsq_test::max_norm_rel(rsq_test::download(be, ad.view()), a_ref) < 1e-13);
    // reference_float32 scaling divides by the float32 sqrt(n), as the reference does.
    auto z = random_rows<float>(2, 1024 * 12, 6);
    auto z_ref = z;
    hadamard_options const f32{.scaling = hadamard_scaling::reference_float32};
    hadamard(1024 * 12, f32).apply(rsq::view(z_ref));
    hadamard_transform(be, rsq::view(z), f32);
    CHECK(rsq_test::max_norm_rel(z, z_ref) < 1e-5);
  }

  TEST_CASE_TEMPLATE("block-diagonal per-head transform equals H_hd/√hd on every chunk", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    hadamard const h = hadamard::block_diagonal(4, 8);
    CHECK(h.size() == 32);
    CHECK(h.plan().to_string() == "block_diagonal[H8,H8,H8,H8]");
    Eigen::MatrixXd const d = dense_of(h);
    Eigen::MatrixXd expect = Eigen::MatrixXd::Zero(32, 32);
    for (int b = 0; b < 4; ++b) expect.block(8 * b, 8 * b, 8, 8) = kronecker_reference(nullptr, 8);
    CHECK((d - expect).cwiseAbs().maxCoeff() < 1e-15);
    // Also through a strided (non-contiguous) view, which takes the per-block path.
    auto x = test_matrix<double>(6, 40);
    rsq::matrix_view<double> sub(x.data() + 4, {6, 32}, {40, 1});
    auto y = x;
    h.apply(be, sub);
    for (index_t r = 0; r < 6; ++r)
      for (index_t i = 0; i < 32; ++i) {
        double s = 0.0;
        for (index_t j = 0; j < 32; ++j) s += expect(i, j) * y(std::size_t(r), std::size_t(4 + j));
        CHECK(x(std::size_t(r), std::size_t(4 + i)) == doctest::Approx(s).epsilon(1e-13));
      }
    CHECK(x(0, 0) == y(0, 0));
    CHECK(x(5, 39) == y(5, 39));
    // Lengths without a construction, with the block-diagonal fallback: 6 = 4 + 2, 101 = 96 + 4 + 1.
    for (index_t const n : {index_t(6), index_t(101)}) {
      CAPTURE(n);
      hadamard_options const fb{.fallback = hadamard_fallback::block_diagonal};
      auto const dn = hadamard(n, fb).dense();
      auto z = random_rows<double>(3, n, unsigned(n));
      auto const z_ref = dense_apply(dn, z);
      hadamard_transform(be, rsq::view(z), fb);
      CHECK(rsq_test::max_norm_rel(z, z_ref) < 1e-12);
    }
  }

  TEST_CASE_TEMPLATE("bad shapes and signs name what is wrong", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    hadamard const h(64);
    auto wrong = test_matrix<float>(3, 32);
    CHECK_THROWS_WITH_AS(h.apply(be, rsq::view(wrong)),
                         doctest::Contains("rows have length 32, the transform has length 64"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(h.apply_transpose(be, rsq::view(wrong)), doctest::Contains("3 x 32)"),
                         rsq::invalid_argument);
    rsq::matrix<float> empty = rsq::matrix<float>::from_shape({0, 64});
    CHECK_THROWS_WITH_AS(h.apply(be, rsq::view(empty)), doctest::Contains("empty"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(hadamard_transform(be, rsq::view(empty)), doctest::Contains("empty"), rsq::invalid_argument);
    auto w = test_matrix<float>(2, 64);
    std::vector<std::int8_t> short_signs(10, 1);
    CHECK_THROWS_WITH_AS(h.apply_with_signs(be, rsq::view(w), false, short_signs, {}),
                         doctest::Contains("10 signs before the transform, expected 64"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(h.apply_with_signs(be, rsq::view(w), false, {}, short_signs),
                         doctest::Contains("10 signs after the transform, expected 64"), rsq::invalid_argument);
    auto z = test_matrix<float>(2, 1001);
    CHECK_THROWS_WITH_AS(hadamard_transform(be, rsq::view(z)), doctest::Contains("hadamard_fallback::block_diagonal"),
                         rsq::invalid_argument);
  }

  TEST_CASE_TEMPLATE("strided views (columns, blocks of Eigen matrices) give the same result as rows", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    auto check_type = [&]<class T>(T) {
      CAPTURE(sizeof(T));
      index_t const n = 224;  // 28 * 8
      hadamard const h(n);
      auto rows = test_matrix<T>(40, n);
      // The same data as columns of a row-major (n, 40) matrix, i.e. a transposed view.
      auto cols = rsq::matrix<T>::from_shape({std::size_t(n), 40});
      for (index_t i = 0; i < 40; ++i)
        for (index_t j = 0; j < n; ++j) cols(std::size_t(j), std::size_t(i)) = rows(std::size_t(i), std::size_t(j));
      h.apply(be, rsq::view(rows));
      rsq::matrix_view<T> transposed(cols.data(), {40, n}, {1, 40});
      h.apply(be, transposed);
      // The CPU transforms columns 16-64 at a time with another grouping of the butterflies: equal up to rounding.
      double const tol = std::is_same_v<T, float> ? 1e-5 : 1e-13;
      int bad = 0;
      for (index_t i = 0; i < 40; ++i)
        for (index_t j = 0; j < n; ++j)
          bad += !(double(cols(std::size_t(j), std::size_t(i))) ==
                   doctest::Approx(double(rows(std::size_t(i), std::size_t(j)))).epsilon(tol).scale(4.0));
      CHECK(bad == 0);
      // A column-major Eigen block.
      Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor> e(50, n + 3);
      for (index_t i = 0; i < 50; ++i)
        for (index_t j = 0; j < n + 3; ++j) e(i, j) = T(std::cos(0.3 * double(i + 7 * j)));
      Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> expect = e.block(5, 2, 40, n);
      auto blk = e.block(5, 2, 40, n);
      h.apply(be, rsq::matrix_view<T>(blk));
      h.apply(be, rsq::matrix_view<T>(expect));
      CHECK(double((e.block(5, 2, 40, n) - expect).cwiseAbs().maxCoeff()) < tol * 4.0);
    };
    check_type(float{});
    check_type(double{});
  }

  TEST_CASE_TEMPLATE("exotic strides: every element stepped over (both layouts) equals the contiguous transform", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    index_t const n = 96;  // 48 * 2
    hadamard const h(n);
    auto const ref0 = test_matrix<double>(20, n);
    auto ref = ref0;
    h.apply(be, rsq::view(ref));
    std::vector<double> buf(std::size_t(20 * n * 4), 0.0);
    for (int layout = 0; layout < 2; ++layout) {
      CAPTURE(layout);
      std::array<index_t, 2> const strides =
          layout == 0 ? std::array<index_t, 2>{2, 41} : std::array<index_t, 2>{3 * n, 2};
      rsq::matrix_view<double> v(buf.data(), {20, n}, strides);
      for (index_t i = 0; i < 20; ++i)
        for (index_t j = 0; j < n; ++j) v(i, j) = ref0(std::size_t(i), std::size_t(j));
      h.apply(be, v);
      int bad = 0;
      for (index_t i = 0; i < 20; ++i)
        for (index_t j = 0; j < n; ++j)
          bad += !(v(i, j) == doctest::Approx(ref(std::size_t(i), std::size_t(j))).epsilon(1e-13).scale(4.0));
      CHECK(bad == 0);
    }
  }

  TEST_CASE_TEMPLATE("float transform agrees with float64 to 1e-5, and many rows at once equal one row at a time", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    for (index_t const n : {index_t(4096), index_t(11008), index_t(14336)}) {
      CAPTURE(n);
      hadamard const h(n);
      auto xf = test_matrix<float>(64, n);
      auto xd = test_matrix<double>(64, n);
      auto single = xf;
      h.apply(be, rsq::view(xf));
      h.apply(be, rsq::view(xd));
      double err = 0.0;
      for (std::size_t i = 0; i < xf.size(); ++i) err = std::max(err, std::abs(double(xf.data()[i]) - xd.data()[i]));
      CHECK(err < 1e-5);
      for (index_t r = 0; r < 64; r += 21) {
        h.apply(be, rsq::matrix_view<float>(single.data() + r * n, 1, n));
        int bad = 0;
        for (index_t j = 0; j < n; ++j)
          bad += single(std::size_t(r), std::size_t(j)) != xf(std::size_t(r), std::size_t(j));
        CHECK(bad == 0);
      }
    }
  }

  TEST_CASE_TEMPLATE("hadamard_transform convenience equals a planned transform", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    auto a = test_matrix<double>(3, 160);
    auto b = a;
    hadamard_transform(be, rsq::view(a));
    hadamard(160).apply(be, rsq::view(b));
    for (std::size_t i = 0; i < a.size(); ++i) CHECK(a.data()[i] == b.data()[i]);
    // The CPU's overloads without a backend are the CPU backend.
    auto c = test_matrix<double>(3, 160);
    auto d = c;
    hadamard_transform(rsq::view(c));
    hadamard(160).apply(rsq::backend::cpu_eigen{}, rsq::view(d));
    CHECK(c == d);
  }
}

#if defined(RSQ_WITH_CUDA) && RSQ_WITH_CUDA
TEST_SUITE("rotation.hadamard.cuda") {
  TEST_CASE("every launch configuration (threads per CTA, prefetch depth, rows per CTA) gives the CPU transform") {
    RSQ_NEED_DEVICE(rsq::backend::cuda);
    rsq::backend::cuda const be{};
    for (index_t n : {index_t(8), index_t(256), index_t(4096), index_t(16384), index_t(32768), index_t(28 * 512),
                      index_t(148 * 128), index_t(12)}) {
      auto const rot = randomized_hadamard(n, 7);
      for (int threads : {256, 512, 1024}) {
        CAPTURE(n);
        CAPTURE(threads);
        rsq::cuda::tuning().hadamard_threads = threads;
        auto x = random_rows<float>(5, n, unsigned(n + threads));
        auto ref = x;
        hadamard(n).apply_with_signs(rsq::view(ref), false, rot.signs(), {});
        hadamard(n).apply_with_signs(be, rsq::view(x), false, rot.signs(), {});
        CHECK(rsq_test::max_norm_rel(x, ref) < 1e-5);
        if (n <= 16384) {
          auto xd = random_rows<double>(3, n, unsigned(n + 2 * threads));
          auto refd = xd;
          hadamard(n).apply_with_signs(rsq::view(refd), true, {}, rot.signs());
          hadamard(n).apply_with_signs(be, rsq::view(xd), true, {}, rot.signs());
          CHECK(rsq_test::max_norm_rel(xd, refd) < 1e-12);
        }
      }
    }
    rsq::cuda::tuning().hadamard_threads = 0;
  }

  TEST_CASE("what the GPU kernel does not take: long rows, large Paley factors, signs other than +-1") {
    RSQ_NEED_DEVICE(rsq::backend::cuda);
    rsq::backend::cuda const be{};
    using rsq::invalid_argument;
    auto z = random_rows<float>(2, 1000, 7);  // 1000 = 500·2: a Paley factor too large for the GPU mix
    CHECK_THROWS_WITH_AS(hadamard_transform(be, rsq::view(z)), doctest::Contains("order 500 > 256"), invalid_argument);
    auto big = random_rows<float>(1, 65536, 8);
    CHECK_THROWS_WITH_AS(hadamard_transform(be, rsq::view(big)), doctest::Contains("shared memory"), invalid_argument);
    auto w = random_rows<float>(2, 64, 9);
    std::vector<std::int8_t> bad(64, 1);
    bad[3] = 0;
    CHECK_THROWS_WITH_AS(hadamard(64).apply_with_signs(be, rsq::view(w), false, bad, {}),
                         doctest::Contains("sign 3 is 0"), invalid_argument);
  }
}
#endif
