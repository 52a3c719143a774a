// SPDX-License-Identifier: MIT
// rsq/io/safetensors.hpp and rsq/core/half.hpp: half and bfloat16 rounding against a brute-force nearest-value
// search, write-read round trips (one file and shards), the real checkpoints of ../shared (lm7m F32, lm16m BF16)
// against their llama2.c twins, and a hand-made file for every kind of corruption formats.md §1 lists.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <rsq/core/half.hpp>
#include <rsq/io/safetensors.hpp>
#include <rsq/model/llama2c.hpp>

#include "support/shared_data.hpp"

namespace fs = std::filesystem;
using rsq::index_t;
using rsq::io::tensor_dtype;

namespace {

/// Every finite value of a 16-bit format, ascending, from its bit patterns.
std::vector<double> all_finite(float (*to_float)(std::uint16_t)) {
  std::vector<double> v;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    float const f = to_float(std::uint16_t(b));
    if (std::isfinite(f)) v.push_back(f);
  }
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

/// The value of @p grid nearest to @p x, ties to the one with an even last bit (found through @p from_float of the
/// candidate, which is exact for grid values); beyond the largest value by half a step or more (a tie there goes
/// to the even Inf): ±Inf. The grid is symmetric, so |x| is rounded and the sign put back.
double nearest(std::vector<double> const& grid, double x, std::uint16_t (*from_float)(float)) {
  double const ax = std::abs(x), sign = x < 0 ? -1 : 1;
  auto const hi = std::lower_bound(grid.begin(), grid.end(), ax);
  if (hi == grid.end()) {
    double const top = grid.back(), step = top - grid[grid.size() - 2];
    return sign * (ax - top < step / 2 ? top : INFINITY);
  }
  if (*hi == ax) return sign * ax;
  double const a = *(hi - 1), b = *hi;  // a ≥ 0 since ax > 0 here
  if (ax - a < b - ax) return sign * a;
  if (b - ax < ax - a) return sign * b;
  return sign * ((from_float(float(a)) & 1) == 0 ? a : b);
}

void write_bytes(fs::path const& p, std::string const& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

/// A safetensors file by hand: the 8-byte length, @p header, then @p buffer_bytes bytes of zeros.
std::string file_with(std::string const& header, std::size_t buffer_bytes) {
  std::string s(8, '\0');
  std::uint64_t const n = header.size();
  std::memcpy(s.data(), &n, 8);
  return s + header + std::string(buffer_bytes, '\0');
}

rsq::io::safetensors_file parse_string(std::string const& bytes) {
  return rsq::io::safetensors_file::parse(std::as_bytes(std::span(bytes.data(), bytes.size())), "hand.safetensors");
}

}  // namespace

TEST_CASE("half and bfloat16: every pattern round-trips and rounding is to the nearest value, ties to even") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    auto const h = std::uint16_t(b);
    float const f = rsq::f16_to_float(h), g = rsq::bf16_to_float(h);
    if (!std::isnan(f)) REQUIRE(rsq::float_to_f16(f) == h);
    else REQUIRE(std::isnan(rsq::f16_to_float(rsq::float_to_f16(f))));
    if (!std::isnan(g)) REQUIRE(rsq::float_to_bf16(g) == h);
    else REQUIRE(std::isnan(rsq::bf16_to_float(rsq::float_to_bf16(g))));
  }
  auto const f16 = all_finite(rsq::f16_to_float), bf16 = all_finite(rsq::bf16_to_float);
  CHECK(f16.back() == 65504.0);
  CHECK(f16[f16.size() / 2 + 1] == std::ldexp(1.0, -24));  // the smallest subnormal follows ±0
  std::mt19937 rng(5);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    // Floats of every magnitude (random bit patterns), plus exact midpoints between neighbouring halves.
    float x = std::bit_cast<float>(bits(rng));
    if (!std::isfinite(x)) continue;
    if (i % 4 == 0) {
      std::size_t const k = bits(rng) % (f16.size() - 1);
      x = float((f16[k] + f16[k + 1]) / 2);  // exact in float: halves have 11 significant bits
    }
    CAPTURE(x);
    REQUIRE(double(rsq::f16_to_float(rsq::float_to_f16(x))) == nearest(f16, x, rsq::float_to_f16));
    if (std::abs(x) < 3e38f) REQUIRE(double(rsq::bf16_to_float(rsq::float_to_bf16(x))) == nearest(bf16, x, rsq::float_to_bf16));
  }
}

