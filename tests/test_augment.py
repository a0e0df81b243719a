"""Augmentations registered by the image, audio, graph and 3d plugins (issue 6).

Generic checks run for every registered augmentation (parametrized over the
registry, so a new one gets them automatically): ``hub.testing.AugmentationConformance``
(params validated, input untouched, the output a valid item of the same modality that
the demo encoder embeds, seeded, bad items refused), then the canonical output form and
sizes kept where they should be.  Semantic checks follow per modality.
"""

from __future__ import annotations

import copy
import math

import networkx as nx
import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from scipy.spatial.distance import pdist
from torch_geometric.data import Data
from torch_geometric.utils import to_networkx

import hub_3d._augment
import hub_audio._augment
import hub_graph._augment
import hub_image._augment
from hub import Hub, InvalidOptionsError, Registry
from hub.testing import AugmentationConformance, same_item
from hub_3d import sample_item
from hub_audio import examples as audio_examples
from hub_image._items import sample_image

MODULES = {
    "image": hub_image._augment,
    "audio": hub_audio._augment,
    "graph": hub_graph._augment,
    "3d": hub_3d._augment,
}
EXPECTED = {
    "image": {"colour_jitter", "rotation", "crop", "jigsaw", "resolution"},
    "audio": {"gain", "noise", "time_shift", "speed", "time_mask", "freq_mask"},
    "graph": {"node_drop", "edge_perturb", "feature_mask", "subgraph"},
    "3d": {"rotation", "jitter", "crop", "anisotropic_scale", "point_dropout"},
}


def _make_hub() -> Hub:
    """A fresh registry with the installed plugins; the augment modules are added in-process
    for any plugin that does not register its augmentations yet."""
    registry = Registry()
    for modality, module in MODULES.items():
        if not registry.list_augmentations(modality):
            registry.register_plugin(module, name=f"test-augment-{modality}")
    return Hub(registry)


HUB = _make_hub()
#: the modality plugins' own augmentations (other plugins' run their conformance in their own tests, e.g. the
#: starter pack's deterministic normalisers in tests/test_starter.py)
KEYS = [k for k in HUB.augmentations() if k.split("/", 1)[0] in MODULES and k.split("/", 1)[1] in EXPECTED[k.split("/", 1)[0]]]
#: augmentations that change the item's size (samples / nodes / points)
RESIZES = {"audio/speed", "graph/node_drop", "graph/subgraph", "3d/crop", "3d/point_dropout"}


# -- items -------------------------------------------------------------------------------------------
def _items(modality: str) -> list:
    """Two valid items of different kinds per modality."""
    rng = np.random.default_rng(0)
    if modality == "image":
        noise = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
        return [sample_image(), noise]  # PIL image, numpy uint8 array
    if modality == "audio":
        clip = audio_examples(2)[1]  # dict at 22050 Hz
        t = np.arange(8000) / 8000
        stereo = torch.from_numpy(np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)]) * 0.3)
        return [clip, (stereo, 8000)]  # an HF-style dict, a (channels, samples) tensor tuple
    if modality == "graph":
        edges = np.array([[i, (i + 1) % 12] for i in range(12)] + [[0, 6], [3, 9]]).T
        return [nx.karate_club_graph(), {"edge_index": edges, "x": rng.standard_normal((12, 16)).astype(np.float32)}]
    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    return [sample_item(), box]  # (512, 3) array, a mesh (sampled with normals)


BAD_ITEMS = {
    "image": np.zeros((0, 4, 3), dtype=np.uint8),
    "audio": {"array": np.zeros(0, dtype=np.float32), "sampling_rate": 16000},
    "graph": {"edge_index": np.array([[0], [5]]), "num_nodes": 2},
    "3d": np.full((10, 3), np.nan, dtype=np.float32),
}


def _size(modality: str, item) -> object:
    return {
        "image": lambda x: hub_image._items.to_rgb(x).size,
        "audio": lambda x: hub_audio._augment.read_audio(x)["array"].shape[0],
        "graph": lambda x: hub_graph._augment.read_graph(x).num_nodes,
        "3d": lambda x: hub_3d._augment.read_cloud(x, np.random.default_rng(0))[0].shape[0],
    }[modality](item)


