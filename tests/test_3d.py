"""The 3D plugin (hub_3d): items, files, normalization, order invariance, encoders, errors, weights."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch

trimesh = pytest.importorskip("trimesh")
hub_3d = pytest.importorskip("hub_3d")

from hub import Hub  # noqa: E402
from hub.errors import InvalidInputError, InvalidOptionsError, WeightsNotFoundError  # noqa: E402
from hub.testing import EncoderConformance  # noqa: E402
from hub_3d import PRESETS, farthest_point_sample, knn  # noqa: E402
from hub_3d._io import is_point_cloud  # noqa: E402

TINY = ["tiny-point-bert", "tiny-pointnet2"]


def cloud(n: int, seed: int = 0, channels: int = 0) -> np.ndarray:
    """A random, tie-free cloud (n, 3 + channels) float32."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3 + channels)).astype(np.float32)


def box() -> "trimesh.Trimesh":
    return trimesh.creation.box(extents=(1.0, 2.0, 3.0))


@pytest.fixture(scope="module")
def hub() -> Hub:
    return Hub()


def embed_one(enc, item) -> torch.Tensor:
    return enc.encode([item]).tokens[0]  # (groups, dim)


# -- conformance -------------------------------------------------------------------


class TestConformance(EncoderConformance):
    @pytest.fixture(params=sorted(PRESETS))
    def encoder(self, request, hub):
        return hub.encoder(request.param)  # built once per module (the hub caches it)

    @pytest.fixture
    def items(self):
        # different sizes (padding + point_mask), a subsampled torch cloud with colours (ignored), a mesh
        return [cloud(200, 1), torch.from_numpy(cloud(3000, 2, channels=3)), box()]

    @pytest.fixture
    def bad_items(self):
        nan = cloud(300)
        nan[5, 1] = np.nan
        return [nan, cloud(10), np.ones((300, 3), np.float32), cloud(300)[:, :2], trimesh.Trimesh()]


def test_presets_tokens_and_dims(hub):
    expected = {"point-bert": (64, 384), "pointnet2": (64, 256), "tiny-point-bert": (16, 32), "tiny-pointnet2": (16, 32)}
    assert set(hub.encoders(modality="3d")) == set(expected)
    for name, (tokens, dim) in expected.items():
        enc = hub.encoder(name)
        assert (enc.count_tokens(hub_3d.sample_item()), enc.dim) == (tokens, dim)
        assert enc.weights == "random-init(seed=0)" and enc.pretrained is False


# -- items and files -------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_array_kinds_agree(hub, name):
    enc = hub.encoder(name)
    x = cloud(400, 4)
    ref = embed_one(enc, x)
    assert ref.shape == (16, 32)
    torch.testing.assert_close(embed_one(enc, torch.from_numpy(x)), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(embed_one(enc, x.astype(np.float64)), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(embed_one(enc, trimesh.PointCloud(x)), ref, atol=1e-5, rtol=0)
    # extra channels beyond what the encoder uses are ignored (channels=0: xyz only)
    with_rgb = np.concatenate([x, np.random.default_rng(0).random((400, 3), dtype=np.float32)], axis=1)
    torch.testing.assert_close(embed_one(enc, with_rgb), ref, atol=1e-5, rtol=0)
    # half precision torch input is accepted
    half = embed_one(enc, torch.from_numpy(x).half())
    assert half.shape == ref.shape and torch.isfinite(half).all()


def test_channels_option(hub):
    enc = hub.encoder("tiny-point-bert", channels=3)
    x = cloud(300, 5, channels=3)
    a = embed_one(enc, x)
    y = x.copy()
    y[:, 3:] += 1.0  # different normals/colours → different tokens
    assert (embed_one(enc, y) - a).abs().max() > 1e-3
    # a mesh supplies its face normals as the 3 extra channels
    assert embed_one(enc, box()).shape == (16, 32)
    with pytest.raises(InvalidInputError, match=r"item 0 .*extra channel.*xyz \+ 3"):
        enc.prepare(cloud(300), 0)


def test_meshes_and_scenes(hub):
    enc = hub.encoder("tiny-point-bert")
    mesh = trimesh.creation.icosphere(subdivisions=2)
    prepared = enc.prepare(mesh)
    assert prepared.shape == (256, 3)  # sampled to num_points on the surface
    a = embed_one(enc, mesh)
    torch.testing.assert_close(embed_one(enc, mesh), a, atol=0, rtol=0)  # seeded sampling
    torch.testing.assert_close(embed_one(enc, trimesh.Scene(mesh)), a, atol=1e-5, rtol=0)
    # a mesh without faces is its vertices
    assert enc.prepare(trimesh.Trimesh(vertices=cloud(50), faces=np.zeros((0, 3), int), process=False)).shape == (50, 3)


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".off", ".stl"])
def test_mesh_files(hub, tmp_path, suffix):
    path = tmp_path / f"box{suffix}"
    box().export(path)
    assert hub.detect(str(path)) == "3d"
    te = hub.embed([str(path)], encoder="tiny-pointnet2")
    assert te.tokens.shape == (1, 16, 32) and te.mask.all()
    # the box was read with its geometry: surface samples span extents 1 : 2 : 3
    points = hub.encoder("tiny-pointnet2").prepare(path).numpy()
    assert points.shape == (256, 3)
    extent = points.max(0) - points.min(0)
    np.testing.assert_allclose(extent / extent[0], [1.0, 2.0, 3.0], atol=1e-4)


