"""Encoders as users and exporters need them: processors apart from weights, aligned encoders everywhere."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hub import Hub
from hub.errors import BundleError
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
    with pytest.raises(BundleError, match="encoder was trained during alignment"):
        aligned_encoder(copy)


# -- one composer; MultimodalLM as a torch module; item keywords ----------------------------------


@pytest.fixture(scope="module")
def lm():
    lm = Hub().attach("tiny-llama")
    lm.plug("3d", encoder="tiny-point-bert", projector="mlp")
    lm.plug("image", encoder="tiny-clip", projector="mlp")
    return lm


def test_every_modality_has_an_item_keyword(lm):
    cloud = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    a = lm.forward("<3d> a shape", items={"3d": [cloud]})
    b = lm.forward_batch(["<3d> a shape"], items={"3d": [cloud]})
    assert torch.equal(a, b)
    assert isinstance(lm.generate("<3d> a shape", max_new_tokens=2, items={"3d": [cloud]}), str)


def test_unknown_item_keywords_are_refused_alike(lm):
    from hub.errors import PromptError

    with pytest.raises(PromptError, match=r"unknown keyword 'rows'.*items=\{'3d'"):
        lm.forward("hello", rows=[1, 2])
    with pytest.raises(PromptError, match=r"unknown keyword 'rows'.*generation options"):
        lm.generate("hello", max_new_tokens=2, rows=[1, 2])
    with pytest.raises(PromptError, match="unknown item keyword 'tabular'"):
        lm.generate("hello", max_new_tokens=2, items={"tabular": [1]})


def test_multimodal_lm_is_a_torch_module(lm):
    assert isinstance(lm, torch.nn.Module)
    keys = lm.state_dict().keys()
    assert any(k.startswith("backbone.") for k in keys)
    assert any(k.startswith("modalities.image.encoder.") for k in keys)
    assert any(k.startswith("modalities.3d.projector.") for k in keys)
    lm.train()
    assert lm._plugged["image"].projector.training and lm.backbone.training
    lm.eval()
    assert not lm._plugged["image"].encoder.training
    n = sum(p.numel() for p in lm.parameters())
    assert n == sum(p.numel() for p in lm.backbone.parameters()) + sum(
        p.numel() for m in ("image", "3d") for part in ("encoder", "projector")
        for p in getattr(lm._plugged[m], part).parameters())


def test_caption_alignment_goes_through_the_composer(monkeypatch):
    from hub.lm import Composer

    calls = []
    original = Composer.compose_embedded

    def spy(self, rows):
        calls.append(len(rows))
        comp = original(self, rows)
        assert comp.labels is not None and (comp.labels != -100).any()
        return comp

    monkeypatch.setattr(Composer, "compose_embedded", spy)
    from hub_image import example_images

    h = Hub()
    pairs = [(img, f"a picture {i % 2}") for i, img in enumerate(example_images(4, 0))]
    result = h.align("image", pairs, encoder="tiny-clip", objective="caption", backbone="tiny-llama", epochs=1,
                     batch_size=2, progress=False)
    assert calls == [2, 2] and all(np.isfinite(result.losses))


def test_composer_layout_of_embedded_rows_matches_inference():
    """The same item laid out by compose (inference) and compose_embedded (training) gives the same embeddings."""
    from hub_image import sample_image

    lm = Hub().attach("tiny-llama")
    lm.plug("image", encoder="tiny-clip", projector="mlp")
    img = sample_image()
    comp = lm.compose(["<image> a caption"], images=[img])
    plug = lm._plugged["image"]
    with torch.no_grad():
        te = plug.encoder.encode([img])
        tokens, mask = plug.projector(te.tokens, te.mask)
    ids = lm.backbone.tokenize(" a caption")
    trained = lm.compose_embedded([[("embeds", tokens[0][mask[0]]), ("target", ids)]])
    assert torch.equal(comp.attention_mask, trained.attention_mask)
    assert torch.allclose(comp.inputs_embeds, trained.inputs_embeds, atol=1e-6)
    assert trained.labels[0, -len(ids):].tolist() == ids


def test_the_cli_is_quiet_unless_verbose():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")}
    cmd = [sys.executable, "-m", "hub.cli"]
    quiet = subprocess.run([*cmd, "embed", "hello world", "-e", "minilm-l6"], capture_output=True, text=True,
                           env=env, timeout=300)
    loud = subprocess.run([*cmd, "--verbose", "embed", "hello world", "-e", "minilm-l6"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    assert "Loading weights" not in quiet.stderr and "Loading weights" in loud.stderr


@pytest.mark.parametrize("name", ["tiny-whisper", "tiny-clap"])
def test_an_audio_export_runs_without_the_torch_encoder(tmp_path, name):
    import hub_audio

    h = Hub()
    items = hub_audio.examples(4, 0)  # varied rates and lengths, one longer than the tiny window
    reference = h.embed(items, encoder=name)
    ho.export("audio", tmp_path / "x", encoder=name, registry=h.registry)
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert manifest["preprocess"]["processor_dir"] == "processor"  # feature extractor + config, no weights
    saved = sorted(p.name for p in (tmp_path / "x" / "processor").iterdir())
    assert saved == ["config.json", "preprocessor_config.json"]
    original = _break_factory(h.registry, name)
    reload_as = manifest["preprocess"]["processor"]
    broken = _break_factory(h.registry, reload_as)  # the family preset that rebuilds the processor: no torch either
    try:
        served = ho.OnnxEncoder(tmp_path / "x", registry=h.registry)
        te = served.encode(items)
    finally:
        h.registry._tables["encoder"][name] = original
        h.registry._tables["encoder"][reload_as] = broken
    assert not isinstance(served._encoder, torch.nn.Module)
    assert torch.equal(te.mask, reference.mask)
    assert (te.tokens - reference.tokens)[te.mask].abs().max() < 1e-4
