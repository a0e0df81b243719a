"""Hostile files: every loader (bundles, aligned directories, exports, starter packs, checkpoints) treats a
directory as untrusted input, and every writer leaves either the previous complete version or the new one.

Each case builds a real directory with the public writers, then tampers with it as an attacker would:
escaping paths and symlinks, permission-widening options, absurd shapes, a pickle renamed
``.safetensors``, truncated safetensors, mismatched hashes, wrong format numbers, oversized JSON.
A hostile case whose hashes would give it away is re-hashed (an attacker writes consistent
hashes), so each check is shown to hold on its own.  The kill test SIGKILLs saves at seeded
random moments and loads after each kill.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from hub import Hub
from hub._atomic import atomic_dir
from hub._manifest import LegacyFormatWarning, file_options
from hub.errors import BundleError, ExportError
from hub.lm import MultimodalLM, Projector
from hub.train import AlignResult, align
from hub.train.checkpoints import load_checkpoint, save_checkpoint
from hub.weights import ENV_ALLOW_DOWNLOAD, download_policy

pytest.importorskip("hub_transformers")

PICKLE = pickle.dumps({"weight": np.zeros((4, 4), dtype=np.float32)}, protocol=4)  # what torch.save-style files start like


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rehash(root: Path, manifest: str, key: str = "files") -> None:
    """Recompute the manifest's hashes, as an attacker who edits files would (no symlink checks here)."""
    path = root / manifest
    m = json.loads(path.read_text())
    m[key] = {p.relative_to(root).as_posix(): sha(p) for p in sorted(root.rglob("*"))
              if p.is_file() and p.name != manifest and "checkpoint" not in p.relative_to(root).parts}
    path.write_text(json.dumps(m))


def edit(path: Path, **changes) -> dict:
    m = json.loads(path.read_text())
    m.update(changes)
    path.write_text(json.dumps(m))
    return m


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0  # pragma: no cover - not Linux


def fails_fast(fn, match: str, seconds: float = 20.0, mb: float = 300.0) -> None:
    """``fn`` raises BundleError matching ``match`` quickly and without a memory jump."""
    before, t = rss_mb(), time.perf_counter()
    with pytest.raises(BundleError, match=match):
        fn()
    took, grew = time.perf_counter() - t, rss_mb() - before
    assert took < seconds and grew < mb, (took, grew)


