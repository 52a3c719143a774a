// SPDX-License-Identifier: MIT
// rsq-quantize-layer: quantize one linear layer with GPTQ from its weight and either its Hessian or its calibration
// inputs (optionally importance-weighted), write the result as .npy files and print one JSON line.
//
//   rsq-quantize-layer --weight W.npy (--hessian H.npy | --inputs X.npy [--importance R.npy]) --bits B [--sym]
//                      [--groupsize G] [--act-order] [--static-groups] [--clip] [--quantizer ist|rsq]
//                      [--blocksize 128] [--damp 0.01] [--precision f32|f64] --out DIR
//                      [--policy P] [--attention A.npy] [--rmin R] [--rmax R] [--importance-power p]
//                      [--rotate none|hadamard|random] [--seed S]
//
// With --rotate the layer is quantized in the rotated basis (W·Q, inputs x·Q): Q.npy is for rotated inputs,
// Q_unrotated.npy for the original ones, rotation.txt records Q. --policy computes token importances from the inputs
// (and --attention for attncon) as the one-layer RSQ pipeline does (rsq/pipeline/quantize_layer.hpp).
//
// Without arguments it runs a built-in demonstration on a generated layer and prints RTN vs GPTQ proxy losses.
// Exit status: 0 on success, 1 for bad input data, 2 for a bad command line, 3 when the Hessian is not positive
// definite even after the damping escalation (the JSON line then has "status": "not_positive_definite" and nothing
// is written).

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <variant>

#include <rsq/gptq/proxy_loss.hpp>
#include <rsq/gptq/solve.hpp>
#include <rsq/hessian/accumulator.hpp>
#include <rsq/io/npy.hpp>
#include <rsq/pipeline/quantize_layer.hpp>
#include <rsq/quant/rtn.hpp>

#include "support/args.hpp"
#include "support/main.hpp"
#include "support/output.hpp"

