// SPDX-License-Identifier: MIT
// The importance choice of quantize_options (choose / blend between uniform and the policy's token weights, per
// linear, by the output error on held-out calibration windows): a single α is the plain run on the fitting windows
// bit for bit; the kept solution is the candidate with the smallest held-out error, every candidate's Q and error
// recomputed independently in float64; the held-out windows stay out of the fitted Hessian; the result does not
// depend on the chunking or the thread count; bad options are refused.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <utility>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <rsq/gptq/solve.hpp>
#include <rsq/importance/all.hpp>
#include <rsq/model/quantize.hpp>

#include "pipeline/pipeline_support.hpp"

using namespace rsq::model;
using namespace rsq_pipeline_test;
using rsq::index_t;

namespace {

/// Rows [r0, r1) of @p m as a matrix of their own.
template <class T>
rsq::matrix<T> row_slice(rsq::matrix<T> const& m, index_t r0, index_t r1) {
  auto out = rsq::make_matrix<T>(r1 - r0, index_t(m.shape()[1]));
  for (index_t i = r0; i < r1; ++i)
    for (index_t j = 0; j < index_t(m.shape()[1]); ++j) out(i - r0, j) = m(i, j);
  return out;
}

/// The same codes, scales and dequantized weights in every linear.
bool identical(quantized_model const& a, quantized_model const& b) {
  for (std::size_t l = 0; l < a.model.layers.size(); ++l)
    for (linear_id id : all_linears) {
      if (!(a.weight(int(l), id).codes == b.weight(int(l), id).codes)) return false;
      if (!(a.weight(int(l), id).scales == b.weight(int(l), id).scales)) return false;
      if (!(a.model.layers[l].weight(id) == b.model.layers[l].weight(id))) return false;
    }
  return true;
}

/// The inputs of linear @p id when @p layer runs on @p x, (S·L, in).
rsq::matrix<float> linear_input(llama_config const& c, decoder_layer const& layer, int index, activations const& x,
                                linear_id id) {
  rsq::matrix<float> out;
  forward_hooks hooks;
  hooks.linear_input = [&](linear_site const& s, rsq::matrix_view<const float> in) {
    if (s.linear != id) return;
    out = rsq::make_matrix<float>(in.rows(), in.cols());
    for (index_t i = 0; i < in.rows(); ++i)
      for (index_t j = 0; j < in.cols(); ++j) out(i, j) = in(i, j);
  };
  (void)forward_layer(c, layer, index, rsq::batch_view<const float>(x), hooks);
  return out;
}

/// (2/N) Σ_j Σ_t ‖(W − Q)·x_jt‖² over the N sequences [s0, s1) of @p x (S·L, in): the held-out output error, from
/// the inputs themselves (not from a Hessian), in float64.
double output_error(rsq::matrix<float> const& w, rsq::matrix<double> const& q, rsq::matrix<float> const& x,
                    index_t s0, index_t s1, index_t L) {
  index_t const rows = index_t(w.shape()[0]), cols = index_t(w.shape()[1]);
  double sum = 0;
  for (index_t t = s0 * L; t < s1 * L; ++t)
    for (index_t i = 0; i < rows; ++i) {
      double y = 0;
      for (index_t k = 0; k < cols; ++k) y += (double(w(i, k)) - q(i, k)) * double(x(t, k));
      sum += y * y;
    }
  return sum * 2.0 / double(s1 - s0);
}

}  // namespace

