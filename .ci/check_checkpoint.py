"""Loads a ps-server checkpoint with Python's safetensors and numpy only:
verifies the manifest against manifest.sha256 and cross-checks it against
the directory name and each shard file's metadata, stitches every tensor
from its shard ranges as the manifest says, and compares it with the values
a worker pulled (raw little-endian f32 files written by `ps-worker --dump-dir`).

usage: check_checkpoint.py CHECKPOINT_DIR DUMP_DIR
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

ckpt, dump = Path(sys.argv[1]), Path(sys.argv[2])
raw = (ckpt / "manifest.json").read_bytes()
expected, name = (ckpt / "manifest.sha256").read_text().rstrip("\n").split("  ")
assert name == "manifest.json" and hashlib.sha256(raw).hexdigest() == expected, "manifest.json: checksum mismatch"
manifest = json.loads(raw)
index = json.loads((dump / "tensors.json").read_text())
assert manifest["format"] == 2, manifest["format"]
# The directory is named ckpt-<clock:012>-<session:016x>.
assert manifest["name"] == ckpt.name and int(ckpt.name.split("-")[1]) == manifest["clock"], (ckpt.name, manifest["clock"])
assert manifest["clock"] == index["clock"], (manifest["clock"], index["clock"])

for f in manifest["files"]:
    data = (ckpt / f["name"]).read_bytes()
    assert len(data) == f["bytes"] and hashlib.sha256(data).hexdigest() == f["sha256"], f["name"]
files = {f["name"]: load_file(str(ckpt / f["name"])) for f in manifest["files"]}
metadata = {}
for f in manifest["files"]:
    with safe_open(str(ckpt / f["name"]), framework="numpy") as st:
        metadata[f["name"]] = st.metadata()
        m = metadata[f["name"]]
        assert (m["format"], m["checkpoint"], m["clock"]) == (str(manifest["format"]), manifest["name"], str(manifest["clock"])), (f["name"], m)

checked = 0
for t in manifest["tensors"]:
    parts = sorted(t["parts"], key=lambda p: p["offset"])
    whole = np.concatenate([files[p["file"]][p["key"]] for p in parts]).reshape(t["shape"])
    for p in parts:
        steps = metadata[p["file"]][f"steps/{t['name']}"]
        assert steps == str(p["optimizer_steps"]), (t["name"], p["file"], steps, p["optimizer_steps"])
        for slot, key in p["slots"].items():
            assert files[p["file"]][key].shape == (p["len"],), (t["name"], slot)
    pulled = np.fromfile(dump / (t["name"].replace("/", "_") + ".f32"), dtype="<f4")
    pulled = pulled.reshape(index["shapes"][t["name"]])
    assert whole.dtype == np.float32 and whole.shape == pulled.shape, (t["name"], whole.shape, pulled.shape)
    assert np.array_equal(whole, pulled), f"{t['name']}: checkpoint differs from the pulled values"
    checked += whole.size
print(f"python: {len(manifest['tensors'])} tensors ({checked} values) at clock {manifest['clock']} "
      f"equal what the worker pulled; {len(files)} shard files verified")
