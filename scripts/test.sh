#!/usr/bin/env bash
# Installs what rsq's tests need, builds and runs every test (what CI runs: .ci/run):
#   1. GCC, Release (-O3 -march=native): the command-line tools and their tests, install + find_package/FetchContent
#      consumers, the tests labelled "heavy" (large sizes, and llama.cpp running rsq's GGUF files through
#      node-llama-cpp, installed here by `npm ci` in tests/llama_cpp; tests/CMakeLists.txt), and every public header
#      compiled on its own;
#   2. clang, -O1, AddressSanitizer + UndefinedBehaviorSanitizer: every other test (golden data from
#      ../shared when present); each test runs once, instrumented;
#   3. the libFuzzer targets (clang) for a bounded time each;
#   4. when nvcc is installed: the CUDA backend's nvcc targets compiled for sm_90 (its tests need a GPU:
#      scripts/cuda-device.sh builds and runs them on the GPU machine).
# RSQ_TEST_QUICK=1 instead builds everything in Release with GCC and runs all tests there, without sanitizers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# A real llama.cpp for the GGUF tests: node-llama-cpp's prebuilt libraries, pinned by the committed lock file.
(cd tests/llama_cpp && npm ci --no-audit --no-fund --loglevel=error)
jobs=$(nproc)
step() { printf '\n=== %s (at %d s) ===\n' "$*" "$SECONDS"; }

# Benchmarks are not tests: scripts/cuda-device.sh cpu-bench builds and runs them (docs/benchmarks.md).
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release -DRSQ_BUILD_BENCHMARKS=OFF
if [ "${RSQ_TEST_QUICK:-0}" = 1 ]; then
  step "release build, all tests"
  cmake --build build/release -j "$jobs"
  ctest --test-dir build/release --output-on-failure -j "$jobs"
  exit 0
fi

step "release build: tools, command-line, package and heavy tests, self-contained headers"
cmake --build build/release -j "$jobs" --target rsq-quantize-layer rsq-llama2c rsq-quantize rsq_test_cli_quantize_layer_test \
      rsq_test_cli_quantize_test rsq_test_cli_llama2c_test \
      rsq_self_contained_headers rsq_test_linalg_determinism_test rsq_test_linalg_syrk_test \
      rsq_test_pipeline_backends_test rsq_test_model_hf_tokenizer_test rsq_test_model_gguf_llama_cpp_test
ctest --test-dir build/release --output-on-failure -j "$jobs" -L "cli|package|heavy"

step "all tests under AddressSanitizer + UndefinedBehaviorSanitizer"
# clang compiles the instrumented tests in half the time GCC takes.
cmake -S . -B build/sanitize -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Debug \
      -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" -DRSQ_SANITIZE=ON -DRSQ_BUILD_EXAMPLES=OFF -DRSQ_BUILD_BENCHMARKS=OFF \
      -DRSQ_NATIVE=OFF
cmake --build build/sanitize -j "$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build/sanitize --output-on-failure -j "$jobs" -LE package

step "fuzz targets (libFuzzer, bounded time)"
cmake -S . -B build/fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DRSQ_BUILD_FUZZERS=ON -DRSQ_BUILD_TESTS=OFF \
      -DRSQ_BUILD_EXAMPLES=OFF -DRSQ_BUILD_BENCHMARKS=OFF -DRSQ_FUZZ_SECONDS="${RSQ_FUZZ_SECONDS:-10}"
cmake --build build/fuzz -j "$jobs"
ctest --test-dir build/fuzz --output-on-failure -L fuzz

if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  step "CUDA backend: nvcc targets for sm_90 (the GPU tests run on the device machine: scripts/cuda-device.sh)"
  export PATH="$PATH:/usr/local/cuda/bin"
  # Only the CUDA targets: the CPU tests were built and run above.
  cmake -S . -B build/cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DRSQ_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DRSQ_BUILD_EXAMPLES=OFF
  cmake --build build/cuda -j "$jobs" --target rsq_cuda_objects rsq_self_contained_cuda_headers \
        $(cd benchmarks/cuda && ls bench_*.cu | sed 's/\.cu$//')
fi
step "done"
echo "all tests passed"
