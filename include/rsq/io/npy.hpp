// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Reading and writing NumPy `.npy` files (format versions 1.0, 2.0 and 3.0) with full validation.
///
/// xtensor's own `load_npy` trusts the file; here every field is checked and a corrupt, truncated, oversized or
/// wrong-dtype file gives an rsq::io_error that names the file and what is wrong. Writes go to a temporary file that
/// is renamed into place, so a failed write never leaves a half-written file behind.

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "rsq/core/error.hpp"
#include "rsq/core/tensor.hpp"
#include "rsq/io/atomic_file.hpp"
#include "rsq/io/mapped_file.hpp"

namespace rsq::io {

/// Element types that can appear in a `.npy` file read or written by rsq.
enum class npy_dtype { f32, f64, i8, u8, i16, u16, i32, u32, i64, u64, boolean };

/// The parsed header of a `.npy` file.
struct npy_header {
  npy_dtype dtype = npy_dtype::f32;
  bool big_endian = false;
  bool fortran_order = false;
  std::vector<std::size_t> shape;  ///< empty for a 0-d array
  std::size_t data_offset = 0;     ///< byte offset of the first element
};

/// How load_npy treats a file whose element type differs from the one asked for.
enum class npy_conversion {
  exact,    ///< the dtypes must match, or load_npy throws
  numeric,  ///< any numeric dtype is converted (e.g. a float64 file read as float); a value the target type
            ///< cannot hold (NaN or a fraction into an integer, out of range) throws rsq::io_error naming the element
};

/// The NumPy descr string's type part ("f4", "i8", ...), for messages.
[[nodiscard]] inline std::string_view npy_dtype_name(npy_dtype t) {
  switch (t) {
    case npy_dtype::f32: return "float32";
    case npy_dtype::f64: return "float64";
    case npy_dtype::i8: return "int8";
    case npy_dtype::u8: return "uint8";
    case npy_dtype::i16: return "int16";
    case npy_dtype::u16: return "uint16";
    case npy_dtype::i32: return "int32";
    case npy_dtype::u32: return "uint32";
    case npy_dtype::i64: return "int64";
    case npy_dtype::u64: return "uint64";
    case npy_dtype::boolean: return "bool";
  }
  return "?";
}

[[nodiscard]] inline std::size_t npy_item_size(npy_dtype t) {
  switch (t) {
    case npy_dtype::f32: case npy_dtype::i32: case npy_dtype::u32: return 4;
    case npy_dtype::f64: case npy_dtype::i64: case npy_dtype::u64: return 8;
    case npy_dtype::i16: case npy_dtype::u16: return 2;
    case npy_dtype::i8: case npy_dtype::u8: case npy_dtype::boolean: return 1;
  }
  return 0;
}

/// The npy dtype that stores C++ type T.
template <class T>
[[nodiscard]] constexpr npy_dtype npy_dtype_of() {
  if constexpr (std::is_same_v<T, float>) return npy_dtype::f32;
  else if constexpr (std::is_same_v<T, double>) return npy_dtype::f64;
  else if constexpr (std::is_same_v<T, bool>) return npy_dtype::boolean;
  else if constexpr (std::is_same_v<T, std::int8_t>) return npy_dtype::i8;
  else if constexpr (std::is_same_v<T, std::uint8_t>) return npy_dtype::u8;
  else if constexpr (std::is_same_v<T, std::int16_t>) return npy_dtype::i16;
  else if constexpr (std::is_same_v<T, std::uint16_t>) return npy_dtype::u16;
  else if constexpr (std::is_same_v<T, std::int32_t>) return npy_dtype::i32;
  else if constexpr (std::is_same_v<T, std::uint32_t>) return npy_dtype::u32;
  else if constexpr (std::is_same_v<T, std::int64_t>) return npy_dtype::i64;
  else if constexpr (std::is_same_v<T, std::uint64_t>) return npy_dtype::u64;
  else static_assert(sizeof(T) == 0, "rsq::io: no .npy dtype for this element type");
}

namespace detail {

using rsq::detail::throw_io_error;

inline std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\n')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\n')) s.remove_suffix(1);
  return s;
}

