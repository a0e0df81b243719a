"""Resident memory of serving an ONNX export of minilm-l6: the processor alone (now) against the processor
plus the torch encoder that ``OnnxEncoder`` built before the processor split, each in a fresh process.

    python benchmarks/onnx_rss.py [--encoder minilm-l6]

Prints a table and writes benchmarks/results/onnx_rss.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import gc, json, os, sys
import psutil
from hub import Hub
import hub.onnx as ho
directory, mode, name = sys.argv[1], sys.argv[2], sys.argv[3]
h = Hub()
proc = psutil.Process()
base = proc.memory_info().rss
enc = ho.OnnxEncoder(directory, registry=h.registry)
if mode == "with-torch-encoder":  # what OnnxEncoder held before: the whole torch encoder for preprocessing
    torch_encoder = h.registry.create_encoder(name)
enc.encode(["warm up the session", "and the tokenizer"])
gc.collect()
print(json.dumps({"mode": mode, "rss_mb": proc.memory_info().rss / 2**20, "baseline_mb": base / 2**20}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default=None, help="text encoder (default: the text modality's demo encoder)")
    args = ap.parse_args()
    from hub import Hub
    import hub.onnx as ho

    h = Hub()
    name = args.encoder or h.registry.modality("text").demo_encoder
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "export"
        ho.export("text", out, encoder=name, registry=h.registry)
        for mode in ("processor-only", "with-torch-encoder"):
            done = subprocess.run([sys.executable, "-c", CHILD, str(out), mode, name], capture_output=True, text=True,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
            if done.returncode:
                raise SystemExit(done.stderr[-2000:])
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'OnnxEncoder(' + name + ')':<34} {'RSS MB':>8}")
    for r in rows:
        print(f"{r['mode']:<34} {r['rss_mb']:>8.1f}")
    saved = rows[1]["rss_mb"] - rows[0]["rss_mb"]
    print(f"the processor split saves {saved:.1f} MB of resident memory per served export")
    path = Path(__file__).parent / "results" / "onnx_rss.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"encoder": name, "rows": rows, "saved_mb": saved}, indent=2) + "\n")


if __name__ == "__main__":
    main()