def test_point_files_match_arrays(hub, tmp_path):
    enc = hub.encoder("tiny-point-bert")
    x = cloud(300, 6)
    ref = embed_one(enc, x)
    np.save(tmp_path / "c.npy", x)
    np.savetxt(tmp_path / "c.xyz", x.astype(np.float64), fmt="%.9g")
    np.savetxt(tmp_path / "comma.xyz", x.astype(np.float64), fmt="%.9g", delimiter=",", header="x,y,z")
    trimesh.PointCloud(x).export(tmp_path / "c.ply")
    for name in ("c.npy", "c.xyz", "comma.xyz", "c.ply"):
        path = tmp_path / name
        assert hub.detect(str(path)) == "3d", name
        torch.testing.assert_close(embed_one(enc, path), ref, atol=1e-5, rtol=0, msg=name)
    # embed routes paths by suffix without modality=
    te = hub.embed([str(tmp_path / "c.npy"), str(tmp_path / "c.ply")])
    assert te.modality == "3d" and te.tokens.shape[:2] == (2, 64)  # default encoder: point-bert


def test_sample_item(hub):
    mod = hub.registry.modality("3d")
    item = mod.sample()
    assert hub.detect(item) == "3d"
    te = hub.embed(item, encoder=mod.demo_encoder)
    assert te.tokens.shape == (1, 16, 32)


# -- detection --------------------------------------------------------------------------


def test_detect_routing(hub, tmp_path):
    assert hub.detect(cloud(100)) == "3d"
    assert hub.detect(torch.from_numpy(cloud(100, channels=3))) == "3d"
    assert hub.detect(box()) == "3d"
    assert hub.detect(trimesh.PointCloud(cloud(20))) == "3d"
    path = tmp_path / "x.ply"
    box().export(path)
    assert hub.detect(str(path)) == "3d" and hub.detect(path) == "3d"
    # what 3d must not claim: pixels, images, strings, 1-D / 2-column arrays
    for other in (
        np.zeros((100, 3), np.uint8),
        np.zeros((8, 8, 3), np.float32),
        torch.zeros(3, 8, 8),
        np.zeros((100, 2), np.float32),
        np.zeros(100, np.float32),
        np.zeros((4, 64), np.float32),  # too wide to be points: a float image / features
        "a cat",
        [[0.0, 0.0, 0.0]],
    ):
        assert not is_point_cloud(other), other


