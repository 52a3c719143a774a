// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Non-owning strided views: how every public function of rsq takes arrays.
///
/// A `tensor_view<T, N>` is a pointer plus N extents and N strides (in elements). It converts implicitly, without
/// copying, from Eigen dense objects (matrices, maps, blocks, `Ref`s; any storage order), from xtensor containers
/// and views with strides, and from a plain pointer with a shape, for engines that own their memory.
/// It needs neither Eigen nor xtensor itself, so CUDA translation units can use it too.

#include <array>
#include <concepts>
#include <cstddef>
#include <type_traits>

namespace rsq {

/// Signed index type used for all extents and strides (Eigen::Index has the same width).
using index_t = std::ptrdiff_t;

namespace detail {

template <class M>
concept eigen_direct_access = requires(M& m) {
  m.data();
  { m.rows() } -> std::convertible_to<index_t>;
  { m.cols() } -> std::convertible_to<index_t>;
  { m.rowStride() } -> std::convertible_to<index_t>;
  { m.colStride() } -> std::convertible_to<index_t>;
};

template <class M>
concept xtensor_strided = requires(M& m) {
  m.data();
  m.shape();
  m.strides();
  m.data_offset();
  { m.dimension() } -> std::convertible_to<std::size_t>;
};

/// xtensor's containers carry `rank` (N for xtensor, SIZE_MAX for dynamic-rank arrays and views).
template <class M, std::size_t N>
concept static_rank_matches = !requires { std::remove_cvref_t<M>::rank + 0; } ||
                              std::remove_cvref_t<M>::rank == N || std::remove_cvref_t<M>::rank == std::size_t(-1);

}  // namespace detail

/// Non-owning view of an N-dimensional strided array of T (T may be const).
/// @tparam T element type; `tensor_view<const float, 2>` is a read-only matrix view
/// @tparam N number of dimensions
template <class T, std::size_t N>
class tensor_view {
 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using extents_type = std::array<index_t, N>;

  constexpr tensor_view() = default;

  /// A row-major (C order) contiguous array at @p data with the given extents.
  constexpr tensor_view(T* data, extents_type const& extents) : data_(data), extents_(extents) {
    index_t s = 1;
    for (std::size_t d = N; d-- > 0;) {
      strides_[d] = s;
      s *= extents_[d];
    }
  }

  /// A strided array: element (i0, i1, ...) is at data[i0*strides[0] + i1*strides[1] + ...].
  constexpr tensor_view(T* data, extents_type const& extents, extents_type const& strides)
      : data_(data), extents_(extents), strides_(strides) {}

  /// Matrix from pointer, rows and cols (row-major, contiguous).
  constexpr tensor_view(T* data, index_t rows, index_t cols)
    requires(N == 2)
      : tensor_view(data, extents_type{rows, cols}) {}

  /// Vector from pointer and length (contiguous).
  constexpr tensor_view(T* data, index_t size)
    requires(N == 1)
      : tensor_view(data, extents_type{size}) {}

  /// Read-only view of a writable view.
  template <class U>
    requires(std::is_const_v<T> && std::is_same_v<std::remove_const_t<T>, U>)
  constexpr tensor_view(tensor_view<U, N> const& other)  // NOLINT(google-explicit-constructor)
      : data_(other.data()), extents_(other.extents()), strides_(other.strides()) {}

  /// Any Eigen dense object with direct access (Matrix, Map, Block, Ref), in either storage order.
  template <detail::eigen_direct_access M>
    requires((N == 2 || N == 1) && std::is_convertible_v<decltype(std::declval<M&>().data()), T*>)
  tensor_view(M& m)  // NOLINT(google-explicit-constructor)
      : data_(m.data()) {
    if constexpr (N == 2) {
      extents_ = {index_t(m.rows()), index_t(m.cols())};
      strides_ = {index_t(m.rowStride()), index_t(m.colStride())};
    } else {
      extents_ = {index_t(m.rows() * m.cols())};
      strides_ = {m.cols() == 1 ? index_t(m.rowStride()) : index_t(m.colStride())};
    }
  }

  /// Any xtensor container or strided view of dimension N (xtensor strides are in elements).
  /// (A static rank other than N is a compile-time mismatch; dynamic-rank arrays are checked at run time.)
  template <detail::xtensor_strided M>
    requires(!detail::eigen_direct_access<M> && detail::static_rank_matches<M, N> &&
             std::is_convertible_v<decltype(std::declval<M&>().data()), T*>)
  tensor_view(M& m)  // NOLINT(google-explicit-constructor)
      : data_(m.data() + m.data_offset()) {
    if (m.dimension() != N) throw_dimension_mismatch(m.dimension());
    for (std::size_t d = 0; d < N; ++d) {
      extents_[d] = index_t(m.shape()[d]);
      strides_[d] = index_t(m.strides()[d]);
    }
  }

