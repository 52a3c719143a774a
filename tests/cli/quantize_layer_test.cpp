// SPDX-License-Identifier: MIT
// rsq-quantize-layer end to end: golden cases through the command line, its files and JSON line, and bad input.
#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <rsq/gptq/proxy_loss.hpp>
#include <rsq/io/npy.hpp>
#include <rsq/quant/quantized_weight.hpp>
#include <rsq/rotation/any_rotation.hpp>

#include "cli/cli_support.hpp"
#include "support/golden_case.hpp"

namespace {

using rsq_test::run_result;

run_result run_tool(std::string const& args) { return rsq_test::run_tool_named("rsq-quantize-layer", args); }

double json_number(std::string const& json, std::string const& key) {
  auto const v = rsq_test::json_value(json, key);
  REQUIRE_MESSAGE(!v.empty(), "no \"", key, "\" in ", json);
  return std::stod(v);
}

std::string flags_for(rsq_test::golden_meta const& m) {
  std::string f = " --bits " + std::to_string(m.bits) + " --quantizer " + m.quantizer;
  if (m.sym) f += " --sym";
  if (m.mse) f += " --clip";
  if (m.groupsize > 0) f += " --groupsize " + std::to_string(m.groupsize);
  if (m.actorder) f += " --act-order";
  if (m.static_groups) f += " --static-groups";
  return f + " --precision " + m.dtype;
}

}  // namespace

