// SPDX-License-Identifier: MIT
// rsq/io/npy.hpp: write-read round trips, the golden data of ../shared with the shapes of their meta.json and
// mathematical properties of their content, and hand-made byte files for every kind of bad or unusual file.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <rsq/io/npy.hpp>

#include "support/shared_data.hpp"

namespace fs = std::filesystem;
using rsq::io::load_npy;
using rsq::io::npy_conversion;
using rsq::io::npy_dtype;

namespace {

std::string read_bytes(fs::path const& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write_bytes(fs::path const& p, std::string const& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// A .npy file by hand: magic, version, header length (2 bytes for 1.0, 4 for 2.0/3.0), the dict padded with spaces
// and a final '\n' to a 64-byte boundary as numpy does, then the data bytes.
std::string npy_bytes(std::string const& dict, std::string const& data, int major = 1) {
  std::size_t const prefix = major == 1 ? 10 : 12;
  std::string header = dict;
  std::size_t const total = prefix + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string out = "\x93NUMPY";
  out += char(major);
  out += char(0);
  std::size_t const n = header.size();
  out += char(n & 0xff);
  out += char((n >> 8) & 0xff);
  if (major != 1) {
    out += char((n >> 16) & 0xff);
    out += char((n >> 24) & 0xff);
  }
  return out + header + data;
}

std::string dict_for(std::string const& descr, std::string const& shape, bool fortran = false) {
  return "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") + ", 'shape': " + shape + ", }";
}

// Little-endian bytes of a sequence of values (the test machine is little-endian, as save_npy requires).
template <class T>
std::string le_bytes(std::vector<T> const& v) {
  std::string s(v.size() * sizeof(T), '\0');
  if (!v.empty()) std::memcpy(s.data(), v.data(), s.size());
  return s;
}

template <class T>
std::string be_bytes(std::vector<T> const& v) {
  std::string s = le_bytes(v);
  for (std::size_t i = 0; i < v.size(); ++i) std::reverse(s.begin() + std::ptrdiff_t(i * sizeof(T)), s.begin() + std::ptrdiff_t((i + 1) * sizeof(T)));
  return s;
}

template <class T, std::size_t N>
xt::xtensor<T, N> random_array(std::array<std::size_t, N> const& shape, std::uint32_t seed) {
  std::mt19937 gen(seed);
  auto a = xt::xtensor<T, N>::from_shape(shape);
  for (auto& x : a) {
    if constexpr (std::is_floating_point_v<T>) x = T(std::uniform_real_distribution<double>(-1e3, 1e3)(gen));
    else x = T(gen());  // wraps: covers the whole range of the type, negative values included
  }
  return a;
}

template <class T>
std::string descr_of() {
  if constexpr (std::is_same_v<T, float>) return "<f4";
  else if constexpr (std::is_same_v<T, double>) return "<f8";
  else if constexpr (std::is_same_v<T, std::int32_t>) return "<i4";
  else return "|u1";
}

// Integer value of "key": n in a small JSON file (meta.json).
long meta_int(std::string const& json, std::string const& key) {
  auto const pos = json.find("\"" + key + "\"");
  REQUIRE(pos != std::string::npos);
  auto const colon = json.find(':', pos);
  return std::stol(json.substr(colon + 1));
}

fs::path scratch() { return rsq_test::temp_dir("io_npy"); }

}  // namespace

TEST_SUITE("io.npy") {
  TEST_CASE_TEMPLATE("write-read round trip for ranks 1 to 3", T, float, double, std::int32_t, std::uint8_t) {
    auto const dir = scratch();
    auto const a1 = random_array<T, 1>({37}, 1);
    auto const a2 = random_array<T, 2>({5, 13}, 2);
    auto const a3 = random_array<T, 3>({3, 4, 7}, 3);
    rsq::io::save_npy(dir / "a1.npy", a1);
    rsq::io::save_npy(dir / "a2.npy", a2);
    rsq::io::save_npy(dir / "a3.npy", a3);
    CHECK(load_npy<T, 1>(dir / "a1.npy") == a1);
    CHECK(load_npy<T, 2>(dir / "a2.npy") == a2);
    CHECK(load_npy<T, 3>(dir / "a3.npy") == a3);
    CHECK_FALSE(fs::exists(dir / "a2.npy.tmp"));  // the temporary file was renamed into place

    // The file itself, checked byte by byte rather than through the reader: version 1.0, the numpy dict, data on
    // a 64-byte boundary, then the elements in C order, little endian.
    auto const bytes = read_bytes(dir / "a2.npy");
    REQUIRE(bytes.size() > 10);
    CHECK(bytes.substr(0, 8) == std::string("\x93NUMPY\x01\x00", 8));
    std::size_t const header_len = std::size_t(std::uint8_t(bytes[8])) | (std::size_t(std::uint8_t(bytes[9])) << 8);
    CHECK((10 + header_len) % 64 == 0);
    std::string const header = bytes.substr(10, header_len);
    CHECK(header.find("'descr': '" + descr_of<T>() + "'") != std::string::npos);
    CHECK(header.find("'fortran_order': False") != std::string::npos);
    CHECK(header.find("'shape': (5, 13)") != std::string::npos);
    CHECK(header.back() == '\n');
    REQUIRE(bytes.size() == 10 + header_len + a2.size() * sizeof(T));
    CHECK(std::memcmp(bytes.data() + 10 + header_len, a2.data(), a2.size() * sizeof(T)) == 0);

    auto const h = rsq::io::read_npy_header(dir / "a3.npy");
    CHECK(h.dtype == rsq::io::npy_dtype_of<T>());
    CHECK_FALSE(h.big_endian);
    CHECK_FALSE(h.fortran_order);
    CHECK(h.shape == std::vector<std::size_t>{3, 4, 7});
    CHECK(h.data_offset % 64 == 0);

    // Overwriting an existing file works and leaves the new content.
    rsq::io::save_npy(dir / "a1.npy", a2);
    CHECK(load_npy<T, 2>(dir / "a1.npy") == a2);
  }

  TEST_CASE("round trips of empty arrays, a 0-d array and strided views") {
    auto const dir = scratch();
    auto const empty = xt::xtensor<float, 2>::from_shape({0, 3});
    rsq::io::save_npy(dir / "e.npy", empty);
    auto const e = load_npy<float, 2>(dir / "e.npy");
    CHECK(e.shape()[0] == 0);
    CHECK(e.shape()[1] == 3);

    xt::xtensor<double, 0> scalar;
    scalar() = -2.75;
    rsq::io::save_npy(dir / "s.npy", scalar);
    CHECK(load_npy<double, 0>(dir / "s.npy")() == -2.75);

    // A column-major Eigen matrix is written in logical (row-major) order.
    Eigen::MatrixXf m(3, 4);
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 4; ++j) m(i, j) = float(10 * i + j);
    rsq::io::save_npy<float, 2>(dir / "m.npy", rsq::matrix_view<const float>(m));
    auto const r = load_npy<float, 2>(dir / "m.npy");
    REQUIRE(r.shape()[0] == 3);
    REQUIRE(r.shape()[1] == 4);
    for (std::size_t i = 0; i < 3; ++i)
      for (std::size_t j = 0; j < 4; ++j) CHECK(r(i, j) == float(10 * i + j));
  }