def _check_image(out, item) -> None:
    assert isinstance(out, Image.Image) and out.mode == "RGB"


def _check_audio(out, item) -> None:
    assert set(out) == {"array", "sampling_rate"}
    arr = out["array"]
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.ndim == 1 and arr.size > 0
    assert np.isfinite(arr).all()
    assert out["sampling_rate"] == hub_audio._augment.read_audio(item)["sampling_rate"]


def _check_graph(out, item) -> None:
    assert isinstance(out, Data)
    n, ei = out.num_nodes, out.edge_index
    assert n >= 1 and out.x.shape[0] == n and out.x.dtype == torch.float32
    assert out.x.shape[1] == hub_graph._augment.read_graph(item).x.shape[1]
    assert bool(torch.isfinite(out.x).all())
    assert ei.dtype == torch.long and ei.shape[0] == 2
    if ei.numel():
        assert 0 <= int(ei.min()) and int(ei.max()) < n, "edge indices out of range"
        pairs = set(map(tuple, ei.t().tolist()))
        assert all((v, u) in pairs for u, v in pairs), "edges must stay undirected"
        assert len(pairs) == ei.shape[1], "duplicate edges"


def _check_3d(out, item) -> None:
    width = hub_3d._augment.read_cloud(item, np.random.default_rng(0))[0].shape[1]
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.ndim == 2 and out.shape[1] == width
    assert out.shape[0] >= 1 and np.isfinite(out).all()


CHECKS = {"image": _check_image, "audio": _check_audio, "graph": _check_graph, "3d": _check_3d}


@pytest.fixture(scope="module")
def outputs() -> dict[str, list]:
    """Every augmentation applied (seed 0) to both items of its modality."""
    return {key: [HUB.augment(item, key.split("/")[1], modality=key.split("/")[0], seed=0)
                  for item in _items(key.split("/")[0])] for key in KEYS}


# -- the registry ------------------------------------------------------------------------------------
def test_every_plugin_registers_its_augmentations():
    for modality, names in EXPECTED.items():
        assert {k.split("/", 1)[1] for k in HUB.augmentations(modality)} >= names
        for name in names:
            spec = HUB.registry.augmentation(modality, name)
            assert spec.key == f"{modality}/{name}" and spec.description
            assert spec.params is not None and spec.params.model_config.get("extra") == "forbid"
            spec.params()  # the defaults validate


def test_installed_plugins_wire_the_hook():
    """Once each plugin's __init__ imports ``register_augmentations``, the default hub has them."""
    missing = [m for m in EXPECTED if not Hub(Registry()).augmentations(m)]
    if missing:
        pytest.skip(f"plugins {missing} do not import register_augmentations from ._augment yet")
    assert not missing


def test_unknown_augmentation_names_the_installed_ones():
    with pytest.raises(KeyError, match="jigsaw"):
        HUB.augment(sample_image(), "jigsw", seed=0)


# -- generic checks over the registry ----------------------------------------------------------------
@pytest.mark.parametrize("key", KEYS)
def test_output_is_a_valid_item_of_the_modality(key, outputs):
    modality = key.split("/")[0]
    for item, out in zip(_items(modality), outputs[key]):
        assert HUB.detect(out) == modality
        CHECKS[modality](out, item)
        if key not in RESIZES:
            assert _size(modality, out) == _size(modality, item), f"{key} must keep the size"


class TestConformance(AugmentationConformance):
    """The contract every augmentation keeps (CONTRIBUTING.md, "Testing an augmentation")."""

    registry = HUB.registry

    @pytest.fixture(params=KEYS)
    def augmentation(self, request):
        return request.param

    @pytest.fixture
    def items(self, augmentation):
        return _items(augmentation.split("/")[0])

    @pytest.fixture
    def bad_items(self, augmentation):
        return [BAD_ITEMS[augmentation.split("/")[0]]]


