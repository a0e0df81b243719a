"""The on-disk embedding cache (hub.cache): hits are bit-identical, keys miss on every change that matters,
LRU bound, concurrent writers, corruption detected and rebuilt, CLI info/clear."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hub import Hub
from hub.cache import CacheCorruptionWarning, EmbeddingCache, encoder_fingerprint, keys_for
from hub.errors import CacheCorruptError, CacheError

TEXTS = ["a cat on a mat", "dogs", "the quick brown fox jumps over the lazy dog", "x y z", "a cat on a mat"]


@pytest.fixture()
def hub(tmp_path) -> Hub:
    return Hub(cache_dir=tmp_path / "hubcache")


class Calls:
    """Counts the items an encoder's forward really runs on."""

    def __init__(self, enc) -> None:
        self.items = 0
        self._forward = enc.forward
        enc.forward = self  # nn.Module.__call__ looks up self.forward on the instance

    def __call__(self, **tensors):
        self.items += int(next(iter(tensors.values())).shape[0])
        return self._forward(**tensors)


def _db(hub: Hub) -> Path:
    return Path(hub.cache_dir) / "embeddings.sqlite"


def test_hit_is_bit_identical_and_runs_no_model(hub):
    ref = hub.embed(TEXTS)  # no cache
    enc = hub.encoder("minilm-l6")
    calls = Calls(enc)
    first = hub.embed(TEXTS, cache=True)
    assert calls.items == len(TEXTS)
    assert _db(hub).is_file()
    second = Hub(cache_dir=hub.cache_dir, cache=True)  # a new hub: only the file is shared
    calls2 = Calls(second.encoder("minilm-l6"))
    hit = second.embed(TEXTS)
    assert calls2.items == 0
    for i in range(len(TEXTS)):
        assert torch.equal(ref[i], first[i]) and torch.equal(first[i], hit[i])
    assert torch.equal(first.tokens, hit.tokens) and torch.equal(first.mask, hit.mask)
    assert torch.equal(ref.mask, hit.mask)
    for norm in (False, True):
        assert torch.equal(ref.pooled(normalize=norm), hit.pooled(normalize=norm))
    assert (hit.space, hit.pooling, hit.indices) == (ref.space, ref.pooling, ref.indices)
    # a subset, reordered, mixed with a new item: hits keep their bits, only the new item runs
    mixed = second.embed([TEXTS[2], "something new", TEXTS[0]])
    assert calls2.items == 1
    assert torch.equal(mixed[0], ref[2]) and torch.equal(mixed[2], ref[0])
    assert torch.equal(mixed.pooled()[[0, 2]], ref.pooled()[[2, 0]])
    assert EmbeddingCache(_db(hub)).info()["entries"] == 5  # 4 distinct texts + the new one