  TEST_CASE("golden solver cases load with the shapes of their meta.json") {
    RSQ_NEED_SHARED(shared);
    int cases = 0;
    for (auto const& entry : fs::directory_iterator(shared / "golden")) {
      auto const dir = entry.path();
      if (!fs::exists(dir / "W.npy")) continue;
      CAPTURE(dir.string());
      auto const meta = rsq_test::read_text(dir / "meta.json");
      auto const rows = std::size_t(meta_int(meta, "rows")), cols = std::size_t(meta_int(meta, "cols"));
      bool const f64 = dir.extension() == ".f64";
      auto check = [&]<class T>(T) {
        auto const W = load_npy<T, 2>(dir / "W.npy");
        auto const H = load_npy<T, 2>(dir / "H.npy");
        auto const Q = load_npy<T, 2>(dir / "Q.npy");
        CHECK(W.shape() == std::array<std::size_t, 2>{rows, cols});
        CHECK(Q.shape() == W.shape());
        CHECK(H.shape() == std::array<std::size_t, 2>{cols, cols});
        // H = (2/N)·Σ x xᵀ is symmetric with a non-negative diagonal; all values are finite.
        double asym = 0, hmax = 0;
        long negative_diag = 0;
        for (std::size_t i = 0; i < cols; ++i) {
          negative_diag += H(i, i) < 0;
          for (std::size_t j = 0; j < cols; ++j) {
            asym = std::max(asym, std::abs(double(H(i, j)) - double(H(j, i))));
            hmax = std::max(hmax, std::abs(double(H(i, j))));
          }
        }
        CHECK(negative_diag == 0);
        CHECK(hmax > 0);
        CHECK(asym <= 1e-5 * hmax);
        CHECK(std::all_of(W.begin(), W.end(), [](T x) { return std::isfinite(x); }));
        // The other precision cannot be read with npy_conversion::exact, and converts with numeric.
        using U = std::conditional_t<std::is_same_v<T, float>, double, float>;
        CHECK_THROWS_AS((void)(load_npy<U, 2>(dir / "W.npy")), rsq::io_error);
        auto const Wu = load_npy<U, 2>(dir / "W.npy", npy_conversion::numeric);
        CHECK(Wu(rows - 1, cols - 1) == U(W(rows - 1, cols - 1)));
      };
      if (f64) check(double{});
      else check(float{});
      if (fs::exists(dir / "X.npy")) {
        auto const X = load_npy<float, 3>(dir / "X.npy");
        CHECK(X.shape()[2] == cols);
        CHECK(X.shape()[0] * X.shape()[1] == std::size_t(meta_int(meta, "tokens")));
      }
      if (fs::exists(dir / "importance.npy")) {
        auto const imp = load_npy<double, 2>(dir / "importance.npy", npy_conversion::numeric);
        CHECK(imp.shape()[0] == std::size_t(meta_int(meta, "sequences")));
      }
      ++cases;
    }
    CHECK(cases >= 15);
  }

