// SPDX-License-Identifier: MIT
// Learned rotations (SpinQuant), in one program:
//  - Cayley SGD on the Stiefel manifold (rotation/cayley_sgd.hpp): orthogonality kept, descent on a problem with a
//    known optimum (max tr(AᵀX) over orthogonal X: the sum of A's singular values), momentum, the cosine schedule,
//    and non-finite gradients reported as a status;
//  - the gradient of the next-token loss with respect to R1 and R2 (model/rotation_gradient.hpp): against float64
//    central finite differences along random directions, unquantized and with the rounding frozen (the
//    straight-through gradient), and the objective's forward pass against rsq's own evaluation;
//  - learn_rotation() (model/learn_rotation.hpp) on a tiny random model: the rotations stay orthogonal, the
//    fake-quantized loss falls, the same seed gives the same bits for any thread count; and the plumbing into
//    quantize_model() (rotate_options::learned, model/learned_rotation.hpp) preserves the model's function.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include <rsq/model/learn_rotation.hpp>
#include <rsq/model/quantize.hpp>
#include <rsq/model/rotation_gradient.hpp>
#include <xtensor/xview.hpp>

#include <rsq/linalg/lu_solve.hpp>
#include <rsq/rotation/cayley_sgd.hpp>
#include <rsq/rotation/random_orthogonal.hpp>

#include "model/model_test_support.hpp"
#include "support/backends.hpp"

using namespace rsq::model;
using rsq::index_t;

namespace {

rsq::matrix<std::int32_t> tokens(index_t S, index_t L, int vocab, std::uint32_t seed) {
  rsq_test::uniform_source u(seed);
  auto t = rsq::make_matrix<std::int32_t>(S, L);
  for (auto& x : t) x = std::int32_t(std::min(float(vocab - 1), std::floor((u(1.f) + 1.f) * 0.5f * float(vocab))));
  return t;
}

double orthogonality_error(rsq::matrix<double> const& a) {
  std::size_t const n = a.shape()[0];
  double worst = 0;
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < n; ++j) {
      double s = 0;
      for (std::size_t k = 0; k < n; ++k) s += a(k, i) * a(k, j);
      worst = std::max(worst, std::abs(s - (i == j ? 1.0 : 0.0)));
    }
  return worst;
}

}  // namespace

namespace cayley_cases {

using namespace rsq::rotation;

namespace {

/// f(X) = −tr(AᵀX), ∂f/∂X = −A.
double objective(rsq::matrix<double> const& a, rsq::matrix<double> const& x) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s -= a.data()[i] * x.data()[i];
  return s;
}

rsq::matrix<double> negated(rsq::matrix<double> const& a) {
  rsq::matrix<double> g = a;
  for (auto& v : g) v = -v;
  return g;
}

}  // namespace

