#!/usr/bin/env bash
# Independent reader of `lmconvert export --format safetensors`: the PyPI `safetensors`
# package (with numpy) reads the exported files of stories260K (f16, and a 2:4-pruned
# int4-g32+2:4 build exported as f32, and in f16 split into 200 KB shards with an index) and checks every tensor's bytes, dtype and the
# config against what lmconvert reported writing (scripts/check-safetensors.py).
# The packages go into a virtual environment under .build/pyenv (bounded: pip ≤ 5 min);
# where PyPI is out of reach this prints a SKIPPED line. ~20 s with the packages cached.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-.build/release}"
DATA="${LMKIT_SHARED:-../shared}"
PY=.build/pyenv/bin/python
if [ ! -x "$PY" ] || ! "$PY" -c 'import safetensors, numpy' 2>/dev/null; then
  rm -rf .build/pyenv
  if ! python3 -m venv .build/pyenv >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    # Debian ships venv separately (python3-venv): install it as scripts/setup.sh installs packages.
    as_root=(); [ "$(id -u)" = 0 ] || as_root=(sudo -n)
    rm -rf .build/pyenv
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends python3-venv python3-pip </dev/null >/dev/null 2>&1 || true
  fi
  if ! { [ -x .build/pyenv/bin/python ] || python3 -m venv .build/pyenv >/dev/null 2>&1; } || ! timeout 300 .build/pyenv/bin/pip install -q safetensors numpy >/dev/null 2>&1; then
    echo "SKIPPED scripts/test-export.sh: could not install safetensors and numpy from PyPI into .build/pyenv"
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
echo "ok   scripts/test-export.sh"