# -- normalization, determinism, order invariance ------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_normalization(hub, name):
    enc = hub.encoder(name)
    x = cloud(300, 7) * 5.0 + np.array([10.0, -3.0, 2.0], np.float32)
    p = enc.prepare(x).numpy()
    assert np.allclose(p.mean(0), 0.0, atol=1e-5)
    assert np.isclose(np.linalg.norm(p, axis=1).max(), 1.0, atol=1e-6)
    # clouds equal up to translation and scale give the same tokens
    y = (x - 7.0) * 0.01
    torch.testing.assert_close(embed_one(enc, y), embed_one(enc, x), atol=1e-4, rtol=0)
    # subsampled clouds are normalized after subsampling
    big = enc.prepare(cloud(1000, 8) + 4.0).numpy()
    assert big.shape == (256, 3) and np.allclose(big.mean(0), 0.0, atol=1e-5)
    assert np.isclose(np.linalg.norm(big, axis=1).max(), 1.0, atol=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_point_order_invariance_through_the_hub(hub, name):
    enc = hub.encoder(name)
    perm = np.random.default_rng(1).permutation
    for n in (200, 1000):  # used as is / subsampled (subsampling follows a canonical order)
        x = cloud(n, 9)
        y = x[perm(n)]
        a, b = enc.encode([x]), enc.encode([y])
        torch.testing.assert_close(b.tokens, a.tokens, atol=1e-5, rtol=0)
        torch.testing.assert_close(b.pooled(), a.pooled(), atol=1e-5, rtol=0)
    # symmetric shapes (exact distance ties) too
    vertices = np.asarray(box().vertices, np.float32)
    mesh_points = np.concatenate([vertices * s for s in (1.0, 2.0, 3.0, 4.0)])  # (32, 3), many equal distances
    torch.testing.assert_close(embed_one(enc, mesh_points[perm(32)]), embed_one(enc, mesh_points), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", TINY)
@torch.no_grad()
def test_forward_is_order_invariant(hub, name):
    """forward itself (no canonical sort): permuted points, with padding scattered among them."""
    enc = hub.encoder(name)
    x = torch.from_numpy(cloud(240, 10))
    x = x / x.norm(dim=1).max()
    perm = torch.randperm(240, generator=torch.Generator().manual_seed(0))
    a = enc(points=x[None], point_mask=torch.ones(1, 240, dtype=torch.bool))
    # 60 padded points full of garbage at random positions; the mask keeps them out
    padded = torch.full((300, 3), 1e3)
    slots = torch.randperm(300, generator=torch.Generator().manual_seed(1))[:240].sort().values
    padded[slots] = x[perm]
    mask = torch.zeros(300, dtype=torch.bool)
    mask[slots] = True
    b = enc(points=padded[None], point_mask=mask[None])
    torch.testing.assert_close(b.pooled(), a.pooled(), atol=1e-5, rtol=0)
    torch.testing.assert_close(b.tokens, a.tokens, atol=1e-5, rtol=0)  # same tokens in the same FPS order
    # and the token sets agree (column-wise sorted), whatever the order
    torch.testing.assert_close(b.tokens[0].sort(dim=0).values, a.tokens[0].sort(dim=0).values, atol=1e-5, rtol=0)


def test_determinism_and_seed(hub):
    x = cloud(1000, 11)
    a = hub.encoder("tiny-point-bert", seed=3)
    b = Hub().encoder("tiny-point-bert", seed=3)  # a fresh hub: built again from the seed
    assert a is not b
    torch.testing.assert_close(embed_one(b, x), embed_one(a, x), atol=0, rtol=0)
    assert torch.equal(a.prepare(x), b.prepare(x))  # seeded subsampling
    c = hub.encoder("tiny-point-bert", seed=4)
    assert not torch.equal(c.prepare(x), a.prepare(x))
    assert (embed_one(c, x) - embed_one(a, x)).abs().max() > 1e-3


# -- farthest-point sampling and kNN ---------------------------------------------------------


def test_fps_matches_reference_and_respects_mask():
    x = torch.from_numpy(cloud(50, 12))
    mask = torch.ones(1, 50, dtype=torch.bool)
    mask[0, 40:] = False
    got = farthest_point_sample(x[None], mask, 10)[0].tolist()
    # naive reference: start farthest from the centroid, then greedy max-min distance
    pts = x[:40].double().numpy()
    d0 = ((pts - pts.mean(0)) ** 2).sum(1)
    ref = [int(d0.argmax())]
    nearest = np.full(40, np.inf)
    for _ in range(9):
        nearest = np.minimum(nearest, ((pts - pts[ref[-1]]) ** 2).sum(1))
        ref.append(int(nearest.argmax()))
    assert got == ref and len(set(got)) == 10 and max(got) < 40


def test_knn_matches_brute_force():
    x = torch.from_numpy(cloud(60, 13))[None]
    mask = torch.ones(1, 60, dtype=torch.bool)
    mask[0, ::3] = False
    q = x[:, :5]
    got = knn(q, x, mask, 7)[0]
    for i in range(5):
        d = ((x[0] - q[0, i]) ** 2).sum(1)
        d[~mask[0]] = float("inf")
        assert set(got[i].tolist()) == set(d.argsort()[:7].tolist())
        assert mask[0, got[i]].all()


# -- bad inputs ---------------------------------------------------------------------------------


def _corrupt_files(tmp_path):
    files = {
        "bad.ply": (b"ply\nformat ascii 1.0\nelement vertex 3\nend_header\n1 2\n", "cannot read|empty"),
        "bad.obj": (b"hello world\nfoo bar\n", "empty scene|no geometry"),
        "bad.stl": (b"\x00" * 10, "empty|cannot read"),
        "bad.off": (b"OFF\n3 1 0\n0 0 0\n", "cannot read"),
        "bad.npy": (b"not an npy file", "cannot read as .npy"),
        "bad.xyz": (b"1 2 three\n4 5 6\n", "cannot parse as .xyz"),
        "empty.xyz": (b"", "no points"),
    }
    out = []
    for name, (data, match) in files.items():
        (tmp_path / name).write_bytes(data)
        out.append((tmp_path / name, match))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    out.append((tmp_path / "obj.npy", "pickled"))
    (tmp_path / "x.dat").write_text("1 2 3\n")
    out.append((tmp_path / "x.dat", "cannot read .dat files"))
    return out


def test_bad_inputs_name_the_item(hub, tmp_path):
    enc = hub.encoder("tiny-point-bert")
    nan, inf = cloud(300), cloud(300)
    nan[7, 0] = np.nan
    inf[9, 2] = np.inf
    zero_area = trimesh.Trimesh(vertices=[[0, 0, 0], [1, 1, 1], [2, 2, 2]], faces=[[0, 1, 2]], process=False)
    cases = [
        (cloud(10), r"has 10 point\(s\); this encoder needs at least 16"),
        (nan, r"NaN or inf.*row 7"),
        (torch.from_numpy(inf), r"NaN or inf.*row 9"),
        (cloud(300)[:, :2], r"wrong shape \(300, 2\)"),
        (np.zeros(30, np.float32), r"wrong shape \(30,\)"),
        (np.zeros((4, 30, 3), np.float32), r"wrong shape"),
        (np.zeros((0, 3), np.float32), r"no points"),
        (np.full((300, 3), 2.5, np.float32), r"degenerate"),
        (np.ones((300, 3), bool), r"dtype bool"),
        (trimesh.Trimesh(), r"empty mesh"),
        (zero_area, r"zero surface area"),
        (trimesh.Scene(), r"empty scene"),
        ("missing.ply", r"no such file"),
        ("a cat", r"not a point cloud"),
        ({"points": cloud(300)}, r"dict is not a point cloud"),
        *_corrupt_files(tmp_path),
    ]
    for bad, match in cases:
        with pytest.raises(InvalidInputError, match=match) as info:
            enc.prepare(bad, 5)
        assert str(info.value).startswith("item 5 ("), str(info.value)
        assert "tiny-point-bert accepts" in str(info.value)
    # the minimum depends on the preset, and the message says so
    with pytest.raises(InvalidInputError, match=r"needs at least 32 .*first set-abstraction level picks 32 centres"):
        hub.encoder("tiny-pointnet2").prepare(cloud(20), 0)


def test_bad_items_through_embed(hub, tmp_path):
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"garbage")
    with pytest.raises(InvalidInputError, match=r"item 1 .*bad\.ply"):
        hub.embed([cloud(100), str(bad)], encoder="tiny-point-bert")
    te = hub.embed([cloud(100), str(bad), cloud(5)], encoder="tiny-point-bert", on_error="skip")
    assert te.indices == [0] and [e.index for e in te.errors] == [1, 2]


# -- options, weights --------------------------------------------------------------------------------


def test_invalid_options(hub):
    with pytest.raises(InvalidOptionsError, match="divisible by heads"):
        hub.encoder("tiny-point-bert", dim=30, heads=4)
    with pytest.raises(InvalidOptionsError, match="num_points=8"):
        hub.encoder("tiny-point-bert", num_points=8)
    with pytest.raises(InvalidOptionsError):
        hub.encoder("tiny-pointnet2", heads=2)  # pointnet2 has no heads
    enc = hub.encoder("tiny-point-bert", num_groups=8, group_size=8, dim=48, heads=3, depth=1, num_points=128)
    assert enc.encode([cloud(500)]).tokens.shape == (1, 8, 48)


@pytest.mark.parametrize("name", TINY)
def test_save_and_load_round_trip(hub, tmp_path, name):
    enc = Hub().encoder(name)
    with torch.no_grad():  # "train" it: weights that differ from the seeded init
        for p in enc.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
    x = cloud(500, 14)
    expected = embed_one(enc, x)
    out = enc.save_pretrained(tmp_path / "w")
    assert sorted(f.name for f in out.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["architecture"] == PRESETS[name].architecture
    loaded = Hub().encoder(name, weights=str(out))
    assert loaded.weights == str(out)
    torch.testing.assert_close(embed_one(loaded, x), expected, atol=1e-6, rtol=0)
    assert (embed_one(hub.encoder(name), x) - expected).abs().max() > 1e-3  # not just the seeded init
    # runtime options may change; the architecture may not
    assert Hub().encoder(name, weights=str(out), num_points=128).prepare(cloud(500)).shape == (128, 3)
    with pytest.raises(InvalidOptionsError, match="contradict the weights"):
        Hub().encoder(name, weights=str(out), dim=64)
    other = "tiny-pointnet2" if name == "tiny-point-bert" else "tiny-point-bert"
    with pytest.raises(InvalidOptionsError, match="are for a"):
        Hub().encoder(other, weights=str(out))


def test_missing_or_pickled_weights(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="local directory"):
        Hub().encoder("tiny-point-bert", weights=str(tmp_path / "nope"))
    (tmp_path / "config.json").write_text(json.dumps({"format": "modality-hub-3d", "architecture": "point-bert"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(WeightsNotFoundError, match="missing model.safetensors"):
        Hub().encoder("tiny-point-bert", weights=str(tmp_path))


# -- ONNX (optional) -----------------------------------------------------------------------------------


def test_forward_exports_to_onnx(hub):
    """The network traces with dynamic batch and point count; onnxruntime matches torch."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    enc = hub.encoder("tiny-point-bert")
    x = enc.collate([enc.prepare(cloud(300, 15)), enc.prepare(cloud(200, 16))])
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            enc.model.eval(), (x["points"], x["point_mask"]), buf, dynamo=False,
            input_names=["points", "point_mask"], output_names=["tokens"],
            dynamic_axes={"points": {0: "batch", 1: "points"}, "point_mask": {0: "batch", 1: "points"}},
        )
    y = enc.collate([enc.prepare(cloud(n, n)) for n in (120, 256, 64)])
    session = ort.InferenceSession(buf.getvalue())
    (tokens,) = session.run(None, {"points": y["points"].numpy(), "point_mask": y["point_mask"].numpy()})
    np.testing.assert_allclose(tokens, enc(**y).tokens.detach().numpy(), atol=1e-4)