def img(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def h():
    return Hub()


@pytest.fixture(scope="module")
def saved_bundle(h, tmp_path_factory) -> Path:
    """tiny-llama + an image encoder instance (its weights travel in encoders/image) + an mlp projector."""
    lm = h.attach("tiny-llama")
    lm.plug("image", encoder=h.registry.create_encoder("tiny-clip", seed=5), projector="mlp")
    return lm.save(tmp_path_factory.mktemp("hostile") / "bundle")


@pytest.fixture
def bundle(saved_bundle, tmp_path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(saved_bundle, out)
    return out


# -- bundles ------------------------------------------------------------------------------------------


def test_a_saved_bundle_lists_every_file_with_its_hash_and_loads(h, bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["format"] == 2
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(m["files"]) == on_disk and all(m["files"][f] == sha(bundle / f) for f in on_disk)
    assert not list(bundle.parent.glob("bundle.tmp-*")) and not list(bundle.parent.glob("bundle.old-*"))
    lm = h.load(bundle)
    assert lm.forward("<image>", images=[img()]).shape[0] == 1


def test_bundle_paths_cannot_lead_out(h, bundle, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(bundle / "projectors" / "image", outside)
    m = json.loads((bundle / "manifest.json").read_text())
    for field, value, match in [("projector_dir", "../outside", "leads out"),
                                ("projector_dir", str(outside), "absolute path"),
                                ("encoder_dir", "/etc", "absolute path"),
                                ("encoder_dir", "encoders/../../outside", "leads out")]:
        bad = json.loads(json.dumps(m))
        bad["modalities"]["image"][field] = value
        (bundle / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(BundleError, match=f"modalities.image.{field}.*{match}"):
            h.load(bundle)
    (bundle / "manifest.json").write_text(json.dumps(m))
    # a symlink inside the bundle that leads out, with hashes the attacker recomputed
    shutil.rmtree(bundle / "projectors" / "image")
    (bundle / "projectors" / "image").symlink_to(outside, target_is_directory=True)
    rehash(bundle, "manifest.json")
    with pytest.raises(BundleError, match="symlink.*leading out"):
        h.load(bundle)


def test_backbone_outside_the_bundle_needs_an_explicit_argument(h, bundle, tmp_path):
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    m["backbone"]["source"] = str(tmp_path / "some-local-model")
    path.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="backbone.source.*outside the bundle.*backbone="):
        h.load(bundle)
    lm = MultimodalLM.load(bundle, registry=h.registry, backbone="tiny-llama")  # the caller chose it explicitly
    assert "image" in lm.plugged
    # the caller's own options win over the file's (an explicit argument beats the file)
    m["backbone"] = {"adapter": "transformers", "source": "tiny-llama", "options": {"seed": 3}}
    path.write_text(json.dumps(m))
    a = MultimodalLM.load(bundle, registry=h.registry).backbone
    b = MultimodalLM.load(bundle, registry=h.registry, backbone_options={"seed": 4}).backbone
    assert not torch.equal(a.embed_ids(torch.tensor([[1, 2]])), b.embed_ids(torch.tensor([[1, 2]])))


@pytest.mark.parametrize("where, options, match", [
    ("backbone", {"allow_download": True}, "allow_download=True would widen"),
    ("backbone", {"trust_remote_code": True}, "'trust_remote_code' is set by the file"),
    ("backbone", {"device": "cuda"}, "cannot choose devices"),
    ("backbone", {"hidden_size": 200_000}, "hidden_size=200000 exceeds the cap"),
    ("backbone", {"hidden_size": 4096, "num_layers": 4096}, "about .* parameters"),
    ("encoder", {"weights": "../../elsewhere"}, "is a local path"),
    ("encoder", {"token": "hf_xxx"}, "credentials"),
    ("encoder", {"nested": {"trust_remote_code": True}}, "trust_remote_code"),
])
def test_bundle_options_can_only_narrow(h, bundle, where, options, match):
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    if where == "backbone":
        m["backbone"]["options"] = options
    else:
        m["modalities"]["image"]["encoder_options"] = options
    path.write_text(json.dumps(m))
    fails_fast(lambda: h.load(bundle), match)


def test_narrowing_options_from_a_file_are_kept():
    assert file_options({"allow_download": False, "image_size": 32}, "x") == {"allow_download": False, "image_size": 32}
    assert file_options({"weights": "org/name"}, "x") == {"weights": "org/name"}


def test_absurd_shapes_fail_fast_without_allocating(h, bundle, tmp_path):
    # a projector.json claiming 200,000-wide layers: refused before anything is allocated
    proj = bundle / "projectors" / "image"
    edit(proj / "projector.json", in_dim=200_000, out_dim=200_000, hidden_dim=200_000)
    lm = h.attach("tiny-llama")
    fails_fast(lambda: lm.plug("image", encoder="tiny-clip", projector=proj), "200000.*refused before allocating")
    rehash(bundle, "manifest.json")
    fails_fast(lambda: h.load(bundle), "200000.*refused before allocating")
    # under the width cap but far too many parameters (checked on the meta device)
    edit(proj / "projector.json", in_dim=60_000, out_dim=60_000, hidden_dim=60_000, depth=16)
    fails_fast(lambda: Projector.load(proj), "parameters; refused before allocating")
    # an encoder config.json describing a model far larger than its safetensors (hashes recomputed)
    shutil.copytree(bundle, tmp_path / "b2")
    b2 = tmp_path / "b2"
    cfg = b2 / "encoders" / "image" / "config.json"
    raw = json.loads(cfg.read_text())
    for sub in [raw, *(v for v in raw.values() if isinstance(v, dict))]:
        sub["hidden_size"] = 200_000
    cfg.write_text(json.dumps(raw))
    rehash(b2, "manifest.json")
    fails_fast(lambda: h.load(b2), "describes a model of about .* parameters")


def test_pickles_and_truncated_safetensors_are_refused(h, bundle):
    weights = bundle / "projectors" / "image" / "projector.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(PICKLE)
    rehash(bundle, "manifest.json")
    with pytest.raises(BundleError, match="not a safetensors file.*pickle"):
        h.load(bundle)
    weights.write_bytes(good[: len(good) - 100])
    rehash(bundle, "manifest.json")
    with pytest.raises(BundleError, match="truncated"):
        h.load(bundle)
    weights.write_bytes(good)
    (bundle / "encoders" / "image" / "pytorch_model.bin").write_bytes(PICKLE)
    rehash(bundle, "manifest.json")
    with pytest.raises(BundleError, match="pytorch_model.bin.*pickle-format file; refused"):
        h.load(bundle)


def test_hashes_and_unlisted_files(h, bundle):
    weights = bundle / "projectors" / "image" / "projector.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte of a weight
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="projector.safetensors' does not match its manifest"):
        h.load(bundle)
    rehash(bundle, "manifest.json")
    (bundle / "encoders" / "image" / "extra.json").write_text("{}")  # not listed: transformers would read the folder
    with pytest.raises(BundleError, match="extra.json' is not listed"):
        h.load(bundle)
    (bundle / "encoders" / "image" / "extra.json").unlink()
    m = edit(bundle / "manifest.json", files={})
    with pytest.raises(BundleError, match="lists no file hashes"):
        h.load(bundle)
    m["files"] = {"../../etc/passwd": "0" * 64}
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="leads out"):
        h.load(bundle)


def test_formats_and_oversized_manifests(h, bundle):
    path = bundle / "manifest.json"
    good = json.loads(path.read_text())
    edit(path, format=3)
    with pytest.raises(BundleError, match="format 3; this modality-hub reads format 2, 1 .*newer"):
        h.load(bundle)
    legacy = {k: v for k, v in good.items() if k != "files"}
    path.write_text(json.dumps({**legacy, "format": 1}))
    with pytest.warns(LegacyFormatWarning, match="format 1.*not verified"):
        lm = h.load(bundle)  # format 1 still loads (every check but the hashes applies), with a warning
    assert "image" in lm.plugged
    path.write_text(json.dumps(good) + " " * (5 << 20))
    fails_fast(lambda: h.load(bundle), "refusing to parse more than")
    path.write_text("[" * 100_000)
    with pytest.raises(BundleError, match="not valid JSON"):
        h.load(bundle)


def test_torn_and_interrupted_saves_are_recovered_or_reported(h, bundle, tmp_path):
    stage = bundle.parent / "bundle.tmp-dead"
    # killed between the two renames: the previous version waits as .old-*, and is restored
    os.rename(bundle, bundle.parent / "bundle.old-dead")
    shutil.copytree(bundle.parent / "bundle.old-dead", stage)
    (stage / "manifest.json").unlink()
    with pytest.warns(RuntimeWarning, match="restored the previous complete version"):
        lm = h.load(bundle)
    assert "image" in lm.plugged and bundle.is_dir() and not (bundle.parent / "bundle.old-dead").exists()
    # a first save that never finished: only a stage, no previous version
    fresh = tmp_path / "fresh"
    shutil.move(str(stage), tmp_path / "fresh.tmp-dead")
    with pytest.raises(BundleError, match="is torn: a save of a bundle was interrupted"):
        h.load(fresh)


def test_writers_never_replace_a_directory_they_did_not_write(h, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    lm = h.attach("tiny-llama")
    with pytest.raises(BundleError, match="is not a bundle.*refusing to replace it"):
        lm.save(mine)
    assert (mine / "notes.txt").read_text() == "keep me" and not list(tmp_path.glob("mine.tmp-*"))
    with pytest.raises(ExportError, match="is not an ONNX export.*refusing to replace it"):
        with atomic_dir(mine, marker="manifest.json", what="an ONNX export", error=ExportError):
            pass
    # a failure inside the writer leaves the previous version untouched and no stage behind
    lm.save(tmp_path / "b")
    before = sha(tmp_path / "b" / "manifest.json")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(tmp_path / "b", marker="manifest.json", what="a bundle") as stage:
            (stage / "manifest.json").write_text("{}")
            raise RuntimeError("boom")
    assert sha(tmp_path / "b" / "manifest.json") == before and not list(tmp_path.glob("b.tmp-*"))


# -- aligned directories and checkpoints --------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_aligned(tmp_path_factory) -> Path:
    pairs = [(img(i), f"a picture number {i % 2}") for i in range(4)]
    out = tmp_path_factory.mktemp("hostile") / "aligned"
    align("image", pairs, encoder="tiny-clip", anchor_encoder="tiny-bert", epochs=1, batch_size=4,
          train_encoder=True, progress=False, out_dir=out)
    return out


@pytest.fixture
def aligned(saved_aligned, tmp_path) -> Path:
    out = tmp_path / "aligned"
    shutil.copytree(saved_aligned, out)
    return out


def test_aligned_directory_round_trip_keeps_the_checkpoint(aligned):
    m = json.loads((aligned / "align.json").read_text())
    assert m["format"] == 2 and {"projector.json", "projector.safetensors", "encoder/config.json"} <= set(m["files"])
    assert (aligned / "checkpoint" / "state.json").is_file()  # kept through the atomic swap
    again = AlignResult.load(aligned)
    assert again.embed_aligned([img(9)]).shape[0] == 1


@pytest.mark.parametrize("change, rehashed, match", [
    ({"encoder_dir": "../aligned-elsewhere"}, False, "encoder_dir.*leads out"),
    ({"encoder_dir": "/tmp"}, False, "absolute path"),
    ({"anchor_options": {"trust_remote_code": True}}, False, "trust_remote_code"),
    ({"encoder_options": {"allow_download": True}}, False, "would widen"),
    ({"format": 7}, False, "format 7"),
])
def test_aligned_directory_manifest_is_checked(aligned, change, rehashed, match):
    edit(aligned / "align.json", **change)
    fails_fast(lambda: AlignResult.load(aligned), match)


def test_aligned_directory_files_are_checked(aligned):
    (aligned / "projector.safetensors").write_bytes(PICKLE)
    with pytest.raises(BundleError, match="projector.safetensors' does not match"):
        AlignResult.load(aligned)
    rehash(aligned, "align.json")
    with pytest.raises(BundleError, match="pickle"):
        AlignResult.load(aligned)
    (aligned / "align.json").write_text(" " * (5 << 20))
    fails_fast(lambda: AlignResult.load(aligned), "refusing to parse")


class _Cfg(BaseModel):
    lr: float = 0.1


def _train_state(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt


def test_checkpoints_are_atomic_and_checked(tmp_path):
    model, opt = _train_state()
    state = {"epoch": 1, "losses": [1.0], "config": _Cfg().model_dump()}
    ckpt = save_checkpoint(tmp_path, {"encoder": model}, opt, state)
    assert not list(tmp_path.glob("checkpoint.tmp-*"))
    fresh, fresh_opt = _train_state(1)
    assert load_checkpoint(tmp_path, {"encoder": fresh}, fresh_opt, _Cfg())["epoch"] == 1
    assert torch.equal(fresh.weight, model.weight)

    good = (ckpt / "encoder.safetensors").read_bytes()
    (ckpt / "encoder.safetensors").write_bytes(PICKLE)
    with pytest.raises(BundleError, match="encoder.safetensors' does not match"):
        load_checkpoint(tmp_path, {"encoder": fresh}, fresh_opt, _Cfg())
    payload = json.loads((ckpt / "state.json").read_text())
    payload.pop("files")  # a checkpoint without hashes: the header check still refuses the pickle
    (ckpt / "state.json").write_text(json.dumps(payload))
    with pytest.raises(BundleError, match="pickle"):
        load_checkpoint(tmp_path, {"encoder": fresh}, fresh_opt, _Cfg())
    (ckpt / "encoder.safetensors").write_bytes(good[:-8])
    with pytest.raises(BundleError, match="truncated"):
        load_checkpoint(tmp_path, {"encoder": fresh}, fresh_opt, _Cfg())
    (ckpt / "encoder.safetensors").write_bytes(good)
    with pytest.raises(BundleError, match=r"shape mismatch .*weight: expected \(5, 4\), got \(3, 4\)"):
        load_checkpoint(tmp_path, {"encoder": torch.nn.Linear(4, 5)}, fresh_opt, _Cfg())
    with open(ckpt / "state.json", "r+b") as f:  # a sparse 80 MB state.json: refused by its size, unread
        f.truncate(80 << 20)
    fails_fast(lambda: load_checkpoint(tmp_path, {"encoder": fresh}, fresh_opt, _Cfg()), "refusing to parse")


# -- exports --------------------------------------------------------------------------------------------


@pytest.fixture
def export_dir(tmp_path) -> Path:
    """An export's manifest (the loaders' checks run before ONNX Runtime sees the graph)."""
    from hub.onnx import FORMAT

    d = tmp_path / "export"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"graph bytes")
    manifest = {
        "format": FORMAT, "modality": "text", "encoder": "tiny-bert", "encoder_options": {}, "weights": None,
        "space": "text/tiny-bert", "opset": 18, "inputs": [], "outputs": [{"name": "tokens", "dtype": "float32",
                                                                           "shape": ["batch", "n", 32]}],
        "preprocess": {"encoder": "tiny-bert", "options": {}}, "hashes": {"model.onnx": sha(d / "model.onnx")},
        "parity": {"passed": True, "tolerance": 1e-4, "metric": "max_abs_diff", "cases": []},
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


@pytest.mark.parametrize("change, match", [
    ({"hashes": {"../../etc/passwd": "0" * 64}}, "leads out"),
    ({"hashes": {"/etc/passwd": "0" * 64}}, "absolute path"),
    ({"preprocess": {"encoder": "tiny-bert", "options": {"weights": "/home/someone/model"}}}, "is a local path"),
    ({"preprocess": {"encoder": "tiny-bert", "options": {}, "processor_dir": "../x"}}, "leads out"),
    ({"encoder_options": {"allow_download": True}}, "would widen"),
    ({"encoder_options": {"trust_remote_code": True}}, "trust_remote_code"),
    ({"format": 99}, "format 99"),
])
def test_export_manifests_are_checked(export_dir, change, match):
    from hub.onnx import load_manifest

    edit(export_dir / "manifest.json", **change)
    fails_fast(lambda: load_manifest(export_dir), match)


def test_export_weights_inside_resolve_there_and_tampering_is_refused(h, export_dir):
    from hub.onnx import OnnxEncoder, load_manifest

    (export_dir / "encoder").mkdir()
    edit(export_dir / "manifest.json", preprocess={"encoder": "tiny-bert", "options": {"weights": "encoder"}})
    m = load_manifest(export_dir)
    assert m.preprocess["options"]["weights"] == str((export_dir / "encoder").resolve())
    (export_dir / "model.onnx").write_bytes(b"other graph")
    with pytest.raises(BundleError, match="model.onnx.*does not match"):
        OnnxEncoder(export_dir, hub=h)
    (export_dir / "manifest.json").write_text("{" + " " * (5 << 20) + "}")
    fails_fast(lambda: load_manifest(export_dir), "refusing to parse")


def test_export_external_data_must_stay_inside(export_dir, tmp_path):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from hub.onnx import load_manifest

    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 4])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "64")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])], [weight])
    (export_dir / "model.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    rehash(export_dir, "manifest.json", key="hashes")
    fails_fast(lambda: load_manifest(export_dir), "keeps tensor 'w' in: '../secret.bin' leads out")


# -- starter packs --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_pack(h, tmp_path_factory) -> Path:
    from hub_starter import build_starter_pack
    from hub_starter.pack import ModalityPlan, StarterBudget

    budget = StarterBudget(name="hostile", plans={"graph": ModalityPlan(
        modality="graph", data={"per_class": 2, "nodes": (6, 8)}, encoder="gin", align_epochs=1, align_batch_size=8)})
    root = tmp_path_factory.mktemp("hostile") / "pack"
    build_starter_pack(root, budget=budget, progress=False, hub=h)
    return root


@pytest.fixture
def pack(saved_pack, tmp_path) -> Path:
    out = tmp_path / "pack"
    shutil.copytree(saved_pack, out)
    return out


def _pack_json(pack: Path, fn) -> None:
    path = pack / "pack.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


@pytest.mark.parametrize("tamper, match", [
    (lambda m: m["budget"]["plans"]["graph"]["data"].update(per_class=10**9), "per_class=1000000000 is outside"),
    (lambda m: m["budget"]["plans"]["graph"]["data"].update(nodes=[6, 10**6]), "outside"),
    (lambda m: m["budget"]["plans"]["graph"]["data"].update(shell="rm -rf /"), "'shell' is not accepted"),
    (lambda m: m["budget"]["plans"].update(audio={**m["budget"]["plans"]["graph"], "modality": "audio",
                                                  "data": {"voices": ["/etc/passwd"]}})
     or m["modalities"].update(audio=m["modalities"]["graph"]), "voice '/etc/passwd'"),
    (lambda m: m["modalities"].update({"../graph": m["modalities"]["graph"]})
     or m["budget"]["plans"].update({"../graph": m["budget"]["plans"]["graph"]}), "no starter data"),
    (lambda m: m["modalities"]["graph"].update(encoder_state="../../evil.safetensors"), "must name a .safetensors file"),
    (lambda m: m.update(format=5), "format 5"),
])
def test_starter_pack_json_is_checked(h, pack, tamper, match):
    from hub_starter import load_starter_pack

    _pack_json(pack, tamper)
    fails_fast(lambda: load_starter_pack(pack, hub=h), match)


def test_starter_pack_files_are_checked(h, pack):
    from hub_starter import load_starter_pack

    assert load_starter_pack(pack, hub=h).modalities == ["graph"]
    (pack / "graph" / "evil.safetensors").write_bytes(PICKLE)
    _pack_json(pack, lambda m: m["modalities"]["graph"].update(encoder_state="evil.safetensors"))
    with pytest.raises(BundleError, match="pickle"):
        load_starter_pack(pack, hub=h)
    (pack / "graph" / "projector.json").write_text((pack / "graph" / "projector.json").read_text() + " ")
    with pytest.raises(BundleError, match="projector.json' does not match"):
        load_starter_pack(pack, hub=h)
    (pack / "pack.json").write_text(" " * (5 << 20))
    fails_fast(lambda: load_starter_pack(pack, hub=h), "refusing to parse")


# -- the permission rule ------------------------------------------------------------------------------


def test_download_rule_argument_then_environment_then_default(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv(ENV_ALLOW_DOWNLOAD, raising=False)
    assert download_policy() == (True, "the default")  # the ecosystem's convention
    monkeypatch.setenv(ENV_ALLOW_DOWNLOAD, "0")
    assert download_policy() == (False, f"{ENV_ALLOW_DOWNLOAD}=0")
    assert download_policy(True) == (True, "allow_download=True")  # an explicit argument wins
    monkeypatch.setenv(ENV_ALLOW_DOWNLOAD, "1")
    assert download_policy(False) == (False, "allow_download=False")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the ecosystem's off switch: nothing turns downloads back on
    assert download_policy(True) == (False, "HF_HUB_OFFLINE=1")


def test_the_offline_error_names_the_rule(h):
    from hub.errors import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match=r"downloads are off \(HF_HUB_OFFLINE=1\).*unset HF_HUB_OFFLINE"):
        h.registry.create_encoder("hf-text", weights="someone/not-cached-model")


# -- the kill test ------------------------------------------------------------------------------------

KILLS = 20
KILL_SEED = 11

#: a process that builds a multimodal LM once, then forks one saver per "save" line: the saver prints
#: "started <pid>", saves (backbone included, so a save takes a while), prints "done <pid>"; "reap" waits for it
SAVER = textwrap.dedent("""
    import os, sys, torch
    torch.set_num_threads(1)
    from hub import Hub
    h = Hub()
    lm = h.attach("tiny-llama")
    lm.plug("image", encoder=h.registry.create_encoder("tiny-clip", seed=5), projector="mlp")
    target = sys.argv[1]
    print("ready", flush=True)
    pid = None
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "save":
            pid = os.fork()
            if pid == 0:
                with torch.no_grad():
                    for p in lm._plugged["image"].projector.parameters():
                        p.fill_(float(arg))  # each save writes different weights: which version loads is visible
                print(f"started {os.getpid()}", flush=True)
                lm.save(target, include_backbone=True)
                print(f"done {os.getpid()}", flush=True)
                os._exit(0)
        elif cmd == "reap":
            _, status = os.waitpid(pid, 0)
            print(f"exit {status}", flush=True)
        elif cmd == "quit":
            break
""")


def _version(h, target: Path) -> float:
    """Load the bundle fully and return the value its projector weights were filled with."""
    lm = MultimodalLM.load(target, registry=h.registry)
    return float(next(lm._plugged["image"].projector.parameters()).detach().flatten()[0])


@pytest.mark.slow
def test_kill_during_save_leaves_a_complete_version(h, tmp_path):
    target = tmp_path / "bundle"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)

    def send(cmd: str) -> None:
        proc.stdin.write(cmd + "\n")
        proc.stdin.flush()

    def expect(word: str) -> str:
        line = proc.stdout.readline().strip()
        assert line.startswith(word), (word, line)
        return line

    started = time.perf_counter()
    try:
        expect("ready")
        ready = time.perf_counter() - started
        t = time.perf_counter()  # version 0: one complete save, timed
        send("save 0")
        expect("started")
        expect("done")
        save_seconds = time.perf_counter() - t
        send("reap")
        expect("exit")
        assert _version(h, target) == 0.0
        rng = random.Random(KILL_SEED)
        mid_write, outcomes, current = 0, [], 0.0
        for k in range(1, KILLS + 1):
            send(f"save {k}")
            pid = int(expect("started").split()[1])
            time.sleep(rng.uniform(0.0, 1.5 * save_seconds))
            os.kill(pid, signal.SIGKILL)
            send("reap")
            line = proc.stdout.readline().strip()
            finished = line.startswith("done")
            if finished:
                line = proc.stdout.readline().strip()
            assert line.startswith("exit"), line
            mid_write += not finished
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # "restored the previous complete version"
                    loaded = _version(h, target)
            except BundleError as exc:  # pragma: no cover - a clear error is allowed, never a crash or torn load
                outcomes.append(("error", str(exc)))
                continue
            assert loaded in (current, float(k)), (loaded, current, k)  # the previous complete version or the new
            assert not finished or loaded == float(k)  # a save that finished is what loads
            current = loaded
            outcomes.append(("new" if loaded == float(k) else "previous", finished))
        send("quit")
    finally:
        proc.kill()
        proc.wait(timeout=30)
    errors = [o for o in outcomes if o[0] == "error"]
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "bundle")  # killed stages are cleaned on load
    print(f"\nkill test: saver ready in {ready:.1f}s, {KILLS} rounds in {time.perf_counter() - started - ready:.1f}s; "
          f"{KILLS} kills (seed {KILL_SEED}, save {save_seconds * 1000:.0f} ms), {mid_write} landed "
          f"mid-write; loads: {sum(o[0] == 'new' for o in outcomes)} new, {sum(o[0] == 'previous' for o in outcomes)} "
          f"previous, {len(errors)} errors; leftovers after the last load: {leftovers}")
    assert mid_write > 0, "no kill landed mid-write: the saves are too fast for the delays"
    assert not errors, errors  # a complete version existed before the first kill, so every load must succeed
    assert len(outcomes) == KILLS and not leftovers, leftovers
