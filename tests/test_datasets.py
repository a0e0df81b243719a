"""hub.datasets / `mhub embed-dataset`: sources, output layout, errors, resume, faults, both engines."""

from __future__ import annotations

import json
import os
import subprocess
import time
import sys
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from hub.datasets import ENV_FAULT, embed_dataset, load, metadata_of  # noqa: E402
from hub.errors import InvalidInputError, InvalidOptionsError  # noqa: E402

ROUTES = ["text=minilm-l6", "image=tiny-clip", "audio=tiny-whisper", "graph=gin", "3d=tiny-point-bert"]
ENCODER = {r.split("=")[0]: r.split("=")[1] for r in ROUTES}
TEXTS = ["a cat on a mat", "the spoken word seven", "a wheel graph with eight nodes", "a torus", "x"]


# -- data ------------------------------------------------------------------------------------
def _write_files(hub, root: Path) -> dict[str, list[str]]:
    """Two or three files per non-text modality under ``root`` (names relative to root, by modality)."""
    import networkx as nx
    import soundfile as sf

    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[str]] = {"image": [], "audio": [], "graph": [], "3d": []}
    for i, img in enumerate(hub.registry.modality("image").examples(3, 0)):
        name = f"img/{i}.png"
        (root / "img").mkdir(exist_ok=True)
        img.save(root / name)
        out["image"].append(name)
    (root / "snd").mkdir(exist_ok=True)
    for i, clip in enumerate(hub.registry.modality("audio").examples(2, 0)):
        name = f"snd/{i}.wav"
        sf.write(root / name, np.asarray(clip["array"], dtype=np.float32), clip["sampling_rate"])
        out["audio"].append(name)
    for i, g in enumerate(hub.registry.modality("graph").examples(2, 0)):
        name = f"g{i}.edgelist"
        nx.write_edgelist(nx.DiGraph(list(map(tuple, g["edge_index"].T.tolist()))), root / name, data=False)
        out["graph"].append(name)
    for i, pts in enumerate(hub.registry.modality("3d").examples(2, 0)):
        name = f"cloud{i}.npy"
        np.save(root / name, np.asarray(pts, dtype=np.float32))
        out["3d"].append(name)
    return out