  TEST_CASE("golden Hadamard matrices: int8 K x K with hadK·hadKᵀ = K·I, and y = (hadK ⊗ H_2)·x / √n for n = 24") {
    RSQ_NEED_SHARED(shared);
    int checked = 0;
    for (int K : {12, 20, 28, 36, 40, 48, 52, 60, 108, 140, 148, 156, 172}) {
      CAPTURE(K);
      auto const dir = shared / "golden" / ("hadamard_K" + std::to_string(K));
      auto const h = load_npy<std::int8_t, 2>(dir / "hadK.npy");
      REQUIRE(h.shape() == std::array<std::size_t, 2>{std::size_t(K), std::size_t(K)});
      CHECK(meta_int(rsq_test::read_text(dir / "meta.json"), "K") == K);
      long bad = 0;
      for (int i = 0; i < K; ++i)
        for (int j = 0; j < K; ++j) {
          long dot = 0;
          for (int k = 0; k < K; ++k) dot += long(h(std::size_t(i), std::size_t(k))) * h(std::size_t(j), std::size_t(k));
          bad += dot != (i == j ? K : 0);
        }
      CHECK(bad == 0);
      ++checked;
    }
    CHECK(checked == 13);

    auto const dir = shared / "golden" / "hadamard_n24";
    auto const x = load_npy<double, 2>(dir / "x.npy");
    auto const y = load_npy<double, 2>(dir / "y.npy");
    auto const h12 = load_npy<double, 2>(shared / "golden" / "hadamard_K12" / "hadK.npy", npy_conversion::numeric);
    REQUIRE(x.shape() == std::array<std::size_t, 2>{3, 24});
    REQUIRE(y.shape() == x.shape());
    // y was computed in float32 by the reference (errors ~1e-7); a misread file or a wrong order would be off by O(1).
    double const h2[2][2] = {{1, 1}, {1, -1}};
    double max_err = 0;
    for (std::size_t r = 0; r < 3; ++r)
      for (std::size_t i = 0; i < 24; ++i) {
        double acc = 0;  // (A ⊗ B)[i, j] = A[i/2, j/2]·B[i%2, j%2]
        for (std::size_t j = 0; j < 24; ++j) acc += h12(i / 2, j / 2) * h2[i % 2][j % 2] * x(r, j);
        max_err = std::max(max_err, std::abs(y(r, i) - acc / std::sqrt(24.0)));
      }
    CHECK(max_err < 1e-6);
  }

