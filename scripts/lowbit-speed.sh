#!/usr/bin/env bash
# Decode and prefill speed of int3-g32 and int2-g32 against int4-g32 (README "Speed"):
# SmolLM2 quantized with round to nearest, `lmeval bench` defaults (pp512, tg128, medians
# of 3); the schemes alternate within each round so they share the host's load.
# Prints one line per run. Usage: bash scripts/lowbit-speed.sh [ROUNDS] [--kernels K]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.build/release
DATA="${LMKIT_SHARED:-../shared}"
OUT="${OUT:-.build/lowbit-speed}"
ROUNDS="${1:-3}"; shift || true
mkdir -p "$OUT"
[ -d "$OUT/smol" ] || $BIN/lmconvert import -i "$DATA/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf" -o "$OUT/smol" >/dev/null
SCHEMES="int4-g32 int3-g32 int2-g32"
for s in $SCHEMES; do
  [ -f "$OUT/smol-$s.lmpk" ] || $BIN/lmconvert quantize -i "$OUT/smol" -o "$OUT/smol-$s.lmpk" --scheme "$s" >/dev/null
done
for round in $(seq 1 "$ROUNDS"); do
  for s in $SCHEMES; do
    j=$(mktemp)
    $BIN/lmeval bench -m "$OUT/smol-$s.lmpk" --json "$j" "$@" > /dev/null
    python3 - "$j" "$s" "$round" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"round {sys.argv[3]}  {sys.argv[2]:<9} {r['weight_bytes']/1048576:6.1f} MiB  "
      f"prefill {r['prefill_median']:6.1f} tokens/s (ratio {r['prefill_ratio_to_sgemm_bound']:.2f})  "
      f"decode {r['decode_median']:6.1f} tokens/s (ratio {r['decode_ratio_to_bandwidth_bound']:.2f})  {r['kernels']}")
PY
    rm -f "$j"
  done
done