TEST_CASE("safetensors: what is written reads back, header aligned, format metadata, in-place F32 views") {
  auto const dir = rsq_test::temp_dir("safetensors_roundtrip");
  std::vector<float> a(6), b(4);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = 0.1f * float(i) - 0.25f;
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = 1000.f / float(i + 3);
  std::vector<std::int32_t> q = {1, -2, 3, 0x7fffffff};
  std::vector<rsq::io::tensor_record> recs;
  recs.push_back(rsq::io::make_record("w.odd", std::span<const float>(a.data(), 3), {3}, tensor_dtype::f16));
  recs.push_back(rsq::io::make_record("a", a, {2, 3}));
  recs.push_back(rsq::io::make_record("b.bf16", b, {2, 2}, tensor_dtype::bf16));
  recs.push_back(rsq::io::make_raw_record<std::int32_t>("q", q, {4}, tensor_dtype::i32));
  recs.push_back(rsq::io::make_record("empty", std::span<const float>(), {0, 5}));
  rsq::io::save_safetensors(dir / "t.safetensors", recs);
  CHECK(!fs::exists(dir / "t.safetensors.tmp"));

  auto const f = rsq::io::safetensors_file::open(dir / "t.safetensors");
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.tensors().size() == 5);
  std::uint64_t n = 0;
  std::ifstream(dir / "t.safetensors", std::ios::binary).read(reinterpret_cast<char*>(&n), 8);
  CHECK((8 + n) % 8 == 0);
  // F32 after a 6-byte F16 tensor: 2 bytes off 4-byte alignment, so no in-place view; to_float still reads it.
  CHECK_THROWS_AS((void)f.view_float<2>("a"), rsq::io_error);
  auto const av = f.to_float<2>("a");
  for (std::size_t i = 0; i < a.size(); ++i) CHECK(av.data()[i] == a[i]);
  auto const odd = f.to_float<1>("w.odd");
  for (std::size_t i = 0; i < 3; ++i) CHECK(odd(i) == rsq::f16_to_float(rsq::float_to_f16(a[i])));
  auto const bv = f.to_float<2>("b.bf16");
  for (std::size_t i = 0; i < b.size(); ++i) CHECK(bv.data()[i] == rsq::bf16_to_float(rsq::float_to_bf16(b[i])));
  auto const qb = f.bytes(f.at("q"));
  std::vector<std::int32_t> qr(4);
  std::memcpy(qr.data(), qb.data(), 16);
  CHECK(qr == q);
  CHECK(f.at("empty").shape == std::vector<index_t>{0, 5});
  CHECK_THROWS_WITH_AS((void)f.to_float<1>("q"), doctest::Contains("is I32"), rsq::io_error);
  CHECK_THROWS_WITH_AS((void)f.to_float<1>("a"), doctest::Contains("rank 2"), rsq::io_error);
  CHECK_THROWS_WITH_AS((void)f.at("nope"), doctest::Contains("has no tensor \"nope\""), rsq::io_error);

  // An aligned F32 tensor is viewed in place, inside the mapping.
  std::vector<rsq::io::tensor_record> one;
  one.push_back(rsq::io::make_record("a", a, {2, 3}));
  rsq::io::save_safetensors(dir / "one.safetensors", one);
  auto const g = rsq::io::safetensors_file::open(dir / "one.safetensors");
  auto const v = g.view_float<2>("a");
  CHECK(reinterpret_cast<std::byte const*>(v.data()) == g.bytes(g.at("a")).data());
  CHECK(v(1, 2) == a[5]);
}

