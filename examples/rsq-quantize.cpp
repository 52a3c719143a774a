// SPDX-License-Identifier: MIT
// rsq-quantize: quantizes a Hugging Face model folder (Llama architecture: config.json, safetensors, tokenizer.json)
// with RTN, GPTQ, QuaRot, RSQ or SpinQuant (a learned rotation) and writes a Hugging Face folder that transformers
// loads. See --help and docs/quantize-your-model.md.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <rsq/io/npy.hpp>
#include <rsq/model/calibration.hpp>
#include <rsq/model/gguf.hpp>
#include <rsq/model/gptq_checkpoint.hpp>
#include <rsq/model/hf_model.hpp>
#include <rsq/model/hf_tokenizer.hpp>
#include <rsq/model/learned_rotation.hpp>
#include <rsq/model/quantize.hpp>
#include <rsq/model/rotate.hpp>

#include "support/args.hpp"
#include "support/diagnostics.hpp"
#include "support/gguf_output.hpp"
#include "support/importance_choice.hpp"
#include "support/importance_stats.hpp"
#include "support/learned_rotation.hpp"
#include "support/main.hpp"
#include "support/output.hpp"

namespace fs = std::filesystem;
using namespace rsq::model;
using rsq::index_t;
using rsq_cli::usage_error;

