#!/usr/bin/env bash
# Independent readers of `lmconvert export`:
# - safetensors: the PyPI `safetensors` package (with numpy) reads the exported files of
#   stories260K (f16, and a 2:4-pruned int4-g32+2:4 build exported as f32, and in f16 split
#   into 200 KB shards with an index) and checks every tensor's bytes, dtype and the config
#   against what lmconvert reported writing (scripts/check-safetensors.py);
# - gguf: the PyPI `gguf` package (gguf-py) reads GGUF exports of stories260K (int4s-g32 with
#   an int8-g32 embedding and int4-g32 down_proj requantized to f32; a compressed
#   int4s-g32+2:4 build; int8-g64 → Q8_0; int4-g128 → Q4_1) and of SmolLM2 (int4-g32 → Q4_1) and
#   dequantizes every tensor to exactly the reference decoding, which the f32 safetensors
#   export of the same .lmpk holds (scripts/check-gguf.py);
# - with PyTorch (a CPU wheel in pip's local find-links; the registry's CUDA build is several GB,
#   so none is downloaded): compressed-tensors exports of stories260K (int4s-g32 with int8 /
#   int8-g64 / dense linears; 2:4-pruned int4s-g32 + int8-g32) and SmolLM2 (int4s-g128 → groups
#   of 64 where 576 columns need it) decompressed by the PyPI `compressed-tensors` package to the
#   reference decoding exactly, and loaded by transformers, whose logits match lmkit's float
#   runtime within 1e-4 relative (scripts/check-compressed-tensors.py); a transformers forward on
#   safetensors exports against lmkit's float runtime on the same folder
#   (scripts/check-transformers.py). Without such a wheel this part prints a SKIPPED line.
# The packages go into a virtual environment under .build/pyenv (bounded: pip ≤ 5 min);
# where PyPI is out of reach this prints a SKIPPED line. ~20 s with the packages cached.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-.build/release}"
DATA="${LMKIT_SHARED:-../shared}"
PY=.build/pyenv/bin/python
if [ ! -x "$PY" ] || ! "$PY" -c 'import safetensors, numpy, gguf' 2>/dev/null; then
  rm -rf .build/pyenv
  if ! python3 -m venv .build/pyenv >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    # Debian ships venv separately (python3-venv): install it as scripts/setup.sh installs packages.
    as_root=(); [ "$(id -u)" = 0 ] || as_root=(sudo -n)
    rm -rf .build/pyenv
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends python3-venv python3-pip </dev/null >/dev/null 2>&1 || true
  fi
  if ! { [ -x .build/pyenv/bin/python ] || python3 -m venv .build/pyenv >/dev/null 2>&1; } || ! timeout 300 .build/pyenv/bin/pip install -q safetensors numpy gguf >/dev/null 2>&1; then
    echo "SKIPPED scripts/test-export.sh: could not install safetensors, numpy and gguf from PyPI into .build/pyenv"
    exit 0
  fi
