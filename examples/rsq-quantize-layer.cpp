// SPDX-License-Identifier: MIT
// rsq-quantize-layer: quantize one linear layer with GPTQ from its weight and either its Hessian or its calibration
// inputs (optionally importance-weighted), write the result as .npy files and print one JSON line.
//
//   rsq-quantize-layer --weight W.npy (--hessian H.npy | --inputs X.npy [--importance R.npy]) --bits B [--sym]
//                      [--groupsize G] [--act-order] [--static-groups] [--clip] [--quantizer ist|rsq]
//                      [--blocksize 128] [--damp 0.01] [--precision f32|f64] --out DIR
//
// Without arguments it runs a built-in demonstration on a generated layer and prints RTN vs GPTQ proxy losses.
// Exit status: 0 on success, 1 for bad input data, 2 for a bad command line, 3 when the Hessian is not positive
// definite even after the damping escalation (the JSON line then has "status": "not_positive_definite" and nothing
// is written).

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <random>

#include <rsq/rsq.hpp>

#include "support/args.hpp"

namespace {

namespace fs = std::filesystem;
using rsq_cli::usage_error;

constexpr char usage[] =
    "usage: rsq-quantize-layer --weight W.npy (--hessian H.npy | --inputs X.npy [--importance R.npy]) --bits B\n"
    "       [--sym] [--groupsize G] [--act-order] [--static-groups] [--clip] [--quantizer ist|rsq]\n"
    "       [--blocksize 128] [--damp 0.01] [--precision f32|f64] --out DIR\n"
    "       (no arguments: built-in demonstration on a generated layer)";

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

template <class T>
int run(rsq_cli::args const& a) {
  rsq::quant::grid_spec grid;
  grid.bits = int(a.integer("bits", 0));
  if (!a.has("bits")) throw usage_error("--bits is required");
  grid.symmetric = a.flag("sym");
  grid.conv = a.choice("quantizer", {"ist", "rsq"}) == "rsq" ? rsq::quant::convention::rsq : rsq::quant::convention::ist;
  grid.clip.enabled = a.flag("clip");
  rsq::gptq::options opt;
  opt.group_size = a.integer("groupsize", -1);
  opt.act_order = a.flag("act-order");
  opt.static_groups = a.flag("static-groups");
  opt.block_size = a.integer("blocksize", 128);
  opt.damp_percent = a.number("damp", 0.01);
  grid.validate();
  opt.validate();
  fs::path const out = a.require("out");
  if (a.has("hessian") == a.has("inputs")) throw usage_error("give exactly one of --hessian and --inputs");
  if (a.has("importance") && !a.has("inputs")) throw usage_error("--importance needs --inputs");

  auto const w = load_float_npy<T, 2>(a.require("weight"));  // (rows, cols)
  auto const t0 = std::chrono::steady_clock::now();
  rsq::matrix<T> h;
  if (a.has("hessian")) {
    h = load_float_npy<T, 2>(a.get("hessian"));
  } else {
    fs::path const xp = a.get("inputs");
    rsq::hessian_accumulator<T> acc(rsq::index_t(w.shape()[1]));
    auto const rank = npy_rank(xp);
    if (rank != 2 && rank != 3)
      throw rsq::io_error("rsq: " + xp.string() + ": inputs must be (tokens, in) or (sequences, tokens, in)");
    if (rank == 3) {
      auto const x = load_float_npy<T, 3>(xp);
      if (a.has("importance")) acc.add(x, load_float_npy<T, 2>(a.get("importance")));
      else acc.add(x);
    } else {
      auto const x = load_float_npy<T, 2>(xp);
      if (a.has("importance")) acc.add(x, load_float_npy<T, 1>(a.get("importance")));
      else acc.add(x);
    }
    h = acc.hessian();
  }
  double const hessian_seconds = seconds_since(t0);

  auto const t1 = std::chrono::steady_clock::now();
  auto const res = rsq::gptq::solve(rsq::backend::cpu_eigen{}, w, h, grid, opt);
  double const solve_seconds = seconds_since(t1);

  std::string json = "{\"status\": " + rsq_cli::json_string(std::string(rsq::gptq::to_string(res.info)));
  char buf[512];
  std::snprintf(buf, sizeof buf,
                ", \"damp_used\": %.9g, \"damp_percent_used\": %.6g, \"damp_attempts\": %d, \"rows\": %zu, "
                "\"cols\": %zu, \"bits\": %d",
                res.damp_used, res.damp_percent_used, res.damp_attempts, w.shape()[0], w.shape()[1], grid.bits);
  json += buf;
  if (!res.ok()) {
    std::snprintf(buf, sizeof buf, ", \"failed_column\": %td, \"seconds\": %.6f}", res.failed_column, solve_seconds);
    std::cout << json << buf << std::endl;
    return 3;
  }
  double const loss = rsq::gptq::proxy_loss(w, res.dequantized, h);
  auto const rtn = rsq::quant::quantize_rtn(rsq::make_const_view<2>(w), grid, opt.group_size);
  double const rtn_loss = rsq::gptq::proxy_loss(w, rsq::quant::dequantize(rtn), h);

  fs::create_directories(out);
  rsq::io::save_npy(out / "Q.npy", res.dequantized);
  rsq::io::save_npy(out / "codes.npy", res.weight.codes);
  rsq::io::save_npy(out / "scales.npy", res.weight.scales);
  rsq::io::save_npy(out / "zeros.npy", res.weight.zeros);
  rsq::io::save_npy(out / "g_idx.npy", res.weight.g_idx);
  rsq::io::save_npy(out / "perm.npy", res.perm);

  std::snprintf(buf, sizeof buf,
                ", \"groups\": %td, \"proxy_loss\": %.17g, \"rtn_proxy_loss\": %.17g, \"gptq_loss\": %.9g, "
                "\"hessian_seconds\": %.6f, \"seconds\": %.6f}",
                res.weight.groups(), loss, rtn_loss, res.total_loss(), hessian_seconds, solve_seconds);
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
  try {
    if (argc == 1) return demo();
    rsq_cli::args const a(argc, argv, {"sym", "act-order", "static-groups", "clip", "help"},
                          {"weight", "hessian", "inputs", "importance", "bits", "groupsize", "quantizer", "blocksize",
                           "damp", "precision", "out"});
    if (a.flag("help")) {
      std::puts(usage);
      return 0;
    }
    return a.choice("precision", {"f32", "f64"}) == "f64" ? run<double>(a) : run<float>(a);
  } catch (usage_error const& e) {
    std::fprintf(stderr, "rsq-quantize-layer: %s\n%s\n", e.what(), usage);
    return 2;
  } catch (std::exception const& e) {
    std::fprintf(stderr, "rsq-quantize-layer: error: %s\n", e.what());
    return 1;
  }
}