namespace {

constexpr char usage_head[] =
    "usage: rsq-quantize --model DIR --calib FILE --out DIR [options]\n"
    "       rsq-quantize --check DIR\n"
    "\n"
    "Quantizes the Hugging Face model in DIR (LlamaForCausalLM; config.json, model.safetensors or shards,\n"
    "tokenizer.json) and writes the quantized model as a Hugging Face folder.\n"
    "\n"
    "input\n"
    "  --model DIR           the model folder (required)\n"
    "  --calib FILE          calibration data: text (.txt, documents separated by blank lines, tokenized with the\n"
    "                        model's tokenizer.json, BOS per document) or token ids (.npy int32, (sequences, tokens));\n"
    "                        required unless --method rtn\n"
    "  --nsamples N          calibration windows (default 128; a .npy gives at most its rows)\n"
    "  --seqlen L            tokens per window (default 2048, at most the model's max_position_embeddings)\n"
    "  --seed S              seed of the windows and the rotation (default 0)\n"
    "  --calib-bos           every calibration window starts with BOS (its first token replaced by the\n"
    "                        tokenizer's BOS: where attention sinks sit; default: random starts, as the reference)\n"
    "  --eval FILE           also report perplexity before and after on this text or .npy (consecutive windows)\n"
    "  --eval-seqlen L       tokens per evaluation window (default --seqlen; at most max_position_embeddings)\n"
    "  --eval-windows N      evaluate on the first N windows only (default: all)\n"
    "method\n"
    "  --method M            rtn, gptq, quarot (rotation + GPTQ), rsq (rotation + AttnCon-scaled GPTQ; default) or\n"
    "                        spinquant (learned rotation + GPTQ: quarot with --rotation learned)\n"
    "  --bits B              2 to 8 (default 4)\n"
    "  --group-size G        columns per scale (default 128; -1: one scale per row)\n"
    "  --act-order           quantize columns by decreasing Hessian diagonal\n"
    "  --policy P            token importance (default: attncon for rsq, uniform otherwise; given with gptq or\n"
    "                        quarot, importance-scaled GPTQ): uniform, first_n:P/Q, attncon, actnorm, actdiff,\n"
    "                        tokensim, tokenfreq; a scored policy with :cap_peak caps each window's highest score\n"
    "                        at the next highest (attncon:cap_peak, the sink-aware AttnCon)\n"
    "  --r-min X --r-max Y   importance range of a scored policy (default 0.005, 1)\n"
    "  --importance-power p  Hessian weights w = r^p (default 1, the released code)\n"
    "  --expand K            dataset expansion: each window also at K - 1 cyclic shifts (default 1, off)\n"
    "  --importance-choice C off (default), choose or blend: hold out the last calibration windows and give each\n"
    "                        linear the Hessian alpha*H_policy + (1-alpha)*H_uniform of the other windows whose\n"
    "                        solution has the smallest output error on the held-out ones; choose tries alpha 0 and\n"
    "                        1, blend 0, .25, .5, .75, 1 (needs a token-importance policy: rsq, or --policy)\n"
    "  --held-out F          the fraction of the calibration windows --importance-choice holds out (default 0.25)\n"
    "  --asym                asymmetric grid (a zero point per group; default symmetric)\n"
    "  --rotation R          quarot/rsq: hadamard (randomized Hadamard Q plus the online Hadamards before o_proj\n"
    "                        and down_proj, folded back into the written weights; default), random (Haar random Q),\n"
    "                        fused (only rotations that fold into the weights: a plain model), or learned: R1\n"
    "                        (residual) and R2 (per-head V/O) learned by Cayley SGD against the fake-quantized loss\n"
    "                        (SpinQuant) on the calibration windows, starting from the Hadamard of --seed; for\n"
    "                        --format gptq and gguf it is learned and applied without online Hadamards (R1 and R2\n"
    "                        fold into the weights)\n";

constexpr char usage_tail[] =
    "  --backend cpu|cuda    where every step runs (default cpu; cuda needs a build with -DRSQ_WITH_CUDA=ON; a\n"
    "                        rotation is learned on the CPU)\n"
    "output\n"
    "  --out DIR             the output folder (required; a file for gguf); must be empty or absent unless\n"
    "                        --overwrite\n"
    "  --format F            hf (default): a Hugging Face folder with the dequantized weights;\n"
    "                        gptq: a GPTQ checkpoint (qweight/qzeros/scales/g_idx, bits 2, 3, 4, 8; the solver uses\n"
    "                        the fp16 scales it stores; quarot/rsq need --rotation fused or learned);\n"
    "                        gguf: one GGUF file that llama.cpp runs (SentencePiece tokenizers: Llama-2, Mistral)\n"
    "  --gguf-type T         gguf: q4_0 (default), q4_1 or q8_0: the solver works on exactly these llama.cpp blocks\n"
    "                        (fp16 scales, --group-size a multiple of 32, default 32); linears whose input size is\n"
    "                        not a multiple of 32 stay F16. --method rtn: llama.cpp's own round to nearest, or f16 /\n"
    "                        f32 for a conversion without quantization\n"
    "  --imatrix FILE        gptq/quarot/rsq: also write the calibration's importance matrix (per linear the\n"
    "                        importance-weighted sum of squares of its inputs) for llama-quantize --imatrix: GGUF,\n"
    "                        or llama.cpp's legacy format for a name ending .dat\n"
    "  --dtype D             hf: storage of the weights: float32 (default, exact), bfloat16 or float16\n"
    "  --overwrite           replace an existing output folder whole\n"
    "  --quiet               no progress on stderr\n"
    "  --diagnostics         per layer: the weights' crest factor (max|w|/rms) before and after the rotation, the\n"
    "                        crest of each linear input's channel energies (from the Hessians), and for rsq the\n"
    "                        effective number of calibration tokens of the Hessian weights and the share of the\n"
    "                        weight on each window's first position and on BOS tokens; with --eval, the loss in\n"
    "                        each quarter of the window positions before and after\n"
    "  --check DIR           report which engines load the GPTQ checkpoint in DIR, and why not\n"
    "  --help, -h            this text\n"
    "\n"
    "exit status: 0 done, 1 runtime error (unreadable or corrupt input, a write that failed), 2 bad usage,\n"
    "3 a numerical failure (a Hessian that stays not positive definite); the output is written only on 0.\n";

/// The --help text: the learned-rotation options are described as in every tool (support/learned_rotation.hpp).
std::string usage() { return std::string(usage_head) + rsq_cli::learned_rotation_help + usage_tail; }

struct run_config {
  fs::path model, calib, eval;
  quantize_options opt;
  index_t nsamples = 128, seqlen = 2048, eval_seqlen = -1, eval_windows = -1;
  std::uint64_t seed = 0;
  rsq::io::tensor_dtype dtype = rsq::io::tensor_dtype::f32;
  bool cuda = false, quiet = false, overwrite = false, gptq = false, calib_bos = false, diagnostics = false;
  std::optional<rsq::pack::ggml_type> gguf;  ///< --format gguf: the type of the linears
  rsq_cli::learned_rotation_config learned;  ///< --rotation learned (or --method spinquant): learn or load R1/R2 first
  std::string method_name;                   ///< as given: spinquant is quarot on a learned rotation
};

run_config parse_config(rsq_cli::args const& a) {
  run_config rc;
  rc.model = a.require("model");
  rc.quiet = a.flag("quiet");
  auto const format = a.choice("format", {"hf", "gptq", "gguf"});
  rc.gptq = format == "gptq";
  rc.overwrite = a.flag("overwrite");
  rc.method_name = a.get("method", "rsq");
  bool const spinquant = rc.method_name == "spinquant";
  try {
    rc.opt.method = spinquant ? quant_method::quarot : parse_quant_method(rc.method_name);
  } catch (rsq::invalid_argument const&) {
    throw usage_error("--method must be one of rtn|gptq|quarot|rsq|spinquant, got '" + a.get("method") + "'");
  }
  long const bits = a.integer("bits", 4);
  if (bits < 2 || bits > 8) throw usage_error("--bits must be between 2 and 8, got " + std::to_string(bits));
  rc.opt.grid = rsq_script_grid(int(bits));
  rc.opt.grid.symmetric = !a.flag("asym");
  long const g = a.integer("group-size", 128);
  if (g != -1 && g < 1) throw usage_error("--group-size must be -1 (per row) or positive, got " + std::to_string(g));
  rc.opt.solver.group_size = g;
  rc.opt.solver.act_order = a.flag("act-order");
  rc.nsamples = a.integer("nsamples", 128);
  if (rc.nsamples < 1) throw usage_error("--nsamples must be at least 1");
  rc.seqlen = a.integer("seqlen", 2048);
  if (rc.seqlen < 2) throw usage_error("--seqlen must be at least 2");
  long const seed = a.integer("seed", 0);
  if (seed < 0) throw usage_error("--seed must be >= 0");
  rc.seed = std::uint64_t(seed);
  auto const rot = a.choice("rotation", {"hadamard", "random", "fused", "learned"});
  bool const learned = rot == "learned" || spinquant;
  // GPTQ checkpoints and GGUF hold only rotations folded into the weights: a learned R1/R2 is learned and applied
  // without the online Hadamards there (as --rotation fused); the Hugging Face folder folds them after quantizing.
  rc.opt.rotation = {.kind = rot == "random" ? residual_rotation::random_orthogonal
                                             : residual_rotation::randomized_hadamard,
                     .seed = rc.seed,
                     .online_hadamards = rot != "fused" && !(learned && format != "hf")};
  if (a.has("rotation") && !rotates(rc.opt.method))
    throw usage_error("--rotation applies to --method quarot and rsq (and spinquant)");
  if (rc.gptq) {
    if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
      throw usage_error("--format gptq stores 2, 3, 4 or 8 bits, not " + std::to_string(bits));
    if (rotates(rc.opt.method) && rc.opt.rotation.online_hadamards)
      throw usage_error("--format gptq: " + a.get("method", "rsq") + " with --rotation " + rot +
                        " needs online Hadamards that GPTQ loaders do not apply; use --rotation fused or "
                        "learned");
    if (a.has("dtype")) throw usage_error("--dtype applies to --format hf (a GPTQ checkpoint stores float16)");
    rc.opt.grid.fp16_scales = true;
  }
  if (format == "gguf") {
    auto const t = rsq::pack::parse_ggml_type(a.get("gguf-type", "q4_0"));
    using rsq::pack::ggml_type;
    bool const block = t && (*t == ggml_type::q4_0 || *t == ggml_type::q4_1 || *t == ggml_type::q8_0);
    if (!block && !(t && (*t == ggml_type::f16 || *t == ggml_type::f32)))
      throw usage_error("--gguf-type must be q4_0, q4_1 or q8_0 (or f16 / f32 with --method rtn), got '" +
                        a.get("gguf-type") + "'");
    if (!block && rc.opt.method != quant_method::rtn)
      throw usage_error("--gguf-type f16 and f32 are conversions without quantization: use them with --method rtn");
    for (char const* opt : {"bits", "asym", "dtype"})
      if (a.has(opt)) throw usage_error(std::string("--") + opt + " does not apply to --format gguf (--gguf-type sets the grid)");
    if (rotates(rc.opt.method) && rc.opt.rotation.online_hadamards)
      throw usage_error("--format gguf: " + a.get("method", "rsq") + " with --rotation " + rot +
                        " needs online Hadamards, which llama.cpp does not apply; use --rotation fused or learned");
    if (block) {
      rc.opt.grid = rsq::pack::block_grid(*t);
      rc.opt.grid.clip.enabled = true;
    }
    if (!a.has("group-size")) rc.opt.solver.group_size = 32;
    if (rc.opt.solver.group_size < 0 || rc.opt.solver.group_size % 32 != 0)
      throw usage_error("--group-size must be a multiple of 32 for --format gguf (a block is 32 columns), got " +
                        std::to_string(rc.opt.solver.group_size));
    if (rc.opt.solver.act_order) rc.opt.solver.static_groups = true;  // blocks are consecutive columns
    rc.gguf = *t;
  } else if (a.has("gguf-type")) {
    throw usage_error("--gguf-type needs --format gguf");
  }
  if (a.has("policy") || a.has("r-min") || a.has("r-max")) {
    if (rc.opt.method == quant_method::rtn) throw usage_error("--method rtn uses no calibration: --policy does not apply");
    try {
      rc.opt.policy = rsq::importance::any_policy::parse(a.get("policy", "attncon"), a.number("r-min", 0.005),
                                                         a.number("r-max", 1.0));
    } catch (rsq::invalid_argument const& e) {
      std::string msg = e.what();
      throw usage_error("--policy: " + (msg.rfind("rsq: ", 0) == 0 ? msg.substr(5) : msg));
    }
  }
  rc.opt.importance_power = a.number("importance-power", 1.0);
  if (!(rc.opt.importance_power > 0) || !std::isfinite(rc.opt.importance_power))
    throw usage_error("--importance-power must be a positive number");
  long const expand = a.integer("expand", 1);
  if (expand < 1) throw usage_error("--expand must be at least 1, got " + std::to_string(expand));
  if (expand > 1 && rc.opt.method == quant_method::rtn)
    throw usage_error("--method rtn uses no calibration: --expand does not apply");
  rc.opt.expand_factor = expand;
  if (a.has("importance-choice")) {
    try {
      rc.opt.choice = parse_importance_choice(a.get("importance-choice"));
    } catch (rsq::invalid_argument const&) {
      throw usage_error("--importance-choice must be off, choose or blend, got '" + a.get("importance-choice") + "'");
    }
  }
  if (rc.opt.choice != importance_choice::off) {
    if (rc.opt.method == quant_method::rtn)
      throw usage_error("--method rtn uses no calibration: --importance-choice does not apply");
    if (std::holds_alternative<rsq::importance::uniform>(rc.opt.effective_policy().get()))
      throw usage_error("--importance-choice chooses between uniform token weights and a policy's: use --method rsq "
                        "or give --policy");
    if (a.has("imatrix"))
      throw usage_error("--imatrix does not go with --importance-choice (the held-out windows are in no Hessian)");
    rc.opt.held_out = a.number("held-out", 0.25);
    if (!(rc.opt.held_out > 0 && rc.opt.held_out < 1))
      throw usage_error("--held-out must be a fraction between 0 and 1, got " + a.get("held-out"));
  } else if (a.has("held-out")) {
    throw usage_error("--held-out needs --importance-choice choose or blend");
  }
  if (a.has("imatrix") && rc.opt.method == quant_method::rtn)
    throw usage_error("--imatrix needs calibration: use --method gptq, quarot or rsq");
  auto const dt = a.choice("dtype", {"float32", "bfloat16", "float16"});
  rc.dtype = dt == "float32" ? rsq::io::tensor_dtype::f32
             : dt == "bfloat16" ? rsq::io::tensor_dtype::bf16 : rsq::io::tensor_dtype::f16;
  rc.cuda = a.choice("backend", {"cpu", "cuda"}) == "cuda";
#if !(defined(RSQ_WITH_CUDA) && RSQ_WITH_CUDA)
  if (rc.cuda) throw usage_error("--backend cuda: this build has no CUDA backend (configure with -DRSQ_WITH_CUDA=ON)");
#endif
  if (rc.opt.choice != importance_choice::off) {
    auto const held = std::lround(rc.opt.held_out * double(rc.nsamples));
    if (held < 1 || held >= rc.nsamples)
      throw usage_error("--held-out " + a.get("held-out", "0.25") + " of --nsamples " + std::to_string(rc.nsamples) +
                        " holds out " + std::to_string(held) + " windows: at least one must be held out and one must "
                        "remain");
  }
  if (rc.opt.method != quant_method::rtn) rc.calib = a.require("calib");
  else if (a.has("calib")) throw usage_error("--method rtn uses no calibration data: drop --calib");
  if (a.has("eval")) rc.eval = a.get("eval");
  rc.eval_windows = a.integer("eval-windows", -1);
  if (a.has("eval-windows") && (rc.eval_windows < 1 || rc.eval.empty()))
    throw usage_error("--eval-windows needs --eval and a positive count");
  rc.eval_seqlen = a.integer("eval-seqlen", -1);
  if (a.has("eval-seqlen") && (rc.eval_seqlen < 2 || rc.eval.empty()))
    throw usage_error("--eval-seqlen needs --eval and at least 2 tokens");
  rc.calib_bos = a.flag("calib-bos");
  rc.diagnostics = a.flag("diagnostics");
  if (rc.calib_bos && rc.calib.empty()) throw usage_error("--calib-bos needs calibration data (not --method rtn)");
  // The fake quantizer of the learning is the final grid (GGUF's blocks, GPTQ's fp16 scales) and group size.
  rc.learned = rsq_cli::parse_learned_rotation(a, learned, rc.opt.grid, rc.opt.solver.group_size, rc.opt.rotation,
                                               rc.overwrite);
  // Inputs are checked here, before the output folder is prepared and the model is read.
  if (!fs::is_directory(rc.model)) throw usage_error("--model " + rc.model.string() + ": is not a folder");
  if (!rc.calib.empty()) rsq_cli::expect_readable_file(rc.calib, "--calib");
  if (!rc.eval.empty()) rsq_cli::expect_readable_file(rc.eval, "--eval");
  return rc;
}

/// Token ids of a text file (documents separated by blank lines, each with the tokenizer's BOS) or an .npy file.
struct token_source {
  std::vector<std::int32_t> stream;     ///< from text
  rsq::matrix<std::int32_t> sequences;  ///< from .npy
  bool from_npy = false;
};

token_source read_tokens(fs::path const& path, fs::path const& model_dir, std::string const& option) {
  token_source s;
  if (path.extension() == ".npy") {
    s.from_npy = true;
    s.sequences = rsq::io::load_npy<std::int32_t, 2>(path, rsq::io::npy_conversion::exact);
    return s;
  }
  auto const tok_path = model_dir / "tokenizer.json";
  if (!fs::exists(tok_path))
    throw usage_error(option + " " + path.string() + " is text, but " + model_dir.string() +
                      " has no tokenizer.json (give token ids as .npy)");
  auto const tok = load_hf_tokenizer(tok_path);
  for (auto const& doc : load_stories(path)) {
    auto const ids = tok.encode(doc);
    s.stream.insert(s.stream.end(), ids.begin(), ids.end());
  }
  return s;
}

/// Calibration windows: random windows of a token stream (spec §8.1), or the first rows and columns of an .npy.
rsq::matrix<std::int32_t> calibration_windows(token_source const& s, run_config const& rc) {
  if (!s.from_npy) return sample_windows(s.stream, rc.seqlen, rc.nsamples, rc.seed);
  auto const rows = std::min<index_t>(index_t(s.sequences.shape()[0]), rc.nsamples);
  auto const cols = std::min<index_t>(index_t(s.sequences.shape()[1]), rc.seqlen);
  auto w = rsq::make_matrix<std::int32_t>(rows, cols);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j) w(i, j) = s.sequences(i, j);
  return w;
}

