// SPDX-License-Identifier: MIT
// rsq/io/gguf.hpp: write→read round trips of every metadata type and array kind and of F32/F16/Q4_0/Q4_1/Q8_0
// tensors at alignments 32 and 64 (bytes in place, callbacks, streams), the byte-exact layout of a small file
// computed by hand, the writer's checks, and one hand-made corrupt file per refusal of the reader.
// Also rsq/io/imatrix.hpp: GGUF and legacy .dat round trips, the keys and tensor shapes llama-quantize reads, the .dat
// layout byte by byte, the writers' checks, and one corrupt file per refusal of the reader.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <rsq/io/gguf.hpp>
#include <rsq/io/imatrix.hpp>

#include "support/shared_data.hpp"

using rsq::index_t;
using rsq::io::gguf_file;
using rsq::io::gguf_type;
using rsq::io::gguf_value;
using rsq::io::gguf_writer;
using rsq::pack::ggml_type;

namespace {

/// A file by hand, field by field (little-endian).
struct raw {
  std::string s;
  raw& u32(std::uint32_t v) { return put(v); }
  raw& u64(std::uint64_t v) { return put(v); }
  raw& i32(std::int32_t v) { return put(v); }
  raw& text(std::string_view t) {  // bytes without a length (the legacy imatrix .dat names theirs with an i32)
    s.append(t);
    return *this;
  }
  raw& str(std::string_view v) {
    u64(v.size());
    s.append(v);
    return *this;
  }
  raw& bytes(std::size_t n, char c = '\0') {
    s.append(n, c);
    return *this;
  }
  raw& pad(std::size_t a) { return bytes((a - s.size() % a) % a); }
  /// Header: magic, version, counts.
  raw& header(std::uint64_t tensors, std::uint64_t kvs, std::uint32_t version = 3) {
    s.append("GGUF");
    return u32(version).u64(tensors).u64(kvs);
  }
  /// A tensor info of 1 to 4 dimensions.
  raw& tensor(std::string_view name, std::vector<std::uint64_t> ne, std::uint32_t type, std::uint64_t offset) {
    str(name).u32(std::uint32_t(ne.size()));
    for (auto d : ne) u64(d);
    return u32(type).u64(offset);
  }
  template <class T>
  raw& put(T v) {
    char b[sizeof v];
    std::memcpy(b, &v, sizeof v);
    s.append(b, sizeof v);
    return *this;
  }
};

gguf_file parse(std::string const& bytes) {
  return gguf_file::parse(std::as_bytes(std::span(bytes.data(), bytes.size())), "hand.gguf");
}

std::string serialize(gguf_writer const& w) {
  std::ostringstream os;
  w.write(os);
  return os.str();
}

std::vector<float> random_values(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

/// Rows of @p cols values quantized by llama.cpp's reference rule.
std::vector<std::byte> quantized(ggml_type t, std::vector<float> const& v, index_t cols) {
  std::size_t const rb = rsq::pack::row_bytes(t, cols);
  std::size_t const rows = v.size() / std::size_t(cols);
  std::vector<std::byte> out(rb * rows);
  for (std::size_t r = 0; r < rows; ++r)
    rsq::pack::quantize_row_reference(t, std::span(v).subspan(r * std::size_t(cols), std::size_t(cols)),
                                      std::span(out).subspan(r * rb, rb));
  return out;
}

/// A valid file with one F32 tensor "t" of 8 elements, whose metadata is @p kvs (already encoded) times @p n_kv.
std::string one_tensor_file(raw kvs, std::uint64_t n_kv, std::uint32_t alignment = 32) {
  raw f;
  f.header(1, n_kv);
  f.s += kvs.s;
  f.tensor("t", {8}, 0, 0).pad(alignment).bytes(32);
  return f.s;
}

}  // namespace

TEST_SUITE("gguf") {
  TEST_CASE("gguf: every value type and array kind round-trips with its exact type, in insertion order") {
    auto const dir = rsq_test::temp_dir("gguf_values");
    gguf_writer w;
    w.set("u8", std::uint8_t(200));
    w.set("i8", std::int8_t(-100));
    w.set("u16", std::uint16_t(60000));
    w.set("i16", std::int16_t(-30000));
    w.set("u32", std::uint32_t(4000000000u));
    w.set("i32", std::int32_t(-2000000000));
    w.set("f32", 1.5f);
    w.set("bool", true);
    w.set("string", "hello gguf");
    w.set("u64", std::uint64_t(1) << 60);
    w.set("i64", -(std::int64_t(1) << 60));
    w.set("f64", 0.1);
    w.set("a.u8", std::vector<std::uint8_t>{0, 255});
    w.set("a.i8", std::vector<std::int8_t>{-128, 127});
    w.set("a.u16", std::vector<std::uint16_t>{1, 65535});
    w.set("a.i16", std::vector<std::int16_t>{-32768, 32767});
    w.set("a.u32", std::vector<std::uint32_t>{1, 2, 3});
    w.set("a.i32", std::vector<std::int32_t>{-1, 0, 1});
    w.set("a.f32", std::vector<float>{0.25f, -2.f});
    w.set("a.bool", std::vector<bool>{true, false, true});
    w.set("a.string", std::vector<std::string>{"", "a", "ünïcode"});
    w.set("a.u64", std::vector<std::uint64_t>{std::numeric_limits<std::uint64_t>::max()});
    w.set("a.i64", std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::min()});
    w.set("a.f64", std::vector<double>{1e300});
    w.set("a.empty", std::vector<std::int32_t>{});
    float const scores[] = {-1.f, 2.f};
    w.set("a.span", std::span<const float>(scores));
    w.set("u32", std::uint32_t(7));  // replaced in place
    w.write(dir / "values.gguf");

    auto const f = gguf_file::open(dir / "values.gguf");
    CHECK(f.version() == 3);
    CHECK(f.tensors().empty());
    REQUIRE(f.metadata().size() == w.metadata().size());
    for (std::size_t i = 0; i < f.metadata().size(); ++i) {
      CHECK(f.metadata()[i].key == w.metadata()[i].key);
      CHECK(f.metadata()[i].value == w.metadata()[i].value);
    }
    CHECK(f.metadata()[4].key == "u32");
    CHECK(f.get<std::uint32_t>("u32") == 7);
    CHECK(f.at("u8").type() == gguf_type::u8);
    CHECK(f.at("bool").type() == gguf_type::boolean);
    CHECK(f.at("f64").type() == gguf_type::f64);
    CHECK(f.at("a.string").type() == gguf_type::array);
    CHECK(f.at("a.string").element_type() == gguf_type::string);
    CHECK(f.at("a.string").size() == 3);
    CHECK(f.at("a.empty").size() == 0);
    CHECK(f.get<std::string>("string") == "hello gguf");
    CHECK(f.get<std::vector<bool>>("a.bool") == std::vector<bool>{true, false, true});
    CHECK(f.get<std::vector<float>>("a.span") == std::vector<float>{-1.f, 2.f});
    CHECK(f.get_or<std::uint32_t>("absent", 32) == 32);
    CHECK(f.find("absent") == nullptr);
    CHECK_THROWS_WITH_AS((void)f.get<std::int32_t>("u32"),
                         doctest::Contains("key \"u32\" is UINT32, expected INT32"), rsq::io_error);
    CHECK_THROWS_WITH_AS((void)f.get<std::vector<std::string>>("a.f32"),
                         doctest::Contains("\"a.f32\" is ARRAY[FLOAT32], expected ARRAY[STRING]"), rsq::io_error);
    CHECK_THROWS_WITH_AS((void)f.at("absent"), doctest::Contains("no metadata key \"absent\""), rsq::io_error);
  }

