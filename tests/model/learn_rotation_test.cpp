// SPDX-License-Identifier: MIT
// learn_rotation() (model/learn_rotation.hpp) on a tiny random model: the rotations stay orthogonal, the
// fake-quantized loss falls, the same seed gives the same bits for any thread count; and the plumbing into
// quantize_model() (rotate_options::learned, model/learned_rotation.hpp) preserves the model's function.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include <rsq/model/learn_rotation.hpp>
#include <rsq/model/quantize.hpp>
#include <rsq/rotation/random_orthogonal.hpp>

#include "model/model_test_support.hpp"

using namespace rsq::model;
using rsq::index_t;

namespace {

llama_config small_config() {
  llama_config c;
  c.dim = 32;
  c.hidden_dim = 48;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 40;
  c.seq_len = 16;
  return c;
}

rsq::matrix<std::int32_t> tokens(index_t S, index_t L, int vocab, std::uint32_t seed) {
  rsq_test::uniform_source u(seed);
  auto t = rsq::make_matrix<std::int32_t>(S, L);
  for (auto& x : t) x = std::int32_t(std::min(float(vocab - 1), std::floor((u(1.f) + 1.f) * 0.5f * float(vocab))));
  return t;
}

double orthogonality_error(rsq::matrix<double> const& a) {
  std::size_t const n = a.shape()[0];
  double worst = 0;
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < n; ++j) {
      double s = 0;
      for (std::size_t k = 0; k < n; ++k) s += a(k, i) * a(k, j);
      worst = std::max(worst, std::abs(s - (i == j ? 1.0 : 0.0)));
    }
  return worst;
}

void set_threads([[maybe_unused]] int n) {
#if defined(_OPENMP)
  omp_set_num_threads(n);
#endif
}

learned_rotation random_rotation(llama_config const& c, std::uint64_t seed) {
  learned_rotation r;
  r.r1 = rsq::rotation::random_orthogonal(c.dim, seed).dense();
  for (int l = 0; l < c.n_layers; ++l) r.r2.push_back(rsq::rotation::random_orthogonal(c.head_size(), seed + 1 + l).dense());
  return r;
}

}  // namespace

