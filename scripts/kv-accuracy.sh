#!/usr/bin/env bash
# KV cache accuracy table (README "KV cache"): perplexity, mean KL and top-1 agreement of
# each KV scheme against the same model with an f32 cache.
#   SmolLM2-135M (f32 weights): wiki.test.raw, chunks protocol, ctx 512, 16 chunks
#   stories260K: TinyStories valid first 100, documents protocol, ctx 128 (+ bits/byte)
# Usage: bash scripts/kv-accuracy.sh [SMOLLM2_F32_FOLDER]   (default .build/demo/smollm2, made by scripts/demo.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${LMKIT_SHARED:-$(cd .. && pwd)/shared}"
SMOL="${1:-.build/demo/smollm2}"
LMEVAL=.build/release/lmeval
OUT=.build/kv-accuracy; mkdir -p "$OUT"
# One row per entry: the --kv-cache value, then optional extra flags.
SCHEMES=("k=f16,v=f16" "k=bf16,v=bf16" "k=int8,v=int8" "k=int8,v=int4" "k=int4,v=int8" "k=int4,v=int4"
         "k=int4,v=int4 --kv-rotate" "k=int4c,v=int4" "k=int4c,v=int4 --kv-rotate" "k=int4c,v=int8" "k=int8c,v=int8"
         "k=int2c,v=int2" "k=int2,v=int2")
# KV_ONLY="k=int4c,v=int4;k=int2,v=int2" runs just those rows.
if [ -n "${KV_ONLY:-}" ]; then IFS=';' read -r -a SCHEMES <<< "$KV_ONLY"; fi
run() {  # name model text protocol ctx extra...
  local name=$1 model=$2 text=$3 proto=$4 ctx=$5; shift 5
  for entry in "${SCHEMES[@]}"; do
    read -r s flags <<< "$entry"
    local j="$OUT/$name-${s//[=,]/_}${flags:+-rot}.json"
    # shellcheck disable=SC2086
    "$LMEVAL" perplexity -m "$model" --baseline "$model" --text "$text" --protocol "$proto" --ctx "$ctx" "$@" --kv-cache "$s" $flags --json "$j" > /dev/null 2>&1
    python3 - "$j" "$name" "$s${flags:+ (rotated)}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
bpb = f"{r['bits_per_byte']:.4f}" if 'bits_per_byte' in r else "–"
print(f"| {sys.argv[2]} | {sys.argv[3]} | {r['baseline_perplexity']:.4f} | {r['perplexity']:.4f} | {100*(r['ppl_ratio']-1):+.2f} % | {r['mean_kl']:.5f} | {100*r['top1_agreement']:.2f} % | {bpb} |")
PY
  done
}
echo "| model | KV cache | PPL f32 cache | PPL | Δ PPL | mean KL | top-1 | bits/byte |"
echo "|---|---|---|---|---|---|---|---|"
run stories260k "$SHARED/models/stories260k" "$SHARED/text/tinystories_v2_valid_first100.txt" documents 128
run smollm2 "$SMOL" "$SHARED/text/wiki.test.raw" chunks 512 --chunks 16
