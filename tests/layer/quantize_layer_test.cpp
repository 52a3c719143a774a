// SPDX-License-Identifier: MIT
// The one-layer RSQ pipeline (rotate, scale, quantize) against the golden RSQ cases and its own invariants.
#include <doctest/doctest.h>

#include <random>

#include <rsq/io/npy.hpp>
#include <rsq/pipeline/quantize_layer.hpp>
#include <rsq/rotation/randomized_hadamard.hpp>
#include <rsq/rotation/random_orthogonal.hpp>

#include "support/golden_case.hpp"

namespace {

using rsq::pipeline::layer_calibration;
using rsq::pipeline::layer_options;

struct golden_layer {
  rsq_test::golden_meta meta;
  rsq::matrix<float> w, h, q;
  xt::xtensor<float, 3> x;
  rsq::matrix<float> importance;
};

golden_layer load(std::filesystem::path const& dir) {
  golden_layer g;
  g.meta = rsq_test::read_meta(dir);
  g.w = rsq::io::load_npy<float, 2>(dir / "W.npy");
  g.h = rsq::io::load_npy<float, 2>(dir / "H.npy");
  g.q = rsq::io::load_npy<float, 2>(dir / "Q.npy");
  g.x = rsq::io::load_npy<float, 3>(dir / "X.npy");
  g.importance = rsq::io::load_npy<float, 2>(dir / "importance.npy");
  return g;
}

layer_options options_of(rsq_test::golden_meta const& m) {
  layer_options o;
  o.grid = m.grid();
  o.solver.group_size = m.groupsize;
  o.solver.act_order = m.actorder;
  return o;
}

}  // namespace

