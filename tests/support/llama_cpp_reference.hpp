// SPDX-License-Identifier: MIT
#pragma once
// What llama.cpp computes for a llama GGUF on the CPU, computed by llama.cpp's own CPU backend: the reference that
// tests/model/gguf_llama_cpp_test.cpp holds llama.cpp's greedy continuations to.
//
// Why the kernels themselves and not their formulas: with block weights ggml's CPU matmul quantizes the activations
// (Q8_0 blocks for Q4_0 and Q8_0 weights, Q8_1 for Q4_1, fp16 for F16 weights), and flash attention reads K and V
// as fp16. A rounding step turns a difference in the last bit of its input into a whole step wherever the input
// sits near a boundary, so a reference that differs from llama.cpp only in the order of float additions (llamafile's
// sgemm, the repacked gemm, ggml's vectorised expf) still drifts from it: emulations of the formulas (the linears
// through the library's from_float and vec_dot, attention written out) gave mean losses 0.01-0.04% away from
// llama.cpp's and flipped near-ties. Through the same kernels the logits are llama.cpp's, bit for bit.
//
// ggml_cpu opens the CPU backend of node-llama-cpp's prebuilt llama.cpp as libggml picks it (the
// libggml-cpu-<variant>.so with the highest ggml_backend_score on this machine) with libggml-base.so, and checks the
// type traits (ggml_get_type_traits_cpu: the vec_dot_type of each weight type) and, where the library has it, that
// the activation quantizer of repacked Q4_0 weights (ggml_quantize_mat_q8_0_4x8) gives the blocks of the plain one.
//
// llama_cpp_reference builds llama.cpp's llama graph (src/models/llama.cpp) with ggml's C API and computes it with
// ggml_graph_compute_with_ctx on one thread, batch by batch as llama.cpp gets the tokens (a window or a prompt at
// once, then one token at a time): per layer RMSNorm·g (ggml_rms_norm, ggml_mul), the Q, K and V matmuls
// (ggml_mul_mat on the weights as stored), RoPE (ggml_rope_ext, normal mode, no scaling), K and V rounded to fp16
// into the cache, attention by ggml_flash_attn_ext over the cache with a causal mask and scale 1/sqrtf(head_dim),
// the output matmul, the residual, RMSNorm·g, ggml_swiglu_split of the gate and up matmuls, the down matmul, the
// residual; then RMSNorm·g and the classifier (output.weight, or token_embd.weight when tied). That is llama.cpp
// with node-llama-cpp's defaults: flash attention "auto" (on for the CPU) and an F16 KV cache; with flash attention
// llama.cpp casts an F32 cache to F16 anyway. ggml picks the attention kernel: for fewer than 64 queries Q is
// converted to fp16 and V summed in an fp16 vector, for 64 or more (head_dim a multiple of the SIMD width) a tiled
// kernel works in float. The weights are placed as llama.cpp places them: Q4_0 matrices with a multiple of 8 rows
// in the CPU_REPACK buffer type on AVX2 machines (repacked to Q4_0_8x8, computed by the repacked gemm and gemv),
// everything else in the plain CPU buffer. The thread count does not change ggml's results (each output element is
// computed by one thread in a fixed order).

#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <rsq/io/gguf.hpp>
#include <rsq/model/gguf.hpp>

namespace rsq_test {

/// The CPU backend of llama.cpp (libggml-cpu-<variant>.so) that libggml loads on this machine, and the functions of
/// ggml's C API (libggml-base.so) the reference calls.
struct ggml_cpu {
  /// ggml_type values (ggml.h; fixed across versions).
  enum type : int { f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q8_0 = 8, q8_1 = 9, i32 = 26 };
  using from_float_fn = void (*)(float const* x, void* y, std::int64_t k);
  using vec_dot_fn = void (*)(int n, float* s, std::size_t bs, void const* x, std::size_t bx, void const* y,
                              std::size_t by, int nrc);
  /// ggml-cpu.h's struct ggml_type_traits_cpu.
  struct traits {
    from_float_fn from_float;
    vec_dot_fn vec_dot;
    int vec_dot_type;
    std::int64_t nrows;
  };
  /// ggml.h's struct ggml_init_params.
  struct init_params {
    std::size_t mem_size;
    void* mem_buffer;
    bool no_alloc;
  };
  struct context;      // ggml_context
  struct tensor;       // ggml_tensor
  struct graph;        // ggml_cgraph
  struct buffer;       // ggml_backend_buffer
  struct buffer_type;  // ggml_backend_buffer_type