TEST_SUITE("learn_rotation") {
  TEST_CASE("learning keeps R orthogonal, lowers the fake-quantized loss, and gives the same bits for 1 and 2 threads") {
    auto const c = small_config();
    auto const m = rsq_test::random_model(c, 4);
    auto const calib = tokens(6, 12, c.vocab_size, 8);
    learn_rotation_options opt;
    opt.steps = 6;
    opt.sequences_per_step = 6;  // every step on the same batch: the curve compares like with like
    opt.grid.bits = 3;
    opt.learning_rate = 1.5;
    opt.momentum = 0.5;
    rsq::backend::cpu_eigen const be{};
    set_threads(1);
    auto const one = learn_rotation(be, m, rsq::view(calib), opt);
    set_threads(2);
    index_t calls = 0;
    auto const two = learn_rotation(be, m, rsq::view(calib), opt, [&](index_t, double) { ++calls; });
    CHECK(calls == opt.steps);
    REQUIRE(one.status == rsq::rotation::cayley_status::ok);
    REQUIRE(one.loss.size() == std::size_t(opt.steps));
    CHECK(orthogonality_error(one.rotation.r1) <= 1e-5);
    for (auto const& r2 : one.rotation.r2) CHECK(orthogonality_error(r2) <= 1e-5);
    CHECK(one.loss.back() < one.loss.front());
    // The loss at the result (after the last step) on the same batch is below the loss at QuaRot's rotation.
    auto const p = make_rotation_problem<float>(m);
    rotation_loss_options const lo{.grid = opt.grid};
    double const learned = rotation_loss(be, p, one.rotation, rsq::view(calib), lo);
    CHECK(learned < one.loss.front());
    CHECK(one.loss == two.loss);
    CHECK(one.rotation.r1 == two.rotation.r1);
    for (std::size_t l = 0; l < one.rotation.r2.size(); ++l) CHECK(one.rotation.r2[l] == two.rotation.r2[l]);
    auto again = opt;
    again.seed = 1;
    again.sequences_per_step = 2;
    auto const other = learn_rotation(be, m, rsq::view(calib), again);
    CHECK(other.loss != one.loss);
  }

  TEST_CASE("apply_learned_rotation preserves the function; quantize_model takes a learned rotation") {
    auto const c = small_config();
    auto const m = rsq_test::random_model(c, 12);
    auto const ids = tokens(3, 12, c.vocab_size, 14);
    auto const r = random_rotation(c, 3);
    auto rotated = m;
    apply_learned_rotation(rotated, r, plan_rotation(c));
    auto const a = forward(rsq::backend::cpu_eigen{}, m, rsq::view(ids));
    auto const b = forward(rsq::backend::cpu_eigen{}, rotated, rsq::view(ids));
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, double(std::abs(a.data()[i] - b.data()[i])));
    CHECK(worst < 1e-4);
    // The whole pipeline at 8 bits: the learned rotation, the pipeline's own Q and online Hadamards compose to a
    // function-preserving rotation, so the loss is the full-precision one to the rounding of 8 bits.
    quantize_options qo;
    qo.method = quant_method::quarot;
    qo.grid = rsq_script_grid(8);
    qo.rotation.learned = std::make_shared<learned_rotation const>(r);
    auto const q = quantize_model(m, rsq::view(ids), qo);
    double const fp = evaluate(m, rsq::view(ids)).mean;
    CHECK(evaluate(q.model, rsq::view(ids)).mean == doctest::Approx(fp).epsilon(2e-3));
    // The learned rotation is the whole rotation: the same R with a different pipeline seed gives the same model.
    auto qo2 = qo;
    qo2.rotation.seed = 7;
    auto const q2 = quantize_model(m, rsq::view(ids), qo2);
    CHECK(evaluate(q2.model, rsq::view(ids)).mean == doctest::Approx(evaluate(q.model, rsq::view(ids)).mean).epsilon(1e-3));
    // The same at 3 bits (QuaRot-RTN), where the rotation decides the rounding: with R applied once the two seeds
    // give the same weights to float rounding; R applied twice (R·Qᵀ·R with the seed's Q) would not.
    quantize_options rtn;
    rtn.method = quant_method::rtn;
    rtn.rotate = true;
    rtn.grid = rsq_script_grid(3);
    rtn.rotation.learned = qo.rotation.learned;
    auto rtn7 = rtn;
    rtn7.rotation.seed = 7;
    auto const w0 = quantize_model(m, rsq::view(ids), rtn).model.layers[0].wq;
    auto const w7 = quantize_model(m, rsq::view(ids), rtn7).model.layers[0].wq;
    double diff = 0, norm = 0;
    for (std::size_t i = 0; i < w0.size(); ++i) {
      diff += std::abs(double(w0.data()[i]) - double(w7.data()[i]));
      norm += std::abs(double(w0.data()[i]));
    }
    CHECK(diff <= 1e-3 * norm);
    // QuaRot's own rotation given as learned is QuaRot.
    quantize_options plain;
    plain.method = quant_method::quarot;
    plain.grid = rsq_script_grid(4);
    auto learned_plain = plain;
    learned_plain.rotation.learned = std::make_shared<learned_rotation const>(initial_rotation(plan_rotation(c), c));
    double const quarot = evaluate(quantize_model(m, rsq::view(ids), plain).model, rsq::view(ids)).mean;
    double const same = evaluate(quantize_model(m, rsq::view(ids), learned_plain).model, rsq::view(ids)).mean;
    CHECK(same == doctest::Approx(quarot).epsilon(1e-3));
  }

  TEST_CASE("learn a rotation, then GPTQ (SpinQuant) and RSQ on it (the snippet of docs/learned-rotations.md)") {
    auto const c = small_config();
    auto const model = rsq_test::random_model(c, 30);
    auto const calibration = tokens(8, 12, c.vocab_size, 31);
    // [snippet:learn_rotation]
    rsq::backend::cpu_eigen const be{};
    rsq::model::learn_rotation_options lo;
    lo.steps = 4;               // SpinQuant: 100
    lo.sequences_per_step = 4;  // SpinQuant: 8
    lo.grid.bits = 3;           // the loss goes through weights fake-quantized on the target grid
    auto const learned = rsq::model::learn_rotation(be, model, rsq::view(calibration), lo);
    // learned.loss: the loss of every step; learned.rotation: R1 (dim x dim) and one R2 (head_dim x head_dim) per layer
    rsq::model::quantize_options qo;
    qo.method = rsq::model::quant_method::quarot;  // learned rotation + GPTQ = SpinQuant; quant_method::rsq adds AttnCon
    qo.grid = rsq::model::rsq_script_grid(3);
    qo.rotation.learned = std::make_shared<rsq::model::learned_rotation const>(learned.rotation);
    auto const q = rsq::model::quantize_model(be, model, rsq::view(calibration), qo);
    // [snippet:learn_rotation]
    CHECK(q.ok());
    CHECK(learned.loss.size() == 4);
    CHECK(q.rotation.has_value());
  }

  TEST_CASE("save and load round-trip; bad input is refused with a clear message") {
    auto const c = small_config();
    auto const m = rsq_test::random_model(c, 2);
    auto const r = random_rotation(c, 5);
    std::filesystem::create_directories(RSQ_TEST_TMP_DIR);
    auto const prefix = std::filesystem::path(RSQ_TEST_TMP_DIR) / "learned";
    save_learned_rotation(prefix, r);
    auto const back = load_learned_rotation(prefix, c);
    CHECK(back.r1 == r.r1);
    CHECK(back.r2 == r.r2);
    auto other = c;
    other.n_layers = 3;
    CHECK_THROWS_WITH_AS((void)load_learned_rotation(prefix, other), doctest::Contains("R2 matrices"),
                         rsq::invalid_argument);
    auto skewed = r;
    skewed.r1(0, 0) += 0.01;
    CHECK_THROWS_WITH_AS(validate(skewed, c), doctest::Contains("not orthogonal"), rsq::invalid_argument);

    auto const calib = tokens(4, 8, c.vocab_size, 1);
    learn_rotation_options opt;
    opt.sequences_per_step = 5;
    CHECK_THROWS_WITH_AS((void)learn_rotation(rsq::backend::cpu_eigen{}, m, rsq::view(calib), opt),
                         doctest::Contains("sequences per step"), rsq::invalid_argument);
    opt.sequences_per_step = 2;
    opt.steps = 0;
    CHECK_THROWS_WITH_AS((void)learn_rotation(rsq::backend::cpu_eigen{}, m, rsq::view(calib), opt),
                         doctest::Contains("steps"), rsq::invalid_argument);
    quantize_options qo;
    qo.method = quant_method::gptq;
    qo.rotation.learned = std::make_shared<learned_rotation const>(r);
    CHECK_THROWS_WITH_AS((void)quantize_model(m, rsq::view(calib), qo), doctest::Contains("learned rotation"),
                         rsq::invalid_argument);
    CHECK_THROWS_WITH_AS((void)rotate_model(*std::make_unique<llama_model>(m), qo.rotation),
                         doctest::Contains("apply_learned_rotation"), rsq::invalid_argument);
  }
}
