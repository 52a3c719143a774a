// SPDX-License-Identifier: MIT
// rsq-llama2c: RSQ end to end on a llama2c model (stories260K): rotate, calibrate, quantize layer by layer with RTN,
// GPTQ, QuaRot or RSQ, evaluate the perplexity, and optionally write the quantized model.
//
//   rsq-llama2c [--model M.bin] [--tokenizer T.bin] [--text stories.txt]
//               (--method rtn|gptq|quarot|rsq|spinquant | --compare)
//               [--bits 3] [--groupsize -1] [--policy attncon] [--r-min 0.005] [--r-max 1] [--importance-power 1]
//               [--calib-stories 0:500] [--eval-stories 500:1000] [--seqlen 256] [--nsamples 128] [--expand 1]
//               [--seed 0] [--rotation hadamard|random|fused|learned] [--spin-steps 100] [--spin-lr 1.5]
//               [--spin-sequences 8] [--spin-momentum 0] [--save-rotation P] [--load-rotation P] [--center-embeddings] [--quantizer rsq|ist] [--asym]
//               [--no-clip] [--damp 0.01] [--act-order] [--f64] [--rotate on|off] [--out model.bin] [--packed DIR]
//               [--format llama2c|gguf] [--gguf-type q4_0|q4_1|q8_0] [--imatrix FILE] [--backend cpu|cuda] [--bf16]
//               [--importance-choice off|choose|blend] [--held-out 0.25] [--quiet]
//
// A "story" is a paragraph of the text (blank-line separated; story 0 of tinystories_val.txt is 85 tokens with BOS).
// Defaults for --model/--tokenizer/--text: $RSQ_SHARED_DIR/data/..., else ../shared or ../../shared relative to the
// current directory. Exit status: 0 on success, 1 for unreadable or bad files and data, 2 for a bad command line,
// 3 when a Hessian is not positive definite even after the damping escalation.

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <rsq/model/calibration.hpp>
#include <rsq/model/export.hpp>
#include <rsq/model/gguf.hpp>
#include <rsq/model/llama2c.hpp>
#include <rsq/model/quantize.hpp>
#include <rsq/model/tokenizer.hpp>

#include "support/args.hpp"
#include "support/gguf_output.hpp"
#include "support/importance_choice.hpp"
#include "support/importance_stats.hpp"
#include "support/learned_rotation.hpp"
#include "support/main.hpp"
#include "support/output.hpp"

