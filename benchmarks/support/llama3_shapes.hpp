// SPDX-License-Identifier: MIT
// Models with Llama-3-8B's shapes (or small "quick" shapes) made in memory from seeded random weights, and random
// token windows, for the whole-model CUDA benchmarks (bench_model_cuda, bench_learn_rotation_cuda).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include <rsq/model/llama.hpp>

namespace rsq_bench {

using rsq::index_t;
using rsq::model::linear_id;
using rsq::model::llama_model;

/// SplitMix64 → a standard normal (Box–Muller), per element index: the same weights for any thread count.
inline float normal_at(std::uint64_t seed, std::uint64_t i) {
  auto mix = [](std::uint64_t z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  };
  std::uint64_t const a = mix(seed * 0x100000001B3ULL + 2 * i), b = mix(seed * 0x100000001B3ULL + 2 * i + 1);
  double const u1 = (double(a >> 11) + 1.0) / 9007199254740993.0, u2 = double(b >> 11) / 9007199254740992.0;
  return float(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

inline void fill(rsq::matrix<float>& m, index_t rows, index_t cols, std::uint64_t seed, float scale) {
  m = rsq::make_matrix_for_overwrite<float>(rows, cols);
  float* p = m.data();
#pragma omp parallel for schedule(static)
  for (index_t i = 0; i < rows * cols; ++i) p[i] = scale * normal_at(seed, std::uint64_t(i));
}

inline rsq::vector<float> ones(index_t n) {
  auto v = rsq::make_vector<float>(n);
  std::fill(v.begin(), v.end(), 1.f);
  return v;
}

/// The first @p layers layers of a model with Llama-3-8B's shapes (or the quick shapes), weights N(0, 0.02²) from a
/// seed per tensor: the same layers for any layer count.
inline llama_model make_model(int layers, bool quick) {
  llama_model m;
  auto& c = m.config;
  c.dim = quick ? 512 : 4096;
  c.hidden_dim = quick ? 1792 : 14336;
  c.n_layers = layers;
  c.n_heads = quick ? 8 : 32;
  c.n_kv_heads = quick ? 2 : 8;
  c.vocab_size = quick ? 4096 : 128256;
  c.seq_len = 4096;
  c.rope_theta = 500000.0;
  fill(m.token_embedding, c.vocab_size, c.dim, 1, 0.02f);
  fill(m.classifier, c.vocab_size, c.dim, 2, 0.02f);
  m.rms_final = ones(c.dim);
  m.layers.resize(std::size_t(layers));
  for (int l = 0; l < layers; ++l) {
    auto& L = m.layers[std::size_t(l)];
    L.rms_att = ones(c.dim);
    L.rms_ffn = ones(c.dim);
    std::uint64_t const s = 100 + 10 * std::uint64_t(l);
    for (linear_id id : rsq::model::all_linears) {
      auto const shape = rsq::model::weight_shape(c, id);
      fill(L.weight(id), shape[0], shape[1], s + std::uint64_t(id), 0.02f);
    }
  }
  return m;
}

inline rsq::matrix<std::int32_t> random_tokens(index_t sequences, index_t length, int vocab) {
  auto t = rsq::make_matrix<std::int32_t>(sequences, length);
  for (index_t i = 0; i < sequences * length; ++i)
    t.data()[i] = std::int32_t(std::uint64_t(std::abs(normal_at(7, std::uint64_t(i))) * 1e6) % std::uint64_t(vocab));
  return t;
}

}  // namespace rsq_bench
