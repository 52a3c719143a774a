// SPDX-License-Identifier: MIT
// Layer-by-layer quantization (spec §1 step 5, §4, §5): the true-sequential order (every group's Hessian recomputed
// independently in float64 from a layer whose earlier groups are quantized, on the outputs of the quantized layers
// before it), the importances from the layer's own full-precision attention, RTN against quantize_rtn, the expansion,
// every policy through the pipeline, the failure status, and bad arguments.

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

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
                                linear_id id, online_transforms const& online) {
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
