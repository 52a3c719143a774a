#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds and runs rsq's CUDA backend on a GPU machine in one call: tests, compute-sanitizer (memcheck, racecheck),
# benchmarks (ours next to the PyTorch reference loop) and the CPU side-by-side; prints a compact summary table last
# and writes full logs under $OUT (default ./cuda-device-out).
#
# usage: scripts/cuda-device.sh [--prebuilt DIR] [--shared DIR] [--keep-going] [--quick] STEP...
#   STEP: build test sanitize bench bench-ours model learn-rotation hadamard nn cpu cpu-bench compare-lm16m hf-reference hf-check all  (all = build
#         test sanitize bench model hadamard cpu hf-reference hf-check; bench = bench_gptq_cuda and the PyTorch reference loop, bench-ours = ours only; model =
#         the whole Llama-3-8B-shaped model on the GPU (bench_model_cuda) next to the PyTorch RSQ layer loop on two
#         layers; learn-rotation = seconds per SpinQuant step for the same shapes (bench_learn_rotation_cuda); nn = the forward-pass pieces; cpu-bench = the CPU backend's benchmarks/ built with -march=native and
#         run on 2 pinned cores, a quiet stand-in for the 2-core CI machine; compare-lm16m = rsq-llama2c --compare
#         on lm16m (3 bits, g128) with --backend cuda, cuda --bf16, and cpu on 2 pinned cores; hf-reference = transformers' logits of
#         small Llama-3/Qwen2/Mistral folders and lm7m (scripts/hf-reference.py make, into $OUT/hf_reference) and the
#         Python `tokenizers` fixtures (into $OUT/tokenizer_fixtures); hf-check = rsq-quantize on lm7m's Hugging Face
#         folder with each backend ($HF_CHECK_BACKENDS, default "cuda cpu"), then transformers' perplexity of each
#         written folder beside rsq's)
# The tests: every test program (one body per algorithm over the backends) runs its CUDA cases (doctest -tc=*cuda*,
# then the CUDA-only suites -ts=*.cuda): the CPU cases ran in CI.
#   --prebuilt DIR  take the test and benchmark executables from DIR instead of building (a build of this tree made
#                   elsewhere with -DRSQ_WITH_CUDA=ON -DRSQ_NATIVE=OFF)
#   --shared DIR    the folder with golden/ (default: $RSQ_SHARED_DIR, ../shared, or .deps/shared)
# A folder .deps/usr, or an archive .deps/usr.tar.xz of one (headers, CMake packages and libraries of Eigen, xtensor,
# xtl, xsimd, doctest, nlohmann-json, PCRE2), is copied to /usr first when running as root on a machine without them. Steps stop at the first failure unless --keep-going.
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
    all) steps+=(build test sanitize bench model hadamard cpu hf-reference hf-check) ;;
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

