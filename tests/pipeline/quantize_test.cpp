// SPDX-License-Identifier: MIT
// Layer-by-layer quantization (spec §1 step 5, §4, §5): the true-sequential order (every group's Hessian recomputed
// independently in float64 from a layer whose earlier groups are quantized, on the outputs of the quantized layers
// before it), the importances from the layer's own full-precision attention, RTN against quantize_rtn, the expansion,
// every policy through the pipeline, the failure status, and bad arguments. Also the importance choice
// (quantize_options::choice: choose / blend between uniform and the policy's token weights, per linear, by the output
// error on held-out calibration windows): a single α is the plain run on the fitting windows
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
#include <rsq/quant/rtn.hpp>

#include "pipeline/pipeline_support.hpp"

using namespace rsq::model;
using namespace rsq_pipeline_test;
using rsq::index_t;

namespace {

/// AttnCon of one sequence from its attention probabilities (heads, L, L), by the definition of spec §4.2:
/// s_t = Σ_h Σ_{i ≥ t} A[h, i, t], then min-max to [r_min, r_max].
std::vector<double> attncon_reference(rsq::batch_view<const float> p, double r_min = 0.005, double r_max = 1.0) {
  index_t const H = p.extent(0), L = p.extent(1);
  std::vector<double> s(std::size_t(L), 0.0);
  for (index_t h = 0; h < H; ++h)
    for (index_t i = 0; i < L; ++i)
      for (index_t t = 0; t <= i; ++t) s[std::size_t(t)] += p(h, i, t);
  double const lo = *std::min_element(s.begin(), s.end()), hi = *std::max_element(s.begin(), s.end());
  for (auto& v : s) v = r_min + (v - lo) / (hi - lo) * (r_max - r_min);
  return s;
}

/// The inputs of linear @p id when @p layer runs on @p x, (S·L, in), with the model's online transforms @p online.
rsq::matrix<float> linear_input(llama_config const& c, decoder_layer const& layer, int index, activations const& x,
                                linear_id id, online_transforms const& online = {}) {
  rsq::matrix<float> out;
  forward_hooks hooks;
  hooks.linear_input = [&](linear_site const& s, rsq::matrix_view<const float> in) {
    if (s.linear != id) return;
    out = rsq::make_matrix<float>(in.rows(), in.cols());
    for (index_t i = 0; i < in.rows(); ++i)
      for (index_t j = 0; j < in.cols(); ++j) out(i, j) = in(i, j);
  };
  (void)forward_layer(c, layer, index, rsq::batch_view<const float>(x), hooks, online);
  return out;
}

struct recorded {
  std::map<int, rsq::matrix<float>> importances;
  std::map<std::pair<int, linear_id>, rsq::matrix<double>> hessians;
  std::vector<layer_report> layers;
};

quantize_observer recorder(recorded& rec) {
  quantize_observer obs;
  obs.on_importances = [&rec](int l, rsq::matrix_view<const float> r) {
    auto m = rsq::make_matrix<float>(r.rows(), r.cols());
    for (index_t i = 0; i < r.rows(); ++i)
      for (index_t j = 0; j < r.cols(); ++j) m(i, j) = r(i, j);
    rec.importances[l] = std::move(m);
  };
  obs.on_hessian = [&rec](int l, linear_id g, rsq::matrix<double> const& h) {
    CHECK(rec.hessians.count({l, g}) == 0);  // one Hessian per group
    rec.hessians[{l, g}] = h;
  };
  obs.on_layer = [&rec](layer_report const& r) { rec.layers.push_back(r); };
  return obs;
}

}  // namespace

