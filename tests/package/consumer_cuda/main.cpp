// SPDX-License-Identifier: MIT
// Compiles against the installed CUDA backend (plain C++ including <rsq/cuda.hpp>); with a GPU, solves a small layer
// on both backends and checks they agree. Without one (CI), it only reports that none was found.
#include <rsq/cuda.hpp>

#include <cstdio>

int main() {
  int const devices = rsq::cuda::device_count();
  std::printf("rsq %s, CUDA devices: %d\n", rsq::version_string, devices);
  if (devices == 0) return 0;
  auto w = rsq::make_matrix<double>(8, 32);
  auto h = rsq::make_matrix<double>(32, 32);
  for (int r = 0; r < 8; ++r)
    for (int c = 0; c < 32; ++c) w(r, c) = double((r * 7 + c * 3) % 11) - 5.0;
  for (int i = 0; i < 32; ++i) h(i, i) = 1.0 + i % 3;
  auto const gpu = rsq::gptq::solve(rsq::backend::cuda{}, w, h, {.bits = 4});
  auto const cpu = rsq::gptq::solve(rsq::backend::cpu_eigen{}, w, h, {.bits = 4});
  return gpu.ok() && gpu.weight.codes == cpu.weight.codes ? 0 : 1;
}
