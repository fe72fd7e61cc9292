#!/usr/bin/env python3
"""Runs an exported model with ONNX Runtime and compares it with our logits.

usage: check_onnx.py MODEL.onnx IMAGES.u8 LOGITS.f32 [--tol 1e-4]

IMAGES.u8: N raw images, uint8 (N, C, H, W); LOGITS.f32: rusty-recognition's
logits for them, little-endian float32 (N, classes). The images are
normalized as the model's metadata says (x = (pixel / 255 - mean[c]) / std[c]),
run in two batches of different sizes (the batch dimension must be dynamic),
and every prediction (argmax) must agree and every logit be within --tol
(absolute). Exit 0: agreement; 1: disagreement or a malformed model; 2:
onnxruntime or numpy missing.
"""

import argparse
import json
import sys

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as e:
    print(f"check_onnx.py needs onnxruntime and numpy ({e}): run `pip install onnxruntime numpy` (scripts/test.sh, which CI runs, installs them)", file=sys.stderr)
    sys.exit(2)


def fail(msg):
    print(f"check_onnx.py: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("images")
    p.add_argument("logits")
    p.add_argument("--tol", type=float, default=1e-4)
    a = p.parse_args()

    session = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    mean = np.array(json.loads(meta["mean"]), dtype=np.float32)
    std = np.array(json.loads(meta["std"]), dtype=np.float32)
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    if inp.name != "input" or out.name != "logits":
        fail(f"expected input `input` and output `logits`, got `{inp.name}` and `{out.name}`")
    if inp.shape[0] != "batch" or out.shape[0] != "batch":
        fail(f"the batch dimension is not dynamic: input {inp.shape}, output {out.shape}")
    c, h, w = inp.shape[1:]
    classes = out.shape[1]

    pixels = np.fromfile(a.images, dtype=np.uint8)
    n = pixels.size // (c * h * w)
    ours = np.fromfile(a.logits, dtype="<f4").reshape(n, classes)
    x = pixels.reshape(n, c, h, w).astype(np.float32)
    x = (x / np.float32(255) - mean[None, :, None, None]) / std[None, :, None, None]

    cut = max(1, n // 3)
    theirs = np.concatenate([session.run(["logits"], {"input": x[i:j]})[0] for i, j in [(0, cut), (cut, n)] if j > i])
    diff = float(np.abs(theirs - ours).max())
    agree = int((theirs.argmax(1) == ours.argmax(1)).sum())
    largest = float(np.abs(ours).max())
    print(f"onnxruntime {ort.__version__}: {n} images, predictions agree on {agree}/{n}, "
          f"max |logit difference| {diff:.3g} (tolerance {a.tol:g}), max |logit| {largest:.3g}")
    if agree != n or not diff <= a.tol:
        fail("ONNX Runtime's results differ from rusty-recognition's")


if __name__ == "__main__":
    main()
