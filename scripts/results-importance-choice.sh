#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The importance-choice table of docs/results.md (issue 18, item 5a): uniform token weights (QuaRot), AttnCon (RSQ)
# and RSQ with --importance-choice choose / blend (per linear, uniform or AttnCon or a blend of the two, picked by the
# output error on the last quarter of the calibration windows, held out), 3 bits, seeds 0-2, on the three shared
# models in the settings of the earlier rows of docs/results.md:
#   stories260K  rsq-llama2c, per row, stories 0:500 / 500:1000 of tinystories_val.txt, 128 windows of 256
#   lm7m         rsq-llama2c on the llama2.c form, per row, documents 0-79 / 80-119 of mix_valid.txt
#   lm16m        rsq-quantize on the Hugging Face folder, groups of 128, 64 windows of 256 tokens of prose_calib.txt
#                (random starts, and every window starting with BOS), perplexity on 16 windows of 1024 tokens of
#                prose_valid.txt
# Prints the markdown table (mean ± sample standard deviation) and the alphas the linears kept.
#
# usage: scripts/results-importance-choice.sh [BUILD_DIR] [SHARED_DIR]   (defaults: build/release, ../shared)
# JOBS=N runs N quantizations at a time (each with OMP_NUM_THREADS=1; the results are the same bits for any
# thread count). About 45 minutes with JOBS=2 on the 2-core development machine (busy with other work), most of it
# lm16m's blend runs. The raw rows go to results-importance-choice.tsv in the current folder.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
B=${1:-$root/build/release}
S=${2:-$root/../shared}
export B S
out=$PWD/results-importance-choice.tsv
work=$(mktemp -d)
export work out
trap 'rm -rf "$work"' EXIT

# One quantization: model setting method seed choice -> a line "model setting method seed choice perplexity summary".
one() {
  local model=$1 setting=$2 m=$3 s=$4 c=$5 text
  local choice=()
  [ "$c" != off ] && choice=(--importance-choice "$c")
  case $model in
    stories260K)
      text=$(OMP_NUM_THREADS=1 "$B/examples/rsq-llama2c" --model "$S/data/models/stories260K.bin" \
             --tokenizer "$S/data/models/tok512.bin" --text "$S/data/text/tinystories_val.txt" --method "$m" --bits 3 \
             --groupsize -1 --seed "$s" --quiet "${choice[@]}") ;;
    lm7m)
      text=$(OMP_NUM_THREADS=1 "$B/examples/rsq-llama2c" --model "$S/data/models/lm7m/llama2c/model.bin" \
             --tokenizer "$S/data/models/lm7m/llama2c/tokenizer.bin" --text "$S/data/text/mix_valid.txt" \
             --calib-stories 0:80 --eval-stories 80:120 --method "$m" --bits 3 --groupsize -1 --seed "$s" --quiet \
             "${choice[@]}") ;;
    lm16m)
      local bos=()
      [ "$setting" = bos ] && bos=(--calib-bos)
      text=$(OMP_NUM_THREADS=1 "$B/examples/rsq-quantize" --model "$S/data/models/lm16m/hf" \
             --calib "$S/data/text/prose_calib.txt" --nsamples 64 --seqlen 256 --seed "$s" --method "$m" --bits 3 \
             --group-size 128 --eval "$S/data/text/prose_valid.txt" --eval-seqlen 1024 --eval-windows 16 \
             --out "$work/q-$model-$setting-$m-$s-$c" --overwrite --quiet "${bos[@]}" "${choice[@]}")
      rm -rf "$work/q-$model-$setting-$m-$s-$c" ;;
  esac
  local ppl summary
  if [ "$model" = lm16m ]; then
    ppl=$(echo "$text" | grep 'perplexity on' | sed 's/.*, \([0-9.]*\) after.*/\1/')
  else
    ppl=$(echo "$text" | grep 'perplexity' | sed 's/.*perplexity \([0-9.]*\).*/\1/')
  fi
  summary=$(echo "$text" | grep '^importance choice' || true)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$model" "$setting" "$m" "$s" "$c" "$ppl" "$summary" >> "$out"
}
export -f one

: > "$out"
{
  for s in 0 1 2; do
    for ms in "stories260K row" "lm7m row" "lm16m random" "lm16m bos"; do
      echo "$ms quarot $s off"
      for c in off choose blend; do echo "$ms rsq $s $c"; done
    done
  done
} | xargs -P "${JOBS:-1}" -L 1 bash -c 'one "$@"' _

python3 - "$out" <<'PY'
import collections, re, statistics as st, sys
d, alphas = collections.defaultdict(list), collections.defaultdict(collections.Counter)
for line in open(sys.argv[1]):
    model, setting, m, s, c, ppl, summary = line.rstrip("\n").split("\t")
    d[(model, setting, m, c)].append(float(ppl))
    for a, k in re.findall(r" ([0-9.]+) x([0-9]+)", summary):
        alphas[(model, setting, c)][float(a)] += int(k)
cell = lambda v: "-" if not v else f"{st.mean(v):.3f} ± {st.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"
rows = (("stories260K", "row", "stories260K, per row (`rsq-llama2c`)"),
        ("lm7m", "row", "lm7m (llama2.c form, mix_valid.txt documents 0–79 / 80–119), per row"),
        ("lm16m", "random", "lm16m, g128, random starts"),
        ("lm16m", "bos", "lm16m, g128, windows start with BOS"))
print("| model (setting) | uniform (QuaRot) | AttnCon (RSQ) | choose | blend |\n|---|---|---|---|---|")
for model, setting, name in rows:
    print(f"| {name} | " + " | ".join(cell(d[(model, setting, m, c)]) for m, c in
                                      (("quarot", "off"), ("rsq", "off"), ("rsq", "choose"), ("rsq", "blend"))) + " |")
print("\nalphas kept (all linears of the 3 seeds):")
for model, setting, name in rows:
    for c in ("choose", "blend"):
        a = alphas[(model, setting, c)]
        n = sum(a.values())
        print(f"  {model} {setting} {c}: " + ", ".join(f"{k:g}: {v / n:.0%}" for k, v in sorted(a.items())) +
              f" (mean {sum(k * v for k, v in a.items()) / max(n, 1):.2f})")
PY