/// One progress line per layer: a bar, the layer's seconds, the seconds so far in the main phases, and the time left
/// at the mean pace so far.
void print_progress(layer_report const& r, std::chrono::steady_clock::time_point start) {
  double const elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  int const done = r.layer + 1, width = 30, filled = width * done / std::max(1, r.n_layers);
  double const left = elapsed / done * (r.n_layers - done);
  double loss = 0;
  for (auto const& l : r.linears) loss += l.gptq_loss;
  auto const& t = r.timings;
  std::fprintf(stderr,
               "\rrsq-quantize: [%s%s] layer %d/%d  %.1f s  GPTQ loss %.4g  (so far: forward %.1f s, Hessians %.1f s, "
               "solves %.1f s, rotation %.1f s)  %.0f s left   ",
               std::string(std::size_t(filled), '#').c_str(), std::string(std::size_t(width - filled), '.').c_str(),
               done, r.n_layers, r.seconds, loss, t.forward, t.hessian, t.factorization + t.solver, t.rotation, left);
  if (done == r.n_layers) std::fputc('\n', stderr);
}

template <class B>
int run(B const& be, rsq_cli::args const& a, run_config const& rc) {
  // Everything that can be checked is checked before the long work starts.
  std::optional<rsq_cli::output_folder> out;
  if (rc.gguf) rsq_cli::check_output_file(a.require("out"), "--out", rc.overwrite);
  else out.emplace(a.require("out"), rc.overwrite);
  if (a.has("imatrix")) rsq_cli::check_output_file(a.get("imatrix"), "--imatrix", rc.overwrite);
  std::optional<gguf_vocab> vocab;
  if (rc.gguf) {
    if (!fs::exists(rc.model / "tokenizer.json"))
      throw usage_error("--format gguf: " + rc.model.string() + " has no tokenizer.json (the GGUF carries the vocabulary)");
    try {
      vocab = to_gguf_vocab(load_hf_tokenizer(rc.model / "tokenizer.json"));
    } catch (rsq::invalid_argument const& e) {
      throw usage_error(std::string("--format gguf: ") + e.what());
    }
  }
  auto hf = load_hf_model(rc.model);
  auto& fp = hf.model;
  index_t const seqlen = std::min<index_t>(rc.seqlen, fp.config.seq_len);
  if (a.has("seqlen") && rc.seqlen > fp.config.seq_len)
    throw usage_error("--seqlen " + std::to_string(rc.seqlen) + " exceeds the model's " +
                      std::to_string(fp.config.seq_len) + " positions");
  run_config cfg = rc;
  cfg.seqlen = seqlen;
  rsq::matrix<std::int32_t> calib, eval;
  index_t const eval_seqlen = rc.eval_seqlen > 0 ? rc.eval_seqlen : seqlen;
  if (eval_seqlen > fp.config.seq_len)
    throw usage_error("--eval-seqlen " + std::to_string(eval_seqlen) + " exceeds the model's " +
                      std::to_string(fp.config.seq_len) + " positions");
  if (rc.opt.method != quant_method::rtn) calib = calibration_windows(read_tokens(rc.calib, rc.model, "--calib"), cfg);
  if (rc.calib_bos) {
    auto const bos = load_hf_tokenizer(rc.model / "tokenizer.json").bos_id();
    if (bos < 0) throw usage_error("--calib-bos: " + rc.model.string() + "/tokenizer.json names no BOS token");
    for (index_t i = 0; i < index_t(calib.shape()[0]); ++i) calib(i, 0) = bos;
  }
  if (!rc.eval.empty()) {
    auto const s = read_tokens(rc.eval, rc.model, "--eval");
    eval = s.from_npy ? s.sequences : consecutive_windows(s.stream, eval_seqlen);
    if (rc.eval_windows > 0 && index_t(eval.shape()[0]) > rc.eval_windows) {
      auto first = rsq::make_matrix<std::int32_t>(rc.eval_windows, index_t(eval.shape()[1]));
      std::copy_n(eval.data(), first.size(), first.data());
      eval = std::move(first);
    }
  }
  if (!rc.quiet)
    std::fprintf(stderr, "rsq-quantize: %s, %d layers, hidden %d; %s %d-bit, group %s%s; calibration %td x %td\n",
                 std::string(to_string(hf.config.architecture)).c_str(), fp.config.n_layers, fp.config.dim,
                 rc.method_name.c_str(), rc.opt.grid.bits,
                 rc.opt.solver.group_size < 0 ? "row" : std::to_string(rc.opt.solver.group_size).c_str(),
                 rc.opt.solver.act_order ? ", act-order" : "", index_t(calib.shape()[0]),
                 calib.size() ? index_t(calib.shape()[1]) : index_t(0));

  // --rotation learned / --method spinquant: R1 and R2 learned on the calibration windows (or loaded) first; the
  // method then runs on that rotation and the written model holds it fused into its weights.
  auto opt = rc.opt;
  char learning[48] = "";  // " + 12.3 s learning"
  if (rc.learned.enabled) {
    if (!rc.quiet && !opt.rotation.online_hadamards && a.get("rotation") != "fused")
      std::fprintf(stderr, "rsq-quantize: --format %s holds only rotations folded into the weights: the rotation is "
                   "%s without online Hadamards\n", rc.gguf ? "gguf" : "gptq",
                   rc.learned.load.empty() ? "learned and applied" : "applied");
    auto const learned =
        rsq_cli::learn_or_load_rotation(be, "rsq-quantize", rc.learned, fp, rsq::view(std::as_const(calib)), rc.quiet);
    opt.rotation.learned = learned.rotation;
    std::snprintf(learning, sizeof learning, " + %.1f s learning", learned.seconds);
  }
  std::string const method = rc.method_name + (rc.learned.enabled ? " (learned rotation)" : "");

  std::optional<double> fp_ppl;
  if (eval.size()) fp_ppl = evaluate(be, fp, rsq::view(eval)).perplexity;
  if (rc.gguf && rc.opt.method == quant_method::rtn) {  // llama.cpp's own rules on the float model
    auto const s = save_gguf(a.get("out"), fp, *vocab, {.name = rc.model.filename().string(),
                                                        .float_type = rsq::pack::ggml_type::f16,
                                                        .linear_type = *rc.gguf});
    std::printf("converted %s with llama.cpp's %s round to nearest\n", rc.model.string().c_str(),
                std::string(rsq::pack::traits(*rc.gguf).name).c_str());
    if (fp_ppl)
      std::printf("perplexity on %s: %.4f before, %.4f after (%td windows of %td)\n", rc.eval.string().c_str(), *fp_ppl,
                  evaluate(be, load_gguf_model(s.path), rsq::view(eval)).perplexity, index_t(eval.shape()[0]),
                  index_t(eval.shape()[1]));
    rsq_cli::print_gguf_summary(stdout, "", s);
    return 0;
  }
  auto const start = std::chrono::steady_clock::now();
  quantize_observer obs;
  if (!rc.quiet)
    obs.on_layer = [&](layer_report const& r) {
      print_progress(r, start);
      if (rc.opt.choice == importance_choice::off) return;
      // With an importance choice the bar does not overwrite itself: each layer's alphas follow it on their line.
      std::fprintf(stderr, "%srsq-quantize: layer %d: alpha kept %s\n", r.layer + 1 < r.n_layers ? "\n" : "",
                   r.layer, rsq_cli::alphas_of(r, [](linear_id id) { return hf_name(id); }).c_str());
    };
  std::optional<imatrix_from_hessians> imatrix;
  if (a.has("imatrix")) {
    imatrix.emplace(index_t(calib.shape()[0]) * rc.opt.expand_factor, index_t(calib.shape()[1]));
    obs.on_hessian = imatrix->on_hessian();
  }
  std::vector<rsq_cli::importance_stats> stats;
  std::int32_t bos = -1;
  std::vector<double> crest_before, crest_after;
  std::vector<std::array<double, 4>> channel_crest;  // per layer: q/k/v, o, gate/up, down inputs
  std::optional<std::array<double, 4>> fp_quarters;
  if (rc.diagnostics) {
    crest_before = rsq_cli::weight_crest(fp);
    if (opt.rotates_model()) {
      auto rotated = fp;
      auto fixed = opt.rotation;  // a learned R1/R2 first, then the pipeline's own rotation, as quantize_model()
      fixed.learned = nullptr;
      if (opt.rotation.learned)
        apply_learned_rotation(rotated, *opt.rotation.learned, plan_rotation(rotated.config, fixed));
      (void)rotate_model(rotated, fixed);
      crest_after = rsq_cli::weight_crest(rotated);
    }
    if (eval.size()) fp_quarters = rsq_cli::quarter_losses(be, fp, rsq::view(std::as_const(eval)));
    auto chained = obs.on_hessian;
    obs.on_hessian = [&, chained](int layer, linear_id group, rsq::matrix<double> const& h) {
      if (chained) chained(layer, group, h);
      if (std::size_t(layer) >= channel_crest.size()) channel_crest.resize(std::size_t(layer) + 1);
      int const slot = group == linear_id::wq ? 0 : group == linear_id::wo ? 1 : group == linear_id::w1 ? 2 : 3;
      channel_crest[std::size_t(layer)][std::size_t(slot)] = rsq_cli::channel_crest(h);
    };
    if (fs::exists(rc.model / "tokenizer.json")) bos = load_hf_tokenizer(rc.model / "tokenizer.json").bos_id();
    obs.on_importances = [&](int, rsq::matrix_view<const float> r) {
      stats.push_back(rsq_cli::importance_stats_of(r, rc.opt.importance_power, rsq::view(std::as_const(calib)), bos));
    };
  }
  auto q = quantize_model(be, std::move(fp), rsq::view(calib), opt, obs);
  if (!q.ok()) {
    std::fprintf(stderr, "rsq-quantize: error: layer %d %s: %s (%s); nothing was written\n", q.failed_layer,
                 std::string(hf_name(q.failed_linear)).c_str(), std::string(rsq::gptq::to_string(q.info)).c_str(),
                 q.info == rsq::gptq::status::no_live_columns
                     ? "every input of the linear was zero in the calibration data"
                     : "its Hessian stayed not positive definite after every damping attempt");
    return 3;
  }
  if (!rc.quiet) rsq_cli::print_rotation_notes("rsq-quantize", q.rotation);
  if (auto const s = rsq_cli::choice_summary(q); !s.empty()) std::printf("%s\n", s.c_str());
  if (rc.diagnostics && stats.empty())
    std::printf("diagnostics: %s weights every calibration token alike (no token importances)\n",
                rc.method_name.c_str());
  for (std::size_t l = 0; l < stats.size(); ++l)
    std::printf("diagnostics: layer %zu: %.1f effective tokens of %td, Hessian weight on position 0 %.2f%%, on BOS "
                "%.2f%%\n", l, stats[l].effective_tokens, index_t(calib.shape()[1]), 100 * stats[l].position0_share,
                100 * stats[l].bos_share);
  for (std::size_t l = 0; l < crest_before.size(); ++l) {
    std::printf("diagnostics: layer %zu: weight crest %.2f", l, crest_before[l]);
    if (!crest_after.empty()) std::printf(" -> %.2f rotated", crest_after[l]);
    if (l < channel_crest.size())
      std::printf("; input channel crest q/k/v %.2f, o %.2f, gate/up %.2f, down %.2f", channel_crest[l][0],
                  channel_crest[l][1], channel_crest[l][2], channel_crest[l][3]);
    std::printf("\n");
  }
  std::optional<double> q_ppl;
  auto report_quarters = [&](llama_model const& quantized) {
    if (!fp_quarters) return;
    auto const qq = rsq_cli::quarter_losses(be, quantized, rsq::view(std::as_const(eval)));
    index_t const L = index_t(eval.shape()[1]) - 1;
    std::printf("diagnostics: loss per quarter of the predicted positions, FP -> quantized:");
    for (std::size_t i = 0; i < 4; ++i)
      std::printf("  %td-%td: %.4f -> %.4f (%+.2f%%)", index_t(i) * L / 4, (index_t(i) + 1) * L / 4 - 1,
                  (*fp_quarters)[i], qq[i], 100 * (qq[i] - (*fp_quarters)[i]) / (*fp_quarters)[i]);
    std::printf("\n");
  };
  auto report_imatrix = [&] {
    if (imatrix) rsq_cli::write_imatrix(stdout, "", a.get("imatrix"), imatrix->result(rc.calib.filename().string()));
  };
  if (rc.gguf) {
    auto const s = save_gguf(a.get("out"), q, *vocab, {.name = rc.model.filename().string()});
    if (eval.size()) q_ppl = evaluate(be, load_gguf_model(s.path), rsq::view(eval)).perplexity;  // as written
    report_quarters(q.model);
    std::printf("quantized %s with %s on llama.cpp's %s blocks, group %td, in %.1f s%s (%s backend)\n",
                rc.model.string().c_str(), method.c_str(), std::string(rsq::pack::traits(s.linear_type).name).c_str(),
                q.group_size, q.timings.total, learning, rc.cuda ? "cuda" : "cpu");
    if (fp_ppl && q_ppl)
      std::printf("perplexity on %s: %.4f before, %.4f after (%td windows of %td)\n", rc.eval.string().c_str(),
                  *fp_ppl, *q_ppl, index_t(eval.shape()[0]), index_t(eval.shape()[1]));
    rsq_cli::print_gguf_summary(stdout, "", s);
    report_imatrix();
    return 0;
  }
  if (eval.size()) q_ppl = evaluate(be, q.model, rsq::view(eval)).perplexity;
  report_quarters(q.model);

  std::vector<std::string> files;
  if (rc.gptq) {
    files = save_gptq_checkpoint(out->staging(), q, hf.config);
  } else {
    // A Hugging Face loader applies no online Hadamards: fold them into o_proj and down_proj (the same function).
    fold_online_transforms(q.model);
    files = save_hf_model(out->staging(), q.model, hf.config, {.dtype = rc.dtype});
  }
  for (auto& f : copy_hf_side_files(rc.model, out->staging())) files.push_back(f);
  out->commit();

  std::printf("quantized %s with %s, %d-bit, group %s in %.1f s%s (%s backend)\n", rc.model.string().c_str(),
              method.c_str(), q.grid.bits, q.group_size < 0 ? "row" : std::to_string(q.group_size).c_str(),
              q.timings.total, learning, rc.cuda ? "cuda" : "cpu");
  if (fp_ppl && q_ppl)
    std::printf("perplexity on %s: %.4f before, %.4f after (%td windows of %td)\n", rc.eval.string().c_str(), *fp_ppl,
                *q_ppl, index_t(eval.shape()[0]), index_t(eval.shape()[1]));
  if (rc.gptq)
    std::printf("wrote %s: a GPTQ checkpoint (%d-bit, %s, checkpoint_format %s%s): ", out->target().string().c_str(),
                q.grid.bits, q.grid.symmetric ? "symmetric" : "asymmetric", q.grid.symmetric ? "gptq" : "gptq_v2",
                q.rotation ? ", rotated" : "");
  else
    std::printf("wrote %s: a Hugging Face folder (%s dequantized weights%s): ", out->target().string().c_str(),
                std::string(rsq::io::to_string(rc.dtype)).c_str(), q.rotation ? ", rotated" : "");
  for (std::size_t i = 0; i < files.size(); ++i) std::printf("%s%s", i ? ", " : "", files[i].c_str());
  std::printf("\n");
  report_imatrix();
  if (!rc.gptq) {
    std::printf("load it with transformers (AutoModelForCausalLM.from_pretrained) or vLLM as an unquantized model\n");
    return 0;
  }
  for (auto const& v : check_gptq_checkpoint(out->target()))
    std::printf("%-22s %s: %s\n", v.engine.c_str(), v.loads ? "loads it" : "does not load it", v.why.c_str());
  return 0;
}

