// SPDX-License-Identifier: MIT
// rsq/io/imatrix.hpp: GGUF and legacy .dat round trips, the keys and tensor shapes llama-quantize reads, the .dat
// layout byte by byte, the writers' checks, and one corrupt file per refusal of the reader.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <rsq/io/imatrix.hpp>

#include "support/shared_data.hpp"

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

struct raw {
  std::string s;
  template <class T>
  raw& put(T v) {
    char b[sizeof v];
    std::memcpy(b, &v, sizeof v);
    s.append(b, sizeof v);
    return *this;
  }
  raw& i32(std::int32_t v) { return put(v); }
  raw& text(std::string_view t) {
    s.append(t);
    return *this;
  }
};

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
