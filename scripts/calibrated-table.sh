#!/usr/bin/env bash
# Round-to-nearest vs calibrated methods (GPTQ) on both shared models, against the float
# baseline: perplexity, KL divergence, top-1 agreement, bits per weight, build time and
# the Hessian-weighted error ratio GPTQ/RTN the build reports. Prints a markdown table.
#   stories260K: documents protocol, ctx 128, all 100 stories.
#   SmolLM2:     chunks protocol, ctx 512, first $SMOL_CHUNKS chunks of wiki.test.raw.
#   Calibration: tinystories_v1_valid_prefix.txt (disjoint from both evaluation texts),
#                $CALIB_SAMPLES windows of $CALIB_CTX tokens, seed 0.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.build/release
DATA="${LMKIT_SHARED:-../shared}"
OUT="${OUT:-.build/calibrated}"
SMOL_CHUNKS="${SMOL_CHUNKS:-16}"
CALIB="${CALIB:-$DATA/text/tinystories_v1_valid_prefix.txt}"
CALIB_SAMPLES="${CALIB_SAMPLES:-64}"
CALIB_CTX="${CALIB_CTX:-512}"
SCHEMES="${SCHEMES:-int4-g32 int4-g128 int4s-g32 int4s-g128}"
METHODS="${METHODS:-rtn gptq}"
MODELS="${MODELS:-stories260k smol}"
mkdir -p "$OUT"
[ -d "$OUT/smol" ] || $BIN/lmconvert import -i "$DATA/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf" -o "$OUT/smol" >/dev/null
echo "| model | scheme | method | bits/weight | PPL | PPL ratio | mean KL | top-1 % | H-weighted error / RTN | build s |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for model in $MODELS; do
  if [ $model = stories260k ]; then SRC="$DATA/models/stories260k"; ARGS=(--text "$DATA/text/tinystories_v2_valid_first100.txt" --protocol documents --ctx 128); CTX=$(( CALIB_CTX < 256 ? CALIB_CTX : 256 ))
  else SRC="$OUT/smol"; ARGS=(--text "$DATA/text/wiki.test.raw" --protocol chunks --ctx 512 --chunks "$SMOL_CHUNKS"); CTX=$CALIB_CTX; fi
  for scheme in $SCHEMES; do
    for method in $METHODS; do
      f="$OUT/$model-$scheme-$method.lmpk"
      extra=()
      [ $method = rtn ] || extra=(--method "$method" --calib "$CALIB" --calib-samples "$CALIB_SAMPLES" --calib-ctx "$CTX")
      $BIN/lmconvert quantize -i "$SRC" -o "$f" --scheme "$scheme" "${extra[@]}" --json > "$f.build.json"
      $BIN/lmeval perplexity -m "$f" --baseline "$SRC" "${ARGS[@]}" --json "$f.json" >/dev/null
      python3 - "$model" "$scheme" "$method" "$f" <<'PY'
import json, sys
model, scheme, method, f = sys.argv[1:5]
b = json.load(open(f + ".build.json")); j = json.load(open(f + ".json"))
cal = b.get("calibration")
ratio = f"{cal['mean_error_ratio']:.3f}" if cal else "1"
print(f"| {model} | {scheme} | {method} | {b['bits_per_weight']:.3f} | {j['perplexity']:.4f} | {j['ppl_ratio']:.4f} | "
      f"{j['mean_kl']:.5f} | {100*j['top1_agreement']:.2f} | {ratio} | {b['seconds']:.1f} |")
PY
    done
  done
done