TEST_SUITE("pipeline.quantize") {
  TEST_CASE("true-sequential: every group's Hessian equals an independent recomputation with the earlier groups "
            "quantized, and the importances come from the layer's own FP attention") {
    // ActDiff runs the FP layer inside the importance pass (its x_out), which must not disturb the q/k/v inputs.
    struct variant {
      quant_method method;
      char const* policy;  // nullptr: the method's own
    };
    for (auto const& v : {variant{quant_method::rsq, nullptr}, variant{quant_method::gptq, nullptr},
                          variant{quant_method::rsq, "actdiff"}}) {
      quant_method const method = v.method;  // named variables: clang 14 cannot CAPTURE a structured binding
      char const* const policy = v.policy;
      CAPTURE(to_string(method));
      std::string const policy_name = policy != nullptr ? policy : "default";
      CAPTURE(policy_name);
      bool const attncon = method == quant_method::rsq && policy == nullptr;
      auto const cfg = odd_config();
      auto const fp = random_model(cfg, 31);
      index_t const S = 4, L = 16;
      auto const calib = random_tokens(S, L, cfg.vocab_size, 17);
      quantize_options opt;
      opt.method = method;
      opt.rotation.seed = 5;
      if (policy != nullptr) opt.policy = rsq::importance::any_policy::parse(policy, 0.005, 1.0);
      recorded rec;
      auto const q = quantize_model(fp, rsq::view(calib), opt, recorder(rec));
      REQUIRE(q.ok());
      CHECK(q.rotation.has_value() == (method == quant_method::rsq));
      CHECK(q.policy == (policy != nullptr ? policy : method == quant_method::rsq ? "attncon" : "uniform"));
      CHECK(rec.hessians.size() == std::size_t(4 * cfg.n_layers));
      CHECK(rec.importances.size() == (method == quant_method::rsq ? std::size_t(cfg.n_layers) : 0u));

      // The reference: the same rotated FP model, walked layer by layer on the quantized outputs.
      auto ref = fp;
      if (method == quant_method::rsq) (void)rotate_model(ref, opt.rotation);
      activations x = embed(ref, rsq::view(calib));
      for (int l = 0; l < cfg.n_layers; ++l) {
        CAPTURE(l);
        decoder_layer const& fp_layer = ref.layers[std::size_t(l)];
        decoder_layer const& q_layer = q.model.layers[std::size_t(l)];
        rsq::matrix<float> r;
        rsq::matrix<float> const* rp = nullptr;
        if (!attncon && policy != nullptr) rp = &rec.importances.at(l);  // checked by the policy test below
        if (attncon) {
          r = rsq::make_matrix<float>(S, L);
          forward_hooks hooks;
          hooks.attention_probs = [&](attention_site const& s, rsq::batch_view<const float> p) {
            auto const want = attncon_reference(p);
            for (index_t t = 0; t < L; ++t) r(s.sequence, t) = float(want[std::size_t(t)]);
          };
          (void)forward_layer(cfg, fp_layer, l, rsq::batch_view<const float>(x), hooks, ref.online);
          auto const& got = rec.importances.at(l);
          for (index_t j = 0; j < S; ++j)
            for (index_t t = 0; t < L; ++t) CHECK(got(j, t) == doctest::Approx(r(j, t)).epsilon(1e-5));
          rp = &r;
        }
        // Group g is calibrated on the layer with groups < g quantized (groups ≥ g are still FP: they do not
        // influence the group's input).
        auto partial = fp_layer;
        for (std::size_t g = 0; g < true_sequential_groups.size(); ++g) {
          linear_id const first = true_sequential_groups[g][0];
          auto const in = linear_input(cfg, partial, l, x, first, ref.online);
          auto const want = reference_hessian(rsq::view(std::as_const(in)), S, L, rp);
          CHECK(relative_matrix_difference(rec.hessians.at({l, first}), want) < 1e-4);
          if (g > 0) {
            // Calibrating on the FP layer instead gives another Hessian: the check above can fail.
            auto const in_fp = linear_input(cfg, fp_layer, l, x, first, ref.online);
            CHECK(relative_matrix_difference(rec.hessians.at({l, first}),
                                             reference_hessian(rsq::view(std::as_const(in_fp)), S, L, rp)) > 1e-3);
          }
          for (int i = 0; i < true_sequential_group_sizes[g]; ++i) {
            linear_id const id = true_sequential_groups[g][std::size_t(i)];
            partial.weight(id) = q_layer.weight(id);
          }
        }
        // The next layer's inputs: the outputs of the quantized layer.
        x = forward_layer(cfg, q_layer, l, rsq::batch_view<const float>(x), {}, ref.online);
      }
      // Reports come in true-sequential order.
      REQUIRE(rec.layers.size() == std::size_t(cfg.n_layers));
      std::vector<linear_id> order;
      for (auto const& lr : rec.layers[0].linears) order.push_back(lr.linear);
      CHECK(order == std::vector<linear_id>{linear_id::wq, linear_id::wk, linear_id::wv, linear_id::wo, linear_id::w1,
                                            linear_id::w3, linear_id::w2});
      for (auto const& lr : rec.layers[1].linears) {
        CHECK(lr.info == rsq::gptq::status::ok);
        CHECK(lr.damp_attempts >= 1);
        CHECK(lr.loss > 0);
      }
      CHECK(q.timings.forward > 0);
      CHECK(q.timings.solver > 0);
      CHECK(q.timings.total >= q.timings.forward + q.timings.solver + q.timings.hessian);
    }
  }

  TEST_CASE("the stored quantized weights dequantize to the model's weights") {
    auto const fp = random_model(tiny_config(), 3);
    auto const calib = random_tokens(3, 16, fp.config.vocab_size, 2);
    quantize_options opt{.method = quant_method::quarot, .grid = rsq_script_grid(4), .solver = {.group_size = 16}};
    auto const q = quantize_model(fp, rsq::view(calib), opt);
    REQUIRE(q.ok());
    for (int l = 0; l < fp.config.n_layers; ++l)
      for (linear_id id : all_linears) {
        auto const& w = q.weight(l, id);
        CHECK(w.bits == 4);
        CHECK(w.groups() == (id == linear_id::w2 ? 3 : 2));  // 48 / 16 and 32 / 16 columns
        CHECK(rsq::quant::dequantize(w) == q.model.layers[std::size_t(l)].weight(id));
      }
  }

  TEST_CASE("rtn equals quantize_rtn of every linear (per row and grouped)") {
    auto const fp = random_model(odd_config(), 8);
    for (index_t group : {index_t(-1), index_t(16)}) {
      CAPTURE(group);
      quantize_options opt;
      opt.method = quant_method::rtn;
      opt.solver.group_size = group;
      auto const q = quantize_model(fp, {}, opt);
      REQUIRE(q.ok());
      CHECK_FALSE(q.rotation.has_value());
      for (int l = 0; l < fp.config.n_layers; ++l)
        for (linear_id id : all_linears) {
          auto const want = rsq::quant::quantize_rtn(rsq::matrix_view<const float>(fp.layers[std::size_t(l)].weight(id)),
                                                     rsq_script_grid(3), group);
          auto const& got = q.weight(l, id);
          CHECK(got.codes == want.codes);
          CHECK(got.scales == want.scales);
          CHECK(got.zeros == want.zeros);
          CHECK(q.model.layers[std::size_t(l)].weight(id) == rsq::quant::dequantize(want));
        }
      // Norm gains and the embedding are untouched.
      CHECK(q.model.token_embedding == fp.token_embedding);
      CHECK(q.model.layers[1].rms_ffn == fp.layers[1].rms_ffn);
    }
  }

  TEST_CASE("expansion inside the pipeline equals calibrating on the expanded windows") {
    auto const fp = random_model(tiny_config(), 12);
    auto const calib = random_tokens(2, 16, fp.config.vocab_size, 6);
    quantize_options opt;
    opt.expand_factor = 4;
    auto const a = quantize_model(fp, rsq::view(calib), opt);
    CHECK(a.calibration_sequences == 8);
    CHECK(a.calibration_tokens == 16);
    opt.expand_factor = 1;
    auto const expanded = expand_cyclic(rsq::view(calib), 4);
    auto const b = quantize_model(fp, rsq::view(expanded), opt);
    for (int l = 0; l < fp.config.n_layers; ++l)
      for (linear_id id : all_linears) CHECK(a.weight(l, id).codes == b.weight(l, id).codes);
    // and differs from not expanding
    auto const c = quantize_model(fp, rsq::view(calib), opt);
    bool differs = false;
    for (linear_id id : all_linears) differs = differs || !(a.weight(1, id).codes == c.weight(1, id).codes);
    CHECK(differs);
  }

  TEST_CASE("every importance policy runs through the pipeline; actdiff reads the layer input and FP output") {
    auto const fp = random_model(tiny_config(), 2);
    index_t const S = 3, L = 16;
    auto const calib = random_tokens(S, L, fp.config.vocab_size, 8);
    for (char const* name : {"uniform", "first_n:0/8", "attncon", "actnorm", "actdiff", "tokensim", "tokenfreq"}) {
      CAPTURE(name);
      quantize_options opt;
      opt.method = quant_method::gptq;  // no rotation: layer 0's input is the plain embedding
      opt.policy = rsq::importance::any_policy::parse(name, 0.01, 1.0);
      recorded rec;
      auto const q = quantize_model(fp, rsq::view(calib), opt, recorder(rec));
      REQUIRE(q.ok());
      CHECK(q.policy == std::string(opt.policy->name()));
      if (std::string(name) == "uniform") {
        CHECK(rec.importances.empty());
        continue;
      }
      REQUIRE(rec.importances.size() == std::size_t(fp.config.n_layers));
      auto const& r0 = rec.importances.at(0);
      CHECK(r0.shape()[0] == std::size_t(S));
      CHECK(r0.shape()[1] == std::size_t(L));
      if (std::string(name) == "actdiff") {
        auto const x = embed(fp, rsq::view(calib));
        auto const out = forward_layer(fp.config, fp.layers[0], 0, rsq::batch_view<const float>(x));
        for (index_t j = 0; j < S; ++j) {
          std::vector<double> d(static_cast<std::size_t>(L));
          for (index_t t = 0; t < L; ++t) {
            double s = 0;
            for (index_t k = 0; k < fp.config.dim; ++k) {
              double const v = double(x(j, t, k)) - double(out(j, t, k));
              s += v * v;
            }
            d[std::size_t(t)] = -std::sqrt(s);  // reversed: small residual updates weigh most
          }
          double const lo = *std::min_element(d.begin(), d.end()), hi = *std::max_element(d.begin(), d.end());
          for (index_t t = 0; t < L; ++t)
            CHECK(r0(j, t) == doctest::Approx(0.01 + (d[std::size_t(t)] - lo) / (hi - lo) * 0.99).epsilon(1e-4));
        }
      }
      if (std::string(name) == "first_n:0/8")
        for (index_t t = 0; t < L; ++t) CHECK(r0(1, t) == (t < 2 ? 1.f : 0.f));
    }
  }

  TEST_CASE("importance power and double precision are honoured") {
    auto const fp = random_model(tiny_config(), 6);
    auto const calib = random_tokens(3, 16, fp.config.vocab_size, 1);
    quantize_options opt;
    recorded p1, p2;
    auto const a = quantize_model(fp, rsq::view(calib), opt, recorder(p1));
    opt.importance_power = 2;
    auto const b = quantize_model(fp, rsq::view(calib), opt, recorder(p2));
    // Same importances, different Hessians: w ∝ r² instead of r.
    CHECK(p1.importances.at(0) == p2.importances.at(0));
    CHECK(relative_matrix_difference(p1.hessians.at({0, linear_id::wq}),
                                     std::vector<double>(p2.hessians.at({0, linear_id::wq}).begin(),
                                                         p2.hessians.at({0, linear_id::wq}).end())) > 1e-2);
    opt.importance_power = 1;
    opt.double_precision = true;
    recorded p3;
    auto const c = quantize_model(fp, rsq::view(calib), opt, recorder(p3));
    REQUIRE(c.ok());
    CHECK(relative_matrix_difference(p3.hessians.at({0, linear_id::wq}),
                                     std::vector<double>(p1.hessians.at({0, linear_id::wq}).begin(),
                                                         p1.hessians.at({0, linear_id::wq}).end())) < 1e-5);
    (void)a;
    (void)b;
  }

  TEST_CASE("a Hessian that is not positive definite stops the run with a status") {
    // One token repeated: layer 0's linears see one input vector, so H has rank 1 and, without damping and without
    // escalation, the Cholesky factorization fails.
    auto const fp = random_model(tiny_config(), 4);
    auto calib = rsq::make_matrix<std::int32_t>(2, 16);
    std::fill(calib.begin(), calib.end(), 7);
    quantize_options opt;
    opt.method = quant_method::gptq;
    opt.solver.damp_percent = 0;
    opt.solver.max_damp_attempts = 1;
    recorded rec;
    auto const q = quantize_model(fp, rsq::view(calib), opt, recorder(rec));
    CHECK_FALSE(q.ok());
    CHECK(q.info == rsq::gptq::status::not_positive_definite);
    CHECK(q.failed_layer == 0);
    CHECK(q.failed_linear == linear_id::wq);
    REQUIRE(rec.layers.size() == 1);
    CHECK_FALSE(rec.layers[0].ok());
    CHECK(rec.layers[0].linears.back().info == rsq::gptq::status::not_positive_definite);
    // With the default damping the same data quantize.
    opt.solver = {};
    CHECK(quantize_model(fp, rsq::view(calib), opt).ok());
  }

  TEST_CASE("bad arguments") {
    auto const fp = random_model(tiny_config(), 1);
    auto const calib = random_tokens(2, 8, fp.config.vocab_size, 1);
    auto run = [&](quantize_options const& o) { return quantize_model(fp, rsq::view(calib), o); };
    CHECK_THROWS_WITH_AS(run({.grid = rsq_script_grid(9)}), doctest::Contains("bits must be between 2 and 8, got 9"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(run({.grid = rsq_script_grid(1)}), doctest::Contains("got 1"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(run({.solver = {.group_size = 0}}), doctest::Contains("group_size must be -1"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(run({.importance_power = 0}), doctest::Contains("importance_power must be positive"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(run({.expand_factor = 0}), doctest::Contains("expand_factor must be at least 1"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(run({.expand_factor = 9}), doctest::Contains("expansion factor must be in [1, 8]"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(run({.method = quant_method::rtn, .policy = rsq::importance::any_policy::parse("attncon")}),
                         doctest::Contains("rtn uses no calibration"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)parse_quant_method("awq"), doctest::Contains("unknown method \"awq\""),
                         rsq::invalid_argument);
    CHECK(parse_quant_method("quarot") == quant_method::quarot);
    CHECK_THROWS_WITH_AS((void)rsq::importance::any_policy::parse("attention"), doctest::Contains("unknown policy"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)rsq::importance::any_policy::parse("attncon", 0.5, 0.1), doctest::Contains("r_min"),
                         rsq::invalid_argument);

    auto const too_long = random_tokens(1, 65, fp.config.vocab_size, 1);  // seq_len 64
    CHECK_THROWS_WITH_AS((void)quantize_model(fp, rsq::view(too_long)), doctest::Contains("exceed the model's seq_len 64"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)quantize_model(fp, {}), doctest::Contains("calibration windows are empty"),
                         rsq::invalid_argument);
    auto bad_ids = calib;
    bad_ids(1, 3) = fp.config.vocab_size;
    CHECK_THROWS_WITH_AS((void)quantize_model(fp, rsq::view(bad_ids), {.method = quant_method::gptq}),
                         doctest::Contains("outside the vocabulary"), rsq::invalid_argument);
    auto rotated = fp;
    (void)rotate_model(rotated);
    CHECK_THROWS_WITH_AS((void)quantize_model(rotated, rsq::view(calib)), doctest::Contains("already rotated"),
                         rsq::invalid_argument);
    auto nan = fp;
    nan.layers[0].wq(0, 0) = std::nanf("");
    CHECK_THROWS_WITH_AS((void)quantize_model(nan, rsq::view(calib)), doctest::Contains("non-finite"),
                         rsq::invalid_argument);
  }
}

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
