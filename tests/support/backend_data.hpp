// SPDX-License-Identifier: MIT
#pragma once
// Test data in a backend's memory (host memory for the CPU backend, device memory for CUDA), for the bodies that run
// on every backend: a resident copy of a host array with views of its shape, and host copies of backend arrays.

#include <array>
#include <cstddef>
#include <type_traits>
#include <vector>

#include <rsq/backend/memory.hpp>
#include <rsq/core/tensor.hpp>
#include <rsq/core/view.hpp>

#include "support/backends.hpp"

namespace rsq_test {

/// True for the CPU backend, whose memory is host memory.
template <class B>
inline constexpr bool is_cpu = std::is_same_v<B, rsq::backend::cpu_eigen>;

/// A row-major copy of an N-dimensional host array in backend B's memory, seen with the host array's shape.
template <class T, std::size_t N, class B>
struct resident_array {
  rsq::backend::matrix<T, B> storage;  ///< (size / last extent, last extent)
  std::array<rsq::index_t, N> shape{};

  [[nodiscard]] T* data() { return rsq::view(storage).data(); }
  [[nodiscard]] T const* data() const { return rsq::view(storage).data(); }
  [[nodiscard]] rsq::tensor_view<T, N> view() { return rsq::tensor_view<T, N>(data(), shape); }
  [[nodiscard]] rsq::tensor_view<const T, N> view() const { return rsq::tensor_view<const T, N>(data(), shape); }
  [[nodiscard]] rsq::index_t size() const {
    rsq::index_t s = 1;
    for (auto e : shape) s *= e;
    return s;
  }
};

/// A copy of @p host (any strides) in @p be's memory.
template <class B, class T, std::size_t N>
[[nodiscard]] resident_array<std::remove_const_t<T>, N, B> upload(B const& be, rsq::tensor_view<T, N> host) {
  using V = std::remove_const_t<T>;
  resident_array<V, N, B> r;
  r.shape = host.extents();
  rsq::index_t const last = host.extent(N - 1), count = host.size();
  r.storage = rsq::backend::make_matrix<V>(be, last > 0 ? count / last : 0, last);
  std::vector<V> packed(static_cast<std::size_t>(count));
  std::array<rsq::index_t, N> idx{};
  for (rsq::index_t i = 0; i < count; ++i) {
    rsq::index_t off = 0;
    for (std::size_t d = 0; d < N; ++d) off += idx[d] * host.stride(d);
    packed[std::size_t(i)] = host.data()[off];
    for (std::size_t d = N; d-- > 0;) {  // row-major increment
      if (++idx[d] < host.extent(d)) break;
      idx[d] = 0;
    }
  }
  rsq::backend::copy(be, r.data(), packed.data(), count);
  return r;
}
template <class B, class T, std::size_t N>
[[nodiscard]] resident_array<T, N, B> upload(B const& be, xt::xtensor<T, N> const& host) {
  return upload(be, rsq::tensor_view<const T, N>(host));
}

/// A host copy of a contiguous array in @p be's memory (or in host memory).
template <class B, class T, std::size_t N>
[[nodiscard]] xt::xtensor<std::remove_const_t<T>, N> download(B const& be, rsq::tensor_view<T, N> v) {
  REQUIRE(v.is_contiguous());
  typename xt::xtensor<std::remove_const_t<T>, N>::shape_type shape{};
  for (std::size_t d = 0; d < N; ++d) shape[d] = std::size_t(v.extent(d));
  auto out = xt::xtensor<std::remove_const_t<T>, N>::from_shape(shape);
  rsq::backend::copy(be, out.data(), v.data(), v.size());
  return out;
}

}  // namespace rsq_test
