#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The learned-rotation table of docs/results.md (issue 17): for each model, bits, group size and seed, rsq-llama2c
# --compare (fp32, RTN, GPTQ, QuaRot, RSQ), then --method spinquant (learned R1/R2 + GPTQ; the rotation saved) and
# --method rsq --rotation learned on the same rotation (SpinQuant+RSQ), with the loss curve of the learning.
#
#   scripts/results-spinquant.sh [build dir (default build/release)] [shared dir (default ../shared)] [models...]
#
# Models: stories260K (100 steps of 8 windows, SpinQuant's defaults), lm7m (50 steps of 4 windows: the CPU time of
# the table). Writes results-spinquant.tsv (model bits group seed method perplexity) and results-spinquant-curves.tsv
# (model bits group seed, then the loss of every step) in the current folder. Set OMP_NUM_THREADS as you like: the
# numbers are the same bits for any thread count. BITS, GROUP_SIZES and SEEDS (default "3 4", "-1 32", "0 1 2") pick the
# cells; LEARNED_ONLY=1 runs only the two learned-rotation rows (the --compare rows do not depend on them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
T=${1:-$root/build/release}/examples/rsq-llama2c
S=${2:-$root/../shared}
shift $(( $# < 2 ? $# : 2 ))
models=${*:-stories260K lm7m}
out=$PWD/results-spinquant.tsv curves=$PWD/results-spinquant-curves.tsv work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ppl() { sed -n 's/.*perplexity \([0-9.]*\).*/\1/p' | head -1; }
for model in $models; do
  case $model in
    stories260K) args=(--model "$S/data/models/stories260K.bin" --tokenizer "$S/data/models/tok512.bin"
                       --text "$S/data/text/tinystories_val.txt")
                 spin=(--spin-steps 100 --spin-sequences 8) ;;
    lm7m) args=(--model "$S/data/models/lm7m/llama2c/model.bin" --tokenizer "$S/data/models/lm7m/llama2c/tokenizer.bin"
                --text "$S/data/text/mix_valid.txt" --calib-stories 0:80 --eval-stories 80:120)
          spin=(--spin-steps 50 --spin-sequences 4) ;;
    *) echo "unknown model $model" >&2; exit 2 ;;
  esac
  for bits in ${BITS:-3 4}; do
    for group in ${GROUP_SIZES:--1 32}; do
      for seed in ${SEEDS:-0 1 2}; do
        cell=(--bits "$bits" --groupsize "$group" --seed "$seed")
        if [ -z "${LEARNED_ONLY:-}" ]; then
          table=$("$T" "${args[@]}" "${cell[@]}" --compare --quiet 2>/dev/null)
          for m in fp32 rtn gptq quarot rsq; do
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$model" "$bits" "$group" "$seed" "$m" \
              "$(echo "$table" | awk -v m="$m" '$1 == m { print $3 }')" >> "$out"
          done
        fi
        line=$("$T" "${args[@]}" "${cell[@]}" "${spin[@]}" --method spinquant --save-rotation "$work/r" --overwrite \
               --quiet 2>/dev/null)
        printf '%s\t%s\t%s\t%s\tspinquant\t%s\n' "$model" "$bits" "$group" "$seed" "$(echo "$line" | ppl)" >> "$out"
        printf '%s\t%s\t%s\t%s\t%s\n' "$model" "$bits" "$group" "$seed" \
          "$(echo "$line" | sed -n 's/^rotation loss curve ([^)]*)://p' | tr ' ' '\t' | sed 's/^\t//')" >> "$curves"
        line=$("$T" "${args[@]}" "${cell[@]}" --method rsq --rotation learned --load-rotation "$work/r" --quiet 2>/dev/null)
        printf '%s\t%s\t%s\t%s\tspinquant+rsq\t%s\n' "$model" "$bits" "$group" "$seed" "$(echo "$line" | ppl)" >> "$out"
      done
    done
  done
done
