#!/usr/bin/env python3
"""Independent check of `lmconvert export --format compressed-tensors` with the PyPI
`compressed-tensors` package (and, when given logits, transformers).

usage: check-compressed-tensors.py CT_FOLDER REFERENCE_F32_FOLDER [LOGITS.safetensors]

REFERENCE_F32_FOLDER is the same .lmpk exported with `--format safetensors --dtype f32`
(every tensor's reference decoding). compressed-tensors validates config.json's
quantization_config; for every target of every config group its PackedQuantizationCompressor
decompresses weight_packed / weight_scale / weight_shape, and the result must equal the
reference decoding exactly with the scales in float32, and equal it rounded once to float16
with the stored float16 scales (compressed-tensors multiplies in the scale's dtype). Every
other tensor must equal the reference in the folder's dtype. With LOGITS (`lmeval logits` of
lmkit's float runtime on the folder's f16 safetensors twin, or the reference folder for f32),
transformers loads CT_FOLDER and its logits must match within 1e-4 relative.
"""
import json
import sys

import numpy as np
import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme
from safetensors.numpy import load_file as load_np
from safetensors.torch import load_file


def load_folder(folder):
    import os
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(json.load(open(index))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for f in files:
        out.update(load_file(os.path.join(folder, f)))
    return out


def main():
    folder, ref_dir = sys.argv[1], sys.argv[2]
    cfg = json.load(open(f"{folder}/config.json"))
    qc = cfg["quantization_config"]
    QuantizationConfig.model_validate(qc)  # the package's own schema check
    tensors = load_folder(folder)
    ref = {k: torch.from_numpy(v) for k, v in load_np(f"{ref_dir}/model.safetensors").items()}
    dense_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[cfg["torch_dtype"]]
    fails, quantized = 0, set()
    for name, group in qc["config_groups"].items():
        scheme = QuantizationScheme.model_validate(group)
        for module in scheme.targets:
            sd = {k: tensors[f"{module}.{k}"] for k in ("weight_packed", "weight_scale", "weight_shape")}
            want = ref[f"{module}.weight"]
            exact = PackedQuantizationCompressor.decompress({**sd, "weight_scale": sd["weight_scale"].float()}, scheme)["weight"]
            rounded = PackedQuantizationCompressor.decompress(sd, scheme)["weight"]
            if not torch.equal(exact.float(), want):
                bad = (exact.float() != want).nonzero()[0].tolist()
                print(f"FAIL {module}: decompressed {exact[tuple(bad)].item()} at {bad}, the reference decoding is {want[tuple(bad)].item()}")
                fails += 1
            if not torch.equal(rounded, want.to(rounded.dtype)):
                print(f"FAIL {module}: decompressed in {rounded.dtype} differs from the reference rounded once")
                fails += 1
            quantized.add(f"{module}.weight")
    for k, v in tensors.items():
        base = k.rsplit(".", 1)[0]
        if k.endswith(("weight_packed", "weight_scale", "weight_shape")) and f"{base}.weight" in quantized:
            continue
        if k not in ref:
            print(f"FAIL {k}: not in the reference"); fails += 1; continue
        if not torch.equal(v, ref[k].to(dense_dtype)):
            print(f"FAIL {k}: dense tensor differs from the reference in {dense_dtype}"); fails += 1
    missing = set(ref) - quantized - set(tensors)
    if missing:
        print(f"FAIL tensors missing: {sorted(missing)[:5]}"); fails += 1
    if fails:
        sys.exit(1)
    sparsity = qc.get("sparsity_config")
    print(f"ok   {folder}: compressed-tensors decompresses {len(quantized)} linears to the reference decoding exactly"
          f" ({len(tensors)} tensors{', sparsity ' + sparsity['sparsity_structure'] if sparsity else ''})")
    if len(sys.argv) > 3:
        from transformers import AutoModelForCausalLM
        lg = load_np(sys.argv[3])
        ids = torch.tensor(lg["input_ids"].astype("int64"))[None]
        ours = torch.tensor(lg["logits"])
        torch.set_num_threads(2)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        with torch.no_grad():
            theirs = model(ids).logits[0].float()
        rel = (theirs - ours).abs().max().item() / ours.abs().max().item()
        agree = (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item()
        line = f"{folder}: transformers on the compressed-tensors folder, {ids.shape[1]} positions, relative max |Δ| {rel:.3g}, argmax agreement {agree:.3f}"
        if rel > 1e-4 or agree < 1:
            print("FAIL " + line); sys.exit(1)
        print("ok   " + line)


if __name__ == "__main__":
    main()
