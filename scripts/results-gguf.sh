#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The GGUF table of docs/results.md: lm7m (llama2.c form) written as GGUF files that llama.cpp runs, FP32, llama.cpp's
# own round to nearest, and GPTQ / QuaRot / RSQ solved on the Q4_0, Q4_1 and Q8_0 blocks (groups of 32, rotations
# fused: llama.cpp applies no online Hadamard), seeds 0-2; calibration on documents 0-79 of mix_valid.txt (128 windows
# of 256 tokens), perplexity of the written file on documents 80-119 (windows of 256). Prints the markdown table.
#
# usage: scripts/results-gguf.sh [BUILD_DIR] [SHARED_DIR]   (defaults: build/release, ../shared)
# About 15 minutes on 2 CPU cores; the raw rows go to results-gguf.tsv in the current folder.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
T=${1:-$root/build/release}/examples/rsq-llama2c
S=${2:-$root/../shared}
out=$PWD/results-gguf.tsv work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() {  # method type seed [extra options]
  local m=$1 t=$2 s=$3; shift 3
  local line
  line=$("$T" --model "$S/data/models/lm7m/llama2c/model.bin" --tokenizer "$S/data/models/lm7m/llama2c/tokenizer.bin" \
         --text "$S/data/text/mix_valid.txt" --calib-stories 0:80 --eval-stories 80:120 --method "$m" --seed "$s" \
         --format gguf --gguf-type "$t" --out "$work/m.gguf" --overwrite --quiet "$@" 2>/dev/null | grep 'perplexity')
  printf '%s\t%s\t%s\t%s\n' "$m" "$t" "$s" "$(echo "$line" | sed 's/.*perplexity \([0-9.]*\).*/\1/')" >> "$out"
}
: > "$out"
run rtn f32 0
for t in q4_0 q4_1 q8_0; do
  run rtn "$t" 0
  for s in 0 1 2; do
    run gptq "$t" "$s"
    run quarot "$t" "$s" --rotation fused
    run rsq "$t" "$s" --rotation fused
  done
done
python3 - "$out" <<'PY'
import collections, statistics as st, sys
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    m, t, s, p = line.rstrip("\n").split("\t")
    d[(m, t)].append(float(p))
cell = lambda v: "-" if not v else f"{v[0]:.2f}" if len(v) == 1 else f"{st.mean(v):.2f} ± {st.stdev(v):.2f}"
print(f"FP32 (F32 GGUF): {cell(d[('rtn', 'f32')])}\n")
print("| method | Q4_0 | Q4_1 | Q8_0 |\n|---|---|---|---|")
for m, name in (("rtn", "llama.cpp round to nearest"), ("gptq", "GPTQ"), ("quarot", "QuaRot (fused)"),
                ("rsq", "RSQ (fused)")):
    print(f"| {name} | " + " | ".join(cell(d[(m, t)]) for t in ("q4_0", "q4_1", "q8_0")) + " |")
PY
