// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CUDA backend of rsq::hessian_accumulator (spec §5.1): H = (2/N) Σ_j Σ_t w_jt x_jt x_jtᵀ, with the same token
/// weights, argument checks and running sum as the CPU backend (<rsq/hessian/accumulator_api.hpp>). The weighted
/// inputs √w·x are staged on the device in chunks of tokens and added to the sum by a cuBLAS SYRK (fp32 or fp64) or
/// a tensor-core GEMM (TF32, or bf16 inputs with fp32 accumulation; opt-in, see cuda::hessian_options).
///
/// Inputs may be in host memory (checked and weighted on the host, exactly as on the CPU, then uploaded) or in device
/// memory (checked for NaN/Inf and weighted on the device: pass a `matrix_view<const X>` / `batch_view<const X>` of
/// device memory, X = float or double). Importances may be in host or device memory.
///
/// Declarations only (no CUDA header, no Eigen): the definitions are in
/// <rsq/backend/cuda/impl/hessian_accumulator.cuh>, instantiated for float and double by rsq_cuda.cu.

#include <cmath>
#include <type_traits>
#include <vector>

#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/tags.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/hessian/accumulator_api.hpp"

namespace rsq::cuda {

/// Arithmetic of the CUDA Hessian update.
enum class hessian_precision {
  strict,  ///< T's own precision: fp32 SYRK for float (no TF32), fp64 SYRK for double (the default)
  tf32,    ///< TF32 tensor-core GEMM with fp32 accumulation (float only; opt-in)
  bf16,    ///< √w·x rounded to bf16, tensor-core GEMM with fp32 accumulation (float only; opt-in)
};

/// Options of the CUDA accumulator.
struct hessian_options {
  hessian_precision precision = hessian_precision::strict;
  /// Tokens staged per update; 0 chooses about 512 MB of staging (at least 1024, at most 65536 tokens).
  index_t chunk_tokens = 0;
};

}  // namespace rsq::cuda

namespace rsq {

/// CUDA backend of the importance-weighted Hessian (see <rsq/hessian/accumulator_api.hpp>). Move-only: the running
/// sum lives in device memory, on the device current at construction.
///
/// Example:
///   rsq::hessian_accumulator<float, rsq::backend::cuda> acc(4096, rsq::backend::cuda{stream}, {},
///                                                            {.precision = rsq::cuda::hessian_precision::tf32});
///   acc.add(x_device_view, importances);  // (tokens, 4096) on the device, (tokens) on the host or device
///   rsq::cuda::device_matrix<float> h = acc.hessian_device();
template <class T>
class hessian_accumulator<T, backend::cuda>
    : public hessian::detail::accumulator_base<hessian_accumulator<T, backend::cuda>, T> {
  using base = hessian::detail::accumulator_base<hessian_accumulator<T, backend::cuda>, T>;
  friend base;

 public:
  using backend_type = backend::cuda;

  /// An empty accumulator for inputs of @p features features.
  /// @throws rsq::invalid_argument for features ≤ 0, a bad weighting, or a TF32/bf16 precision with T = double
  explicit hessian_accumulator(index_t features, backend::cuda be = {}, hessian::weighting wt = {},
                               cuda::hessian_options opt = {});

  using base::add;
  /// Adds one sequence @p x (tokens, features), in host or device memory, with optional importances @p r (tokens).
  template <class X, class R = float>
  void add(matrix_view<const X> x, vector_view<const R> r = {}) {
    if (!cuda::is_device_pointer(x.data())) return base::add(x, r);
    add_device(batch_view<const X>(x.data(), {1, x.rows(), x.cols()}, {x.rows() * x.stride(0), x.stride(0), x.stride(1)}),
               r.data() ? matrix_view<const R>(r.data(), {1, r.extent(0)}, {r.extent(0) * r.stride(0), r.stride(0)})
                        : matrix_view<const R>{});
  }
  /// Adds a batch @p x (sequences, tokens, features), in host or device memory, with optional importances @p r
  /// (sequences, tokens).
  template <class X, class R = float>
  void add(batch_view<const X> x, matrix_view<const R> r = {}) {
    if (!cuda::is_device_pointer(x.data())) return base::add(x, r);
    add_device(x, r);
  }
  /// Writable views (e.g. of device memory) are read only.
  template <class X, std::size_t N>
    requires(!std::is_const_v<X> && (N == 2 || N == 3))
  void add(tensor_view<X, N> x) {
    add(tensor_view<const X, N>(x));
  }

  /// Adds everything @p other accumulated (disjoint data); @p other may live on another device (peer copy).
  void merge(hessian_accumulator const& other);

  /// Sequences and tokens added (host and device inputs).
  [[nodiscard]] index_t sequences() const noexcept { return base::sequences() + device_sequences_; }
  [[nodiscard]] index_t tokens() const noexcept { return base::tokens() + device_tokens_; }

  /// H = (2 / sequences) · Σ w x xᵀ (features, features), symmetric, in host memory. All zeros before the first add.
  [[nodiscard]] rsq::matrix<T> hessian() const;
  /// The same H in device memory (row-major, symmetric), for rsq::cuda::factor.
  [[nodiscard]] cuda::device_matrix<T> hessian_device() const;

  [[nodiscard]] backend::cuda const& backend() const noexcept { return be_; }
  [[nodiscard]] cuda::hessian_options const& options() const noexcept { return opt_; }
  [[nodiscard]] int device() const noexcept { return device_; }

 private:
  /// Host inputs, already checked and weighted by the base: gathered as √w·x in T on the host (as the CPU backend
  /// does), uploaded and added chunk by chunk.
  template <class XOf>
  void accumulate(index_t count, XOf x_of, std::vector<std::vector<double>> const& weights) {
    index_t const features = this->features(), chunk = chunk_tokens();
    std::vector<T> buf(static_cast<std::size_t>(chunk * features));  // (tokens, features) weighted inputs
    index_t fill = 0;
    for (index_t j = 0; j < count; ++j) {
      auto const x = x_of(j);
      auto const& w = weights[std::size_t(j)];
      for (index_t t = 0; t < x.rows(); ++t) {
        if (w[std::size_t(t)] == 0) continue;
        T const s = T(std::sqrt(w[std::size_t(t)]));
        T* row = buf.data() + fill * features;
        for (index_t f = 0; f < features; ++f) row[f] = s * T(x(t, f));
        if (++fill == chunk) {
          update_from_host(buf.data(), fill);
          fill = 0;
        }
      }
    }
    if (fill > 0) update_from_host(buf.data(), fill);
  }

  [[nodiscard]] index_t chunk_tokens() const noexcept;
  void update_from_host(T const* rows, index_t tokens);  // (tokens, features) contiguous host rows
  template <class X, class R>
  void add_device(batch_view<const X> x, matrix_view<const R> r);

  backend::cuda be_;
  cuda::hessian_options opt_;
  int device_ = 0;
  cuda::device_array<T> sum_;  // (features, features) column-major Σ w x xᵀ, lower triangle valid
  index_t device_sequences_ = 0, device_tokens_ = 0;
};

extern template class hessian_accumulator<float, backend::cuda>;
extern template class hessian_accumulator<double, backend::cuda>;

}  // namespace rsq
