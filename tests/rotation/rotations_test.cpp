// SPDX-License-Identifier: MIT
// Rotations (spec §2.2, §2.3, §10): orthogonality, the four products against dense float64 brute force, exact
// inversion, invariance of W x, reproducibility from a seed, descriptors, and bad arguments.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <bit>
#include <cmath>
#include <string>
#include <vector>

#include <rsq/backend/cpu/eigen_map.hpp>
#include <rsq/rotation/any_rotation.hpp>
#include <rsq/rotation/hadamard.hpp>
#include <rsq/rotation/random_orthogonal.hpp>
#include <rsq/rotation/randomized_hadamard.hpp>
#include <rsq/rotation/rotation.hpp>

using rsq::index_t;
using namespace rsq::rotation;

static_assert(rotation_for<hadamard_rotation, float>);
static_assert(rotation_for<hadamard_rotation, double>);
static_assert(rotation_for<random_orthogonal, float>);
static_assert(rotation_for<random_orthogonal, double>);
static_assert(!rotation_for<hadamard, float>);

namespace {

template <class T>
rsq::matrix<T> test_matrix(index_t rows, index_t cols, double phase = 0.0) {
  auto a = rsq::matrix<T>::from_shape({std::size_t(rows), std::size_t(cols)});
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j)
      a(std::size_t(i), std::size_t(j)) = T(std::sin(0.37 * double(i * cols + j) + phase) + 0.05 * double(i % 3));
  return a;
}

template <class T>
Eigen::MatrixXd to_double(rsq::matrix<T> const& a) {
  Eigen::MatrixXd m(a.shape()[0], a.shape()[1]);
  for (std::size_t i = 0; i < a.shape()[0]; ++i)
    for (std::size_t j = 0; j < a.shape()[1]; ++j) m(Eigen::Index(i), Eigen::Index(j)) = double(a(i, j));
  return m;
}

template <class T>
constexpr double tol() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

double max_abs(Eigen::MatrixXd const& m) { return m.cwiseAbs().maxCoeff(); }

// All four products of R against dense float64 products with its Q, inversion and invariance.
template <class T, class R>
void check_rotation(R const& r) {
  index_t const n = r.size();
  CAPTURE(r.descriptor().to_string());
  Eigen::MatrixXd const q = to_double(r.dense());
  REQUIRE(q.rows() == n);
  CHECK(max_abs(q.transpose() * q - Eigen::MatrixXd::Identity(n, n)) < 1e-12);
  CHECK(max_abs(q * q.transpose() - Eigen::MatrixXd::Identity(n, n)) < 1e-12);

  auto const w0 = test_matrix<T>(7, n);   // input side: (out, n)
  auto const v0 = test_matrix<T>(n, 5, 1.0);  // output side: (n, in)
  Eigen::MatrixXd const w = to_double(w0), v = to_double(v0);
  // Scale of the results is O(√n) at most: compare relative to the largest input.
  double const scale = std::max(1.0, max_abs(w)) * std::sqrt(double(n));

  auto a = w0;
  r.apply_right(rsq::view(a));
  CHECK(max_abs(to_double(a) - w * q) < tol<T>() * scale);
  r.apply_right_transpose(rsq::view(a));
  CHECK(max_abs(to_double(a) - w) < tol<T>() * scale);  // exact inverse

  auto b = w0;
  r.apply_right_transpose(rsq::view(b));
  CHECK(max_abs(to_double(b) - w * q.transpose()) < tol<T>() * scale);

  auto c = v0;
  r.apply_left_transpose(rsq::view(c));
  CHECK(max_abs(to_double(c) - q.transpose() * v) < tol<T>() * scale);
  r.apply_left(rsq::view(c));
  CHECK(max_abs(to_double(c) - v) < tol<T>() * scale);

  auto d = v0;
  r.apply_left(rsq::view(d));
  CHECK(max_abs(to_double(d) - q * v) < tol<T>() * scale);

  // (W Q)(Qᵀ x) = W x for a batch of column vectors x (n, 5), and a row-vector activation x Q keeps its norm.
  auto wq = w0;
  r.apply_right(rsq::view(wq));
  auto qtx = v0;
  r.apply_left_transpose(rsq::view(qtx));
  CHECK(max_abs(to_double(wq) * to_double(qtx) - w * v) < tol<T>() * scale * scale);
  auto x = test_matrix<T>(1, n, 2.0);
  double const norm = to_double(x).norm();
  r.apply_right(as_row(rsq::vector_view<T>(x.data(), n)));
  CHECK(to_double(x).norm() == doctest::Approx(norm).epsilon(tol<T>() * 10));
}

}  // namespace

