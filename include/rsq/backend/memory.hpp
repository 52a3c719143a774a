// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Memory of a backend, for code written once for every backend (the model pipeline, the tests): owned arrays in the
/// backend's own memory (host memory for cpu_eigen, device memory for cuda), copies between it and host memory, and
/// whether a pointer is in it.
///
/// An implementation of algorithm::memory provides
///   template <class T> using array;  // owned, contiguous, data(); rsq::view(a) is its vector_view<T>
///   template <class T> using matrix; // owned, row-major, data(); rsq::view(m) is its matrix_view<T>
///   template <class T> static matrix<T> make_matrix(B const&, index_t rows, index_t cols);
///   static bool resident(B const&, void const* p);             // p points to the backend's own memory
///   static void copy(B const&, void* dst, void const* src, std::size_t bytes);  // any direction; ordered on the
///                                                              // backend's stream, returns when dst may be read
///   static void synchronize(B const&);                         // waits for the work queued on the backend
///   static std::size_t bytes_in_use(B const&);                 // memory of a device in use (0: not measured)
///   static std::size_t bytes_free(B const&);                   // memory a device has free (SIZE_MAX: no limit known)
/// and an allocation that does not fit throws (rsq::cuda_error for a device) naming the bytes asked for and free.

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "rsq/backend/algorithms.hpp"
#include "rsq/backend/cpu/memory.hpp"  // host memory is always there: the CPU backend's memory
#include "rsq/backend/dispatch.hpp"
#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/core/view.hpp"

namespace rsq::backend {

/// An owned contiguous array of T in backend B's memory.
template <class T, class B>
using array = typename implementation_t<algorithm::memory, B>::template array<T>;
/// An owned row-major (rows, cols) matrix in backend B's memory (rsq::matrix<T> for cpu_eigen).
template <class T, class B>
using matrix = typename implementation_t<algorithm::memory, B>::template matrix<T>;

/// True when @p p points to backend @p be's own memory (always, for the CPU backend).
template <backend_tag B>
[[nodiscard]] bool resident(B const& be, void const* p) {
  return implementation_t<algorithm::memory, B>::resident(be, p);
}

/// Waits for the work queued on @p be (nothing to wait for on the CPU backend).
template <backend_tag B>
void synchronize(B const& be) {
  implementation_t<algorithm::memory, B>::synchronize(be);
}

/// Memory of the backend's device in use now, in bytes (0 where the backend does not measure it: the CPU).
template <backend_tag B>
[[nodiscard]] std::size_t bytes_in_use(B const& be) {
  return implementation_t<algorithm::memory, B>::bytes_in_use(be);
}

/// Memory the backend's device has free now, in bytes (SIZE_MAX where the backend knows no limit: the CPU).
template <backend_tag B>
[[nodiscard]] std::size_t bytes_free(B const& be) {
  return implementation_t<algorithm::memory, B>::bytes_free(be);
}

/// Copies @p n elements from @p src to @p dst, each in host memory or in @p be's memory; returns when dst can be read.
template <backend_tag B, class T>
void copy(B const& be, T* dst, T const* src, index_t n) {
  if (n > 0) implementation_t<algorithm::memory, B>::copy(be, dst, src, std::size_t(n) * sizeof(T));
}

/// A (rows, cols) matrix in @p be's memory (contents unspecified).
template <class T, backend_tag B>
[[nodiscard]] matrix<T, B> make_matrix(B const& be, index_t rows, index_t cols) {
  return implementation_t<algorithm::memory, B>::template make_matrix<T>(be, rows, cols);
}

/// A copy of @p m (host or backend memory, any strides) in @p be's memory, row-major.
template <backend_tag B, class T>
[[nodiscard]] matrix<std::remove_const_t<T>, B> to_backend(B const& be, matrix_view<T> m) {
  using V = std::remove_const_t<T>;
  auto out = make_matrix<V>(be, m.rows(), m.cols());
  if (m.is_contiguous()) {
    copy(be, out.data(), m.data(), m.size());
  } else {
    RSQ_EXPECTS((!resident(be, m.data()) || std::is_same_v<B, cpu_eigen>),
                "to_backend: a strided view of backend memory must be contiguous");
    auto packed = rsq::make_matrix_for_overwrite<V>(m.rows(), m.cols());
    for (index_t i = 0; i < m.rows(); ++i)
      for (index_t j = 0; j < m.cols(); ++j) packed(i, j) = m(i, j);
    copy(be, out.data(), packed.data(), m.size());
  }
  return out;
}

/// A host copy of @p m, a contiguous matrix in @p be's memory or in host memory.
template <backend_tag B, class T>
[[nodiscard]] rsq::matrix<std::remove_const_t<T>> to_host(B const& be, matrix_view<T> m) {
  RSQ_EXPECTS(m.is_contiguous(), "to_host: the view must be contiguous, got strides (", m.stride(0), ", ",
              m.stride(1), ")");
  auto out = rsq::make_matrix_for_overwrite<std::remove_const_t<T>>(m.rows(), m.cols());
  copy(be, out.data(), m.data(), m.size());
  return out;
}

}  // namespace rsq::backend