/// Value text of key @p key in the header dict, or empty if absent. The dict is a Python literal written by
/// numpy: {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }.
inline std::string_view dict_value(std::string_view dict, std::string_view key, std::string const& path) {
  auto quote = [&](char q) {  // (appending avoids a GCC 12 -Wrestrict false positive on operator+)
    std::string s(1, q);
    s.append(key);
    s.push_back(q);
    return s;
  };
  std::string const quoted1 = quote('\''), quoted2 = quote('"');
  auto pos = dict.find(quoted1);
  std::size_t klen = quoted1.size();
  if (pos == std::string_view::npos) {
    pos = dict.find(quoted2);
    klen = quoted2.size();
  }
  if (pos == std::string_view::npos) throw_io_error(path, ": .npy header has no '", key, "' entry");
  auto rest = dict.substr(pos + klen);
  rest = trim(rest);
  if (rest.empty() || rest.front() != ':') throw_io_error(path, ": .npy header entry '", key, "' is malformed");
  rest = trim(rest.substr(1));
  std::size_t end = 0;
  if (!rest.empty() && rest.front() == '(') {
    end = rest.find(')');
    if (end == std::string_view::npos) throw_io_error(path, ": .npy header shape is not closed");
    return rest.substr(0, end + 1);
  }
  if (!rest.empty() && (rest.front() == '\'' || rest.front() == '"')) {
    end = rest.find(rest.front(), 1);
    if (end == std::string_view::npos) throw_io_error(path, ": .npy header string for '", key, "' is not closed");
    return rest.substr(1, end - 1);
  }
  end = std::min(rest.find(','), rest.find('}'));
  if (end == std::string_view::npos) throw_io_error(path, ": .npy header entry '", key, "' is not terminated");
  return trim(rest.substr(0, end));
}

inline void parse_descr(std::string_view descr, npy_header& h, std::string const& path) {
  if (descr.size() < 2) throw_io_error(path, ": .npy dtype '", descr, "' is not supported");
  char const order = descr[0];
  std::string_view type = descr.substr(1);
  if (order == '>') h.big_endian = true;
  else if (order != '<' && order != '|' && order != '=') throw_io_error(path, ": .npy dtype '", descr, "' has an unknown byte order");
  struct entry {
    std::string_view name;
    npy_dtype t;
  };
  static constexpr std::array<entry, 11> table{{{"f4", npy_dtype::f32}, {"f8", npy_dtype::f64}, {"i1", npy_dtype::i8},
                                                {"u1", npy_dtype::u8}, {"i2", npy_dtype::i16}, {"u2", npy_dtype::u16},
                                                {"i4", npy_dtype::i32}, {"u4", npy_dtype::u32}, {"i8", npy_dtype::i64},
                                                {"u8", npy_dtype::u64}, {"b1", npy_dtype::boolean}}};
  for (auto const& e : table)
    if (type == e.name) {
      h.dtype = e.t;
      return;
    }
  throw_io_error(path, ": .npy dtype '", descr, "' is not supported (expected a float, integer or bool dtype)");
}

inline void parse_shape(std::string_view s, npy_header& h, std::string const& path) {
  if (s.size() < 2 || s.front() != '(' || s.back() != ')') throw_io_error(path, ": .npy shape '", s, "' is malformed");
  s = s.substr(1, s.size() - 2);
  while (!trim(s).empty()) {
    auto comma = s.find(',');
    auto tok = trim(s.substr(0, comma));
    if (tok.empty()) throw_io_error(path, ": .npy shape has an empty dimension");
    std::size_t v = 0;
    for (char c : tok) {
      if (c < '0' || c > '9') throw_io_error(path, ": .npy shape dimension '", tok, "' is not a non-negative integer");
      if (v > (std::numeric_limits<std::size_t>::max() - 9) / 10) throw_io_error(path, ": .npy shape dimension overflows");
      v = v * 10 + std::size_t(c - '0');
    }
    h.shape.push_back(v);
    if (comma == std::string_view::npos) break;
    s = s.substr(comma + 1);
  }
}