@pytest.fixture(scope="module")
def mixed(hub, tmp_path_factory):
    """A JSONL of all five modalities (text inline, files by relative path) with three bad rows."""
    root = tmp_path_factory.mktemp("mixed")
    files = _write_files(hub, root / "files")
    (root / "files" / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rows = [{"id": f"t{i}", "item": t} for i, t in enumerate(TEXTS)]
    for mod, names in files.items():
        rows += [{"id": f"{mod}-{i}", "item": f"files/{n}"} for i, n in enumerate(names)]
    rows[0]["modality"] = "text"  # an explicit modality column on some rows
    rows.append({"id": "bad-missing", "item": "files/img/nope.png"})
    rows.append({"id": "bad-corrupt", "item": "files/img/broken.png"})
    rows.append({"id": "bad-empty", "item": "", "modality": "text"})
    with open(root / "items.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    expected: dict[str, np.ndarray] = {}
    for mod, enc in ENCODER.items():
        if mod == "text":
            ids, items = [f"t{i}" for i in range(len(TEXTS))], list(TEXTS)
        else:
            ids = [f"{mod}-{i}" for i in range(len(files[mod]))]
            items = [root / "files" / n for n in files[mod]]
        pooled = hub.embed(items, modality=mod, encoder=enc).pooled().numpy()
        expected.update(zip(ids, pooled))
    return {"root": root, "jsonl": root / "items.jsonl", "files": files, "expected": expected,
            "bad": {"bad-missing", "bad-corrupt", "bad-empty"}, "ids": [r["id"] for r in rows]}


def _vectors(dest) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """id → vector and id → error over every partition of DEST."""
    vecs, errs = {}, {}
    for space, t in load(dest).items():
        for row in t.to_pylist():
            if row["error"] is not None:
                errs[row["id"]] = row["error"]
            else:
                vecs[row["id"]] = np.asarray(row["embedding"], dtype=np.float32)
    return vecs, errs


def _check_mixed(mixed, dest, summary) -> None:
    vecs, errs = _vectors(dest)
    assert set(errs) == mixed["bad"], errs
    assert "nope.png" in errs["bad-missing"] and "no such file" in errs["bad-missing"]
    assert set(vecs) == set(mixed["expected"])
    for i, v in mixed["expected"].items():
        np.testing.assert_allclose(vecs[i], v, atol=1e-5, err_msg=i)
    assert summary.complete and summary.errors == 3 and summary.rows_written == len(mixed["ids"])
    # one partition per space, each with its own fixed-size embedding column and metadata
    tables = load(dest)
    assert len(tables) == 5
    for space, t in tables.items():
        meta = metadata_of(t.schema)
        assert meta["space"] == space and ENCODER[meta["modality"]] == meta["encoder"]
        assert t.schema.field("embedding").type == pa.list_(pa.float32(), meta["dim"])
        assert len(meta["weights_sha256"]) == 64 and meta["normalisation"] == "none"
        assert set(t.column("modality").to_pylist()) == {meta["modality"]}


# -- local engine --------------------------------------------------------------------------------
def test_mixed_local_matches_hub_embed(mixed, tmp_path, hub):
    s = embed_dataset(mixed["jsonl"], tmp_path / "out", encoder=ROUTES, batch_size=5, hub=hub, progress=False)
    _check_mixed(mixed, tmp_path / "out", s)
    assert "torch" in json.loads((tmp_path / "out" / "_modality_hub.json").read_text())["versions"]


def test_directory_of_files(mixed, tmp_path, hub):
    src = mixed["root"] / "files"
    s = embed_dataset(src, tmp_path / "out", encoder=ROUTES[1:], batch_size=4, hub=hub, progress=False)
    vecs, errs = _vectors(tmp_path / "out")
    assert list(errs) == ["img/broken.png"]
    names = {n: f"{mod}-{i}" for mod, ns in mixed["files"].items() for i, n in enumerate(ns)}
    assert set(vecs) == set(names)  # ids are paths relative to the directory
    for name, key in names.items():
        np.testing.assert_allclose(vecs[name], mixed["expected"][key], atol=1e-5)
    assert s.complete and s.rows_in_source == len(names) + 1
    # a glob selects files, the id is relative to the glob's fixed part
    s = embed_dataset(str(src / "img" / "*.png"), tmp_path / "glob", encoder="tiny-clip", hub=hub, progress=False)
    vecs, errs = _vectors(tmp_path / "glob")
    assert set(vecs) == {"0.png", "1.png", "2.png"} and set(errs) == {"broken.png"}


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_parquet_and_csv_sources(fmt, tmp_path, hub):
    texts = [f"sentence {i} about {w}" for i, w in enumerate(["cats", "dogs", "trains", "graphs", "clouds"])]
    table = pa.table({"key": [10, 11, 12, 13, 14], "text": texts})
    if fmt == "parquet":
        (tmp_path / "src").mkdir()
        pq.write_table(table.slice(0, 3), tmp_path / "src" / "a.parquet")
        pq.write_table(table.slice(3), tmp_path / "src" / "b.parquet")
        src = tmp_path / "src"
    else:
        src = tmp_path / "t.csv"
        src.write_text("key,text\n" + "".join(f"{k},{t}\n" for k, t in zip(table["key"].to_pylist(), texts)))
    s = embed_dataset(src, tmp_path / "out", encoder="minilm-l6", column="text", id_column="key", hub=hub,
                      progress=False, normalize=True, tokens=True)
    (t,) = load(tmp_path / "out").values()
    t = t.sort_by("id")
    assert t["id"].to_pylist() == ["10", "11", "12", "13", "14"] and s.errors == 0
    te = hub.embed(texts, encoder="minilm-l6")
    np.testing.assert_allclose(np.array(t["embedding"].to_pylist()), te.pooled(normalize=True).numpy(), atol=1e-5)
    assert t["num_tokens"].to_pylist() == te.lengths.tolist()
    np.testing.assert_allclose(np.array(t["tokens"][2].as_py()), te[2].numpy(), atol=1e-5)
    assert metadata_of(t.schema)["normalisation"] == "l2"


def test_binary_items_are_views_of_arrow_buffers():
    from hub.datasets._sources import _items

    values = [b"\x89PNG..", None, b"", b"xyz", b"last one"]
    for kind in (pa.binary(), pa.large_binary()):
        col = pa.array(values, kind)
        for arr, want in ((col, values), (col.slice(2), values[2:]), (col.slice(1, 3), values[1:4])):
            got = _items(arr)
            assert [None if g is None else bytes(g) for g in got] == want
            assert all(isinstance(g, memoryview) for g, w in zip(got, want) if w is not None)
    assert _items(pa.array(["a", None])) == ["a", None]  # other types: Python objects, as before


def test_binary_column_matches_hub_embed(mixed, tmp_path, hub):
    """A Parquet binary column (files' bytes, handed to the encoders as views): the vectors equal Hub.embed on
    the same bytes, bad bytes become error rows named as bytes, and dedupe="first" keeps the right row."""
    root, files = mixed["root"] / "files", mixed["files"]
    blobs = {f"{m}-{i}": (root / n).read_bytes() for m in ("image", "audio") for i, n in enumerate(files[m])}
    ids = list(blobs) + ["bad-png", "empty", "null", "image-0"]
    items = list(blobs.values()) + [b"\x89PNG\r\n\x1a\n broken", b"", None, b"not the first image-0"]
    pq.write_table(pa.table({"id": ids, "blob": pa.array(items, pa.binary()),
                             "modality": ["image"] * 3 + ["audio"] * 2 + ["image"] * 4}),
                   tmp_path / "b.parquet", row_group_size=3)
    s = embed_dataset(tmp_path / "b.parquet", tmp_path / "out", encoder=ROUTES[1:3], column="blob", batch_size=2,
                      dedupe="first", hub=hub, progress=False)
    vecs, errs = _vectors(tmp_path / "out")
    assert set(errs) == {"bad-png", "empty", "null"} and s.duplicates_dropped == 1
    assert "(bytes of length 15)" in errs["bad-png"] and "empty" in errs["empty"]
    assert set(vecs) == set(blobs)
    for mod in ("image", "audio"):
        keys = [k for k in blobs if k.startswith(mod)]
        want = hub.embed([blobs[k] for k in keys], modality=mod, encoder=ENCODER[mod]).pooled().numpy()
        for k, w in zip(keys, want):
            np.testing.assert_allclose(vecs[k], w, atol=1e-5, err_msg=k)


def test_duplicate_ids_refused_or_first_kept(tmp_path, hub):
    src = tmp_path / "d.jsonl"
    rows = [("a", "first a"), ("b", "b"), ("a", "second a"), ("c", "c"), ("c", "again c"), ("a", "third a")]
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows))
    with pytest.raises(InvalidInputError, match=r"2 duplicated ids: 'a' \(3x\), 'c' \(2x\).*dedupe"):
        embed_dataset(src, tmp_path / "out", encoder="minilm-l6", hub=hub, progress=False)
    assert not (tmp_path / "out").exists()
    s = embed_dataset(src, tmp_path / "out", encoder="minilm-l6", dedupe="first", hub=hub, progress=False)
    vecs, _ = _vectors(tmp_path / "out")
    assert sorted(vecs) == ["a", "b", "c"] and s.duplicates_dropped == 3 and s.complete
    want = hub.embed(["first a", "c"], encoder="minilm-l6").pooled().numpy()
    np.testing.assert_allclose(vecs["a"], want[0], atol=1e-5)
    np.testing.assert_allclose(vecs["c"], want[1], atol=1e-5)