def test_weights_options_runtime_dtype_each_miss(hub, tmp_path):
    store = EmbeddingCache(tmp_path / "k.sqlite")
    enc = hub.encoder("tiny-bert")
    calls = Calls(enc)
    hub.embed(TEXTS[:3], encoder="tiny-bert", cache=store)
    hub.embed(TEXTS[:3], encoder="tiny-bert", cache=store)
    assert calls.items == 3
    # weights: an in-place change (as an optimizer step makes) misses; putting them back hits again
    p = next(enc.parameters())
    orig = p.detach().clone()
    with torch.no_grad():
        p.add_(1e-3)
    hub.embed(TEXTS[:3], encoder="tiny-bert", cache=store)
    assert calls.items == 6
    with torch.no_grad():
        p.copy_(orig)
    hub.embed(TEXTS[:3], encoder="tiny-bert", cache=store)
    # other seed = other weights
    other = hub.encoder("tiny-bert", seed=1)
    calls_other = Calls(other)
    hub.embed(TEXTS[:3], encoder="tiny-bert", options={"seed": 1}, cache=store)
    assert calls_other.items == 3
    # options: same weights, same prepared items, other pooling option
    mini = hub.encoder("minilm-l6", pooling="cls")
    calls_cls = Calls(mini)
    hub.embed(TEXTS[:2], options={"pooling": "cls"}, cache=store)
    hub.embed(TEXTS[:2], options={"pooling": "cls"}, cache=store)
    assert calls_cls.items == 2
    mean = hub.encoder("minilm-l6")
    calls_mean = Calls(mean)
    hub.embed(TEXTS[:2], cache=store)
    assert calls_mean.items == 2
    # the key material itself: options, dtype, runtime, output kind
    prepared = {0: enc.prepare(TEXTS[0])}
    base = keys_for(enc, prepared)[0]
    assert keys_for(enc, prepared, options={"seed": 0})[0] != base
    assert keys_for(enc, prepared, storage="float16")[0] != base
    assert keys_for(enc, prepared, output="pooled", normalize=True)[0] != base
    fp = encoder_fingerprint(enc)
    assert fp["runtime"] == "torch/cpu" and fp["dtype"] == "torch.float32"
    assert {"torch", "transformers"} <= set(fp["versions"])
    fresh = Hub(cache_dir=hub.cache_dir).encoder("tiny-bert").double()
    assert encoder_fingerprint(fresh)["dtype"] == "torch.float64"
    assert keys_for(fresh, prepared)[0] != base
    assert calls.items == 6  # restoring the weights hit


@pytest.mark.slow
def test_onnx_runtime_misses_torch_entries(hub, tmp_path):
    pytest.importorskip("onnxruntime")
    store = EmbeddingCache(tmp_path / "rt.sqlite")
    torch_te = hub.embed(TEXTS[:3], encoder="tiny-bert", cache=store)
    onnx_te = hub.embed(TEXTS[:3], encoder="tiny-bert", runtime="onnx", cache=store)
    assert store.info()["entries"] == 6
    onnx_enc = hub.onnx_encoder("tiny-bert")
    assert encoder_fingerprint(onnx_enc)["runtime"].startswith("onnx/")
    again = hub.embed(TEXTS[:3], encoder="tiny-bert", runtime="onnx", cache=store)
    assert torch.equal(again.pooled(), onnx_te.pooled())
    torch.testing.assert_close(onnx_te.pooled(), torch_te.pooled(), rtol=0, atol=1e-4)  # close, stored apart
    assert store.info()["entries"] == 6


def test_path_bytes_pil_share_one_entry(hub, tmp_path):
    from PIL import Image

    img = Image.new("RGB", (40, 30))
    img.putdata([(x * 6 % 256, y * 8 % 256, (x * y) % 256) for y in range(30) for x in range(40)])
    path = tmp_path / "pic.png"
    img.save(path)
    store = EmbeddingCache(tmp_path / "img.sqlite")
    enc = hub.encoder("tiny-clip")
    calls = Calls(enc)
    first = hub.embed(path, encoder="tiny-clip", cache=store)
    by_bytes = hub.embed(path.read_bytes(), encoder="tiny-clip", cache=store)
    by_pil = hub.embed(Image.open(io.BytesIO(path.read_bytes())), encoder="tiny-clip", cache=store)
    by_str = hub.embed(str(path), encoder="tiny-clip", cache=store)
    assert calls.items == 1
    assert store.info()["entries"] == 1
    for te in (by_bytes, by_pil, by_str):
        assert torch.equal(te.tokens, first.tokens)
    other = img.rotate(90)
    hub.embed(other, encoder="tiny-clip", cache=store)
    assert calls.items == 2 and store.info()["entries"] == 2


def _row(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))