TEST_CASE("safetensors: a checkpoint sharded at a size limit, with its index, reads back") {
  auto const dir = rsq_test::temp_dir("safetensors_shards");
  std::vector<std::vector<float>> data(5, std::vector<float>(100));
  std::vector<rsq::io::tensor_record> recs;
  for (std::size_t t = 0; t < data.size(); ++t) {
    for (std::size_t i = 0; i < 100; ++i) data[t][i] = float(t * 1000 + i);
    recs.push_back(rsq::io::make_record("layer." + std::to_string(t), data[t], {10, 10}));
  }
  auto const files = rsq::io::save_safetensors_checkpoint(dir, recs, {.max_shard_bytes = 900});  // 2 per shard
  REQUIRE(files.size() == 4);
  CHECK(files[0] == "model-00001-of-00003.safetensors");
  CHECK(files[3] == "model.safetensors.index.json");
  auto const c = rsq::io::safetensors_checkpoint::open(dir);
  CHECK(c.files().size() == 3);
  CHECK(c.names().size() == 5);
  for (std::size_t t = 0; t < data.size(); ++t) CHECK(c.to_float<2>("layer." + std::to_string(t))(3, 4) == data[t][34]);
  CHECK_THROWS_WITH_AS((void)c.at("layer.9"), doctest::Contains("has no tensor \"layer.9\""), rsq::io_error);

  // Under the limit: one model.safetensors, no index.
  auto const single = rsq_test::temp_dir("safetensors_single");
  CHECK(rsq::io::save_safetensors_checkpoint(single, recs) == std::vector<std::string>{"model.safetensors"});
  CHECK(rsq::io::safetensors_checkpoint::open(single).names().size() == 5);

  SUBCASE("a missing shard") {
    fs::remove(dir / "model-00002-of-00003.safetensors");
    CHECK_THROWS_WITH_AS((void)rsq::io::safetensors_checkpoint::open(dir),
                         doctest::Contains("shard model-00002-of-00003.safetensors is missing"), rsq::io_error);
  }
  SUBCASE("an index that names a tensor its shard does not hold") {
    auto text = rsq_test::read_text(dir / "model.safetensors.index.json");
    text.replace(text.find("layer.4"), 7, "layer.7");
    write_bytes(dir / "model.safetensors.index.json", text);
    CHECK_THROWS_WITH_AS((void)rsq::io::safetensors_checkpoint::open(dir),
                         doctest::Contains("tensor \"layer.7\" is not in"), rsq::io_error);
  }
  SUBCASE("a folder without a checkpoint, and a file given as the folder") {
    CHECK_THROWS_WITH_AS((void)rsq::io::safetensors_checkpoint::open(rsq_test::temp_dir("safetensors_none")),
                         doctest::Contains("has neither model.safetensors nor"), rsq::io_error);
    CHECK_THROWS_WITH_AS((void)rsq::io::safetensors_checkpoint::open(single / "model.safetensors"),
                         doctest::Contains("is not a folder"), rsq::io_error);
  }
}

