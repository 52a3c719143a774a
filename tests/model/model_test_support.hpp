// SPDX-License-Identifier: MIT
#pragma once
// Helpers of the model tests: a seeded random Llama model, the TinyStories split, and an independent float64
// reference forward written token by token in the style of llama2c's run.c (a KV cache, loops, no Eigen), which
// records every intermediate the hooks of rsq::model::forward_layer hand out.

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <rsq/model/llama.hpp>

namespace rsq_test {

/// Uniform floats in [-a, a] from a fixed-seed mt19937 (the engine's output is specified by the standard).
struct uniform_source {
  explicit uniform_source(std::uint32_t seed) : g(seed) {}
  float operator()(float a) { return a * (2.f * float(g() >> 8) / float(1u << 24) - 1.f); }
  std::mt19937 g;
};

inline rsq::model::llama_model random_model(rsq::model::llama_config const& c, std::uint32_t seed,
                                            bool tied_classifier = true) {
  using namespace rsq::model;
  uniform_source u(seed);
  auto mat = [&](rsq::index_t r, rsq::index_t k, float a) {
    rsq::matrix<float> m(rsq::matrix<float>::shape_type{std::size_t(r), std::size_t(k)});
    for (auto& x : m) x = u(a);
    return m;
  };
  auto gains = [&](rsq::index_t n) {
    rsq::vector<float> g(rsq::vector<float>::shape_type{std::size_t(n)});
    for (auto& x : g) x = 1.f + u(0.3f);
    return g;
  };
  llama_model m;
  m.config = c;
  m.token_embedding = mat(c.vocab_size, c.dim, 1.f);
  float const sd = 1.f / std::sqrt(float(c.dim)), sh = 1.f / std::sqrt(float(c.hidden_dim));
  for (int l = 0; l < c.n_layers; ++l) {
    decoder_layer L;
    L.rms_att = gains(c.dim);
    L.wq = mat(c.q_dim(), c.dim, 2 * sd);
    L.wk = mat(c.kv_dim(), c.dim, 2 * sd);
    L.wv = mat(c.kv_dim(), c.dim, sd);
    L.wo = mat(c.dim, c.q_dim(), sd);
    L.rms_ffn = gains(c.dim);
    L.w1 = mat(c.hidden_dim, c.dim, sd);
    L.w2 = mat(c.dim, c.hidden_dim, sh);
    L.w3 = mat(c.hidden_dim, c.dim, sd);
    m.layers.push_back(std::move(L));
  }
  m.rms_final = gains(c.dim);
  m.classifier = tied_classifier ? m.token_embedding : mat(c.vocab_size, c.dim, 1.f);
  return m;
}

/// A small GQA config: 4 query heads of size 8 sharing 2 KV heads.
inline rsq::model::llama_config tiny_config() {
  rsq::model::llama_config c;
  c.dim = 32;
  c.hidden_dim = 48;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 40;
  c.seq_len = 16;
  return c;
}

/// The stories of tinystories_val.txt: the text split at every blank line ("\n\n"). The last element (after the
/// final blank line) is empty and dropped.
inline std::vector<std::string> split_stories(std::string const& text) {
  std::vector<std::string> out;
  std::size_t p = 0;
  for (;;) {
    auto q = text.find("\n\n", p);
    if (q == std::string::npos) {
      if (p < text.size()) out.push_back(text.substr(p));
      break;
    }
    out.push_back(text.substr(p, q - p));
    p = q + 2;
  }
  return out;
}

/// Everything the float64 reference computes for one layer of one sequence (row-major, L rows).
struct ref_layer_trace {
  std::vector<double> attn_in;    // (L, dim)   RMSNorm output: the input of wq, wk, wv
  std::vector<double> q, k, v;    // (L, dim), (L, kv_dim) x2; q and k after RoPE
  std::vector<double> q_linear;   // (L, dim)   wq·x before RoPE
  std::vector<double> probs;      // (heads, L, L)
  std::vector<double> attn_out;   // (L, dim)   the input of wo (before any transform)
  std::vector<double> wo_out;     // (L, dim)
  std::vector<double> ffn_in;     // (L, dim)   the input of w1, w3
  std::vector<double> hidden;     // (L, hidden) silu(w1 x) * w3 x: the input of w2
  std::vector<double> w2_out;     // (L, dim)
  std::vector<double> out;        // (L, dim)   the layer's output
};

struct ref_trace {
  std::vector<ref_layer_trace> layers;
  std::vector<double> logits;  // (L, vocab)
};

/// Independent float64 forward of one sequence, token by token with a KV cache (as llama2c's run.c does it).
inline ref_trace reference_forward(rsq::model::llama_model const& m, std::vector<std::int32_t> const& tokens) {
  auto const& c = m.config;
  int const D = c.dim, F = c.hidden_dim, H = c.n_heads, hs = D / H, KV = c.n_kv_heads * hs, V = c.vocab_size;
  int const L = int(tokens.size()), group = c.n_heads / c.n_kv_heads;
  ref_trace tr;
  tr.layers.resize(std::size_t(c.n_layers));
  for (auto& t : tr.layers) {
    for (auto* v : {&t.attn_in, &t.q, &t.q_linear, &t.attn_out, &t.wo_out, &t.ffn_in, &t.w2_out, &t.out})
      v->assign(std::size_t(L * D), 0.0);
    t.k.assign(std::size_t(L * KV), 0.0);
    t.v.assign(std::size_t(L * KV), 0.0);
    t.hidden.assign(std::size_t(L * F), 0.0);
    t.probs.assign(std::size_t(H * L * L), 0.0);
  }
  tr.logits.assign(std::size_t(L * V), 0.0);
  auto rmsnorm = [&](double const* x, float const* g, double* y) {
    double ss = 0;
    for (int j = 0; j < D; ++j) ss += x[j] * x[j];
    double const inv = 1.0 / std::sqrt(ss / D + double(c.norm_eps));
    for (int j = 0; j < D; ++j) y[j] = double(g[j]) * x[j] * inv;
  };
  auto matvec = [](rsq::matrix<float> const& w, double const* x, double* y) {
    std::size_t const rows = w.shape()[0], cols = w.shape()[1];
    for (std::size_t r = 0; r < rows; ++r) {
      double s = 0;
      for (std::size_t k = 0; k < cols; ++k) s += double(w(r, k)) * x[k];
      y[r] = s;
    }
  };
  for (int pos = 0; pos < L; ++pos) {
    std::vector<double> x(static_cast<std::size_t>(D));
    for (int j = 0; j < D; ++j) x[std::size_t(j)] = double(m.token_embedding(std::size_t(tokens[std::size_t(pos)]), std::size_t(j)));
    for (int l = 0; l < c.n_layers; ++l) {
      auto const& W = m.layers[std::size_t(l)];
      auto& t = tr.layers[std::size_t(l)];
      double* xin = &t.attn_in[std::size_t(pos * D)];
      rmsnorm(x.data(), W.rms_att.data(), xin);
      double* q = &t.q[std::size_t(pos * D)];
      double* k = &t.k[std::size_t(pos * KV)];
      matvec(W.wq, xin, q);
      std::copy(q, q + D, &t.q_linear[std::size_t(pos * D)]);
      matvec(W.wk, xin, k);
      matvec(W.wv, xin, &t.v[std::size_t(pos * KV)]);
      // RoPE on the pairs (2i, 2i+1) of each head; i counts pairs within the head.
      for (int j = 0; j < D; j += 2) {
        int const i = (j % hs) / 2;
        double const ang = pos * std::pow(10000.0, -2.0 * i / hs);
        double const cs = std::cos(ang), sn = std::sin(ang);
        auto rot = [&](double* v) {
          double const a = v[j], b = v[j + 1];
          v[j] = a * cs - b * sn;
          v[j + 1] = a * sn + b * cs;
        };
        rot(q);
        if (j < KV) rot(k);
      }
      double* ao = &t.attn_out[std::size_t(pos * D)];
      for (int h = 0; h < H; ++h) {
        int const g = h / group;
        std::vector<double> sc(static_cast<std::size_t>(pos + 1));
        double mx = -1e300;
        for (int s = 0; s <= pos; ++s) {
          double d = 0;
          for (int e = 0; e < hs; ++e) d += q[h * hs + e] * t.k[std::size_t(s * KV + g * hs + e)];
          sc[std::size_t(s)] = d / std::sqrt(double(hs));
          mx = std::max(mx, sc[std::size_t(s)]);
        }
        double sum = 0;
        for (auto& v : sc) sum += (v = std::exp(v - mx));
        for (int s = 0; s <= pos; ++s) {
          double const p = sc[std::size_t(s)] / sum;
          t.probs[std::size_t((h * L + pos) * L + s)] = p;
          for (int e = 0; e < hs; ++e) ao[h * hs + e] += p * t.v[std::size_t(s * KV + g * hs + e)];
        }
      }
      double* wo = &t.wo_out[std::size_t(pos * D)];
      matvec(W.wo, ao, wo);
      for (int j = 0; j < D; ++j) x[std::size_t(j)] += wo[j];
      double* fin = &t.ffn_in[std::size_t(pos * D)];
      rmsnorm(x.data(), W.rms_ffn.data(), fin);
      std::vector<double> g1(static_cast<std::size_t>(F)), g3(static_cast<std::size_t>(F));
      matvec(W.w1, fin, g1.data());
      matvec(W.w3, fin, g3.data());
      double* hid = &t.hidden[std::size_t(pos * F)];
      for (int j = 0; j < F; ++j) hid[j] = g1[std::size_t(j)] / (1.0 + std::exp(-g1[std::size_t(j)])) * g3[std::size_t(j)];
      double* w2 = &t.w2_out[std::size_t(pos * D)];
      matvec(W.w2, hid, w2);
      for (int j = 0; j < D; ++j) x[std::size_t(j)] += w2[j];
      std::copy(x.begin(), x.end(), &t.out[std::size_t(pos * D)]);
    }
    std::vector<double> n(static_cast<std::size_t>(D));
    rmsnorm(x.data(), m.rms_final.data(), n.data());
    matvec(m.classifier, n.data(), &tr.logits[std::size_t(pos * V)]);
  }
  return tr;
}

}  // namespace rsq_test