TEST_SUITE("rotation.rotations") {
  TEST_CASE_TEMPLATE("every rotation is orthogonal, its four products match dense float64, and it inverts", T, float,
                     double) {
    check_rotation<T>(exact_hadamard(224));
    check_rotation<T>(exact_hadamard(64));
    check_rotation<T>(randomized_hadamard(224, 5));
    check_rotation<T>(randomized_hadamard(128, 0));
    check_rotation<T>(randomized_hadamard(344, 17));                 // reference 172 x 2
    check_rotation<T>(randomized_hadamard(44 * 4, 3));               // Paley I extension
    check_rotation<T>(randomized_hadamard(101, 9, {.fallback = hadamard_fallback::block_diagonal}));
    check_rotation<T>(per_head_hadamard(4, 32));
    check_rotation<T>(per_head_hadamard(3, 12));
    check_rotation<T>(random_orthogonal(64, 3));
    check_rotation<T>(random_orthogonal(1, 3));
  }

  TEST_CASE("randomized Hadamard is Q = D M_nᵀ/√n with hand-derived signs (seed 42)") {
    // Signs 0..15 of the SplitMix64 stream of seed 42 (derived by hand from the documented algorithm).
    int const s[] = {-1, 1, 1, 1, 1, -1, 1, -1, 1, -1, 1, 1, -1, -1, -1, 1};
    auto const r = randomized_hadamard(16, 42);
    REQUIRE(r.signs().size() == 16);
    for (int i = 0; i < 16; ++i) CHECK(int(r.signs()[std::size_t(i)]) == s[i]);
    auto const q = r.dense();
    for (index_t i = 0; i < 16; ++i)
      for (index_t j = 0; j < 16; ++j) {
        double const m_ji = (std::popcount(std::uint64_t(i & j)) % 2) ? -1.0 : 1.0;  // Sylvester: M(j, i)
        CHECK(q(std::size_t(i), std::size_t(j)) == s[i] * m_ji / 4.0);
      }
    // With a reference K: Q(i, j) = s_i M(j, i)/√n, M = hadK ⊗ H_p; hadK is not symmetric, so this checks the
    // transpose.
    auto const r2 = randomized_hadamard(24, 42);
    auto const q2 = r2.dense();
    auto const& hk = *r2.transform().small_factor();
    REQUIRE(hk.k == 12);
    for (index_t i = 0; i < 24; ++i)
      for (index_t j = 0; j < 24; ++j) {
        double const m_ji = double(hk(j / 2, i / 2)) * ((std::popcount(std::uint64_t((j % 2) & (i % 2))) % 2) ? -1 : 1);
        CHECK(q2(std::size_t(i), std::size_t(j)) == doctest::Approx(r2.signs()[std::size_t(i)] * m_ji / std::sqrt(24.0)).epsilon(1e-15));
      }
  }

  TEST_CASE("exact Hadamard W Q is had_in(W): every row w becomes M_n w/√n; per-head applies H_hd to chunks") {
    auto w = test_matrix<double>(5, 224);
    auto expect = w;
    exact_hadamard(224).apply_right(rsq::view(w));
    hadamard(224).apply(rsq::view(expect));
    for (std::size_t i = 0; i < w.size(); ++i) CHECK(w.data()[i] == expect.data()[i]);
    CHECK(exact_hadamard(224).signs().empty());

    // v_proj: W (n_kv * h_d, in) <- (I ⊗ H_{h_d}/√h_d) W, each chunk of h_d rows.
    index_t const heads = 3, hd = 8, in = 6;
    auto v = test_matrix<double>(heads * hd, in);
    auto const v0 = v;
    per_head_hadamard(heads, hd).apply_left_transpose(rsq::view(v));
    for (index_t h = 0; h < heads; ++h)
      for (index_t i = 0; i < hd; ++i)
        for (index_t c = 0; c < in; ++c) {
          double s = 0.0;
          for (index_t j = 0; j < hd; ++j)
            s += ((std::popcount(std::uint64_t(i & j)) % 2) ? -1.0 : 1.0) * v0(std::size_t(h * hd + j), std::size_t(c));
          CHECK(v(std::size_t(h * hd + i), std::size_t(c)) == doctest::Approx(s / std::sqrt(double(hd))).epsilon(1e-14));
        }
  }

  TEST_CASE("the same seed gives the same rotation; different seeds differ") {
    auto const a = randomized_hadamard(1024, 123).dense();
    auto const b = randomized_hadamard(1024, 123).dense();
    auto const c = randomized_hadamard(1024, 124).dense();
    CHECK(a == b);
    CHECK_FALSE(a == c);
    auto const p = random_orthogonal(48, 5).dense();
    auto const q = random_orthogonal(48, 5).dense();
    auto const o = random_orthogonal(48, 6).dense();
    CHECK(p == q);
    CHECK_FALSE(p == o);
  }

  TEST_CASE("random orthogonal is the sign-fixed QR factor of the seeded Gaussian matrix") {
    index_t const n = 40;
    random_orthogonal const r(n, 7);
    auto const g = rsq::random::gaussian_matrix(7, n, n);
    // The first Gaussians of seed 7 (hand-derived from the documented Box–Muller; see random_test.cpp).
    CHECK(g(0, 0) == doctest::Approx(1.3649922974572282).epsilon(1e-14));
    CHECK(g(0, 1) == doctest::Approx(0.14452122126941494).epsilon(1e-14));
    // QR with a positive diagonal is unique: Q G-factorization R = Qᵀ G must be upper triangular with R_jj > 0.
    Eigen::MatrixXd const q = to_double(r.dense());
    Eigen::MatrixXd const rr = q.transpose() * to_double(g);
    for (index_t i = 0; i < n; ++i) {
      CHECK(rr(i, i) > 0.0);
      for (index_t j = 0; j < i; ++j) CHECK(std::abs(rr(i, j)) < 1e-12);
    }
  }

  TEST_CASE("activations: a batch (sequences, tokens, n) is rotated sequence by sequence") {
    auto const r = randomized_hadamard(64, 1);
    xt::xtensor<float, 3> x = xt::xtensor<float, 3>::from_shape({3, 5, 64});
    for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = float(std::cos(0.1 * double(i)));
    auto y = x;
    apply_right(r, rsq::batch_view<float>(x));
    for (index_t s = 0; s < 3; ++s) r.apply_right(rsq::batch_view<float>(y)[s]);
    for (std::size_t i = 0; i < x.size(); ++i) CHECK(x.data()[i] == y.data()[i]);
    xt::xtensor<float, 3> empty = xt::xtensor<float, 3>::from_shape({0, 5, 64});
    CHECK_THROWS_WITH_AS(apply_right(r, rsq::batch_view<float>(empty)), doctest::Contains("batch is empty"),
                         rsq::invalid_argument);
  }

  TEST_CASE("large sizes: float rotations keep norms and invert to 1e-5") {
    for (index_t const n : {index_t(14336), index_t(29568)}) {
      CAPTURE(n);
      auto const r = randomized_hadamard(n, 2024);
      auto w = test_matrix<float>(6, n);
      auto const w0 = w;
      r.apply_right(rsq::view(w));
      for (index_t i = 0; i < 6; ++i) {
        double a = 0, b = 0;
        for (index_t j = 0; j < n; ++j) {
          a += double(w(std::size_t(i), std::size_t(j))) * double(w(std::size_t(i), std::size_t(j)));
          b += double(w0(std::size_t(i), std::size_t(j))) * double(w0(std::size_t(i), std::size_t(j)));
        }
        CHECK(std::sqrt(a) == doctest::Approx(std::sqrt(b)).epsilon(1e-5));
      }
      r.apply_right_transpose(rsq::view(w));
      double err = 0;
      for (std::size_t i = 0; i < w.size(); ++i) err = std::max(err, double(std::abs(w.data()[i] - w0.data()[i])));
      CHECK(err < 1e-5);
    }
  }

  TEST_CASE("descriptors: text round trip and rebuilding give the identical rotation") {
    std::vector<rotation_descriptor> ds = {
        randomized_hadamard(4096, 0).descriptor(), randomized_hadamard(29568, 77).descriptor(),
        exact_hadamard(14336).descriptor(),         per_head_hadamard(8, 128).descriptor(),
        random_orthogonal(16, 9).descriptor(),
        randomized_hadamard(1001, 5, {.fallback = hadamard_fallback::block_diagonal}).descriptor()};
    CHECK(ds[0].to_string() ==
          "rsq-rotation/1 kind=randomized_hadamard n=4096 seed=0 rng=splitmix64 construction=H4096 extensions=1 "
          "fallback=none max_order=1024");
    CHECK(ds[1].construction == "paley2(q=461,K=924)xH32");
    CHECK(ds[3].to_string() ==
          "rsq-rotation/1 kind=per_head_hadamard n=1024 head_dim=128 construction=H128 extensions=1 fallback=none "
          "max_order=1024");
    CHECK(ds[4].to_string() == "rsq-rotation/1 kind=random_orthogonal n=16 seed=9 rng=splitmix64");
    for (auto const& d : ds) {
      CAPTURE(d.to_string());
      auto const back = rotation_descriptor::from_string(d.to_string());
      CHECK(back == d);
      auto const r = make_rotation(back);
      CHECK(descriptor_of(r) == d);
    }
    auto const original = randomized_hadamard(256, 31337);
    auto const rebuilt = make_rotation(rotation_descriptor::from_string(original.descriptor().to_string()));
    CHECK(std::visit([](auto const& x) { return x.dense(); }, rebuilt) == original.dense());
    auto const ro = random_orthogonal(24, 4);
    auto const ro2 = make_rotation(rotation_descriptor::from_string(ro.descriptor().to_string()));
    CHECK(std::visit([](auto const& x) { return x.dense(); }, ro2) == ro.dense());
  }

  TEST_CASE("descriptor parse errors and inconsistent records") {
    auto bad = [](std::string const& text, std::string const& what) {
      CAPTURE(text);
      CHECK_THROWS_WITH_AS((void)rotation_descriptor::from_string(text), doctest::Contains(what.c_str()),
                           rsq::invalid_argument);
    };
    bad("", "empty text");
    bad("kind=exact_hadamard n=4", "must start with \"rsq-rotation/1\"");
    bad("rsq-rotation/2 kind=exact_hadamard", "must start with");
    bad("rsq-rotation/1 kind=spinquant n=4", "unknown kind \"spinquant\"");
    bad("rsq-rotation/1 n=4", "missing key \"kind\"");
    bad("rsq-rotation/1 kind=random_orthogonal n=4 rng=splitmix64", "missing key \"seed\"");
    bad("rsq-rotation/1 kind=random_orthogonal n=-4 seed=1 rng=splitmix64", "n must be a non-negative integer");
    bad("rsq-rotation/1 kind=random_orthogonal n=0 seed=1 rng=splitmix64", "n must be positive");
    bad("rsq-rotation/1 kind=random_orthogonal n=4x seed=1 rng=splitmix64", "got \"4x\"");
    bad("rsq-rotation/1 kind=random_orthogonal n=4 seed=1 rng=mt19937", "unknown rng \"mt19937\"");
    bad("rsq-rotation/1 kind=random_orthogonal n=4 seed=1 seed=2 rng=splitmix64", "appears twice");
    bad("rsq-rotation/1 kind=random_orthogonal n=4 seed=1 rng=splitmix64 color=red", "unexpected key \"color\"");
    bad("rsq-rotation/1 kind=random_orthogonal n=4 seed=1 rng=splitmix64 bare", "expected key=value, got \"bare\"");
    bad("rsq-rotation/1 kind=per_head_hadamard n=100 head_dim=64 construction=H64 extensions=1 fallback=none "
        "max_order=1024",
        "head_dim must divide n = 100");
    bad("rsq-rotation/1 kind=exact_hadamard n=64 construction=H64 extensions=2 fallback=none max_order=1024",
        "extensions must be 0 or 1");
    bad("rsq-rotation/1 kind=exact_hadamard n=64 construction=H64 extensions=1 fallback=pad max_order=1024",
        "unknown fallback \"pad\"");
    bad("rsq-rotation/1 kind=exact_hadamard n=64 construction=H64 extensions=1 fallback=none max_order=0",
        "max_order must be >= 1");
    // A record whose construction differs from what this n gets now.
    auto d = rotation_descriptor::from_string(
        "rsq-rotation/1 kind=exact_hadamard n=64 construction=reference(K=12)xH64 extensions=1 fallback=none "
        "max_order=1024");
    CHECK_THROWS_WITH_AS((void)make_rotation(d), doctest::Contains("records construction reference(K=12)xH64"),
                         rsq::invalid_argument);
    rotation_descriptor none{};
    CHECK_THROWS_WITH_AS((void)make_rotation(none), doctest::Contains("n must be positive"), rsq::invalid_argument);
  }

  TEST_CASE_TEMPLATE("bad shapes and bad factory arguments", T, float, double) {
    auto const r = randomized_hadamard(64, 1);
    random_orthogonal const o(16, 1);
    auto w = test_matrix<T>(3, 32);
    CHECK_THROWS_WITH_AS(r.apply_right(rsq::view(w)), doctest::Contains("W has 32 columns, the rotation has size 64"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(r.apply_right_transpose(rsq::view(w)), doctest::Contains("(3 x 32)"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(r.apply_left_transpose(rsq::view(w)), doctest::Contains("W has 3 rows, the rotation has size 64"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(r.apply_left(rsq::view(w)), doctest::Contains("apply_left"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(o.apply_right(rsq::view(w)), doctest::Contains("random_orthogonal::apply_right: W has 32 columns"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(o.apply_left_transpose(rsq::view(w)), doctest::Contains("W has 3 rows"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(o.apply_left(rsq::view(w)), doctest::Contains("W has 3 rows"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(o.apply_right_transpose(rsq::view(w)), doctest::Contains("W has 32 columns"),
                         rsq::invalid_argument);
    auto empty = rsq::matrix<T>::from_shape({0, 64});
    CHECK_THROWS_WITH_AS(r.apply_right(rsq::view(empty)), doctest::Contains("the matrix is empty (0 x 64)"),
                         rsq::invalid_argument);

    CHECK_THROWS_WITH_AS((void)randomized_hadamard(0, 1), doctest::Contains("n must be positive, got 0"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)exact_hadamard(-3), doctest::Contains("got -3"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)randomized_hadamard(1001, 1), doctest::Contains("no Hadamard construction for n = 1001"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)exact_hadamard(64, {.scaling = hadamard_scaling::reference_float32}),
                         doctest::Contains("rotations are orthonormal"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)per_head_hadamard(0, 64), doctest::Contains("number of heads must be positive"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)per_head_hadamard(4, 0), doctest::Contains("head_dim must be positive"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)random_orthogonal(0, 1), doctest::Contains("n must be positive"), rsq::invalid_argument);
    auto sign_bad = rsq::vector<std::int8_t>::from_shape({4});
    sign_bad(0) = 1;
    sign_bad(1) = 0;
    sign_bad(2) = 1;
    sign_bad(3) = 1;
    CHECK_THROWS_WITH_AS(hadamard_rotation(hadamard(4), sign_bad, exact_hadamard(4).descriptor()),
                         doctest::Contains("sign 1 is 0"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(hadamard_rotation(hadamard(8), rsq::random::signs(1, 4), exact_hadamard(8).descriptor()),
                         doctest::Contains("4 signs for a rotation of size 8"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(hadamard_rotation(hadamard(8), rsq::random::signs(1, 8), exact_hadamard(4).descriptor()),
                         doctest::Contains("the descriptor says n = 4"), rsq::invalid_argument);
  }
}