TEST_CASE("safetensors: every corruption of formats.md §1 is refused, naming the file and the tensor") {
  auto const bad = [](std::string const& bytes, std::string const& says) {
    CAPTURE(says);
    CHECK_THROWS_WITH_AS((void)parse_string(bytes), doctest::Contains(says.c_str()), rsq::io_error);
  };
  std::string const ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  CHECK(parse_string(file_with(ok, 8)).tensors().size() == 1);

  bad("abc", "shorter than the 8-byte header length");
  std::string huge(8, '\0');
  std::uint64_t const n = 100'000'001;
  std::memcpy(huge.data(), &n, 8);
  bad(huge + "{}", "exceeds the limit");
  bad(file_with(ok, 8).substr(0, 20), "runs past the end");
  bad(file_with(" " + ok, 8), "does not start with '{'");
  bad(file_with(R"({"a":)", 0), "not valid JSON");
  bad(file_with(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
      "tensor \"a\" appears twice");
  bad(file_with(R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", 8), "unknown dtype \"F33\"");
  bad(file_with(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "must be a non-negative integer");
  bad(file_with(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8), "must be a non-negative integer");
  bad(file_with(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "8 bytes for shape [3] of F32");
  bad(file_with(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8), "8 bytes for shape");
  bad(file_with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), "end 0 < begin 8");
  bad(file_with(R"({"a":{"dtype":"F32","shape":[2]}})", 8), "needs \"dtype\", \"shape\" and \"data_offsets\"");
  bad(file_with(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), "starts at byte 4 of the buffer, expected 0 (a hole)");
  bad(file_with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
      "(overlap)");
  bad(file_with(ok, 12), "the tensors cover 8 bytes of a 12-byte buffer");
  bad(file_with(ok, 4), "the tensors cover 8 bytes of a 4-byte buffer");
  bad(file_with(R"({"__metadata__":{"format":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8),
      "__metadata__ value of \"format\" is not a string");
  bad(file_with(R"({"a":[1]})", 0), "tensor \"a\" is not an object");

  // NaN or Inf in a float tensor is named when converted.
  std::string nan_file = file_with(ok, 8);
  float const inf = std::numeric_limits<float>::infinity();
  std::memcpy(nan_file.data() + nan_file.size() - 4, &inf, 4);
  auto const f = parse_string(nan_file);
  CHECK_THROWS_WITH_AS((void)f.to_float<1>("a"), doctest::Contains("non-finite value at element 1"), rsq::io_error);

  // Files that are not files, and writes that cannot happen.
  auto const dir = rsq_test::temp_dir("safetensors_bad");
  CHECK_THROWS_WITH_AS((void)rsq::io::safetensors_file::open(dir), doctest::Contains("is a directory"), rsq::io_error);
  CHECK_THROWS_WITH_AS((void)rsq::io::safetensors_file::open(dir / "missing"), doctest::Contains("no such file"),
                       rsq::io_error);
  std::vector<float> x(2);
  std::vector<rsq::io::tensor_record> recs;
  recs.push_back(rsq::io::make_record("x", x, {2}));
  CHECK_THROWS_AS(rsq::io::save_safetensors(dir / "no/such/folder/x.safetensors", recs), rsq::io_error);
  recs.push_back(rsq::io::make_record("x", x, {2}));
  CHECK_THROWS_WITH_AS(rsq::io::save_safetensors(dir / "dup.safetensors", recs), doctest::Contains("given twice"),
                       rsq::invalid_argument);
  CHECK(!fs::exists(dir / "dup.safetensors"));
}

TEST_CASE("safetensors: the real checkpoints of ../shared equal their llama2.c twins") {
  RSQ_NEED_SHARED(shared);
  for (char const* name : {"lm7m", "lm16m"}) {
    CAPTURE(name);
    auto const hf = shared / "data/models" / name / "hf";
    auto const l2c = shared / "data/models" / name / "llama2c/model.bin";
    if (!fs::exists(hf / "model.safetensors") || !fs::exists(l2c)) {
      MESSAGE("SKIPPED ", name, ": not in ../shared");
      continue;
    }
    auto const c = rsq::io::safetensors_checkpoint::open(hf);
    auto const twin = rsq::model::load_llama2c_checkpoint(l2c);
    auto const& e = c.at("model.embed_tokens.weight");
    CHECK(e.dtype == (std::string(name) == "lm7m" ? tensor_dtype::f32 : tensor_dtype::bf16));
    auto const emb = c.to_float<2>("model.embed_tokens.weight");
    CHECK(emb == twin.token_embedding);  // the twin holds the same values in float32
    auto const down = c.to_float<2>("model.layers.3.mlp.down_proj.weight");
    CHECK(down == twin.layers[3].w2);
    CHECK(c.to_float<1>("model.norm.weight") == twin.rms_final);
    if (e.dtype == tensor_dtype::f32) {
      auto const v = c.files()[0].view_float<2>("model.embed_tokens.weight");
      CHECK(v(7, 9) == emb(7, 9));
    }
  }
}
