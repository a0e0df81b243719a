"""Self-supervised pretraining and alignment (hub.train) on tiny data and tiny presets."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from hub import AugmentationSpec, Hub, Registry, hookimpl
from hub.errors import InvalidInputError, InvalidOptionsError
from hub.lm import build_projector
from hub.testing import registered_plugin
from hub.train import AlignResult, align, chamfer_distance, clip_loss, nt_xent, pretrain

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def colour_images(per_class: int, seed: int) -> list[tuple[np.ndarray, str]]:
    """Noisy 32x32 images of four colours with a bright square at a random place, and their captions."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(per_class):
        for name, rgb in COLOURS.items():
            img = np.clip(np.array(rgb)[None, None] + rng.normal(0, 25, (32, 32, 3)), 0, 255)
            y, x = rng.integers(0, 24, size=2)
            img[y : y + 8, x : x + 8] = 255
            out.append((img.astype(np.uint8), f"a {name} image"))
    return out


def textures(n: int, seed: int) -> list[np.ndarray]:
    """32x32 images of random 4x4 colour grids: distinct instances for contrastive learning."""
    rng = np.random.default_rng(seed)
    return [np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((8, 8, 1))).astype(np.uint8) for _ in range(n)]


def point_clouds(n: int, seed: int) -> list[np.ndarray]:
    """Spheres, cubes and flat discs of 256 points, randomly scaled."""
    rng = np.random.default_rng(seed)
    shapes = [
        lambda p: p / np.linalg.norm(p, axis=1, keepdims=True),
        lambda p: np.clip(p, -1, 1) / np.abs(np.clip(p, -1, 1)).max(1, keepdims=True),
        lambda p: p * np.array([1.0, 1.0, 0.05]),
    ]
    return [(shapes[i % 3](rng.normal(size=(256, 3))) * rng.uniform(0.5, 2.0, 3)).astype(np.float32) for i in range(n)]


def _noise(item, rng, **_):
    return np.clip(np.asarray(item, dtype=np.float32) + rng.normal(0, 20, np.shape(item)), 0, 255).astype(np.uint8)


def _flip(item, rng, **_):
    return np.ascontiguousarray(np.asarray(item)[:, ::-1])


def _shift(item, rng, **_):
    return np.roll(np.asarray(item), tuple(rng.integers(-4, 5, size=2)), axis=(0, 1))


