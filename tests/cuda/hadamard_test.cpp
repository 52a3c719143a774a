// SPDX-License-Identifier: MIT
// The Hadamard transform on every backend (TEST_CASE_TEMPLATE over RSQ_TEST_BACKENDS, through a two-line adapter):
// the golden y = (hadK ⊗ H_{n/K})·x/√n of the reference, the dense float64 matrix for every K of the reference
// table and powers of two up to 32768, fused signs and the transpose, and the CUDA-only checks (host rows, strided
// device rows, rejected inputs).
#include <doctest/doctest.h>

#include <random>

#include <rsq/io/npy.hpp>
#include <rsq/rotation/hadamard.hpp>
#include <rsq/rotation/randomized_hadamard.hpp>

#include "support/backends.hpp"
#include "support/golden_case.hpp"

namespace {

using rsq::index_t;

// The backend's transform of every row: diag(post)·op(H)·diag(pre)·x.
template <class B, class T>
void transform(rsq::matrix_view<T> rows, rsq::rotation::hadamard_options const& opt = {},
               std::span<std::int8_t const> pre = {}, std::span<std::int8_t const> post = {}, bool transpose = false) {
  if constexpr (std::is_same_v<B, rsq::backend::cpu_eigen>)
    rsq::rotation::hadamard(rows.cols(), opt).apply_with_signs(rows, transpose, pre, post);
  else
    rsq::cuda::hadamard_transform(B{}, rows, opt, pre, post, transpose);
}

template <class T>
rsq::matrix<T> random_rows(index_t rows, index_t n, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd;
  auto m = rsq::make_matrix<T>(rows, n);
  for (auto& v : m) v = T(nd(rng));
  return m;
}

template <class A, class B>
double max_rel(A const& a, B const& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(double(a.data()[i]) - double(b.data()[i])));
    den = std::max(den, std::abs(double(b.data()[i])));
  }
  return num / den;
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