  [[nodiscard]] constexpr T* data() const noexcept { return data_; }
  [[nodiscard]] constexpr extents_type const& extents() const noexcept { return extents_; }
  [[nodiscard]] constexpr extents_type const& strides() const noexcept { return strides_; }
  [[nodiscard]] constexpr index_t extent(std::size_t d) const noexcept { return extents_[d]; }
  [[nodiscard]] constexpr index_t stride(std::size_t d) const noexcept { return strides_[d]; }
  [[nodiscard]] static constexpr std::size_t rank() noexcept { return N; }

  /// Number of elements.
  [[nodiscard]] constexpr index_t size() const noexcept {
    index_t s = 1;
    for (auto e : extents_) s *= e;
    return s;
  }
  [[nodiscard]] constexpr bool empty() const noexcept { return size() == 0; }

  // Matrix-style accessors.
  [[nodiscard]] constexpr index_t rows() const noexcept requires(N == 2) { return extents_[0]; }
  [[nodiscard]] constexpr index_t cols() const noexcept requires(N == 2) { return extents_[1]; }

  /// True when the elements are laid out in C order without gaps (extent-1 axes may have any stride).
  [[nodiscard]] constexpr bool is_contiguous() const noexcept {
    index_t s = 1;
    for (std::size_t d = N; d-- > 0;) {
      if (extents_[d] != 1 && strides_[d] != s) return false;
      s *= extents_[d];
    }
    return true;
  }

  template <class... I>
    requires(sizeof...(I) == N && (std::convertible_to<I, index_t> && ...))
  [[nodiscard]] constexpr T& operator()(I... i) const noexcept {
    std::array<index_t, N> idx{index_t(i)...};
    index_t off = 0;
    for (std::size_t d = 0; d < N; ++d) off += idx[d] * strides_[d];
    return data_[off];
  }

  /// The (N-1)-dimensional slice at index @p i of the first axis (a sequence of a batch, a row of a matrix).
  [[nodiscard]] constexpr tensor_view<T, N - 1> operator[](index_t i) const noexcept
    requires(N >= 2)
  {
    std::array<index_t, N - 1> e{}, s{};
    for (std::size_t d = 1; d < N; ++d) {
      e[d - 1] = extents_[d];
      s[d - 1] = strides_[d];
    }
    return tensor_view<T, N - 1>(data_ + i * strides_[0], e, s);
  }

 private:
  [[noreturn]] static void throw_dimension_mismatch(std::size_t got);

  T* data_ = nullptr;
  extents_type extents_{};
  extents_type strides_{};
};

template <class T>
using matrix_view = tensor_view<T, 2>;  ///< (rows, cols)
template <class T>
using vector_view = tensor_view<T, 1>;  ///< (size)
template <class T>
using batch_view = tensor_view<T, 3>;  ///< (batch, rows, cols), e.g. (sequences, tokens, features)

namespace detail {
/// Element type of an array-like M: its `element_type` for tensor_views, else what its data() points to.
template <class M>
concept has_data = requires(M& m) { m.data(); };
template <class M>
concept is_tensor_view = has_data<M> && requires { typename M::element_type; M::rank(); };

template <class M>
struct element_of {};  // not array-like: no `type`, so make_view's constraint fails softly
template <has_data M>
struct element_of<M> {
  using type = std::remove_pointer_t<decltype(std::declval<M&>().data())>;
};
template <is_tensor_view M>
struct element_of<M> {
  using type = typename M::element_type;
};
template <class M>
using element_of_t = typename element_of<M>::type;
}  // namespace detail

/// View of @p m (an Eigen dense object, an xtensor array, or a tensor_view) with the element type deduced,
/// e.g. `make_view<2>(eigen_matrix)` is a `matrix_view<float>` (or `<const float>` for a const matrix).
template <std::size_t N, class M>
  requires requires { typename detail::element_of_t<M>; } &&
           std::constructible_from<tensor_view<detail::element_of_t<M>, N>, M&>
[[nodiscard]] tensor_view<detail::element_of_t<M>, N> make_view(M& m) {
  return tensor_view<detail::element_of_t<M>, N>(m);
}

/// Read-only view of @p m with the element type deduced (see make_view).
template <std::size_t N, class M>
  requires requires { typename detail::element_of_t<M const>; } &&
           std::constructible_from<tensor_view<detail::element_of_t<M const>, N>, M const&>
[[nodiscard]] tensor_view<std::add_const_t<detail::element_of_t<M const>>, N> make_const_view(M const& m) {
  return tensor_view<std::add_const_t<detail::element_of_t<M const>>, N>(make_view<N>(m));
}

/// Types make_const_view<N> accepts: Eigen dense objects, xtensor arrays of rank N, tensor_views.
template <class M, std::size_t N>
concept viewable = requires(M const& m) { make_const_view<N>(m); };

}  // namespace rsq

#include "rsq/core/error.hpp"

template <class T, std::size_t N>
void rsq::tensor_view<T, N>::throw_dimension_mismatch(std::size_t got) {
  detail::throw_invalid_argument("tensor_view: expected an array of dimension ", N, ", got dimension ", got);
}
