// SPDX-License-Identifier: MIT
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <rsq/model/llama2c.hpp>

#include "model/model_test_support.hpp"
#include "support/shared_data.hpp"

using namespace rsq::model;
using rsq::index_t;

namespace {

using bytes = std::vector<std::byte>;

bool same(rsq::matrix<float> const& a, rsq::matrix<float> const& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}
bool same(rsq::vector<float> const& a, rsq::vector<float> const& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// Bit-exact equality of two models.
bool same(llama_model const& a, llama_model const& b) {
  if (!(a.config == b.config) || a.layers.size() != b.layers.size()) return false;
  if (!same(a.token_embedding, b.token_embedding) || !same(a.classifier, b.classifier) || !same(a.rms_final, b.rms_final))
    return false;
  for (std::size_t l = 0; l < a.layers.size(); ++l) {
    auto const &x = a.layers[l], &y = b.layers[l];
    if (!same(x.rms_att, y.rms_att) || !same(x.rms_ffn, y.rms_ffn)) return false;
    for (linear_id id : all_linears)
      if (!same(x.weight(id), y.weight(id))) return false;
  }
  return true;
}

std::int32_t get_i32(bytes const& b, std::size_t off) {
  std::int32_t v;
  std::memcpy(&v, b.data() + off, 4);
  return v;
}
void set_i32(bytes& b, std::size_t off, std::int32_t v) { std::memcpy(b.data() + off, &v, 4); }
void set_f32(bytes& b, std::size_t off, float v) { std::memcpy(b.data() + off, &v, 4); }
float get_f32(bytes const& b, std::size_t off) {
  float v;
  std::memcpy(&v, b.data() + off, 4);
  return v;
}

/// A tiny model and its checkpoint bytes (dim 8, hidden 12, 2 layers, 2 heads, 1 KV head, vocab 10, seq 6).
llama_config small_config() {
  llama_config c;
  c.dim = 8;
  c.hidden_dim = 12;
  c.n_layers = 2;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.vocab_size = 10;
  c.seq_len = 6;
  return c;
}

/// Float count of each array, in file order, independently of the reader (README layout).
std::size_t expected_floats(llama_config const& c, bool separate) {
  std::size_t const d = c.dim, h = c.hidden_dim, L = c.n_layers, v = c.vocab_size, hs = d / c.n_heads,
                    kv = c.n_kv_heads * hs;
  return v * d + L * d + L * d * d + 2 * L * kv * d + L * d * d + L * d + 3 * L * h * d + d + 2 * c.seq_len * hs / 2 +
         (separate ? v * d : 0);
}

}  // namespace

TEST_SUITE("model.llama2c") {
  TEST_CASE("stories260K: header, parameter count and shared classifier as documented") {
    RSQ_NEED_SHARED(shared);
    auto const m = load_llama2c_checkpoint(shared / "data/models/stories260K.bin");
    CHECK(m.config.dim == 64);
    CHECK(m.config.hidden_dim == 172);
    CHECK(m.config.n_layers == 5);
    CHECK(m.config.n_heads == 8);
    CHECK(m.config.n_kv_heads == 4);
    CHECK(m.config.vocab_size == 512);
    CHECK(m.config.seq_len == 512);
    std::size_t params = m.token_embedding.size() + m.rms_final.size();
    for (auto const& L : m.layers) {
      params += L.rms_att.size() + L.rms_ffn.size();
      for (linear_id id : all_linears) params += L.weight(id).size();
    }
    CHECK(params == 260032);
    CHECK(same(m.classifier, m.token_embedding));
    // A spot check of the layout: the first float after the header is token_embedding(0, 0), and w1 of layer 4
    // starts where the README's layout says.
    auto const raw = rsq::model::detail::read_file(shared / "data/models/stories260K.bin");
    CHECK(get_f32(raw, 28) == m.token_embedding(0, 0));
    std::size_t const d = 64, h = 172, L = 5, kv = 32, v = 512;
    std::size_t const w1_off = 28 + 4 * (v * d + L * d + L * d * d + 2 * L * kv * d + L * d * d + L * d + 4 * h * d);
    CHECK(get_f32(raw, w1_off) == m.layers[4].w1(0, 0));
    CHECK(get_f32(raw, w1_off + 4 * (h * d - 1)) == m.layers[4].w1(h - 1, d - 1));
  }

  TEST_CASE("stories260K: write-read round trip is exact and reproduces the file") {
    RSQ_NEED_SHARED(shared);
    auto const path = shared / "data/models/stories260K.bin";
    auto const raw = rsq::model::detail::read_file(path);
    auto const m = load_llama2c_checkpoint(path);
    auto const out = serialize_llama2c_checkpoint(m);
    REQUIRE(out.size() == raw.size());
    std::size_t const rope_begin = 28 + 4 * std::size_t(260032), rope_floats = 512 * 4;
    // Everything but the unused RoPE tables is bit-identical.
    CHECK(std::memcmp(out.data(), raw.data(), rope_begin) == 0);
    // The RoPE tables match llama2c's export (float32 cos/sin of pos * 10000^(-2i/8)) to float rounding.
    double err = 0, err_formula = 0;
    for (std::size_t k = 0; k < 2 * rope_floats; ++k) {
      float const a = get_f32(out, rope_begin + 4 * k), b = get_f32(raw, rope_begin + 4 * k);
      err = std::max(err, double(std::abs(a - b)));
      std::size_t const p = (k % rope_floats) / 4, i = k % 4;
      double const ang = double(p) * std::pow(10000.0, -2.0 * double(i) / 8.0);
      err_formula = std::max(err_formula, std::abs(double(b) - (k < rope_floats ? std::cos(ang) : std::sin(ang))));
    }
    CHECK(err < 1e-6);
    CHECK(err_formula < 1e-4);
    CHECK(same(parse_llama2c_checkpoint(out), m));

    auto const dir = rsq_test::temp_dir("llama2c_roundtrip");
    save_llama2c_checkpoint(dir / "copy.bin", m);
    CHECK(std::filesystem::file_size(dir / "copy.bin") == raw.size());
    CHECK_FALSE(std::filesystem::exists(dir / "copy.bin.tmp"));
    CHECK(same(load_llama2c_checkpoint(dir / "copy.bin"), m));
  }

  TEST_CASE("shared and separate classifiers, RoPE table options") {
    auto const c = small_config();
    auto tied = rsq_test::random_model(c, 1, true);
    auto untied = rsq_test::random_model(c, 2, false);
    SUBCASE("automatic: tied -> positive vocab, untied -> negative vocab and a trailing classifier") {
      auto const a = serialize_llama2c_checkpoint(tied);
      CHECK(get_i32(a, 20) == 10);
      CHECK(a.size() == 28 + 4 * expected_floats(c, false));
      CHECK(same(parse_llama2c_checkpoint(a), tied));
      auto const b = serialize_llama2c_checkpoint(untied);
      CHECK(get_i32(b, 20) == -10);
      CHECK(b.size() == 28 + 4 * expected_floats(c, true));
      CHECK(get_f32(b, b.size() - 4) == untied.classifier(9, 7));
      CHECK(same(parse_llama2c_checkpoint(b), untied));
    }
    SUBCASE("separate on a tied model writes the copy; shared on an untied model is refused") {
      auto const a = serialize_llama2c_checkpoint(tied, {.classifier = classifier_storage::separate});
      CHECK(get_i32(a, 20) == -10);
      CHECK(same(parse_llama2c_checkpoint(a), tied));
      CHECK_THROWS_WITH_AS((void)serialize_llama2c_checkpoint(untied, {.classifier = classifier_storage::shared}),
                           doctest::Contains("classifier_storage::shared needs the classifier to equal"),
                           rsq::invalid_argument);
      CHECK(get_i32(serialize_llama2c_checkpoint(tied, {.classifier = classifier_storage::shared}), 20) == 10);
    }
    SUBCASE("zero RoPE tables") {
      auto const a = serialize_llama2c_checkpoint(tied, {.rope_tables = rope_table_content::zeros});
      std::size_t const begin = a.size() - 4 * std::size_t(2 * c.seq_len * c.head_size() / 2);
      for (std::size_t o = begin; o < a.size(); o += 4) CHECK(get_f32(a, o) == 0.f);
      auto const f = serialize_llama2c_checkpoint(tied);
      CHECK(get_f32(f, begin) == 1.f);                                   // cos(0)
      CHECK(get_f32(f, begin + 4 * std::size_t(c.seq_len * c.head_size() / 2)) == 0.f);  // sin(0)
      CHECK(same(parse_llama2c_checkpoint(a), tied));
    }
  }

  TEST_CASE("truncated files are rejected at every offset, trailing bytes too") {
    auto const good = serialize_llama2c_checkpoint(rsq_test::random_model(small_config(), 3, false));
    for (std::size_t n = 0; n < good.size(); ++n) {
      std::span<const std::byte> cut(good.data(), n);
      CHECK_THROWS_WITH_AS((void)parse_llama2c_checkpoint(cut, {.name = "cut.bin"}),
                           doctest::Contains("cut.bin: llama2c checkpoint truncated"), rsq::io_error);
    }
    for (std::size_t extra : {1u, 3u, 4u, 1000u}) {
      auto longer = good;
      longer.resize(good.size() + extra, std::byte{0});
      CHECK_THROWS_WITH_AS((void)parse_llama2c_checkpoint(longer),
                           doctest::Contains((std::to_string(extra) + " unexpected trailing bytes").c_str()), rsq::io_error);
    }
  }

  TEST_CASE("the real checkpoint truncated or extended is rejected") {
    RSQ_NEED_SHARED(shared);
    auto const raw = rsq::model::detail::read_file(shared / "data/models/stories260K.bin");
    for (std::size_t n : {std::size_t(0), std::size_t(27), std::size_t(28), std::size_t(1000), raw.size() / 2,
                          raw.size() - 4 * 4096, raw.size() - 1}) {
      CHECK_THROWS_WITH_AS((void)parse_llama2c_checkpoint(std::span<const std::byte>(raw.data(), n)),
                           doctest::Contains("truncated"), rsq::io_error);
    }
    auto longer = raw;
    longer.resize(raw.size() + 4 * 512 * 64, std::byte{0});  // as if a separate classifier were appended
    CHECK_THROWS_WITH_AS((void)parse_llama2c_checkpoint(longer), doctest::Contains("131072 unexpected trailing bytes"),
                         rsq::io_error);
  }

  TEST_CASE("corrupt header fields are rejected with the field named") {
    auto const good = serialize_llama2c_checkpoint(rsq_test::random_model(small_config(), 4));
    auto with = [&](int field, std::int32_t v) {
      auto b = good;
      set_i32(b, std::size_t(4 * field), v);
      return b;
    };
    char const* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
    for (int f = 0; f < 7; ++f) {
      CAPTURE(f);
      std::string const name = names[f];
      CHECK_THROWS_WITH_AS((void)parse_llama2c_checkpoint(with(f, 0)), doctest::Contains(("header: " + name + " = 0").c_str()),
                           rsq::io_error);
      if (f != 5)
        CHECK_THROWS_WITH_AS((void)parse_llama2c_checkpoint(with(f, -3)),
                             doctest::Contains(("header: " + name + " = -3 must be positive").c_str()), rsq::io_error);
      CHECK_THROWS_WITH_AS((void)parse_llama2c_checkpoint(with(f, std::numeric_limits<std::int32_t>::max())),
                           doctest::Contains((name + " = 2147483647 is implausibly large").c_str()), rsq::io_error);
    }
    CHECK_THROWS_WITH_AS((void)parse_llama2c_checkpoint(with(5, std::numeric_limits<std::int32_t>::min())),
                         doctest::Contains("vocab_size = -2147483648 is implausibly large"), rsq::io_error);
    CHECK_THROWS_WITH_AS((void)parse_llama2c_checkpoint(with(0, 9)),
                         doctest::Contains("dim = 9 is not divisible by n_heads = 2"), rsq::io_error);
    CHECK_THROWS_WITH_AS((void)parse_llama2c_checkpoint(with(4, 3)),
                         doctest::Contains("n_heads = 2 is not divisible by n_kv_heads = 3"), rsq::io_error);
    CHECK_THROWS_WITH_AS((void)parse_llama2c_checkpoint(with(3, 8)),
                         doctest::Contains("head size dim/n_heads = 1 is odd"), rsq::io_error);
    CHECK_THROWS_WITH_AS((void)parse_llama2c_checkpoint(with(0, llama2c_magic)),
                         doctest::Contains("magic 'ak42'"), rsq::io_error);
    // Plausible but wrong sizes: the header then implies another file size.
    CHECK_THROWS_WITH_AS((void)parse_llama2c_checkpoint(with(2, 3)), doctest::Contains("truncated: the header"),
                         rsq::io_error);
    CHECK_THROWS_WITH_AS((void)parse_llama2c_checkpoint(with(2, 1)), doctest::Contains("unexpected trailing bytes"),
                         rsq::io_error);
    CHECK_THROWS_WITH_AS((void)parse_llama2c_checkpoint(with(5, -10)), doctest::Contains("truncated"), rsq::io_error);
    CHECK_THROWS_WITH_AS((void)parse_llama2c_checkpoint(with(6, 1 << 20)), doctest::Contains("truncated"),
                         rsq::io_error);
  }

  TEST_CASE("NaN and Inf anywhere are rejected, naming the array") {
    auto const c = small_config();
    auto const good = serialize_llama2c_checkpoint(rsq_test::random_model(c, 5, false));
    std::size_t const d = 8, h = 12, L = 2, v = 10, kv = 4;
    struct where {
      std::size_t offset_floats;
      char const* name;
    };
    std::size_t o = 0;
    std::vector<where> spots;
    auto add = [&](std::size_t n, std::size_t per_layer, char const* name) {
      spots.push_back({o + n - 1, name});  // the last element of the array (of the last layer)
      if (per_layer) spots.push_back({o + per_layer, name});  // first element of layer 1
      o += n;
    };
    add(v * d, 0, "token_embedding");
    add(L * d, d, "rms_att of layer");
    add(L * d * d, d * d, "wq of layer");
    add(L * kv * d, kv * d, "wk of layer");
    add(L * kv * d, kv * d, "wv of layer");
    add(L * d * d, d * d, "wo of layer");
    add(L * d, d, "rms_ffn of layer");
    add(L * h * d, h * d, "w1 of layer");
    add(L * d * h, d * h, "w2 of layer");
    add(L * h * d, h * d, "w3 of layer");
    add(d, 0, "rms_final");
    add(std::size_t(c.seq_len) * 2, 0, "RoPE cos table");
    add(std::size_t(c.seq_len) * 2, 0, "RoPE sin table");
    add(v * d, 0, "classifier");
    REQUIRE(28 + 4 * o == good.size());
    for (auto const& s : spots)
      for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity()}) {
        CAPTURE(s.name);
        auto b = good;
        set_f32(b, 28 + 4 * s.offset_floats, bad);
        CHECK_THROWS_WITH_AS((void)parse_llama2c_checkpoint(b), doctest::Contains((std::string("in ") + s.name).c_str()),
                             rsq::io_error);
        CHECK_THROWS_WITH_AS((void)parse_llama2c_checkpoint(b), doctest::Contains("non-finite value"), rsq::io_error);
      }
  }

  TEST_CASE("missing files and unwritable paths are io_errors; malformed models are invalid_arguments") {
    CHECK_THROWS_WITH_AS((void)load_llama2c_checkpoint("/nonexistent/dir/model.bin"),
                         doctest::Contains("/nonexistent/dir/model.bin: no such file"), rsq::io_error);
    auto const c = small_config();
    auto m = rsq_test::random_model(c, 6);
    CHECK_THROWS_WITH_AS(save_llama2c_checkpoint("/nonexistent/dir/model.bin", m),
                         doctest::Contains("cannot open for writing"), rsq::io_error);
    auto nan = m;
    nan.layers[1].w3(2, 3) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH_AS((void)serialize_llama2c_checkpoint(nan),
                         doctest::Contains("layer 1 w3 has a non-finite value (nan) at row 2, column 3"),
                         rsq::invalid_argument);
    auto shape = m;
    shape.layers[0].wv = rsq::matrix<float>(rsq::matrix<float>::shape_type{8, 8});
    CHECK_THROWS_WITH_AS((void)serialize_llama2c_checkpoint(shape), doctest::Contains("layer 0 wv must be (4 x 8)"),
                         rsq::invalid_argument);
    auto eps = m;
    eps.config.norm_eps = 1e-6f;
    CHECK_THROWS_WITH_AS((void)serialize_llama2c_checkpoint(eps), doctest::Contains("hard-codes RMSNorm eps 1e-5"),
                         rsq::invalid_argument);
    auto theta = m;
    theta.config.rope_theta = 500000.0;
    CHECK_THROWS_WITH_AS((void)serialize_llama2c_checkpoint(theta), doctest::Contains("hard-codes RoPE theta 10000"),
                         rsq::invalid_argument);
    // A failed save leaves an existing file untouched.
    auto const dir = rsq_test::temp_dir("llama2c_failed_save");
    save_llama2c_checkpoint(dir / "m.bin", m);
    CHECK_THROWS_AS(save_llama2c_checkpoint(dir / "m.bin", nan), rsq::invalid_argument);
    CHECK(same(load_llama2c_checkpoint(dir / "m.bin"), m));
  }
}
