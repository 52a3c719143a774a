// SPDX-License-Identifier: MIT
// cuda-backend-tour: every algorithm of rsq on the CUDA backend, with the tensors kept on the GPU, in the order a
// quantizer calls them (docs/cuda.md cuts its examples from this file). Without a CUDA build or a GPU it says so.
//
//   cuda-backend-tour [--help]
// Exit status: 0 on success (or nothing to run), 1 on an error.

#include <cstdio>
#include <exception>
#include <random>
#include <string_view>

#if defined(RSQ_WITH_CUDA) && RSQ_WITH_CUDA
#include <rsq/cuda.hpp>

namespace {

int tour() {
  using rsq::index_t;
  index_t const rows = 256, cols = 512, sequences = 4, tokens = 64, heads = 8, kv_heads = 2, head_dim = 64;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  auto random = [&](index_t r, index_t c) {
    auto m = rsq::make_matrix<float>(r, c);
    for (auto& v : m) v = nd(rng);
    return m;
  };
  auto const w_host = random(rows, cols), x_host = random(sequences * tokens, cols);
  auto const q_host = random(tokens, heads * head_dim), k_host = random(tokens, kv_heads * head_dim);

  // [snippet:cuda-tour]
  rsq::backend::cuda const be{};  // the legacy default stream; rsq::backend::cuda{stream} runs on yours

  // Engines keep their tensors on the GPU: views of device memory go straight in.
  auto w = rsq::backend::to_backend(be, rsq::view(w_host));  // (rows, cols) device copy of W
  auto x = rsq::backend::to_backend(be, rsq::view(x_host));  // (sequences·tokens, cols) calibration inputs

  // Rotate W and the inputs with a randomized Hadamard rotation (W·Q, x·Q), in place on the device.
  auto const rot = rsq::rotation::randomized_hadamard(cols, /*seed=*/0);
  rot.apply_right(be, rsq::view(w));
  rot.apply_right(be, rsq::view(x));

  // Scale: AttnCon scores of one sequence straight from its queries and keys (device memory in and out).
  auto q = rsq::backend::to_backend(be, rsq::view(q_host));
  auto k = rsq::backend::to_backend(be, rsq::view(k_host));
  auto scores = rsq::backend::make_matrix<float>(be, 1, tokens);  // (1, tokens)
  rsq::importance::attncon_scores_qk(
      be, rsq::tensor_view<const float, 3>(q.data(), {heads, tokens, head_dim}, {head_dim, heads * head_dim, 1}),
      rsq::tensor_view<const float, 3>(k.data(), {kv_heads, tokens, head_dim}, {head_dim, kv_heads * head_dim, 1}),
      rsq::vector_view<float>(scores.data(), tokens));

  // The Hessian of the rotated inputs (bf16 inputs: an opt-in), left on the device.
  rsq::hessian_accumulator<float, rsq::backend::cuda> acc(cols, be, {}, {.precision = rsq::hessian::precision::bf16});
  acc.add(rsq::batch_view<const float>(x.data(), {sequences, tokens, cols}));
  auto const h = acc.hessian_resident();  // (cols, cols) device matrix

  // Quantize: one factorization per distinct H, then the solve; the result stays on the device...
  rsq::gptq::options const opt{.group_size = 128, .act_order = true};
  auto const f = rsq::gptq::factor(be, rsq::view(h), opt);
  auto r = rsq::gptq::solve_resident(be, rsq::view(w), f, {.bits = 4}, opt);
  // ... where it is packed into the GPTQ checkpoint layout, then both come to the host.
  auto packed = rsq::pack::to_host(be, rsq::pack::pack_gptq_resident(be, r.weight, rsq::pack::zero_format::v2));
  auto host = rsq::gptq::to_host(be, std::move(r));
  // [snippet:cuda-tour]

  std::printf("cuda-backend-tour: %s, loss %.4g, qweight (%zu x %zu), first AttnCon score on the host %.3f\n",
              std::string(rsq::gptq::to_string(host.info)).c_str(), host.total_loss(), packed.qweight.shape()[0],
              packed.qweight.shape()[1],
              rsq::backend::to_host(be, rsq::matrix_view<const float>(rsq::view(scores)))(0, 0));
  return host.ok() ? 0 : 1;
}

}  // namespace
#endif

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::string_view(argv[i]) == "--help" || std::string_view(argv[i]) == "-h") {
      std::puts("usage: cuda-backend-tour\nRuns every algorithm of rsq on the CUDA backend with the tensors on the GPU "
                "(docs/cuda.md).\nExit status: 0 on success or when there is nothing to run, 1 on an error.");
      return 0;
    }
#if defined(RSQ_WITH_CUDA) && RSQ_WITH_CUDA
  if (rsq::cuda::device_count() == 0) {
    std::puts("cuda-backend-tour: no CUDA device here; nothing to run");
    return 0;
  }
  try {
    return tour();
  } catch (std::exception const& e) {
    std::fprintf(stderr, "cuda-backend-tour: error: %s\n", e.what());
    return 1;
  }
#else
  (void)argc;
  (void)argv;
  std::puts("cuda-backend-tour: this build has no CUDA backend (configure with -DRSQ_WITH_CUDA=ON)");
  return 0;
#endif
}