def test_resume_skips_done_and_refuses_other_settings(tmp_path, hub):
    src = tmp_path / "r.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": f"text {i}"}) + "\n" for i in range(6)))
    dest = tmp_path / "out"
    embed_dataset(src, dest, encoder="minilm-l6", batch_size=4, hub=hub, progress=False)
    with open(src, "a") as fh:
        fh.write(json.dumps({"id": 6, "text": "text 6"}) + "\n")
    s = embed_dataset(src, dest, encoder="minilm-l6", batch_size=4, hub=hub, progress=False)
    assert (s.already_done, s.rows_written, s.rows_in_dest, s.duplicate_ids_in_dest) == (6, 1, 7, 0)
    with pytest.raises(InvalidOptionsError, match="other settings.*tiny-bert"):
        embed_dataset(src, dest, encoder="tiny-bert", hub=hub, progress=False)
    with pytest.raises(InvalidOptionsError, match="normalize"):
        embed_dataset(src, dest, encoder="minilm-l6", normalize=True, hub=hub, progress=False)
    # other package versions are reported, not refused
    manifest = json.loads((dest / "_modality_hub.json").read_text())
    manifest["versions"]["torch"] = "0.0.1"
    (dest / "_modality_hub.json").write_text(json.dumps(manifest))
    s = embed_dataset(src, dest, encoder="minilm-l6", hub=hub, progress=False)
    assert s.rows_written == 0 and any("torch was 0.0.1" in w for w in s.warnings)
    # --no-resume starts over; a directory that embed-dataset did not write is refused
    s = embed_dataset(src, dest, encoder="tiny-bert", resume=False, hub=hub, progress=False)
    assert s.rows_written == 7 and list(load(dest)) == [next(iter(load(dest)))]
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="not written by embed-dataset"):
        embed_dataset(src, tmp_path / "foreign", encoder="minilm-l6", resume=False, hub=hub, progress=False)
    assert (tmp_path / "foreign" / "notes.txt").exists()