TEST_SUITE("cayley_sgd") {
  TEST_CASE_TEMPLATE("descends to the optimum of max tr(AᵀX) and keeps X orthogonal, with and without momentum", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    index_t const n = 24;
    auto const a = random_orthogonal(n, 5).dense();  // an orthogonal A scaled below: optimum −tr(AᵀA)/... = −n·s
    rsq::matrix<double> scaled = a;
    for (auto& v : scaled) v *= 0.1;
    double const optimum = -0.1 * double(n);
    for (double momentum : {0.0, 0.5}) {
      CAPTURE(momentum);
      auto x = random_orthogonal(n, 9).dense();
      auto x_cpu = x;
      cayley_sgd sgd({.momentum = momentum}), sgd_cpu({.momentum = momentum});
      double const start = objective(scaled, x);
      double previous = start;
      int increases = 0;
      for (int step = 0; step < 200; ++step) {
        double const lr = cosine_learning_rate(1.5, step, 200);
        REQUIRE(sgd.step(B{}, 0, x, negated(scaled), lr) == cayley_status::ok);
        REQUIRE(sgd_cpu.step(0, x_cpu, negated(scaled), lr) == cayley_status::ok);
        double const f = objective(scaled, x);
        increases += f > previous + 1e-12;
        previous = f;
      }
      CHECK(orthogonality_error(x) < 1e-12);
      double diff = 0;  // the backend's products and LU solve against the CPU's, over 200 steps
      for (std::size_t i = 0; i < x.size(); ++i) diff = std::max(diff, std::abs(x.data()[i] - x_cpu.data()[i]));
      CHECK(diff < 1e-9);
      CHECK(previous < start);
      CHECK(previous - optimum < 1e-3 * std::abs(optimum));
      if (momentum == 0) CHECK(increases == 0);
    }
  }

  TEST_CASE("the step size is capped by 1/‖W‖₁ and the learning rate") {
    auto x = random_orthogonal(8, 1).dense();
    auto g = random_orthogonal(8, 2).dense();
    for (auto& v : g) v *= 100;
    cayley_sgd sgd;
    REQUIRE(sgd.step(0, x, g, 1.5) == cayley_status::ok);
    CHECK(sgd.last_step_size() < 0.1);
    for (auto& v : g) v *= 1e-6;
    REQUIRE(sgd.step(0, x, g, 0.25) == cayley_status::ok);
    CHECK(sgd.last_step_size() == 0.25);
    CHECK(orthogonality_error(x) < 1e-13);
  }

  TEST_CASE_TEMPLATE("lu_solve: A·Y = B to rounding (the residual in float64), with pivoting; bad shapes are named", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    index_t const n = 37, m = 5;
    auto a = random_orthogonal(n, 3).dense();  // well conditioned; row swaps below force the pivoting
    for (index_t j = 0; j < n; ++j) std::swap(a(0, std::size_t(j)), a(n - 1, std::size_t(j)));
    a(0, 0) = 0;
    auto const b = random_orthogonal(n, 4).dense();
    rsq::matrix<double> const rhs = xt::view(b, xt::all(), xt::range(0, m));
    auto ad = rsq::backend::to_backend(be, rsq::matrix_view<const double>(rsq::view(a)));
    auto yd = rsq::backend::to_backend(be, rsq::matrix_view<const double>(rsq::view(rhs)));
    rsq::linalg::lu_solve(be, rsq::view(ad), rsq::view(yd));
    auto const y = rsq::backend::to_host(be, rsq::matrix_view<const double>(rsq::view(yd)));
    double worst = 0;
    for (index_t i = 0; i < n; ++i)
      for (index_t k = 0; k < m; ++k) {
        double s = 0;
        for (index_t j = 0; j < n; ++j) s += a(std::size_t(i), std::size_t(j)) * y(std::size_t(j), std::size_t(k));
        worst = std::max(worst, std::abs(s - rhs(std::size_t(i), std::size_t(k))));
      }
    CHECK(worst < 1e-12);
    auto wide = rsq::backend::make_matrix<double>(be, n, n + 1);
    CHECK_THROWS_WITH_AS(rsq::linalg::lu_solve(be, rsq::view(wide), rsq::view(yd)), doctest::Contains("square"),
                         rsq::invalid_argument);
    auto short_b = rsq::backend::make_matrix<double>(be, n - 1, m);
    CHECK_THROWS_WITH_AS(rsq::linalg::lu_solve(be, rsq::view(ad), rsq::view(short_b)), doctest::Contains("rows"),
                         rsq::invalid_argument);
  }

  TEST_CASE("cosine schedule") {
    CHECK(cosine_learning_rate(1.5, 0, 100) == 1.5);
    CHECK(cosine_learning_rate(1.5, 50, 100) == doctest::Approx(0.75));
    CHECK(cosine_learning_rate(1.5, 99, 100) == doctest::Approx(1.5 * 0.5 * (1 + std::cos(M_PI * 0.99))));
    CHECK_THROWS_AS((void)cosine_learning_rate(1.5, 100, 100), rsq::invalid_argument);
  }

  TEST_CASE("a non-finite gradient is a status and changes nothing; bad shapes and rates are refused") {
    auto x = random_orthogonal(6, 1).dense();
    auto const before = x;
    auto g = rsq::make_matrix<double>(6, 6);
    g(2, 3) = std::numeric_limits<double>::quiet_NaN();
    cayley_sgd sgd;
    CHECK(sgd.step(0, x, g, 1.0) == cayley_status::not_finite);
    CHECK(x == before);
    auto const small = rsq::make_matrix<double>(5, 5);
    CHECK_THROWS_WITH_AS(sgd.step(0, x, small, 1.0), doctest::Contains("gradient"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(sgd.step(0, x, rsq::make_matrix<double>(6, 6), 0.0), doctest::Contains("learning rate"),
                         rsq::invalid_argument);
    auto rect = rsq::make_matrix<double>(4, 6);
    CHECK_THROWS_WITH_AS(sgd.step(1, rect, rsq::make_matrix<double>(4, 6), 1.0), doctest::Contains("square"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(cayley_sgd({.momentum = 1.0}), doctest::Contains("momentum"), rsq::invalid_argument);
  }
}

}  // namespace cayley_cases

namespace gradient_cases {

namespace {

llama_config small_config() {
  llama_config c;
  c.dim = 16;
  c.hidden_dim = 24;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 24;
  c.seq_len = 16;
  return c;
}


rsq::matrix<double> random_matrix(index_t n, rsq_test::uniform_source& u) {
  auto m = rsq::make_matrix<double>(n, n);
  for (auto& x : m) x = double(u(1.f));
  return m;
}

/// A random direction in the space of (R1, R2...).
learned_rotation random_direction(llama_config const& c, std::uint32_t seed) {
  rsq_test::uniform_source u(seed);
  learned_rotation d;
  d.r1 = random_matrix(c.dim, u);
  for (int l = 0; l < c.n_layers; ++l) d.r2.push_back(random_matrix(c.head_size(), u));
  return d;
}

learned_rotation axpy(learned_rotation const& r, double e, learned_rotation const& d) {
  learned_rotation out = r;
  for (std::size_t i = 0; i < r.r1.size(); ++i) out.r1.data()[i] += e * d.r1.data()[i];
  for (std::size_t l = 0; l < r.r2.size(); ++l)
    for (std::size_t i = 0; i < r.r2[l].size(); ++i) out.r2[l].data()[i] += e * d.r2[l].data()[i];
  return out;
}

double inner(learned_rotation const& a, learned_rotation const& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.r1.size(); ++i) s += a.r1.data()[i] * b.r1.data()[i];
  for (std::size_t l = 0; l < a.r2.size(); ++l)
    for (std::size_t i = 0; i < a.r2[l].size(); ++i) s += a.r2[l].data()[i] * b.r2[l].data()[i];
  return s;
}

learned_rotation start_of(llama_config const& c) { return initial_rotation(plan_rotation(c), c); }

rsq::quant::grid_spec plain_grid(int bits) {
  rsq::quant::grid_spec g = rsq_script_grid(bits);
  g.clip.enabled = false;
  return g;
}

}  // namespace

TEST_SUITE("rotation_gradient") {
  TEST_CASE("the objective's forward pass is the model's loss at R = I and at QuaRot's rotation") {
    auto const c = small_config();
    auto const m = rsq_test::random_model(c, 3);
    auto const ids = tokens(3, 12, c.vocab_size, 5);
    double const want = evaluate(m, rsq::view(ids)).mean;
    rsq::backend::cpu_eigen const be{};
    auto const p = make_rotation_problem<double>(m);
    learned_rotation identity;
    identity.r1 = rsq::make_matrix<double>(c.dim, c.dim);
    for (index_t i = 0; i < c.dim; ++i) identity.r1(std::size_t(i), std::size_t(i)) = 1;
    auto r2 = rsq::make_matrix<double>(c.head_size(), c.head_size());
    for (index_t i = 0; i < c.head_size(); ++i) r2(std::size_t(i), std::size_t(i)) = 1;
    identity.r2.assign(std::size_t(c.n_layers), r2);
    CHECK(rotation_loss(be, p, identity, rsq::view(ids)) == doctest::Approx(want).epsilon(1e-6));
    CHECK(rotation_loss(be, p, start_of(c), rsq::view(ids)) == doctest::Approx(want).epsilon(1e-6));
    auto const pf = make_rotation_problem<float>(m);
    CHECK(rotation_loss(be, pf, start_of(c), rsq::view(ids), {.chunk_sequences = 2}) ==
          doctest::Approx(want).epsilon(1e-5));
  }

  TEST_CASE("unquantized: the gradient's directional derivatives match float64 central differences") {
    auto const c = small_config();
    auto const m = rsq_test::random_model(c, 7);
    auto const ids = tokens(3, 10, c.vocab_size, 11);
    rsq::backend::cpu_eigen const be{};
    auto const p = make_rotation_problem<double>(m);
    auto const r = start_of(c);
    auto const g = rotation_loss_and_gradient(be, p, r, rsq::view(ids), {.chunk_sequences = 2});
    CHECK(g.count == 3 * 9);
    CHECK(g.loss == doctest::Approx(rotation_loss(be, p, r, rsq::view(ids))).epsilon(1e-12));
    double const eps = 1e-5;
    for (std::uint32_t seed : {1u, 2u, 3u}) {
      auto const d = random_direction(c, seed);
      double const fd = (rotation_loss(be, p, axpy(r, eps, d), rsq::view(ids)) -
                         rotation_loss(be, p, axpy(r, -eps, d), rsq::view(ids))) / (2 * eps);
      double const an = inner(g.grad, d);
      CAPTURE(seed);
      CHECK(an == doctest::Approx(fd).epsilon(1e-6));
      CHECK(std::abs(an) > 1e-3);  // a direction that moves the loss: the check is not vacuous
    }
    // The unquantized model is invariant under rotations: the Riemannian gradient skew(G Rᵀ) vanishes.
    double worst = 0;
    for (index_t i = 0; i < c.dim; ++i)
      for (index_t j = 0; j < c.dim; ++j) {
        double a = 0, b = 0;
        for (index_t k = 0; k < c.dim; ++k) {
          a += g.grad.r1(std::size_t(i), std::size_t(k)) * r.r1(std::size_t(j), std::size_t(k));
          b += g.grad.r1(std::size_t(j), std::size_t(k)) * r.r1(std::size_t(i), std::size_t(k));
        }
        worst = std::max(worst, std::abs(a - b));
      }
    CHECK(worst < 1e-10);
  }

  TEST_CASE("fake-quantized: the straight-through gradient is the gradient with the rounding offsets held fixed") {
    auto const c = small_config();
    auto const m = rsq_test::random_model(c, 9);
    auto const ids = tokens(2, 12, c.vocab_size, 13);
    rsq::backend::cpu_eigen const be{};
    auto const p = make_rotation_problem<double>(m);
    auto const r = start_of(c);
    rotation_loss_options const opt{.grid = plain_grid(3), .group_size = 8, .chunk_sequences = 4};
    auto const g = rotation_loss_and_gradient(be, p, r, rsq::view(ids), opt);
    auto const offsets = make_quantization_offsets(p, r, opt);
    rotation_loss_options const frozen_opt{.grid = std::nullopt, .group_size = 8, .chunk_sequences = 4};
    CHECK(rotation_loss(be, p, r, rsq::view(ids), frozen_opt, &offsets) == doctest::Approx(g.loss).epsilon(1e-12));
    double const unquantized = rotation_loss(be, p, r, rsq::view(ids));
    CHECK(std::abs(g.loss - unquantized) > 1e-3);  // the rounding matters at 3 bits
    auto const g_frozen = rotation_loss_and_gradient(be, p, r, rsq::view(ids), frozen_opt, &offsets);
    CHECK(inner(g_frozen.grad, g_frozen.grad) == doctest::Approx(inner(g.grad, g.grad)).epsilon(1e-10));
    double const eps = 1e-5;
    for (std::uint32_t seed : {4u, 5u}) {
      auto const d = random_direction(c, seed);
      double const fd = (rotation_loss(be, p, axpy(r, eps, d), rsq::view(ids), frozen_opt, &offsets) -
                         rotation_loss(be, p, axpy(r, -eps, d), rsq::view(ids), frozen_opt, &offsets)) / (2 * eps);
      CAPTURE(seed);
      CHECK(inner(g.grad, d) == doctest::Approx(fd).epsilon(1e-6));
    }
  }

  TEST_CASE("fake-quantized loss at QuaRot's rotation is the loss of quantize_model's QuaRot-RTN") {
    auto const c = small_config();
    auto const m = rsq_test::random_model(c, 21);
    auto const ids = tokens(3, 12, c.vocab_size, 23);
    quantize_options qo;
    qo.method = quant_method::rtn;
    qo.rotate = true;
    qo.grid = plain_grid(4);
    qo.solver.group_size = 8;
    auto const q = quantize_model(m, rsq::view(ids), qo);
    double const want = evaluate(q.model, rsq::view(ids)).mean;
    rsq::backend::cpu_eigen const be{};
    auto const p = make_rotation_problem<double>(m);
    double const got = rotation_loss(be, p, start_of(c), rsq::view(ids), {.grid = qo.grid, .group_size = 8});
    CHECK(got == doctest::Approx(want).epsilon(1e-5));
  }

  TEST_CASE_TEMPLATE("on every backend, in float: the loss and gradient of the CPU's float64 objective", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    auto const c = small_config();
    auto const m = rsq_test::random_model(c, 31);
    auto const ids = tokens(3, 12, c.vocab_size, 37);
    auto const r = start_of(c);
    auto const reference = make_rotation_problem<double>(m);
    auto const p = make_rotation_problem<float>(B{}, m);
    rotation_workspace<float, B> ws;  // reused: the second call must not depend on the first's buffers
    for (bool quantized : {false, true}) {
      CAPTURE(quantized);
      rotation_loss_options const opt{.grid = quantized ? std::optional(plain_grid(4)) : std::nullopt,
                                      .group_size = 8, .chunk_sequences = 2};
      auto const want = rotation_loss_and_gradient(rsq::backend::cpu_eigen{}, reference, r, rsq::view(ids), opt);
      auto const got = rotation_loss_and_gradient(B{}, p, r, rsq::view(ids), opt,
                                                  static_cast<quantization_offsets<float, B> const*>(nullptr), &ws);
      CHECK(got.loss == doctest::Approx(want.loss).epsilon(1e-5));
      CHECK(rotation_loss(B{}, p, r, rsq::view(ids), opt) == got.loss);
      // ‖G − G_ref‖ / ‖G_ref‖ over R1 and every R2: float rounding (and, quantized, a rare code flipped by it).
      auto diff = want.grad;
      for (std::size_t i = 0; i < diff.r1.size(); ++i) diff.r1.data()[i] -= got.grad.r1.data()[i];
      for (std::size_t l = 0; l < diff.r2.size(); ++l)
        for (std::size_t i = 0; i < diff.r2[l].size(); ++i) diff.r2[l].data()[i] -= got.grad.r2[l].data()[i];
      CHECK(std::sqrt(inner(diff, diff) / inner(want.grad, want.grad)) < (quantized ? 1e-2 : 1e-4));
    }
  }

  TEST_CASE("bad input is refused with a message naming it") {
    auto const c = small_config();
    auto const m = rsq_test::random_model(c, 1);
    rsq::backend::cpu_eigen const be{};
    auto const p = make_rotation_problem<float>(m);
    auto const r = start_of(c);
    auto const bad = tokens(2, 8, c.vocab_size + 5, 1);
    auto ids = tokens(2, 8, c.vocab_size, 1);
    ids(1, 3) = c.vocab_size;
    CHECK_THROWS_WITH_AS((void)rotation_loss(be, p, r, rsq::view(ids)), doctest::Contains("outside the vocabulary"),
                         rsq::invalid_argument);
    auto short_r = r;
    short_r.r2.pop_back();
    CHECK_THROWS_WITH_AS((void)rotation_loss(be, p, short_r, rsq::view(bad)), doctest::Contains("R2 matrices"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)rotation_loss(be, p, r, rsq::view(ids), {.chunk_sequences = 0}),
                         doctest::Contains("chunk_sequences"), rsq::invalid_argument);
  }
}

}  // namespace gradient_cases

namespace learn_cases {

namespace {

/// The tests' tiny GQA config (dim 32, 4 query heads of 8 sharing 2 KV heads).
llama_config small_config() { return rsq_test::tiny_config(); }


void set_threads([[maybe_unused]] int n) {
#if defined(_OPENMP)
  omp_set_num_threads(n);
#endif
}

learned_rotation random_rotation(llama_config const& c, std::uint64_t seed) {
  learned_rotation r;
  r.r1 = rsq::rotation::random_orthogonal(c.dim, seed).dense();
  for (int l = 0; l < c.n_layers; ++l) r.r2.push_back(rsq::rotation::random_orthogonal(c.head_size(), seed + 1 + l).dense());
  return r;
}

}  // namespace

TEST_SUITE("learn_rotation") {
  TEST_CASE("learning keeps R orthogonal, lowers the fake-quantized loss, and gives the same bits for 1 and 2 threads") {
    auto const c = small_config();
    auto const m = rsq_test::random_model(c, 4);
    auto const calib = tokens(6, 12, c.vocab_size, 8);
    learn_rotation_options opt;
    opt.steps = 6;
    opt.sequences_per_step = 6;  // every step on the same batch: the curve compares like with like
    opt.grid.bits = 3;
    opt.learning_rate = 1.5;
    opt.momentum = 0.5;
    rsq::backend::cpu_eigen const be{};
    set_threads(1);
    auto const one = learn_rotation(be, m, rsq::view(calib), opt);
    set_threads(2);
    index_t calls = 0;
    auto const two = learn_rotation(be, m, rsq::view(calib), opt, [&](index_t, double) { ++calls; });
    CHECK(calls == opt.steps);
    REQUIRE(one.status == rsq::rotation::cayley_status::ok);
    REQUIRE(one.loss.size() == std::size_t(opt.steps));
    CHECK(orthogonality_error(one.rotation.r1) <= 1e-5);
    for (auto const& r2 : one.rotation.r2) CHECK(orthogonality_error(r2) <= 1e-5);
    CHECK(one.loss.back() < one.loss.front());
    // The loss at the result (after the last step) on the same batch is below the loss at QuaRot's rotation.
    auto const p = make_rotation_problem<float>(m);
    rotation_loss_options const lo{.grid = opt.grid};
    double const learned = rotation_loss(be, p, one.rotation, rsq::view(calib), lo);
    CHECK(learned < one.loss.front());
    CHECK(one.loss == two.loss);
    CHECK(one.rotation.r1 == two.rotation.r1);
    for (std::size_t l = 0; l < one.rotation.r2.size(); ++l) CHECK(one.rotation.r2[l] == two.rotation.r2[l]);
    auto again = opt;
    again.seed = 1;
    again.sequences_per_step = 2;
    auto const other = learn_rotation(be, m, rsq::view(calib), again);
    CHECK(other.loss != one.loss);
  }

  TEST_CASE("apply_learned_rotation preserves the function; quantize_model takes a learned rotation") {
    auto const c = small_config();
    auto const m = rsq_test::random_model(c, 12);
    auto const ids = tokens(3, 12, c.vocab_size, 14);
    auto const r = random_rotation(c, 3);
    auto rotated = m;
    apply_learned_rotation(rotated, r, plan_rotation(c));
    auto const a = forward(rsq::backend::cpu_eigen{}, m, rsq::view(ids));
    auto const b = forward(rsq::backend::cpu_eigen{}, rotated, rsq::view(ids));
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, double(std::abs(a.data()[i] - b.data()[i])));
    CHECK(worst < 1e-4);
    // The whole pipeline at 8 bits: the learned rotation, the pipeline's own Q and online Hadamards compose to a
    // function-preserving rotation, so the loss is the full-precision one to the rounding of 8 bits.
    quantize_options qo;
    qo.method = quant_method::quarot;
    qo.grid = rsq_script_grid(8);
    qo.rotation.learned = std::make_shared<learned_rotation const>(r);
    auto const q = quantize_model(m, rsq::view(ids), qo);
    double const fp = evaluate(m, rsq::view(ids)).mean;
    CHECK(evaluate(q.model, rsq::view(ids)).mean == doctest::Approx(fp).epsilon(2e-3));
    // The learned rotation is the whole rotation: the same R with a different pipeline seed gives the same model.
    auto qo2 = qo;
    qo2.rotation.seed = 7;
    auto const q2 = quantize_model(m, rsq::view(ids), qo2);
    CHECK(evaluate(q2.model, rsq::view(ids)).mean == doctest::Approx(evaluate(q.model, rsq::view(ids)).mean).epsilon(1e-3));
    // The same at 3 bits (QuaRot-RTN), where the rotation decides the rounding: with R applied once the two seeds
    // give the same weights to float rounding; R applied twice (R·Qᵀ·R with the seed's Q) would not.
    quantize_options rtn;
    rtn.method = quant_method::rtn;
    rtn.rotate = true;
    rtn.grid = rsq_script_grid(3);
    rtn.rotation.learned = qo.rotation.learned;
    auto rtn7 = rtn;
    rtn7.rotation.seed = 7;
    auto const w0 = quantize_model(m, rsq::view(ids), rtn).model.layers[0].wq;
    auto const w7 = quantize_model(m, rsq::view(ids), rtn7).model.layers[0].wq;
    double diff = 0, norm = 0;
    for (std::size_t i = 0; i < w0.size(); ++i) {
      diff += std::abs(double(w0.data()[i]) - double(w7.data()[i]));
      norm += std::abs(double(w0.data()[i]));
    }
    CHECK(diff <= 1e-3 * norm);
    // QuaRot's own rotation given as learned is QuaRot.
    quantize_options plain;
    plain.method = quant_method::quarot;
    plain.grid = rsq_script_grid(4);
    auto learned_plain = plain;
    learned_plain.rotation.learned = std::make_shared<learned_rotation const>(initial_rotation(plan_rotation(c), c));
    double const quarot = evaluate(quantize_model(m, rsq::view(ids), plain).model, rsq::view(ids)).mean;
    double const same = evaluate(quantize_model(m, rsq::view(ids), learned_plain).model, rsq::view(ids)).mean;
    CHECK(same == doctest::Approx(quarot).epsilon(1e-3));
  }

  TEST_CASE("learn a rotation, then GPTQ (SpinQuant) and RSQ on it (the snippet of docs/learned-rotations.md)") {
    auto const c = small_config();
    auto const model = rsq_test::random_model(c, 30);
    auto const calibration = tokens(8, 12, c.vocab_size, 31);
    // [snippet:learn_rotation]
    rsq::backend::cpu_eigen const be{};
    rsq::model::learn_rotation_options lo;
    lo.steps = 4;               // SpinQuant: 100
    lo.sequences_per_step = 4;  // SpinQuant: 8
    lo.grid.bits = 3;           // the loss goes through weights fake-quantized on the target grid
    auto const learned = rsq::model::learn_rotation(be, model, rsq::view(calibration), lo);
    // learned.loss: the loss of every step; learned.rotation: R1 (dim x dim) and one R2 (head_dim x head_dim) per layer
    rsq::model::quantize_options qo;
    qo.method = rsq::model::quant_method::quarot;  // learned rotation + GPTQ = SpinQuant; quant_method::rsq adds AttnCon
    qo.grid = rsq::model::rsq_script_grid(3);
    qo.rotation.learned = std::make_shared<rsq::model::learned_rotation const>(learned.rotation);
    auto const q = rsq::model::quantize_model(be, model, rsq::view(calibration), qo);
    // [snippet:learn_rotation]
    CHECK(q.ok());
    CHECK(learned.loss.size() == 4);
    CHECK(q.rotation.has_value());
  }

  TEST_CASE("save and load round-trip; bad input is refused with a clear message") {
    auto const c = small_config();
    auto const m = rsq_test::random_model(c, 2);
    auto const r = random_rotation(c, 5);
    std::filesystem::create_directories(RSQ_TEST_TMP_DIR);
    auto const prefix = std::filesystem::path(RSQ_TEST_TMP_DIR) / "learned";
    save_learned_rotation(prefix, r);
    auto const back = load_learned_rotation(prefix, c);
    CHECK(back.r1 == r.r1);
    CHECK(back.r2 == r.r2);
    auto other = c;
    other.n_layers = 3;
    CHECK_THROWS_WITH_AS((void)load_learned_rotation(prefix, other), doctest::Contains("R2 matrices"),
                         rsq::invalid_argument);
    auto skewed = r;
    skewed.r1(0, 0) += 0.01;
    CHECK_THROWS_WITH_AS(validate(skewed, c), doctest::Contains("not orthogonal"), rsq::invalid_argument);

    auto const calib = tokens(4, 8, c.vocab_size, 1);
    learn_rotation_options opt;
    opt.sequences_per_step = 5;
    CHECK_THROWS_WITH_AS((void)learn_rotation(rsq::backend::cpu_eigen{}, m, rsq::view(calib), opt),
                         doctest::Contains("sequences per step"), rsq::invalid_argument);
    opt.sequences_per_step = 2;
    opt.steps = 0;
    CHECK_THROWS_WITH_AS((void)learn_rotation(rsq::backend::cpu_eigen{}, m, rsq::view(calib), opt),
                         doctest::Contains("steps"), rsq::invalid_argument);
    quantize_options qo;
    qo.method = quant_method::gptq;
    qo.rotation.learned = std::make_shared<learned_rotation const>(r);
    CHECK_THROWS_WITH_AS((void)quantize_model(m, rsq::view(calib), qo), doctest::Contains("learned rotation"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)rotate_model(*std::make_unique<llama_model>(m), qo.rotation),
                         doctest::Contains("apply_learned_rotation"), rsq::invalid_argument);
  }
}

}  // namespace learn_cases