/// --check DIR: which engines load a GPTQ checkpoint.
int check(fs::path const& dir) {
  if (!fs::is_directory(dir)) throw usage_error("--check " + dir.string() + ": is not a folder");
  for (auto const& v : check_gptq_checkpoint(dir))
    std::printf("%-22s %s: %s\n", v.engine.c_str(), v.loads ? "loads it" : "does not load it", v.why.c_str());
  return 0;
}

int run(rsq_cli::args const& a) {
  if (a.has("check")) return check(a.get("check"));
  auto const rc = parse_config(a);
  return rsq_cli::on_backend(rc.cuda, [&](auto const& be) { return run(be, a, rc); });
}

}  // namespace

int main(int argc, char** argv) {
  return rsq_cli::exit_status("rsq-quantize", [&] {
    for (int i = 1; i < argc; ++i)
      if (std::string_view(argv[i]) == "-h") {
        std::fputs(usage().c_str(), stdout);
        return 0;
      }
    rsq_cli::args a(argc, argv, {"act-order", "asym", "overwrite", "quiet", "help", "calib-bos", "diagnostics"},
                    rsq_cli::with_learned_rotation_options(
                        {"model", "calib", "nsamples", "seqlen", "seed", "eval", "eval-seqlen", "eval-windows",
                         "method", "bits", "group-size", "rotation", "backend", "out", "format", "dtype", "check",
                         "gguf-type", "imatrix", "policy", "r-min", "r-max", "importance-power", "expand",
                         "importance-choice", "held-out"}));
    if (a.flag("help") || argc == 1) {
      std::fputs(usage().c_str(), stdout);
      return argc == 1 ? 2 : 0;
    }
    return run(a);
  });
}