  std::filesystem::path library;  ///< the variant libggml would load
  int score = 0;                  ///< its ggml_backend_score
  bool repacks_q4_0 = false;      ///< ggml_cpu_has_avx2(): Q4_0 matrices with 8k rows go to CPU_REPACK

  traits const* (*get_traits)(int type) = nullptr;
  /// ggml_quantize_mat_t<8, GGML_TYPE_Q8_0>: the activations of repacked Q4_0_8x8 weights, 4 rows at a time (a C++
  /// symbol; null when the library has none).
  void (*quantize_mat_q8_0_4x8)(float const* x, void* y, std::int64_t nrow, std::int64_t n_per_row) = nullptr;
  std::size_t (*row_size)(int type, std::int64_t ne) = nullptr;
  std::uint16_t (*fp32_to_fp16)(float) = nullptr;
  context* (*init)(init_params) = nullptr;
  void (*free)(context*) = nullptr;
  std::size_t (*tensor_overhead)() = nullptr;
  tensor* (*new_tensor_1d)(context*, int type, std::int64_t) = nullptr;
  tensor* (*new_tensor_2d)(context*, int type, std::int64_t, std::int64_t) = nullptr;
  tensor* (*new_tensor_3d)(context*, int type, std::int64_t, std::int64_t, std::int64_t) = nullptr;
  void* (*get_data)(tensor const*) = nullptr;
  std::size_t (*nbytes)(tensor const*) = nullptr;
  tensor* (*rms_norm)(context*, tensor*, float eps) = nullptr;
  tensor* (*mul)(context*, tensor*, tensor*) = nullptr;
  tensor* (*add)(context*, tensor*, tensor*) = nullptr;
  tensor* (*mul_mat)(context*, tensor*, tensor*) = nullptr;
  tensor* (*reshape_2d)(context*, tensor*, std::int64_t, std::int64_t) = nullptr;
  tensor* (*reshape_3d)(context*, tensor*, std::int64_t, std::int64_t, std::int64_t) = nullptr;
  tensor* (*permute)(context*, tensor*, int, int, int, int) = nullptr;
  tensor* (*rope_ext)(context*, tensor* a, tensor* pos, tensor* freq_factors, int n_dims, int mode, int n_ctx_orig,
                      float freq_base, float freq_scale, float ext_factor, float attn_factor, float beta_fast,
                      float beta_slow) = nullptr;
  tensor* (*swiglu_split)(context*, tensor* gate, tensor* up) = nullptr;
  tensor* (*flash_attn_ext)(context*, tensor* q, tensor* k, tensor* v, tensor* mask, float scale, float max_bias,
                            float logit_softcap) = nullptr;
  graph* (*new_graph)(context*) = nullptr;
  void (*build_forward_expand)(graph*, tensor*) = nullptr;
  int (*graph_compute_with_ctx)(context*, graph*, int n_threads) = nullptr;
  buffer_type* (*cpu_buffer_type)() = nullptr;
  buffer_type* (*repack_buffer_type)() = nullptr;  // a C++ symbol of the CPU library
  buffer* (*alloc_ctx_tensors_from_buft)(context*, buffer_type*) = nullptr;
  void (*tensor_set)(tensor*, void const* data, std::size_t offset, std::size_t size) = nullptr;
  void (*buffer_free)(buffer*) = nullptr;