def test_unknown_encoder_and_missing_column_are_refused(tmp_path, hub):
    src = tmp_path / "r.jsonl"
    src.write_text(json.dumps({"id": 1, "body": "x"}) + "\n")
    with pytest.raises(InvalidInputError, match=r"no item column 'text'.*\['id', 'body'\].*--column"):
        embed_dataset(src, tmp_path / "o", encoder="minilm-l6", column="text", hub=hub, progress=False)
    with pytest.raises(KeyError, match="no-such-encoder"):
        embed_dataset(src, tmp_path / "o", encoder="no-such-encoder", column="body", hub=hub, progress=False)


def _run_cli(args, env=None, timeout=300):
    full = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", "from hub.cli import main; main()", "embed-dataset", *map(str, args)], env=full,
                          capture_output=True, text=True, timeout=timeout)


def test_killed_local_run_resumes_exactly_once(tmp_path):
    src = tmp_path / "k.jsonl"
    n = 40
    src.write_text("".join(json.dumps({"id": f"r{i}", "text": f"row number {i}"}) + "\n" for i in range(n)))
    dest = tmp_path / "out"
    # SIGKILL after 3 part files, while the 4th is half written (its temporary file on disk)
    r = _run_cli([src, dest, "-e", "minilm-l6", "--batch-size", "5", "-q"], env={ENV_FAULT: "3"})
    assert r.returncode == -9, r.stderr[-2000:]
    space_dir = next(dest.glob("space=*"))
    assert len(list(space_dir.glob("part-*.parquet"))) == 3 and list(space_dir.glob(".part-*.tmp"))
    r = _run_cli([src, dest, "-e", "minilm-l6", "--batch-size", "5", "--json"], env={ENV_FAULT: "3"})
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert summary["already_done"] == 15 and summary["rows_written"] == n - 15 and summary["complete"]
    ids = pq.read_table(space_dir, columns=["id"])["id"].to_pylist()  # pyarrow skips the temporary files
    assert sorted(ids) == sorted(f"r{i}" for i in range(n))
    assert not list(space_dir.glob(".part-*.tmp"))


def test_cli_help_and_errors(tmp_path):
    from click.testing import CliRunner

    from hub.cli import main

    res = CliRunner().invoke(main, ["embed-dataset", "--help"])
    assert res.exit_code == 0 and "--engine [local|ray]" in res.output and "--dedupe" in res.output
    res = CliRunner().invoke(main, ["embed-dataset", str(tmp_path / "missing.jsonl"), str(tmp_path / "o"),
                                    "-e", "minilm-l6"])
    assert res.exit_code == 2 and "error: source" in res.output