  TEST_CASE("gguf: F32, F16, Q4_0, Q4_1 and Q8_0 tensors round-trip at alignments 32 and 64") {
    for (std::uint32_t alignment : {32u, 64u}) {
      CAPTURE(alignment);
      auto const dir = rsq_test::temp_dir("gguf_tensors");
      index_t const cols = 64, rows = 3;
      auto const values = random_values(std::size_t(cols * rows), alignment);
      ggml_type const types[] = {ggml_type::f32, ggml_type::f16, ggml_type::q4_0, ggml_type::q4_1, ggml_type::q8_0};
      std::vector<std::vector<std::byte>> data;
      for (auto t : types) data.push_back(quantized(t, values, cols));

      // [snippet:gguf_write]
      gguf_writer w;
      w.set("general.architecture", "llama");
      w.set("general.alignment", alignment);
      for (std::size_t i = 0; i < 5; ++i)  // bytes from memory: ne = {in_features, out_features}
        w.add_tensor("w." + std::to_string(i), {cols, rows}, types[i], data[i]);
      w.add_tensor_filled("filled", {cols, rows}, ggml_type::q8_0, [&](std::span<std::byte> out) {
        std::copy(data[4].begin(), data[4].end(), out.begin());  // produced while the file is written
      });
      w.add_tensor_streamed("streamed", {cols}, ggml_type::f32, [&](std::ostream& os) {
        os.write(reinterpret_cast<char const*>(values.data()), std::streamsize(cols * 4));
      });
      w.write(dir / "model.gguf");

      auto const f = rsq::io::gguf_file::open(dir / "model.gguf");
      auto const q = f.to_float("w.2");  // Q4_0 dequantized: q.rows() × q.cols() floats, row-major
      // [snippet:gguf_write]

      CHECK(f.alignment() == alignment);
      CHECK(f.data_offset() % alignment == 0);
      CHECK(std::filesystem::file_size(dir / "model.gguf") == w.file_bytes());
      REQUIRE(f.tensors().size() == 7);
      for (std::size_t i = 0; i < 5; ++i) {
        auto const& t = f.tensors()[i];
        CAPTURE(i);
        CHECK(t.name == "w." + std::to_string(i));
        CHECK(t.type == types[i]);
        CHECK(t.ne == std::vector<index_t>{cols, rows});
        CHECK(t.offset % alignment == 0);
        auto const b = f.bytes(t);
        REQUIRE(b.size() == data[i].size());
        CHECK(std::memcmp(b.data(), data[i].data(), b.size()) == 0);
        auto const back = f.to_float(t.name);
        CHECK(back.rows() == rows);
        CHECK(back.cols() == cols);
        std::vector<float> expected(static_cast<std::size_t>(cols));
        std::size_t const rb = rsq::pack::row_bytes(types[i], cols);
        for (std::size_t r = 0; r < std::size_t(rows); ++r) {
          rsq::pack::dequantize_row(types[i], std::span(data[i]).subspan(r * rb, rb), expected);
          for (std::size_t j = 0; j < std::size_t(cols); ++j)
            REQUIRE(back.values[r * std::size_t(cols) + j] == expected[j]);
        }
      }
      CHECK(q.values.size() == std::size_t(cols * rows));
      CHECK(f.to_float("w.0").values == values);  // F32 is exact
      auto const filled = f.bytes("filled");
      CHECK(std::memcmp(filled.data(), data[4].data(), filled.size()) == 0);
      CHECK(f.to_float("streamed").values == std::vector<float>(values.begin(), values.begin() + cols));
      CHECK(f.tensor("streamed").ne == std::vector<index_t>{cols});
    }
  }

