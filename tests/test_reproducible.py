"""Issue 17, part 1: the tiny starter pack built twice, in separate processes with different inference-time
thread counts, gives the same weights (bit for bit) and the same eval numbers; pack.json and eval.json
record the pinned environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="the starter pack's spoken digits need the espeak-ng program (apt-get install espeak-ng)")

# one process: set its own (inference) thread count, build the tiny pack pinned (a child process), load,
# evaluate, and print what the test compares
SCRIPT = textwrap.dedent("""
    import hashlib, json, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(int(sys.argv[2]))
    from hub.weights import state_dict_sha256
    from hub_starter import build_starter_pack, evaluate
    root = Path(sys.argv[1])
    pack = build_starter_pack(root, budget="tiny", isolated=True, progress=False)
    report = evaluate(pack)
    from safetensors import safe_open

    def content(path):  # tensors and metadata, in sorted order: safetensors writes __metadata__ in hash-map order
        h = hashlib.sha256()
        with safe_open(str(path), "pt") as f:
            h.update(json.dumps(sorted((f.metadata() or {}).items())).encode())
            for name in sorted(f.keys()):
                t = f.get_tensor(name).contiguous()
                h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode() + t.view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    files = {str(p.relative_to(root)): content(p) for p in sorted(root.rglob("*.safetensors"))}
    modules = {m: {"encoder": state_dict_sha256(r.encoder), "projector": state_dict_sha256(r.projector)}
               for m, r in pack.results.items()}
    numbers = {"zero_shot": {m: {k: r[k] for k in ("top1", "top5", "n", "confusion")}
                             for m, r in report["zero_shot"].items()},
               "retrieval": report["retrieval"]}
    print("RESULT " + json.dumps({"files": files, "modules": modules, "numbers": numbers,
                                  "threads": torch.get_num_threads()}))
""")


def _run(root, threads: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "MODALITY_HUB_CACHE": str(root / "cache")}
    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "MHUB_PINNED_BUILD"):
        env.pop(name, None)  # the inference process is not pinned; only the build is
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(root / "pack"), str(threads)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
@needs_espeak
def test_two_builds_in_separate_processes_are_identical(tmp_path):
    runs, seconds = [], []
    for threads in (1, 2):
        t = time.perf_counter()
        runs.append(_run(tmp_path / f"run{threads}", threads))
        seconds.append(time.perf_counter() - t)
    one, two = runs
    assert (one["threads"], two["threads"]) == (1, 2)  # inference really ran with different thread counts
    assert set(one["modules"]) == {"image", "audio", "graph", "3d"}
    assert len(one["files"]) >= 8 and one["files"] == two["files"]  # every tensor of every .safetensors, bit for bit
    assert one["modules"] == two["modules"]  # the loaded encoders and projectors
    assert one["numbers"] == two["numbers"]  # zero-shot and retrieval, confusion matrices included
    for r in one["numbers"]["zero_shot"].values():
        assert 0 <= r["top1"] <= r["top5"] <= 1 and r["n"] > 0

    manifest = json.loads((tmp_path / "run2" / "pack" / "pack.json").read_text())
    env = manifest["environment"]
    assert env["pinned"] and env["deterministic_algorithms"] and env["torch_threads"] == 1
    assert env["variables"]["ATEN_CPU_CAPABILITY"] == env["cpu_capability"].lower()  # ATen obeyed the pin
    assert env["variables"]["OMP_NUM_THREADS"] == "1"
    assert "espeak-ng" in manifest["versions"] and "torch" in manifest["versions"]
    assert all(info["fingerprint_kind"] == "content" for info in manifest["modalities"].values())

    report = json.loads((tmp_path / "run2" / "pack" / "eval" / "eval.json").read_text())
    assert report["environment"]["build"]["cpu_capability"] == env["cpu_capability"]
    assert report["environment"]["eval"]["torch_threads"] == 2 and not report["environment"]["eval"]["pinned"]
    assert report["environment"]["eval"]["versions"]["espeak-ng"].startswith("eSpeak NG")
    print(f"two tiny builds + evals: {seconds[0]:.1f}s and {seconds[1]:.1f}s")


def test_deterministic_sets_and_restores_torch_state():
    import torch

    from hub_starter.determinism import deterministic

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(2)
    try:
        with deterministic(1) as env:
            assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
            assert env["torch_threads"] == 1 and env["deterministic_algorithms"] and env["cpu_capability"]
        assert torch.get_num_threads() == 2 and torch.are_deterministic_algorithms_enabled() == before[1]
        with pytest.raises(RuntimeError), deterministic(1):  # restored on errors too
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before[0])


def test_pinned_env_names_the_instruction_set_and_threads():
    from hub.errors import InvalidOptionsError
    from hub_starter.determinism import pinned_env

    env = pinned_env(2)
    assert env["ATEN_CPU_CAPABILITY"] in ("avx2", "default") and env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert pinned_env(1, "default")["ATEN_CPU_CAPABILITY"] == "default"
    with pytest.raises(InvalidOptionsError, match="threads"):
        pinned_env(0)


def test_fingerprint_hashes_item_content_not_only_labels():
    import numpy as np

    from hub_starter import digit_images, graph_families, primitive_shapes

    for data in (digit_images(0, per_class=2, size=8), graph_families(0, per_class=2, nodes=(6, 8)),
                 primitive_shapes(0, per_class=2, points=32)):
        before = data.fingerprint()
        assert before == data.fingerprint() and len(before) == 16
        item = data.items[0]
        if data.modality == "image":
            pixels = np.asarray(item).copy()
            pixels[0, 0, 0] ^= 1
            from PIL import Image

            data.items[0] = Image.fromarray(pixels)
        elif data.modality == "graph":
            item = item.copy()
            item.add_edge(0, max(item.nodes))
            if item.number_of_edges() == data.items[0].number_of_edges():
                item.remove_edge(0, max(item.nodes))
            data.items[0] = item
        else:
            data.items[0] = item + np.float32(1e-3)
        assert data.fingerprint() != before, data.modality  # same labels and split, other content
        assert data.label_fingerprint() == data.label_fingerprint()