  /// The variant of @p dir with the highest ggml_backend_score (ggml_backend_load_best's rule), or nothing when the
  /// libraries are absent, lack a function or disagree with the layouts declared here (then @p why says which).
  static std::optional<ggml_cpu> open(std::filesystem::path const& dir, std::string* why = nullptr) {
    auto fail = [&](std::string const& s) {
      if (why) *why = s;
      return std::nullopt;
    };
    void* base = dlopen((dir / "libggml-base.so").c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!base) return fail(std::string("libggml-base.so: ") + dlerror());
    ggml_cpu g;
    for (auto const& e : std::filesystem::directory_iterator(dir)) {
      auto const name = e.path().filename().string();
      if (!name.starts_with("libggml-cpu-") || !name.ends_with(".so")) continue;
      void* h = dlopen(e.path().c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!h) continue;
      auto const score_fn = reinterpret_cast<int (*)()>(dlsym(h, "ggml_backend_score"));
      int const s = score_fn ? score_fn() : 0;
      if (s > g.score) {
        g.score = s;
        g.library = e.path();
      }
      dlclose(h);
    }
    if (g.score == 0) return fail("no libggml-cpu-*.so in " + dir.string() + " runs on this machine");
    void* cpu = dlopen(g.library.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!cpu) return fail(g.library.string() + ": " + dlerror());
    std::string missing;
    auto sym = [&](void* h, auto& fn, char const* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
      if (!fn) missing += std::string(missing.empty() ? "" : ", ") + name;
    };
    void (*cpu_init)() = nullptr;
    int (*has_avx2)() = nullptr;
    sym(cpu, cpu_init, "ggml_cpu_init");
    sym(cpu, has_avx2, "ggml_cpu_has_avx2");
    sym(cpu, g.get_traits, "ggml_get_type_traits_cpu");
    sym(cpu, g.graph_compute_with_ctx, "ggml_graph_compute_with_ctx");
    sym(cpu, g.repack_buffer_type, "_Z35ggml_backend_cpu_repack_buffer_typev");
    sym(base, g.row_size, "ggml_row_size");
    sym(base, g.fp32_to_fp16, "ggml_fp32_to_fp16");
    sym(base, g.init, "ggml_init");
    sym(base, g.free, "ggml_free");
    sym(base, g.tensor_overhead, "ggml_tensor_overhead");
    sym(base, g.new_tensor_1d, "ggml_new_tensor_1d");
    sym(base, g.new_tensor_2d, "ggml_new_tensor_2d");
    sym(base, g.new_tensor_3d, "ggml_new_tensor_3d");
    sym(base, g.get_data, "ggml_get_data");
    sym(base, g.nbytes, "ggml_nbytes");
    sym(base, g.rms_norm, "ggml_rms_norm");
    sym(base, g.mul, "ggml_mul");
    sym(base, g.add, "ggml_add");
    sym(base, g.mul_mat, "ggml_mul_mat");
    sym(base, g.reshape_2d, "ggml_reshape_2d");
    sym(base, g.reshape_3d, "ggml_reshape_3d");
    sym(base, g.permute, "ggml_permute");
    sym(base, g.rope_ext, "ggml_rope_ext");
    sym(base, g.swiglu_split, "ggml_swiglu_split");
    sym(base, g.flash_attn_ext, "ggml_flash_attn_ext");
    sym(base, g.new_graph, "ggml_new_graph");
    sym(base, g.build_forward_expand, "ggml_build_forward_expand");
    sym(base, g.cpu_buffer_type, "ggml_backend_cpu_buffer_type");
    sym(base, g.alloc_ctx_tensors_from_buft, "ggml_backend_alloc_ctx_tensors_from_buft");
    sym(base, g.tensor_set, "ggml_backend_tensor_set");
    sym(base, g.buffer_free, "ggml_backend_buffer_free");
    if (!missing.empty()) return fail(g.library.string() + " and libggml-base.so lack " + missing);
    g.quantize_mat_q8_0_4x8 = reinterpret_cast<decltype(g.quantize_mat_q8_0_4x8)>(
        dlsym(cpu, "_Z19ggml_quantize_mat_tILl8EL9ggml_type8EEvPKfPvll"));
    // ggml logs each repacked tensor (GGML_LOG_LEVEL_DEBUG, 1) to stderr: keep warnings (3) and errors (4) only
    using log_fn = void (*)(int level, char const* text, void* user);
    if (auto const set_log = reinterpret_cast<void (*)(log_fn, void*)>(dlsym(base, "ggml_log_set")))
      set_log([](int level, char const* text, void*) { if (level == 3 || level == 4) std::fputs(text, stderr); },
              nullptr);
    cpu_init();
    g.repacks_q4_0 = has_avx2() != 0;
    // The layout of ggml_type_traits_cpu as declared above, and the activation types ggml's matmul converts to.
    for (auto [t, want] : {std::pair{q4_0, q8_0}, {q4_1, q8_1}, {q8_0, q8_0}, {f16, f16}, {f32, f32}}) {
      auto const* tr = g.get_traits(t);
      if (!tr || !tr->vec_dot || tr->vec_dot_type != want || !g.get_traits(want)->from_float)
        return fail(g.library.string() + ": ggml_type_traits_cpu of type " + std::to_string(t) +
                    " is not {from_float, vec_dot, vec_dot_type " + std::to_string(want) + ", nrows}");
    }
    return g;
  }

