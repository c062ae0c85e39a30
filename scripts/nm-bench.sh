#!/usr/bin/env bash
# Compressed N:M storage vs dense zeros: file size and decode speed of SmolLM2-135M pruned
# 2:4 (by magnitude: the method does not change the speed), at the same value precision,
# per kernel set (README "Pruning", "Speed of 2:4"). Dense and compressed files are timed in
# alternating rounds (`lmeval bench`, medians), so host load hits both alike; each figure is
# also given as its ratio to the same run's memory-bandwidth bound.
#
#   SCHEMES  f16 int8-g32 int4s-g32     ROUNDS 3     KERNELS avx512vbmi2 avx512vnni avx2 (those the CPU has)
#   PREFILL / DECODE  bench lengths (128 / 128)
# Output: a markdown table on stdout, $OUT/nm-bench.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-.build/release}"
DATA="${LMKIT_SHARED:-../shared}"
OUT="${OUT:-.build/pruned}"
SCHEMES="${SCHEMES:-f16 int8-g32 int4s-g32}"
ROUNDS="${ROUNDS:-3}"
KERNELS="${KERNELS:-avx512vbmi2 avx512vnni avx2}"
PREFILL="${PREFILL:-128}"
DECODE="${DECODE:-128}"
mkdir -p "$OUT"
[ -d "$OUT/smol" ] || $BIN/lmconvert import -i "$DATA/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf" -o "$OUT/smol" >/dev/null
for scheme in $SCHEMES; do
  for st in dense compressed; do
    f="$OUT/smol-mag2of4-$scheme-$st.lmpk"
    [ -f "$f" ] || $BIN/lmconvert prune -i "$OUT/smol" -o "$f" --method magnitude --pattern 2:4 --scheme $scheme --storage $st >/dev/null
  done
done
: > "$OUT/nm-bench.tsv"
for k in $KERNELS; do
  for r in $(seq "$ROUNDS"); do
    for scheme in $SCHEMES; do
      for st in dense compressed; do
        f="$OUT/smol-mag2of4-$scheme-$st.lmpk"
        if ! $BIN/lmeval bench -m "$f" --prefill "$PREFILL" --decode "$DECODE" --threads 2 --kernels "$k" --json "$OUT/b.json" >/dev/null 2>"$OUT/b.err"; then
          grep -q "lacks" "$OUT/b.err" && continue 2; cat "$OUT/b.err" >&2; exit 1
        fi
        python3 - "$k" "$scheme" "$st" "$f" "$OUT" <<'PY'
import json, os, sys
k, scheme, st, f, out = sys.argv[1:6]
j = json.load(open(f"{out}/b.json"))
open(f"{out}/nm-bench.tsv", "a").write(f"{k}\t{scheme}\t{st}\t{os.path.getsize(f)}\t{j['weight_bytes']}\t{j['decode_median']}\t{j['decode_ratio_to_bandwidth_bound']}\t{j['prefill_median']}\n")
PY
      done
    done
  done
done
python3 - "$OUT/nm-bench.tsv" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
by = {}
for k, s, st, size, wb, tg, ratio, pp in rows:
    by.setdefault((k, s, st), []).append((float(tg), float(ratio), float(pp), int(size), int(wb)))
print("| kernels | values | storage | file MiB | weights MiB | decode tok/s | vs bound | decode vs dense | prefill tok/s |")
print("|---|---|---|---|---|---|---|---|---|")
for (k, s, st), v in by.items():
    tg = statistics.median(x[0] for x in v); ratio = statistics.median(x[1] for x in v); pp = statistics.median(x[2] for x in v)
    dense = statistics.median(x[0] for x in by[(k, s, "dense")])
    print(f"| {k} | {s} | {st} | {v[0][3]/1048576:.1f} | {v[0][4]/1048576:.1f} | {tg:.1f} | {ratio:.2f} | {tg/dense:.2f}× | {pp:.0f} |")
PY
