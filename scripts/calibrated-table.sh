#!/usr/bin/env bash
# Round-to-nearest vs calibrated methods on both shared models, against the float
# baseline: perplexity, KL divergence, top-1 agreement, exact bits per weight, build
# time and peak RSS, and the Hessian-weighted error ratio method/RTN the build reports.
# Prints a markdown table and appends TSV rows ($OUT/results-<calib>.tsv) that
# scripts/frontier-chart.py renders.
#   stories260K: documents protocol, ctx 128, all 100 stories.
#   SmolLM2:     chunks protocol, ctx 512, first $SMOL_CHUNKS chunks of wiki.test.raw.
# Methods (METHODS): rtn (min/max), rtn-clip (--clip mse), rtn-imp (--clip mse --calib:
# importance-weighted ranges), gptq, gptq-act (--act-order), gptq-imp (--act-order --clip mse:
# importance-weighted group ranges), awq; alloc-rtn / alloc-imp / alloc-awq: bit allocation
# (--target-bpw $ALLOC_BPW, default candidates) then that method, SCHEME the default.
# Calibration texts (CALIBS), both disjoint from both evaluation texts:
#   tinystories: tinystories_v1_valid_prefix.txt;
#   wiki2:       the second half of wiki.test.raw (from the first line at or after its
#                middle character; the evaluated chunks are its first
#                SMOL_CHUNKS x 511 tokens).
# $CALIB_SAMPLES windows of $CALIB_CTX tokens (stories260K: at most 256), seed 0.
# REUSE=1 keeps results already in $OUT (resume an interrupted run).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-.build/release}"
DATA="${LMKIT_SHARED:-../shared}"
OUT="${OUT:-.build/calibrated}"
SMOL_CHUNKS="${SMOL_CHUNKS:-16}"
CALIB_SAMPLES="${CALIB_SAMPLES:-64}"
CALIB_CTX="${CALIB_CTX:-512}"
SCHEMES="${SCHEMES:-int4-g32 int4-g128 int4s-g32 int4s-g128}"
METHODS="${METHODS:-rtn gptq}"
MODELS="${MODELS:-stories260k smol}"
CALIBS="${CALIBS:-tinystories}"
REUSE="${REUSE:-0}"
ALLOC_BPW="${ALLOC_BPW:-5.256}"
mkdir -p "$OUT"
[ -d "$OUT/smol" ] || $BIN/lmconvert import -i "$DATA/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf" -o "$OUT/smol" >/dev/null
python3 - "$DATA/text/wiki.test.raw" "$OUT/wiki2-calib.txt" <<'PY'
import sys
t = open(sys.argv[1], encoding="utf-8").read()
cut = t.index("\n", len(t) // 2) + 1
open(sys.argv[2], "w", encoding="utf-8").write(t[cut:])
PY
calib_file() { case $1 in tinystories) echo "$DATA/text/tinystories_v1_valid_prefix.txt";; wiki2) echo "$OUT/wiki2-calib.txt";; *) echo "unknown calibration $1" >&2; exit 2;; esac; }
echo "| model | scheme | method | calibration | bits/weight | PPL | PPL ratio | mean KL | top-1 % | H-weighted error / RTN | build s | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for model in $MODELS; do
  if [ $model = stories260k ]; then SRC="$DATA/models/stories260k"; ARGS=(--text "$DATA/text/tinystories_v2_valid_first100.txt" --protocol documents --ctx 128); CTX=$(( CALIB_CTX < 256 ? CALIB_CTX : 256 )); NAME=stories260k
  else SRC="$OUT/smol"; ARGS=(--text "$DATA/text/wiki.test.raw" --protocol chunks --ctx 512 --chunks "$SMOL_CHUNKS"); CTX=$CALIB_CTX; NAME=smollm2; fi
  for scheme in $SCHEMES; do
    for method in $METHODS; do
      case $method in
        rtn) base=(); calibrated=0;;
        rtn-clip) base=(--clip mse); calibrated=0;;
        rtn-imp) base=(--clip mse); calibrated=1;;
        gptq) base=(--method gptq); calibrated=1;;
        gptq-act) base=(--method gptq --act-order); calibrated=1;;
        gptq-imp) base=(--method gptq --act-order --clip mse); calibrated=1;;
        awq) base=(--method awq); calibrated=1;;
        alloc-rtn) base=(--target-bpw "$ALLOC_BPW"); calibrated=1;;
        alloc-imp) base=(--clip mse --target-bpw "$ALLOC_BPW"); calibrated=1;;
        alloc-awq) base=(--method awq --target-bpw "$ALLOC_BPW"); calibrated=1;;
        *) echo "unknown method $method" >&2; exit 2;;
      esac
      calibs=$CALIBS; [ $calibrated = 1 ] || calibs=none
      for calib in $calibs; do
        f="$OUT/$model-$scheme-$method-$calib.lmpk"
        extra=("${base[@]}")
        [ $calibrated = 0 ] || extra+=(--calib "$(calib_file $calib)" --calib-samples "$CALIB_SAMPLES" --calib-ctx "$CTX")
        if [ "$REUSE" != 1 ] || [ ! -s "$f.json" ]; then
          $BIN/lmconvert quantize -i "$SRC" -o "$f" --scheme "$scheme" "${extra[@]}" --json > "$f.build.json"
          $BIN/lmeval perplexity -m "$f" --baseline "$SRC" "${ARGS[@]}" --json "$f.json" >/dev/null
          rm -f "$f"
        fi
        python3 - "$NAME" "$scheme" "$method" "$calib" "$f" "$OUT" "${CALIBS%% *}" <<'PY'
import json, sys
model, scheme, method, calib, f, out, first = sys.argv[1:8]
b = json.load(open(f + ".build.json")); j = json.load(open(f + ".json"))
cal = b.get("calibration")
ratio = f"{cal['mean_error_ratio']:.3f}" if cal else "1"
print(f"| {model} | {scheme} | {method} | {calib} | {b['bits_per_weight']:.3f} | {j['perplexity']:.4f} | {j['ppl_ratio']:.4f} | "
      f"{j['mean_kl']:.5f} | {100*j['top1_agreement']:.2f} | {ratio} | {b['seconds']:.1f} | {b['peak_rss_bytes']/1048576:.0f} |")
# Rows without calibration belong to every calibration's file.
for c in ([first] if calib == "none" else [calib]):
    path = f"{out}/results-{c}.tsv"
    try: new = open(path).read() == ""
    except FileNotFoundError: new = True
    with open(path, "a") as t:
        if new: t.write("model\tscheme\tmethod\tbits_per_weight\tppl\tppl_ratio\tmean_kl\ttop1\tcalibration\tbuild_seconds\n")
        t.write(f"{model}\t{scheme}\t{method}\t{b['bits_per_weight']:.4f}\t{j['perplexity']:.4f}\t{j['ppl_ratio']:.4f}\t{j['mean_kl']:.5f}\t{j['top1_agreement']:.4f}\t{calib}\t{b['seconds']:.1f}\n")
PY
      done
    done
  done
done