def _drop_edges(graph, rng, **_):
    g = graph.copy()
    edges = list(g.edges())
    for i in rng.choice(len(edges), size=max(1, len(edges) // 5), replace=False):
        g.remove_edge(*edges[i])
    return g


@pytest.fixture(scope="module")
def augmenting():
    """An in-process plugin with small image and graph augmentations (names that no plugin uses)."""
    plugin = types.ModuleType("train_augs")

    @hookimpl
    def register_augmentations(register):
        for name, fn in {"tt-noise": _noise, "tt-flip": _flip, "tt-shift": _shift}.items():
            register(AugmentationSpec(name=name, modality="image", fn=fn))
        register(AugmentationSpec(name="tt-drop-edges", modality="graph", fn=_drop_edges))

    plugin.register_augmentations = register_augmentations
    h = Hub()
    with registered_plugin(plugin, name="train-augs", registry=h.registry):
        yield h


IMAGE_AUGS = ["tt-noise", "tt-flip", "tt-shift"]


def _improved(losses: list[float], k: int = 3) -> tuple[float, float]:
    return float(np.mean(losses[:k])), float(np.mean(losses[-k:]))


# -- losses ------------------------------------------------------------------------------


def test_losses_are_low_for_matching_pairs_and_high_for_shuffled_ones():
    z = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    assert nt_xent(z, z, 0.1) < nt_xent(z, z.roll(1, 0), 0.1)
    labels = torch.tensor([0, 1, 0, 1])
    anchors = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    assert clip_loss(anchors[labels], anchors, labels, torch.tensor(20.0)) < clip_loss(anchors[1 - labels], anchors, labels, torch.tensor(20.0))
    pts = torch.randn(3, 16, 3)
    assert chamfer_distance(pts, pts[:, torch.randperm(16)]) < 1e-9 < chamfer_distance(pts, pts + 0.1)


# -- pretraining -------------------------------------------------------------------------


def test_contrastive_pretraining_lowers_the_loss_and_resumes_exactly(augmenting, tmp_path):
    from safetensors.torch import load_file

    items = textures(16, seed=0)
    common = dict(encoder="tiny-clip", hub=augmenting, augmentations=IMAGE_AUGS, batch_size=8, lr=3e-3, seed=3, progress=False)
    full = pretrain("image", items, epochs=4, out_dir=tmp_path / "full", **common)
    first, last = _improved(full.losses)
    assert len(full.losses) == 8 and last < first - 0.3, full.losses
    assert not full.encoder.training

    ckpt = tmp_path / "full" / "checkpoint"
    assert sorted(p.name for p in ckpt.iterdir()) == ["encoder.safetensors", "head.safetensors", "optimizer.safetensors", "state.json"]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["epoch"] == 4 and state["step"] == 8 and state["losses"] == full.losses
    assert any(k.endswith("exp_avg") for k in load_file(ckpt / "optimizer.safetensors"))

    half = pretrain("image", items, epochs=2, out_dir=tmp_path / "resumed", **common)
    assert half.losses == full.losses[:4]
    resumed = pretrain("image", items, epochs=4, out_dir=tmp_path / "resumed", **common)
    assert resumed.losses == full.losses
    a, b = full.encoder.state_dict(), resumed.encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(InvalidOptionsError, match="lr: checkpoint 0.003, now 0.01"):
        pretrain("image", items, epochs=4, out_dir=tmp_path / "resumed", **{**common, "lr": 1e-2})


def test_masked_pretraining_of_a_vision_tower(tmp_path):
    items = [img for img, _ in colour_images(4, seed=1)]
    result = pretrain("image", items, encoder="tiny-clip", objective="masked", epochs=5, batch_size=8, lr=3e-3,
                      mask_ratio=0.5, progress=False, out_dir=tmp_path)
    first, last = _improved(result.losses)
    assert last < 0.8 * first, result.losses
    # the saved encoder reloads through hf-vision and gives the trained tokens
    result.save(tmp_path / "enc")
    again = Hub().encoder("hf-vision", weights=str(tmp_path / "enc"))
    torch.testing.assert_close(again.encode(items[:3]).tokens, result.encoder.encode(items[:3]).tokens)


def test_masked_pretraining_of_a_point_cloud_encoder(tmp_path):
    items = point_clouds(12, seed=0)
    result = pretrain("3d", items, encoder="tiny-point-bert", objective="masked", epochs=6, batch_size=6, lr=3e-3,
                      mask_ratio=0.5, progress=False)
    first, last = _improved(result.losses)
    assert last < 0.8 * first, result.losses
    result.save(tmp_path)  # config.json + model.safetensors, reloadable with weights=
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    again = Hub().encoder("tiny-point-bert", weights=str(tmp_path))
    torch.testing.assert_close(again.encode(items[:2]).tokens, result.encoder.encode(items[:2]).tokens)


def test_masked_pretraining_names_the_supported_encoders():
    import networkx as nx

    with pytest.raises(InvalidInputError, match="implement masked_batch"):
        pretrain("graph", [nx.cycle_graph(5), nx.path_graph(4)], encoder="gin", objective="masked", progress=False)


def test_contrastive_graph_pretraining_saves_a_reloadable_encoder(augmenting, tmp_path, capsys):
    import networkx as nx

    graphs = [f(n) for n in (5, 6, 7, 8) for f in (nx.cycle_graph, nx.star_graph, nx.wheel_graph, nx.ladder_graph)]
    result = pretrain("graph", graphs, encoder="gin", hub=augmenting, augmentations=["tt-drop-edges"], epochs=4,
                      batch_size=8, lr=3e-3, progress=True)
    first, last = _improved(result.losses)
    assert last < first, result.losses
    err = capsys.readouterr().err  # the tqdm bar, the loss in its postfix
    assert "pretrain graph (contrastive) epoch 4/4" in err and "loss=" in err
    result.save(tmp_path)
    again = Hub().encoder("gin", weights=str(tmp_path))
    torch.testing.assert_close(again.encode(graphs[:3]).pooled(), result.encoder.encode(graphs[:3]).pooled())


def test_pretraining_refuses_bad_requests(augmenting):
    items = [img for img, _ in colour_images(1, seed=0)]
    with pytest.raises(InvalidOptionsError, match="unknown pretraining objective 'jigsaw'"):
        pretrain("image", items, encoder="tiny-clip", objective="jigsaw", progress=False)
    with pytest.raises(KeyError, match="tt-nois"):
        pretrain("image", items, encoder="tiny-clip", hub=augmenting, augmentations=["tt-nois"], progress=False)
    class NoAugmentations(Registry):
        def list_augmentations(self, modality=None):
            return []

    with pytest.raises(InvalidInputError, match="needs augmentations for 'image', and none are registered"):
        pretrain("image", items, encoder="tiny-clip", registry=NoAugmentations(), progress=False)
    with pytest.raises(InvalidInputError, match="at least 2 items"):
        pretrain("image", items[:1], encoder="tiny-clip", hub=augmenting, augmentations=IMAGE_AUGS, progress=False)


# -- alignment ---------------------------------------------------------------------------


def _accuracy(vectors: torch.Tensor, anchors: torch.Tensor, labels: list[int]) -> float:
    return float(((vectors @ anchors.T).argmax(1) == torch.tensor(labels)).float().mean())


def test_infonce_alignment_makes_captions_retrievable(tmp_path):
    train, test = colour_images(6, seed=0), colour_images(3, seed=1)
    names = sorted({c for _, c in train})
    labels = [names.index(c) for _, c in test]
    hub = Hub()
    encoder, anchor = hub.encoder("tiny-clip"), hub.encoder("minilm-l6")
    anchors = anchor.encode(names).pooled(normalize=True)
    before = build_projector("mlp", encoder.dim, anchor.dim, seed=0)
    base = before.project(encoder.encode([x for x, _ in test]), "text").pooled(normalize=True)
    acc_before = _accuracy(base.detach(), anchors, labels)

    result = align("image", train, encoder="tiny-clip", anchor_encoder="minilm-l6", epochs=12, batch_size=12, lr=3e-3,
                   progress=False, out_dir=tmp_path)
    acc_after = _accuracy(result.embed_aligned([x for x, _ in test]), result.embed_anchor(names), labels)
    first, last = _improved(result.losses)
    assert last < first and acc_after > max(acc_before, 0.25) + 0.25, (acc_before, acc_after, result.losses)

    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["align.json", "checkpoint", "projector.json", "projector.safetensors"]
    again = AlignResult.load(tmp_path)
    torch.testing.assert_close(again.embed_aligned([x for x, _ in test[:4]]), result.embed_aligned([x for x, _ in test[:4]]))


def test_caption_alignment_lowers_next_token_loss_and_plugs(tmp_path):
    pairs = colour_images(4, seed=2)
    hub = Hub()
    encoder = hub.encoder("tiny-clip")
    result = align("image", pairs, encoder=encoder, objective="caption", backbone="tiny-llama", epochs=8, batch_size=8,
                   lr=3e-2, progress=False, out_dir=tmp_path)
    first, last = _improved(result.losses)
    # a random-init tiny LM has nearly flat logits (loss ~ log(vocab 384) = 5.95): small but steady gains
    assert last < first - 0.05, result.losses
    assert (tmp_path / "encoder" / "config.json").is_file()  # an instance was given: its weights travel along

    def caption_nll(lm) -> float:
        total = 0.0
        for img, caption in pairs[:8]:
            logits = lm.forward("<image>" + caption, images=[img])[0]  # (seq, vocab)
            ids = lm.backbone.tokenize(caption)
            pred = logits[-len(ids) - 1 : -1]
            total += float(torch.nn.functional.cross_entropy(pred, torch.tensor(ids)))
        return total / 8

    lm = hub.attach("tiny-llama")
    lm.plug("image", encoder=encoder, projector="mlp")  # the untrained projector alignment started from
    untrained = caption_nll(lm)
    lm.plug("image", encoder=encoder, projector=tmp_path)  # the aligned projector directory
    trained = caption_nll(lm)
    assert trained < untrained - 0.05, (untrained, trained)
    for p in lm.backbone.parameters():  # the backbone was frozen during alignment, and given back as it was
        assert p.requires_grad


def test_align_refuses_bad_pairs_and_options():
    with pytest.raises(InvalidInputError, match="pair 1 must be"):
        align("image", [(np.zeros((8, 8, 3), np.uint8), "a"), (np.zeros((8, 8, 3), np.uint8), 3)], encoder="tiny-clip")
    pairs = colour_images(1, seed=0)
    with pytest.raises(InvalidOptionsError, match="needs backbone="):
        align("image", pairs, encoder="tiny-clip", objective="caption", progress=False)
    with pytest.raises(InvalidOptionsError, match="unknown projector kind 'conv'"):
        align("image", pairs, encoder="tiny-clip", projector="conv", progress=False)


def test_exported_onnx_of_an_aligned_bundle_matches(tmp_path):
    """align(infonce) → save → hub.onnx.export(bundle=..., with_projector, pooled) → ONNX Runtime == embed_aligned."""
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from hub import Hub, Registry
    from hub import onnx as hub_onnx
    from hub.train import align

    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    pairs = [(Image.new("RGB", (20, 20), c), f"a {n} picture") for c, n in zip(colours * 2, ["red", "green", "blue"] * 2)]
    h = Hub()
    result = align("image", pairs, encoder="tiny-clip", anchor_encoder="tiny-bert", epochs=1, batch_size=6,
                   progress=False, hub=h)
    result.save(tmp_path / "aligned")
    manifest = hub_onnx.export("image", tmp_path / "onnx", bundle=tmp_path / "aligned", with_projector=True,
                               pooled=True, hub=h)
    assert manifest.parity.passed and manifest.with_projector and manifest.space == result.space
    items = [p[0] for p in pairs[:3]]
    served = hub_onnx.OnnxEncoder(tmp_path / "onnx", hub=h).encode(items).pooled(normalize=True)
    assert torch.allclose(served, result.embed_aligned(items), atol=1e-4)
