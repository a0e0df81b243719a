"""`mhub serve` against a real uvicorn server on 127.0.0.1 (free port, always stopped).

Every modality in every input form equals ``Hub.embed(...).pooled(normalize=True)``; base64 is
bit-exact to the float form; the official ``openai`` client works; auth, 413, 429, item caps,
bad-item isolation, a hanging encoder and the SIGTERM drain are checked on small servers.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from hub.serve import BackgroundServer, ServeConfig, create_app  # noqa: E402
from media import b64, png, wav  # noqa: E402  (tests/media.py)

ENCODERS = ("minilm-l6", "tiny-clip", "tiny-whisper", "gin", "tiny-point-bert")
TOL = 1e-5


# -- helpers ------------------------------------------------------------------------------------
class Proxy:
    """An encoder wrapper for tests: can declare Matryoshka dims, block in forward, or poison a batch."""

    def __init__(self, encoder, *, matryoshka_dims=None, gate: threading.Event | None = None,
                 started: threading.Event | None = None, poison: str | None = None) -> None:
        self._enc, self._gate, self._started, self._poison = encoder, gate, started, poison
        if matryoshka_dims:
            self.matryoshka_dims = matryoshka_dims

    def __getattr__(self, name):
        return getattr(self._enc, name)

    def prepare(self, item, index=0):
        if self._poison is not None and item == self._poison:
            return {"poison": True}  # passes prepare, breaks collate: a batch-level failure
        return self._enc.prepare(item, index)

    def num_tokens(self, p):
        return 1 if "poison" in p else self._enc.num_tokens(p)

    def length(self, p):
        return self.num_tokens(p)

    def collate(self, prepared):
        if any("poison" in p for p in prepared):
            raise RuntimeError("poisoned batch")
        return self._enc.collate(prepared)

    def __call__(self, **tensors):
        if self._started is not None:
            self._started.set()
        if self._gate is not None:
            self._gate.wait(30)
        return self._enc(**tensors)


@contextmanager
def running(models, **config):
    config.setdefault("batch_threads", 1)  # deterministic batching whatever the machine's cores
    with BackgroundServer(create_app(models, ServeConfig(**config))) as server:
        yield server


def post(server, body, key=None, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.url}/v1/embeddings", json=body, headers=headers, timeout=60, **kw)


def vectors(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data)))
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") if isinstance(d["embedding"], str)
            else np.asarray(d["embedding"], dtype=np.float32) for d in data]
    return np.stack(rows)


def reference(hub, items, encoder) -> np.ndarray:
    return hub.embed(items, encoder=encoder).pooled(normalize=True).numpy()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header claiming width x height pixels, with a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoders(hub):
    return {name: hub.encoder(name) for name in ENCODERS}


@pytest.fixture(scope="module")
def server(encoders):
    models = dict(encoders)
    models["minilm-mrl"] = Proxy(encoders["minilm-l6"], matryoshka_dims=[64, 128])
    with running(models) as s:
        yield s


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    import networkx as nx
    import trimesh
    from PIL import Image, ImageDraw

    d = tmp_path_factory.mktemp("serve")
    images = []
    for i, (w, h) in enumerate([(64, 48), (40, 90), (128, 128)]):
        img = Image.new("RGB", (w, h), (30 * i, 120, 200 - 40 * i))
        ImageDraw.Draw(img).ellipse([w // 4, h // 4, w // 2 + 5, h // 2 + 7], fill=(220, 20 + 50 * i, 60))
        images.append(png(img))
    karate, cycle = nx.karate_club_graph(), nx.cycle_graph(7)
    nx.write_graphml(karate, d / "karate.graphml")
    nx.write_gml(cycle, d / "cycle.gml")
    nx.write_edgelist(nx.star_graph(5), d / "star.edgelist", data=False)
    rng = np.random.default_rng(0)
    meshes = {"ply": trimesh.creation.icosphere(subdivisions=2), "obj": trimesh.creation.box(),
              "off": trimesh.creation.cylinder(radius=0.5, height=2.0), "stl": trimesh.creation.torus(1.0, 0.3)}
    for fmt, mesh in meshes.items():
        mesh.export(d / f"mesh.{fmt}")
    return {
        "dir": d,
        "texts": ["a cat sat on the mat", "hello", "the quick brown fox jumps over the lazy dog, again and again"],
        "images": images,
        "audio": [wav(0.5, 440.0), wav(1.3, 220.0)],
        "karate": karate,
        "x": rng.standard_normal((34, 16)).round(4).tolist(),
        "clouds": [rng.standard_normal((300, 3)).round(5), rng.uniform(-1, 1, (520, 3)).round(5)],
    }


def _ei(graph):
    return [list(e) for e in zip(*graph.edges())]


# -- every modality, every form -----------------------------------------------------------------
def test_text_forms_equal_hub_embed(server, hub, data):
    texts = data["texts"]
    ref = reference(hub, texts, "minilm-l6")
    for form in (texts, [{"type": "text", "text": t} for t in texts], [texts[0], {"type": "text", "text": texts[1]},
                                                                        texts[2]]):
        got = vectors(post(server, {"model": "minilm-l6", "input": form}))
        assert got.shape == (3, 384) and np.abs(got - ref).max() < TOL
    one = vectors(post(server, {"model": "minilm-l6", "input": texts[1]}))  # a bare string
    assert np.abs(one[0] - ref[1]).max() < TOL
    r = httpx.post(f"{server.url}/embeddings", json={"model": "minilm-l6", "input": texts}, timeout=60)  # same route
    assert np.abs(vectors(r) - ref).max() < TOL


def test_image_forms_equal_hub_embed(server, hub, data):
    ref = reference(hub, data["images"], "tiny-clip")
    uris = [f"data:image/png;base64,{b64(x)}" for x in data["images"]]
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in uris]
    for body in ({"model": "tiny-clip", "input": parts}, {"model": "tiny-clip", "modality": "image", "input": uris}):
        got = vectors(post(server, body))
        assert got.shape == ref.shape and np.abs(got - ref).max() < TOL


def test_audio_forms_equal_hub_embed(server, hub, data):
    ref = reference(hub, data["audio"], "tiny-whisper")
    parts = [{"type": "input_audio", "input_audio": {"data": b64(x), "format": "wav"}} for x in data["audio"]]
    uris = [f"data:audio/wav;base64,{b64(x)}" for x in data["audio"]]
    for body in ({"model": "tiny-whisper", "input": parts}, {"model": "tiny-whisper", "modality": "audio", "input": uris}):
        got = vectors(post(server, body))
        assert got.shape == ref.shape and np.abs(got - ref).max() < TOL


def test_graph_forms_equal_hub_embed(server, hub, data):
    import networkx as nx

    d, karate = data["dir"], data["karate"]
    petersen = nx.petersen_graph()
    items = [{"edge_index": _ei(karate), "x": data["x"]}, {"edge_index": _ei(petersen), "num_nodes": 10}]
    ref = reference(hub, items, "gin")
    ref_files = reference(hub, [d / "karate.graphml", d / "cycle.gml", d / "star.edgelist"], "gin")
    parts = [{"type": "graph", "graph": it} for it in items] + [
        {"type": "graph", "graph": {"data": (d / f).read_text(), "format": fmt}}
        for f, fmt in (("karate.graphml", "graphml"), ("cycle.gml", "gml"), ("star.edgelist", "edgelist"))]
    got = vectors(post(server, {"model": "gin", "input": parts}))
    assert np.abs(got[:2] - ref).max() < TOL
    assert np.abs(got[2:] - ref_files).max() < TOL


def test_3d_forms_equal_hub_embed(server, hub, data):
    d = data["dir"]
    ref = reference(hub, data["clouds"], "tiny-point-bert")
    ref_files = reference(hub, [d / f"mesh.{f}" for f in ("ply", "obj", "off", "stl")], "tiny-point-bert")
    parts = [{"type": "3d", "points": c.tolist()} for c in data["clouds"]] + [
        {"type": "3d", "data": b64((d / f"mesh.{f}").read_bytes()), "format": f} for f in ("ply", "obj", "off", "stl")]
    got = vectors(post(server, {"model": "tiny-point-bert", "input": parts}))
    assert np.abs(got[:2] - ref).max() < TOL
    assert np.abs(got[2:] - ref_files).max() < TOL


def test_base64_is_bit_exact_and_usage_counts_tokens(server, hub, data):
    body = {"model": "minilm-l6", "input": data["texts"]}
    floats = post(server, {**body, "encoding_format": "float"})
    packed = post(server, {**body, "encoding_format": "base64"})
    a = np.asarray([d["embedding"] for d in floats.json()["data"]], dtype=np.float32)
    b = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in packed.json()["data"]])
    assert a.tobytes() == b.tobytes()
    counts = hub.count_tokens(data["texts"], encoder="minilm-l6")
    usage = floats.json()["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] == sum(counts)
    assert usage["tokens_by_modality"] == {"text": sum(counts)}
    assert floats.json()["model"] == "minilm-l6" and floats.json()["object"] == "list"


def test_return_tokens_and_normalize_false(server, hub, data):
    te = hub.embed(data["audio"], encoder="tiny-whisper")
    parts = [{"type": "input_audio", "input_audio": {"data": b64(x), "format": "wav"}} for x in data["audio"]]
    r = post(server, {"model": "tiny-whisper", "input": parts, "return_tokens": True, "normalize": False})
    got = vectors(r)
    assert np.abs(got - te.pooled().numpy()).max() < TOL  # not normalized
    for i, row in enumerate(r.json()["data"]):
        n = int(te.lengths[i])
        assert row["num_tokens"] == n
        tokens = np.frombuffer(base64.b64decode(row["tokens"]), "<f4").reshape(n, te.dim)
        assert np.abs(tokens - te[i].numpy()).max() < TOL


def test_dimensions_only_with_matryoshka(server, hub, data):
    r = post(server, {"model": "minilm-l6", "input": "hi", "dimensions": 64})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"
    assert "Matryoshka" in r.json()["error"]["message"]
    got = vectors(post(server, {"model": "minilm-mrl", "input": data["texts"], "dimensions": 64}))
    full = hub.embed(data["texts"], encoder="minilm-l6").pooled()[:, :64]
    ref = (full / full.norm(dim=-1, keepdim=True)).numpy()
    assert got.shape == (3, 64) and np.abs(got - ref).max() < TOL
    assert post(server, {"model": "minilm-mrl", "input": "hi", "dimensions": 100}).status_code == 400


def test_openai_client_works_for_text(server, hub, data):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    res = client.embeddings.create(model="minilm-l6", input=data["texts"])  # the client asks for base64
    got = np.asarray([d.embedding for d in res.data], dtype=np.float32)
    assert np.abs(got - reference(hub, data["texts"], "minilm-l6")).max() < TOL
    assert res.usage.prompt_tokens > 0
    assert "minilm-l6" in [m.id for m in client.models.list().data]
    with pytest.raises(openai.BadRequestError, match="check_embedding_ctx_length=False"):
        client.embeddings.create(model="minilm-l6", input=[[101, 2023, 102]])


def test_models_health_and_metrics(server):
    models = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    assert models["tiny-clip"]["modality"] == "image" and models["gin"]["modality"] == "graph"
    assert models["minilm-l6"]["dim"] == 384 and models["minilm-l6"]["runtime"] == "torch"
    assert models["minilm-mrl"]["matryoshka_dims"] == [64, 128]
    assert models["tiny-point-bert"]["limits"]["max_points"] == ServeConfig().max_points
    assert httpx.get(f"{server.url}/health/live").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/health/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("mhub_request_duration_seconds_bucket", "mhub_queue_depth", "mhub_batch_size_bucket",
                 "mhub_batch_cost_bucket", "mhub_rejections_total"):
        assert name in text
    assert 'modality="text",status="200"' in text


# -- errors -------------------------------------------------------------------------------------
def test_errors_name_the_item(server, data):
    cases = [
        ({"model": "minilm-l6", "input": ["ok", "   "]}, 400, "input[1]", "empty"),
        ({"model": "minilm-l6", "input": [1, 2, 3]}, 400, "input", "check_embedding_ctx_length=False"),
        ({"model": "tiny-clip", "input": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
         400, "input[0]", "never fetched"),
        ({"model": "tiny-clip", "input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                                              + b64(b"not a png")}}]},
         400, "input[0]", "not a readable image"),
        ({"model": "gin", "input": [{"type": "graph", "graph": {"edge_index": [[0, 1], [1, 9]], "num_nodes": 3}}]},
         400, "input[0]", "out of range"),
        ({"model": "gin", "input": [{"type": "graph", "graph": {"data": "<graphml", "format": "graphml"}}]},
         400, "input[0]", "GraphML"),
        ({"model": "tiny-point-bert", "input": [{"type": "3d", "data": b64(b"garbage"), "format": "ply"}]},
         400, "input[0]", ".ply"),
        ({"model": "tiny-point-bert", "input": [{"type": "3d", "points": [[0, 0, 0]] * 200}]}, 400, "input[0]", "degenerate"),
        ({"model": "minilm-l6", "input": [{"type": "video", "video": {}}]}, 422, "input[0]", "invalid part"),
        ({"model": "minilm-l6", "input": ["a", {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]},
         400, "input[1]", "embeds text"),
        ({"model": "nope", "input": "x"}, 404, "model", "not served"),
        ({"model": "minilm-l6"}, 422, "input", "required"),
    ]
    for body, status, param, words in cases:
        r = post(server, body)
        err = r.json()["error"]
        assert (r.status_code, err["param"]) == (status, param), (body, r.text)
        assert words in err["message"] and err["type"] == "invalid_request_error", err
    r = httpx.post(f"{server.url}/v1/embeddings", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_bad_item_fails_only_its_own_request(server, hub, data):
    texts = data["texts"]
    ref = reference(hub, texts, "minilm-l6")
    bodies = [{"model": "minilm-l6", "input": texts if i % 2 == 0 else [texts[0], ""]} for i in range(8)]
    results: list = [None] * len(bodies)

    def send(i):
        results[i] = post(server, bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, r in enumerate(results):
        if i % 2 == 0:
            assert np.abs(vectors(r) - ref).max() < TOL
        else:
            assert r.status_code == 400 and r.json()["error"]["param"] == "input[1]"


def test_failing_batch_isolates_requests(encoders, hub, data):
    """Two requests share a batch that fails; the rerun alone gives the good one its vectors."""
    gate, started = threading.Event(), threading.Event()
    proxy = Proxy(encoders["minilm-l6"], gate=gate, started=started, poison="POISON")
    with running({"m": proxy}, max_wait_ms=0) as s:
        first = threading.Thread(target=post, args=(s, {"model": "m", "input": "warm up"}))
        first.start()
        assert started.wait(30)  # the worker is blocked: the next two requests queue together
        out: dict = {}
        good = threading.Thread(target=lambda: out.setdefault("good", post(s, {"model": "m", "input": data["texts"]})))
        bad = threading.Thread(target=lambda: out.setdefault("bad", post(s, {"model": "m", "input": ["x", "POISON"]})))
        good.start(), bad.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{s.url}/health/ready").json()["models"]["m"]["queued_items"] < 5:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        gate.set()
        for t in (first, good, bad):
            t.join(60)
        assert np.abs(vectors(out["good"]) - reference(hub, data["texts"], "minilm-l6")).max() < TOL
        assert out["bad"].status_code == 500 and "poisoned" in out["bad"].json()["error"]["message"]
        metrics = httpx.get(f"{s.url}/metrics").text
        assert 'mhub_batch_size_bucket{le="4.0",model="m"} 1.0' in metrics  # the shared batch (5 items) was cut once
        assert 'mhub_batch_size_bucket{le="8.0",model="m"} 2.0' in metrics


def test_auth(encoders):
    with running({"minilm-l6": encoders["minilm-l6"]}, api_key="s3cret") as s:
        body = {"model": "minilm-l6", "input": "hi"}
        assert post(s, body).status_code == 401
        r = post(s, body, key="wrong")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert post(s, body, key="s3cret").status_code == 200
        assert httpx.get(f"{s.url}/v1/models").status_code == 401
        assert httpx.get(f"{s.url}/metrics").status_code == 401
        assert httpx.get(f"{s.url}/health/live").status_code == 200
        assert httpx.get(f"{s.url}/health/ready").status_code == 200
        assert httpx.get(f"{s.url}/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_env_key_and_explicit_key(monkeypatch):
    monkeypatch.setenv("MODALITY_HUB_API_KEY", "from-env")
    assert ServeConfig.with_env_key().api_key == "from-env"
    assert ServeConfig.with_env_key("explicit").api_key == "explicit"
    assert ServeConfig.with_env_key("").api_key is None


def test_body_limit_413(encoders):
    with running({"minilm-l6": encoders["minilm-l6"]}, max_body_bytes=4096) as s:
        r = post(s, {"model": "minilm-l6", "input": "x" * 10_000})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        def chunks():  # no Content-Length: counted while reading
            yield b'{"model": "minilm-l6", "input": "'
            for _ in range(20):
                yield b"y" * 1024
            yield b'"}'

        r = httpx.post(f"{s.url}/v1/embeddings", content=chunks(), headers={"content-type": "application/json"},
                       timeout=30)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        assert post(s, {"model": "minilm-l6", "input": "small"}).status_code == 200


def test_item_caps_and_per_item_limits(encoders, data):
    limits = dict(max_text_items=3, max_other_items=2, max_text_chars=50, max_image_pixels=4000,
                  max_audio_seconds=1.0, max_graph_nodes=20, max_graph_edges=1000, max_points=400)
    d = data["dir"]
    with running(encoders, **limits) as s:
        def check(body, status, param, words):
            r = post(s, body)
            assert (r.status_code, r.json()["error"]["param"]) == (status, param), r.text
            assert words in r.json()["error"]["message"]

        check({"model": "minilm-l6", "input": ["a"] * 4}, 413, "input", "at most 3")
        assert post(s, {"model": "minilm-l6", "input": ["a"] * 3}).status_code == 200
        uri = f"data:image/png;base64,{b64(data['images'][0])}"  # 64x48 = 3072 pixels: allowed
        check({"model": "tiny-clip", "modality": "image", "input": [uri] * 3}, 413, "input", "at most 2")
        check({"model": "minilm-l6", "input": ["ok", "z" * 51]}, 413, "input[1]", "max-text-chars")
        big = f"data:image/png;base64,{b64(data['images'][2])}"  # 128x128
        check({"model": "tiny-clip", "modality": "image", "input": [uri, big]}, 413, "input[1]", "max-image-pixels")
        parts = [{"type": "input_audio", "input_audio": {"data": b64(x), "format": "wav"}} for x in data["audio"]]
        check({"model": "tiny-whisper", "input": parts}, 413, "input[1]", "max-audio-seconds")
        karate = {"type": "graph", "graph": {"edge_index": _ei(data["karate"])}}
        check({"model": "gin", "input": [karate]}, 413, "input[0]", "max-graph-nodes")
        graphml = {"type": "graph", "graph": {"data": (d / "karate.graphml").read_text(), "format": "graphml"}}
        check({"model": "gin", "input": [graphml]}, 413, "input[0]", "max-graph-nodes")
        check({"model": "tiny-point-bert", "input": [{"type": "3d", "points": data["clouds"][1].tolist()}]},
              413, "input[0]", "max-points")
        ply = {"type": "3d", "data": b64((d / "mesh.ply").read_bytes()), "format": "ply"}  # 162 vertices
        assert post(s, {"model": "tiny-point-bert", "input": [ply]}).status_code == 200
        stl = {"type": "3d", "data": b64((d / "mesh.stl").read_bytes()), "format": "stl"}  # 3 x faces > 400
        check({"model": "tiny-point-bert", "input": [stl]}, 413, "input[0]", "max-points")
        metrics = httpx.get(f"{s.url}/metrics").text
        assert 'mhub_rejections_total{reason="item_too_large"}' in metrics


def test_decompression_bomb_is_refused_from_its_header(server):
    start = time.perf_counter()
    r = post(server, {"model": "tiny-clip", "input": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(bomb_png())}"}}]})
    assert r.status_code == 413 and r.json()["error"]["param"] == "input[0]"
    assert time.perf_counter() - start < 5  # 10^10 pixels were never allocated


def test_queue_full_429_with_retry_after(encoders, data):
    gate, started = threading.Event(), threading.Event()
    proxy = Proxy(encoders["minilm-l6"], gate=gate, started=started)
    with running({"m": proxy}, max_queue_items=4) as s:
        try:
            first = threading.Thread(target=post, args=(s, {"model": "m", "input": ["a", "b"]}))
            first.start()
            assert started.wait(30)
            out = {}
            # the running batch's 2 items count against the 4 too (admitted, not yet embedded)
            second = threading.Thread(target=lambda: out.setdefault("r", post(s, {"model": "m", "input": ["c"] * 2})))
            second.start()
            deadline = time.monotonic() + 30
            while httpx.get(f"{s.url}/health/ready").json()["models"]["m"]["queued_items"] < 2:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            r = post(s, {"model": "m", "input": "one more"})
            assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            assert 50 <= int(r.headers["retry-after-ms"]) <= 60_000  # read first by OpenAI's clients
            # full: refused by the gate before the body is read, so even a body that is not JSON gets the 429
            r = httpx.post(f"{s.url}/v1/embeddings", content=b"{not json", timeout=30)
            assert r.status_code == 429 and "Retry-After" in r.headers
        finally:
            gate.set()
        first.join(60), second.join(60)
        assert out["r"].status_code == 200
        metrics = httpx.get(f"{s.url}/metrics").text
        assert 'mhub_rejections_total{reason="queue_full"} 2.0' in metrics
        assert 'mhub_request_duration_seconds_count{modality="text",status="429"} 2.0' in metrics


def test_overload_limit_follows_the_measured_rate():
    """While refusing, the queue admits what the current rate embeds in the time a full queue took before."""
    from hub.serve.batcher import Batcher
    from hub.serve.metrics import Metrics

    b = Batcher("m", object(), ServeConfig(max_queue_items=100, overload_target=1.0), Metrics())
    off = Batcher("m", object(), ServeConfig(max_queue_items=100, overload_wait=False), Metrics())
    tight = Batcher("m", object(), ServeConfig(max_queue_items=100, overload_target=0.6), Metrics())
    try:
        for x in (b, off):
            x._rate = 20.0
            assert x.limit() == 100  # no refusal yet: the item bound
            err = x.full_error(8)  # an overload begins: the rate before it is kept
            assert err.status == 429 and err.headers["retry-after-ms"] == "400"  # (0 + 8 items) / 20 per s
            assert err.headers["Retry-After"] == "1"
            x._rate = 15.0  # batches slowed down by a quarter
        assert b.limit() == 75 and off.limit() == 100
        b._rate = 30.0
        assert b.limit() == 100  # never above max_queue_items
        b._rate, b._refused_at = 15.0, b._refused_at - 5  # no refusal for longer than overload_window_s
        assert b.limit() == 100
        tight._rate = 20.0
        assert tight.limit() == 100  # the target applies only while refusing
        tight.full_error(8)
        assert tight.limit() == 60  # same rate as before: 0.6 of the queue
        tight._rate = 10.0
        assert tight.limit() == 30  # half the rate: half of that
        assert ServeConfig().overload_target == 0.8  # the default (docs/serving.md, third pass)
    finally:
        for x in (b, off, tight):
            x._executor.shutdown()


def test_queue_refusal_when_a_request_does_not_fit(encoders):
    """Room for some items but not for the request's: refused after parsing (Batcher.admit), before decoding."""
    gate, started = threading.Event(), threading.Event()
    with running({"m": Proxy(encoders["minilm-l6"], gate=gate, started=started)}, max_queue_items=4) as s:
        try:
            first = threading.Thread(target=post, args=(s, {"model": "m", "input": ["a", "b"]}))
            first.start()
            assert started.wait(30)
            assert post(s, {"model": "m", "input": ["c"] * 3}).status_code == 429  # 2 + 3 > 4
            assert httpx.post(f"{s.url}/v1/embeddings", content=b"{not json", timeout=30).status_code == 400
        finally:
            gate.set()
        first.join(60)
        assert post(s, {"model": "m", "input": ["c"] * 3}).status_code == 200


