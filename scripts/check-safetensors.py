#!/usr/bin/env python3
"""Independent check of an `lmconvert export --format safetensors` folder: reads
model.safetensors (or every shard its index names) with the `safetensors` package (numpy), and compares every tensor's
bytes (SHA-256, in its stored dtype), dtype and shape with what `lmconvert export --json` reported
writing, and the config's torch_dtype with the dtype. Exit 1 naming the first mismatch.

    python3 scripts/check-safetensors.py OUT_FOLDER EXPORT.json
"""
import hashlib, json, sys

from safetensors.numpy import load_file

folder, summary = sys.argv[1], json.load(open(sys.argv[2]))
try:
    index = json.load(open(folder + "/model.safetensors.index.json"))
except FileNotFoundError:
    index = None
if index is None:
    tensors = load_file(folder + "/model.safetensors")
else:
    # A sharded folder: every file the index names, each tensor where the index says.
    tensors = {}
    for f in sorted(set(index["weight_map"].values())):
        part = load_file(folder + "/" + f)
        for name in part:
            if index["weight_map"].get(name) != f:
                sys.exit(f"{name}: in {f}, but the index maps it to {index['weight_map'].get(name)}")
        tensors.update(part)
    total = sum(t.nbytes for t in tensors.values())
    if index["metadata"]["total_size"] != total:
        sys.exit(f"index total_size {index['metadata']['total_size']} vs {total} bytes of tensors")
want = {t["name"]: t["sha256"] for t in summary["tensors"]}
shapes = {t["name"]: list(t["shape"]) for t in summary["tensors"]}
if set(tensors) != set(want):
    sys.exit(f"tensor names differ: only in the file {sorted(set(tensors) - set(want))[:5]}, only reported {sorted(set(want) - set(tensors))[:5]}")
np_dtype = {"f32": "float32", "f16": "float16"}[summary["dtype"]]
for name, t in tensors.items():
    if str(t.dtype) != np_dtype:
        sys.exit(f"{name}: dtype {t.dtype}, expected {np_dtype}")
    if list(t.shape) != shapes[name]:
        sys.exit(f"{name}: shape {list(t.shape)}, lmconvert wrote {shapes[name]}")
    got = hashlib.sha256(t.astype(t.dtype.newbyteorder("<"), copy=False).tobytes()).hexdigest()
    if got != want[name]:
        sys.exit(f"{name}: bytes read by safetensors differ from those written (sha256 {got} vs {want[name]})")
config = json.load(open(folder + "/config.json"))
if config.get("torch_dtype") != {"float32": "float32", "float16": "float16"}[np_dtype]:
    sys.exit(f"config.json torch_dtype {config.get('torch_dtype')} for {np_dtype} weights")
print(f"safetensors {len(tensors)} tensors{'' if index is None else ' in ' + str(len(set(index['weight_map'].values()))) + ' shards'}: names, shapes' bytes and dtype {np_dtype} match what lmconvert wrote")