  [[nodiscard]] traits const& of(int t) const { return *get_traits(t); }

  /// Whether the repacked path's activation quantizer (4 rows interleaved in groups of 8 quants, block_q8_0x4: 4
  /// fp16 scales then 128 quants) gives the blocks from_float gives, on @p rows (4 rows of @p k values). Nothing
  /// when the library has no such symbol.
  [[nodiscard]] std::optional<bool> repacked_activations_match(std::span<const float> rows, std::int64_t k) const {
    if (!quantize_mat_q8_0_4x8) return std::nullopt;
    std::int64_t const nb = k / 32;
    std::vector<unsigned char> mat(std::size_t(nb) * (8 + 128));
    quantize_mat_q8_0_4x8(rows.data(), mat.data(), 4, k);
    std::vector<unsigned char> row(row_size(q8_0, k));
    for (int r = 0; r < 4; ++r) {
      of(q8_0).from_float(rows.data() + r * k, row.data(), k);
      for (std::int64_t b = 0; b < nb; ++b) {
        unsigned char const* x4 = mat.data() + b * 136;
        unsigned char const* x1 = row.data() + b * 34;
        if (std::memcmp(x4 + 2 * r, x1, 2) != 0) return false;
        for (int j = 0; j < 32; ++j)  // quant j of row r: group j/8 of 32 bytes, row r's 8 bytes in it
          if (x4[8 + (j / 8) * 32 + r * 8 + j % 8] != x1[2 + j]) return false;
      }
    }
    return true;
  }
};

/// llama.cpp's CPU forward pass of a llama GGUF by ggml's own kernels (see the file comment), batch by batch with
/// a KV cache.
class llama_cpp_reference {
 public:
  llama_cpp_reference(ggml_cpu const& cpu, std::filesystem::path const& path)
      : g_(&cpu), file_(rsq::io::gguf_file::open(path)), model_(rsq::model::load_gguf_model(path)) {
    auto const& c = model_.config;
    if (file_.find_tensor("rope_freqs.weight") || c.qkv_bias || c.o_bias || c.mlp_bias)
      throw std::invalid_argument(path.string() + ": the reference runs plain llama models (no RoPE scaling, no biases)");
    // Two weight contexts: the matrices llama.cpp repacks, and the rest; then one buffer each, filled from the file.
    std::size_t const n_tensors = file_.tensors().size() + 1;
    weights_[0] = g_->init({n_tensors * g_->tensor_overhead(), nullptr, true});
    weights_[1] = g_->init({n_tensors * g_->tensor_overhead(), nullptr, true});
    std::vector<std::pair<ggml_cpu::tensor*, rsq::io::gguf_tensor_info const*>> fill;
    auto weight = [&](std::string const& name) {
      auto const& t = file_.tensor(name);
      int const type = int(t.type);  // rsq's pack::ggml_type holds ggml's numbers
      bool const repack = g_->repacks_q4_0 && type == ggml_cpu::q4_0 && t.ne.size() == 2 && t.ne[1] % 8 == 0;
      auto* w = t.ne.size() == 1 ? g_->new_tensor_1d(weights_[repack], type, t.ne[0])
                                 : g_->new_tensor_2d(weights_[repack], type, t.ne[0], t.ne[1]);
      fill.emplace_back(w, &t);
      return w;
    };
    for (int l = 0; l < c.n_layers; ++l) {
      std::string const p = "blk." + std::to_string(l) + ".";
      layer L;
      L.attn_norm = weight(p + "attn_norm.weight");
      L.ffn_norm = weight(p + "ffn_norm.weight");
      for (auto id : rsq::model::all_linears)
        L.w[std::size_t(id)] = weight(rsq::model::detail::gguf_linear_name(l, id));
      layers_.push_back(L);
    }
    output_norm_ = weight("output_norm.weight");
    output_ = weight(file_.find_tensor("output.weight") ? "output.weight" : "token_embd.weight");
    for (int i = 0; i < 2; ++i) {
      buffers_[i] = g_->alloc_ctx_tensors_from_buft(weights_[i], i ? g_->repack_buffer_type() : g_->cpu_buffer_type());
      if (!buffers_[i] && i == 0) throw std::runtime_error("ggml_backend_alloc_ctx_tensors_from_buft failed");
    }
    for (auto [w, t] : fill) g_->tensor_set(w, file_.bytes(*t).data(), 0, g_->nbytes(w));
    k_cache_.resize(std::size_t(c.n_layers));
    v_cache_.resize(std::size_t(c.n_layers));
    scratch_.reset(new std::byte[scratch_bytes]);
  }
  llama_cpp_reference(llama_cpp_reference const&) = delete;
  llama_cpp_reference& operator=(llama_cpp_reference const&) = delete;
  ~llama_cpp_reference() {
    for (int i = 0; i < 2; ++i) {
      if (buffers_[i]) g_->buffer_free(buffers_[i]);
      if (weights_[i]) g_->free(weights_[i]);
    }
  }