def test_batch_threads_run_at_lower_priority(encoders):
    """batch_nice: the batch threads' niceness is the server's plus batch_nice (at most 19), so the event loop
    preempts them; the event loop's own thread keeps its niceness."""
    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread niceness is Linux's")
    from hub.serve.batcher import Batcher
    from hub.serve.metrics import Metrics

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    mine = nice()
    for extra in (0, 3):
        b = Batcher("m", encoders["minilm-l6"], ServeConfig(batch_nice=extra, batch_threads=1), Metrics())
        try:
            assert b._executor.submit(nice).result(30) == min(19, mine + extra)
        finally:
            b._executor.shutdown()
    assert nice() == mine


def test_hanging_encoder_turns_ready_false(encoders):
    gate, started = threading.Event(), threading.Event()
    proxy = Proxy(encoders["minilm-l6"], gate=gate, started=started)
    with running({"m": proxy}, heartbeat_interval_s=0.05, heartbeat_timeout_s=0.5) as s:
        try:
            assert httpx.get(f"{s.url}/health/ready").status_code == 200
            out = {}
            t = threading.Thread(target=lambda: out.setdefault("r", post(s, {"model": "m", "input": "stuck"})))
            t.start()
            assert started.wait(30)
            deadline = time.monotonic() + 10
            while (r := httpx.get(f"{s.url}/health/ready")).status_code == 200:
                assert time.monotonic() < deadline, "ready stayed true while the worker hung"
                time.sleep(0.05)
            assert r.status_code == 503 and r.json()["models"]["m"]["alive"] is False
            assert r.json()["models"]["m"]["busy_s"] >= 0.5
        finally:
            gate.set()
        t.join(60)
        assert out["r"].status_code == 200
        deadline = time.monotonic() + 10
        while httpx.get(f"{s.url}/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)


# -- drain on SIGTERM (a real process) ------------------------------------------------------------------
DRAIN_SCRIPT = """
import sys, time
from pathlib import Path
from hub import Hub
from hub.serve import ServeConfig, create_app, serve

port, marker = int(sys.argv[1]), Path(sys.argv[2])
encoder = Hub().encoder("minilm-l6")

class Slow:
    def __getattr__(self, name):
        return getattr(encoder, name)
    def __call__(self, **tensors):
        marker.write_text("started")
        time.sleep(3)
        return encoder(**tensors)

serve(create_app({"slow": Slow()}, ServeConfig(drain_timeout_s=30)), host="127.0.0.1", port=port, log_level="warning")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_sigterm_drains(tmp_path):
    script, marker, port = tmp_path / "serve_slow.py", tmp_path / "started", _free_port()
    script.write_text(DRAIN_SCRIPT)
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, str(script), str(port), str(marker)], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            try:
                if httpx.get(f"{url}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", httpx.post(
            f"{url}/v1/embeddings", json={"model": "slow", "input": ["in flight"]}, timeout=60)))
        t.start()
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        ready = httpx.get(f"{url}/health/ready", timeout=5)
        assert ready.status_code == 503 and ready.json()["draining"] is True
        late = httpx.post(f"{url}/v1/embeddings", json={"model": "slow", "input": "late"}, timeout=5)
        assert late.status_code == 503 and late.json()["error"]["code"] == "draining"
        t.join(60)
        assert out["r"].status_code == 200 and len(out["r"].json()["data"][0]["embedding"]) == 384
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_cli_help():
    from click.testing import CliRunner

    from hub.cli.serve import serve_command

    out = CliRunner().invoke(serve_command, ["--help"]).output
    for option in ("--encoder", "--runtime", "--device", "--host", "--port", "--api-key", "--max-queue-items",
                   "--max-batch-cost", "--max-wait-ms", "--max-body-bytes"):
        assert option in out
    assert "127.0.0.1" in out


def test_load_models_aliases_and_warm_up(hub, tmp_path):
    from hub.errors import InvalidOptionsError
    from hub.serve import load_models

    models = load_models(["gin=graphs"], hub=hub)
    assert [(m.alias, m.modality, m.runtime) for m in models] == [("graphs", "graph", "torch")]
    assert len(models[0].warm_up) == 32  # the modality's registered examples
    with pytest.raises(InvalidOptionsError, match="served twice"):
        load_models(["gin", "gin"], hub=hub)
    with pytest.raises(InvalidOptionsError, match="ONNX export"):
        load_models([str(tmp_path)], hub=hub)
    with BackgroundServer(create_app(models)) as s:
        deadline = time.monotonic() + 60
        while (r := httpx.get(f"{s.url}/health/ready")).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert r.json()["models"]["graphs"]["warm"] is True
        metrics = httpx.get(f"{s.url}/metrics").text
        assert 'mhub_batch_size_count{model="graphs"}' not in metrics  # warm-up batches are not client batches
        assert float(next(line.split()[-1] for line in metrics.splitlines()
                          if line.startswith('mhub_batch_duration_seconds_count{model="graphs"}'))) >= 4


def _cache_counts(server, model):
    """mhub_cache_items_total of ``model`` by result (raw_hit, hit, miss)."""
    out = {}
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("mhub_cache_items_total{") and f'model="{model}"' in line:
            out[line.split('result="')[1].split('"')[0]] = int(float(line.split()[-1]))
    return out


@contextmanager
def broken(encoder, *methods):
    """``encoder``'s class methods raise while inside (on the class: instance attributes would change the
    processor state that the cache's raw-form keys cover)."""
    cls = type(encoder)
    saved = {m: cls.__dict__.get(m) for m in methods}

    def fail(*_, **__):
        raise RuntimeError("ran for an item the cache holds")

    for m in methods:
        setattr(cls, m, fail)
    try:
        yield
    finally:
        for m, f in saved.items():
            if f is None:
                delattr(cls, m)
            else:
                setattr(cls, m, f)


def test_served_items_come_from_the_embedding_cache(hub, tmp_path, data):
    """mhub serve --cache, as Hub.embed(cache=...): texts seen before are served by their raw form (neither
    prepare nor the model runs: both are broken), bit for bit; an image re-encoded to other PNG bytes (same
    pixels) misses its raw form, is prepared and found by its prepared form (the model is broken), and is then
    an alias too; vectors equal Hub.embed within 1e-5, and Hub.embed on the same store finds the server's entries."""
    from PIL import Image

    from hub.cache import EmbeddingCache

    texts = ["a cat on a mat", "two dogs", "a bird"]
    text_enc = hub.registry.create_encoder("tiny-bert").eval()
    image_enc = hub.registry.create_encoder("tiny-clip").eval()
    buf = io.BytesIO()
    Image.open(io.BytesIO(data["images"][0])).save(buf, format="PNG", compress_level=0)
    other_png = buf.getvalue()
    assert other_png != data["images"][0]
    store = tmp_path / "embeddings.sqlite"
    parts = lambda pngs: [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(p)}} for p in pngs]  # noqa: E731
    with running({"tb": text_enc, "clip": image_enc}, cache=str(store)) as s:
        r1 = post(s, {"model": "tb", "input": texts, "return_tokens": True})
        first = vectors(r1)
        assert _cache_counts(s, "tb") == {"miss": 3, "hit": 0, "raw_hit": 0}
        with broken(text_enc, "prepare", "forward"):
            r2 = post(s, {"model": "tb", "input": [{"type": "text", "text": t} for t in reversed(texts)],
                          "return_tokens": True})
            again = vectors(r2)
        assert _cache_counts(s, "tb") == {"miss": 3, "hit": 0, "raw_hit": 3}
        assert r2.json()["usage"] == r1.json()["usage"]  # token counts of cached items too
        assert [d["tokens"] for d in r2.json()["data"]][::-1] == [d["tokens"] for d in r1.json()["data"]]
        image = vectors(post(s, {"model": "clip", "input": parts(data["images"][:1])}))
        with broken(image_enc, "forward"):
            same_pixels = vectors(post(s, {"model": "clip", "input": parts([other_png])}))
        with broken(image_enc, "prepare", "forward"):
            alias = vectors(post(s, {"model": "clip", "input": parts([other_png, data["images"][0]])}))
        assert _cache_counts(s, "clip") == {"miss": 1, "hit": 1, "raw_hit": 2}
    assert np.array_equal(again[::-1], first)
    assert np.array_equal(same_pixels, image) and np.array_equal(alias, np.concatenate([image, image]))
    np.testing.assert_allclose(first, reference(hub, texts, "tiny-bert"), atol=TOL)
    np.testing.assert_allclose(image, reference(hub, data["images"][:1], "tiny-clip"), atol=TOL)
    assert EmbeddingCache(store).info()["entries"] == 4
    with broken(text_enc, "prepare", "forward"):  # the hub's own tiny-bert: same weights, same keys
        mine = hub.embed(texts, encoder="tiny-bert", cache=store).pooled(normalize=True).numpy()
    np.testing.assert_allclose(mine, first, atol=1e-6)


