#!/usr/bin/env bash
# Tensor-parallel speed on this machine (README "Tensor parallelism"): SmolLM2 int4-g32 as a
# whole model, as 1 and 2 in-process ranks (2 also with --vocab-parallel), and as 2 MPI processes; 2 threads in all (1 per
# rank at tp 2); `lmeval bench --prefill 512 --decode 128`, medians of 3; the configurations
# alternate within each round so they share the host's load. Prints one line per run, and
# the per-rank table of the sharded runs (resident weights, collectives per token).
# Usage: bash scripts/tp-speed.sh [MODEL.lmpk] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-.build/demo/smollm2-int4-g32.lmpk}"; ROUNDS="${2:-2}"
OUT=.build/tp-speed; mkdir -p "$OUT"
for tp in 1 2; do .build/release/lmconvert shard --tp $tp -i "$MODEL" -o "$OUT/tp$tp" > /dev/null; done
.build/release/lmconvert shard --tp 2 --vocab-parallel -i "$MODEL" -o "$OUT/tp2v" > /dev/null
MPIRUN=(mpirun --allow-run-as-root --oversubscribe -np 2)
for round in $(seq 1 "$ROUNDS"); do
  for cfg in whole tp1 tp2 tp2v mpi2; do
    j=$(mktemp)
    case $cfg in
      whole) .build/release/lmeval bench -m "$MODEL" --threads 2 --json "$j" > "$j.txt" ;;
      tp1)   .build/release/lmeval bench --shards "$OUT/tp1" --threads 2 --json "$j" > "$j.txt" ;;
      tp2)   .build/release/lmeval bench --shards "$OUT/tp2" --threads 2 --json "$j" > "$j.txt" ;;
      tp2v)  .build/release/lmeval bench --shards "$OUT/tp2v" --threads 2 --json "$j" > "$j.txt" ;;
      mpi2)  "${MPIRUN[@]}" .build/release/lmeval bench --shards "$OUT/tp2" --threads 1 --json "$j" > "$j.txt" ;;
    esac
    python3 - "$j" "$cfg" "$round" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
tp = r.get("tensor_parallel")
extra = ""
if tp:
    ranks = tp["ranks"]
    extra = "  resident MiB " + "/".join(f"{x['resident_weight_bytes']/2**20:.1f}" for x in ranks) + \
            "  collectives µs/token " + "/".join(f"{x['collective_us_per_token']:.0f}" for x in ranks)
    if ranks[0]["peak_rss_bytes"] is not None:
        extra += "  peak RSS MiB " + "/".join(f"{x['peak_rss_bytes']/2**20:.0f}" for x in ranks)
print(f"round {sys.argv[3]}  {sys.argv[2]:<6} prefill {r['prefill_median']:6.1f}  decode {r['decode_median']:6.1f} tokens/s  "
      f"peak RSS {r['peak_rss_bytes']/2**20:.0f} MiB  {r['kernels']}{extra}")
PY
    rm -f "$j" "$j.txt"
  done
done
