#!/usr/bin/env bash
# Installs what rsq's tests need, builds everything and runs every test:
#   1. Release build, all tests (golden data from ../shared, when present);
#   2. the same tests under AddressSanitizer + UndefinedBehaviorSanitizer;
#   3. the libFuzzer targets (clang) for a bounded time each;
#   4. when nvcc is installed: the CUDA backend compiled for sm_90 and the tests that need no GPU.
# Set RSQ_TEST_QUICK=1 to run only step 1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
jobs=$(nproc)
step() { printf '\n=== %s (at %d s) ===\n' "$*" "$SECONDS"; }

step "release build and tests"
# Benchmarks are not tests: scripts/cuda-device.sh cpu-bench builds and runs them (docs/benchmarks.md).
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release -DRSQ_BUILD_BENCHMARKS=OFF
cmake --build build/release -j "$jobs"
ctest --test-dir build/release --output-on-failure -j "$jobs"
[ "${RSQ_TEST_QUICK:-0}" = 1 ] && exit 0

step "tests under AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build/sanitize -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" \
      -DRSQ_SANITIZE=ON -DRSQ_BUILD_EXAMPLES=OFF -DRSQ_BUILD_BENCHMARKS=OFF -DRSQ_NATIVE=OFF
cmake --build build/sanitize -j "$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build/sanitize --output-on-failure -j "$jobs" -LE package

step "fuzz targets (libFuzzer, bounded time)"
cmake -S . -B build/fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DRSQ_BUILD_FUZZERS=ON -DRSQ_BUILD_TESTS=OFF \
      -DRSQ_BUILD_EXAMPLES=OFF -DRSQ_BUILD_BENCHMARKS=OFF -DRSQ_FUZZ_SECONDS="${RSQ_FUZZ_SECONDS:-20}"
cmake --build build/fuzz -j "$jobs"
ctest --test-dir build/fuzz --output-on-failure -L fuzz

if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  step "CUDA backend: compile for sm_90 (the GPU tests run on the device machine: scripts/cuda-device.sh)"
  export PATH="$PATH:/usr/local/cuda/bin"
  # Only the CUDA targets: the CPU tests were built and run above.
  cmake -S . -B build/cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DRSQ_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DRSQ_BUILD_EXAMPLES=OFF
  cmake --build build/cuda -j "$jobs" --target rsq_cuda_objects rsq_self_contained_cuda_headers \
        $(cd tests/cuda && ls *_test.cpp | sed 's/^/rsq_test_cuda_/; s/\.cpp$//') \
        $(cd benchmarks/cuda && ls bench_*.cu bench_*.cpp | sed 's/\.[a-z]*$//')
fi
step "done"
echo "all tests passed"
