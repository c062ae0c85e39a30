#!/usr/bin/env python3
"""Independent check of `lmconvert export --format gguf` with the PyPI `gguf` package (gguf-py).

usage: check-gguf.py OUT.gguf EXPORT.json REFERENCE_FOLDER

EXPORT.json is `lmconvert export --format gguf --json`'s report; REFERENCE_FOLDER is the same
.lmpk exported with `--format safetensors --dtype f32`, i.e. every tensor's reference decoding
(exact for every scheme). gguf-py reads the file; for every tensor the report marks exact, its
dequantization (gguf.quants.dequantize) must equal the reference values exactly (pruned zeros
may read -0 under a negative Q4_0 scale), after undoing llama.cpp's q/k row permutation; a
tensor converted with --requantize-to to a float type must equal them too. Each tensor's bytes
must have the SHA-256 the report gives, and the type it names. Exits non-zero on any difference.
"""
import hashlib
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import load_file


def unpermute(w, heads):
    rows = w.shape[0]
    hd = rows // heads
    # GGUF row h*hd + 2i + j holds HF row h*hd + j*hd/2 + i.
    return w.reshape(heads, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field(r, key):
    f = r.fields[key]
    v = f.parts[f.data[0]]
    return bytes(v).decode() if f.types[0].name == "STRING" else v[0]


def main():
    path, report_path, ref_dir = sys.argv[1:4]
    report = json.load(open(report_path))
    r = GGUFReader(path)
    ref = load_file(f"{ref_dir}/model.safetensors")
    arch = field(r, "general.architecture")
    heads, kv = int(field(r, f"{arch}.attention.head_count")), int(field(r, f"{arch}.attention.head_count_kv"))
    by_name = {t.name: t for t in r.tensors}
    fails = 0
    if len(by_name) != len(report["tensors"]):
        print(f"FAIL {path}: {len(by_name)} tensors, the report lists {len(report['tensors'])}")
        fails += 1
    checked = 0
    for e in report["tensors"]:
        t = by_name.get(e["gguf_name"])
        if t is None:
            print(f"FAIL {e['gguf_name']}: not in the file"); fails += 1; continue
        raw = np.asarray(t.data).view(np.uint8).tobytes()
        if hashlib.sha256(raw).hexdigest() != e["sha256"]:
            print(f"FAIL {e['gguf_name']}: SHA-256 differs from the report"); fails += 1
        if t.tensor_type.name != e["type"]:
            print(f"FAIL {e['gguf_name']}: type {t.tensor_type.name}, the report says {e['type']}"); fails += 1
        if not e["exact"] and e["type"] not in ("F32",):
            continue  # requantized to a lossy type: nothing exact to compare
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        want = ref[e["name"]]
        w = w.reshape(want.shape)
        if arch == "llama" and e["gguf_name"].endswith(("attn_q.weight", "attn_k.weight")):
            w = unpermute(w, heads if "attn_q" in e["gguf_name"] else kv)
        if not np.array_equal(w, want):
            bad = np.argwhere(w != want)[0]
            print(f"FAIL {e['gguf_name']}: gguf-py reads {w[tuple(bad)]} at {tuple(bad)}, the reference decoding is {want[tuple(bad)]}")
            fails += 1
        checked += 1
    tokens = r.fields["tokenizer.ggml.tokens"]
    vocab = int(field(r, f"{arch}.vocab_size"))
    if len(tokens.data) != vocab:
        print(f"FAIL tokenizer: {len(tokens.data)} tokens for a vocabulary of {vocab}"); fails += 1
    if fails:
        sys.exit(1)
    print(f"ok   {path}: gguf-py dequantizes {checked} tensors to the reference decoding exactly ({arch}, {len(by_name)} tensors)")


if __name__ == "__main__":
    main()
