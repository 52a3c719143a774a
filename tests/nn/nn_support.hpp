// SPDX-License-Identifier: MIT
#pragma once
// Helpers of the forward-pass tests (tests/nn/*_test.cpp): seeded host inputs, copies into a backend's memory and
// back, strided views into wider backend matrices, float64 reference pieces, error measures, and a scope that sets
// the OpenMP thread count.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <rsq/backend/memory.hpp>
#include <rsq/core/tensor.hpp>
#include <rsq/core/view.hpp>

#include "support/backends.hpp"

namespace nn_test {

using rsq::index_t;

/// (rows, cols) with N(0, sd²) entries, seeded.
inline rsq::matrix<float> random_matrix(index_t rows, index_t cols, unsigned seed, double sd = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, sd);
  auto m = rsq::make_matrix<float>(rows, cols);
  for (auto& v : m) v = float(nd(rng));
  return m;
}

/// A copy of a host matrix in backend B's memory.
template <class B, class T>
auto upload(rsq::matrix<T> const& h) {
  return rsq::backend::to_backend(B{}, rsq::matrix_view<const T>(h));
}

/// A host copy of a backend matrix (or of a contiguous view of backend memory).
template <class B, class T>
rsq::matrix<std::remove_const_t<T>> download(rsq::matrix_view<T> m) {
  return rsq::backend::to_host(B{}, rsq::matrix_view<const std::remove_const_t<T>>(m));
}
template <class B, class M>
auto download(M const& m) {
  return download<B>(rsq::view(m));
}

/// A vector view of the n elements of a (1, n) backend matrix.
template <class M>
rsq::vector_view<const float> as_vector(M const& m) {
  auto const v = rsq::view(m);
  return rsq::vector_view<const float>(v.data(), v.size());
}

/// A host copy of the (rows, cols) block at column @p col0 of a backend matrix whose rows are wider.
template <class B, class M>
rsq::matrix<float> download_columns(M const& m, index_t col0, index_t cols) {
  auto const all = download<B>(m);
  auto out = rsq::make_matrix<float>(index_t(all.shape()[0]), cols);
  for (index_t r = 0; r < index_t(all.shape()[0]); ++r)
    for (index_t c = 0; c < cols; ++c) out(r, c) = all(r, col0 + c);
  return out;
}

/// Host matrix with the columns [col0, col0 + cols) of @p m.
inline rsq::matrix<float> columns(rsq::matrix<float> const& m, index_t col0, index_t cols) {
  auto out = rsq::make_matrix<float>(index_t(m.shape()[0]), cols);
  for (index_t r = 0; r < index_t(m.shape()[0]); ++r)
    for (index_t c = 0; c < cols; ++c) out(r, c) = m(r, col0 + c);
  return out;
}

/// The view of columns [col0, col0 + cols) of all rows of a backend matrix (row stride = its width).
template <class M>
auto column_view(M& m, index_t col0, index_t cols) {
  auto const v = rsq::view(m);
  using T = std::remove_pointer_t<decltype(v.data())>;
  return rsq::matrix_view<T>(v.data() + col0, {v.rows(), cols}, {v.stride(0), 1});
}

/// max |got − ref| / max(max |ref|, floor).
inline double max_rel(rsq::matrix<float> const& got, std::vector<double> const& ref, double floor = 1e-30) {
  REQUIRE(got.size() == ref.size());
  double num = 0, den = floor;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    num = std::max(num, std::abs(double(got.data()[i]) - ref[i]));
    den = std::max(den, std::abs(ref[i]));
  }
  return num / den;
}

/// max |got − ref|.
inline double max_abs(rsq::matrix<float> const& got, std::vector<double> const& ref) {
  REQUIRE(got.size() == ref.size());
  double e = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) e = std::max(e, std::abs(double(got.data()[i]) - ref[i]));
  return e;
}

/// Bitwise equality of two host matrices.
inline bool same_bits(rsq::matrix<float> const& a, rsq::matrix<float> const& b) {
  return a.shape() == b.shape() &&
         std::equal(a.begin(), a.end(), b.begin(), [](float x, float y) { return std::memcmp(&x, &y, sizeof x) == 0; });
}

/// float64 RMSNorm of every row: g ⊙ x / √(mean(x²) + eps).
inline std::vector<double> rms_norm_reference(rsq::matrix<float> const& x, rsq::matrix<float> const& g, double eps) {
  index_t const rows = index_t(x.shape()[0]), cols = index_t(x.shape()[1]);
  std::vector<double> y(std::size_t(rows * cols));
  for (index_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (index_t c = 0; c < cols; ++c) ss += double(x(r, c)) * double(x(r, c));
    double const inv = 1.0 / std::sqrt(ss / double(cols) + eps);
    for (index_t c = 0; c < cols; ++c) y[std::size_t(r * cols + c)] = double(g(0, c)) * double(x(r, c)) * inv;
  }
  return y;
}

/// For one scope, the CUDA backend's forward pass in its smallest pieces (blocks of 16 queries, one sequence per
/// chunk, one token per block of the loss, no bf16 copy of the classifier), so that every loop runs several times;
/// nothing for the CPU backend.
template <class B>
struct small_pieces {
#if defined(RSQ_WITH_CUDA) && RSQ_WITH_CUDA
  rsq::cuda::forward_tuning saved = rsq::cuda::nn_tuning();
  small_pieces() {
    if constexpr (std::is_same_v<B, rsq::backend::cuda>) {
      auto& t = rsq::cuda::nn_tuning();
      t.query_block = 16;
      t.attention_bytes = 1;
      t.loss_bytes = 1;
      t.bf16_classifier_bytes = 0;
    }
  }
  ~small_pieces() { rsq::cuda::nn_tuning() = saved; }
#else
  small_pieces() = default;
#endif
  small_pieces(small_pieces const&) = delete;
  small_pieces& operator=(small_pieces const&) = delete;
};

/// Sets the OpenMP thread count for one scope (nothing without OpenMP).
struct omp_threads {
#if defined(_OPENMP)
  int saved = omp_get_max_threads();
  explicit omp_threads(int n) { omp_set_num_threads(n); }
  ~omp_threads() { omp_set_num_threads(saved); }
#else
  explicit omp_threads(int) {}
#endif
  omp_threads(omp_threads const&) = delete;
  omp_threads& operator=(omp_threads const&) = delete;
};

/// True when @p run (returning a float array) gives the same bits with 1 and with 2 OpenMP threads.
template <class F>
bool same_bits_for_1_and_2_threads(F&& run) {
  auto const one = [&] {
    omp_threads t(1);
    return run();
  }();
  omp_threads t(2);
  return same_bits(one, run());
}

}  // namespace nn_test
