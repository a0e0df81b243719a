"""The plugin author's kit (issue 10): a plugin written from CONTRIBUTING.md alone passes the hub's
suites and exports; export takes any collate key name; ONNX Runtime failures are typed; augmentation
conformance catches broken augmentations; untrained presets warn once.

``tests/fixtures/plugins/tabular`` (``hub_tabular``) is pip-installed into a temporary target and found
through its real entry point by a fresh :class:`Registry`.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import Field

from hub import AugmentationSpec, Hub, Registry, hookimpl
from hub import _untrained
from hub.augment import AugmentParams
from hub.errors import ExportError, InvalidInputError, UntrainedWeightsWarning
from hub.onnx import OnnxEncoder, export
from hub.onnx.parity import feed_keys, graph_input_names
from hub.onnx.manifest import TensorSpec
from hub.testing import EncoderConformance, check_augmentation, registered_plugin

ROOT = Path(__file__).resolve().parents[1]
EXPORT = sys.modules["hub.onnx.export"]  # the module (``hub.onnx.export`` the attribute is the function)


# -- the fixture plugin, installed for real ------------------------------------------------------------
@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(ROOT / "tests" / "fixtures" / "plugins" / "tabular")],
        check=True, capture_output=True, timeout=300,
    )
    return target


@pytest.fixture(scope="module")
def kit(site) -> Hub:
    """A hub over a fresh registry that finds ``hub_tabular`` through its entry point (sys.path restored after)."""
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        hub = Hub(Registry())
        hub.modalities()  # load the entry points while the target is on sys.path
        yield hub
    finally:
        sys.path.remove(str(site))
        importlib.invalidate_caches()


def rows(kit: Hub, n: int = 6, seed: int = 0) -> list[dict]:
    return kit.registry.modality("tabular").examples(n, seed)


BAD_ROWS = [{}, {"a": float("nan")}, {"a": "x"}, {1: 2.0}, [1.0, 2.0], {"flag": True}]


def test_tabular_plugin_is_found_through_its_entry_point(kit):
    info = {p.name: p for p in kit.plugins()}["tabular"]
    assert info.ok and info.distribution == "modality-hub-tabular"
    assert info.modalities == ("tabular",) and info.encoders == ("tabular-hash",)
    assert set(kit.augmentations("tabular")) == {"tabular/column_dropout", "tabular/jitter"}
    items = rows(kit)
    assert all(kit.detect(x) == "tabular" for x in items)
    te = kit.embed(items)
    assert te.modality == "tabular" and te.lengths.tolist() == [len(x) for x in items]


def test_mhub_plugins_lists_the_tabular_plugin(site):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "hub.cli", "plugins", "--json"], capture_output=True, text=True,
                         env=env, timeout=300, check=True).stdout
    data = json.loads(out)
    assert data["modalities"]["tabular"]["distribution"] == "modality-hub-tabular"


class TestTabularConformance(EncoderConformance):
    @pytest.fixture(params=[{}, {"dim": 8, "buckets": 7}])
    def encoder(self, request, kit):
        return kit.encoder("tabular-hash", **request.param)

    @pytest.fixture
    def items(self, kit):
        return [*rows(kit, 3), {"a": 1, "b": np.float32(2.5)}]  # ints and numpy scalars are numbers too

    @pytest.fixture
    def bad_items(self):
        return BAD_ROWS


@pytest.mark.parametrize("name", ["column_dropout", "jitter"])
def test_tabular_augmentations_conform(kit, name):
    check_augmentation(f"tabular/{name}", [*rows(kit, 4), {"only": 3.0}], BAD_ROWS[:4], hub=kit)


@pytest.mark.parametrize("pooled", [False, True])
def test_tabular_exports_to_onnx(kit, tmp_path, pooled):
    m = export("tabular", tmp_path / "tab", pooled=pooled, hub=kit)
    assert m.parity.passed and [s.name for s in m.inputs] == ["columns", "values", "input_mask"]
    oe = OnnxEncoder(tmp_path / "tab", hub=kit)
    items = rows(kit, 9, seed=7)
    ref, got = kit.encoder("tabular-hash").encode(items), oe.encode(items)
    if pooled:
        torch.testing.assert_close(got.pooled(), ref.pooled(), rtol=0, atol=1e-4)
    else:
        assert torch.equal(got.mask, ref.mask)
        torch.testing.assert_close(got.tokens[ref.mask], ref.tokens[ref.mask], rtol=0, atol=1e-4)


# -- graph input names ------------------------------------------------------------------------------
def test_graph_input_names_never_clash():
    assert graph_input_names(["input_ids", "attention_mask"]) == {"input_ids": "input_ids",
                                                                   "attention_mask": "attention_mask"}
    got = graph_input_names(["mask", "tokens", "pooled", "input_mask", "x"])
    assert got == {"mask": "input_input_mask", "tokens": "input_tokens", "pooled": "input_pooled",
                   "input_mask": "input_mask", "x": "x"}
    assert len(set(got.values())) == len(got) and not set(got.values()) & {"tokens", "mask", "pooled"}


def test_feed_keys_maps_graph_inputs_back_to_collate_keys():
    spec = lambda n: TensorSpec(name=n, dtype="float32", shape=["batch"])  # noqa: E731
    keys = ["mask", "input_mask"]
    pairs = feed_keys(keys, [spec("input_input_mask"), spec("input_mask")])
    assert [(s.name, k) for s, k in pairs] == [("input_input_mask", "mask"), ("input_mask", "input_mask")]
    # an export made before the renaming (a pooled one could name an input 'mask') still feeds
    assert [k for _, k in feed_keys(["patches", "mask"], [spec("patches"), spec("mask")])] == ["patches", "mask"]
    with pytest.raises(InvalidInputError, match="'values'.*collate gave"):
        feed_keys(["columns"], [spec("values")])


def test_a_clash_left_to_onnx_runtime_is_an_export_error(kit, tmp_path, monkeypatch):
    """Without the renaming ONNX Runtime refuses the graph ("Duplicate definition of name (mask)"): typed, with the fix."""
    monkeypatch.setattr(EXPORT, "graph_input_names", lambda keys: {k: k for k in keys})
    with pytest.raises(ExportError, match=r"(?s)failed loading.*Duplicate definition.*Fix: .*rename"):
        export("tabular", tmp_path / "dup", hub=kit)
    assert not (tmp_path / "dup").exists()


def test_onnx_runtime_failures_during_export_are_export_errors(kit, tmp_path, monkeypatch):
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, NotImplemented as OrtNotImplemented

    real = ort.InferenceSession

    def refuse(*args, **kwargs):
        raise OrtNotImplemented("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for Foo")

    monkeypatch.setattr(ort, "InferenceSession", refuse)
    with pytest.raises(ExportError, match=r"(?s)ONNX Runtime .* failed loading.*NOT_IMPLEMENTED.*Fix: .*opset"):
        export("tabular", tmp_path / "a", hub=kit)

    class Failing:
        def __init__(self, *args, **kwargs):
            self._session = real(*args, **kwargs)

        def run(self, *args, **kwargs):
            raise Fail("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Reshape node")

    monkeypatch.setattr(ort, "InferenceSession", Failing)
    with pytest.raises(ExportError, match=r"(?s)failed running.*Reshape.*Fix: .*specialises"):
        export("tabular", tmp_path / "b", hub=kit)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_both_feed_paths_map_a_renamed_input(kit, tmp_path):
    """numpy feeds (CPU) and IO binding (the CUDA path, run on CPU here) feed collate 'mask' to 'input_mask'."""
    export("tabular", tmp_path / "t", hub=kit)
    oe = OnnxEncoder(tmp_path / "t", hub=kit)
    items = rows(kit, 3)
    t = oe.collate([oe.prepare(x) for x in items])
    assert set(t) == {"columns", "values", "mask"}
    fed, bound = oe.run(**t), oe._wrap(oe._run_bound(t, "cpu", 0))
    assert torch.equal(fed.tokens, bound.tokens) and torch.equal(fed.mask, t["mask"])


# -- augmentation conformance catches what it should -------------------------------------------------------
class _Share(AugmentParams):
    share: float = Field(0.5, ge=0, le=1)


def _ok(item, rng, **params):
    from hub.augment import parse_params

    p = parse_params(_Share, params, "ok")
    from hub_tabular._augment import read_row

    row = read_row(item)
    return {k: v * (1 + p.share * float(rng.normal())) for k, v in row.items()}


def _mutates(item, rng, **params):
    out = _ok(item, rng, **params)
    item.update(out)  # in place
    return out


def _unseeded(item, rng, **params):
    return _ok(item, np.random.default_rng(), **params)


def _no_validation(item, rng, **params):
    from hub_tabular._augment import read_row

    return {k: v + float(rng.normal()) for k, v in read_row(item).items()}


def _wrong_output(item, rng, **params):
    return [v for v in _ok(item, rng, **params).values()]


def _accepts_anything(item, rng, **params):
    try:
        return _ok(item, rng, **params)
    except InvalidInputError:
        return {"x": 0.0}


class _Broken:
    @hookimpl
    def register_augmentations(register):  # noqa: N805 - pluggy calls it on the object
        for name, fn in [("ok", _ok), ("mutates", _mutates), ("unseeded", _unseeded),
                         ("no_validation", _no_validation), ("wrong_output", _wrong_output),
                         ("accepts_anything", _accepts_anything)]:
            register(AugmentationSpec(name, "tabular", fn, _Share))


@pytest.mark.parametrize("name,check", [
    ("mutates", "check_input_unchanged"), ("unseeded", "check_augmentation_seeded"),
    ("no_validation", "check_augmentation_params"), ("wrong_output", "check_output_valid"),
    ("accepts_anything", "check_augmentation_bad_items"),
])
def test_augmentation_conformance_catches_broken_augmentations(kit, name, check):
    with registered_plugin(_Broken, name="broken-augs", registry=kit.registry):
        check_augmentation("tabular/ok", rows(kit, 3), [{}], hub=kit)  # the well-behaved one passes
        with pytest.raises(AssertionError, match=f"tabular/{name}: {check}"):
            check_augmentation(f"tabular/{name}", rows(kit, 3), [{}], hub=kit)


# -- untrained presets say so ----------------------------------------------------------------------
def _untrained_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, UntrainedWeightsWarning)]


def test_untrained_preset_warns_once_per_encoder_per_process(hub, kit):
    _untrained.reset()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        hub.embed(["a cat", "a dog"], encoder="tiny-bert")
        hub.embed(["again"], encoder="tiny-bert")
        hub.embed(["a cat"], encoder="tiny-bert", runtime="torch", batch_size=1)
        kit.embed(rows(kit, 2))  # another untrained preset: its own warning
        kit.embed(rows(kit, 2))
    got = _untrained_warnings(record)
    assert len(got) == 2, got
    assert "'tiny-bert' (text) is an untrained preset" in got[0] and "'tabular-hash'" in got[1]
    assert "align" in got[0] and "mhub starter-pack" in got[0]  # the trained alternatives are named
    assert "minilm-l6" in got[0]  # and the modality's pretrained encoders
    assert all(w.filename == __file__ for w in record if issubclass(w.category, UntrainedWeightsWarning))
    _untrained.reset()  # a new process (as far as the warning knows): it fires again
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        hub.embed(["a cat"], encoder="tiny-bert")
    assert len(_untrained_warnings(record)) == 1


def test_an_export_of_an_untrained_preset_warns_too(kit, tmp_path):
    export("tabular", tmp_path / "tab", hub=kit)
    _untrained.reset()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        kit.embed(rows(kit, 3), runtime="onnx", onnx_dir=tmp_path / "tab")
        kit.embed(rows(kit, 3), runtime="onnx", onnx_dir=tmp_path / "tab")
    got = _untrained_warnings(record)
    assert len(got) == 1 and "'tabular-hash' (tabular) is an untrained preset" in got[0]


def test_pretrained_and_trained_encoders_do_not_warn(hub):
    _untrained.reset()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        hub.embed(["a cat"], encoder="minilm-l6")  # the packaged, pretrained text model
    assert _untrained_warnings(record) == []
    trained = SimpleNamespace(name="gin", modality="graph", pretrained=False, weights="/runs/gin-pretrained")
    assert not _untrained.is_untrained(trained)  # an untrained preset given trained weights (weights=DIR)
    assert _untrained.is_untrained(SimpleNamespace(name="gin", modality="graph", pretrained=False,
                                                   weights="random-init(seed=0)"))
    assert not _untrained.is_untrained(SimpleNamespace(name="x", pretrained=True, weights="random-init(seed=0)"))
    assert not _untrained.is_untrained(SimpleNamespace(name="x", manifest=SimpleNamespace(weights="org/model")))


def test_untrained_warning_is_thread_safe():
    _untrained.reset()
    enc = SimpleNamespace(name="fake-preset", modality="x", pretrained=False, weights=None)
    fired: list[bool] = []
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=lambda: fired.append(_untrained.warn_untrained(enc))) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert fired.count(True) == 1 and len(_untrained_warnings(record)) == 1
    _untrained.reset()