def test_lru_eviction_under_a_small_bound(tmp_path):
    row_bytes = 4 * 16 * 4
    store = EmbeddingCache(tmp_path / "lru.sqlite", max_bytes=10 * row_bytes)
    keys = [bytes([i]) * 32 for i in range(14)]
    for i in range(8):
        store.put_many([(keys[i], "s", _row(4, i), None)])
    # touch 0 and 1: they become the most recently used
    import time

    time.sleep(0.01)
    assert set(store.get_many([keys[0], keys[1]])) == {keys[0], keys[1]}
    store.put_many([], aliases=[(b"r" * 32, keys[2]), (b"q" * 32, keys[0])])  # raw-item aliases of two entries
    time.sleep(0.01)
    for i in range(8, 14):
        store.put_many([(keys[i], "s", _row(4, i), None)])
        time.sleep(0.002)
    info = store.info()
    assert info["payload_bytes"] <= 10 * row_bytes
    left = store.get_many(keys)
    assert keys[0] in left and keys[1] in left and keys[13] in left
    assert keys[2] not in left and keys[3] not in left  # least recently used went first
    assert torch.equal(left[keys[13]].tokens, _row(4, 13))
    assert info["entries"] == len(left)
    assert set(store.get_raw([b"r" * 32, b"q" * 32])) == {b"q" * 32}  # an alias goes with its entry
    assert info["aliases"] == 1


WRITER = textwrap.dedent("""
    import sys, time, torch
    from hub.cache import EmbeddingCache
    path, wid, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    store = EmbeddingCache(path, max_bytes=400 * 8 * 16 * 4)
    while time.time() < start:
        time.sleep(0.001)
    for r in range(60):
        rows = []
        for j in range(10):
            k = (r * 10 + j) if j % 2 else (100000 * wid + r * 10 + j)   # half shared with the other writers
            g = torch.Generator().manual_seed(k)
            rows.append((k.to_bytes(32, "little"), f"space{k % 3}", torch.randn(8, 16, generator=g), None))
        store.put_many(rows)
        got = store.get_many([row[0] for row in rows])
        assert all(torch.equal(got[row[0]].tokens, row[2]) for row in rows if row[0] in got)
    print("done", wid)
""")


def test_concurrent_writer_processes_never_corrupt(tmp_path):
    import time

    path = tmp_path / "shared.sqlite"
    start = time.time() + 6.0  # all three have imported torch by then
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), str(start)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert out.startswith("done")
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    n, total = con.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM entries").fetchone()
    assert (n, total) == con.execute("SELECT entries, bytes FROM stats").fetchone()
    assert con.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == n
    con.close()
    store = EmbeddingCache(path)
    report = store.verify()
    assert report == {"integrity": ["ok"], "entries": n, "bad_rows": 0}
    assert 0 < n and total <= 400 * 8 * 16 * 4
    keys = [k for (k,) in sqlite3.connect(path).execute("SELECT key FROM entries")]
    got = store.get_many(keys)
    assert len(got) == n
    for k, e in got.items():
        assert torch.equal(e.tokens, torch.randn(8, 16, generator=torch.Generator().manual_seed(int.from_bytes(k, "little"))))


def test_corrupt_row_is_reported_and_rebuilt_never_served(hub, tmp_path):
    path = tmp_path / "rows.sqlite"
    ref = hub.embed(TEXTS[:3], encoder="tiny-bert")
    hub.embed(TEXTS[:3], encoder="tiny-bert", cache=path)
    con = sqlite3.connect(path)
    rid, data = con.execute("SELECT id, data FROM blobs ORDER BY id LIMIT 1").fetchone()
    flipped = bytearray(data)
    flipped[5] ^= 0x40
    con.execute("UPDATE blobs SET data = ? WHERE id = ?", (bytes(flipped), rid))
    con.commit()
    con.close()
    fresh = Hub(cache_dir=hub.cache_dir)
    calls = Calls(fresh.encoder("tiny-bert"))
    with pytest.warns(CacheCorruptionWarning, match="checksum"):
        te = fresh.embed(TEXTS[:3], encoder="tiny-bert", cache=EmbeddingCache(path))
    assert calls.items == 1  # only the corrupt row ran again
    bad = [i for i in range(3) if not torch.equal(te[i], ref[i])]
    assert len(bad) <= 1  # the recomputed row ran in another batch (padding): equal up to float rounding
    for i in bad:
        torch.testing.assert_close(te[i], ref[i], rtol=0, atol=1e-5)
    again = fresh.embed(TEXTS[:3], encoder="tiny-bert", cache=EmbeddingCache(path))
    assert torch.equal(again.tokens, te.tokens)
    assert EmbeddingCache(path).verify()["bad_rows"] == 0  # rebuilt
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.embed(TEXTS[:3], encoder="tiny-bert", cache=EmbeddingCache(path))
    assert calls.items == 1  # the rebuilt row is a hit
    # on_corrupt="raise": a typed error instead
    con = sqlite3.connect(path)
    con.execute("UPDATE entries SET n = n + 1 WHERE id = (SELECT MIN(id) FROM entries)")
    con.commit()
    con.close()
    with pytest.raises(CacheCorruptError, match="checksum"):
        fresh.embed(TEXTS[:3], encoder="tiny-bert", cache=EmbeddingCache(path, on_corrupt="raise"))


