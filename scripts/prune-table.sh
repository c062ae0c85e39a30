#!/usr/bin/env bash
# Distillation-free pruning on both shared models, against the float model: perplexity
# ratio, mean KL, top-1 agreement, file size, build time and peak memory per method ×
# sparsity (README "Pruning").
#
#   METHODS   magnitude wanda sparsegpt
#   PATTERNS  0.5 (unstructured, per output row) 2:4 4:8
#   SCHEMES   f16 (pruned weights stored dense, exact zeros); int4s-g32 / int8: then
#             round-to-nearest of the kept weights (symmetric: 0 stays exactly 0)
#   MODELS    stories260k (documents, all 100 stories) smol (chunks, ctx 512, $SMOL_CHUNKS chunks)
#   QUANT     rtn (default) or gptq: an integer scheme's codes by GPTQ in the pruning pass
#             (--quant-method gptq: mask-aware GPTQ; SparseGPT's joint mode)
#   STORAGE   unset: lmconvert prune's default (1:2, 2:4, 4:8 compressed as +N:M schemes, the
#             rest dense); dense: exact zeros in place for every pattern
# Calibration (wanda, sparsegpt), CALIB: tinystories (tinystories_v1_valid_prefix.txt, disjoint
# from both evaluation texts; the default) or wiki2 (the second half of wiki.test.raw, from the
# first line break after the middle: never evaluated, as scripts/calibrated-table.sh),
# $CALIB_SAMPLES windows of $CALIB_CTX tokens (stories260K: at most 256), seed 0.
# Output: a markdown table on stdout, $OUT/prune-results.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-.build/release}"
DATA="${LMKIT_SHARED:-../shared}"
OUT="${OUT:-.build/pruned}"
SMOL_CHUNKS="${SMOL_CHUNKS:-16}"
CALIB_SAMPLES="${CALIB_SAMPLES:-64}"
CALIB_CTX="${CALIB_CTX:-512}"
METHODS="${METHODS:-magnitude wanda sparsegpt}"
PATTERNS="${PATTERNS:-0.5 2:4 4:8}"
SCHEMES="${SCHEMES:-f16}"
MODELS="${MODELS:-stories260k smol}"
STORAGE="${STORAGE:-}"
QUANT="${QUANT:-rtn}"
mkdir -p "$OUT"
[ -d "$OUT/smol" ] || $BIN/lmconvert import -i "$DATA/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf" -o "$OUT/smol" >/dev/null
CALIB_NAME="${CALIB:-tinystories}"
case $CALIB_NAME in
  tinystories) CALIB="$DATA/text/tinystories_v1_valid_prefix.txt";;
  wiki2) CALIB="$OUT/wiki2-calib.txt"
         python3 -c 'import sys; t = open(sys.argv[1], encoding="utf-8").read(); open(sys.argv[2], "w", encoding="utf-8").write(t[t.index("\n", len(t) // 2) + 1:])' "$DATA/text/wiki.test.raw" "$CALIB";;
  *) echo "unknown CALIB $CALIB_NAME" >&2; exit 2;;
esac
echo "| model | method | sparsity | scheme | calibration | PPL | PPL ratio | mean KL | top-1 % | MiB | build s | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for model in $MODELS; do
  if [ $model = stories260k ]; then SRC="$DATA/models/stories260k"; ARGS=(--text "$DATA/text/tinystories_v2_valid_first100.txt" --protocol documents --ctx 128); CTX=$(( CALIB_CTX < 256 ? CALIB_CTX : 256 ))
  else SRC="$OUT/smol"; ARGS=(--text "$DATA/text/wiki.test.raw" --protocol chunks --ctx 512 --chunks "$SMOL_CHUNKS"); CTX=$CALIB_CTX; fi
  for scheme in $SCHEMES; do
    for pat in $PATTERNS; do
      case $pat in *:*) sp=(--pattern "$pat");; *) sp=(--sparsity "$pat");; esac
      for method in $METHODS; do
        f="$OUT/$model-$method-${pat/:/of}-$scheme-$CALIB_NAME.lmpk"
        extra=()
        [ -z "$STORAGE" ] || { extra=(--storage "$STORAGE"); f="${f%.lmpk}-$STORAGE.lmpk"; }
        [ $QUANT = rtn ] || { extra+=(--quant-method "$QUANT"); f="${f%.lmpk}-$QUANT.lmpk"; }
        [ $method = magnitude ] && [ $QUANT = rtn ] || extra+=(--calib "$CALIB" --calib-samples "$CALIB_SAMPLES" --calib-ctx "$CTX")
        $BIN/lmconvert prune -i "$SRC" -o "$f" --method $method "${sp[@]}" --scheme $scheme "${extra[@]}" --json > "$f.build.json"
        $BIN/lmeval perplexity -m "$f" --baseline "$SRC" "${ARGS[@]}" --json "$f.json" >/dev/null
        rm -f "$f"
        label=$scheme
        case "$pat" in 1:2|2:4|4:8) if [ "$STORAGE" = dense ]; then label="$scheme (dense zeros)"; else label="$scheme+$pat"; fi;; esac
        [ $QUANT = rtn ] || label="$label, $QUANT"
        python3 - "$model" "$method" "$pat" "$label" "$f" "$OUT" "$([ $method = magnitude ] && [ $QUANT = rtn ] && echo none || echo $CALIB_NAME)" <<'PY'
import json, sys
model, method, pat, scheme, f, out, calib = sys.argv[1:8]
b = json.load(open(f + ".build.json")); j = json.load(open(f + ".json"))
print(f"| {model} | {method} | {pat} | {scheme} | {calib} | {j['perplexity']:.4f} | {j['ppl_ratio']:.4f} | {j['mean_kl']:.4f} | "
      f"{100*j['top1_agreement']:.2f} | {b['file_bytes']/1048576:.2f} | {b['seconds']:.1f} | {b['peak_rss_bytes']/1048576:.0f} |")
path = f"{out}/prune-results.tsv"
try: new = open(path).read() == ""
except FileNotFoundError: new = True
with open(path, "a") as t:
    if new: t.write("model\tmethod\tsparsity\tscheme\tcalibration\tppl\tppl_ratio\tmean_kl\ttop1\tfile_bytes\tbuild_seconds\tpeak_rss_bytes\n")
    t.write(f"{model}\t{method}\t{pat}\t{scheme}\t{calib}\t{j['perplexity']:.4f}\t{j['ppl_ratio']:.4f}\t{j['mean_kl']:.5f}\t{j['top1_agreement']:.4f}\t{b['file_bytes']}\t{b['seconds']:.1f}\t{b['peak_rss_bytes']}\n")
PY
      done
    done
  done
done