def test_same_item_sees_in_place_changes():
    """The conformance suite's deep comparison catches a change in each item kind used above."""
    for modality in MODULES:
        for item in _items(modality):
            before = copy.deepcopy(item)
            assert same_item(item, before)
    g = nx.karate_club_graph()
    before = copy.deepcopy(g)
    g.nodes[0]["club"] = "Officer"
    assert not same_item(g, before)
    box = trimesh.creation.box()
    before = copy.deepcopy(box)
    box.vertices[0, 0] += 1
    assert not same_item(box, before)
    clip = _items("audio")[0]
    before = copy.deepcopy(clip)
    clip["array"][5] += 0.5
    assert not same_item(clip, before)
    pair = _items("audio")[1]
    before = copy.deepcopy(pair)
    pair[0][0, 0] = 9.0
    assert not same_item(pair, before)
    img = sample_image()
    before = img.copy()
    img.putpixel((0, 0), (1, 2, 3))
    assert not same_item(img, before)
    data = hub_graph._augment.read_graph(nx.cycle_graph(4))
    before = copy.deepcopy(data)
    data.x[0, 0] += 1
    assert not same_item(data, before)


OUT_OF_RANGE = [
    ("image", "colour_jitter", {"hue": 0.7}), ("image", "rotation", {"degrees": -1}),
    ("image", "crop", {"scale": (0.9, 0.5)}), ("image", "jigsaw", {"grid": 1}),
    ("image", "resolution", {"factor": (0.5, 2.0)}), ("audio", "gain", {"db": (6, -6)}),
    ("audio", "speed", {"factor": (0.0, 1.0)}), ("audio", "time_shift", {"max_fraction": 0}),
    ("audio", "freq_mask", {"num_masks": 0}), ("graph", "node_drop", {"share": 1.0}),
    ("graph", "edge_perturb", {"share": -0.1}), ("graph", "subgraph", {"min_nodes": 0}),
    ("graph", "feature_mask", {"mode": "row"}), ("3d", "rotation", {"up_axis": "w"}),
    ("3d", "jitter", {"clip": 0}), ("3d", "crop", {"keep": (0.0, 0.5)}),
    ("3d", "anisotropic_scale", {"factors": (-1, 1)}), ("3d", "point_dropout", {"share": (0.5, 1.0)}),
]


@pytest.mark.parametrize("modality,name,params", OUT_OF_RANGE)
def test_out_of_range_params(modality, name, params):
    with pytest.raises(InvalidOptionsError, match=next(iter(params))):
        HUB.augment(_items(modality)[0], name, modality=modality, **params)


def test_chained_augmentations_are_seeded():
    img = sample_image()
    a = HUB.augment(img, ["crop", "jigsaw", "colour_jitter"], seed=7)
    assert same_item(a, HUB.augment(img, ["crop", "jigsaw", "colour_jitter"], seed=7))
    assert a.size == img.size


# -- image -------------------------------------------------------------------------------------------
def _tiles(arr: np.ndarray, k: int) -> list[bytes]:
    th, tw = arr.shape[0] // k, arr.shape[1] // k
    return sorted(arr[r * th:(r + 1) * th, c * tw:(c + 1) * tw].tobytes() for r in range(k) for c in range(k))


def test_jigsaw_permutes_tiles():
    arr = np.random.default_rng(1).integers(0, 256, (48, 60, 3), dtype=np.uint8)
    out = np.asarray(HUB.augment(arr, "jigsaw", modality="image", seed=0, grid=3))
    assert _tiles(out, 3) == _tiles(arr, 3), "the same multiset of tiles"
    assert not np.array_equal(out, arr)
    odd = np.random.default_rng(2).integers(0, 256, (50, 61, 3), dtype=np.uint8)  # 2 rows / 1 column left over
    out = np.asarray(HUB.augment(odd, "jigsaw", modality="image", seed=0, grid=4))
    assert np.array_equal(out[48:], odd[48:]) and np.array_equal(out[:, 60:], odd[:, 60:])
    assert _tiles(out[:48, :60], 4) == _tiles(odd[:48, :60], 4)


