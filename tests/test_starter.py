"""The starter pack (the hub_starter plugin): data builders, the tiny-budget build, caching, evaluation and query."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import hub_starter as starter
from hub.errors import BundleError, InvalidInputError, InvalidOptionsError
from hub_starter import (
    DIGITS,
    GRAPH_FAMILIES,
    SHAPES,
    MissingToolError,
    build_starter_pack,
    digit_images,
    evaluate,
    graph_families,
    load_starter_pack,
    primitive_shapes,
    query,
    spoken_digits,
)

SHIFT_KINDS = {"image": ("font", "stroke", "contrast", "placement"), "audio": ("variant", "speed", "pitch", "accent", "speaker"),
               "graph": ("size",), "3d": ("stretch", "noise", "cut", "points")}
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")


def _check_split(data, n_classes: int) -> None:
    assert len(data.items) == len(data.labels) == len(data.held_out) == len(data.info)
    assert data.labels.min() == 0 and data.labels.max() == n_classes - 1
    held = set(np.flatnonzero(data.held_out).tolist())
    train = set(np.flatnonzero(~data.held_out).tolist())
    assert held and train and not held & train
    for c in range(n_classes):  # every class on both sides
        assert (data.labels[data.held_out] == c).any() and (data.labels[~data.held_out] == c).any()
    items, labels = data.split(True)
    assert len(items) == len(held) and np.array_equal(labels, data.labels[data.held_out])
    pairs = data.pairs()
    assert len(pairs) == len(train) and all(cap in data.prompts() for _, cap in pairs)


def test_digit_images_shapes_captions_split():
    data = digit_images(0, per_class=6, size=24)
    assert data.modality == "image" and data.classes == DIGITS and len(data) == 60
    img = data.items[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (24, 24)
    assert np.asarray(img).dtype == np.uint8 and np.asarray(img).max() > 100  # real ink, not a blank image
    assert data.caption(7) == "a handwritten seven"
    _check_split(data, 10)
    again = digit_images(0, per_class=6, size=24)
    assert np.array_equal(again.labels, data.labels) and np.array_equal(again.held_out, data.held_out)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(again.items, data.items))
    other = digit_images(1, per_class=6, size=24)
    assert [i["index"] for i in other.info] != [i["index"] for i in data.info]
    full = digit_images(0)
    assert len(full) == 1797 and abs(full.held_out.mean() - 0.25) < 0.01


def test_graph_families_structure():
    data = graph_families(0, per_class=4, nodes=(6, 12))
    assert data.classes == tuple(GRAPH_FAMILIES) and len(data) == 4 * len(GRAPH_FAMILIES)
    assert data.caption(data.classes.index("wheel")) == "a wheel graph"
    _check_split(data, len(GRAPH_FAMILIES))
    import networkx as nx

    for g, label in zip(data.items, data.labels):
        assert isinstance(g, nx.Graph) and nx.is_connected(g)
        assert sorted(g.nodes()) == list(range(g.number_of_nodes()))
        name = data.classes[label]
        if name == "cycle":
            assert all(d == 2 for _, d in g.degree())
        if name == "complete":
            n = g.number_of_nodes()
            assert g.number_of_edges() == n * (n - 1) // 2
        if name in ("tree", "path", "star"):
            assert nx.is_tree(g)
    again = graph_families(0, per_class=4, nodes=(6, 12))
    assert all(nx.utils.graphs_equal(a, b) for a, b in zip(again.items, data.items))
    with pytest.raises(InvalidOptionsError, match="nodes"):
        graph_families(0, nodes=(2, 3))


def test_primitive_shapes_points():
    data = primitive_shapes(0, per_class=3, points=200)
    assert data.classes == SHAPES and len(data) == 3 * len(SHAPES)
    assert data.caption(SHAPES.index("torus")) == "a torus"
    _check_split(data, len(SHAPES))
    for pts in data.items:
        assert pts.shape == (200, 3) and pts.dtype == np.float32 and np.isfinite(pts).all()
    again = primitive_shapes(0, per_class=3, points=200)
    assert all(np.array_equal(a, b) for a, b in zip(again.items, data.items))
    assert not np.array_equal(primitive_shapes(1, per_class=3, points=200).items[0], data.items[0])
    with pytest.raises(InvalidOptionsError, match="held_out"):
        primitive_shapes(0, per_class=3, held_out=1.5)


@needs_espeak
def test_spoken_digits_voices_held_out_whole():
    data = spoken_digits(0, voices=("en", "en-us", "en+f3"), speeds=(140, 190), pitches=(40,), combos=4)
    assert data.classes == DIGITS and len(data) == 40
    assert data.caption(7) == "the spoken word seven"
    _check_split(data, 10)
    item = data.items[0]
    assert set(item) == {"array", "sampling_rate"} and item["sampling_rate"] == 16000
    assert item["array"].dtype == np.float32 and 0.2 < len(item["array"]) / 16000 < 3 and np.abs(item["array"]).max() > 0.01
    combo = lambda i: (data.info[i]["voice"], data.info[i]["speed"], data.info[i]["pitch"])  # noqa: E731
    held = {combo(i) for i in np.flatnonzero(data.held_out)}
    train = {combo(i) for i in np.flatnonzero(~data.held_out)}
    assert held and train and not held & train  # held-out speakers are never heard in training
    assert {v for v, _, _ in held | train} == {"en", "en-us", "en+f3"}  # every voice is used
    again = spoken_digits(0, voices=("en", "en-us", "en+f3"), speeds=(140, 190), pitches=(40,), combos=4)
    assert np.array_equal(again.held_out, data.held_out)
    assert np.array_equal(again.items[5]["array"], data.items[5]["array"])


def test_missing_espeak_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng anywhere
    with pytest.raises(MissingToolError, match="apt-get install espeak-ng") as info:
        spoken_digits(0, combos=2)
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(MissingToolError, match="espeak-ng"):
        build_starter_pack(tmp_path / "pack", budget="tiny", modalities=["audio"], progress=False)


def test_unknown_budget_and_modality(tmp_path):
    with pytest.raises(InvalidOptionsError, match="full, tiny"):
        build_starter_pack(tmp_path, budget="huge", progress=False)
    with pytest.raises(InvalidOptionsError, match="plans image"):
        build_starter_pack(tmp_path, budget="tiny", modalities=["video"], progress=False)
    with pytest.raises(BundleError, match="pack.json is missing"):
        load_starter_pack(tmp_path)


@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    root = tmp_path_factory.mktemp("starter") / "pack"
    return build_starter_pack(root, budget="tiny", seed=0, progress=False)


def test_tiny_build_writes_every_modality(tiny_pack):
    root = tiny_pack.directory
    manifest = json.loads((root / "pack.json").read_text())
    assert manifest["seed"] == 0 and manifest["budget"]["name"] == "tiny" and manifest["pretrain"] is True
    assert set(manifest["modalities"]) == {"image", "audio", "graph", "3d"}
    for m, info in manifest["modalities"].items():
        assert (root / m / "align.json").is_file() and (root / m / "projector.safetensors").is_file()
        assert info["held_out"] > 0 and info["train"] > 0 and set(info["seconds"]) >= {"data", "align"}
        assert info["pretrained"] == (m != "audio")
    # the trained audio encoder is saved: its save_pretrained output, or a state dict where it has none
    assert (root / "audio" / "encoder").is_dir() or (root / "audio" / starter.ENCODER_STATE).is_file()
    assert "torch" in manifest["versions"]
    x = tiny_pack.embed("graph", tiny_pack.data["graph"].items[:3])
    assert x.shape == (3, 384) and torch.allclose(x.norm(dim=-1), torch.ones(3), atol=1e-4)


def test_second_call_loads_instead_of_rebuilding(tiny_pack, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a cached pack must not train again")

    monkeypatch.setattr("hub_starter.pack.align", no_training)
    monkeypatch.setattr("hub_starter.pack.run_pretrain", no_training)
    again = build_starter_pack(tiny_pack.directory, budget="tiny", seed=0, progress=False)
    assert again.modalities == tiny_pack.modalities
    items = tiny_pack.data["audio"].items[:4]  # the audio encoder's trained state is restored
    assert torch.allclose(again.embed("audio", items), tiny_pack.embed("audio", items), atol=1e-5)
    items = tiny_pack.data["3d"].items[:4]
    assert torch.allclose(again.embed("3d", items), tiny_pack.embed("3d", items), atol=1e-5)
    with pytest.raises(AssertionError, match="must not train"):  # another seed is another build
        build_starter_pack(tiny_pack.directory.parent / "other", budget="tiny", seed=1, progress=False)


def test_evaluate_writes_json_and_png(tiny_pack, tmp_path):
    report = evaluate(tiny_pack, tmp_path / "eval")
    for m in ("image", "audio", "graph", "3d"):
        zs = report["zero_shot"][m]
        assert 0.0 <= zs["top1"] <= zs["top5"] <= 1.0
        assert zs["n"] == int(tiny_pack.data[m].held_out.sum())
        assert np.asarray(zs["confusion"]).sum() == zs["n"]
    assert set(report["retrieval"]) == {"audio->image", "image->audio"}  # the only pairs sharing class names
    r = report["retrieval"]["audio->image"]
    assert r["queries"] == int(tiny_pack.data["audio"].held_out.sum()) and 0 <= r["top1"] <= r["top5"] <= 1
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["zero_shot"]["graph"]["top1"] == report["zero_shot"]["graph"]["top1"]
    png = Image.open(tmp_path / "eval" / "retrieval.png")
    assert png.width > 5 * starter.CELL and png.height > 3 * starter.CELL
    for m in ("image", "audio", "graph", "3d"):  # shifted sets and raw-feature baselines, reported apart
        sh, base = report["shifted"][m], report["baselines"][m]
        assert sh["n"] > 0 and 0.0 <= sh["top1"] <= 1.0 and set(sh["kinds"]) == set(SHIFT_KINDS[m])
        assert base["model"] == "logistic regression" and 0.0 <= base["top1"] <= 1.0
        assert base["train"] == int((~tiny_pack.data[m].held_out).sum()) and base["shifted"]["n"] == sh["n"]
    assert saved["shifted"]["3d"]["kinds"] == report["shifted"]["3d"]["kinds"]
    summary = Image.open(tmp_path / "eval" / "summary.png")
    assert summary.width > 300 and len(summary.getcolors(1 << 16)) > 5  # bars, not a blank page


def test_shifted_sets_are_apart_and_shifted():
    from hub_starter.shift import harder_shapes, larger_graphs, shifted_data, shifted_digits

    digits = shifted_digits(0, per_kind=1, per_class=4)
    assert len(digits) == 4 * 10 and digits.held_out.all() and digits.classes == DIGITS
    train = {np.asarray(x).tobytes() for x in digit_images(0, per_class=4).split(False)[0]}
    assert not any(np.asarray(x).tobytes() in train for x in digits.items)  # never a training scan
    inverted = [x for x, i in zip(digits.items, digits.info) if i.get("contrast") == "inverted"]
    assert all(np.asarray(x)[0].mean() > 100 for x in inverted)  # light page
    graphs = larger_graphs(0, per_class=2)
    assert all(31 <= i["size"] <= 60 for i in graphs.info)  # the families' size parameter: training's is 6-30
    train = graph_families(0, per_class=2)
    for name in GRAPH_FAMILIES:  # every family is bigger than in training
        big = [g.number_of_nodes() for g, i in zip(graphs.items, graphs.info) if i["family"] == name]
        small = [g.number_of_nodes() for g, y in zip(train.items, train.labels) if train.classes[y] == name]
        assert min(big) > np.mean(small)
    shapes = harder_shapes(0, per_kind=1)
    assert {i["shift"] for i in shapes.info} == {"stretch", "noise", "cut", "points"}
    assert {len(x) for x, i in zip(shapes.items, shapes.info) if i["shift"] == "points"} <= {128, 2048}
    assert all(len(x) < 512 for x, i in zip(shapes.items, shapes.info) if i["shift"] == "cut")
    again = harder_shapes(0, per_kind=1)
    assert all(np.array_equal(a, b) for a, b in zip(again.items, shapes.items))
    with pytest.raises(InvalidOptionsError, match="per_kind"):
        shifted_data("3d", 0, per_kind=10_000)


@needs_espeak
def test_shifted_speech_voices_outside_training():
    from hub_starter.data import PITCHES, SPEEDS, VOICES
    from hub_starter.shift import AUDIO_SHIFTS, shifted_speech

    speech = shifted_speech(0, per_kind=1)
    assert len(speech) == len(AUDIO_SHIFTS) * 10 and speech.held_out.all()
    assert [i["shift"] for i in speech.info[::10]] == ["variant", "speed", "pitch", "accent", "speaker"]
    english = {v.split("+")[0] for v in VOICES}
    used = {v.split("+")[1] for v in VOICES if "+" in v}
    for i in speech.info:
        assert i["voice"] not in VOICES or i["shift"] in ("speed", "pitch")  # every voice kind: outside the list
        base, _, variant = i["voice"].partition("+")
        if i["shift"] == "accent":
            assert base not in english and not variant
        if i["shift"] in ("speaker", "variant"):
            assert base in english and variant and variant not in used
        assert (i["speed"] in SPEEDS) != (i["shift"] == "speed") and (i["pitch"] in PITCHES) != (i["shift"] == "pitch")
    assert all(np.abs(x["array"]).max() > 0.01 for x in speech.items)  # every voice spoke
    more = shifted_speech(0, per_kind=2)  # the new kinds come from their own seed: the old kinds' clips stay
    old = [i for i in more.info if i["shift"] in ("variant", "speed", "pitch")]
    assert [i["sha256"] for i in old[:30]] == [i["sha256"] for i in speech.info[:30]]


def test_baseline_features_and_normalisers():
    import networkx as nx

    from hub_starter.baselines import d2_features, graph_features
    from hub_starter.normalise import normalise_cloud, normalise_digit

    hist = graph_features([nx.star_graph(4)])[0]  # one hub of degree 4, four leaves
    assert hist[1] == pytest.approx(0.8) and hist[4] == pytest.approx(0.2)
    pts = primitive_shapes(0, per_class=1, points=400).items[0]
    assert np.abs(d2_features([pts])[0] - d2_features([pts * 3.0])[0]).max() < 0.02  # scale-free
    rot = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    a, b = normalise_cloud(pts), normalise_cloud(pts @ rot.T * np.array([1.0, 1.0, 1.0]) + 5.0)
    assert np.allclose(np.sort(np.abs(a), 0), np.sort(np.abs(b), 0), atol=1e-3)  # pose removed
    assert normalise_cloud(pts, points=128).shape == (128, 3)
    img = digit_images(0, per_class=1).items[3]
    dark = Image.fromarray(255 - np.asarray(img) // 3)  # dim, dark ink on a light page
    a, b = np.asarray(normalise_digit(img), float), np.asarray(normalise_digit(dark), float)
    assert np.abs(a - b).mean() < 12 and a.max() > 200


def test_audio_views_apply_every_recipe_step():
    """Every step of the audio recipe is a registered augmentation whose params it accepts; views are seeded."""
    from hub import Hub
    from hub.augment import augment
    from hub_starter.views import RECIPES, augmented_pairs

    registry = Hub().registry
    t = np.arange(8000) / 16000.0
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).standard_normal(len(t))
    clip = {"array": wave.astype(np.float32), "sampling_rate": 16000}  # a tone in broadband noise: any band mask shows
    rng = np.random.default_rng(0)
    for name, _, params in RECIPES["audio"]:
        out = augment(registry, clip, name, "audio", rng=rng, **params)
        assert out["sampling_rate"] == 16000 and np.isfinite(out["array"]).all() and len(out["array"]) > 0
    band = next(p for n, _, p in RECIPES["audio"] if n == "freq_mask")
    masked = augment(registry, clip, "freq_mask", "audio", rng=np.random.default_rng(1), **band)
    assert not np.allclose(masked["array"], clip["array"])
    a = augmented_pairs(registry, "audio", [(clip, "x")], 2, seed=3)
    b = augmented_pairs(registry, "audio", [(clip, "x")], 2, seed=3)
    assert len(a) == 3 and all(np.array_equal(x[0]["array"], y[0]["array"]) for x, y in zip(a[1:], b[1:]))


def test_zero_shot_counts_hits(tiny_pack, monkeypatch):
    """With embeddings that are the prompts themselves, every held-out item is classified right."""
    data = tiny_pack.data["graph"]
    prompts = tiny_pack.embed_text(data.prompts())
    lookup = {id(x): prompts[y] for x, y in zip(data.items, data.labels)}
    original = tiny_pack.embed
    monkeypatch.setattr(tiny_pack, "embed", lambda m, items: torch.stack([lookup[id(x)] for x in items])
                        if m == "graph" else original(m, items))
    zs = starter.zero_shot(tiny_pack, "graph")
    assert zs["top1"] == 1.0 and np.trace(np.asarray(zs["confusion"])) == zs["n"]


def test_query_and_drawing(tiny_pack, tmp_path):
    answer = query(tiny_pack, "a torus", k=2)
    assert set(answer) == {"image", "audio", "graph", "3d"}
    for m, hits in answer.items():
        assert len(hits) == 2 and hits[0][2] >= hits[1][2]
        items, labels = tiny_pack.data[m].split(True)
        assert all(0 <= i < len(items) and label == tiny_pack.data[m].classes[labels[i]] for i, label, _ in hits)
    path = starter.draw_query(tiny_pack, "a torus", tmp_path / "q.png", k=2, answer=answer)
    img = Image.open(path)
    assert img.width >= 2 * starter.CELL and img.height >= 4 * starter.CELL
    with pytest.raises(InvalidInputError, match="non-empty"):
        query(tiny_pack, "  ")


def test_pack_directories_as_encoders_normalise_like_the_pack(tiny_pack, tmp_path):
    """The pack's image and 3D encoders were trained on normalised items: used as plain encoders
    (h.embed(encoder=DIR), an ONNX export of DIR) they normalise the same way (align.json's transforms)."""
    from hub import Hub
    from hub.onnx import export

    h = Hub()
    root = tiny_pack.directory
    for m in ("image", "3d"):
        assert json.loads((root / m / "align.json").read_text())["transforms"] == [
            {"name": "starter-normalise", "params": {}}]
        items, _ = tiny_pack.data[m].split(True)
        want = tiny_pack.embed(m, items)
        got = torch.nn.functional.normalize(h.embed(items, encoder=str(root / m)).pooled(), dim=-1)
        assert torch.allclose(got, want, atol=1e-5), (m, float((got - want).abs().max()))
    out = export("3d", tmp_path / "exp", encoder=str(root / "3d"))
    assert out.preprocess["transforms"] == [{"name": "starter-normalise", "params": {}}]
    items, _ = tiny_pack.data["3d"].split(True)
    got = torch.nn.functional.normalize(
        h.embed(items, encoder=str(root / "3d"), runtime="onnx", onnx_dir=tmp_path / "exp").pooled(), dim=-1)
    assert torch.allclose(got, tiny_pack.embed("3d", items), atol=1e-4)
    # an align.json naming a transform nobody registered is refused, never embedded without it
    bad = tmp_path / "bad"
    shutil.copytree(root / "3d", bad)
    manifest = json.loads((bad / "align.json").read_text())
    manifest["transforms"] = [{"name": "not-installed", "params": {}}]
    (bad / "align.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="not-installed"):
        h.embed(items[:1], encoder=str(bad))


def test_normalise_transforms_conform():
    """The normalisers as registered transforms keep the augmentation contract (deterministic)."""
    from hub.testing import check_augmentation

    digit = Image.fromarray((np.random.default_rng(0).random((24, 20)) * 255).astype(np.uint8))
    check_augmentation("image/starter-normalise", [digit, np.zeros((16, 16, 3), dtype=np.uint8) + 200],
                       bad_items=[b"not an image"], expect_random=False, encoder="tiny-clip")
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(200, 3)).astype(np.float32) * [3, 1, 0.5]
    normals = rng.normal(size=(200, 3))
    with_normals = np.concatenate([cloud, normals / np.linalg.norm(normals, axis=1, keepdims=True)], 1).astype(np.float32)
    check_augmentation("3d/starter-normalise", [cloud, with_normals], bad_items=[np.zeros((2, 3), np.float32)],
                       expect_random=False, encoder="tiny-point-bert")