  TEST_CASE("gguf: the layout of a small file, byte by byte") {
    gguf_writer w;
    w.set("a", std::uint32_t(7));
    float const v[] = {1.f, 2.f};
    w.add_tensor("t", {2}, ggml_type::f32, std::as_bytes(std::span(v)));
    raw expected;
    expected.header(1, 1);                                   // "GGUF", version 3, 1 tensor, 1 kv: 24 bytes
    expected.str("a").u32(4).u32(7);                         // key, UINT32, 7: 17 bytes
    expected.tensor("t", {2}, 0, 0);                         // name, n_dims 1, ne {2}, F32, offset 0: 33 bytes
    CHECK(expected.s.size() == 74);
    expected.bytes(96 - 74);                                 // padding to 32
    expected.put(1.f).put(2.f).bytes(24);                    // the data, padded to 32
    auto const bytes = serialize(w);
    CHECK(bytes.size() == 128);
    CHECK(bytes == expected.s);
    CHECK(bytes.substr(0, 8) == std::string("GGUF\x03\0\0\0", 8));
    auto const f = parse(bytes);
    CHECK(f.data_offset() == 96);
    CHECK(f.get<std::uint32_t>("a") == 7);
  }

  TEST_CASE("gguf: the writer refuses invalid tensors and metadata when they are added") {
    gguf_writer w;
    std::vector<std::byte> b(64 * 4);
    auto const f32 = ggml_type::f32;
    CHECK_THROWS_WITH_AS(w.add_tensor(std::string(64, 'x'), {64}, f32, b), doctest::Contains("at most 63"),
                         rsq::invalid_argument);
    w.add_tensor(std::string(63, 'x'), {64}, f32, b);
    CHECK_THROWS_WITH_AS(w.add_tensor(std::string(63, 'x'), {64}, f32, b), doctest::Contains("added twice"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(w.add_tensor("e", {}, f32, {}), doctest::Contains("1 to 4 are allowed"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(w.add_tensor("e", {1, 1, 1, 1, 64}, f32, b), doctest::Contains("has 5 dimensions"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(w.add_tensor("e", {64, 0}, f32, {}), doctest::Contains("each must be at least 1"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(w.add_tensor("e", {16}, ggml_type::q4_0, std::span(b).first(9)),
                         doctest::Contains("ne[0] = 16 is not a multiple of the block size 32"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(w.add_tensor("g", {64}, f32, std::span(b).first(255)),
                         doctest::Contains("needs 256 bytes, 255 given"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(w.add_tensor("h", {index_t(1) << 62, 4}, f32, b), doctest::Contains("too large"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(w.set("general.alignment", std::uint32_t(64)),
                         doctest::Contains("before the first tensor"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(w.set("general.alignment", std::uint64_t(64)), doctest::Contains("must be UINT32"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(w.set("general.alignment", std::uint32_t(48)), doctest::Contains("not a power of two"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(w.set("", 1), doctest::Contains("must not be empty"), rsq::invalid_argument);
    CHECK(w.tensors().size() == 1);  // nothing refused was kept

    gguf_writer s;
    s.add_tensor_streamed("s", {4}, f32, [](std::ostream& os) { os.write("abc", 3); });
    std::ostringstream os;
    CHECK_THROWS_WITH_AS(s.write(os), doctest::Contains("wrote 3 bytes, expected 16"), rsq::invalid_argument);

    auto const dir = rsq_test::temp_dir("gguf_atomic");
    gguf_writer t;
    t.add_tensor_filled("t", {4}, f32, [](std::span<std::byte>) { throw std::runtime_error("producer failed"); });
    CHECK_THROWS_AS(t.write(dir / "x.gguf"), std::runtime_error);
    CHECK(std::filesystem::is_empty(dir));  // neither the file nor its temporary
  }

  TEST_CASE("gguf: version 2 is read (the same layout)") {
    raw f;
    f.header(0, 1, 2).str("a").u32(8).str("x");
    CHECK(parse(f.s).version() == 2);
    CHECK(parse(f.s).get<std::string>("a") == "x");
  }

  TEST_CASE("gguf: every corruption is refused with a message naming the field") {
    auto refuses = [](std::string const& bytes, std::string const& what) {
      CAPTURE(what);
      CHECK_THROWS_WITH_AS((void)parse(bytes), doctest::Contains(what.c_str()), rsq::io_error);
    };
    raw kv_a;
    kv_a.str("a").u32(4).u32(1);
    std::string const good = one_tensor_file(kv_a, 1);
    CHECK_NOTHROW((void)parse(good));

    refuses("GGUX" + good.substr(4), "bad magic");
    refuses("GG", "bad magic");
    refuses(raw().header(0, 0, 1).s, "version 1 is not supported (rsq reads versions 2 and 3)");
    refuses(raw().header(0, 0, 4).s, "version 4 is not supported");
    refuses(raw().header(0, 0).s.substr(0, 20), "metadata_kv_count: needs 8 bytes");
    refuses(raw().header(1'000'000, 0).s, "tensor_count 1000000 cannot fit");
    refuses(raw().header(0, 1'000'000'000'000).s, "metadata_kv_count 1000000000000 cannot fit");

    raw s1;  // a key longer than the file
    s1.header(0, 1).u64(1000).bytes(20);
    refuses(s1.s, "metadata key 0: a string of 1000 bytes");
    raw s2;  // a string value longer than the file
    s2.header(0, 1).str("k").u32(8).u64(1000).bytes(8);
    refuses(s2.s, "key \"k\": a string of 1000 bytes");
    raw t13;
    t13.header(0, 1).str("k").u32(13).bytes(8);
    refuses(t13.s, "key \"k\": unknown value type 13");
    raw e13;
    e13.header(0, 1).str("k").u32(9).u32(13).u64(0).bytes(8);
    refuses(e13.s, "key \"k\": unknown array element type 13");
    raw nested;
    nested.header(0, 1).str("k").u32(9).u32(9).u64(1).bytes(16);
    refuses(nested.s, "key \"k\" is an array of arrays");
    raw b2;
    b2.header(0, 1).str("flag").u32(7).put(std::uint8_t(2));
    refuses(b2.s, "key \"flag\": BOOL value 2");
    raw ab;
    ab.header(0, 1).str("flags").u32(9).u32(7).u64(2).put(std::uint8_t(1)).put(std::uint8_t(3));
    refuses(ab.s, "key \"flags\": BOOL value 3");
    raw big;
    big.header(0, 1).str("arr").u32(9).u32(4).u64(1'000'000).bytes(64);
    refuses(big.s, "key \"arr\": an array of 1000000 elements");
    raw sarr;
    sarr.header(0, 1).str("sarr").u32(9).u32(8).u64(3).str("x").bytes(9);
    refuses(sarr.s, "key \"sarr\": an array of 3 elements");
    raw dup;
    dup.header(0, 2).str("a").u32(4).u32(1).str("a").u32(4).u32(2);
    refuses(dup.s, "duplicate metadata key \"a\"");
    raw empty_key;
    empty_key.header(0, 1).str("").u32(4).u32(1);
    refuses(empty_key.s, "metadata key 0 is empty");
    raw al_type;
    al_type.str("general.alignment").u32(10).u64(32);
    refuses(one_tensor_file(al_type, 1), "general.alignment is UINT64, it must be UINT32");
    raw al48;
    al48.str("general.alignment").u32(4).u32(48);
    refuses(one_tensor_file(al48, 1), "general.alignment 48 is not a power of two");
    raw al0;
    al0.str("general.alignment").u32(4).u32(0);
    refuses(one_tensor_file(al0, 1), "general.alignment 0 is not a power of two");

    // Tensor infos: each file has the given infos, padding to 32, and `data` bytes of data.
    auto tensors = [](std::vector<raw> infos, std::size_t data) {
      raw f;
      f.header(infos.size(), 0);
      for (auto const& i : infos) f.s += i.s;
      return f.pad(32).bytes(data).s;
    };
    auto info = [](std::string_view name, std::vector<std::uint64_t> ne, std::uint32_t type, std::uint64_t off) {
      raw r;
      r.tensor(name, std::move(ne), type, off);
      return r;
    };
    CHECK_NOTHROW((void)parse(tensors({info("a", {8}, 0, 0), info("b", {8}, 0, 32)}, 64)));
    refuses(tensors({info("a", {8}, 0, 0), info("a", {8}, 0, 32)}, 64), "duplicate tensor name \"a\"");
    refuses(tensors({info("", {8}, 0, 0)}, 32), "tensor 0 has an empty name");
    refuses(tensors({info(std::string(64, 'n'), {8}, 0, 0)}, 32), "has 64 bytes; llama.cpp accepts at most 63");
    refuses(tensors({info("z", {}, 0, 0)}, 32), "tensor \"z\": n_dims 0 is outside 1..4");
    refuses(tensors({info("z", {1, 1, 1, 1, 8}, 0, 0)}, 32), "tensor \"z\": n_dims 5 is outside 1..4");
    refuses(tensors({info("z", {8, 0}, 0, 0)}, 32), "tensor \"z\": ne[1] is 0");
    refuses(tensors({info("z", {8, std::uint64_t(1) << 63}, 0, 0)}, 32), "ne[1] = 9223372036854775808 is beyond");
    refuses(tensors({info("z", {std::uint64_t(1) << 40, std::uint64_t(1) << 40}, 0, 0)}, 32),
            "tensor \"z\": dimensions {1099511627776, 1099511627776} overflow");
    refuses(tensors({info("z", {8}, 99, 0)}, 32), "tensor \"z\": unknown ggml type id 99");
    refuses(tensors({info("z", {16}, 2, 0)}, 32), "tensor \"z\" of type Q4_0: ne[0] = 16 is not a multiple");
    refuses(tensors({info("z", {8}, 0, 16)}, 64), "tensor \"z\": offset 16 is not a multiple of the alignment 32");
    refuses(tensors({info("z", {8}, 0, 64)}, 64), "tensor \"z\": its 32 bytes at offset 64");
    refuses(tensors({info("z", {8}, 0, std::uint64_t(-32))}, 64), "run past the end of the file");
    refuses(tensors({info("a", {16}, 0, 0), info("b", {8}, 0, 32)}, 96), "tensor \"b\" at offset 32 overlaps tensor \"a\"");
    refuses(tensors({info("z", {8}, 0, 0)}, 31), "run past the end of the file");
    refuses(tensors({info("z", {8}, 0, 0)}, 0).substr(0, 57), "the data section (at offset 64");
    refuses(tensors({info(std::string(30, 'z'), {8}, 0, 0)}, 32).substr(0, 64),
            "tensor \"" + std::string(30, 'z') + "\" (n_dims): needs 4 bytes");
  }

  TEST_CASE("gguf: to_float refuses types rsq cannot decode and non-finite values, naming the tensor") {
    raw f;
    f.header(2, 0).tensor("k", {256}, 12, 0).tensor("nan", {8}, 0, 160).pad(32).bytes(160);
    f.put(std::numeric_limits<float>::quiet_NaN()).bytes(28);
    auto const g = parse(f.s);
    CHECK(g.tensor("k").bytes == 144);
    CHECK_THROWS_WITH_AS((void)g.to_float("k"), doctest::Contains("tensor \"k\" is Q4_K, which rsq cannot convert"),
                         rsq::io_error);
    CHECK_THROWS_WITH_AS((void)g.to_float("nan"), doctest::Contains("tensor \"nan\" has a non-finite value at element 0"),
                         rsq::io_error);
    CHECK_THROWS_WITH_AS((void)g.bytes("none"), doctest::Contains("has no tensor \"none\""), rsq::io_error);
  }
}

// imatrix files, in their own namespace (their helpers share names with the ones above).
namespace imatrix_files {

using rsq::index_t;
using rsq::io::imatrix;
using rsq::pack::ggml_type;

namespace {

imatrix sample() {
  imatrix m;
  m.datasets = {"calib-a.txt", "calib-b.txt"};
  m.chunk_count = 10;
  m.chunk_size = 512;
  m.entries.push_back({"blk.0.attn_q.weight", {1.f, 2.5f, 0.f, 1e6f}, 5120.f});
  m.entries.push_back({"blk.0.ffn_down.weight", std::vector<float>(96, 0.75f), 1024.f});
  return m;
}


imatrix parse(std::string const& bytes) {
  return rsq::io::parse_imatrix(std::as_bytes(std::span(bytes.data(), bytes.size())), "hand.imatrix");
}

void write_file(std::filesystem::path const& p, std::string const& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

}  // namespace

TEST_SUITE("imatrix") {
  TEST_CASE("imatrix: a GGUF round-trips exactly, with the keys and tensors llama-quantize reads") {
    auto const dir = rsq_test::temp_dir("imatrix_gguf");
    auto const m = sample();
    // [snippet:imatrix_write]
    rsq::io::write_imatrix_gguf(dir / "imatrix.gguf", m);
    rsq::io::imatrix const back = rsq::io::read_imatrix(dir / "imatrix.gguf");  // GGUF or legacy .dat
    // [snippet:imatrix_write]
    CHECK(back.datasets == m.datasets);
    CHECK(back.chunk_count == 10);
    CHECK(back.chunk_size == 512);
    REQUIRE(back.entries.size() == 2);
    for (std::size_t i = 0; i < 2; ++i) {
      CHECK(back.entries[i].name == m.entries[i].name);
      CHECK(back.entries[i].in_sum2 == m.entries[i].in_sum2);
      CHECK(back.entries[i].count == m.entries[i].count);
    }
    CHECK(back.find("blk.0.ffn_down.weight") == &back.entries[1]);
    CHECK(back.find("none") == nullptr);

    auto const f = rsq::io::gguf_file::open(dir / "imatrix.gguf");
    CHECK(f.get<std::string>("general.type") == "imatrix");
    CHECK(f.at("imatrix.datasets").type_name() == "ARRAY[STRING]");
    CHECK(f.at("imatrix.chunk_count").type() == rsq::io::gguf_type::u32);
    CHECK(f.at("imatrix.chunk_size").type() == rsq::io::gguf_type::u32);
    auto const& s = f.tensor("blk.0.attn_q.weight.in_sum2");
    CHECK(s.type == ggml_type::f32);
    CHECK(s.ne == std::vector<index_t>{4, 1});
    auto const& c = f.tensor("blk.0.attn_q.weight.counts");
    CHECK(c.type == ggml_type::f32);
    CHECK(c.ne == std::vector<index_t>{1, 1});
    CHECK(f.to_float("blk.0.attn_q.weight.counts").values == std::vector<float>{5120.f});
  }

  TEST_CASE("imatrix: a legacy .dat round-trips the means, and its layout is llama.cpp's") {
    auto const dir = rsq_test::temp_dir("imatrix_dat");
    auto const m = sample();
    rsq::io::write_imatrix_dat(dir / "imatrix.dat", m);
    auto const back = rsq::io::read_imatrix(dir / "imatrix.dat", {.dat_chunk_size = 512});
    CHECK(back.datasets == std::vector<std::string>{"calib-b.txt"});  // the format holds one: the last
    CHECK(back.chunk_count == 10);
    CHECK(back.chunk_size == 512);
    REQUIRE(back.entries.size() == 2);
    for (std::size_t i = 0; i < 2; ++i) {
      auto const& e = m.entries[i];
      auto const& b = back.entries[i];
      CHECK(b.name == e.name);
      CHECK(b.count == e.count);  // a multiple of the chunk size comes back exactly
      REQUIRE(b.in_sum2.size() == e.in_sum2.size());
      for (std::size_t j = 0; j < e.in_sum2.size(); ++j)
        CHECK(b.in_sum2[j] == doctest::Approx(e.in_sum2[j]).epsilon(1e-6));
    }

    // One entry by hand: count 1000 rows with chunks of 512 is ncall 2; values Σx²/count·ncall.
    imatrix one;
    one.datasets = {"d.txt"};
    one.chunk_count = 3;
    one.chunk_size = 512;
    one.entries.push_back({"w", {500.f, 0.f}, 1000.f});
    rsq::io::write_imatrix_dat(dir / "one.dat", one);
    raw expected;
    expected.i32(1).i32(1).text("w").i32(2).i32(2).put(500.f / 1000.f * 2.f).put(0.f).i32(3).i32(5).text("d.txt");
    CHECK(rsq_test::read_text(dir / "one.dat") == expected.s);
  }

  TEST_CASE("imatrix: a legacy .dat without the trailing chunk and dataset (the oldest files) is read") {
    raw r;
    r.i32(1).i32(1).text("w").i32(4).i32(2).put(2.f).put(8.f);
    auto const m = parse(r.s);
    REQUIRE(m.entries.size() == 1);
    CHECK(m.entries[0].count == 4.f * 512);
    CHECK(m.entries[0].in_sum2 == std::vector<float>{2.f * 512, 8.f * 512});
    CHECK(m.datasets.empty());
    CHECK(m.chunk_count == 0);
  }

  TEST_CASE("imatrix: the writers refuse what llama-quantize could not use") {
    auto const dir = rsq_test::temp_dir("imatrix_refuse");
    auto const p = dir / "x.gguf";
    auto bad = sample();
    bad.entries.clear();
    CHECK_THROWS_WITH_AS(rsq::io::write_imatrix_gguf(p, bad), doctest::Contains("at least one entry"),
                         rsq::invalid_argument);
    bad = sample();
    bad.datasets.clear();
    CHECK_THROWS_WITH_AS(rsq::io::write_imatrix_gguf(p, bad), doctest::Contains("at least one dataset"),
                         rsq::invalid_argument);
    bad = sample();
    bad.entries[1].in_sum2[3] = std::nanf("");
    CHECK_THROWS_WITH_AS(rsq::io::write_imatrix_gguf(p, bad), doctest::Contains("\"blk.0.ffn_down.weight\" in_sum2[3]"),
                         rsq::invalid_argument);
    bad = sample();
    bad.entries[0].count = -1.f;
    CHECK_THROWS_WITH_AS(rsq::io::write_imatrix_dat(p, bad), doctest::Contains("has count -1"), rsq::invalid_argument);
    bad = sample();
    bad.entries[1].name = bad.entries[0].name;
    CHECK_THROWS_WITH_AS(rsq::io::write_imatrix_gguf(p, bad), doctest::Contains("appears twice"), rsq::invalid_argument);
    bad = sample();
    bad.entries[0].name = std::string(60, 'w');  // + ".in_sum2" exceeds 63 bytes
    CHECK_THROWS_WITH_AS(rsq::io::write_imatrix_gguf(p, bad), doctest::Contains("at most 63"), rsq::invalid_argument);
    bad = sample();
    bad.entries[0].count = 0.f;
    CHECK_THROWS_WITH_AS(rsq::io::write_imatrix_dat(p, bad), doctest::Contains("has count 0"), rsq::invalid_argument);
    bad = sample();
    bad.chunk_size = 0;
    CHECK_THROWS_WITH_AS(rsq::io::write_imatrix_dat(p, bad), doctest::Contains("chunk_size 0 must be at least 1"),
                         rsq::invalid_argument);
    CHECK(std::filesystem::is_empty(dir));
  }

  TEST_CASE("imatrix: every corrupt .dat is refused with a message naming the field") {
    auto refuses = [](std::string const& bytes, std::string const& what) {
      CAPTURE(what);
      CHECK_THROWS_WITH_AS((void)parse(bytes), doctest::Contains(what.c_str()), rsq::io_error);
    };
    raw good;
    good.i32(1).i32(1).text("w").i32(1).i32(2).put(1.f).put(2.f).i32(1).i32(1).text("d");
    CHECK_NOTHROW((void)parse(good.s));
    refuses("", "entry count: truncated");
    refuses(raw().i32(0).s, "entry count 0");
    refuses(raw().i32(-5).s, "entry count -5");
    refuses(raw().i32(1000).i32(1).text("w").s, "entry count 1000 cannot fit");
    refuses(raw().i32(1).i32(-3).s + std::string(16, '\0'), "entry 0: name length -3");
    refuses(raw().i32(1).i32(100).text("w").s + std::string(16, '\0'), "entry 0: name length 100");
    refuses(raw().i32(1).i32(1).text("w").i32(-1).i32(1).put(1.f).s, "entry \"w\": ncall -1 is negative");
    refuses(raw().i32(1).i32(1).text("w").i32(1).i32(3).put(1.f).put(1.f).s, "entry \"w\": nval 3 does not match");
    refuses(raw().i32(1).i32(1).text("w").i32(1).i32(-2).put(1.f).put(1.f).s, "entry \"w\": nval -2");
    refuses(raw().i32(1).i32(1).text("w").i32(1).i32(2).put(1.f).put(std::nanf("")).s, "entry \"w\": value 1 = nan");
    refuses(raw().i32(1).i32(1).text("w").i32(1).i32(1).put(-1.f).put(0.f).s, "entry \"w\": value 0 = -1");
    refuses(raw().i32(2).i32(1).text("w").i32(1).i32(1).put(1.f).i32(1).text("w").i32(1).i32(1).put(1.f).s,
            "entry \"w\" appears twice");
    std::string const v(20, 'v');
    refuses(raw().i32(2).i32(1).text("w").i32(1).i32(1).put(1.f).i32(20).text(v).i32(1).s + "xx",
            "entry \"" + v + "\" nval: truncated");
    refuses(good.s.substr(0, good.s.size() - 5), "the dataset name length: truncated");
    refuses(good.s.substr(0, good.s.size() - 1), "the dataset name length 1 is not in 0..0");
    refuses(good.s + "zz", "2 bytes after the dataset name");
    refuses(raw().i32(1).i32(1).text("w").i32(1).i32(1).put(1.f).i32(-4).i32(0).s, "the last chunk -4 is negative");
  }

  TEST_CASE("imatrix: every corrupt imatrix GGUF is refused with a message naming the key or tensor") {
    auto const dir = rsq_test::temp_dir("imatrix_bad_gguf");
    float const sums[] = {1.f, 2.f, 3.f, 4.f}, one[] = {1.f}, neg[] = {1.f, -2.f, 3.f, 4.f};
    std::span<const std::byte> const sum_bytes = std::as_bytes(std::span(sums)), one_bytes = std::as_bytes(std::span(one));
    // A well-formed file, then one change per case.
    auto make = [&](auto&& change) {
      rsq::io::gguf_writer w;
      w.set("general.type", "imatrix");
      w.set("imatrix.datasets", std::vector<std::string>{"d"});
      w.set("imatrix.chunk_count", std::uint32_t(1));
      w.set("imatrix.chunk_size", std::uint32_t(512));
      change(w);
      w.write(dir / "bad.gguf");
      return dir / "bad.gguf";
    };
    auto refuses = [](std::filesystem::path const& p, std::string const& what) {
      CAPTURE(what);
      CHECK_THROWS_WITH_AS((void)rsq::io::read_imatrix(p), doctest::Contains(what.c_str()), rsq::io_error);
    };
    auto pair = [&](rsq::io::gguf_writer& w) {
      w.add_tensor("w.in_sum2", {4, 1}, ggml_type::f32, sum_bytes);
      w.add_tensor("w.counts", {1, 1}, ggml_type::f32, one_bytes);
    };
    CHECK(rsq::io::read_imatrix(make(pair)).entries.size() == 1);
    CHECK(rsq::io::read_imatrix(make([&](auto& w) {
            pair(w);
            w.add_tensor("w.in_sum", {4, 1}, ggml_type::f32, sum_bytes);  // Σx of newer llama-imatrix: ignored
          })).entries.size() == 1);
    refuses(make([&](auto& w) { w.add_tensor("w.in_sum2", {4, 1}, ggml_type::f32, sum_bytes); }),
            "entry \"w\": the counts tensor \"w.counts\" is missing");
    refuses(make([&](auto& w) { w.add_tensor("w.counts", {1, 1}, ggml_type::f32, one_bytes); }),
            "tensor \"w.counts\" has no in_sum2 tensor");
    refuses(make([&](auto& w) {
              w.add_tensor("w.in_sum2", {4, 1}, ggml_type::f16, std::as_bytes(std::span(sums)).first(8));
              w.add_tensor("w.counts", {1, 1}, ggml_type::f32, one_bytes);
            }),
            "tensor \"w.in_sum2\" (in_sum2) is F16, expected F32");
    refuses(make([&](auto& w) {
              w.add_tensor("w.in_sum2", {4, 1}, ggml_type::f32, sum_bytes);
              w.add_tensor("w.counts", {2, 1}, ggml_type::f16, std::as_bytes(std::span(one)));
            }),
            "tensor \"w.counts\" (counts) is F16, expected F32");
    refuses(make([&](auto& w) {
              w.add_tensor("w.in_sum2", {2, 2}, ggml_type::f32, sum_bytes);
              w.add_tensor("w.counts", {1, 2}, ggml_type::f32, std::as_bytes(std::span(sums)).first(8));
            }),
            "tensor \"w.in_sum2\" has dimensions {2, 2}; expected {n_in, 1}");
    refuses(make([&](auto& w) {
              w.add_tensor("w.in_sum2", {4, 1}, ggml_type::f32, sum_bytes);
              w.add_tensor("w.counts", {2}, ggml_type::f32, std::as_bytes(std::span(sums)).first(8));
            }),
            "tensor \"w.counts\" has dimensions {2}; expected {1, 1}");
    refuses(make([&](auto& w) {
              w.add_tensor("w.in_sum2", {4, 1}, ggml_type::f32, std::as_bytes(std::span(neg)));
              w.add_tensor("w.counts", {1, 1}, ggml_type::f32, one_bytes);
            }),
            "entry \"w\": in_sum2[1] = -2");
    float const nan_count[] = {std::nanf("")};
    refuses(make([&](auto& w) {
              w.add_tensor("w.in_sum2", {4, 1}, ggml_type::f32, sum_bytes);
              w.add_tensor("w.counts", {1, 1}, ggml_type::f32, std::as_bytes(std::span(nan_count)));
            }),
            "entry \"w\": count nan");
    refuses(make([&](auto&) {}), "no <name>.in_sum2 tensor");
    refuses(make([&](auto& w) {
              pair(w);
              w.set("general.type", "model");
            }),
            "general.type is \"model\", expected \"imatrix\"");
    refuses(make([&](auto& w) {
              pair(w);
              w.set("imatrix.chunk_count", std::int32_t(1));
            }),
            "\"imatrix.chunk_count\" is INT32, expected UINT32");
    refuses(make([&](auto& w) {
              pair(w);
              w.set("imatrix.datasets", "d");
            }),
            "\"imatrix.datasets\" is STRING, expected ARRAY[STRING]");
    rsq::io::gguf_writer w;  // no imatrix keys
    w.set("general.type", "imatrix");
    w.add_tensor("w.in_sum2", {4, 1}, ggml_type::f32, sum_bytes);
    w.add_tensor("w.counts", {1, 1}, ggml_type::f32, one_bytes);
    w.write(dir / "nokeys.gguf");
    refuses(dir / "nokeys.gguf", "the key imatrix.datasets is missing");
    write_file(dir / "truncated.gguf", "GGUF\x03");
    refuses(dir / "truncated.gguf", "version: needs 4 bytes");
  }
}

}  // namespace imatrix_files
