#!/usr/bin/env python3
"""A transformers forward on an `lmconvert export --format safetensors` folder against lmkit's runtime.

usage: check-transformers.py EXPORT_FOLDER LOGITS.safetensors [TOLERANCE]

LOGITS.safetensors is `lmeval logits -m MODEL --prompt ... -o FILE` (input_ids int32 [n],
logits float32 [n, vocab]) from the .lmpk the folder was exported from (exported with
--dtype f32, so both runtimes see the same weights). transformers loads the folder with
AutoModelForCausalLM in float32 and runs the same ids; the check passes when
max |Δ| / max |logit| <= TOLERANCE (default 1e-4) and the argmax agrees at every position.
"""
import sys

import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM


def main():
    folder, logits_path = sys.argv[1], sys.argv[2]
    tol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-4
    ref = load_file(logits_path)
    ids = torch.tensor(ref["input_ids"].astype("int64"))[None]
    ours = torch.tensor(ref["logits"])
    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        theirs = model(ids).logits[0].float()
    if theirs.shape != ours.shape:
        print(f"FAIL {folder}: transformers gives logits {tuple(theirs.shape)}, lmkit {tuple(ours.shape)}")
        sys.exit(1)
    diff = (theirs - ours).abs().max().item()
    rel = diff / ours.abs().max().item()
    agree = (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item()
    line = f"{folder}: {ids.shape[1]} positions, max |Δ| {diff:.3g}, relative {rel:.3g} (tolerance {tol:g}), argmax agreement {agree:.3f}"
    if rel > tol or agree < 1:
        print("FAIL " + line)
        sys.exit(1)
    print("ok   " + line)


if __name__ == "__main__":
    main()
