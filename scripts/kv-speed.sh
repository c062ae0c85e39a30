#!/usr/bin/env bash
# Decode speed at long context per KV scheme (README "KV cache"): SmolLM2 int4-g32 weights,
# 2,048 tokens already in the cache, 64 decoded tokens, medians of 3; schemes alternate
# within each round so they share the host's load. Prints one line per run.
# Usage: bash scripts/kv-speed.sh [MODEL.lmpk] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-.build/demo/smollm2-int4-g32.lmpk}"; ROUNDS="${2:-2}"
for round in $(seq 1 "$ROUNDS"); do
  for kv in f32 f16 int8 k=int8,v=int4 int4 k=int4c,v=int4 k=int4c,v=int8; do
    j=$(mktemp)
    .build/release/lmeval bench -m "$MODEL" --prefill 64 --decode 64 --depth 2048 --repetitions 3 --kv-cache "$kv" --json "$j" > /dev/null
    python3 - "$j" "$kv" "$round" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"round {sys.argv[3]}  {sys.argv[2]:<14} decode {r['decode_median']:6.1f} tokens/s at depth {r['depth']}  "
      f"KV {r['kv_bytes_per_token']:.0f} B/token  bound {r['bandwidth_bound_tokens_per_second']:.1f}  ratio {r['decode_ratio_to_bandwidth_bound']:.2f}  {r['kernels']}")
PY
    rm -f "$j"
  done
done