TEST_SUITE("pipeline.quantize_layer") {
  TEST_CASE("with the golden importances and no rotation it reproduces the reference RSQ layer") {
    RSQ_NEED_SHARED(shared);
    for (auto const* name : {"rsq_l2_wq_attncon_3b_sym_clip.f32", "rsq_l0_wk_firstn_3b_sym_clip.f32"}) {
      CAPTURE(name);
      auto const g = load(shared / "golden" / name);
      layer_calibration<float> c;
      c.inputs = rsq::batch_view<const float>(g.x);
      c.importance = rsq::matrix_view<const float>(g.importance);
      auto const l = rsq::pipeline::quantize_layer(rsq::backend::cpu_eigen{}, g.w, c, options_of(g.meta));
      REQUIRE(l.ok());
      CHECK_FALSE(l.rotation.has_value());
      CHECK(double(xt::sum(xt::equal(l.result.dequantized, g.q))()) >= 0.99 * double(g.q.size()));
      CHECK(l.proxy_loss == doctest::Approx(g.meta.proxy_loss).epsilon(1e-2));
      CHECK(xt::allclose(l.hessian, g.h, 1e-4, 1e-4 * double(xt::amax(xt::abs(g.h))())));
    }
  }

  TEST_CASE("AttnCon computed by the pipeline from the attention equals the golden importance") {
    RSQ_NEED_SHARED(shared);
    auto const dir = shared / "golden" / "rsq_l2_wq_attncon_3b_sym_clip.f32";
    auto const g = load(dir);
    auto const probs = rsq::io::load_npy<float, 3>(dir / "attn_probs_seq0.npy");  // (heads, L, L) of sequence 0
    xt::xtensor<float, 3> x0(xt::xtensor<float, 3>::shape_type{1, g.x.shape()[1], g.x.shape()[2]});
    std::copy(g.x.begin(), g.x.begin() + std::ptrdiff_t(x0.size()), x0.begin());
    xt::xtensor<float, 4> a(xt::xtensor<float, 4>::shape_type{1, probs.shape()[0], probs.shape()[1], probs.shape()[2]});
    std::copy(probs.begin(), probs.end(), a.begin());
    layer_calibration<float> c;
    c.inputs = rsq::batch_view<const float>(x0);
    c.attention = rsq::tensor_view<const float, 4>(a);
    auto o = options_of(g.meta);
    o.policy = rsq::importance::any_policy::parse("attncon", g.meta.r_min, g.meta.r_max);
    auto const l = rsq::pipeline::quantize_layer(rsq::backend::cpu_eigen{}, g.w, c, o);
    REQUIRE(l.ok());
    REQUIRE(l.importance.shape()[1] == g.importance.shape()[1]);
    for (std::size_t t = 0; t < g.importance.shape()[1]; ++t)
      CHECK(l.importance(0, t) == doctest::Approx(g.importance(0, t)).epsilon(1e-6));
  }

  TEST_CASE_TEMPLATE("a rotated layer: same function, loss invariant, and equal to solving the rotated problem", T,
                     float, double) {
    std::mt19937_64 rng(5);
    std::normal_distribution<T> nd;
    constexpr rsq::index_t rows = 24, cols = 96, seqs = 4, tokens = 64;
    auto w = rsq::make_matrix<T>(rows, cols);
    for (auto& v : w) v = nd(rng);
    xt::xtensor<T, 3> x(typename xt::xtensor<T, 3>::shape_type{seqs, tokens, cols});
    for (auto& v : x) v = nd(rng) * (rng() % 17 == 0 ? T(8) : T(1));  // outliers that a rotation spreads
    for (int kind = 0; kind < 2; ++kind) {
      auto const rot = kind == 0 ? rsq::rotation::any_rotation(rsq::rotation::randomized_hadamard(cols, 3))
                                 : rsq::rotation::any_rotation(rsq::rotation::random_orthogonal(cols, 3));
      layer_options o;
      o.grid = {.bits = 3, .symmetric = true, .conv = rsq::quant::convention::rsq};
      o.rotation = rsq::rotation::descriptor_of(rot);
      layer_calibration<T> c;
      c.inputs = rsq::batch_view<const T>(x);
      auto const l = rsq::pipeline::quantize_layer(rsq::backend::cpu_eigen{}, w, c, o);
      REQUIRE(l.ok());
      REQUIRE(l.rotation.has_value());
      // The same problem solved by hand: W·Q with the Hessian of x·Q.
      auto wr = w;
      auto xr = x;
      std::visit(
          [&](auto const& r) {
            r.apply_right(rsq::view(wr));
            rsq::rotation::apply_right(r, rsq::batch_view<T>(xr));
          },
          rot);
      rsq::hessian_accumulator<T> acc(cols);
      acc.add(xr);
      auto const direct = rsq::gptq::solve(rsq::backend::cpu_eigen{}, wr, acc.hessian(), o.grid, o.solver);
      CHECK(direct.weight.codes == l.result.weight.codes);
      // In the original basis, with the original inputs' Hessian, the loss is the same (Q is orthogonal).
      rsq::hessian_accumulator<T> acc0(cols);
      acc0.add(x);
      double const loss0 = rsq::gptq::proxy_loss(w, l.dequantized_in_original_basis(), acc0.hessian());
      CHECK(loss0 == doctest::Approx(l.proxy_loss).epsilon(std::is_same_v<T, float> ? 1e-4 : 1e-10));
    }
  }

  TEST_CASE("bad inputs are named") {
    auto const w = rsq::make_matrix<float>(4, 16);
    xt::xtensor<float, 3> x(xt::xtensor<float, 3>::shape_type{2, 8, 12}, 1.f);
    layer_calibration<float> c;
    c.inputs = rsq::batch_view<const float>(x);
    CHECK_THROWS_WITH_AS((void)rsq::pipeline::quantize_layer(rsq::backend::cpu_eigen{}, w, c, {}),
                         doctest::Contains("do not match the weight"), rsq::invalid_argument);
    xt::xtensor<float, 3> x16(xt::xtensor<float, 3>::shape_type{2, 8, 16}, 1.f);
    c.inputs = rsq::batch_view<const float>(x16);
    auto const r = rsq::make_matrix<float>(2, 7);
    c.importance = rsq::matrix_view<const float>(r);
    CHECK_THROWS_WITH_AS((void)rsq::pipeline::quantize_layer(rsq::backend::cpu_eigen{}, w, c, {}),
                         doctest::Contains("importance"), rsq::invalid_argument);
    c.importance = {};
    layer_options o;
    o.rotation = rsq::rotation::randomized_hadamard(32, 0).descriptor();
    CHECK_THROWS_WITH_AS((void)rsq::pipeline::quantize_layer(rsq::backend::cpu_eigen{}, w, c, o),
                         doctest::Contains("rotation is for n = 32"), rsq::invalid_argument);
    layer_options p;
    p.policy = rsq::importance::any_policy::parse("attncon");
    CHECK_THROWS_WITH_AS((void)rsq::pipeline::quantize_layer(rsq::backend::cpu_eigen{}, w, c, p),
                         doctest::Contains("attention"), rsq::invalid_argument);
    layer_calibration<float> empty;
    CHECK_THROWS_WITH_AS((void)rsq::pipeline::quantize_layer(rsq::backend::cpu_eigen{}, w, empty, {}),
                         doctest::Contains("empty"), rsq::invalid_argument);
  }
}
