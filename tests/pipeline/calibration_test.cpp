// SPDX-License-Identifier: MIT
// Calibration and evaluation data (spec §8.1, §8.2, §9.1): stories, story ranges, token streams, seeded windows,
// the cyclic-shift expansion against its definition, and the evaluation windowing that reproduces the reference
// loss of docs/model.md.

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <numeric>
#include <set>
#include <vector>

#include <rsq/core/random.hpp>
#include <rsq/model/calibration.hpp>
#include <rsq/model/quantize.hpp>

#include "pipeline/pipeline_support.hpp"

using namespace rsq::model;
using namespace rsq_pipeline_test;
using rsq::index_t;

TEST_SUITE("pipeline.calibration") {
  TEST_CASE("stories are the pieces between blank lines") {
    CHECK(split_stories("a b\n\nc\n\n") == std::vector<std::string>{"a b", "c"});
    CHECK(split_stories("a\n\n\n\nb") == std::vector<std::string>{"a", "", "b"});
    CHECK(split_stories("a\nb\n\n\nc") == std::vector<std::string>{"a\nb", "\nc"});
    CHECK(split_stories("single") == std::vector<std::string>{"single"});
    CHECK(split_stories("").empty());
  }

  TEST_CASE("stories260K: 4300 stories, story 0 is 85 tokens with BOS, streams are BOS-joined stories") {
    RSQ_NEED_SHARED(shared);
    auto const f = load_stories260k(shared);
    CHECK(f.stories.size() == 4300);
    auto const s0 = story_tokens(f.tok, f.stories, {0, 1});
    CHECK(s0.size() == 85);
    CHECK(s0.front() == tokenizer::bos_id);
    auto const s = story_tokens(f.tok, f.stories, {10, 13});
    std::vector<std::int32_t> manual;
    for (int i = 10; i < 13; ++i) {
      auto const e = f.tok.encode(f.stories[std::size_t(i)], {.bos = true});
      manual.insert(manual.end(), e.begin(), e.end());
    }
    CHECK(s == manual);
    CHECK(std::count(s.begin(), s.end(), tokenizer::bos_id) == 3);
  }

  TEST_CASE("stories260K: 8 consecutive 256-token windows from story 800 give the reference loss 1.7194") {
    RSQ_NEED_SHARED(shared);
    auto const f = load_stories260k(shared);
    auto const stream = story_tokens(f.tok, f.stories, {800, 860});
    auto const all = consecutive_windows(stream, 256);
    REQUIRE(all.shape()[0] >= 8);
    CHECK(index_t(all.shape()[0]) == index_t(stream.size()) / 256);
    for (index_t w = 0; w < index_t(all.shape()[0]); ++w)
      for (index_t t = 0; t < 256; ++t) REQUIRE(all(w, t) == stream[std::size_t(w * 256 + t)]);
    auto const eight = rsq::matrix_view<const std::int32_t>(all.data(), 8, 256);
    auto const r = evaluate(f.model, eight, 3);  // batches of 3, 3, 2
    CHECK(r.count == 8 * 255);
    CHECK(std::abs(r.mean - 1.7194) < 1e-4);
    auto const whole = next_token_loss(f.model, eight);
    CHECK(r.mean == doctest::Approx(whole.mean).epsilon(1e-6));  // batches change GEMM rounding only
    CHECK(r.perplexity == doctest::Approx(std::exp(whole.mean)).epsilon(1e-6));
  }

  TEST_CASE("sampled windows are slices of the stream at the documented seeded starts") {
    std::vector<std::int32_t> stream(1000);
    std::iota(stream.begin(), stream.end(), 0);  // token t is t, so a window's first token is its start
    index_t const L = 64, n = 300;
    auto const w = sample_windows(stream, L, n, 42);
    REQUIRE(w.shape()[0] == std::size_t(n));
    REQUIRE(w.shape()[1] == std::size_t(L));
    std::set<std::int32_t> starts;
    for (index_t k = 0; k < n; ++k) {
      std::int32_t const s = w(k, 0);
      CHECK(s >= 0);
      CHECK(s <= 1000 - L - 1);  // randint(0, T − L − 1), inclusive
      for (index_t t = 0; t < L; ++t) REQUIRE(w(k, t) == s + t);
      // The documented rule: ⌊u_k·(T − L)⌋ with u_k from the SplitMix64 stream of seed ^ salt.
      double const u = rsq::random::uniform_of(rsq::random::splitmix64::at(42 ^ calibration_seed_salt, std::uint64_t(k)));
      CHECK(s == std::int32_t(std::floor(u * double(1000 - L))));
      starts.insert(s);
    }
    CHECK(starts.size() > 200);  // spread over the stream, not a handful of starts
    double mean = 0;
    for (index_t k = 0; k < n; ++k) mean += w(k, 0);
    mean /= double(n);
    CHECK(std::abs(mean - double(1000 - L - 1) / 2) < 60);  // uniform: sd of the mean ≈ 270/√300 ≈ 16
    // Deterministic in the seed; another seed gives other windows.
    CHECK(sample_windows(stream, L, n, 42) == w);
    CHECK(sample_windows(stream, L, n, 43) != w);
    // T = L + 1: the only start is 0.
    auto const tight = sample_windows(std::span<const std::int32_t>(stream.data(), 65), 64, 5, 1);
    for (index_t k = 0; k < 5; ++k) CHECK(tight(k, 0) == 0);
  }

  TEST_CASE("cyclic-shift expansion against its definition (spec §8.2)") {
    // The figure of the paper: L = 6, F = 3, shifts 0, 2, 4.
    std::vector<std::int32_t> x{1, 2, 3, 4, 5, 6};
    auto const e = expand_cyclic(rsq::matrix_view<const std::int32_t>(x.data(), 1, 6), 3);
    std::vector<std::int32_t> const want{1, 2, 3, 4, 5, 6, 5, 6, 1, 2, 3, 4, 3, 4, 5, 6, 1, 2};
    CHECK(std::vector<std::int32_t>(e.begin(), e.end()) == want);

    // Random windows: copy f of sequence s is row s·F + f and equals numpy's roll(x, f·⌊L/F⌋).
    auto const w = random_tokens(3, 10, 100, 7);
    index_t const F = 4, step = 10 / 4;
    auto const ex = expand_cyclic(rsq::view(w), F);
    REQUIRE(ex.shape()[0] == 12);
    for (index_t s = 0; s < 3; ++s)
      for (index_t f = 0; f < F; ++f)
        for (index_t t = 0; t < 10; ++t) CHECK(ex(s * F + f, (t + f * step) % 10) == w(s, t));
    CHECK(expand_cyclic(rsq::view(w), 1) == w);
  }

  TEST_CASE("story ranges") {
    CHECK(parse_story_range("0:500") == story_range{0, 500});
    CHECK(parse_story_range("500:1000").size() == 500);
    CHECK(story_range{0, 10}.overlaps({9, 12}));
    CHECK_FALSE(story_range{0, 10}.overlaps({10, 12}));
    for (char const* bad : {"5", "a:b", "3:3", "5:2", "-1:4", "1:2:3", ":4", "4:", "0x1:3", " 1:2"})
      CHECK_THROWS_AS((void)parse_story_range(bad, "--calib-stories"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)parse_story_range("7", "--eval-stories"),
                         doctest::Contains("--eval-stories: expected begin:end"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)parse_story_range("9:2", "--eval-stories"), doctest::Contains("begin must be below end"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS(validate(story_range{0, 4400}, 4300), doctest::Contains("goes past the 4300 stories"),
                         rsq::invalid_argument);
    std::vector<std::string> const stories{"a", "b"};
    rsq::model::tokenizer const tok({"<unk>", "<s>", "</s>", " ", "a", "b"}, {0, 0, 0, 0, 0, 0});
    CHECK(story_tokens(tok, stories, {0, 2}) == std::vector<std::int32_t>{1, 3, 4, 1, 3, 5});
    CHECK_THROWS_WITH_AS((void)story_tokens(tok, stories, {1, 3}), doctest::Contains("goes past the 2 stories"),
                         rsq::invalid_argument);
  }

  TEST_CASE("bad windows and files") {
    std::vector<std::int32_t> stream(100, 7);
    CHECK_THROWS_WITH_AS((void)sample_windows(stream, 100, 4, 0), doctest::Contains("need at least 101"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)sample_windows(stream, 1, 4, 0), doctest::Contains("seqlen must be at least 2"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)sample_windows(stream, 10, 0, 0), doctest::Contains("nsamples must be at least 1"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)consecutive_windows(stream, 101), doctest::Contains("fewer than one window"),
                         rsq::invalid_argument);
    auto const w = random_tokens(2, 8, 10, 1);
    CHECK_THROWS_WITH_AS((void)expand_cyclic(rsq::view(w), 0), doctest::Contains("expansion factor must be in [1, 8]"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)expand_cyclic(rsq::view(w), 9), doctest::Contains("got 9"), rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)load_stories("/nonexistent/stories.txt"), doctest::Contains("no such file"),
                         rsq::io_error);
    auto const dir = rsq_test::temp_dir("pipeline_calibration");
    { std::ofstream(dir / "empty.txt"); }
    CHECK_THROWS_WITH_AS((void)load_stories(dir / "empty.txt"), doctest::Contains("no stories"), rsq::io_error);

    auto const m = random_model(tiny_config(), 1);
    auto const long_windows = random_tokens(1, 65, 10, 1);  // seq_len is 64
    CHECK_THROWS_WITH_AS((void)evaluate(m, rsq::view(long_windows)), doctest::Contains("exceed the model's seq_len 64"),
                         rsq::invalid_argument);
    auto const ok = random_tokens(2, 8, 10, 1);
    CHECK_THROWS_WITH_AS((void)evaluate(m, rsq::view(ok), 0), doctest::Contains("batch must be at least 1"),
                         rsq::invalid_argument);
  }
}