fi
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
$BIN/lmconvert quantize -i "$DATA/models/stories260k" -o "$T/f16.lmpk" --scheme f16 >/dev/null
$BIN/lmconvert prune -i "$DATA/models/stories260k" -o "$T/p.lmpk" --method magnitude --pattern 2:4 --scheme int4-g32 >/dev/null
$BIN/lmconvert export -i "$T/f16.lmpk" -o "$T/hf16" --format safetensors --dtype f16 --json > "$T/hf16.json"
$BIN/lmconvert export -i "$T/p.lmpk" -o "$T/hp" --format safetensors --dtype f32 --json > "$T/hp.json"
"$PY" scripts/check-safetensors.py "$T/hf16" "$T/hf16.json"
"$PY" scripts/check-safetensors.py "$T/hp" "$T/hp.json"
$BIN/lmconvert export -i "$T/p.lmpk" -o "$T/hs" --format safetensors --dtype f16 --max-shard-size 200KB --json > "$T/hs.json"
[ -f "$T/hs/model.safetensors.index.json" ] || { echo "FAIL --max-shard-size 200KB wrote no index"; exit 1; }
"$PY" scripts/check-safetensors.py "$T/hs" "$T/hs.json"
# The checker fails on a mismatch (one tensor's reported digest changed).
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); t=j["tensors"][3]; t["sha256"]="0"*64; json.dump(j,open(sys.argv[2],"w"))' "$T/hp.json" "$T/bad.json"
if "$PY" scripts/check-safetensors.py "$T/hp" "$T/bad.json" >/dev/null 2>&1; then echo "FAIL scripts/check-safetensors.py accepted a wrong digest"; exit 1; fi
# GGUF: gguf-py's dequantization equals the reference decoding (the f32 safetensors export).
gguf_case() { # name, then the build command's arguments after -o
  local n="$1"; shift
  "$@" >/dev/null
  $BIN/lmconvert export -i "$T/$n.lmpk" -o "$T/$n.gguf" --format gguf --requantize-to f32 --json > "$T/$n.json"
  $BIN/lmconvert export -i "$T/$n.lmpk" -o "$T/$n-ref" --format safetensors --dtype f32 >/dev/null
  "$PY" scripts/check-gguf.py "$T/$n.gguf" "$T/$n.json" "$T/$n-ref"
}
S="$DATA/models/stories260k"
gguf_case g4 $BIN/lmconvert quantize -i "$S" -o "$T/g4.lmpk" --scheme int4s-g32 --override embed_tokens=int8-g32 --override down_proj=int4-g32
gguf_case g8 $BIN/lmconvert quantize -i "$S" -o "$T/g8.lmpk" --scheme int8-g64
gguf_case g1 $BIN/lmconvert quantize -i "$S" -o "$T/g1.lmpk" --scheme int4-g128 --override embed_tokens=f16
gguf_case gp $BIN/lmconvert prune -i "$S" -o "$T/gp.lmpk" --method magnitude --pattern 2:4 --scheme int4s-g32
gguf_case gs $BIN/lmconvert quantize -i "$DATA/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf" -o "$T/gs.lmpk" --scheme int4-g32 --override embed_tokens=int8-g32
# The checker fails on a mismatch (a reference value changed).
"$PY" -c 'import sys; from safetensors.numpy import load_file, save_file; d=load_file(sys.argv[1]); k="model.layers.0.mlp.up_proj.weight"; d[k]=d[k].copy(); d[k][0,0]+=1; save_file(d, sys.argv[1], metadata={"format":"pt"})' "$T/g4-ref/model.safetensors"
if "$PY" scripts/check-gguf.py "$T/g4.gguf" "$T/g4.json" "$T/g4-ref" >/dev/null 2>&1; then echo "FAIL scripts/check-gguf.py accepted a wrong value"; exit 1; fi
# PyTorch-based readers: compressed-tensors and transformers.
TPY=.build/pyenv-torch/bin/python
if [ ! -x "$TPY" ] || ! "$TPY" -c 'import torch, transformers, compressed_tensors, safetensors, numpy' 2>/dev/null; then
  rm -rf .build/pyenv-torch
  if python3 -m venv .build/pyenv-torch >/dev/null 2>&1 \
     && timeout 300 .build/pyenv-torch/bin/pip install -q --no-index --no-deps torch >/dev/null 2>&1; then
    TV="$(.build/pyenv-torch/bin/pip show torch 2>/dev/null | sed -n 's/^Version: //p')"
    if [ -z "$TV" ] || ! timeout 600 .build/pyenv-torch/bin/pip install -q "torch==$TV" transformers compressed-tensors safetensors numpy >/dev/null 2>&1; then
      rm -rf .build/pyenv-torch
    fi
  else
    rm -rf .build/pyenv-torch
  fi
fi
if [ -x "$TPY" ]; then
  ct_case() { # name, lmpk, prompt
    local n="$1" m="$2" p="$3"
    $BIN/lmconvert export -i "$m" -o "$T/$n-ct" --format compressed-tensors --dtype f32 --requantize-to f32 >/dev/null
    $BIN/lmconvert export -i "$m" -o "$T/$n-cref" --format safetensors --dtype f32 >/dev/null
    $BIN/lmeval logits -m "$T/$n-cref" --prompt "$p" -o "$T/$n-logits.safetensors" >/dev/null
    "$TPY" scripts/check-compressed-tensors.py "$T/$n-ct" "$T/$n-cref" "$T/$n-logits.safetensors" 2>/dev/null | grep -E '^(ok|FAIL)'
    [ "${PIPESTATUS[0]}" = 0 ]
    "$TPY" scripts/check-transformers.py "$T/$n-cref" "$T/$n-logits.safetensors" 2>/dev/null | grep -E '^(ok|FAIL)'
    [ "${PIPESTATUS[0]}" = 0 ]
  }
  STORY="Once upon a time, there was a little girl named Lily. She liked to play"
  $BIN/lmconvert quantize -i "$S" -o "$T/c1.lmpk" --scheme int4s-g32 --override v_proj=int8 --override o_proj=int8-g64 --override up_proj=f16 >/dev/null
  ct_case c1 "$T/c1.lmpk" "$STORY"
  $BIN/lmconvert prune -i "$S" -o "$T/c2.lmpk" --method magnitude --pattern 2:4 --scheme int4s-g32 --override gate_proj=int8-g32 >/dev/null
  ct_case c2 "$T/c2.lmpk" "$STORY"
  $BIN/lmconvert quantize -i "$DATA/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf" -o "$T/c3.lmpk" --scheme int4s-g128 >/dev/null
  ct_case c3 "$T/c3.lmpk" "The capital of France is Paris. The capital of Germany is"
  # The checker fails on a mismatch (one scale changed).
  "$PY" -c 'import sys; from safetensors.numpy import load_file, save_file; d=load_file(sys.argv[1]); k="model.layers.0.self_attn.q_proj.weight_scale"; d[k]=d[k].copy(); d[k][0,0]*=2; save_file(d, sys.argv[1], metadata={"format":"pt"})' "$T/c1-ct/model.safetensors"
  if "$TPY" scripts/check-compressed-tensors.py "$T/c1-ct" "$T/c1-cref" >/dev/null 2>&1; then echo "FAIL scripts/check-compressed-tensors.py accepted a wrong scale"; exit 1; fi
else
  echo "SKIPPED scripts/test-export.sh compressed-tensors and transformers checks: no CPU PyTorch wheel in pip's local find-links (the registry's CUDA build is several GB)"
fi
echo "ok   scripts/test-export.sh"