def test_image_identity_settings_and_effects():
    arr = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    same = {
        "colour_jitter": dict(brightness=0, contrast=0, saturation=0, hue=0),
        "rotation": dict(degrees=0),
        "crop": dict(scale=(1, 1), ratio=(64 / 48, 64 / 48)),
        "resolution": dict(factor=(1, 1)),
    }
    for name, params in same.items():
        assert np.array_equal(np.asarray(HUB.augment(arr, name, modality="image", seed=0, **params)), arr), name
    # brightness alone scales every pixel by one factor
    out = np.asarray(HUB.augment(arr, "colour_jitter", seed=0, brightness=0.5, contrast=0, saturation=0, hue=0),
                     dtype=np.float64)
    ok = (arr > 20) & (out < 250)
    ratio = out[ok] / arr[ok]
    assert 0.5 <= np.median(ratio) <= 1.5 and np.abs(ratio - np.median(ratio)).max() < 0.1
    # a lower resolution is smoother: neighbouring pixels differ less
    low = np.asarray(HUB.augment(arr, "resolution", seed=0, factor=(4, 4)), dtype=np.float64)
    assert np.abs(np.diff(low, axis=1)).mean() < 0.5 * np.abs(np.diff(arr.astype(np.float64), axis=1)).mean()
    # rotation fills the uncovered corners
    grey = np.full((40, 40, 3), 128, np.uint8)
    rotated = [np.asarray(HUB.augment(grey, "rotation", seed=s, degrees=180, fill=(255, 0, 255),
                                      interpolation="nearest")) for s in range(4)]
    assert any((r[0, 0] == (255, 0, 255)).all() for r in rotated)
    assert all((r[20, 20] == 128).all() for r in rotated), "the centre stays"


# -- audio -------------------------------------------------------------------------------------------
def _tone(seconds: float = 1.0, rate: int = 16000) -> dict:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 300 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t) + 0.1 * np.sin(2 * np.pi * 6000 * t)
    return {"array": wave.astype(np.float32), "sampling_rate": rate}


@pytest.mark.parametrize("factor", [0.8, 1.25, 1.5])
def test_speed_changes_duration_by_the_factor(factor):
    clip = _tone()
    out = HUB.augment(clip, "speed", seed=0, factor=(factor, factor))
    assert out["sampling_rate"] == 16000
    assert abs(out["array"].shape[0] - 16000 / factor) <= 1


def test_gain_noise_and_shift():
    clip = _tone()
    x = clip["array"].astype(np.float64)
    loud = HUB.augment(clip, "gain", seed=0, db=(12, 12))["array"]
    assert np.abs(loud).max() <= 1.0 and np.allclose(loud, np.clip(x * 10 ** (12 / 20), -1, 1), atol=1e-5)
    noisy = HUB.augment(clip, "noise", seed=0, snr_db=(20, 20))["array"].astype(np.float64)
    snr = 10 * np.log10((x**2).sum() / ((noisy - x) ** 2).sum())
    assert abs(snr - 20) < 0.01
    rolled = HUB.augment(clip, "time_shift", seed=0, mode="circular")["array"]
    shifts = [s for s in range(-3200, 3201) if np.array_equal(np.roll(clip["array"], s), rolled)]
    assert len(shifts) >= 1 and shifts[0] != 0
    padded = HUB.augment(clip, "time_shift", seed=0, mode="pad")["array"]
    s = shifts[0]
    assert np.array_equal(padded[s:] if s > 0 else padded[:s], clip["array"][:-s] if s > 0 else clip["array"][-s:])
    assert (padded[:s] == 0).all() if s > 0 else (padded[s:] == 0).all()


def test_time_mask_zeros_one_span():
    clip = _tone()
    out = HUB.augment(clip, "time_mask", seed=0, max_fraction=0.2)["array"]
    changed = np.flatnonzero(out != clip["array"])
    assert changed.size > 0 and (out[changed] == 0).all()
    assert changed[-1] - changed[0] + 1 <= 0.2 * 16000  # one span of at most 20 %


def test_freq_mask_zeros_a_band():
    clip = _tone()
    out = HUB.augment(clip, "freq_mask", seed=0, max_fraction=0.3, num_masks=2)["array"]
    before, after = np.abs(np.fft.rfft(clip["array"])), np.abs(np.fft.rfft(out))
    kept = after > 1e-3 * before.max()
    assert (after[kept] / np.maximum(before[kept], 1e-12) < 1.01).all()  # nothing gains energy
    assert (after < 1e-3 * before.max()).sum() > 0 and (out**2).sum() < (clip["array"] ** 2).sum()


