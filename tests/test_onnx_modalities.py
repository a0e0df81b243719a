"""ONNX export + ONNX Runtime parity for the audio, graph and 3D encoders (issue 5).

Every offline preset of the three plugins goes through ``hub.onnx.export`` (fp32,
dynamic batch / windows / frames / nodes / edges / points) and is served by
``hub.onnx.OnnxEncoder``; its tokens must match the PyTorch encoder (max abs
diff <= 1e-4 on real tokens, same mask) at batch sizes 1, 2 and 7 on items of
varied sizes from each modality's ``examples``, and the plugins' graphs must keep
every collate input.  A projector from a ``MultimodalLM`` bundle and the pooling are
fused in one more export per modality.  A table of the max diffs is printed at the end.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from hub import Hub, TokenEmbeddings  # noqa: E402
from hub.onnx import OnnxEncoder, export  # noqa: E402

TOL = 1e-4
#: every preset of the three plugins that needs no downloaded weights
PRESETS = [
    ("audio", "tiny-whisper", {}), ("audio", "tiny-wav2vec2", {}), ("audio", "tiny-hubert", {}), ("audio", "tiny-clap", {}),
    ("audio", "tiny-whisper", {"pool_stride": 2}),  # the masked average pool reads frame_mask
    ("graph", "gin", {}), ("graph", "gat", {}), ("graph", "sage", {}), ("graph", "gps", {}),
    ("3d", "tiny-point-bert", {}), ("3d", "tiny-pointnet2", {}),
]
#: the dimensions that must stay dynamic in the graph, per collate input (index → what varies)
DYNAMIC = {
    "audio": {"gather": (0, 1), "token_mask": (0, 1)},
    "graph": {"x": (0,), "edge_index": (1,), "batch": (0,), "node_mask": (0, 1), "token_mask": (0, 1),
              "gat_order": (0,), "gat_bucket0": (0, 1), "gat_bucket3": (0, 1)},  # gat's bucketed layout
    "3d": {"points": (0, 1), "point_mask": (0, 1)},
}
#: the audio model inputs' window (and sample) axes, per encoder family
AUDIO_WINDOWS = {"input_features": (0,), "input_values": (0, 1), "attention_mask": (0, 1), "frame_mask": (0,)}
SERVE_SEED = 11  # items never seen by export's own parity check (seeds 0 and 1)


@pytest.fixture(scope="module")
def hub() -> Hub:
    return Hub()


@pytest.fixture(scope="module")
def table(request):
    rows: list[tuple[str, ...]] = []
    yield rows
    if not rows:
        return
    lines = [
        "",
        "ONNX Runtime (CPU) vs PyTorch, max abs diff on real tokens (fp32)",
        f"{'modality':8} {'encoder':16} {'graph':22} {'batch 1':>9} {'batch 2':>9} {'batch 7':>9}  sizes (batch 7)",
        *(f"{r[0]:8} {r[1]:16} {r[2]:22} {r[3]:>9} {r[4]:>9} {r[5]:>9}  {r[6]}" for r in rows),
    ]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n".join(lines))


def _batches(hub: Hub, modality: str, seed: int) -> list[list]:
    items = hub.registry.modality(modality).examples(10, seed)
    return [items[:1], items[1:3], items[3:10]]


def _max_diff(a: TokenEmbeddings, b: TokenEmbeddings) -> float:
    assert a.tokens.shape == b.tokens.shape, f"shapes {tuple(a.tokens.shape)} vs {tuple(b.tokens.shape)}"
    assert torch.equal(a.mask, b.mask), "masks differ"
    return float((a.tokens - b.tokens)[a.mask].abs().max())


@pytest.mark.parametrize(
    "modality,name,options", PRESETS, ids=[n + "".join(f"-{k}={v}" for k, v in o.items()) for _, n, o in PRESETS]
)
def test_export_serves_like_torch(hub, table, tmp_path, modality, name, options):
    enc = hub.encoder(name, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest = export(modality, tmp_path / "onnx", encoder=name, options=options, hub=hub)
    # export's own parity report: batch 1, 2 and 7 on fresh items, all within tolerance
    assert manifest.parity.passed and manifest.parity.metric == "max_abs_diff"
    assert {c.batch for c in manifest.parity.cases} >= {1, 2, 7}
    assert all(c.max_abs_diff <= TOL for c in manifest.parity.cases), manifest.parity
    # the graph takes exactly the collate's tensors, with dynamic dims where sizes vary
    collated = enc.collate([enc.prepare(x) for x in hub.registry.modality(modality).examples(2, 0)])
    inputs = {s.name: s.shape for s in manifest.inputs}
    assert list(inputs) == list(collated), f"graph inputs {list(inputs)} != collate keys {list(collated)}"
    dynamic = {**DYNAMIC[modality], **(AUDIO_WINDOWS if modality == "audio" else {})}
    for key, shape in inputs.items():
        for axis in dynamic.get(key, ()):
            assert isinstance(shape[axis], str), f"{name}: input {key!r} axis {axis} was fixed to {shape[axis]}"

    served = OnnxEncoder(tmp_path / "onnx", hub=hub)
    assert served.providers == ["CPUExecutionProvider"]
    diffs, sizes = [], []
    for items in _batches(hub, modality, SERVE_SEED):
        got, ref = served.encode(items), enc.encode(items)
        assert got.space == ref.space and got.modality == modality and len(got) == len(items)
        diffs.append(_max_diff(got, ref))
        sizes = [enc.length(enc.prepare(x)) for x in items]
    label = "tokens" + "".join(f", {k}={v}" for k, v in options.items())
    table.append((modality, name, label, *(f"{d:.1e}" for d in diffs), str(sizes)))
    assert max(diffs) <= TOL, f"{name}: max abs diffs {diffs}"


# -- the size rules the parity cases must exercise -----------------------------------------------------


def test_examples_vary_and_exercise_windows_caps_and_subsampling(hub):
    audio = hub.registry.modality("audio").examples(7, 3)
    again = hub.registry.modality("audio").examples(7, 3)  # deterministic for a seed
    assert all(np.array_equal(a["array"], b["array"]) and a["sampling_rate"] == b["sampling_rate"] for a, b in zip(audio, again))
    assert not np.array_equal(audio[0]["array"][:100], hub.registry.modality("audio").examples(1, 4)[0]["array"][:100])
    whisper = hub.encoder("tiny-whisper")
    windows = [len(whisper.prepare(x).windows) for x in audio]
    assert max(windows) >= 2 and min(windows) == 1  # one longer than the tiny 2 s window
    assert len({x["sampling_rate"] for x in audio}) >= 3 and len({len(x["array"]) for x in audio}) == 7
    graphs = hub.registry.modality("graph").examples(8, 3)
    nodes = [g["num_nodes"] for g in graphs]
    assert max(nodes) > 128 > min(nodes) and len(set(nodes)) >= 6  # one above the default node cap
    clouds = hub.registry.modality("3d").examples(7, 3)
    points = [len(c) for c in clouds]
    assert max(points) > 1024 and min(points) < 256 and len(set(points)) == 7  # above / below num_points


# -- projector and pooling fused ---------------------------------------------------------------------------

FUSED = {"audio": "tiny-wav2vec2", "graph": "gps", "3d": "tiny-point-bert"}


@pytest.fixture(scope="module")
def bundle(hub, tmp_path_factory):
    lm = hub.attach("tiny-llama")
    for modality, name in FUSED.items():
        lm.plug(modality, encoder=name, projector="mlp")
    path = tmp_path_factory.mktemp("bundle")
    lm.save(path)
    return path, lm


@pytest.mark.parametrize("modality", list(FUSED))
def test_export_with_projector_and_pooling(hub, table, bundle, tmp_path, modality):
    path, lm = bundle
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest = export(modality, tmp_path / "onnx", bundle=path, with_projector=True, pooled=True, hub=hub)
    assert manifest.with_projector and manifest.pooled and manifest.parity.passed
    assert [o.name for o in manifest.outputs] == ["pooled"]
    served = OnnxEncoder(tmp_path / "onnx", hub=hub)
    enc = hub.encoder(FUSED[modality])
    projector = lm._plugged[modality].projector  # the bundle's projector, as plugged
    assert served.dim == projector.out_dim and served.space == lm.backbone.space
    diffs = []
    for items in _batches(hub, modality, SERVE_SEED):
        te = enc.encode(items)
        with torch.inference_mode():
            tokens, mask = projector(te.tokens, te.mask)  # (batch, tokens, hidden)
        ref = TokenEmbeddings(tokens.float(), mask, modality, manifest.space, manifest.pooling).pooled()
        got = served.encode(items).pooled()
        assert got.shape == ref.shape == (len(items), served.dim)
        diffs.append(float((got - ref).abs().max()))
    table.append((modality, FUSED[modality], "+projector, pooled", *(f"{d:.1e}" for d in diffs), ""))
    assert max(diffs) <= TOL, f"{modality}: max abs diffs {diffs}"