// Whether static_cast<T>(u) is defined and loses nothing but floating-point precision: an integer target needs an
// integral value in its range, a float target a value within its finite range (NaN and infinities pass).
template <class T, class U>
bool representable_as(U u) {
  if constexpr (std::is_same_v<T, U> || std::is_same_v<T, bool>) {
    return true;
  } else if constexpr (std::is_integral_v<T> && std::is_integral_v<U>) {
    return std::in_range<T>(u);
  } else if constexpr (std::is_integral_v<T>) {  // floating source
    // T's range is [min, 2^digits): both bounds are powers of two (or 0), exact in any floating type.
    long double const v = u;
    long double const upper = std::ldexp(1.0L, std::numeric_limits<T>::digits);
    return std::isfinite(v) && v == std::trunc(v) && v >= static_cast<long double>(std::numeric_limits<T>::min()) &&
           v < upper;
  } else if constexpr (std::is_floating_point_v<U>) {  // floating to floating
    return !std::isfinite(u) || std::fabs(static_cast<long double>(u)) <= std::numeric_limits<T>::max();
  } else {  // integer to floating: always in range
    return true;
  }
}

template <class T>
T read_element(unsigned char const* p, npy_dtype t, bool swap, std::string const& name, std::size_t index) {
  auto load = [&]<class U>(U) {
    U u;
    std::memcpy(&u, p, sizeof(U));
    if (swap && sizeof(U) > 1) {
      unsigned char b[sizeof(U)];
      std::memcpy(b, &u, sizeof(U));
      std::reverse(b, b + sizeof(U));
      std::memcpy(&u, b, sizeof(U));
    }
    return u;
  };
  auto convert = [&]<class U>(U u) -> T {
    if (!representable_as<T>(u))
      throw_io_error(name, ": element ", index, " (", +u, ") is not representable as ", npy_dtype_name(npy_dtype_of<T>()));
    return static_cast<T>(u);
  };
  switch (t) {
    case npy_dtype::f32: return convert(load(float{}));
    case npy_dtype::f64: return convert(load(double{}));
    case npy_dtype::i8: return convert(load(std::int8_t{}));
    case npy_dtype::u8: return convert(load(std::uint8_t{}));
    case npy_dtype::i16: return convert(load(std::int16_t{}));
    case npy_dtype::u16: return convert(load(std::uint16_t{}));
    case npy_dtype::i32: return convert(load(std::int32_t{}));
    case npy_dtype::u32: return convert(load(std::uint32_t{}));
    case npy_dtype::i64: return convert(load(std::int64_t{}));
    case npy_dtype::u64: return convert(load(std::uint64_t{}));
    case npy_dtype::boolean: return static_cast<T>(*p != 0);
  }
  return T{};
}

}  // namespace detail