TEST_SUITE("cuda.hadamard") {
  TEST_CASE_TEMPLATE("golden y = (hadK x H) x / sqrt(n) of the reference, in double (float32 sqrt(n) scaling)", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    RSQ_NEED_SHARED(shared);
    int checked = 0;
    for (auto const& e : std::filesystem::directory_iterator(shared / "golden")) {
      auto const name = e.path().filename().string();
      if (name.rfind("hadamard_n", 0) != 0) continue;
      CAPTURE(name);
      auto x = rsq::io::load_npy<double, 2>(e.path() / "x.npy");
      auto const y = rsq::io::load_npy<double, 2>(e.path() / "y.npy");
      // The reference divides by sqrt(n) computed in float32.
      transform<B>(rsq::view(x), {.scaling = rsq::rotation::hadamard_scaling::reference_float32});
      CHECK(max_rel(x, y) < 1e-12);
      ++checked;
    }
    CHECK(checked >= 15);
  }

  TEST_CASE_TEMPLATE("every K of the reference table and powers of two up to 32768 match the dense matrix", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    // n = K·2^m with m = 0 and 1 too (rows not a multiple of 8 take the kernel's plain load).
    std::vector<index_t> sizes = {1, 2, 4, 8, 16, 64, 256, 1024, 12, 24, 20, 40, 172, 344};
    for (index_t k : rsq::rotation::reference_hadamard_orders) sizes.push_back(k * 4);
    sizes.push_back(28 * 64);
    sizes.push_back(44 * 4);  // Paley I beyond the reference table (q = 43)
    sizes.push_back(76 * 4);  // Paley II beyond the reference table (q = 37)
    for (index_t n : sizes) {
      CAPTURE(n);
      rsq::rotation::hadamard_options opt;
      auto const plan = rsq::rotation::plan_hadamard(n, opt);
      if (plan.kind == rsq::rotation::hadamard_kind::block_diagonal) continue;
      auto const h = rsq::rotation::hadamard(n, opt).dense();  // (n, n) float64
      auto x = random_rows<double>(3, n, unsigned(n));
      auto const ref = dense_apply(h, x);
      transform<B>(rsq::view(x));
      CHECK(max_rel(x, ref) < 1e-12);
      auto xf = random_rows<float>(5, n, unsigned(n + 1));
      rsq::matrix<double> xd = xt::cast<double>(xf);
      transform<B>(rsq::view(xf));
      CHECK(max_rel(xf, dense_apply(h, xd)) < 2e-6);
    }
    // Large powers of two and K·2^m of real models: against the CPU transform (float) and the round trip (double).
    for (index_t n : {index_t(4096), index_t(32768), index_t(28 * 512), index_t(148 * 128), index_t(40 * 128),
                      index_t(172 * 64)}) {
      CAPTURE(n);
      auto x = random_rows<float>(4, n, unsigned(3 * n));
      auto ref = x;
      rsq::rotation::hadamard(n).apply(rsq::view(ref));
      transform<B>(rsq::view(x));
      CHECK(max_rel(x, ref) < 1e-5);
      if (n > 24576) continue;  // double rows beyond 24576 do not fit in the GPU kernel's shared memory
      auto xd = random_rows<double>(2, n, unsigned(5 * n));
      auto const orig = xd;
      transform<B>(rsq::view(xd));
      transform<B>(rsq::view(xd), {}, {}, {}, true);  // Hᵀ H = I
      CHECK(max_rel(xd, orig) < 1e-13);
    }
  }

  TEST_CASE_TEMPLATE("signs are fused on both sides, with H or its transpose (randomized Hadamard rotations)", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    for (index_t n : {index_t(512), index_t(28 * 32), index_t(12 * 8)}) {
      CAPTURE(n);
      auto const rot = rsq::rotation::randomized_hadamard(n, 1234);
      auto const signs = rot.signs();
      auto const h = rsq::rotation::hadamard(n).dense();
      for (bool transpose : {false, true}) {
        auto x = random_rows<double>(3, n, unsigned(n + transpose));
        // Reference: diag(post)·op(H)·diag(pre)·x in float64, signs on both sides.
        auto pre_x = x;
        for (index_t r = 0; r < 3; ++r)
          for (index_t j = 0; j < n; ++j) pre_x(r, j) *= signs[std::size_t(j)];
        auto hop = h;
        if (transpose) hop = xt::transpose(h);
        auto ref = dense_apply(hop, pre_x);
        for (index_t r = 0; r < 3; ++r)
          for (index_t j = 0; j < n; ++j) ref(r, j) *= signs[std::size_t((j * 7) % n)] * signs[std::size_t(j)];
        std::vector<std::int8_t> post(static_cast<std::size_t>(n));
        for (index_t j = 0; j < n; ++j) post[std::size_t(j)] = std::int8_t(signs[std::size_t((j * 7) % n)] * signs[std::size_t(j)]);
        transform<B>(rsq::view(x), {}, signs, post, transpose);
        CHECK(max_rel(x, ref) < 1e-12);
      }
      // The rotation's own W·Q equals the transform with pre-signs.
      auto w = random_rows<double>(4, n, 99);
      auto w_ref = w;
      rot.apply_right(rsq::view(w_ref));
      transform<B>(rsq::view(w), {}, signs);
      CHECK(max_rel(w, w_ref) < 1e-12);
    }
  }
}