@pytest.mark.parametrize("where", ["header", "pages"])
def test_corrupt_file_is_set_aside_and_rebuilt(hub, tmp_path, where):
    path = tmp_path / "file.sqlite"
    texts = [f"item number {i} " * (1 + i % 5) for i in range(60)]
    ref = hub.embed(texts, encoder="tiny-bert")
    store = EmbeddingCache(path)
    hub.embed(texts, encoder="tiny-bert", cache=store)
    store.close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    size = path.stat().st_size
    with open(path, "r+b") as f:
        if where == "header":
            f.write(b"this is not sqlite at all")
        else:  # smash the b-tree pages in the middle of the file
            page = 4096
            for off in range(page * 2, size - page, page * 3):
                f.seek(off)
                f.write(os.urandom(64))
    fresh = Hub(cache_dir=hub.cache_dir)
    with pytest.warns(CacheCorruptionWarning, match="corrupt"):
        te = fresh.embed(texts, encoder="tiny-bert", cache=EmbeddingCache(path))
    for i in range(len(texts)):
        assert torch.equal(te[i], ref[i])
    aside = list(tmp_path.glob("file.sqlite.corrupt-*"))
    assert aside, "the corrupt file is kept aside for inspection"
    again = EmbeddingCache(path)
    assert again.verify() == {"integrity": ["ok"], "entries": len(set(texts)), "bad_rows": 0}
    assert again.info()["set_aside"]
    again.close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    with open(path, "r+b") as f:
        f.write(b"garbage garbage garbage")
    with pytest.raises(CacheCorruptError, match="corrupt"):
        EmbeddingCache(path, on_corrupt="raise").info()
    assert path.is_file()  # left in place with on_corrupt="raise"


def test_fp16_storage_parity(hub, tmp_path):
    ref = hub.embed(TEXTS, cache=False)
    store = EmbeddingCache(tmp_path / "h.sqlite", dtype="float16")
    first = hub.embed(TEXTS, cache=store)
    hit = hub.embed(TEXTS, cache=store)
    assert torch.equal(first.tokens, hit.tokens)  # what is served first is what a hit returns
    diff = (ref.tokens - hit.tokens).abs()[ref.mask].max().item()
    cos = torch.nn.functional.cosine_similarity(ref.pooled(), hit.pooled()).min().item()
    assert diff < 5e-3 and cos > 0.99999
    assert store.info()["payload_bytes"] == sum(int(n) * 384 * 2 for n in ref.lengths[:4])