/// Reads and validates the header of @p path. Throws rsq::io_error naming the problem.
[[nodiscard]] inline npy_header read_npy_header(std::filesystem::path const& path) {
  std::string const name = path.string();
  expect_regular_file(path);
  std::ifstream f(path, std::ios::binary);
  if (!f) detail::throw_io_error(name, ": cannot open file");
  unsigned char pre[10];
  f.read(reinterpret_cast<char*>(pre), 8);
  if (f.gcount() != 8 || std::memcmp(pre, "\x93NUMPY", 6) != 0)
    detail::throw_io_error(name, ": not a .npy file (bad magic string)");
  int const major = pre[6];
  std::size_t header_len = 0, prefix = 0;
  if (major == 1) {
    f.read(reinterpret_cast<char*>(pre + 8), 2);
    if (f.gcount() != 2) detail::throw_io_error(name, ": .npy file truncated in its header");
    header_len = std::size_t(pre[8]) | (std::size_t(pre[9]) << 8);
    prefix = 10;
  } else if (major == 2 || major == 3) {
    unsigned char l[4];
    f.read(reinterpret_cast<char*>(l), 4);
    if (f.gcount() != 4) detail::throw_io_error(name, ": .npy file truncated in its header");
    header_len = std::size_t(l[0]) | (std::size_t(l[1]) << 8) | (std::size_t(l[2]) << 16) | (std::size_t(l[3]) << 24);
    prefix = 12;
  } else {
    detail::throw_io_error(name, ": unsupported .npy format version ", major);
  }
  if (header_len > (1u << 20)) detail::throw_io_error(name, ": .npy header length ", header_len, " is implausible");
  std::string dict(header_len, '\0');
  f.read(dict.data(), std::streamsize(header_len));
  if (std::size_t(f.gcount()) != header_len) detail::throw_io_error(name, ": .npy file truncated in its header");
  auto d = detail::trim(std::string_view(dict));
  if (d.empty() || d.front() != '{' || d.back() != '}') detail::throw_io_error(name, ": .npy header is not a dict");

  npy_header h;
  detail::parse_descr(detail::dict_value(d, "descr", name), h, name);
  auto const fo = detail::dict_value(d, "fortran_order", name);
  if (fo == "True") h.fortran_order = true;
  else if (fo != "False") detail::throw_io_error(name, ": .npy fortran_order '", fo, "' is not True or False");
  detail::parse_shape(detail::dict_value(d, "shape", name), h, name);
  h.data_offset = prefix + header_len;
  return h;
}

/// Loads @p path into an xtensor of rank N and element type T (row-major).
/// @throws rsq::io_error if the file is missing, corrupt, truncated, has trailing bytes, has another rank, or (with
///         npy_conversion::exact) another dtype.
template <class T, std::size_t N>
[[nodiscard]] xt::xtensor<T, N> load_npy(std::filesystem::path const& path,
                                         npy_conversion conv = npy_conversion::exact) {
  std::string const name = path.string();
  npy_header const h = read_npy_header(path);
  if (h.shape.size() != N) {
    std::string s;
    for (auto e : h.shape) s += std::to_string(e) + ",";
    detail::throw_io_error(name, ": expected a ", N, "-d array, the file holds shape (", s, ")");
  }
  if (conv == npy_conversion::exact && h.dtype != npy_dtype_of<T>())
    detail::throw_io_error(name, ": holds ", npy_dtype_name(h.dtype), ", expected ", npy_dtype_name(npy_dtype_of<T>()));
  std::size_t count = 1;
  for (auto e : h.shape) {
    if (e != 0 && count > std::numeric_limits<std::size_t>::max() / e) detail::throw_io_error(name, ": .npy shape overflows");
    count *= e;
  }
  std::size_t const item = npy_item_size(h.dtype);
  if (count > std::numeric_limits<std::size_t>::max() / item) detail::throw_io_error(name, ": .npy shape overflows");
  std::size_t const bytes = count * item;
  std::error_code ec;
  auto const file_size = std::filesystem::file_size(path, ec);
  if (ec) detail::throw_io_error(name, ": cannot stat file: ", ec.message());
  auto const avail = file_size - std::min<std::uintmax_t>(file_size, h.data_offset);  // data bytes present
  if (avail < bytes)
    detail::throw_io_error(name, ": .npy file is truncated: shape needs ", bytes, " data bytes, the file has ", avail);
  if (avail > bytes) detail::throw_io_error(name, ": .npy file has ", avail - bytes, " unexpected trailing bytes");

  std::vector<unsigned char> raw(bytes);
  std::ifstream f(path, std::ios::binary);
  f.seekg(std::streamoff(h.data_offset));
  f.read(reinterpret_cast<char*>(raw.data()), std::streamsize(bytes));
  if (std::size_t(f.gcount()) != bytes) detail::throw_io_error(name, ": read error");

  typename xt::xtensor<T, N>::shape_type shape;
  for (std::size_t d = 0; d < N; ++d) shape[d] = h.shape[d];
  xt::xtensor<T, N> out(shape);
  bool const swap = h.big_endian != (std::endian::native == std::endian::big);
  if (!h.fortran_order || N < 2) {
    for (std::size_t i = 0; i < count; ++i) out.data()[i] = detail::read_element<T>(raw.data() + i * item, h.dtype, swap, name, i);
  } else {
    // Fortran order: the first index varies fastest in the file.
    std::array<std::size_t, N> idx{};
    for (std::size_t i = 0; i < count; ++i) {
      std::size_t c = 0;
      for (std::size_t d = 0; d < N; ++d) c = c * h.shape[d] + idx[d];
      out.data()[c] = detail::read_element<T>(raw.data() + i * item, h.dtype, swap, name, i);
      for (std::size_t d = 0; d < N; ++d) {
        if (++idx[d] < h.shape[d]) break;
        idx[d] = 0;
      }
    }
  }
  return out;
}

