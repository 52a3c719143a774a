// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The CUDA backend of rsq::hessian_accumulator (algorithm::hessian_accumulation, <rsq/hessian/accumulator.hpp>):
/// the running sum Σ w x xᵀ lives in device memory, on the device current at construction. The weighted inputs √w·x
/// are staged on the device in chunks of tokens and added by a cuBLAS SYRK (fp32 or fp64) or a tensor-core GEMM
/// (TF32, or bf16 inputs with fp32 accumulation; hessian::options::precision, opt-in).
///
/// Host inputs arrive checked and weighted by the front end (exactly as on the CPU) and are uploaded; device inputs
/// (float or double, any strides) are checked for NaN/Inf on the device, with the host's message, and weighted there.
///
/// Declarations only (no CUDA header, no Eigen): the definitions are in
/// <rsq/backend/cuda/impl/hessian_accumulator.cuh>, instantiated for float and double by rsq_cuda.cu.

#include <cmath>
#include <type_traits>
#include <vector>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cuda/memory.hpp"
#include "rsq/backend/dispatch.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"
#include "rsq/hessian/options.hpp"
#include "rsq/hessian/weights.hpp"

namespace rsq::backend {

template <>
struct implementation<algorithm::hessian_accumulation, cuda> {
  static constexpr bool available = true;

  /// The running sum of a CUDA accumulator. Move-only.
  template <class T>
  class accumulator {
   public:
    accumulator(cuda const& be, index_t features, hessian::options const& opt);

    /// Host sequences (checked, weighted): gathered as √w·x in T on the host, uploaded and added chunk by chunk.
    template <class XOf>
    void accumulate(index_t count, XOf x_of, std::vector<std::vector<double>> const& weights) {
      index_t const features = features_, chunk = chunk_tokens();
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

    /// Device sequences @p x (sequences, tokens, features), float or double, with importances @p r (sequences,
    /// tokens) in host or device memory; checked here (messages number sequences from @p first_sequence).
    template <class X, class R>
    void add_resident(batch_view<const X> x, matrix_view<const R> r, hessian::weighting const& wt,
                      index_t first_sequence);

    void merge(accumulator const& other);  ///< @p other may live on another device (peer copy)
    [[nodiscard]] rsq::matrix<T> hessian(T scale) const;
    [[nodiscard]] rsq::cuda::device_matrix<T> hessian_resident(T scale) const;

   private:
    [[nodiscard]] index_t chunk_tokens() const noexcept;
    void update_from_host(T const* rows, index_t tokens);  // (tokens, features) contiguous host rows

    cuda be_;
    hessian::options opt_;
    index_t features_ = 0;
    int device_ = 0;
    rsq::cuda::device_array<T> sum_;  // (features, features) column-major Σ w x xᵀ, lower triangle valid
  };
};

#define RSQ_CUDA_HESSIAN_EXTERN(T)                                                                                  \
  extern template class implementation<algorithm::hessian_accumulation, cuda>::accumulator<T>;                     \
  extern template void implementation<algorithm::hessian_accumulation, cuda>::accumulator<T>::add_resident<float, \
                                                                                                  float>(          \
      batch_view<const float>, matrix_view<const float>, hessian::weighting const&, index_t);                      \
  extern template void implementation<algorithm::hessian_accumulation, cuda>::accumulator<T>::add_resident<float, \
                                                                                                  double>(         \
      batch_view<const float>, matrix_view<const double>, hessian::weighting const&, index_t);                     \
  extern template void implementation<algorithm::hessian_accumulation, cuda>::accumulator<T>::add_resident<       \
      double, float>(batch_view<const double>, matrix_view<const float>, hessian::weighting const&, index_t);      \
  extern template void implementation<algorithm::hessian_accumulation, cuda>::accumulator<T>::add_resident<       \
      double, double>(batch_view<const double>, matrix_view<const double>, hessian::weighting const&, index_t);
RSQ_CUDA_HESSIAN_EXTERN(float)
RSQ_CUDA_HESSIAN_EXTERN(double)
#undef RSQ_CUDA_HESSIAN_EXTERN

}  // namespace rsq::backend