  TEST_CASE("versions 2.0 and 3.0 (4-byte header length) are read") {
    auto const dir = scratch();
    std::vector<float> v{1.f, -2.f, 3.5f, 4.f, 5.f, 6.f};
    for (int major : {2, 3}) {
      CAPTURE(major);
      write_bytes(dir / "v.npy", npy_bytes(dict_for("<f4", "(2, 3)"), le_bytes(v), major));
      auto const a = load_npy<float, 2>(dir / "v.npy");
      CHECK(a(0, 0) == 1.f);
      CHECK(a(0, 2) == 3.5f);
      CHECK(a(1, 2) == 6.f);
      CHECK(rsq::io::read_npy_header(dir / "v.npy").data_offset % 64 == 0);
    }
  }

  TEST_CASE("big-endian data are byte-swapped") {
    auto const dir = scratch();
    write_bytes(dir / "f4.npy", npy_bytes(dict_for(">f4", "(3,)"), be_bytes<float>({1.5f, -0.25f, 1e30f})));
    // 1.5f is 0x3FC00000: stored big-endian the file's first data byte is 0x3F.
    CHECK(read_bytes(dir / "f4.npy")[rsq::io::read_npy_header(dir / "f4.npy").data_offset] == '\x3F');
    auto const f = load_npy<float, 1>(dir / "f4.npy");
    CHECK(f(0) == 1.5f);
    CHECK(f(1) == -0.25f);
    CHECK(f(2) == 1e30f);
    CHECK(rsq::io::read_npy_header(dir / "f4.npy").big_endian);

    write_bytes(dir / "i4.npy", npy_bytes(dict_for(">i4", "(2, 2)"), be_bytes<std::int32_t>({-2, 1 << 24, 7, -65536})));
    auto const i = load_npy<std::int32_t, 2>(dir / "i4.npy");
    CHECK(i(0, 0) == -2);
    CHECK(i(0, 1) == (1 << 24));
    CHECK(i(1, 0) == 7);
    CHECK(i(1, 1) == -65536);

    write_bytes(dir / "f8.npy", npy_bytes(dict_for(">f8", "(2,)"), be_bytes<double>({3.141592653589793, -1e-300})));
    auto const d = load_npy<double, 1>(dir / "f8.npy");
    CHECK(d(0) == 3.141592653589793);
    CHECK(d(1) == -1e-300);

    // big-endian int16 read as float (numeric conversion after the swap)
    write_bytes(dir / "i2.npy", npy_bytes(dict_for(">i2", "(2,)"), be_bytes<std::int16_t>({-300, 258})));
    auto const s = load_npy<float, 1>(dir / "i2.npy", npy_conversion::numeric);
    CHECK(s(0) == -300.f);
    CHECK(s(1) == 258.f);
  }