def test_skip_errors_and_options_validation(hub, tmp_path):
    store = EmbeddingCache(tmp_path / "s.sqlite")
    te = hub.embed(["fine", "", "also fine"], encoder="tiny-bert", on_error="skip", cache=store)
    assert te.indices == [0, 2] and [e.index for e in te.errors] == [1]
    te2 = hub.embed(["fine", "", "also fine"], encoder="tiny-bert", on_error="skip", cache=store)
    assert te2.indices == [0, 2] and torch.equal(te.tokens, te2.tokens)
    with pytest.raises(CacheError, match="cache must be"):
        hub.embed(["x"], encoder="tiny-bert", cache=3)
    import pickle

    clone = pickle.loads(pickle.dumps(store))  # e.g. handed to worker processes
    assert clone.get_many(list(keys_for(hub.encoder("tiny-bert"), {0: hub.encoder("tiny-bert").prepare("fine")}).values()))
    with pytest.raises(CacheError, match="dtype"):
        EmbeddingCache(tmp_path / "x.sqlite", dtype="int8")


def test_cli_info_and_clear(hub, tmp_path, monkeypatch):
    from hub.cli.cache import cache as cache_cli

    monkeypatch.setenv("MODALITY_HUB_CACHE", str(tmp_path / "envcache"))
    h = Hub(cache=True)
    assert Path(h.cache_dir) == tmp_path / "envcache"
    h.embed(TEXTS[:3], encoder="tiny-bert")
    runner = CliRunner()
    res = runner.invoke(cache_cli, ["info", "--json"])
    assert res.exit_code == 0, res.output
    import json

    data = json.loads(res.output)
    assert data["path"] == str((tmp_path / "envcache" / "embeddings.sqlite").resolve())
    assert data["entries"] == 3 and data["payload_bytes"] > 0
    res = runner.invoke(cache_cli, ["info"])
    assert "entries   3" in res.output and "tiny-bert" in res.output
    res = runner.invoke(cache_cli, ["clear", "--yes"])
    assert res.exit_code == 0 and "cleared 3 entries" in res.output
    res = runner.invoke(cache_cli, ["info", "--json", "--path", str(tmp_path / "envcache")])
    assert json.loads(res.output)["entries"] == 0
    res = runner.invoke(cache_cli, ["verify"])
    assert res.exit_code == 0 and res.output.startswith("ok")
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database, not at all" * 100)
    res = runner.invoke(cache_cli, ["info", "--path", str(bad)])
    assert res.exit_code == 0 and "set aside" in res.output


