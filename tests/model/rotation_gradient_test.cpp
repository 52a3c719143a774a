// SPDX-License-Identifier: MIT
// The gradient of the next-token loss with respect to the learned rotations R1 and R2 (model/rotation_gradient.hpp):
// against float64 central finite differences along random directions, unquantized and with the rounding frozen
// (the straight-through gradient), and the objective's forward pass against rsq's own evaluation.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include <rsq/model/quantize.hpp>
#include <rsq/model/rotation_gradient.hpp>

#include "model/model_test_support.hpp"

using namespace rsq::model;
using rsq::index_t;

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

rsq::matrix<std::int32_t> tokens(index_t S, index_t L, int vocab, std::uint32_t seed) {
  rsq_test::uniform_source u(seed);
  auto t = rsq::make_matrix<std::int32_t>(S, L);
  for (auto& x : t) x = std::int32_t(std::min(float(vocab - 1), std::floor((u(1.f) + 1.f) * 0.5f * float(vocab))));
  return t;
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
