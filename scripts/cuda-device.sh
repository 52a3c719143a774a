#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds and runs rsq's CUDA backend on a GPU machine in one call: tests, compute-sanitizer (memcheck, racecheck),
# benchmarks (ours next to the PyTorch reference loop) and the CPU side-by-side; prints a compact summary table last
# and writes full logs under $OUT (default ./cuda-device-out).
#
# usage: scripts/cuda-device.sh [--prebuilt DIR] [--shared DIR] [--keep-going] [--quick] STEP...
#   STEP: build test sanitize bench bench-ours hadamard cpu cpu-bench all  (all = build test sanitize bench hadamard
#         cpu; bench = ours and the PyTorch reference loop, bench-ours = ours only; cpu-bench = the CPU backend's
#         benchmarks/ built with -march=native and run on 2 pinned cores, a quiet stand-in for the 2-core CI machine)
#   --prebuilt DIR  take the test and benchmark executables from DIR instead of building (a build of this tree made
#                   elsewhere with -DRSQ_WITH_CUDA=ON -DRSQ_NATIVE=OFF)
#   --shared DIR    the folder with golden/ (default: $RSQ_SHARED_DIR, ../shared, or .deps/shared)
# A folder .deps/usr (headers and CMake packages of Eigen, xtensor, xtl, xsimd, doctest) is copied to /usr first when
# running as root on a machine without them. Steps stop at the first failure unless --keep-going.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$root/cuda-device-out}
mkdir -p "$OUT"
prebuilt="" shared="${RSQ_SHARED_DIR:-}" keep=0 quick=0
steps=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prebuilt) prebuilt=$2; shift ;;
    --shared) shared=$2; shift ;;
    --keep-going) keep=1 ;;
    --quick) quick=1 ;;
    all) steps+=(build test sanitize bench hadamard cpu) ;;
    *) steps+=("$1") ;;
  esac
  shift