def test_dataset_embedding_uses_the_cache(tmp_path, monkeypatch):
    """embed_dataset(cache=...) and `mhub embed-dataset --cache`: a second run over the same items is served
    from the store, with the same vectors."""
    pa = pytest.importorskip("pyarrow")
    import json

    import pyarrow.parquet as pq

    from hub.cli import main
    from hub.datasets import embed_dataset

    rows = [{"id": f"r{i}", "text": f"sentence number {i} about cats"} for i in range(12)]
    src = tmp_path / "src.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    shared = tmp_path / "embeddings.sqlite"  # where `--cache` looks with MODALITY_HUB_CACHE=tmp_path
    embed_dataset(src, tmp_path / "a", encoder="tiny-bert", column="text", cache=str(shared), progress=False)
    assert EmbeddingCache(shared).info()["entries"] == len(rows)
    monkeypatch.setenv("MODALITY_HUB_CACHE", str(tmp_path))

    def no_model(self, **tensors):
        raise RuntimeError("the model ran although every item is in the cache")

    import hub_text._encoder

    monkeypatch.setattr(hub_text._encoder.HFTextEncoder, "forward", no_model)
    res = CliRunner().invoke(main, ["embed-dataset", str(src), str(tmp_path / "b"), "-e", "tiny-bert", "--column",
                                    "text", "--cache", "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert EmbeddingCache(shared).info()["entries"] == len(rows)

    def vectors(dest):
        table = pa.concat_tables([pq.read_table(p) for p in sorted(dest.rglob("*.parquet"))]).sort_by("id")
        return table.column("embedding").combine_chunks().values.to_numpy()

    assert (vectors(tmp_path / "a") == vectors(tmp_path / "b")).all()


class Prepares:
    """Counts the items an encoder's ``prepare`` really runs on."""

    def __init__(self, enc) -> None:
        self.items = 0
        self._prepare = enc.prepare
        enc.prepare = self

    def __call__(self, item, index=0):
        self.items += 1
        return self._prepare(item, index)


def _picture(seed: int, size=(40, 30)):
    from PIL import Image

    w, h = size
    img = Image.new("RGB", size)
    img.putdata([((x * 7 + seed * 31) % 256, (y * 9 + seed) % 256, (x * y + seed * 5) % 256)
                 for y in range(h) for x in range(w)])
    return img


def test_raw_forms_seen_before_skip_prepare(hub, tmp_path):
    """A path, bytes or PIL image seen before is served without prepare (an alias of its prepared form),
    in a fresh hub; the three forms still share one entry."""
    path = tmp_path / "pic.png"
    _picture(1).save(path)
    data = path.read_bytes()
    store = EmbeddingCache(tmp_path / "raw.sqlite")
    forms = [path, data, _picture(1), str(path)]
    Prepares(hub.encoder("tiny-clip")), Calls(hub.encoder("tiny-clip"))  # as on the fresh hub below: instance
    # attributes are part of the processor state an alias is keyed on (one could replace prepare)
    first = [hub.embed(x, encoder="tiny-clip", cache=store) for x in forms]
    info = store.info()
    assert info["entries"] == 1 and info["aliases"] == 3  # str(path) is the path's alias
    fresh = Hub(cache_dir=hub.cache_dir)
    enc = fresh.encoder("tiny-clip")
    prep, calls = Prepares(enc), Calls(enc)
    again = fresh.embed([path, data, _picture(1), "not an image"], encoder="tiny-clip", cache=store, on_error="skip")
    assert prep.items == 1 and calls.items == 0  # only the bad item was prepared, no model ran
    assert again.indices == [0, 1, 2] and [e.index for e in again.errors] == [3]
    for r in range(3):
        assert torch.equal(again[r], first[0][0])
    # a file rewritten in place with another picture of the same size and mtime misses (content is hashed)
    st = path.stat()
    _picture(2).save(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    ref = fresh.embed(path, encoder="tiny-clip", cache=False)
    changed = fresh.embed(path, encoder="tiny-clip", cache=store)
    assert prep.items == 3 and calls.items == 2  # the reference and the changed file
    assert torch.equal(changed.tokens, ref.tokens) and not torch.equal(changed.tokens, first[0].tokens)


def test_processor_state_and_corrupt_aliases(hub, tmp_path):
    """A processor changed in place on a live encoder (not in the options) re-prepares; a corrupt alias row
    is reported, never used, and rebuilt."""
    store = EmbeddingCache(tmp_path / "p.sqlite")
    enc = hub.encoder("tiny-bert")
    prep, calls = Prepares(enc), Calls(enc)
    long = "one two three four five six seven eight nine ten eleven twelve"
    hub.embed([long, "short"], encoder="tiny-bert", cache=store)
    hub.embed([long, "short"], encoder="tiny-bert", cache=store)
    assert prep.items == 2
    original = enc.item_processor.max_length
    enc.item_processor.max_length = 6  # truncates `long`: another prepared item
    ref = Hub(cache_dir=hub.cache_dir)
    ref.encoder("tiny-bert").item_processor.max_length = 6
    cut = hub.embed([long, "short"], encoder="tiny-bert", cache=store)
    assert prep.items == 4 and cut.lengths.tolist()[0] == 6
    torch.testing.assert_close(cut[0], ref.embed([long], encoder="tiny-bert")[0], rtol=0, atol=1e-5)  # batch of 2 vs 1
    enc.item_processor.max_length = original
    con = sqlite3.connect(store.path)
    con.execute("UPDATE raw_keys SET chk = zeroblob(8)")  # checks that do not match
    con.commit()
    con.close()
    with pytest.warns(CacheCorruptionWarning, match="alias"):
        te = hub.embed([long, "short"], encoder="tiny-bert", cache=store)
    assert prep.items == 6 and calls.items == 4  # prepared again, served from their entries (no model run)
    assert te.lengths.tolist()[0] > 6
    assert store.info()["aliases"] == 4  # the two rebuilt, and the max_length=6 ones: still bad, found by verify
    assert store.verify()["bad_rows"] == 2 and store.verify()["bad_rows"] == 0
    assert store.info()["aliases"] == 2


def test_raw_digest_refuses_ambiguous_items(tmp_path):
    import numpy as np
    from PIL import Image

    from hub.cache import raw_digest

    assert raw_digest({"data": "mesh.obj", "format": "obj"}) is None  # a string inside may name a file
    assert raw_digest((np.zeros(3, dtype=object), 1)) is None
    assert raw_digest(tmp_path) is None  # a directory
    frames = [_picture(1), _picture(2)]
    gif = tmp_path / "a.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    assert raw_digest(Image.open(gif)) is None  # which frame prepare reads is the plugin's choice
    assert raw_digest((np.ones((4, 2), np.float32), 16000))[0] != raw_digest((np.ones((4, 2), np.float32), 8000))[0]
    p = _picture(1).convert("P")
    q = p.copy()
    q.putpalette([255 - v for v in p.getpalette()])
    assert raw_digest(p)[0] != raw_digest(q)[0]  # same indices, other palette
    assert raw_digest("a cat")[0] != raw_digest(b"a cat")[0]


def test_crc_rows_and_rows_checked_with_the_former_blake2b(tmp_path):
    """Rows are checked with a CRC-32 (4 bytes); rows and aliases written with the former blake2b checks
    (16 and 8 bytes) are still served, and a flipped byte under either check is never served."""
    import hashlib

    from hub.cache._rows import _checksum_v0

    store = EmbeddingCache(tmp_path / "v.sqlite")
    rows = [(bytes([k]) * 32, "s", torch.randn(3, 4, generator=torch.Generator().manual_seed(k)), None) for k in (1, 2)]
    store.put_many(rows, aliases=[(b"r" * 32, rows[0][0]), (b"q" * 32, rows[1][0])])
    con = sqlite3.connect(store.path)
    assert {len(c) for (c,) in con.execute("SELECT checksum FROM entries")} == {4}
    assert {len(c) for (c,) in con.execute("SELECT chk FROM raw_keys")} == {4}
    key, data = rows[1][0], rows[1][2].numpy().tobytes()
    con.execute("UPDATE entries SET checksum = ? WHERE key = ?", (_checksum_v0(key, 3, 4, "float32", None, data), key))
    con.execute("UPDATE raw_keys SET chk = ? WHERE raw = ?", (hashlib.blake2b(b"q" * 32 + key, digest_size=8).digest(),
                                                             b"q" * 32))
    con.commit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = store.get_raw([b"r" * 32, b"q" * 32])
    assert torch.equal(got[b"q" * 32][1].tokens, rows[1][2]) and torch.equal(got[b"r" * 32][1].tokens, rows[0][2])
    for k in (1, 2):  # one flipped bit in each row's tokens
        rid, blob = con.execute("SELECT b.id, b.data FROM blobs b JOIN entries e ON e.id = b.id WHERE e.key = ?",
                                (bytes([k]) * 32,)).fetchone()
        con.execute("UPDATE blobs SET data = ? WHERE id = ?", (blob[:7] + bytes([blob[7] ^ 1]) + blob[8:], rid))
    con.commit()
    con.close()
    with pytest.warns(CacheCorruptionWarning, match="2 row"):
        assert store.get_raw([b"r" * 32, b"q" * 32]) == {}
    assert store.info()["entries"] == 0


def test_access_times_written_at_eviction_flush_or_exit(tmp_path):
    """A read records access times in memory; they reach the file before the store evicts (the LRU test),
    with flush()/close(), or when the reading process exits."""
    import time

    path = tmp_path / "t.sqlite"
    store = EmbeddingCache(path)
    keys = [bytes([k]) * 32 for k in range(3)]
    store.put_many([(k, "s", torch.ones(2, 4), None) for k in keys], aliases=[(b"r" * 32, keys[2])])

    def accessed() -> list[float]:
        con = sqlite3.connect(path)
        try:
            return [con.execute("SELECT accessed FROM entries WHERE key = ?", (k,)).fetchone()[0] for k in keys]
        finally:
            con.close()

    t0 = accessed()
    time.sleep(0.02)
    store.get_many([keys[0]])
    store.get_raw([b"r" * 32])
    store.put_many([(b"x" * 32, "s", torch.ones(2, 4), None)])  # under the bound: no eviction, nothing written
    assert accessed() == t0
    store.flush()
    t1 = accessed()
    assert t1[0] > t0[0] and t1[2] > t0[2] and t1[1] == t0[1]
    code = f"from hub.cache import EmbeddingCache; EmbeddingCache({str(path)!r}).get_many([bytes([1]) * 32])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert accessed()[1] > t1[1]  # written at exit


def test_lookups_overlapping_hashing_in_blocks(hub, tmp_path, monkeypatch):
    """Raw keys looked up in blocks by a worker thread while the next are hashed: same rows, same order,
    and a corrupt row found by the worker still raises (on_corrupt="raise")."""
    from hub.cache import _embed

    monkeypatch.setattr(_embed, "_OVERLAP", 2)
    texts = [f"text number {i} " * (1 + i % 3) for i in range(7)]
    store = EmbeddingCache(tmp_path / "o.sqlite")
    first = hub.embed(texts, encoder="tiny-bert", cache=store)
    calls = Calls(hub.encoder("tiny-bert"))
    again = hub.embed(texts[::-1] + ["new"], encoder="tiny-bert", cache=store)
    assert calls.items == 1 and again.indices == list(range(8))
    for i in range(7):
        assert torch.equal(again[6 - i], first[i])
    con = sqlite3.connect(store.path)
    con.execute("UPDATE entries SET n = n + 1")
    con.commit()
    con.close()
    with pytest.raises(CacheCorruptError, match="checksum"):
        hub.embed(texts, encoder="tiny-bert", cache=EmbeddingCache(store.path, on_corrupt="raise"))


def test_assemble_copies_rows_into_a_zero_padded_batch():
    """Stored records (float32 and float16, with and without masks, empty) and computed rows land in one
    padded batch: real tokens exact, padding zero, masks right -- the path of every cached pass."""
    import numpy as np

    from hub.cache._embed import _Rows

    g = torch.Generator().manual_seed(0)
    rows, expect = _Rows(), {}
    for i, (n, dtype, masked) in enumerate([(3, "float32", False), (5, "float16", True), (0, "float32", False),
                                            (2, "float32", True)]):
        t = torch.randn(n, 4, generator=g)
        m = torch.tensor([True, False] * 3)[:n] if masked else None
        data = t.numpy().astype(dtype).tobytes()
        packed = np.packbits(m.numpy()).tobytes() if m is not None else None
        rows.records[i] = (n, 4, dtype, packed, data)
        expect[i] = (t.half().float() if dtype == "float16" else t, m)
    rows[4] = expect[4] = (torch.randn(4, 4, generator=g), torch.tensor([True, True, False, True]))
    rows[5] = expect[5] = (torch.randn(1, 4, generator=g), None)
    order = [5, 2, 0, 4, 1, 3]
    tokens, mask = rows.assemble(order)
    assert tokens.shape == (6, 5, 4) and mask.shape == (6, 5) and tokens.dtype == torch.float32
    for r, i in enumerate(order):
        t, m = expect[i]
        n = t.shape[0]
        assert torch.equal(tokens[r, :n], t) and not tokens[r, n:].any()
        assert torch.equal(mask[r, :n], m if m is not None else torch.ones(n, dtype=torch.bool))
        assert not mask[r, n:].any()
    with pytest.raises(CacheError, match="widths"):
        rows.records[9] = (1, 3, "float32", None, bytes(12))
        rows.assemble([0, 9])