namespace {

namespace fs = std::filesystem;
using rsq_cli::usage_error;

constexpr char usage[] =
    "usage: rsq-quantize-layer --weight W.npy (--hessian H.npy | --inputs X.npy [--importance R.npy]) --bits B\n"
    "       [--sym] [--groupsize G] [--act-order] [--static-groups] [--clip] [--quantizer ist|rsq]\n"
    "       [--blocksize 128] [--damp 0.01] [--precision f32|f64] --out DIR\n"
    "       [--policy uniform|first_n:P1,P2/P|attncon|actnorm|actdiff|tokensim|tokenfreq] [--attention A.npy]\n"
    "       [--rmin 0.005] [--rmax 1] [--importance-power 1] [--rotate none|hadamard|random] [--seed 0]\n"
    "       [--overwrite]\n"
    "       (no arguments: built-in demonstration on a generated layer)\n"
    "\n"
    "input\n"
    "  --weight W.npy        the layer's weight (out, in), float32 or float64 (required)\n"
    "  --hessian H.npy       its Hessian (in, in), given; or\n"
    "  --inputs X.npy        its inputs (tokens, in) or (sequences, tokens, in): the Hessian is built from them\n"
    "  --importance R.npy    token importances for --inputs, the shape of X without its last axis\n"
    "  --policy P            or an importance policy: uniform, first_n:P1,P2/P, attncon (needs --attention),\n"
    "                        actnorm, actdiff, tokensim, tokenfreq (default: uniform)\n"
    "  --attention A.npy     attention probabilities (sequences, heads, L, L) for --policy attncon\n"
    "  --rmin X --rmax Y     importance range of a policy (default 0.005, 1)\n"
    "  --importance-power p  Hessian weights r^p (default 1)\n"
    "grid and solver\n"
    "  --bits B              2 to 8 (required)      --sym   symmetric grid (default asymmetric)\n"
    "  --groupsize G         columns per scale (default -1: per row)\n"
    "  --act-order           columns by decreasing diag(H)   --static-groups   groups fitted before the solve\n"
    "  --clip                MSE clip search (default off)   --quantizer ist|rsq   grid convention (default ist)\n"
    "  --blocksize N         lazy-update block (default 128) --damp P   relative damping (default 0.01)\n"
    "  --precision f32|f64   arithmetic of H and the solve (default f32)\n"
    "  --rotate R            none (default), hadamard or random: rotate W (and H) first   --seed S (default 0)\n"
    "output\n"
    "  --out DIR             Q.npy, codes.npy, scales.npy, zeros.npy, g_idx.npy, perm.npy (+ importance, rotation);\n"
    "                        must be empty or absent unless --overwrite, which replaces it whole\n"
    "  --help, -h            this text\n"
    "\n"
    "A JSON line on stdout reports the status, losses and timings. Exit status: 0 done, 1 runtime error (an\n"
    "unreadable or corrupt file), 2 bad usage (or an output folder that cannot or may not be written), 3 a Hessian\n"
    "that stays not positive definite (nothing written).\n";

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// Loads a float32 or float64 .npy of rank N as T; other dtypes are an error naming the file.
template <class T, std::size_t N>
xt::xtensor<T, N> load_float_npy(fs::path const& p) {
  auto const h = rsq::io::read_npy_header(p);
  if (h.dtype != rsq::io::npy_dtype::f32 && h.dtype != rsq::io::npy_dtype::f64)
    throw rsq::io_error("rsq: " + p.string() + ": holds " + std::string(rsq::io::npy_dtype_name(h.dtype)) +
                        ", expected float32 or float64");
  return rsq::io::load_npy<T, N>(p, rsq::io::npy_conversion::numeric);
}

/// Rank of the array in @p p (from its header).
std::size_t npy_rank(fs::path const& p) { return rsq::io::read_npy_header(p).shape.size(); }

/// The rotation asked for by --rotate/--seed, for n input features.
std::optional<rsq::rotation::rotation_descriptor> rotation_for(rsq_cli::args const& a, rsq::index_t n) {
  auto const kind = a.choice("rotate", {"none", "hadamard", "random"});
  if (kind == "none") {
    if (a.has("seed")) throw usage_error("--seed needs --rotate hadamard|random");
    return std::nullopt;
  }
  auto const seed = a.integer("seed", 0);
  if (seed < 0) throw usage_error("--seed must be non-negative");
  auto const rot = kind == "hadamard"
                       ? rsq::rotation::any_rotation(rsq::rotation::randomized_hadamard(n, std::uint64_t(seed)))
                       : rsq::rotation::any_rotation(rsq::rotation::random_orthogonal(n, std::uint64_t(seed)));
  return rsq::rotation::descriptor_of(rot);
}

template <class T>
int run(rsq_cli::args const& a) {
  rsq::pipeline::layer_options opt;
  auto& grid = opt.grid;
  if (!a.has("bits")) throw usage_error("--bits is required");
  grid.bits = int(a.integer("bits", 0));
  grid.symmetric = a.flag("sym");
  grid.conv = a.choice("quantizer", {"ist", "rsq"}) == "rsq" ? rsq::quant::convention::rsq : rsq::quant::convention::ist;
  grid.clip.enabled = a.flag("clip");
  auto& solver = opt.solver;
  solver.group_size = a.integer("groupsize", -1);
  solver.act_order = a.flag("act-order");
  solver.static_groups = a.flag("static-groups");
  solver.block_size = a.integer("blocksize", 128);
  solver.damp_percent = a.number("damp", 0.01);
  opt.weighting.importance_power = a.number("importance-power", 1.0);
  grid.validate();
  solver.validate();
  // The output folder is checked (and its staging folder made) before anything is read or computed.
  rsq_cli::output_folder outdir(a.require("out"), a.flag("overwrite"));
  fs::path const out = outdir.staging();
  if (a.has("hessian") == a.has("inputs")) throw usage_error("give exactly one of --hessian and --inputs");
  for (auto const* o : {"importance", "policy", "attention", "rmin", "rmax", "importance-power"})
    if (a.has(o) && !a.has("inputs")) throw usage_error(std::string("--") + o + " needs --inputs");
  if (a.has("importance") && a.has("policy")) throw usage_error("give --importance or --policy, not both");
  if (a.has("attention") && !a.has("policy")) throw usage_error("--attention needs --policy attncon");
  if (a.has("policy"))
    opt.policy = rsq::importance::any_policy::parse(a.get("policy"), a.number("rmin", 0.005), a.number("rmax", 1.0));

  auto const w = load_float_npy<T, 2>(a.require("weight"));  // (rows, cols)
  rsq::index_t const cols = rsq::index_t(w.shape()[1]);
  opt.rotation = rotation_for(a, cols);
  rsq::backend::cpu_eigen const cpu;

  auto const t0 = std::chrono::steady_clock::now();
  rsq::pipeline::quantized_layer<T> layer;
  if (a.has("hessian")) {
    // A given H is rotated with the weight: H ← Qᵀ·H·Q.
    rsq::matrix<T> h = load_float_npy<T, 2>(a.get("hessian"));
    rsq::matrix<T> wr = w;
    if (opt.rotation)
      std::visit(
          [&](auto const& r) {
            r.apply_right(rsq::view(wr));
            r.apply_left_transpose(rsq::view(h));
            r.apply_right(rsq::view(h));
          },
          rsq::rotation::make_rotation(*opt.rotation));
    layer.rotation = opt.rotation;
    layer.result = rsq::gptq::solve(cpu, wr, h, grid, solver);
    if (layer.result.ok()) layer.proxy_loss = rsq::gptq::proxy_loss(wr, layer.result.dequantized, h);
    layer.hessian = std::move(h);
  } else {
    fs::path const xp = a.get("inputs");
    auto const rank = npy_rank(xp);
    if (rank != 2 && rank != 3)
      throw rsq::io_error("rsq: " + xp.string() + ": inputs must be (tokens, in) or (sequences, tokens, in)");
    xt::xtensor<T, 3> x;  // (sequences, tokens, in)
    if (rank == 3) x = load_float_npy<T, 3>(xp);
    else {
      auto const x2 = load_float_npy<T, 2>(xp);
      x = xt::xtensor<T, 3>(typename xt::xtensor<T, 3>::shape_type{1, x2.shape()[0], x2.shape()[1]});
      std::copy(x2.begin(), x2.end(), x.begin());
    }
    rsq::pipeline::layer_calibration<T> calib;
    calib.inputs = rsq::batch_view<const T>(x);
    xt::xtensor<float, 2> r;
    if (a.has("importance")) {
      fs::path const rp = a.get("importance");
      if (npy_rank(rp) == 1) {
        auto const r1 = load_float_npy<float, 1>(rp);
        r = xt::xtensor<float, 2>(xt::xtensor<float, 2>::shape_type{1, r1.size()});
        std::copy(r1.begin(), r1.end(), r.begin());
      } else {
        r = load_float_npy<float, 2>(rp);
      }
      calib.importance = rsq::matrix_view<const float>(r);
    }
    xt::xtensor<T, 4> attn;
    if (a.has("attention")) {
      fs::path const ap = a.get("attention");
      auto const arank = npy_rank(ap);
      if (arank == 3) {  // (heads, L, L) of a single sequence
        auto const a3 = load_float_npy<T, 3>(ap);
        attn = xt::xtensor<T, 4>(typename xt::xtensor<T, 4>::shape_type{1, a3.shape()[0], a3.shape()[1],
                                                                         a3.shape()[2]});
        std::copy(a3.begin(), a3.end(), attn.begin());
      } else if (arank == 4) {
        attn = load_float_npy<T, 4>(ap);
      } else {
        throw rsq::io_error("rsq: " + ap.string() + ": attention must be (heads, L, L) or (sequences, heads, L, L)");
      }
      calib.attention = rsq::tensor_view<const T, 4>(attn);
    }
    layer = rsq::pipeline::quantize_layer(cpu, w, calib, opt);
  }
  double const seconds = seconds_since(t0);
  auto const& res = layer.result;

  std::string json = "{\"status\": " + rsq_cli::json_string(std::string(rsq::gptq::to_string(res.info)));
  char buf[512];
  std::snprintf(buf, sizeof buf,
                ", \"damp_used\": %.9g, \"damp_percent_used\": %.6g, \"damp_attempts\": %d, \"rows\": %zu, "
                "\"cols\": %zu, \"bits\": %d",
                res.damp_used, res.damp_percent_used, res.damp_attempts, w.shape()[0], w.shape()[1], grid.bits);
  json += buf;
  json += ", \"policy\": " + rsq_cli::json_string(opt.policy ? std::string(opt.policy->name())
                                                             : (a.has("importance") ? "given" : "uniform"));
  json += ", \"rotation\": " + rsq_cli::json_string(layer.rotation ? layer.rotation->to_string() : "none");
  if (!res.ok()) {
    std::snprintf(buf, sizeof buf, ", \"failed_column\": %td, \"seconds\": %.6f}", res.failed_column, seconds);
    std::cout << json << buf << std::endl;
    return 3;
  }
  // RTN in the same basis, on the same Hessian, for comparison.
  rsq::matrix<T> wr = w;
  if (layer.rotation)
    std::visit([&](auto const& r) { r.apply_right(rsq::view(wr)); }, rsq::rotation::make_rotation(*layer.rotation));
  auto const rtn = rsq::quant::quantize_rtn(rsq::make_const_view<2>(wr), grid, solver.group_size);
  double const rtn_loss = rsq::gptq::proxy_loss(wr, rsq::quant::dequantize(rtn), layer.hessian);

  rsq::io::save_npy(out / "Q.npy", res.dequantized);
  rsq::io::save_npy(out / "codes.npy", res.weight.codes);
  rsq::io::save_npy(out / "scales.npy", res.weight.scales);
  rsq::io::save_npy(out / "zeros.npy", res.weight.zeros);
  rsq::io::save_npy(out / "g_idx.npy", res.weight.g_idx);
  rsq::io::save_npy(out / "perm.npy", res.perm);
  if (layer.importance.size() > 0) rsq::io::save_npy(out / "importance.npy", layer.importance);
  if (layer.rotation) {
    // Q.npy is in the rotated basis (for inputs x·Q); Q_unrotated.npy = Q̂·Qᵀ is for the original inputs.
    rsq::io::save_npy(out / "Q_unrotated.npy", layer.dequantized_in_original_basis());
    std::ofstream(out / "rotation.txt") << layer.rotation->to_string() << "\n";
  }

  std::snprintf(buf, sizeof buf,
                ", \"groups\": %td, \"proxy_loss\": %.17g, \"rtn_proxy_loss\": %.17g, \"gptq_loss\": %.9g, "
                "\"seconds\": %.6f}",
                res.weight.groups(), layer.proxy_loss, rtn_loss, res.total_loss(), seconds);
  outdir.commit();
  std::cout << json << buf << std::endl;
  return 0;
}

/// The built-in default: a generated layer with correlated, outlier-heavy inputs, RTN vs GPTQ at 2–4 bits.
int demo() {
  constexpr rsq::index_t rows = 256, cols = 512, sequences = 16, tokens = 256;
  std::mt19937_64 rng(0);
  std::normal_distribution<float> nd;
  auto w = rsq::make_matrix<float>(rows, cols);
  for (auto& v : w) v = nd(rng) * 0.02f;
  xt::xtensor<float, 3> x(xt::xtensor<float, 3>::shape_type{sequences, tokens, cols});
  for (rsq::index_t s = 0; s < sequences; ++s)
    for (rsq::index_t t = 0; t < tokens; ++t) {
      float prev = 0;
      for (rsq::index_t c = 0; c < cols; ++c) {
        float const v = 0.6f * prev + nd(rng) * (c % 64 == 0 ? 8.f : 1.f);  // correlated features, a few outliers
        x(s, t, c) = prev = v;
      }
    }
  rsq::hessian_accumulator<float> acc(cols);
  acc.add(x);
  auto const h = acc.hessian();
  std::printf("rsq-quantize-layer demo: generated layer %td x %td, Hessian from %td x %td tokens\n", rows, cols,
              sequences, tokens);
  std::printf("%-6s %-10s %16s %16s %10s\n", "bits", "groups", "RTN proxy loss", "GPTQ proxy loss", "GPTQ/RTN");
  for (int bits : {4, 3, 2})
    for (rsq::index_t g : {rsq::index_t(-1), rsq::index_t(128)}) {
      rsq::quant::grid_spec const grid{.bits = bits, .symmetric = true, .conv = rsq::quant::convention::rsq};
      auto const res = rsq::gptq::solve(rsq::backend::cpu_eigen{}, w, h, grid, {.group_size = g});
      auto const rtn = rsq::quant::quantize_rtn(rsq::make_const_view<2>(w), grid, g);
      double const lg = rsq::gptq::proxy_loss(w, res.dequantized, h);
      double const lr = rsq::gptq::proxy_loss(w, rsq::quant::dequantize(rtn), h);
      std::printf("%-6d %-10s %16.6g %16.6g %10.3f\n", bits, g < 0 ? "per-row" : "128", lr, lg, lg / lr);
    }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return rsq_cli::exit_status("rsq-quantize-layer", [&] {
    if (argc == 1) return demo();
    for (int i = 1; i < argc; ++i)
      if (std::string_view(argv[i]) == "-h") {
        std::fputs(usage, stdout);
        return 0;
      }
    rsq_cli::args const a(argc, argv, {"sym", "act-order", "static-groups", "clip", "overwrite", "help"},
                          {"weight", "hessian", "inputs", "importance", "bits", "groupsize", "quantizer", "blocksize",
                           "damp", "precision", "out", "policy", "attention", "rmin", "rmax", "importance-power",
                           "rotate", "seed"});
    if (a.flag("help")) {
      std::fputs(usage, stdout);
      return 0;
    }
    return a.choice("precision", {"f32", "f64"}) == "f64" ? run<double>(a) : run<float>(a);
  }, " (see --help)");
}