TEST_SUITE("pipeline.importance_choice") {
  TEST_CASE("a single alpha is the plain run on the fitting windows, bit for bit (1: the policy's, 0: uniform)") {
    auto const fp = random_model(tiny_config(), 21);
    index_t const S = 4, L = 16;
    auto const calib = random_tokens(S, L, fp.config.vocab_size, 5);
    auto const fitting = row_slice(calib, 0, 3);  // held_out 0.25 of 4 windows: the last one
    for (double alpha : {1.0, 0.0}) {
      CAPTURE(alpha);
      quantize_options opt;  // rsq: rotation + AttnCon
      opt.rotation.seed = 3;
      opt.choice = importance_choice::choose;
      opt.choice_alphas = {alpha};
      auto const q = quantize_model(fp, rsq::view(calib), opt);
      REQUIRE(q.ok());
      CHECK(q.held_out_sequences == 1);
      CHECK(q.choice == importance_choice::choose);
      quantize_options plain;
      plain.rotation.seed = 3;
      if (alpha == 0) plain.method = quant_method::quarot;
      auto const want = quantize_model(fp, rsq::view(fitting), plain);
      REQUIRE(want.ok());
      CHECK(identical(q, want));
      for (auto const& lr : q.layers[1].linears) {
        REQUIRE(lr.importance_alpha.has_value());
        CHECK(*lr.importance_alpha == alpha);
        REQUIRE(lr.held_out_losses.size() == 1);
        CHECK(lr.held_out_losses[0] > 0);
      }
    }
    // Without a choice nothing is held out and nothing is reported.
    auto const off = quantize_model(fp, rsq::view(calib), {});
    CHECK(off.held_out_sequences == 0);
    CHECK_FALSE(off.layers[0].linears[0].importance_alpha.has_value());
    CHECK(off.layers[0].linears[0].held_out_losses.empty());
  }

  TEST_CASE("blend keeps, per linear, the candidate with the smallest held-out error (recomputed in float64)") {
    // No rotation (gptq with AttnCon): the test walks layer 0 on the plain embeddings. float64 Hessians and solves,
    // so that the test's independent Hessians give the solver the same problem.
    auto const cfg = tiny_config();
    auto const fp = random_model(cfg, 9);
    index_t const S = 5, L = 16, fit = 3;  // held_out 0.4 of 5: the last 2 windows
    auto const calib = random_tokens(S, L, cfg.vocab_size, 11);
    quantize_options opt;
    opt.method = quant_method::gptq;
    opt.policy = rsq::importance::any_policy::parse("attncon");
    opt.double_precision = true;
    opt.choice = importance_choice::blend;
    opt.held_out = 0.4;
    std::vector<double> const alphas = opt.candidate_alphas();
    CHECK(alphas == std::vector<double>{0, 0.25, 0.5, 0.75, 1});
    rsq::matrix<float> importances;
    std::map<linear_id, rsq::matrix<double>> hessians;
    quantize_observer obs;
    obs.on_importances = [&](int l, rsq::matrix_view<const float> r) {
      if (l != 0) return;
      importances = rsq::make_matrix<float>(r.rows(), r.cols());
      for (index_t i = 0; i < r.rows(); ++i)
        for (index_t j = 0; j < r.cols(); ++j) importances(i, j) = r(i, j);
    };
    obs.on_hessian = [&](int l, linear_id g, rsq::matrix<double> const& h) {
      if (l == 0) hessians[g] = h;
    };
    auto const q = quantize_model(fp, rsq::view(calib), opt, obs);
    REQUIRE(q.ok());
    CHECK(q.held_out_sequences == S - fit);
    REQUIRE(index_t(importances.shape()[0]) == S);
    auto const r_fit = row_slice(importances, 0, fit);

    activations const x = embed(fp, rsq::view(calib));
    decoder_layer partial = fp.layers[0];
    decoder_layer const& q_layer = q.model.layers[0];
    std::map<linear_id, linear_report> reports;
    for (auto const& lr : q.layers[0].linears) reports[lr.linear] = lr;
    std::vector<double> picked;
    for (std::size_t g = 0; g < true_sequential_groups.size(); ++g) {
      linear_id const first = true_sequential_groups[g][0];
      CAPTURE(name(first));
      auto const in = linear_input(cfg, partial, 0, x, first);  // every window, the earlier groups quantized
      auto const in_fit = row_slice(in, 0, fit * L);
      // H_policy and H_uniform of the fitting windows; the observer sees H_policy, without the held-out windows.
      auto const hp = reference_hessian(rsq::view(std::as_const(in_fit)), fit, L, &r_fit);
      auto const hu = reference_hessian(rsq::view(std::as_const(in_fit)), fit, L, nullptr);
      CHECK(relative_matrix_difference(hessians.at(first), hp) < 1e-10);
      index_t const n = index_t(in.shape()[1]);
      for (int i = 0; i < true_sequential_group_sizes[g]; ++i) {
        linear_id const id = true_sequential_groups[g][std::size_t(i)];
        CAPTURE(name(id));
        auto const& w = fp.layers[0].weight(id);
        auto wd = rsq::matrix<double>::from_shape(w.shape());
        std::copy(w.begin(), w.end(), wd.begin());
        std::vector<double> errors;
        std::vector<rsq::matrix<double>> qs;
        for (double a : alphas) {
          auto h = rsq::make_matrix<double>(n, n);
          for (index_t k = 0; k < n * n; ++k) h.data()[k] = a * hp[std::size_t(k)] + (1 - a) * hu[std::size_t(k)];
          auto r = rsq::gptq::solve(rsq::backend::cpu_eigen{}, wd, h, opt.grid, opt.solver);
          REQUIRE(r.ok());
          errors.push_back(output_error(w, r.dequantized, in, fit, S, L));
          qs.push_back(std::move(r.dequantized));
        }
        auto const& lr = reports.at(id);
        REQUIRE(lr.held_out_losses.size() == alphas.size());
        for (std::size_t k = 0; k < alphas.size(); ++k)
          CHECK(lr.held_out_losses[k] == doctest::Approx(errors[k]).epsilon(1e-7));
        std::size_t const best = std::size_t(std::min_element(errors.begin(), errors.end()) - errors.begin());
        REQUIRE(lr.importance_alpha.has_value());
        CHECK(*lr.importance_alpha == alphas[best]);
        picked.push_back(*lr.importance_alpha);
        // The model holds that candidate's Q; its error is the minimum of all candidates'.
        auto const& got = q_layer.weight(id);
        double diff = 0;
        for (std::size_t k = 0; k < got.size(); ++k)
          diff = std::max(diff, std::abs(double(got.data()[k]) - qs[best].data()[k]));
        CHECK(diff < 1e-6);
        for (double e : errors) CHECK(errors[best] <= e);
      }
      for (int i = 0; i < true_sequential_group_sizes[g]; ++i) {
        linear_id const id = true_sequential_groups[g][std::size_t(i)];
        partial.weight(id) = q_layer.weight(id);
      }
    }
    MESSAGE("alphas picked in layer 0 (q k v o w1 w3 w2): " << picked[0] << " " << picked[1] << " " << picked[2]
                                                             << " " << picked[3] << " " << picked[4] << " "
                                                             << picked[5] << " " << picked[6]);
  }

  TEST_CASE("the choice does not depend on the chunking or the thread count; expansion holds out whole windows") {
    auto const fp = random_model(tiny_config(), 4);
    auto const calib = random_tokens(4, 16, fp.config.vocab_size, 2);
    quantize_options opt;
    opt.choice = importance_choice::blend;
    auto const a = quantize_model(fp, rsq::view(calib), opt);
    opt.chunk_tokens = 16;  // one window per chunk
    auto const b = quantize_model(fp, rsq::view(calib), opt);
    opt.chunk_tokens = 48;  // chunks of 3 windows: the second chunk starts with the held-out window
    auto const c = quantize_model(fp, rsq::view(calib), opt);
    CHECK(identical(a, b));
    CHECK(identical(a, c));
#if defined(_OPENMP)
    int const before = omp_get_max_threads();
    omp_set_num_threads(before == 1 ? 2 : 1);
    auto const d = quantize_model(fp, rsq::view(calib), opt);
    omp_set_num_threads(before);
    CHECK(identical(a, d));
#endif
    for (std::size_t l = 0; l < a.layers.size(); ++l)
      for (std::size_t i = 0; i < a.layers[l].linears.size(); ++i) {
        CHECK(a.layers[l].linears[i].importance_alpha == c.layers[l].linears[i].importance_alpha);
        CHECK(a.layers[l].linears[i].held_out_losses == c.layers[l].linears[i].held_out_losses);
      }
    // Expansion by 2: the last window and its shift are held out; a single α = 1 is then rsq on the 3 fitting
    // windows, expanded.
    opt = {};
    opt.expand_factor = 2;
    opt.choice = importance_choice::choose;
    opt.choice_alphas = {1.0};
    auto const e = quantize_model(fp, rsq::view(calib), opt);
    CHECK(e.calibration_sequences == 8);
    CHECK(e.held_out_sequences == 2);
    auto const fitting = row_slice(calib, 0, 3);
    CHECK(identical(e, quantize_model(fp, rsq::view(fitting), {.expand_factor = 2})));
  }

  TEST_CASE("bad options are refused with a clear message") {
    auto const fp = random_model(tiny_config(), 1);
    auto const calib = random_tokens(2, 8, fp.config.vocab_size, 1);
    auto run = [&](quantize_options const& o) { return quantize_model(fp, rsq::view(calib), o); };
    quantize_options o;
    o.choice = importance_choice::choose;
    o.method = quant_method::rtn;
    CHECK_THROWS_WITH_AS(run(o), doctest::Contains("rtn uses no calibration, so importance choice choose"),
                         rsq::invalid_argument);
    o.method = quant_method::quarot;  // uniform tokens: nothing to choose from
    CHECK_THROWS_WITH_AS(run(o), doctest::Contains("but the policy is uniform"), rsq::invalid_argument);
    o.policy = rsq::importance::any_policy::parse("attncon");  // quarot with AttnCon: fine
    CHECK(run(o).ok());
    o = {};
    o.choice = importance_choice::blend;
    for (double f : {0.0, 1.0, -0.5, std::numeric_limits<double>::quiet_NaN()}) {
      o.held_out = f;
      CHECK_THROWS_WITH_AS(run(o), doctest::Contains("held_out must be a fraction in (0, 1)"), rsq::invalid_argument);
    }
    o.held_out = 0.2;  // of 2 windows: none held out
    CHECK_THROWS_WITH_AS(run(o), doctest::Contains("at least one must be held out and one must remain"),
                         rsq::invalid_argument);
    o.held_out = 0.8;  // of 2 windows: none left to fit
    CHECK_THROWS_WITH_AS(run(o), doctest::Contains("i.e. 2 (rounded)"), rsq::invalid_argument);
    o.held_out = 0.5;
    o.choice_alphas = {0.5, 0.5};
    CHECK_THROWS_WITH_AS(run(o), doctest::Contains("choice_alphas must increase"), rsq::invalid_argument);
    o.choice_alphas = {0, 1.5};
    CHECK_THROWS_WITH_AS(run(o), doctest::Contains("choice_alphas must lie in [0, 1], got 1.5"),
                         rsq::invalid_argument);
    o.choice = importance_choice::off;
    o.choice_alphas = {1};
    CHECK_THROWS_WITH_AS(run(o), doctest::Contains("choice_alphas need an importance choice"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)parse_importance_choice("maybe"), doctest::Contains("unknown choice \"maybe\""),
                         rsq::invalid_argument);
    CHECK(parse_importance_choice("blend") == importance_choice::blend);
    CHECK(to_string(importance_choice::choose) == "choose");
  }
}