# -- graph -------------------------------------------------------------------------------------------
def _undirected(data: Data) -> set[tuple[int, int]]:
    return {(min(u, v), max(u, v)) for u, v in data.edge_index.t().tolist()}


def test_node_drop_keeps_edges_in_range():
    g = nx.karate_club_graph()
    original = hub_graph._augment.read_graph(g)
    out = HUB.augment(g, "node_drop", seed=0, share=0.3)
    assert out.num_nodes == 34 - round(0.3 * 34)
    assert int(out.edge_index.max()) < out.num_nodes
    rows = {tuple(r) for r in original.x.tolist()}
    assert all(tuple(r) in rows for r in out.x.tolist()), "kept nodes keep their features"
    assert HUB.augment(g, "node_drop", seed=0, share=0.95, min_nodes=10).num_nodes == 10


def test_edge_perturb_keeps_the_edge_count():
    g = nx.karate_club_graph()
    before = _undirected(hub_graph._augment.read_graph(g))
    out = HUB.augment(g, "edge_perturb", seed=0, share=0.25)
    after = _undirected(out)
    assert len(after) == len(before) == 78 and all(u != v for u, v in after)
    assert len(before - after) == round(0.25 * 78) == len(after - before)
    assert not (_undirected(HUB.augment(g, "edge_perturb", seed=0, share=1.0)) & before)
    full = HUB.augment(nx.complete_graph(5), "edge_perturb", seed=0, share=0.5)  # nothing to add
    assert len(_undirected(full)) == 10 - 5


def test_feature_mask_zeros_columns_or_entries():
    item = _items("graph")[1]
    out = HUB.augment(item, "feature_mask", modality="graph", seed=0, share=0.25)
    x = torch.from_numpy(item["x"])
    zeroed = [c for c in range(16) if not torch.equal(out.x[:, c], x[:, c])]
    assert len(zeroed) == 4 and all((out.x[:, c] == 0).all() for c in zeroed)
    entries = HUB.augment(item, "feature_mask", modality="graph", seed=0, share=0.5, mode="entry").x
    changed = entries != x
    assert (entries[changed] == 0).all() and 0.3 < changed.float().mean() < 0.7


def test_subgraph_is_connected_and_large_enough():
    g = nx.karate_club_graph()
    for seed in range(5):
        out = HUB.augment(g, "subgraph", seed=seed, share=0.3, min_nodes=4)
        assert out.num_nodes == math.ceil(0.3 * 34)
        assert nx.is_connected(to_networkx(out, to_undirected=True))
    two = nx.disjoint_union(nx.path_graph(3), nx.cycle_graph(10))  # small component cannot hold 6 nodes
    for seed in range(5):
        out = HUB.augment(two, "subgraph", seed=seed, share=0.1, min_nodes=6)
        assert out.num_nodes == 6 and nx.is_connected(to_networkx(out, to_undirected=True))


# -- 3d ----------------------------------------------------------------------------------------------
def test_rotation_preserves_pairwise_distances():
    cloud = sample_item() * np.array([1.0, 2.0, 0.5], dtype=np.float32) + 3.0
    for params in ({}, {"mode": "up", "up_axis": "z", "max_degrees": 90}):
        out = HUB.augment(cloud, "rotation", seed=0, **params)
        assert np.allclose(pdist(out), pdist(cloud), atol=1e-4)
        assert np.allclose(out.mean(axis=0), cloud.mean(axis=0), atol=1e-4), "rotates about the centroid"
        assert not np.allclose(out, cloud, atol=1e-3)
    up = HUB.augment(cloud, "rotation", seed=0, mode="up", up_axis="z")
    assert np.allclose(up[:, 2], cloud[:, 2], atol=1e-5)