namespace {

namespace fs = std::filesystem;
using rsq_cli::usage_error;
using namespace rsq::model;

constexpr char usage_head[] =
    "usage: rsq-llama2c [options] (--method rtn|gptq|quarot|rsq|spinquant | --compare)\n"
    "Quantizes a llama2c model layer by layer (rotate, scale, quantize) and reports its perplexity.\n"
    "\n"
    "What to run:\n"
    "  --method M            rtn, gptq, quarot (rotation + GPTQ), rsq (rotation + AttnCon-scaled GPTQ) or\n"
    "                        spinquant (learned rotation + GPTQ: quarot with --rotation learned)\n"
    "  --compare             run fp32 and every method, print one table (no --out, --packed, --rotate)\n"
    "  --backend cpu|cuda    where every step runs (default cpu; cuda needs a build with -DRSQ_WITH_CUDA=ON)\n"
    "  --bf16                bf16 inputs for the calibration products and the Hessians (GPU opt-in; the CPU\n"
    "                        computes fp32)\n"
    "Inputs (defaults: stories260K from $RSQ_SHARED_DIR, ../shared or ../../shared):\n"
    "  --model M.bin  --tokenizer T.bin  --text stories.txt\n"
    "  --calib-stories A:B   calibration paragraphs (default 0:500)\n"
    "  --eval-stories A:B    evaluation paragraphs (default 500:1000)\n"
    "  --seqlen N            tokens per window (default 256)     --nsamples N   calibration windows (default 128)\n"
    "  --expand K            dataset expansion by K cyclic shifts (default 1, off)\n"
    "  --seed S              seed of the windows and of the rotation (default 0)\n"
    "Quantizer and solver:\n"
    "  --bits B (2-8, default 3)  --groupsize G (-1: per row)  --asym  --no-clip (MSE clip search off)\n"
    "  --quantizer rsq|ist   grid convention (default rsq)        --damp P   relative damping (default 0.01)\n"
    "  --act-order           quantize columns by decreasing diag(H)  --f64   Hessians and solves in float64\n"
    "Rotation and importance:\n"
    "  --rotation learned    learn R1 (residual) and R2 (per-head V/O) by Cayley SGD against the fake-quantized\n"
    "                        loss (SpinQuant), starting from the Hadamard of --seed; with quarot or rsq. With\n"
    "                        --format gguf it is learned and applied without online Hadamards (R1 and R2 fold into\n"
    "                        the weights)\n";

constexpr char usage_tail[] =
    "  --rotation hadamard|random|fused   residual rotation (default hadamard, with online Hadamards before wo\n"
    "                        and w2; fused: only rotations that fold into the weights, a plain model)\n"
    "  --center-embeddings   (not function-preserving)\n"
    "  --rotate on|off       override the method's choice of rotating\n"
    "  --policy P            token importance: uniform, first_n:P/Q, attncon, actnorm, actdiff, tokensim, tokenfreq\n"
    "  --r-min X --r-max Y   importance range (default 0.005, 1)    --importance-power p  (default 1)\n"
    "  --importance-choice C off (default), choose or blend: hold out the last calibration windows and give each\n"
    "                        linear the Hessian alpha*H_policy + (1-alpha)*H_uniform of the other windows whose\n"
    "                        solution has the smallest output error on the held-out ones; choose tries alpha 0 and\n"
    "                        1, blend 0, .25, .5, .75, 1 (rsq, or gptq/quarot with --policy; --compare: the rsq row)\n"
    "  --held-out F          the fraction of the calibration windows --importance-choice holds out (default 0.25)\n"
    "Outputs:\n"
    "  --out FILE            the quantized model: a llama2c checkpoint (online transforms folded in), or with\n"
    "                        --format gguf a GGUF file that llama.cpp runs\n"
    "  --format llama2c|gguf what --out writes (default llama2c)\n"
    "  --gguf-type T         gguf: q4_0, q4_1 or q8_0 (default q4_0): the solver works on exactly these llama.cpp\n"
    "                        blocks (fp16 scales, groups of --groupsize, default 32, a multiple of 32); linears whose\n"
    "                        input size is not a multiple of 32 stay F16 (listed); quarot/rsq need --rotation fused\n"
    "                        or learned. With --method rtn: llama.cpp's own round to nearest (what llama-quantize\n"
    "                        does), or f16 / f32 for an unquantized conversion. The perplexity reported is the\n"
    "                        written file's\n"
    "  --imatrix FILE        gptq/quarot/rsq: also write the importance matrix of the calibration (per linear the\n"
    "                        importance-weighted sum of squares of its inputs, what the Hessian diagonal holds) for\n"
    "                        `llama-quantize --imatrix`: GGUF, or llama.cpp's legacy format for a name ending .dat\n"
    "  --packed DIR          GPTQ int32 tensors (.npy) and a manifest\n"
    "  --overwrite           replace an existing --out file, --imatrix file or --packed folder (whole)\n"
    "  --quiet               no progress on stderr   --help, -h   this text\n"
    "\n"
    "exit status: 0 done, 1 runtime error (an unreadable or corrupt file, a failed write, a CUDA failure), 2 bad\n"
    "usage (or an output that cannot or may not be written), 3 a Hessian that stays not positive definite even\n"
    "after the damping escalation (nothing written)";

/// The --help text: the learned-rotation options are described as in every tool (support/learned_rotation.hpp).
std::string usage() { return std::string(usage_head) + rsq_cli::learned_rotation_help + usage_tail; }

constexpr char where_to_get[] =
    "stories260K not found: pass --model, --tokenizer and --text, or set RSQ_SHARED_DIR to a folder with "
    "data/models/stories260K.bin, data/models/tok512.bin and data/text/tinystories_val.txt (the model and tokenizer "
    "are on Hugging Face: karpathy/tinyllamas, stories260K/stories260K.bin and stories260K/tok512.bin)";

/// The shared data folder: $RSQ_SHARED_DIR, else ../shared or ../../shared from the current directory.
std::optional<fs::path> shared_dir() {
  std::vector<fs::path> candidates;
  if (char const* env = std::getenv("RSQ_SHARED_DIR")) candidates.emplace_back(env);
  candidates.emplace_back("../shared");
  candidates.emplace_back("../../shared");
  for (auto const& c : candidates)
    if (fs::is_regular_file(c / "data/models/stories260K.bin")) return c;
  return std::nullopt;
}

fs::path data_path(rsq_cli::args const& a, std::string const& option, char const* relative) {
  if (a.has(option)) return a.get(option);
  auto const dir = shared_dir();
  if (!dir) throw usage_error(where_to_get);
  return *dir / relative;
}

struct run_config {
  quantize_options opt;
  bool cuda = false;  ///< --backend cuda
  std::optional<rsq::pack::ggml_type> gguf;  ///< --format gguf: the type of the linears
  story_range calib, eval;
  rsq::index_t seqlen = 256, nsamples = 128;
  std::uint64_t seed = 0;
  bool quiet = false;
  bool policy_given = false;  ///< --policy: also applies to a single gptq/quarot run (importance-scaled ablation)
  rsq_cli::learned_rotation_config learned;  ///< --rotation learned (or --method spinquant): learn or load R1/R2 first
};

/// Parses everything but the files; library argument errors become usage errors (exit 2).
run_config parse_config(rsq_cli::args const& a) {
  run_config rc;
  auto& o = rc.opt;
  long const bits = a.integer("bits", 3);
  if (bits < 2 || bits > 8) throw usage_error("--bits must be between 2 and 8, got " + std::to_string(bits));
  o.grid = rsq_script_grid(int(bits));
  o.grid.symmetric = !a.flag("asym");
  o.grid.conv = a.choice("quantizer", {"rsq", "ist"}) == "rsq" ? rsq::quant::convention::rsq
                                                                : rsq::quant::convention::ist;
  o.grid.clip.enabled = !a.flag("no-clip");
  long const g = a.integer("groupsize", -1);
  if (g != -1 && g < 1) throw usage_error("--groupsize must be -1 (per row) or positive, got " + std::to_string(g));
  o.solver.group_size = g;
  o.solver.damp_percent = a.number("damp", 0.01);
  if (!(o.solver.damp_percent >= 0) || !std::isfinite(o.solver.damp_percent))
    throw usage_error("--damp must be a finite number >= 0");
  o.solver.act_order = a.flag("act-order");
  o.double_precision = a.flag("f64");
  rc.cuda = a.choice("backend", {"cpu", "cuda"}) == "cuda";
#if !(defined(RSQ_WITH_CUDA) && RSQ_WITH_CUDA)
  if (rc.cuda) throw usage_error("--backend cuda: this build has no CUDA backend (configure with -DRSQ_WITH_CUDA=ON)");
#endif
  if (a.flag("bf16")) {
    if (o.double_precision) throw usage_error("--bf16 and --f64 exclude each other");
    o.forward.precision = rsq::matmul_precision::bf16;
    o.hessian.precision = rsq::hessian::precision::bf16;
  }
  o.importance_power = a.number("importance-power", 1.0);
  if (!(o.importance_power > 0) || !std::isfinite(o.importance_power))
    throw usage_error("--importance-power must be positive");
  long const expand = a.integer("expand", 1);
  if (expand < 1) throw usage_error("--expand must be at least 1, got " + std::to_string(expand));
  o.expand_factor = expand;
  rc.seqlen = a.integer("seqlen", 256);
  if (rc.seqlen < 2) throw usage_error("--seqlen must be at least 2, got " + std::to_string(rc.seqlen));
  if (expand > rc.seqlen) throw usage_error("--expand must not exceed --seqlen");
  rc.nsamples = a.integer("nsamples", 128);
  if (rc.nsamples < 1) throw usage_error("--nsamples must be at least 1, got " + std::to_string(rc.nsamples));
  long const seed = a.integer("seed", 0);
  if (seed < 0) throw usage_error("--seed must be >= 0, got " + std::to_string(seed));
  rc.seed = std::uint64_t(seed);
  o.rotation.seed = rc.seed;
  auto const rotation = a.choice("rotation", {"hadamard", "random", "fused", "learned"});
  bool const learned = rotation == "learned" || a.get("method") == "spinquant";
  o.rotation.kind = rotation == "random" ? residual_rotation::random_orthogonal : residual_rotation::randomized_hadamard;
  o.rotation.online_hadamards = rotation != "fused";
  o.rotation.center_embeddings = a.flag("center-embeddings");
  if (a.has("rotate")) o.rotate = a.choice("rotate", {"on", "off"}) == "on";
  rc.quiet = a.flag("quiet");
  if (a.choice("format", {"llama2c", "gguf"}) == "gguf") {
    if (!a.has("out")) throw usage_error("--format gguf writes --out: give the GGUF file's name");
    auto const t = rsq::pack::parse_ggml_type(a.get("gguf-type", "q4_0"));
    if (!t || (*t != rsq::pack::ggml_type::q4_0 && *t != rsq::pack::ggml_type::q4_1 && *t != rsq::pack::ggml_type::q8_0 &&
               *t != rsq::pack::ggml_type::f16 && *t != rsq::pack::ggml_type::f32))
      throw usage_error("--gguf-type must be q4_0, q4_1 or q8_0 (or f16 / f32 with --method rtn), got '" +
                        a.get("gguf-type") + "'");
    for (char const* opt : {"bits", "asym", "quantizer"})
      if (a.has(opt)) throw usage_error(std::string("--") + opt + " does not apply to --format gguf: --gguf-type sets the grid");
    rc.gguf = *t;
    if (*t != rsq::pack::ggml_type::f16 && *t != rsq::pack::ggml_type::f32) {
      bool const clip = o.grid.clip.enabled;
      o.grid = rsq::pack::block_grid(*t);
      o.grid.clip.enabled = clip;
    }
    if (!a.has("groupsize")) o.solver.group_size = 32;
    if (o.solver.group_size < 0 || o.solver.group_size % 32 != 0)
      throw usage_error("--groupsize must be a multiple of 32 for --format gguf (a block is 32 columns), got " +
                        std::to_string(o.solver.group_size));
    if (o.solver.act_order) o.solver.static_groups = true;  // blocks are consecutive columns
  } else if (a.has("gguf-type")) {
    throw usage_error("--gguf-type needs --format gguf");
  }
  // GGUF holds only rotations folded into the weights: a learned R1/R2 is learned and applied without the online
  // Hadamards (as --rotation fused). The fake quantizer of the learning is the final grid and group size.
  if (learned && rc.gguf) o.rotation.online_hadamards = false;
  rc.learned =
      rsq_cli::parse_learned_rotation(a, learned, o.grid, o.solver.group_size, o.rotation, a.flag("overwrite"));
  try {
    rc.calib = parse_story_range(a.get("calib-stories", "0:500"), "--calib-stories");
    rc.eval = parse_story_range(a.get("eval-stories", "500:1000"), "--eval-stories");
    double const r_min = a.number("r-min", 0.005), r_max = a.number("r-max", 1.0);
    rc.policy_given = a.has("policy");
    if (a.has("policy") || a.has("r-min") || a.has("r-max"))
      o.policy = rsq::importance::any_policy::parse(a.get("policy", "attncon"), r_min, r_max);
  } catch (rsq::invalid_argument const& e) {
    std::string msg = e.what();
    if (msg.rfind("rsq: ", 0) == 0) msg = msg.substr(5);
    throw usage_error(msg);
  }
  if (a.has("importance-choice")) {
    try {
      o.choice = parse_importance_choice(a.get("importance-choice"));
    } catch (rsq::invalid_argument const&) {
      throw usage_error("--importance-choice must be off, choose or blend, got '" + a.get("importance-choice") + "'");
    }
  }
  if (o.choice != importance_choice::off) {
    if (o.policy && std::holds_alternative<rsq::importance::uniform>(o.policy->get()))
      throw usage_error("--importance-choice chooses between uniform token weights and a policy's: --policy uniform "
                        "leaves nothing to choose");
    o.held_out = a.number("held-out", 0.25);
    if (!(o.held_out > 0 && o.held_out < 1))
      throw usage_error("--held-out must be a fraction between 0 and 1, got " + a.get("held-out"));
    auto const held = std::lround(o.held_out * double(rc.nsamples));
    if (held < 1 || held >= rc.nsamples)
      throw usage_error("--held-out " + a.get("held-out", "0.25") + " of --nsamples " + std::to_string(rc.nsamples) +
                        " holds out " + std::to_string(held) + " windows: at least one must be held out and one must "
                        "remain");
  } else if (a.has("held-out")) {
    throw usage_error("--held-out needs --importance-choice choose or blend");
  }
  return rc;
}

void print_layer(quant_method method, layer_report const& r, double ess) {
  std::fprintf(stderr, "rsq-llama2c: %-6s layer %d/%d", std::string(to_string(method)).c_str(), r.layer + 1,
               r.n_layers);
  if (ess > 0) std::fprintf(stderr, "  eff. tokens %.1f", ess);
  for (auto const& l : r.linears) {
    if (l.kept) {
      std::fprintf(stderr, "  %s kept F16", std::string(name(l.linear)).c_str());
      continue;
    }
    std::fprintf(stderr, "  %s %.3g", std::string(name(l.linear)).c_str(), l.loss);
    if (l.importance_alpha) std::fprintf(stderr, " (alpha %g)", *l.importance_alpha);
    if (l.info != rsq::gptq::status::ok) std::fprintf(stderr, " NOT POSITIVE DEFINITE");
    else if (l.damp_attempts > 1) std::fprintf(stderr, " (damp x%d)", l.damp_attempts);
  }
  std::fprintf(stderr, "  %.2f s\n", r.seconds);
}

struct method_outcome {
  quantized_model q;
  loss_result eval;
};

/// Quantizes with @p method on backend @p be; returns nothing (after printing) when a Hessian stays not positive
/// definite. The policy goes to rsq, and to a single gptq/quarot run only when --policy was given (in a comparison
/// the baselines keep uniform tokens).
template <class B>
std::optional<method_outcome> run_method(B const& be, llama_model const& fp, quant_method method, run_config const& rc,
                                         bool compare, rsq::matrix<std::int32_t> const& calib,
                                         rsq::matrix<std::int32_t> const& eval, imatrix_from_hessians* imatrix = nullptr) {
  auto opt = rc.opt;
  opt.method = method;
  if (method == quant_method::rtn) {
    opt.policy.reset();
    opt.expand_factor = 1;
  } else if (method != quant_method::rsq && (compare || !rc.policy_given)) {
    opt.policy.reset();
  }
  if (method != quant_method::rsq && (compare || !rc.policy_given)) opt.choice = importance_choice::off;
  quantize_observer obs;
  double ess = 0;
  if (!rc.quiet) {
    obs.on_importances = [&](int, rsq::matrix_view<const float> r) {
      ess = rsq_cli::importance_stats_of(r, opt.importance_power).effective_tokens;
    };
    obs.on_layer = [&](layer_report const& r) { print_layer(method, r, ess); };
  }
  if (imatrix) obs.on_hessian = imatrix->on_hessian();
  method_outcome out{quantize_model(be, fp, rsq::view(calib), opt, obs), {}};
  if (!out.q.ok()) {
    if (out.q.info == rsq::gptq::status::no_live_columns)
      std::fprintf(stderr, "rsq-llama2c: error: %s: every input of layer %d %s was zero (no_live_columns); nothing "
                   "written\n", std::string(to_string(method)).c_str(), out.q.failed_layer,
                   std::string(name(out.q.failed_linear)).c_str());
    else
      std::fprintf(stderr,
                   "rsq-llama2c: error: %s: the Hessian of layer %d %s is not positive definite even with %d x %.3g "
                   "damping; nothing written\n",
                   std::string(to_string(method)).c_str(), out.q.failed_layer,
                   std::string(name(out.q.failed_linear)).c_str(), opt.solver.max_damp_attempts,
                   opt.solver.damp_percent);
    return std::nullopt;
  }
  if (!rc.quiet) rsq_cli::print_rotation_notes("rsq-llama2c", out.q.rotation);
  if (auto const s = rsq_cli::choice_summary(out.q); !s.empty())
    std::fprintf(compare ? stderr : stdout, "%s%s\n", compare ? "rsq-llama2c: " : "", s.c_str());
  out.eval = evaluate(be, out.q.model, rsq::view(eval), 16, opt.forward);
  return out;
}

/// --method rtn --format gguf: the float model converted by llama.cpp's own rules (round to nearest for the block
/// types), then the written file evaluated.
template <class B>
int write_llama_cpp_rtn(B const& be, rsq_cli::args const& a, run_config const& rc, llama_model const& fp,
                        tokenizer const& tok, rsq::matrix<std::int32_t> const& eval) {
  auto const t0 = std::chrono::steady_clock::now();
  auto const s = save_gguf(a.get("out"), fp, to_gguf_vocab(tok),
                           {.name = fs::path(a.get("out")).stem().string(), .float_type = rsq::pack::ggml_type::f16,
                            .linear_type = *rc.gguf});
  auto const seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto const ev = evaluate(be, load_gguf_model(a.get("out")), rsq::view(eval), 16, rc.opt.forward);
  std::printf("method rtn (llama.cpp %s) seed %llu: perplexity %.4f (loss %.5f over %td tokens, %.1f s)\n",
              std::string(rsq::pack::traits(*rc.gguf).name).c_str(), static_cast<unsigned long long>(rc.seed),
              ev.perplexity, ev.mean, ev.count, seconds);
  rsq_cli::print_gguf_summary(stderr, "rsq-llama2c: ", s);
  return 0;
}

template <class B>
int run(B const& be, rsq_cli::args const& a, run_config const& rc) {
  bool const compare = a.flag("compare");
  if (compare == a.has("method")) throw usage_error("give exactly one of --method and --compare");
  quant_method method = quant_method::rsq;
  bool const spinquant = !compare && a.get("method") == "spinquant";
  if (compare && rc.learned.enabled) throw usage_error("--rotation learned needs --method (quarot, rsq or spinquant)");
  if (!compare) {
    try {
      method = spinquant ? quant_method::quarot : parse_quant_method(a.get("method"));
    } catch (rsq::invalid_argument const&) {
      throw usage_error("--method must be one of rtn|gptq|quarot|rsq|spinquant, got '" + a.get("method") + "'");
    }
    if (rc.learned.enabled && !rc.opt.rotate.value_or(rotates(method)))
      throw usage_error("--rotation learned needs a rotating method: quarot, rsq or spinquant");
    if (method == quant_method::rtn && (a.has("policy") || a.has("expand") || a.has("r-min") || a.has("r-max") ||
                                        a.has("importance-choice")))
      throw usage_error("--method rtn uses no calibration: --policy, --r-min, --r-max, --expand and "
                        "--importance-choice do not apply");
    if ((method == quant_method::gptq || method == quant_method::quarot) && !a.has("policy") &&
        rc.opt.choice != importance_choice::off)
      throw usage_error("--importance-choice chooses between uniform token weights and a policy's: use --method rsq "
                        "or give --policy");
    if ((method == quant_method::gptq || method == quant_method::quarot) && !a.has("policy") &&
        (a.has("r-min") || a.has("r-max")))
      throw usage_error("--r-min and --r-max set the range of a token-importance policy: use --method rsq or --policy");
  }
  if (compare && (a.has("out") || a.has("packed") || a.has("rotate") || a.has("imatrix") || a.has("format")))
    throw usage_error("--out, --packed, --rotate, --imatrix and --format need --method, not --compare");
  if (a.has("imatrix") && method == quant_method::rtn)
    throw usage_error("--imatrix needs calibration: use --method gptq, quarot or rsq");
  if (a.has("imatrix") && rc.opt.choice != importance_choice::off)
    throw usage_error("--imatrix does not go with --importance-choice (the held-out windows are in no Hessian)");
  if (rc.gguf) {
    bool const float_type = *rc.gguf == rsq::pack::ggml_type::f16 || *rc.gguf == rsq::pack::ggml_type::f32;
    if (float_type && method != quant_method::rtn)
      throw usage_error("--gguf-type f16 and f32 are conversions without quantization: use them with --method rtn");
    if (a.has("packed")) throw usage_error("--packed writes GPTQ tensors: it does not go with --format gguf");
    if (method == quant_method::rtn && a.has("rotate"))
      throw usage_error("--method rtn with --format gguf is llama.cpp's own round to nearest, without rotation");
    if (rc.opt.rotate.value_or(rotates(method)) && rc.opt.rotation.online_hadamards)
      throw usage_error("--format gguf: " + std::string(to_string(method)) + " needs online Hadamards, which "
                        "llama.cpp does not apply; use --rotation fused or learned");
  }
  if (a.has("imatrix")) rsq_cli::check_output_file(a.get("imatrix"), "--imatrix", a.flag("overwrite"));
  // Outputs are checked before any work; --packed is written into a staging folder and moved into place.
  if (a.has("out")) rsq_cli::check_output_file(a.get("out"), "--out", a.flag("overwrite"));
  std::optional<rsq_cli::output_folder> packed;
  if (a.has("packed")) packed.emplace(a.get("packed"), a.flag("overwrite"));

  fs::path const model_path = data_path(a, "model", "data/models/stories260K.bin");
  fs::path const tok_path = data_path(a, "tokenizer", "data/models/tok512.bin");
  fs::path const text_path = data_path(a, "text", "data/text/tinystories_val.txt");
  auto const fp = load_llama2c_checkpoint(model_path);
  auto const tok = load_tokenizer(tok_path, {.vocab_size = fp.config.vocab_size, .name = {}});
  auto const stories = load_stories(text_path);
  if (rc.seqlen > fp.config.seq_len)
    throw usage_error("--seqlen " + std::to_string(rc.seqlen) + " exceeds the model's seq_len " +
                      std::to_string(fp.config.seq_len));
  auto const n = rsq::index_t(stories.size());
  auto check_range = [&](story_range const& r, char const* opt) {
    if (r.end > n)
      throw usage_error(std::string(opt) + " " + std::to_string(r.begin) + ":" + std::to_string(r.end) +
                        " goes past the " + std::to_string(n) + " stories of " + text_path.string());
  };
  check_range(rc.calib, "--calib-stories");
  check_range(rc.eval, "--eval-stories");
  if (rc.calib.overlaps(rc.eval) && !rc.quiet)
    std::fprintf(stderr, "rsq-llama2c: warning: the calibration and evaluation stories overlap\n");

  auto const calib_stream = story_tokens(tok, stories, rc.calib);
  auto const eval_stream = story_tokens(tok, stories, rc.eval);
  auto const eval = consecutive_windows(eval_stream, rc.seqlen);  // (windows, seqlen)
  rsq::matrix<std::int32_t> calib;
  if (compare || method != quant_method::rtn) calib = sample_windows(calib_stream, rc.seqlen, rc.nsamples, rc.seed);
  if (!rc.quiet)
    std::fprintf(stderr,
                 "rsq-llama2c: calibration %zu tokens (stories %td:%td), %td windows x %td; evaluation %td windows "
                 "x %td (stories %td:%td)\n",
                 calib_stream.size(), rc.calib.begin, rc.calib.end, rc.nsamples * rc.opt.expand_factor, rc.seqlen,
                 rsq::index_t(eval.shape()[0]), rc.seqlen, rc.eval.begin, rc.eval.end);

  std::string const group = rc.opt.solver.group_size == -1 ? "row" : std::to_string(rc.opt.solver.group_size);
  if (rc.gguf && method == quant_method::rtn) return write_llama_cpp_rtn(be, a, rc, fp, tok, eval);
  if (!compare) {
    // --rotation learned / --method spinquant: R1 and R2 learned on the calibration windows (or loaded) first; the
    // method then runs on that rotation and every output holds it fused into the weights.
    run_config with = rc;
    double learn_seconds = 0;
    if (rc.learned.enabled) {
      auto const learned =
          rsq_cli::learn_or_load_rotation(be, "rsq-llama2c", rc.learned, fp, rsq::view(std::as_const(calib)), rc.quiet);
      with.opt.rotation.learned = learned.rotation;
      learn_seconds = learned.seconds;
    }
    std::optional<imatrix_from_hessians> imatrix;
    if (a.has("imatrix"))
      imatrix.emplace(rsq::index_t(calib.shape()[0]) * rc.opt.expand_factor, rsq::index_t(calib.shape()[1]));
    auto out = run_method(be, fp, method, with, false, calib, eval, imatrix ? &*imatrix : nullptr);
    if (!out) return 3;
    std::optional<gguf_summary> written;
    if (rc.gguf) {  // the perplexity of the file as written (what llama.cpp runs)
      written = save_gguf(a.get("out"), out->q, to_gguf_vocab(tok), {.name = model_path.stem().string()});
      out->eval = evaluate(be, load_gguf_model(a.get("out")), rsq::view(eval), 16, rc.opt.forward);
    }
    char learning[48] = "";
    if (rc.learned.enabled) std::snprintf(learning, sizeof learning, " + %.1f s learning", learn_seconds);
    std::printf("method %s%s bits %d group %s policy %s seed %llu: perplexity %.4f (loss %.5f over %td tokens, "
                "%.1f s%s)\n",
                spinquant ? "spinquant" : std::string(to_string(method)).c_str(),
                rc.learned.enabled ? " (learned rotation)"
                : out->q.rotation.has_value() == rotates(method) ? ""
                : (out->q.rotation ? " (rotated)" : " (unrotated)"),
                rc.opt.grid.bits, group.c_str(), out->q.policy.c_str(),
                static_cast<unsigned long long>(rc.seed), out->eval.perplexity, out->eval.mean, out->eval.count,
                out->q.timings.total, learning);
    if (written) {
      rsq_cli::print_gguf_summary(stderr, "rsq-llama2c: ", *written);
    } else if (a.has("out")) {
      save_quantized_checkpoint(a.get("out"), out->q);
      if (!rc.quiet) std::fprintf(stderr, "rsq-llama2c: wrote %s\n", a.get("out").c_str());
    }
    if (imatrix)
      rsq_cli::write_imatrix(stderr, "rsq-llama2c: ", a.get("imatrix"), imatrix->result(text_path.filename().string()));
    if (a.has("packed")) {
      auto const ex = export_gptq_directory(packed->staging(), out->q);
      packed->commit();
      for (auto const& l : ex.linears)
        if (l.format == "unpacked" && !rc.quiet)
          std::fprintf(stderr, "rsq-llama2c: %s written unpacked: %s\n", l.prefix.c_str(), l.reason.c_str());
      if (!rc.quiet)
        std::fprintf(stderr, "rsq-llama2c: wrote %s (%td of %zu linears packed)\n",
                     (packed->target() / ex.manifest.filename()).string().c_str(), ex.packed(), ex.linears.size());
    }
    return 0;
  }

  auto const since = [](auto t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  auto const t_fp = std::chrono::steady_clock::now();
  auto const fp_eval = evaluate(be, fp, rsq::view(eval), 16, rc.opt.forward);
  double const fp_seconds = since(t_fp);
  std::printf("bits %d, group %s, seed %llu, seqlen %td, nsamples %td, expand %td, calib %td:%td, eval %td:%td "
              "(%td windows)\n",
              rc.opt.grid.bits, group.c_str(), static_cast<unsigned long long>(rc.seed), rc.seqlen, rc.nsamples,
              rc.opt.expand_factor, rc.calib.begin, rc.calib.end, rc.eval.begin, rc.eval.end,
              rsq::index_t(eval.shape()[0]));
  std::printf("%-8s %-10s %12s %12s %10s\n", "method", "policy", "perplexity", "vs fp32", "seconds");
  std::printf("%-8s %-10s %12.4f %12s %10s\n", "fp32", "-", fp_eval.perplexity, "-", "-");
  std::fflush(stdout);
  int status = 0;
  struct phase_row {
    quant_method method;
    pipeline_timings t;
    double evaluation;  // the method's wall time less quantize_model's: evaluating the quantized model
  };
  std::vector<phase_row> phases;
  for (quant_method m : all_quant_methods) {
    auto const t0 = std::chrono::steady_clock::now();
    auto const out = run_method(be, fp, m, rc, true, calib, eval);
    if (out) phases.push_back({m, out->q.timings, since(t0) - out->q.timings.total});
    if (!out) {
      std::printf("%-8s %-10s %12s\n", std::string(to_string(m)).c_str(), "-", "failed");
      status = 3;
      continue;
    }
    std::printf("%-8s %-10s %12.4f %+12.4f %10.2f\n", std::string(to_string(m)).c_str(), out->q.policy.c_str(),
                out->eval.perplexity, out->eval.perplexity - fp_eval.perplexity, out->q.timings.total);
    std::fflush(stdout);
  }
  // Where the time goes (quantize_model's phases; each waits for the backend's work before it is timed).
  std::printf("\nseconds per phase (fp32 evaluation: %.2f s)\n%-8s %8s %8s %8s %8s %8s %8s %8s %8s %8s %9s\n",
              fp_seconds, "method", "forward", "rotation", "import.", "hessian", "factor", "solve", "loss", "copies",
              "quantize", "evaluate");
  for (auto const& r : phases)
    std::printf("%-8s %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %9.2f\n",
                std::string(to_string(r.method)).c_str(), r.t.forward, r.t.rotation, r.t.importance, r.t.hessian,
                r.t.factorization, r.t.solver, r.t.loss, r.t.copies, r.t.total, r.evaluation);
  return status;
}

int run(rsq_cli::args const& a) {
  auto const rc = parse_config(a);
  return rsq_cli::on_backend(rc.cuda, [&](auto const& be) { return run(be, a, rc); });
}

}  // namespace

int main(int argc, char** argv) {
  return rsq_cli::exit_status("rsq-llama2c", [&] {
    for (int i = 1; i < argc; ++i)
      if (std::string_view(argv[i]) == "-h") {
        std::puts(usage().c_str());
        return 0;
      }
    rsq_cli::args a(argc, argv,
                    {"compare", "center-embeddings", "asym", "no-clip", "act-order", "f64", "bf16", "quiet", "overwrite",
                     "help"},
                    rsq_cli::with_learned_rotation_options(
                        {"model", "tokenizer", "text", "method", "bits", "groupsize", "policy", "r-min", "r-max",
                         "importance-power", "calib-stories", "eval-stories", "seqlen", "nsamples", "expand", "seed",
                         "rotation", "rotate", "quantizer", "damp", "out", "packed", "backend", "format", "gguf-type",
                         "imatrix", "importance-choice", "held-out"}));
    if (a.flag("help") || argc == 1) {
      std::puts(usage().c_str());
      return argc == 1 ? 2 : 0;
    }
    return run(a);
  });
}