  [[nodiscard]] rsq::model::llama_config const& config() const noexcept { return model_.config; }

  /// Forgets the tokens evaluated so far (the next batch starts at position 0).
  void clear() {
    for (auto& k : k_cache_) k.clear();
    for (auto& v : v_cache_) v.clear();
    n_past_ = 0;
  }

  /// Evaluates @p tokens as one batch after those evaluated so far; returns the logits after each, (tokens, vocab).
  std::vector<std::vector<float>> eval(std::span<const std::int32_t> tokens) {
    auto const& c = model_.config;
    std::int64_t const n = std::int64_t(tokens.size()), d = c.dim, hs = c.head_size(), n_kv = n_past_ + n;
    std::vector<float> x(std::size_t(n * d));  // (n, dim): the residual stream between graphs
    for (std::int64_t t = 0; t < n; ++t)
      std::copy_n(model_.token_embedding.begin() + std::ptrdiff_t(tokens[std::size_t(t)]) * d, d,
                  x.begin() + t * d);
    float const eps = c.norm_eps;
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      auto const& L = layers_[l];
      auto w = [&](rsq::model::linear_id id) { return L.w[std::size_t(id)]; };
      std::vector<float> q;  // (n, n_heads, head_dim) after RoPE
      {
        auto* ctx = scratch();
        auto* in = input(ctx, ggml_cpu::f32, x.data(), d, n);
        auto* pos = g_->new_tensor_1d(ctx, ggml_cpu::i32, n);
        auto* p = static_cast<std::int32_t*>(g_->get_data(pos));
        for (std::int64_t t = 0; t < n; ++t) p[t] = std::int32_t(n_past_ + t);
        auto* cur = g_->mul(ctx, g_->rms_norm(ctx, in, eps), L.attn_norm);
        auto rope = [&](ggml_cpu::tensor* a, std::int64_t heads) {
          return g_->rope_ext(ctx, g_->reshape_3d(ctx, a, hs, heads, n), pos, nullptr, int(hs), 0, c.seq_len,
                              float(c.rope_theta), 1.0f, 0.0f, 1.0f, 32.0f, 1.0f);
        };
        auto* tq = rope(g_->mul_mat(ctx, w(rsq::model::linear_id::wq), cur), c.n_heads);
        auto* tk = rope(g_->mul_mat(ctx, w(rsq::model::linear_id::wk), cur), c.n_kv_heads);
        auto* tv = g_->mul_mat(ctx, w(rsq::model::linear_id::wv), cur);
        compute(ctx, {tq, tk, tv});
        q = output(tq);
        auto const k = output(tk), v = output(tv);  // (n, kv_dim) each
        auto append = [&](std::vector<std::uint16_t>& cache, std::vector<float> const& rows) {
          std::size_t const at = cache.size();
          cache.resize(at + rows.size());
          g_->of(ggml_cpu::f16).from_float(rows.data(), cache.data() + at, std::int64_t(rows.size()));
        };
        append(k_cache_[l], k);
        append(v_cache_[l], v);
        g_->free(ctx);
      }
      {
        auto* ctx = scratch();
        auto* tq = g_->permute(ctx, input(ctx, ggml_cpu::f32, q.data(), hs, c.n_heads, n), 0, 2, 1, 3);
        auto* tk = g_->new_tensor_3d(ctx, ggml_cpu::f16, hs, n_kv, c.n_kv_heads);
        auto* tv = g_->new_tensor_3d(ctx, ggml_cpu::f16, hs, n_kv, c.n_kv_heads);
        auto* mask = g_->new_tensor_2d(ctx, ggml_cpu::f16, n_kv, n);
        auto* dk = static_cast<std::uint16_t*>(g_->get_data(tk));
        auto* dv = static_cast<std::uint16_t*>(g_->get_data(tv));
        auto* dm = static_cast<std::uint16_t*>(g_->get_data(mask));
        for (std::int64_t h = 0; h < c.n_kv_heads; ++h)  // the cache is (n_kv, n_kv_heads, head_dim)
          for (std::int64_t j = 0; j < n_kv; ++j) {
            std::size_t const from = std::size_t((j * c.n_kv_heads + h) * hs), to = std::size_t((h * n_kv + j) * hs);
            std::copy_n(k_cache_[l].data() + from, hs, dk + to);
            std::copy_n(v_cache_[l].data() + from, hs, dv + to);
          }
        std::uint16_t const zero = g_->fp32_to_fp16(0.0f), minus_inf = g_->fp32_to_fp16(-INFINITY);
        for (std::int64_t i = 0; i < n; ++i)
          for (std::int64_t j = 0; j < n_kv; ++j) dm[i * n_kv + j] = j <= n_past_ + i ? zero : minus_inf;
        auto* att = g_->flash_attn_ext(ctx, tq, tk, tv, mask, 1.0f / std::sqrt(float(hs)), 0.0f, 0.0f);
        auto* cur = g_->mul_mat(ctx, w(rsq::model::linear_id::wo), g_->reshape_2d(ctx, att, hs * c.n_heads, n));
        auto* ffn_inp = g_->add(ctx, cur, input(ctx, ggml_cpu::f32, x.data(), d, n));
        cur = g_->mul(ctx, g_->rms_norm(ctx, ffn_inp, eps), L.ffn_norm);
        auto* up = g_->mul_mat(ctx, w(rsq::model::linear_id::w3), cur);
        auto* gate = g_->mul_mat(ctx, w(rsq::model::linear_id::w1), cur);
        cur = g_->mul_mat(ctx, w(rsq::model::linear_id::w2), g_->swiglu_split(ctx, gate, up));
        cur = g_->add(ctx, cur, ffn_inp);
        compute(ctx, {cur});
        x = output(cur);
        g_->free(ctx);
      }
    }
    n_past_ += n;
    auto* ctx = scratch();
    auto* cur = g_->mul(ctx, g_->rms_norm(ctx, input(ctx, ggml_cpu::f32, x.data(), d, n), eps), output_norm_);
    auto* out = g_->mul_mat(ctx, output_, cur);
    compute(ctx, {out});
    auto const all = output(out);
    g_->free(ctx);
    std::vector<std::vector<float>> logits(static_cast<std::size_t>(n));
    std::size_t const V = std::size_t(c.vocab_size);
    for (std::size_t t = 0; t < logits.size(); ++t)
      logits[t].assign(all.begin() + std::ptrdiff_t(t * V), all.begin() + std::ptrdiff_t((t + 1) * V));
    return logits;
  }