TEST_SUITE("cli.rsq-quantize-layer") {
  TEST_CASE("a golden case given its Hessian: the reference's Q, proxy loss, and consistent output files") {
    RSQ_NEED_SHARED(shared);
    auto const dir = shared / "golden" / "ist_l3_w1_2b_asym_mse_g16_act_static.f64";
    auto const meta = rsq_test::read_meta(dir);
    auto const out = rsq_test::temp_dir("cli_golden");
    auto const r = run_tool("--weight " + (dir / "W.npy").string() + " --hessian " + (dir / "H.npy").string() +
                            flags_for(meta) + " --out " + out.string());
    INFO(r.output);
    REQUIRE(r.status == 0);
    CHECK(rsq_test::json_value(r.output, "status") == "ok");
    CHECK(json_number(r.output, "proxy_loss") == doctest::Approx(meta.proxy_loss).epsilon(1e-6));
    CHECK(json_number(r.output, "rtn_proxy_loss") > json_number(r.output, "proxy_loss"));
    CHECK(json_number(r.output, "damp_used") > 0);
    CHECK(json_number(r.output, "seconds") >= 0);

    auto const q = rsq::io::load_npy<double, 2>(out / "Q.npy");
    auto const q_ref = rsq::io::load_npy<double, 2>(dir / "Q.npy");
    REQUIRE(q.shape() == q_ref.shape());
    CHECK(xt::allclose(q, q_ref, 1e-9, 1e-12));
    rsq::quant::quantized_weight<double> qw;
    qw.bits = meta.bits;
    qw.codes = rsq::io::load_npy<std::uint8_t, 2>(out / "codes.npy");
    qw.scales = rsq::io::load_npy<double, 2>(out / "scales.npy");
    qw.zeros = rsq::io::load_npy<double, 2>(out / "zeros.npy");
    qw.g_idx = rsq::io::load_npy<std::int32_t, 1>(out / "g_idx.npy");
    CHECK(qw.groups() == (meta.cols + meta.groupsize - 1) / meta.groupsize);
    CHECK(rsq::quant::dequantize(qw) == q);
    auto const perm = rsq::io::load_npy<std::int32_t, 1>(out / "perm.npy");
    CHECK(perm.size() == std::size_t(meta.cols));
  }

  TEST_CASE("a golden RSQ case from its inputs and AttnCon importances, in float32") {
    RSQ_NEED_SHARED(shared);
    auto const dir = shared / "golden" / "rsq_l2_wq_attncon_3b_sym_clip.f32";
    auto const meta = rsq_test::read_meta(dir);
    auto const out = rsq_test::temp_dir("cli_inputs");
    auto const r = run_tool("--weight " + (dir / "W.npy").string() + " --inputs " + (dir / "X.npy").string() +
                            " --importance " + (dir / "importance.npy").string() + flags_for(meta) + " --out " +
                            out.string());
    INFO(r.output);
    REQUIRE(r.status == 0);
    // The proxy loss is measured with the Hessian the tool accumulated, which equals the golden H to ~1e-6.
    CHECK(json_number(r.output, "proxy_loss") == doctest::Approx(meta.proxy_loss).epsilon(1e-2));
    auto const q = rsq::io::load_npy<float, 2>(out / "Q.npy");
    auto const q_ref = rsq::io::load_npy<float, 2>(dir / "Q.npy");
    CHECK(double(xt::sum(xt::equal(q, q_ref))()) >= 0.99 * double(q.size()));
  }

  TEST_CASE("without arguments it runs the built-in demonstration") {
    auto const r = run_tool("");
    INFO(r.output);
    CHECK(r.status == 0);
    CHECK(r.output.find("GPTQ/RTN") != std::string::npos);
  }

  TEST_CASE("bad command lines and bad files: one-line errors and non-zero exit") {
    RSQ_NEED_SHARED(shared);
    auto const dir = shared / "golden" / "ist_l1_wq_4b_asym.f32";
    std::string const w = " --weight " + (dir / "W.npy").string(), h = " --hessian " + (dir / "H.npy").string();
    auto const out = rsq_test::temp_dir("cli_bad");
    std::string const o = " --out " + out.string();
    struct bad {
      std::string args;
      int status;
      std::string message;
    };
    std::vector<bad> const cases = {
        {w + h + o, 2, "--bits is required"},
        {w + h + " --bits 9" + o, 1, "bits must be between 2 and 8"},
        {w + h + " --bits 4 --groupsize 0" + o, 1, "group_size"},
        {w + h + " --bits 4 --quantizer foo" + o, 2, "--quantizer must be one of ist|rsq"},
        {w + h + " --bits 4 --precision f16" + o, 2, "--precision must be one of"},
        {w + h + " --bits four" + o, 2, "--bits must be an integer"},
        {w + h + " --bits 4 --frobnicate" + o, 2, "unknown option --frobnicate"},
        {w + " --bits 4" + o, 2, "exactly one of --hessian and --inputs"},
        {w + h + " --bits 4", 2, "--out is required"},
        {" --weight /nonexistent/W.npy" + h + " --bits 4" + o, 1, "W.npy: no such file"},
        {w + " --hessian " + (dir / "meta.json").string() + " --bits 4" + o, 1, "not a .npy file"},
        {w + " --hessian " + (dir / "X.npy").string() + " --bits 4" + o, 1, "expected a 2-d array"},
        {w + " --hessian " + (dir / "W.npy").string() + " --bits 4" + o, 1, "Hessian is not symmetric"},
    };
    for (auto const& c : cases) {
      CAPTURE(c.args);
      auto const r = run_tool(c.args);
      CHECK(r.status == c.status);
      CHECK_MESSAGE(r.output.find(c.message) != std::string::npos, r.output);
    }
  }

  TEST_CASE("wrong dtype, NaN weights and an indefinite Hessian") {
    auto const dir = rsq_test::temp_dir("cli_bad_data");
    auto w = rsq::make_matrix<float>(4, 8);
    for (std::size_t i = 0; i < w.size(); ++i) w.data()[i] = float(i % 5) - 2.f;
    auto h = rsq::make_matrix<float>(8, 8);
    for (int i = 0; i < 8; ++i) h(i, i) = -1.f;  // negative definite: no damping helps
    rsq::io::save_npy(dir / "W.npy", w);
    rsq::io::save_npy(dir / "H.npy", h);
    rsq::io::save_npy(dir / "Wi.npy", rsq::make_matrix<std::int32_t>(4, 8));
    auto wn = w;
    wn(1, 2) = NAN;
    rsq::io::save_npy(dir / "Wn.npy", wn);
    auto const out = dir / "out";
    std::string const tail = " --hessian " + (dir / "H.npy").string() + " --bits 4 --out " + out.string();

    auto const r1 = run_tool("--weight " + (dir / "Wi.npy").string() + tail);
    CHECK(r1.status == 1);
    CHECK(r1.output.find("holds int32, expected float32 or float64") != std::string::npos);
    auto const r2 = run_tool("--weight " + (dir / "Wn.npy").string() + tail);
    CHECK(r2.status == 1);
    CHECK(r2.output.find("row 1, column 2") != std::string::npos);
    auto const r3 = run_tool("--weight " + (dir / "W.npy").string() + tail);
    INFO(r3.output);
    CHECK(r3.status == 3);
    CHECK(rsq_test::json_value(r3.output, "status") == "not_positive_definite");
    CHECK(json_number(r3.output, "damp_attempts") == 0);  // a negative damping is never attempted
    CHECK(json_number(r3.output, "damp_used") == 0);
    CHECK_FALSE(std::filesystem::exists(out / "Q.npy"));  // nothing written for a failed solve
  }
  TEST_CASE("rotate and scale: --policy attncon with --attention, --rotate with --seed") {
    RSQ_NEED_SHARED(shared);
    auto const dir = shared / "golden" / "rsq_l2_wq_attncon_3b_sym_clip.f32";
    auto const meta = rsq_test::read_meta(dir);
    auto const tmp = rsq_test::temp_dir("cli_rsq");
    // Sequence 0 alone, with its attention: the importance the tool computes is the golden one.
    auto const x = rsq::io::load_npy<float, 3>(dir / "X.npy");
    xt::xtensor<float, 2> x0(xt::xtensor<float, 2>::shape_type{x.shape()[1], x.shape()[2]});
    std::copy(x.begin(), x.begin() + std::ptrdiff_t(x0.size()), x0.begin());
    rsq::io::save_npy(tmp / "X0.npy", x0);
    auto const r = run_tool("--weight " + (dir / "W.npy").string() + " --inputs " + (tmp / "X0.npy").string() +
                            " --policy attncon --attention " + (dir / "attn_probs_seq0.npy").string() +
                            flags_for(meta) + " --rotate hadamard --seed 7 --out " + (tmp / "out").string());
    INFO(r.output);
    REQUIRE(r.status == 0);
    CHECK(rsq_test::json_value(r.output, "policy") == "attncon");
    auto const imp = rsq::io::load_npy<float, 2>(tmp / "out" / "importance.npy");
    auto const ref = rsq::io::load_npy<float, 2>(dir / "importance.npy");
    for (std::size_t t = 0; t < imp.shape()[1]; ++t) CHECK(imp(0, t) == doctest::Approx(ref(0, t)).epsilon(1e-6));
    // The rotation is recorded and rebuilds; Q_unrotated = Q·Qᵀ has the same proxy loss on the original inputs.
    auto const text = rsq_test::read_text(tmp / "out" / "rotation.txt");
    auto const d = rsq::rotation::rotation_descriptor::from_string(text.substr(0, text.find('\n')));
    CHECK(d.seed == 7);
    auto const q = rsq::io::load_npy<float, 2>(tmp / "out" / "Q.npy");
    auto qu = q;
    std::visit([&](auto const& rot) { rot.apply_right_transpose(rsq::view(qu)); }, rsq::rotation::make_rotation(d));
    auto const q_unrot = rsq::io::load_npy<float, 2>(tmp / "out" / "Q_unrotated.npy");
    CHECK(xt::allclose(q_unrot, qu, 1e-5, 1e-6));
  }

  TEST_CASE("bad combinations of the rotate/scale options") {
    RSQ_NEED_SHARED(shared);
    auto const dir = shared / "golden" / "rsq_l2_wq_attncon_3b_sym_clip.f32";
    std::string const base = "--weight " + (dir / "W.npy").string() + " --bits 3 --out " +
                             rsq_test::temp_dir("cli_bad_rs").string();
    std::string const x = " --inputs " + (dir / "X.npy").string(), h = " --hessian " + (dir / "H.npy").string();
    struct bad {
      std::string args;
      int status;
      std::string message;
    };
    std::vector<bad> const cases = {
        {base + x + " --policy foo", 1, "unknown policy"},
        {base + x + " --policy attncon", 1, "neither attention probabilities nor queries"},
        {base + x + " --attention " + (dir / "attn_probs_seq0.npy").string(), 2, "--attention needs --policy"},
        {base + h + " --policy attncon", 2, "--policy needs --inputs"},
        {base + x + " --policy actnorm --rmin 2 --rmax 1", 1, "r_min"},
        {base + x + " --seed 3", 2, "--seed needs --rotate"},
        {base + x + " --rotate spin", 2, "--rotate must be one of none|hadamard|random"},
        {base + x + " --policy actnorm --importance-power 0", 1, "importance_power"},
    };
    for (auto const& c : cases) {
      CAPTURE(c.args);
      auto const r = run_tool(c.args);
      CHECK(r.status == c.status);
      CHECK_MESSAGE(r.output.find(c.message) != std::string::npos, r.output);
    }
  }

  TEST_CASE("the output folder: a non-empty one is refused before any work, --overwrite replaces it whole") {
    RSQ_NEED_SHARED(shared);
    auto const dir = shared / "golden" / "ist_l3_w1_2b_asym_mse_g16_act_static.f64";
    auto const meta = rsq_test::read_meta(dir);
    auto const out = rsq_test::temp_dir("cli_overwrite");
    std::string const args = "--weight " + (dir / "W.npy").string() + " --hessian " + (dir / "H.npy").string() +
                             flags_for(meta) + " --out " + out.string();
    std::ofstream(out / "stale.npy") << "from an earlier run";
    auto const refused = run_tool(args);
    CHECK(refused.status == 2);
    CHECK(refused.output.find("is not empty (pass --overwrite") != std::string::npos);
    CHECK(std::filesystem::exists(out / "stale.npy"));
    auto const r = run_tool(args + " --overwrite");
    INFO(r.output);
    CHECK(r.status == 0);
    CHECK(std::filesystem::exists(out / "Q.npy"));
    CHECK(!std::filesystem::exists(out / "stale.npy"));  // replaced whole, nothing stale mixed in
    auto const missing = run_tool(args.substr(0, args.find(" --out ")) + " --out " + (out / "no/such").string());
    CHECK(missing.status == 2);
    CHECK(missing.output.find("does not exist") != std::string::npos);
    // A folder where a file is expected is named, not a crash (it used to be std::bad_alloc).
    auto const folder = run_tool("--weight " + dir.string() + " --hessian " + (dir / "H.npy").string() +
                                 " --bits 4 --out " + (out / "x").string());
    CHECK(folder.status == 1);
    CHECK(folder.output.find("is a directory, not a file") != std::string::npos);
    for (char const* h : {"--help", "-h"}) {
      auto const help = run_tool(h);
      CHECK(help.status == 0);
      for (char const* opt : {"--weight", "--hessian", "--inputs", "--importance", "--policy", "--attention", "--rmin",
                              "--importance-power", "--bits", "--sym", "--groupsize", "--act-order", "--static-groups",
                              "--clip", "--quantizer", "--blocksize", "--damp", "--precision", "--rotate", "--seed",
                              "--out", "--overwrite", "Exit status"})
        CHECK_MESSAGE(help.output.find(opt) != std::string::npos, opt);
    }
  }
}