  TEST_CASE("fortran_order data are reordered to C order") {
    auto const dir = scratch();
    // (2, 3): the file lists a00 a10 a01 a11 a02 a12.
    write_bytes(dir / "f2.npy", npy_bytes(dict_for("<i4", "(2, 3)", true), le_bytes<std::int32_t>({0, 10, 1, 11, 2, 12})));
    auto const a = load_npy<std::int32_t, 2>(dir / "f2.npy");
    for (std::size_t i = 0; i < 2; ++i)
      for (std::size_t j = 0; j < 3; ++j) CHECK(a(i, j) == std::int32_t(10 * i + j));
    CHECK(rsq::io::read_npy_header(dir / "f2.npy").fortran_order);
    // (2, 3, 4): file element i + 2j + 6k holds 100i + 10j + k.
    std::vector<double> v(24);
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j)
        for (int k = 0; k < 4; ++k) v[std::size_t(i + 2 * j + 6 * k)] = 100 * i + 10 * j + k;
    write_bytes(dir / "f3.npy", npy_bytes(dict_for("<f8", "(2, 3, 4)", true), le_bytes(v)));
    auto const b = load_npy<double, 3>(dir / "f3.npy");
    long bad = 0;
    for (std::size_t i = 0; i < 2; ++i)
      for (std::size_t j = 0; j < 3; ++j)
        for (std::size_t k = 0; k < 4; ++k) bad += b(i, j, k) != double(100 * i + 10 * j + k);
    CHECK(bad == 0);
    // 1-d arrays are the same in both orders.
    write_bytes(dir / "f1.npy", npy_bytes(dict_for("<f4", "(3,)", true), le_bytes<float>({1.f, 2.f, 3.f})));
    CHECK(load_npy<float, 1>(dir / "f1.npy")(2) == 3.f);
  }

  TEST_CASE("dtypes: exact match required by default, numeric conversion on request") {
    auto const dir = scratch();
    write_bytes(dir / "f8.npy", npy_bytes(dict_for("<f8", "(2,)"), le_bytes<double>({0.1, -7.0})));
    auto const p = dir / "f8.npy";
    CHECK_THROWS_WITH_AS((void)(load_npy<float, 1>(p)), doctest::Contains("holds float64, expected float32"), rsq::io_error);
    CHECK_THROWS_WITH_AS((void)(load_npy<float, 1>(p)), doctest::Contains(p.string().c_str()), rsq::io_error);
    auto const f = load_npy<float, 1>(p, npy_conversion::numeric);
    CHECK(f(0) == 0.1f);
    CHECK(f(1) == -7.f);

    write_bytes(dir / "i4.npy", npy_bytes(dict_for("<i4", "(3,)"), le_bytes<std::int32_t>({-5, 0, 123456})));
    CHECK_THROWS_WITH_AS((void)(load_npy<std::uint8_t, 1>(dir / "i4.npy")), doctest::Contains("holds int32, expected uint8"),
                         rsq::io_error);
    CHECK_THROWS_WITH_AS((void)(load_npy<std::int64_t, 1>(dir / "i4.npy")), doctest::Contains("holds int32, expected int64"),
                         rsq::io_error);
    auto const d = load_npy<double, 1>(dir / "i4.npy", npy_conversion::numeric);
    CHECK(d(0) == -5.0);
    CHECK(d(2) == 123456.0);

    write_bytes(dir / "u1.npy", npy_bytes(dict_for("|u1", "(2,)"), std::string("\xff\x01", 2)));
    auto const u = load_npy<std::int32_t, 1>(dir / "u1.npy", npy_conversion::numeric);
    CHECK(u(0) == 255);
    CHECK(u(1) == 1);

    write_bytes(dir / "b1.npy", npy_bytes(dict_for("|b1", "(3,)"), std::string("\x01\x00\x01", 3)));
    auto const b = load_npy<bool, 1>(dir / "b1.npy");
    CHECK(b(0));
    CHECK_FALSE(b(1));
    CHECK(load_npy<float, 1>(dir / "b1.npy", npy_conversion::numeric)(2) == 1.f);

    write_bytes(dir / "u8.npy", npy_bytes(dict_for("<u8", "(1,)"), le_bytes<std::uint64_t>({1ull << 40})));
    CHECK(load_npy<double, 1>(dir / "u8.npy", npy_conversion::numeric)(0) == 1099511627776.0);
  }

  TEST_CASE("numeric conversion refuses values the target type cannot hold, naming the element") {
    auto const dir = scratch();
    auto const nan = std::numeric_limits<double>::quiet_NaN();
    write_bytes(dir / "f8.npy", npy_bytes(dict_for("<f8", "(4,)"), le_bytes<double>({2.0, -3.0, 2.5, nan})));
    CHECK_THROWS_WITH_AS((void)(load_npy<std::int32_t, 1>(dir / "f8.npy", npy_conversion::numeric)),
                         doctest::Contains("element 2 (2.5) is not representable as int32"), rsq::io_error);
    write_bytes(dir / "nan.npy", npy_bytes(dict_for("<f8", "(2,)"), le_bytes<double>({1.0, nan})));
    CHECK_THROWS_WITH_AS((void)(load_npy<std::int64_t, 1>(dir / "nan.npy", npy_conversion::numeric)),
                         doctest::Contains("element 1"), rsq::io_error);
    // NaN stays NaN in a floating target; a float64 beyond float32's range does not silently become inf.
    CHECK(std::isnan(load_npy<float, 1>(dir / "nan.npy", npy_conversion::numeric)(1)));
    write_bytes(dir / "big.npy", npy_bytes(dict_for("<f8", "(1,)"), le_bytes<double>({1e300})));
    CHECK_THROWS_WITH_AS((void)(load_npy<float, 1>(dir / "big.npy", npy_conversion::numeric)),
                         doctest::Contains("not representable as float32"), rsq::io_error);
    // Integer ranges: 2^31 does not fit int32, -1 does not fit uint8, 2^63 - 1024 (exact in double) fits int64.
    write_bytes(dir / "f8b.npy", npy_bytes(dict_for("<f8", "(1,)"), le_bytes<double>({2147483648.0})));
    CHECK_THROWS_AS((void)(load_npy<std::int32_t, 1>(dir / "f8b.npy", npy_conversion::numeric)), rsq::io_error);
    write_bytes(dir / "i2.npy", npy_bytes(dict_for("<i2", "(2,)"), le_bytes<std::int16_t>({4, -1})));
    CHECK_THROWS_WITH_AS((void)(load_npy<std::uint8_t, 1>(dir / "i2.npy", npy_conversion::numeric)),
                         doctest::Contains("element 1 (-1)"), rsq::io_error);
    write_bytes(dir / "f8c.npy", npy_bytes(dict_for("<f8", "(2,)"), le_bytes<double>({9223372036854774784.0, 9223372036854775808.0})));
    CHECK_THROWS_WITH_AS((void)(load_npy<std::int64_t, 1>(dir / "f8c.npy", npy_conversion::numeric)),
                         doctest::Contains("element 1"), rsq::io_error);
  }

  TEST_CASE("corrupt and unsupported files throw rsq::io_error naming the file and the problem") {
    auto const dir = scratch();
    auto const p = dir / "bad.npy";
    std::string const data12 = le_bytes<float>({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
    auto load2 = [&] { return load_npy<float, 2>(p); };
    using rsq::io_error;

    SUBCASE("missing file") {
      auto const missing = dir / "does_not_exist.npy";
      CHECK_THROWS_WITH_AS((void)(load_npy<float, 2>(missing)), doctest::Contains("no such file"), io_error);
      CHECK_THROWS_WITH_AS((void)(load_npy<float, 2>(missing)), doctest::Contains("does_not_exist.npy"), io_error);
      CHECK_THROWS_AS((void)rsq::io::read_npy_header(missing), io_error);
    }
    SUBCASE("bad magic") {
      auto bytes = npy_bytes(dict_for("<f4", "(3, 4)"), data12);
      bytes[5] = 'X';
      write_bytes(p, bytes);
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("bad magic string"), io_error);
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains(p.string().c_str()), io_error);
      write_bytes(p, "\x93NUM");  // shorter than the magic and version
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("bad magic string"), io_error);
      write_bytes(p, "");
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("bad magic string"), io_error);
      write_bytes(p, "a,b,c\n1,2,3\n");
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("not a .npy file"), io_error);
    }
    SUBCASE("unsupported version") {
      for (int major : {0, 4, 255}) {
        CAPTURE(major);
        auto bytes = npy_bytes(dict_for("<f4", "(3, 4)"), data12);
        bytes[6] = char(major);
        write_bytes(p, bytes);
        CHECK_THROWS_WITH_AS(load2(), doctest::Contains(("unsupported .npy format version " + std::to_string(major)).c_str()),
                             io_error);
      }
    }
    SUBCASE("truncated header") {
      auto const bytes = npy_bytes(dict_for("<f4", "(3, 4)"), data12);
      write_bytes(p, bytes.substr(0, 40));  // the dict is cut short
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("truncated in its header"), io_error);
      write_bytes(p, bytes.substr(0, 9));  // half of the 2-byte length
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("truncated in its header"), io_error);
      auto const v2 = npy_bytes(dict_for("<f4", "(3, 4)"), data12, 2);
      write_bytes(p, v2.substr(0, 10));  // half of the 4-byte length
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("truncated in its header"), io_error);
    }
    SUBCASE("truncated data") {
      write_bytes(p, npy_bytes(dict_for("<f4", "(3, 4)"), data12.substr(0, 40)));
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("truncated: shape needs 48 data bytes, the file has 40"), io_error);
      write_bytes(p, npy_bytes(dict_for("<f4", "(3, 4)"), ""));
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("the file has 0"), io_error);
      // A huge shape on a small file fails on the size check, before any allocation.
      write_bytes(p, npy_bytes(dict_for("<f4", "(100000, 100000)"), data12));
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("shape needs 40000000000 data bytes"), io_error);
    }
    SUBCASE("trailing bytes") {
      write_bytes(p, npy_bytes(dict_for("<f4", "(3, 4)"), data12 + "abcd"));
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("has 4 unexpected trailing bytes"), io_error);
    }
    SUBCASE("wrong rank") {
      write_bytes(p, npy_bytes(dict_for("<f4", "(3, 4)"), data12));
      CHECK_THROWS_WITH_AS((void)(load_npy<float, 3>(p)), doctest::Contains("expected a 3-d array"), io_error);
      CHECK_THROWS_WITH_AS((void)(load_npy<float, 1>(p)), doctest::Contains("expected a 1-d array"), io_error);
      CHECK_THROWS_WITH_AS((void)(load_npy<float, 3>(p)), doctest::Contains("3,4"), io_error);
    }
    SUBCASE("header without 'shape', 'descr' or 'fortran_order'") {
      write_bytes(p, npy_bytes("{'descr': '<f4', 'fortran_order': False, }", data12));
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("has no 'shape' entry"), io_error);
      write_bytes(p, npy_bytes("{'fortran_order': False, 'shape': (3, 4), }", data12));
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("has no 'descr' entry"), io_error);
      write_bytes(p, npy_bytes("{'descr': '<f4', 'shape': (3, 4), }", data12));
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("has no 'fortran_order' entry"), io_error);
    }
    SUBCASE("negative, non-numeric, empty or unclosed dimensions") {
      for (std::string shape : {"(-1, 4)", "(3, -4)", "('a', 4)", "(3, x)", "(3.0, 4)", "(3, 4L)", "(0x3, 4)"}) {
        CAPTURE(shape);
        write_bytes(p, npy_bytes(dict_for("<f4", shape), data12));
        CHECK_THROWS_WITH_AS(load2(), doctest::Contains("is not a non-negative integer"), io_error);
      }
      write_bytes(p, npy_bytes(dict_for("<f4", "(3,, 4)"), data12));
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("empty dimension"), io_error);
      write_bytes(p, npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4 }", data12));
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("shape is not closed"), io_error);
      write_bytes(p, npy_bytes(dict_for("<f4", "[3, 4]"), data12));
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("is malformed"), io_error);
    }
    SUBCASE("dimensions whose product overflows") {
      write_bytes(p, npy_bytes(dict_for("<f4", "(4294967296, 4294967296)"), data12));
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("shape overflows"), io_error);
      write_bytes(p, npy_bytes(dict_for("<f4", "(99999999999999999999999, 1)"), data12));
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("dimension overflows"), io_error);
    }
    SUBCASE("absurd header length") {
      std::string bytes = "\x93NUMPY";
      bytes += '\x02';
      bytes += '\x00';
      bytes += std::string("\xff\xff\xff\xff", 4);
      write_bytes(p, bytes + "{'descr': '<f4'}");
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("header length 4294967295 is implausible"), io_error);
      bytes[8] = '\x01';
      bytes[9] = '\x00';
      bytes[10] = '\x10';
      bytes[11] = '\x00';  // 2^20 + 1
      write_bytes(p, bytes + "{}");
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("is implausible"), io_error);
    }
    SUBCASE("header that is not a dict, unsupported dtypes, bad fortran_order") {
      write_bytes(p, npy_bytes("hello", data12));
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("header is not a dict"), io_error);
      for (std::string descr : {"<f2", "<c8", "<U10", "|O", "<M8"}) {
        CAPTURE(descr);
        write_bytes(p, npy_bytes(dict_for(descr, "(3, 4)"), data12));
        CHECK_THROWS_WITH_AS(load2(), doctest::Contains("is not supported"), io_error);
      }
      write_bytes(p, npy_bytes(dict_for("!f4", "(3, 4)"), data12));
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("unknown byte order"), io_error);
      write_bytes(p, npy_bytes("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3, 4), }", data12));
      CHECK_THROWS_AS(load2(), io_error);
      write_bytes(p, npy_bytes("{'descr': '<f4', 'fortran_order': 0, 'shape': (3, 4), }", data12));
      CHECK_THROWS_WITH_AS(load2(), doctest::Contains("fortran_order '0' is not True or False"), io_error);
    }
    SUBCASE("a directory is not a file") {
      fs::create_directories(dir / "d.npy");
      CHECK_THROWS_AS((void)(load_npy<float, 2>(dir / "d.npy")), io_error);
    }
  }

  TEST_CASE("save_npy reports a destination it cannot write") {
    auto const dir = scratch();
    CHECK_THROWS_WITH_AS(rsq::io::save_npy(dir / "no_such_dir" / "x.npy", xt::xtensor<float, 1>::from_shape({3})),
                         doctest::Contains("cannot open for writing"), rsq::io_error);
  }

  // For a byte count close to 2^64, data_offset + bytes would wrap; the check must not add them.
  TEST_CASE("a shape of nearly 2^64 bytes is reported as truncated") {
    auto const dir = scratch();
    auto const p = dir / "huge.npy";
    // 2305843009213693951 float64 = 2^64 − 8 bytes: no overflow in the element count, but + data_offset wraps.
    write_bytes(p, npy_bytes(dict_for("<f8", "(2305843009213693951,)"), le_bytes<double>({1.0})));
    CHECK_THROWS_WITH_AS((void)(load_npy<double, 1>(p)), doctest::Contains("truncated"), rsq::io_error);
  }
}