@pytest.mark.slow
def test_onnx_runtime_serving_equals_hub_embed_onnx(tmp_path, data):
    """mhub serve --runtime onnx: the encoder is exported to the hub's cache on first use and served from ONNX
    Runtime; a real server's vectors equal Hub.embed(runtime="onnx") within 1e-5 (and torch's within 1e-4)."""
    pytest.importorskip("onnxruntime")
    from hub import Hub
    from hub.serve import load_models

    h = Hub(cache_dir=tmp_path)
    models = load_models(["tiny-bert=tb"], hub=h, runtime="onnx")
    assert [(m.alias, m.modality, m.runtime) for m in models] == [("tb", "text", "onnx")]
    texts = data["texts"] + ["x" * 40, "a much longer sentence that pads the others in its batch"]
    ref = h.embed(texts, encoder="tiny-bert", runtime="onnx").pooled(normalize=True).numpy()
    with BackgroundServer(create_app(models)) as s:
        card = httpx.get(f"{s.url}/v1/models").json()["data"][0]
        assert (card["id"], card["runtime"]) == ("tb", "onnx")
        for form in (texts, [{"type": "text", "text": t} for t in texts]):
            got = vectors(post(s, {"model": "tb", "input": form}))
            assert got.shape == ref.shape and np.abs(got - ref).max() < TOL
        singles = np.concatenate([vectors(post(s, {"model": "tb", "input": t})) for t in texts[:2]])
        assert np.abs(singles - ref[:2]).max() < TOL  # batch of one, other padding: same vectors
    torch_ref = h.embed(texts, encoder="tiny-bert").pooled(normalize=True).numpy()
    assert np.abs(got - torch_ref).max() < 1e-4