if [ "$(id -u)" = 0 ]; then  # only what the machine lacks
  if [ -d "$root/.deps/usr" ]; then cp -rn "$root/.deps/usr/." /usr/ 2> /dev/null
  elif [ -f "$root/.deps/usr.tar.xz" ]; then tar xJf "$root/.deps/usr.tar.xz" -C / --skip-old-files 2> /dev/null; fi
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
      -DCMAKE_CUDA_ARCHITECTURES=90 -DRSQ_BUILD_BENCHMARKS=ON "${pkg_dirs[@]}" &&
    cmake --build "$build" -j "$(nproc)" --target rsq_cuda_objects rsq-llama2c rsq-quantize cuda-backend-tour \
      $(cd "$root/tests" && ls */*_test.cpp | grep -v '^package/' | sed 's#^\(.*\)/\(.*\)\.cpp$#rsq_test_\1_\2#') \
      $(cd "$root/benchmarks/cuda" && ls bench_*.cu bench_*.cpp 2>/dev/null | sed 's/\.[a-z]*$//') -- -k 0
  } > "$OUT/build.log" 2>&1 || fail build "$(grep -c 'FAILED:' "$OUT/build.log") targets failed (build.log)"
  bin=$build
  add build ok "$((SECONDS - t0)) s"
fi
find_exe() { local f; for f in "$bin/$1" "$bin/tests/$1" "$bin/benchmarks/$1" "$bin/examples/$1"; do [ -x "$f" ] && { echo "$f"; return; }; done; }

if has test; then
  for src in "$root"/tests/*/*_test.cpp; do
    rel=${src#"$root"/tests/}; area=${rel%%/*}; [ "$area" = package ] && continue
    name=rsq_test_${area}_$(basename "$src" .cpp)
    exe=$(find_exe "$name")
    [ -z "$exe" ] && { fail "test $name" "executable not found"; continue; }
    t0=$SECONDS
    # The backend-generic bodies instantiated for CUDA (their names end in <rsq::backend::cuda>), then the suites
    # that are about CUDA itself (named *.cuda).
    if timeout 400 "$exe" -tc='*cuda*' > "$OUT/tests_$name.log" 2>&1 &&
       timeout 200 "$exe" -ts='*.cuda' >> "$OUT/tests_$name.log" 2>&1; then
      add "test $name" ok "$(grep -h 'assertions:' "$OUT/tests_$name.log" | tr -s ' ' | cut -c1-80), $((SECONDS - t0)) s"
    else
      fail "test $name" "$(grep -h 'assertions:' "$OUT/tests_$name.log" | tr -s ' ' | cut -c1-80) (tests_$name.log)"
    fi
  done
  cat "$OUT"/tests_*.log > "$OUT/tests.log" 2>/dev/null; rm -f "$OUT"/tests_*.log
  exe=$(find_exe cuda-backend-tour)
  if [ -n "$exe" ] && timeout 120 "$exe" >> "$OUT/tests.log" 2>&1; then add cuda-backend-tour ok "$(tail -1 "$OUT/tests.log" | cut -c1-100)"
  else fail cuda-backend-tour "tests.log"; fi
  exe=$(find_exe rsq-llama2c)
  if [ -n "$exe" ] && [ -n "$shared" ] && timeout 300 "$exe" --backend cuda --compare --bits 3 > "$OUT/llama2c_cuda.log" 2>&1; then
    add "rsq-llama2c --backend cuda --compare" ok "$(tail -1 "$OUT/llama2c_cuda.log" | tr -s ' ' | cut -c1-80)"
  else
    fail "rsq-llama2c --backend cuda" "llama2c_cuda.log"
  fi
fi

if has sanitize; then
  : > "$OUT/sanitize.log"
  # Sanitized runs are slow: the CUDA cases of the programs whose kernels they cover, small shapes.
  # (doctest patterns: '?' stands for a space, the arguments are split on spaces)
  filters=("rsq_test_gptq_invariants_test|-tc=*cuda*"
           "rsq_test_hessian_accumulator_test|-tc=*cuda*"
           "rsq_test_pack_gptq_format_test|-tc=*cuda*"
           "rsq_test_rotation_hadamard_test|-tc=*sign*cuda*,*strided*cuda*,*block*cuda*,*heads*cuda*"
           "rsq_test_importance_attncon_test|-tc=*cuda*"
           "rsq_test_nn_attention_test|-tc=*cuda*"
           "rsq_test_nn_loss_test|-tc=*cuda*"
           "rsq_test_nn_reverse_test|-tc=*cuda*"
           "rsq_test_model_learn_rotation_test|-tc=*cuda*"
           "rsq_test_nn_linear_test|-tc=*cuda*"
           "rsq_test_quant_rtn_test|-tc=*cuda*")
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

if has model; then
  exe=$(find_exe bench_model_cuda)
  t0=$SECONDS
  ma=(); [ $quick = 1 ] && ma=(--quick)
  if [ -n "$exe" ] && timeout 590 "$exe" "${ma[@]}" --out "$OUT/bench_model_cuda.md" > "$OUT/bench_model_cuda.log" 2>&1; then
    add "bench_model_cuda" ok "$((SECONDS - t0)) s (bench_model_cuda.md)"
  else
    tail -5 "$OUT/bench_model_cuda.log" 2>/dev/null
    fail bench_model_cuda "bench_model_cuda.log"
  fi
  t0=$SECONDS
  if PYTHONUNBUFFERED=1 timeout 500 python3 "$root/benchmarks/cuda/bench_rsq_reference.py" "${ma[@]}" --layers 2 \
      --out "$OUT/bench_rsq_reference.md" > "$OUT/bench_rsq_reference.log" 2>&1; then
    add "bench_rsq_reference.py (PyTorch, 2 layers)" ok "$((SECONDS - t0)) s (bench_rsq_reference.md)"
  else
    tail -5 "$OUT/bench_rsq_reference.log"
    fail "bench_rsq_reference.py" "bench_rsq_reference.log"
  fi
fi

if has learn-rotation; then
  exe=$(find_exe bench_learn_rotation_cuda)
  t0=$SECONDS
  # The 32-layer model needs about 118 GB in float: on a smaller GPU, 8 and 4 layers and the linear extrapolation.
  la=(--layers 32); [ "$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)" -lt 120000 ] && la=(--layers 8)
  [ $quick = 1 ] && la=(--quick)
  if [ -n "$exe" ] && timeout 590 "$exe" "${la[@]}" --reps 2 --out "$OUT/bench_learn_rotation_cuda.md" \
       > "$OUT/bench_learn_rotation_cuda.log" 2>&1; then
    add "bench_learn_rotation_cuda" ok "$((SECONDS - t0)) s (bench_learn_rotation_cuda.md)"
  else
    tail -5 "$OUT/bench_learn_rotation_cuda.log" 2>/dev/null
    fail bench_learn_rotation_cuda "bench_learn_rotation_cuda.log"
  fi
fi

if has nn; then
  exe=$(find_exe bench_nn_cuda)
  t0=$SECONDS
  if [ -n "$exe" ] && timeout 300 "$exe" --reps 3 > "$OUT/bench_nn_cuda.md" 2>&1; then
    add "bench_nn_cuda" ok "$((SECONDS - t0)) s (bench_nn_cuda.md)"
  else
    fail bench_nn_cuda "bench_nn_cuda.md"
  fi
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

if has compare-lm16m; then
  # Issue 18's benchmark: the whole --compare on lm16m (3 bits, g128, 128 x 256 calibration tokens, 100 evaluation
  # documents of prose_valid.txt) on the GPU (fp32 and --bf16) and on 2 pinned CPU cores, each with its table of
  # seconds per phase.
  exe=$(find_exe rsq-llama2c)
  m=$shared/data/models/lm16m/llama2c
  args=(--model "$m/model.bin" --tokenizer "$m/tokenizer.bin" --text "$shared/data/text/prose_valid.txt"
        --calib-stories 0:300 --eval-stories 300:400 --compare --bits 3 --groupsize 128 --seqlen 256 --nsamples 128
        --quiet)
  for run in "cuda|--backend cuda" "cuda-bf16|--backend cuda --bf16" "cpu-2-threads|--backend cpu"; do
    name=${run%%|*} t0=$SECONDS
    pin=(); [ "$name" = cpu-2-threads ] && pin=(taskset -c 0,1)
    # shellcheck disable=SC2086
    if [ -n "$exe" ] && [ -f "$m/model.bin" ] && OMP_NUM_THREADS=2 timeout 900 "${pin[@]}" "$exe" "${args[@]}" ${run#*|} \
         > "$OUT/compare_lm16m_$name.txt" 2>&1; then
      add "rsq-llama2c --compare lm16m ($name)" ok "$((SECONDS - t0)) s (compare_lm16m_$name.txt)"
    else
      fail "rsq-llama2c --compare lm16m ($name)" "compare_lm16m_$name.txt"
    fi
  done
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

if has hf-reference; then
  t0=$SECONDS
  if [ -n "$shared" ] && timeout 300 python3 "$root/scripts/hf-reference.py" make --out "$OUT/hf_reference" \
       --lm7m "$shared/data/models/lm7m/hf" > "$OUT/hf_reference.log" 2>&1; then
    add hf-reference ok "$((SECONDS - t0)) s ($(ls "$OUT/hf_reference" | tr '\n' ' '))"
  else
    fail hf-reference "hf_reference.log"
  fi
  t0=$SECONDS
  if timeout 120 python3 "$root/scripts/make-tokenizer-fixtures.py" >> "$OUT/hf_reference.log" 2>&1; then
    rm -rf "$OUT/tokenizer_fixtures"; cp -r "$root/tests/model/fixtures/generated" "$OUT/tokenizer_fixtures"
    add "tokenizer fixtures (Python tokenizers)" ok "$((SECONDS - t0)) s"
  else
    fail "tokenizer fixtures (Python tokenizers)" "hf_reference.log"
  fi
fi

if has hf-check; then
  exe=$(find_exe rsq-quantize)
  lm7m=$shared/data/models/lm7m/hf
  log=$OUT/hf_check.log; : > "$log"
  if [ -z "$exe" ] || [ ! -d "$lm7m" ]; then fail hf-check "rsq-quantize or $lm7m missing"
  elif ! python3 "$root/scripts/hf-reference.py" windows --model "$lm7m" --text "$shared/data/text/mix_valid.txt" \
         --windows 16 --length 256 --out "$OUT/hf_check_eval.npy" >> "$log" 2>&1; then fail hf-check "hf_check.log"
  else
    echo "=== transformers, the original lm7m" >> "$log"
    python3 "$root/scripts/hf-reference.py" perplexity --model "$lm7m" --tokens "$OUT/hf_check_eval.npy" >> "$log" 2>&1
    for be in ${HF_CHECK_BACKENDS:-cuda cpu}; do
      for m in gptq rsq; do
        t0=$SECONDS
        dir=$(mktemp -d)/lm7m-$m-$be
        echo "=== rsq-quantize --backend $be --method $m" >> "$log"
        if timeout 300 "$exe" --model "$lm7m" --calib "$shared/data/text/mix_valid.txt" --method $m --bits 4 \
             --group-size 128 --nsamples 32 --seqlen 256 --eval "$OUT/hf_check_eval.npy" --backend $be --quiet \
             --out "$dir" >> "$log" 2>&1 &&
           python3 "$root/scripts/hf-reference.py" perplexity --model "$dir" --tokens "$OUT/hf_check_eval.npy" >> "$log" 2>&1
        then
          rsq_ppl=$(grep 'perplexity on' "$log" | tail -1 | sed 's/.*, \([0-9.]*\) after.*/\1/')
          add "hf-check $m $be" ok "perplexity: rsq $rsq_ppl, transformers $(grep '^perplexity' "$log" | tail -1 | cut -d' ' -f2), $((SECONDS - t0)) s"
        else
          fail "hf-check $m $be" "hf_check.log"
        fi
        rm -rf "$dir"
      done
    done
    # A GPTQ checkpoint: transformers loads it only with a GPTQ kernel package (gptqmodel / optimum); logged either way.
    dir=$(mktemp -d)/lm7m-gptq
    pkgs=$(python3 -c 'import importlib.util as u; print(" ".join(m + ("=yes" if u.find_spec(m) else "=no") for m in ("gptqmodel", "optimum", "vllm")))' 2>&1)
    echo "=== rsq-quantize --format gptq (Python packages: $pkgs)" >> "$log"
    if timeout 300 "$exe" --model "$lm7m" --calib "$shared/data/text/mix_valid.txt" --method rsq --bits 4 \
         --group-size 128 --nsamples 32 --seqlen 256 --rotation fused --eval "$OUT/hf_check_eval.npy" --backend cuda \
         --quiet --format gptq --out "$dir" >> "$log" 2>&1; then
      python3 "$root/scripts/hf-reference.py" perplexity --model "$dir" --tokens "$OUT/hf_check_eval.npy" >> "$log" 2>&1
      add "hf-check gptq checkpoint" ok "see hf_check.log (transformers: $(tail -1 "$log" | cut -c1-60))"
    else
      fail "hf-check gptq checkpoint" "hf_check.log"
    fi
  fi
fi