/// Writes @p a (any rank, row-major) to @p path as a version-1.0 `.npy` file, atomically: the data go to
/// `path.tmp` first, which is renamed over @p path only after a successful write.
template <class T, std::size_t N>
void save_npy(std::filesystem::path const& path, tensor_view<const T, N> a) {
  std::string dict = "{'descr': '";
  dict += sizeof(T) == 1 ? '|' : '<';
  switch (npy_dtype_of<T>()) {
    case npy_dtype::f32: dict += "f4"; break;
    case npy_dtype::f64: dict += "f8"; break;
    case npy_dtype::i8: dict += "i1"; break;
    case npy_dtype::u8: dict += "u1"; break;
    case npy_dtype::i16: dict += "i2"; break;
    case npy_dtype::u16: dict += "u2"; break;
    case npy_dtype::i32: dict += "i4"; break;
    case npy_dtype::u32: dict += "u4"; break;
    case npy_dtype::i64: dict += "i8"; break;
    case npy_dtype::u64: dict += "u8"; break;
    case npy_dtype::boolean: dict += "b1"; break;
  }
  dict += "', 'fortran_order': False, 'shape': (";
  for (std::size_t d = 0; d < N; ++d) dict += std::to_string(a.extent(d)) + (N == 1 || d + 1 < N ? ", " : "");
  dict += "), }";
  // Pad so that the data start on a 64-byte boundary, ending the header with '\n' (numpy's convention).
  std::size_t total = 10 + dict.size() + 1;
  dict.append((64 - total % 64) % 64, ' ');
  dict += '\n';
  if (dict.size() > 65535) rsq::detail::throw_io_error(path.string(), ": .npy header too long");

  write_file_atomic(path, [&](std::ostream& f) {
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<unsigned char>(dict.size() & 0xff),
                             static_cast<unsigned char>(dict.size() >> 8)};
    f.write(reinterpret_cast<char const*>(pre), 10);
    f.write(dict.data(), std::streamsize(dict.size()));
    std::array<index_t, N> idx{};
    index_t const count = a.size();
    using stored_t = std::conditional_t<std::is_same_v<T, bool>, std::uint8_t, T>;  // vector<bool> has no data()
    std::vector<stored_t> buf;
    buf.reserve(std::size_t(count));
    for (index_t i = 0; i < count; ++i) {
      index_t off = 0;
      for (std::size_t d = 0; d < N; ++d) off += idx[d] * a.stride(d);
      buf.push_back(stored_t(a.data()[off]));
      for (std::size_t d = N; d-- > 0;) {
        if (++idx[d] < a.extent(d)) break;
        idx[d] = 0;
      }
    }
    static_assert(std::endian::native == std::endian::little, "rsq::io::save_npy writes little-endian data only");
    f.write(reinterpret_cast<char const*>(buf.data()), std::streamsize(buf.size() * sizeof(stored_t)));
  });
}

/// Overload for owned xtensor arrays.
template <class T, std::size_t N>
void save_npy(std::filesystem::path const& path, xt::xtensor<T, N> const& a) {
  save_npy<T, N>(path, tensor_view<const T, N>(a));
}

}  // namespace rsq::io