  /// The greedy continuation of @p prompt by @p n tokens as evaluate.mjs runs it (the prompt as one batch, then
  /// one token at a time; the first of equal logits).
  std::vector<std::int32_t> greedy(std::vector<std::int32_t> const& prompt, int n) {
    clear();
    auto logits = eval(prompt).back();
    std::vector<std::int32_t> out;
    for (int i = 0; i < n; ++i) {
      out.push_back(std::int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin()));
      if (i + 1 < n) logits = eval(std::span(&out.back(), 1)).back();
    }
    return out;
  }

  /// The logits after @p prompt and then @p continuation, evaluated as greedy() evaluates them.
  std::vector<float> logits_after(std::vector<std::int32_t> const& prompt, std::span<const std::int32_t> continuation) {
    clear();
    auto logits = eval(prompt).back();
    for (auto t : continuation) logits = eval(std::span(&t, 1)).back();
    return logits;
  }

  /// Σ −log p(next token) over @p window evaluated as one batch from position 0 (window.size() − 1 predictions),
  /// with evaluate.mjs's arithmetic: node-llama-cpp's addon sorts the logits in descending order and computes the
  /// probabilities in float (expf(l − max), summed in that order, divided by the sum); JavaScript adds −log(p) in
  /// double.
  double window_loss(std::span<const std::int32_t> window) {
    clear();
    auto const logits = eval(window.first(window.size() - 1));
    double sum = 0;
    std::vector<float> sorted;
    for (std::size_t i = 0; i + 1 < window.size(); ++i) {
      sorted = logits[i];
      std::sort(sorted.begin(), sorted.end(), std::greater<>());
      float total = 0.0f;
      for (float l : sorted) total += std::exp(l - sorted.front());
      sum -= std::log(double(std::exp(logits[i][std::size_t(window[i + 1])] - sorted.front()) / total));
    }
    return sum;
  }

 private:
  struct layer {
    ggml_cpu::tensor* attn_norm = nullptr;
    ggml_cpu::tensor* ffn_norm = nullptr;
    std::array<ggml_cpu::tensor*, 7> w{};  // in linear_id order
  };

  /// A context for one graph on the reusable scratch memory.
  ggml_cpu::context* scratch() { return g_->init({scratch_bytes, scratch_.get(), false}); }

  /// A new tensor of (ne0, ne1[, ne2]) holding @p data.
  template <class T>
  ggml_cpu::tensor* input(ggml_cpu::context* ctx, int type, T const* data, std::int64_t ne0, std::int64_t ne1,
                          std::int64_t ne2 = 1) {
    auto* t = ne2 == 1 ? g_->new_tensor_2d(ctx, type, ne0, ne1) : g_->new_tensor_3d(ctx, type, ne0, ne1, ne2);
    std::memcpy(g_->get_data(t), data, g_->nbytes(t));
    return t;
  }

  void compute(ggml_cpu::context* ctx, std::initializer_list<ggml_cpu::tensor*> outs) {
    auto* gf = g_->new_graph(ctx);
    for (auto* t : outs) g_->build_forward_expand(gf, t);
    if (g_->graph_compute_with_ctx(ctx, gf, 1) != 0) throw std::runtime_error("ggml_graph_compute_with_ctx failed");
  }

  /// The values of a contiguous F32 tensor.
  std::vector<float> output(ggml_cpu::tensor const* t) const {
    auto const* p = static_cast<float const*>(g_->get_data(t));
    return {p, p + g_->nbytes(t) / sizeof(float)};
  }

  ggml_cpu const* g_;
  rsq::io::gguf_file file_;
  rsq::model::llama_model model_;  // the embedding rows (get_rows copies them) and the config
  ggml_cpu::context* weights_[2] = {nullptr, nullptr};  // [0] the CPU buffer type, [1] CPU_REPACK
  ggml_cpu::buffer* buffers_[2] = {nullptr, nullptr};
  std::vector<layer> layers_;
  ggml_cpu::tensor* output_norm_ = nullptr;
  ggml_cpu::tensor* output_ = nullptr;
  std::vector<std::vector<std::uint16_t>> k_cache_, v_cache_;  // per layer: (positions, kv_dim) in fp16
  static constexpr std::size_t scratch_bytes = std::size_t(64) << 20;  // ample for a 128-token window of lm7m
  std::unique_ptr<std::byte[]> scratch_;
  std::int64_t n_past_ = 0;
};

}  // namespace rsq_test