TEST_SUITE("cuda.hadamard.device") {
  TEST_CASE("every launch configuration (threads per CTA, prefetch depth, rows per CTA) gives the CPU transform") {
    RSQ_NEED_DEVICE(rsq::backend::cuda);
    rsq::backend::cuda const be{};
    for (index_t n : {index_t(8), index_t(256), index_t(4096), index_t(16384), index_t(32768), index_t(28 * 512),
                      index_t(148 * 128), index_t(12)}) {
      auto const rot = rsq::rotation::randomized_hadamard(n, 7);
      for (int threads : {256, 512, 1024}) {
        CAPTURE(n);
        CAPTURE(threads);
        rsq::cuda::tuning().hadamard_threads = threads;
        auto x = random_rows<float>(5, n, unsigned(n + threads));
        auto ref = x;
        rsq::rotation::hadamard(n).apply_with_signs(rsq::view(ref), false, rot.signs(), {});
        rsq::cuda::hadamard_transform(be, rsq::view(x), {}, rot.signs());
        CHECK(max_rel(x, ref) < 1e-5);
        if (n <= 16384) {
          auto xd = random_rows<double>(3, n, unsigned(n + 2 * threads));
          auto refd = xd;
          rsq::rotation::hadamard(n).apply_with_signs(rsq::view(refd), true, {}, rot.signs());
          rsq::cuda::hadamard_transform(be, rsq::view(xd), {}, {}, rot.signs(), true);
          CHECK(max_rel(xd, refd) < 1e-12);
        }
      }
    }
    rsq::cuda::tuning().hadamard_threads = 0;
  }


  TEST_CASE("device rows with a row stride, host rows, reference float32 scaling, bad inputs") {
    RSQ_NEED_DEVICE(rsq::backend::cuda);
    rsq::backend::cuda const be{};
    index_t const n = 28 * 64, ld = n + 40;
    auto x = random_rows<float>(6, ld, 5);
    auto ref = x;
    rsq::matrix_view<float> ref_rows(ref.data(), {6, n}, {ld, 1});
    rsq::rotation::hadamard(n).apply(ref_rows);
    rsq::cuda::device_array<float> d(6 * ld);
    d.upload(x.data(), be);
    rsq::cuda::hadamard_transform(be, rsq::matrix_view<float>(d.data(), {6, n}, {ld, 1}));
    auto const back = d.to_host(be);
    for (index_t r = 0; r < 6; ++r)
      for (index_t c = 0; c < ld; ++c) {
        double const want = c < n ? ref(r, c) : x(r, c);  // the padding columns are untouched
        CHECK(std::abs(back[std::size_t(r * ld + c)] - want) <= 1e-5 * (1 + std::abs(want)));
      }
    // reference_float32 scaling divides by the float32 sqrt(n), as the reference does.
    auto y = random_rows<float>(2, 1024 * 12, 6);
    auto y_ref = y;
    rsq::rotation::hadamard_options const f32{.scaling = rsq::rotation::hadamard_scaling::reference_float32};
    rsq::rotation::hadamard(1024 * 12, f32).apply(rsq::view(y_ref));
    rsq::cuda::hadamard_transform(be, rsq::view(y), f32);
    CHECK(max_rel(y, y_ref) < 1e-5);

    using rsq::invalid_argument;
    auto z = random_rows<float>(2, 1000, 7);  // 1000 = 500·2: a Paley factor too large for the GPU mix
    CHECK_THROWS_WITH_AS(rsq::cuda::hadamard_transform(be, rsq::view(z)), doctest::Contains("order 500 > 256"),
                         invalid_argument);
    auto z6 = random_rows<float>(2, 6, 7);  // no construction at all; the block-diagonal fallback is CPU-only
    CHECK_THROWS_WITH_AS(rsq::cuda::hadamard_transform(be, rsq::view(z6)), doctest::Contains("n = 6"),
                         invalid_argument);
    CHECK_THROWS_WITH_AS(rsq::cuda::hadamard_transform(be, rsq::view(z6),
                                                       {.fallback = rsq::rotation::hadamard_fallback::block_diagonal}),
                         doctest::Contains("block-diagonal fallback runs on the CPU"), invalid_argument);
    auto big = random_rows<float>(1, 65536, 8);
    CHECK_THROWS_WITH_AS(rsq::cuda::hadamard_transform(be, rsq::view(big)), doctest::Contains("shared memory"),
                         invalid_argument);
    rsq::matrix_view<float> strided(d.data(), {6, 32}, {ld, 2});
    CHECK_THROWS_WITH_AS(rsq::cuda::hadamard_transform(be, strided), doctest::Contains("contiguous"),
                         invalid_argument);
    auto w = random_rows<float>(2, 64, 9);
    std::vector<std::int8_t> bad(64, 1);
    bad[3] = 0;
    CHECK_THROWS_WITH_AS(rsq::cuda::hadamard_transform(be, rsq::view(w), {}, bad), doctest::Contains("sign 3 is 0"),
                         invalid_argument);
    std::vector<std::int8_t> short_signs(10, 1);
    CHECK_THROWS_WITH_AS(rsq::cuda::hadamard_transform(be, rsq::view(w), {}, short_signs),
                         doctest::Contains("10 signs for rows of length 64"), invalid_argument);
  }
}
