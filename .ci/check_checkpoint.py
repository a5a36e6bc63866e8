"""Loads a ps-server checkpoint with Python's safetensors and numpy only,
stitches every tensor from its shard ranges as the manifest says, and
compares it with the values a worker pulled (raw little-endian f32 files
written by `ps-worker --dump-dir`).

usage: check_checkpoint.py CHECKPOINT_DIR DUMP_DIR
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

ckpt, dump = Path(sys.argv[1]), Path(sys.argv[2])
manifest = json.loads((ckpt / "manifest.json").read_text())
index = json.loads((dump / "tensors.json").read_text())
assert manifest["format"] == 1, manifest["format"]
assert manifest["clock"] == index["clock"], (manifest["clock"], index["clock"])

for f in manifest["files"]:
    data = (ckpt / f["name"]).read_bytes()
    assert len(data) == f["bytes"] and hashlib.sha256(data).hexdigest() == f["sha256"], f["name"]
files = {f["name"]: load_file(str(ckpt / f["name"])) for f in manifest["files"]}

checked = 0
for t in manifest["tensors"]:
    parts = sorted(t["parts"], key=lambda p: p["offset"])
    whole = np.concatenate([files[p["file"]][p["key"]] for p in parts]).reshape(t["shape"])
    for p in parts:
        for slot, key in p["slots"].items():
            assert files[p["file"]][key].shape == (p["len"],), (t["name"], slot)
    pulled = np.fromfile(dump / (t["name"].replace("/", "_") + ".f32"), dtype="<f4")
    pulled = pulled.reshape(index["shapes"][t["name"]])
    assert whole.dtype == np.float32 and whole.shape == pulled.shape, (t["name"], whole.shape, pulled.shape)
    assert np.array_equal(whole, pulled), f"{t['name']}: checkpoint differs from the pulled values"
    checked += whole.size
print(f"python: {len(manifest['tensors'])} tensors ({checked} values) at clock {manifest['clock']} "
      f"equal what the worker pulled; {len(files)} shard files verified")