def test_mesh_normals_follow_the_geometry():
    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    out = HUB.augment(box, "rotation", seed=0)
    assert out.shape == (hub_3d._augment.MESH_POINTS, 6)
    assert np.allclose(np.linalg.norm(out[:, 3:], axis=1), 1.0, atol=1e-5)
    # still 6 faces; the points of each lie in the plane its (rotated) normal defines
    faces = np.unique(np.round(out[:, 3:], 4), axis=0)
    assert len(faces) == 6
    heights = []
    for normal in faces:
        on_face = np.abs(out[:, 3:] - normal).max(axis=1) < 1e-3
        height = out[on_face, :3] @ normal
        assert np.ptp(height) < 1e-4
        heights.append(height.mean())
    thickness = sorted(heights[i] + heights[j] for i in range(6) for j in range(6)
                       if np.allclose(faces[i], -faces[j], atol=1e-3) and i < j)
    assert np.allclose(thickness, [0.5, 1.0, 2.0], atol=1e-4), "opposite faces sit one extent apart"


def test_jitter_scale_crop_and_dropout():
    cloud = sample_item() * 5.0
    radius = np.linalg.norm(cloud - cloud.mean(axis=0), axis=1).max()  # about 5
    jittered = HUB.augment(cloud, "jitter", seed=0, sigma=0.02, clip=0.03)
    assert 0.02 * radius < np.abs(jittered - cloud).max() <= 0.03 * radius + 1e-5
    scaled = HUB.augment(cloud, "anisotropic_scale", seed=0, factors=(2, 2))
    centroid = cloud.mean(axis=0)
    assert np.allclose(scaled, centroid + 2 * (cloud - centroid), atol=1e-4)
    per_axis = HUB.augment(cloud, "anisotropic_scale", seed=0)
    factors = np.ptp(per_axis, axis=0) / np.ptp(cloud, axis=0)
    assert ((factors > 2 / 3 - 1e-4) & (factors < 1.5 + 1e-4)).all() and np.ptp(factors) > 1e-3
    rows = {tuple(r) for r in cloud.tolist()}
    for name, params, low, high in [("crop", {}, 0.6, 0.9), ("point_dropout", {}, 0.5, 0.9),
                                    ("crop", {"keep": (0.01, 0.01), "min_points": 100}, 100 / 512, 100 / 512),
                                    ("point_dropout", {"share": (0.99, 0.99), "min_points": 64}, 64 / 512, 64 / 512)]:
        out = HUB.augment(cloud, name, seed=0, **params)
        assert math.floor(low * 512) <= len(out) <= math.ceil(high * 512), (name, params, len(out))
        assert all(tuple(r) in rows for r in out.tolist()), "points are kept, not moved"
    # a crop keeps a half-space: some plane separates kept from removed points
    kept = HUB.augment(cloud, "crop", seed=0, keep=(0.5, 0.5))
    removed = np.array([r for r in cloud.tolist() if tuple(r) not in {tuple(k) for k in kept.tolist()}])
    from scipy.optimize import linprog  # feasibility of w . p + b >= eps (kept), <= -eps (removed)

    a = np.vstack([np.hstack([kept, np.ones((len(kept), 1))]), -np.hstack([removed, np.ones((len(removed), 1))])])
    res = linprog(np.zeros(4), A_ub=a, b_ub=-np.ones(len(a)) * 1e-6, bounds=[(None, None)] * 4)
    assert res.status == 0, "kept and removed points are not separated by a plane"


def test_file_paths_are_read(tmp_path):
    """Files (as str or Path, the way users pass them) go through each plugin's own reader."""
    import soundfile as sf

    png = tmp_path / "a.png"
    sample_image().save(png)
    wav = tmp_path / "a.wav"
    sf.write(wav, _tone(0.5)["array"], 16000)
    gml = tmp_path / "a.gml"
    nx.write_gml(nx.cycle_graph(8), gml)
    npy = tmp_path / "a.npy"
    np.save(npy, sample_item())
    cases = [(png, "image", "jigsaw"), (wav, "audio", "gain"), (gml, "graph", "node_drop"), (npy, "3d", "jitter")]
    for path, modality, name in cases:
        for item in (path, str(path)):
            out = HUB.augment(item, name, seed=0)
            assert HUB.detect(out) == modality
            CHECKS[modality](out, path)
