#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The lm16m table of docs/results.md: rsq-quantize on lm16m's Hugging Face folder, RTN/GPTQ/QuaRot/RSQ at 3 and 4
# bits, per row and groups of 128, seeds 0-2, calibration on prose_calib.txt (64 windows of 256 tokens at random
# starts, and for 3/4-bit g128 also with every window starting with BOS: --calib-bos), perplexity on the first
# 16,384 tokens of prose_valid.txt in windows of 256 and of 1024 tokens. Prints the two markdown tables.
#
# usage: scripts/results-lm16m.sh [BUILD_DIR] [SHARED_DIR]   (defaults: build/release, ../shared)
# About 20 minutes on 2 CPU cores; the raw rows go to results-lm16m.tsv in the current folder.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
Q=${1:-$root/build/release}/examples/rsq-quantize
S=${2:-$root/../shared}
M=$S/data/models/lm16m/hf C=$S/data/text/prose_calib.txt V=$S/data/text/prose_valid.txt
out=$PWD/results-lm16m.tsv work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() {  # method bits group seed eval_length [extra options]
  local m=$1 b=$2 g=$3 s=$4 L=$5; shift 5
  local calib=(--calib "$C" --nsamples 64 --seqlen 256 --seed "$s")
  [ "$m" = rtn ] && calib=()
  local line
  line=$("$Q" --model "$M" "${calib[@]}" --method "$m" --bits "$b" --group-size "$g" --eval "$V" --eval-seqlen "$L" \
         --eval-windows $((16384 / L)) --out "$work/q" --overwrite --quiet "$@" | grep 'perplexity on')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$m" "$b" "$g" "$s" "$L" "${*:-plain}" \
    "$(echo "$line" | sed 's/.*: \([0-9.]*\) before.*/\1/')" "$(echo "$line" | sed 's/.*, \([0-9.]*\) after.*/\1/')" >> "$out"
}
: > "$out"
for L in 256 1024; do
  for b in 3 4; do
    for g in -1 128; do
      run rtn "$b" "$g" 0 "$L"
      for m in gptq quarot rsq; do for s in 0 1 2; do run "$m" "$b" "$g" "$s" "$L"; done; done
    done
    for m in gptq quarot rsq; do for s in 0 1 2; do run "$m" "$b" 128 "$s" "$L" --calib-bos; done; done
  done
done
python3 - "$out" <<'PY'
import collections, statistics as st, sys
d, fp = collections.defaultdict(list), {}
for line in open(sys.argv[1]):
    m, b, g, s, L, extra, f, q = line.rstrip("\n").split("\t")
    d[(m, extra, L, b, g)].append(float(q)); fp[L] = float(f)
cell = lambda v: "-" if not v else f"{v[0]:.2f}" if len(v) == 1 else f"{st.mean(v):.2f} ± {st.stdev(v):.2f}"
for L in ("256", "1024"):
    print(f"\n**Evaluation windows of {L} tokens** (FP32: {fp[L]:.2f})\n")
    print("| method | calibration | 3-bit per row | 3-bit g128 | 4-bit per row | 4-bit g128 |\n|---|---|---|---|---|---|")
    for m, extra, name in (("rtn", "plain", "RTN"), ("gptq", "plain", "GPTQ"), ("quarot", "plain", "QuaRot"),
                           ("rsq", "plain", "RSQ"), ("gptq", "--calib-bos", "GPTQ"),
                           ("quarot", "--calib-bos", "QuaRot"), ("rsq", "--calib-bos", "RSQ")):
        cal = "-" if m == "rtn" else "windows start with BOS" if extra != "plain" else "random starts"
        print(f"| {name} | {cal} | " + " | ".join(cell(d[(m, extra, L, b, g)]) for b in "34" for g in ("-1", "128")) + " |")
PY