def test_faiss_neighbours_match_brute_force(tmp_path, hub):
    faiss = pytest.importorskip("faiss")
    src = tmp_path / "f.jsonl"
    words = ["cat", "dog", "car", "train", "graph", "mesh", "audio", "music", "tree", "river", "sun", "moon"]
    texts = [f"a {a} near a {b}" for a in words for b in words[:5]]
    src.write_text("".join(json.dumps({"id": f"x{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    embed_dataset(src, tmp_path / "out", encoder="minilm-l6", normalize=True, batch_size=16, hub=hub, progress=False)
    (t,) = load(tmp_path / "out").values()
    ids = t["id"].to_pylist()
    # zero-copy view of the fixed_size_list column as an (n, dim) float32 matrix
    dim = t.schema.field("embedding").type.list_size
    x = t["embedding"].combine_chunks().values.to_numpy().reshape(-1, dim)
    index = faiss.IndexFlatIP(dim)
    index.add(x)
    q = x[:10]
    _, got = index.search(q, 5)
    want = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :5]
    scores = q @ x.T
    for r in range(len(q)):  # same neighbours (ties may swap places)
        np.testing.assert_allclose(np.sort(scores[r, got[r]]), np.sort(scores[r, want[r]]), atol=1e-5)
        assert ids[got[r][0]] == ids[r]


def test_lance_copy_when_pylance_is_installed(tmp_path, hub):
    lance = pytest.importorskip("lance")
    src = tmp_path / "l.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": f"text {i}"}) + "\n" for i in range(5)))
    s = embed_dataset(src, tmp_path / "out", encoder="minilm-l6", lance=True, hub=hub, progress=False)
    (path,) = s.lance
    t = lance.dataset(path).to_table()
    assert sorted(t["id"].to_pylist()) == [str(i) for i in range(5)]
    assert t.schema.field("embedding").type == pa.list_(pa.float32(), 384)


# -- Ray engine --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def ray_session():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_mixed_and_directory_match_hub_embed(ray_session, mixed, tmp_path, hub):
    s = embed_dataset(mixed["jsonl"], tmp_path / "out", encoder=ROUTES, engine="ray", workers=1, batch_size=4,
                      hub=hub, progress=False, lance=False)
    _check_mixed(mixed, tmp_path / "out", s)
    assert s.details["devices"] == ["cpu"]
    ph = s.details["phases"]  # start-up vs steady state, from the actors' own clocks
    assert ph["actors"] == 1 and ph["actor_init_s"] > 0 and ph["steady_rows_per_s"] > 0
    assert 0 < ph["actor_ready_s"] <= ph["first_batch_s"] + 0.1 <= ph["last_batch_end_s"] + 0.1 <= ph["total_s"] + 0.2
    # the worker process starts (maybe before the run: a pooled worker), then imports, then the constructor runs
    assert ph["actor_process_s"] <= ph["actor_imported_s"] + 0.1 <= ph["actor_born_s"] + 0.2 <= ph["actor_ready_s"] + 0.3
    # a directory of files, read with read_binary_files
    s = embed_dataset(mixed["root"] / "files", tmp_path / "dir", encoder=ROUTES[1:], engine="ray", workers=1,
                      batch_size=4, hub=hub, progress=False, lance=False)
    vecs, errs = _vectors(tmp_path / "dir")
    names = {n: f"{mod}-{i}" for mod, ns in mixed["files"].items() for i, n in enumerate(ns)}
    assert set(vecs) == set(names) and list(errs) == ["img/broken.png"] and s.complete
    for name, key in names.items():
        np.testing.assert_allclose(vecs[name], mixed["expected"][key], atol=1e-5)