done
[ ${#steps[@]} -eq 0 ] && steps=(build test)
has() { local s; for s in "${steps[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

summary=()
add() { summary+=("| $1 | $2 | $3 |"); }
finish() {
  {
    echo
    echo "## cuda-device.sh summary ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
    echo
    echo "| step | result | detail |"
    echo "|---|---|---|"
    printf '%s\n' "${summary[@]}"
  } | tee -a "$OUT/summary.md"
}
fail() { add "$1" "FAILED" "$2"; if [ $keep = 0 ]; then finish; exit 1; fi; }
trap 'finish' EXIT
: > "$OUT/summary.md"

if [ -d "$root/.deps/usr" ] && [ "$(id -u)" = 0 ]; then
  cp -rn "$root/.deps/usr/." /usr/ 2> /dev/null  # only what the machine lacks
fi
if [ -z "$shared" ]; then
  for d in "$root/../shared" "$root/.deps/shared"; do [ -d "$d/golden" ] && shared=$d && break; done
fi
[ -n "$shared" ] && export RSQ_SHARED_DIR=$shared
export PATH=/usr/local/cuda/bin:$PATH

# Package configs under lib/<arch> are only searched when CMake knows the library architecture, which a compiler
# outside /usr (as on the device image) does not tell it: name them.
pkg_dirs=()
for d in /usr/lib/x86_64-linux-gnu/cmake/*/; do
  [ -d "$d" ] && pkg_dirs+=("-D$(basename "$d")_DIR=$d")
done

bin=$prebuilt
if [ -z "$prebuilt" ] && has build; then
  build=$root/build-cuda-device
  t0=$SECONDS
  {
    cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRSQ_WITH_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DRSQ_BUILD_EXAMPLES=OFF "${pkg_dirs[@]}" &&
    cmake --build "$build" -j "$(nproc)" --target rsq_cuda_objects \
      $(cd "$root/tests/cuda" && ls *_test.cpp | sed 's/^/rsq_test_cuda_/; s/\.cpp$//') \
      $(cd "$root/benchmarks/cuda" && ls bench_*.cu bench_*.cpp 2>/dev/null | sed 's/\.[a-z]*$//')
  } > "$OUT/build.log" 2>&1 || fail build "see build.log"
  bin=$build
  add build ok "$((SECONDS - t0)) s"
fi
find_exe() { local f; for f in "$bin/$1" "$bin/tests/$1" "$bin/benchmarks/$1"; do [ -x "$f" ] && { echo "$f"; return; }; done; }

if has test; then
  for src in "$root"/tests/cuda/*_test.cpp; do
    name=rsq_test_cuda_$(basename "$src" .cpp)
    exe=$(find_exe "$name")
    [ -z "$exe" ] && { fail "test $name" "executable not found"; continue; }
    t0=$SECONDS
    if timeout 300 "$exe" > "$OUT/tests_$name.log" 2>&1; then
      add "test $name" ok "$(grep -h 'assertions:' "$OUT/tests_$name.log" | tr -s ' ' | cut -c1-80), $((SECONDS - t0)) s"
    else
      fail "test $name" "$(grep -h 'assertions:' "$OUT/tests_$name.log" | tr -s ' ' | cut -c1-80) (tests_$name.log)"
    fi
  done
  cat "$OUT"/tests_*.log > "$OUT/tests.log" 2>/dev/null; rm -f "$OUT"/tests_*.log
fi

if has sanitize; then
  : > "$OUT/sanitize.log"
  # Sanitized runs are slow: the device-only test cases plus small solver cases cover every kernel.
  # (doctest patterns: '?' stands for a space, the arguments are split on spaces)
  filters=("rsq_test_cuda_gptq_test|-ts=cuda.gptq.device,cuda.gptq -tc=*diagonal*,*dead*,*indefinite*,*device*"
           "rsq_test_cuda_hessian_test|-tc=*device*,*TF32*,*weighted*"
           "rsq_test_cuda_pack_test|-tc=*rejected*")
  for extra in "rsq_test_cuda_hadamard_test|-tc=*signs*,*device?rows*,*launch?configuration*" "rsq_test_cuda_attncon_test|-ts=cuda.attncon.device"; do
    [ -n "$(find_exe "${extra%%|*}")" ] && filters+=("$extra")
  done
  for tool in memcheck racecheck; do
    for f in "${filters[@]}"; do
      name=${f%%|*} args=${f#*|}
      exe=$(find_exe "$name")
      [ -z "$exe" ] && continue
      t0=$SECONDS
      echo "=== $tool $name $args" >> "$OUT/sanitize.log"
      # shellcheck disable=SC2086
      if timeout 400 compute-sanitizer --tool "$tool" --error-exitcode 99 $exe $args >> "$OUT/sanitize.log" 2>&1; then
        add "$tool $name" ok "$(tail -5 "$OUT/sanitize.log" | grep -o 'ERROR SUMMARY: [0-9]* errors\|RACECHECK SUMMARY: [0-9]* hazards[^,]*' | head -1), $((SECONDS - t0)) s"
      else
        fail "$tool $name" "$(grep -o 'ERROR SUMMARY: [0-9]* errors\|RACECHECK SUMMARY.*' "$OUT/sanitize.log" | tail -1) (sanitize.log)"
      fi
    done
  done
fi

if has bench || has bench-ours; then
  exe=$(find_exe bench_gptq_cuda)
  t0=$SECONDS
  qa=(); [ $quick = 1 ] && qa=(--quick)
  if [ -n "$exe" ] && timeout 400 "$exe" "${qa[@]}" --out "$OUT/bench_gptq_cuda.md" > "$OUT/bench_gptq_cuda.log" 2>&1; then
    add "bench_gptq_cuda" ok "$((SECONDS - t0)) s (bench_gptq_cuda.md)"
    rm -f "$OUT/bench_gptq_cuda.log"
  else
    tail -5 "$OUT/bench_gptq_cuda.log" 2>/dev/null
    fail bench_gptq_cuda "bench_gptq_cuda.log"
  fi
fi
if has bench; then
  t0=$SECONDS
  if PYTHONUNBUFFERED=1 timeout 400 python3 "$root/benchmarks/cuda/bench_gptq_reference.py" "${qa[@]}" \
      --out "$OUT/bench_reference.md" > "$OUT/bench_reference.log" 2>&1; then
    add "bench_gptq_reference.py (PyTorch)" ok "$((SECONDS - t0)) s (bench_reference.md)"
    rm -f "$OUT/bench_reference.log"
  else
    tail -5 "$OUT/bench_reference.log"
    fail "bench_gptq_reference.py" "bench_reference.log"
  fi
fi

if has hadamard; then
  exe=$(find_exe bench_hadamard_cuda)
  t0=$SECONDS
  if [ -n "$exe" ] && timeout 200 "$exe" --out "$OUT/bench_hadamard_cuda.md" > /dev/null 2>&1; then
    add "bench_hadamard_cuda" ok "$((SECONDS - t0)) s (bench_hadamard_cuda.md)"
  else
    fail bench_hadamard_cuda "not found or failed"
  fi
fi

if has cpu; then
  exe=$(find_exe bench_gptq_cpu)
  t0=$SECONDS
  if [ -n "$exe" ] && OMP_NUM_THREADS=2 timeout 300 taskset -c 0,1 "$exe" --out "$OUT/bench_cpu.md" > /dev/null 2>&1 &&
     PYTHONUNBUFFERED=1 timeout 300 taskset -c 0,1 python3 "$root/benchmarks/cuda/bench_gptq_reference.py" \
       --device cpu --threads 2 >> "$OUT/bench_cpu.md" 2>&1; then
    add "CPU side-by-side (2 threads)" ok "$((SECONDS - t0)) s (bench_cpu.md)"
  else
    fail "CPU side-by-side" "bench_cpu.md"
  fi
fi

if has cpu-bench; then
  t0=$SECONDS
  cpu_build=$root/build-cpu-bench
  {
    cmake -S "$root" -B "$cpu_build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRSQ_BUILD_TESTS=OFF \
      -DRSQ_BUILD_EXAMPLES=OFF -DRSQ_NATIVE=ON "${pkg_dirs[@]}" &&
    cmake --build "$cpu_build" -j "$(nproc)"
  } > "$OUT/cpu_bench_build.log" 2>&1 || fail cpu-bench "build failed (cpu_bench_build.log)"
  : > "$OUT/bench_cpu_backend.md"
  for b in bench_gptq bench_linalg bench_hadamard bench_attncon bench_pack bench_forward bench_pipeline; do
    [ -x "$cpu_build/benchmarks/$b" ] || continue
    echo "## $b (2 threads, cores 0-1)" >> "$OUT/bench_cpu_backend.md"
    OMP_NUM_THREADS=2 timeout 400 taskset -c 0,1 "$cpu_build/benchmarks/$b" >> "$OUT/bench_cpu_backend.md" 2>&1 ||
      fail "cpu-bench $b" "bench_cpu_backend.md"
  done
  add cpu-bench ok "$((SECONDS - t0)) s (bench_cpu_backend.md)"
fi
