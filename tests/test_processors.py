"""Encoders as users and exporters need them: processors apart from weights, aligned encoders everywhere."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hub import Hub
from hub.errors import BundleError, InvalidInputError
from hub.processor import EncoderProcessor, Processor

pytest.importorskip("onnxruntime")
import hub.onnx as ho  # noqa: E402


@pytest.mark.parametrize("name, item", [
    ("tiny-bert", "a small test sentence"),
    ("minilm-l6", "the cat sat on the mat"),
    ("tiny-clip", "image"),
    ("gin", "graph"),
    ("tiny-point-bert", "points"),
])
def test_processor_prepares_exactly_as_the_encoder(hub, name, item):
    if item == "image":
        from hub_image import sample_image

        item = sample_image()
    elif item == "graph":
        from hub_graph import sample_graph

        item = sample_graph()
    elif item == "points":
        item = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)
    processor = hub.registry.create_processor(name)
    encoder = hub.encoder(name)
    assert isinstance(processor, Processor) and not isinstance(processor, EncoderProcessor)
    assert not isinstance(processor, torch.nn.Module)  # holds no weights
    a = processor.collate([processor.prepare(item, 0)])
    b = encoder.collate([encoder.prepare(item, 0)])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert processor.num_tokens(processor.prepare(item, 0)) == encoder.num_tokens(encoder.prepare(item, 0))


def _break_factory(registry, name):
    """The encoder factory of ``name`` now raises: only its processor can be built."""
    entry = registry._tables["encoder"][name]

    def boom(**_):
        raise RuntimeError(f"the {name} encoder factory was called")

    registry._tables["encoder"][name] = dataclasses.replace(entry, spec=dataclasses.replace(entry.spec, factory=boom))
    return entry


@pytest.mark.parametrize("name, items", [("tiny-bert", ["hello world", "a", "three short words"]),
                                         ("tiny-clip", None)])
def test_an_export_runs_without_the_torch_encoder(tmp_path, name, items):
    h = Hub()
    if items is None:
        from hub_image import example_images

        items = example_images(3, 0)
    reference = h.embed(items, encoder=name)
    modality = h.registry.encoder_spec(name).modality
    ho.export(modality, tmp_path / "x", encoder=name, registry=h.registry)
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert manifest["preprocess"]["processor_dir"] == "processor"  # the export carries its preprocessing
    assert (tmp_path / "x" / "processor").is_dir() and "weights" not in manifest["preprocess"].get("options", {})
    original = _break_factory(h.registry, name)
    try:
        with pytest.raises(RuntimeError, match="factory was called"):
            h.registry.create_encoder(name)
        served = ho.OnnxEncoder(tmp_path / "x", registry=h.registry)
        te = served.encode(items)
    finally:
        h.registry._tables["encoder"][name] = original
    assert not isinstance(served._encoder, torch.nn.Module)
    assert torch.equal(te.mask, reference.mask)
    assert (te.tokens - reference.tokens)[te.mask].abs().max() < 1e-4


def test_processor_dir_cannot_point_outside_the_export(tmp_path):
    h = Hub()
    ho.export("text", tmp_path / "x", encoder="tiny-bert", registry=h.registry)
    path = tmp_path / "x" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["preprocess"]["processor_dir"] = "../elsewhere"
    from hub.onnx.processor import load_processor

    with pytest.raises(BundleError, match="not a folder inside the export"):
        load_processor(manifest["preprocess"], tmp_path / "x", h.registry)


@pytest.fixture(scope="module")
def aligned_dir(tmp_path_factory):
    """A tiny image → text alignment written by align (tiny-clip → minilm-l6 space)."""
    from hub_image import example_images

    h = Hub()
    images = example_images(8, 0)
    pairs = [(img, f"picture number {i % 4}") for i, img in enumerate(images)]
    out = tmp_path_factory.mktemp("aligned") / "img2text"
    h.align("image", pairs, encoder="tiny-clip", projector="mlp", epochs=1, batch_size=4, progress=False, out_dir=out)
    return out, images


def test_an_aligned_directory_is_an_encoder_everywhere(aligned_dir, tmp_path):
    from hub.cli import main
    from hub.train import AlignResult

    out, images = aligned_dir
    h = Hub()
    expected = AlignResult.load(out, registry=h.registry).embed_aligned(images[:3])  # (3, 384)
    anchor_space = h.encoder("minilm-l6").space

    # 1. Hub.embed(encoder=DIR): vectors in the anchor's space, and the space says so
    te = h.embed(images[:3], encoder=str(out))
    assert te.space == anchor_space and te.dim == 384
    assert torch.allclose(te.pooled(normalize=True), expected, atol=1e-5)

    # 2. mhub embed -e DIR
    paths = []
    for i, img in enumerate(images[:2]):
        paths.append(str(tmp_path / f"{i}.png"))
        img.save(paths[-1])
    res = CliRunner().invoke(main, ["embed", *paths, "-e", str(out), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout[res.stdout.index("["):])
    assert all(r["space"] == anchor_space and r["dim"] == 384 for r in rows)

    # 3. hub.onnx.export(..., encoder=DIR): encoder and projector in one graph
    manifest = ho.export("image", tmp_path / "onnx", encoder=str(out), registry=h.registry)
    assert manifest.with_projector and manifest.space == anchor_space
    served = ho.OnnxEncoder(tmp_path / "onnx", registry=h.registry).encode(images[:3]).pooled(normalize=True)
    assert torch.allclose(served, expected, atol=1e-4)
    onnx_te = h.embed(images[:3], encoder=str(out), runtime="onnx")
    assert torch.allclose(onnx_te.pooled(normalize=True), expected, atol=1e-4)

    # 4. lm.plug(encoder=DIR)
    lm = h.attach("tiny-llama")
    lm.plug("image", encoder=str(out), projector="mlp")
    assert lm._plugged["image"].encoder.space == anchor_space
    assert isinstance(lm.generate("<image> hi", max_new_tokens=2, images=[images[0]]), str)


def test_an_aligned_directory_with_a_trained_encoder_but_no_weights_is_refused(aligned_dir, tmp_path):
    import shutil

    from hub.train import aligned_encoder

    out, _ = aligned_dir
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "align.json").read_text())
    manifest["config"]["train_encoder"] = True
    (copy / "align.json").write_text(json.dumps(manifest))
    with pytest.raises((BundleError, InvalidInputError)):
        aligned_encoder(copy)