@pytest.mark.slow
def test_ray_read_cuts_one_parquet_file_into_batches(ray_session, tmp_path):
    """Ray 2.60 reads one Parquet file as one block (one task: one actor would do all the work);
    the engine re-cuts it into batch-sized blocks."""
    from hub.datasets._ray import _read
    from hub.datasets._sources import open_source

    pq.write_table(pa.table({"id": [f"r{i}" for i in range(40)], "text": ["x"] * 40}), tmp_path / "one.parquet")
    src = open_source(tmp_path / "one.parquet", column="text", id_column="id", modality_column="modality",
                      extensions=set())
    ds, _ = _read(src, None, 0.1, 4, 8)
    assert [b.num_rows for b in ds.iter_batches(batch_size=None, batch_format="pyarrow")] == [8] * 5


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before-rename", "after-rename"])
def test_ray_actor_crash_still_writes_every_id_once(ray_session, tmp_path, hub, monkeypatch, point):
    n = 48
    if point == "before-rename":
        src = tmp_path / "c.jsonl"
        src.write_text("".join(json.dumps({"id": f"c{i}", "text": f"crash test row {i}"}) + "\n" for i in range(n)))
    else:  # (and read_parquet: one file, split into blocks for both actors)
        src = tmp_path / "c.parquet"
        pq.write_table(pa.table({"id": [f"c{i}" for i in range(n)], "text": [f"crash test row {i}" for i in range(n)]}), src)
    monkeypatch.setenv(ENV_FAULT, f"2:{point}")
    s = embed_dataset(src, tmp_path / "out", encoder="minilm-l6", engine="ray", workers=2, batch_size=4, hub=hub,
                      progress=False, lance=False)
    assert (tmp_path / "out" / "_fault_fired").exists()  # an actor really died
    assert s.complete and s.duplicate_ids_in_dest == 0 and s.rows_in_dest == n
    (t,) = load(tmp_path / "out").values()
    assert sorted(t["id"].to_pylist()) == sorted(f"c{i}" for i in range(n))
    assert not list((tmp_path / "out").rglob(".part-*.tmp"))


@pytest.mark.slow
def test_ray_poison_row_becomes_an_error_row(ray_session, tmp_path, hub, monkeypatch):
    """A row that kills its actor every time: its batch is retried once (not forever), its rows then run one by
    one, and the poison row alone ends up as an error row; every other id has its vector, each exactly once.
    The source is a Parquet binary column: the rows the driver reads for the isolation pass hold views of Arrow's
    buffers, which reach the actor through Ray's serializer (it sends a memoryview as bytes)."""
    import io

    from hub.datasets._fault import ENV_POISON

    n = 12
    blobs = []
    for img in hub.registry.modality("image").examples(n, 0):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        blobs.append(buf.getvalue())
    src = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(n)], "image": pa.array(blobs, pa.binary())}), src)
    monkeypatch.setenv(ENV_POISON, "p5")
    start = time.monotonic()
    s = embed_dataset(src, tmp_path / "out", encoder="tiny-clip", engine="ray", workers=1, batch_size=4, hub=hub,
                      progress=False, lance=False)
    assert time.monotonic() - start < 240  # bounded: no endless retry
    assert s.complete and s.rows_in_dest == n and s.errors_in_dest == 1
    # the poison batch, and any batch queued on the actor when it died, were isolated row by row
    assert 4 <= s.details["rows_isolated"] <= n and s.details["rows_killed_worker"] == 1
    (t,) = load(tmp_path / "out").values()
    rows = {r["id"]: r for r in t.to_pylist()}
    assert sorted(rows) == sorted(f"p{i}" for i in range(n))
    assert "killed its Ray worker" in rows["p5"]["error"] and rows["p5"]["embedding"] is None
    ref = hub.embed(blobs, modality="image", encoder="tiny-clip").pooled().numpy()
    for i in range(n):
        if i != 5:
            assert rows[f"p{i}"]["error"] is None
            np.testing.assert_allclose(np.asarray(rows[f"p{i}"]["embedding"], np.float32), ref[i], atol=1e-5)


def test_prefetched_keeps_order_raises_in_order_and_closes_early():
    from hub.datasets._sources import prefetched

    def source(fail_at=None, log=None):
        try:
            for i in range(5):
                if i == fail_at:
                    raise ValueError(f"bad batch {i}")
                yield i
        finally:
            if log is not None:
                log.append("closed")

    assert list(prefetched(source())) == [0, 1, 2, 3, 4]
    got = []
    with pytest.raises(ValueError, match="bad batch 3"):
        for x in prefetched(source(fail_at=3)):
            got.append(x)
    assert got == [0, 1, 2]  # the items before the failure all arrive first
    log: list[str] = []
    it = prefetched(source(log=log))
    assert next(it) == 0
    it.close()  # the consumer stops early: the source is closed, not left suspended
    assert log == ["closed"]
