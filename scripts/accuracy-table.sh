#!/usr/bin/env bash
# Accuracy of every quantization scheme on both shared models, against the float
# baseline: perplexity, KL divergence, top-1 agreement, file size, bits per weight.
# Writes JSON per run into $OUT and prints a markdown table.
#   stories260K: documents protocol, ctx 128, all 100 stories.
#   SmolLM2:     chunks protocol, ctx 512, first $SMOL_CHUNKS chunks of wiki.test.raw.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.build/release
DATA="${LMKIT_SHARED:-../shared}"
OUT="${OUT:-.build/accuracy}"
SMOL_CHUNKS="${SMOL_CHUNKS:-16}"
SCHEMES="${SCHEMES:-f16 int8 int8-g128 int8-g64 int8-g32 int4-g128 int4-g64 int4-g32 int4s-g128 int4s-g64 int4s-g32}"
mkdir -p "$OUT"
[ -d "$OUT/smol" ] || $BIN/lmconvert import -i "$DATA/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf" -o "$OUT/smol" >/dev/null
row() { # model scheme clip json lmpk
  python3 - "$@" <<'PY'
import json, os, sys
model, scheme, clip, path, lmpk = sys.argv[1:6]
j = json.load(open(path))
size = os.path.getsize(lmpk) if os.path.exists(lmpk) else 0
bpw = json.load(open(lmpk + ".inspect.json"))["bits_per_weight"] if os.path.exists(lmpk + ".inspect.json") else 32
bpb = j.get("bits_per_byte")
print(f"| {model} | {scheme} | {clip} | {bpw:.3f} | {size/1048576:.2f} | {j['perplexity']:.4f} | {j['ppl_ratio']:.4f} | "
      f"{(f'{bpb:.4f}' if bpb else '–')} | {j['mean_kl']:.5f} | {100*j['top1_agreement']:.2f} |")
PY
}
echo "| model | scheme | clip | bits/weight | file MiB | PPL | PPL ratio | bits/byte | mean KL | top-1 % |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for model in stories260k smol; do
  if [ $model = stories260k ]; then SRC="$DATA/models/stories260k"; ARGS=(--text "$DATA/text/tinystories_v2_valid_first100.txt" --protocol documents --ctx 128)
  else SRC="$OUT/smol"; ARGS=(--text "$DATA/text/wiki.test.raw" --protocol chunks --ctx 512 --chunks "$SMOL_CHUNKS"); fi
  for scheme in $SCHEMES; do
    for clip in minmax mse; do
      case $scheme in f16|int8) [ $clip = mse ] && continue;; esac
      f="$OUT/$model-$scheme-$clip.lmpk"
      $BIN/lmconvert quantize -i "$SRC" -o "$f" --scheme "$scheme" --clip $clip >/dev/null
      $BIN/lmconvert inspect --json "$f" > "$f.inspect.json"
      $BIN/lmeval perplexity -m "$f" --baseline "$SRC" "${ARGS[@]}" --json "$f.json" >/dev/null
      row $model $scheme $clip "$f.json" "$f"
    done
  done
done