def test_two_batch_threads_run_batches_side_by_side(encoders, hub, data):
    """batch_threads=2: one batch hangs, the other thread still serves (vectors equal Hub.embed), and the
    stuck batch alone turns ready false even though the other thread keeps beating."""
    gate, started = threading.Event(), threading.Event()

    class FirstHangs(Proxy):
        calls = 0

        def __call__(self, **tensors):
            FirstHangs.calls += 1
            if FirstHangs.calls == 1:
                return super().__call__(**tensors)  # started.set(), then blocks on the gate
            return self._enc(**tensors)

    with running({"m": FirstHangs(encoders["minilm-l6"], gate=gate, started=started)}, batch_threads=2,
                 heartbeat_interval_s=0.05, heartbeat_timeout_s=1.0) as s:
        try:
            out = {}
            t = threading.Thread(target=lambda: out.setdefault("r", post(s, {"model": "m", "input": "stuck"})))
            t.start()
            assert started.wait(30)
            got = vectors(post(s, {"model": "m", "input": data["texts"]}))  # served by the other thread
            assert np.abs(got - reference(hub, data["texts"], "minilm-l6")).max() < TOL
            deadline = time.monotonic() + 10
            while (r := httpx.get(f"{s.url}/health/ready")).status_code == 200:
                assert time.monotonic() < deadline, "ready stayed true while one batch thread hung"
                time.sleep(0.05)
            assert r.json()["models"]["m"]["alive"] is False
        finally:
            gate.set()
        t.join(60)
        assert out["r"].status_code == 200
