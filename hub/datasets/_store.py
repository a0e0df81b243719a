"""DEST: a Parquet dataset partitioned by embedding space, written in atomic part files.

Layout::

    DEST/_modality_hub.json                          the run's config (encoders, options, weights, versions)
    DEST/space=<url-quoted space>/part-<hash>.parquet    id, modality, embedding, [num_tokens, tokens], error
    DEST/space=unrouted/part-<hash>.parquet          rows no encoder took (id, modality, error)
    DEST/lance/<partition>.lance                     the same tables as Lance datasets (when pylance is installed)

Every part file is written under a temporary name in its own directory and
renamed into place (``os.replace``), so readers never see half a file.  A part's
name is a hash of its space and ids: writing the same batch twice (a retried Ray
task) replaces the file instead of duplicating rows.  Readers such as
``pyarrow.dataset`` skip the ``_``- and ``.``-prefixed files.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InvalidInputError, InvalidOptionsError
from ._config import Route, RunConfig

__all__ = ["MANIFEST", "UNROUTED", "partition_dir", "schema_for", "write_part", "done_ids", "read_manifest",
           "write_manifest", "check_resume", "clear", "clean_temporaries", "partitions", "verify", "load",
           "write_lance"]

MANIFEST = "_modality_hub.json"
UNROUTED = "unrouted"
METADATA_KEY = b"modality_hub"
FORMAT = 1


# -- layout ---------------------------------------------------------------------------
def partition_name(space: str) -> str:
    return f"space={quote(space, safe='')}"


def partition_dir(dest: Path, space: str) -> Path:
    return dest / partition_name(space)


def partitions(dest: Path) -> dict[str, Path]:
    """The space → directory of every partition in DEST (``unrouted`` included)."""
    if not dest.is_dir():
        return {}
    return {unquote(p.name[len("space="):]): p for p in sorted(dest.iterdir())
            if p.is_dir() and p.name.startswith("space=")}


def part_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("part-*.parquet") if p.is_file())


# -- schema -----------------------------------------------------------------------------
def schema_for(route: Route | None, config: RunConfig, versions: dict[str, str]) -> pa.Schema:
    """The schema of one partition, with metadata saying what its vectors are."""
    fields = [pa.field("id", pa.string(), nullable=False), pa.field("modality", pa.string())]
    if route is None:
        meta: dict[str, Any] = {"format": FORMAT, "space": UNROUTED, "versions": versions}
    else:
        vec = pa.list_(pa.float32(), route.dim)
        fields.append(pa.field("embedding", vec))
        if config.tokens:
            fields += [pa.field("num_tokens", pa.int32()), pa.field("tokens", pa.list_(vec))]
        meta = {
            "format": FORMAT,
            "encoder": route.encoder,
            "modality": route.modality,
            "space": route.space,
            "dim": route.dim,
            "pooling": route.pooling,
            "weights_sha256": route.weights_sha256,
            "options": route.options,
            "normalisation": "l2" if config.normalize else "none",
            "runtime": config.runtime,
            "tokens": config.tokens,
            "versions": versions,
        }
    fields.append(pa.field("error", pa.string()))
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True, default=str).encode()})


def metadata_of(schema: pa.Schema) -> dict[str, Any]:
    """The ``modality_hub`` metadata of a part file's (or a loaded table's) schema."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


# -- writing ------------------------------------------------------------------------------
def part_name(space: str, ids: list[str]) -> str:
    h = hashlib.sha256(space.encode())
    for x in ids:
        h.update(b"\0" + x.encode("utf-8", "surrogatepass"))
    return f"part-{h.hexdigest()[:24]}.parquet"


def write_part(dest: Path, space: str, table: pa.Table, *,
               before_rename: Callable[[Path], None] | None = None) -> Path:
    """Write ``table`` as a new part of ``space``'s partition, atomically (temporary name, then rename)."""
    directory = partition_dir(dest, space)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / part_name(space, table.column("id").to_pylist())
    tmp = directory / f".{final.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        pq.write_table(table, tmp, compression="zstd")
        if before_rename is not None:
            before_rename(tmp)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return final


def clean_temporaries(dest: Path) -> int:
    """Remove temporary part files left by a killed writer; returns how many."""
    n = 0
    for directory in partitions(dest).values():
        for tmp in directory.glob(".part-*.tmp"):
            tmp.unlink(missing_ok=True)
            n += 1
    return n


def iter_ids(dest: Path) -> Iterator[tuple[str, pa.Array]]:
    for space, directory in partitions(dest).items():
        for path in part_files(directory):
            yield space, pq.read_table(path, columns=["id"], use_threads=False).column("id").combine_chunks()


def done_ids(dest: Path) -> pa.Array:
    """Every id already in DEST, as one arrow string array."""
    chunks = [ids for _, ids in iter_ids(dest)]
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())


def verify(dest: Path) -> dict[str, Any]:
    """Rows per partition, rows with an error, and ids written more than once (should be none)."""
    import pyarrow.compute as pc

    rows: dict[str, int] = {}
    errors = 0
    all_ids = []
    for space, directory in partitions(dest).items():
        for path in part_files(directory):
            t = pq.read_table(path, columns=["id", "error"], use_threads=False)
            rows[space] = rows.get(space, 0) + t.num_rows
            errors += t.num_rows - t.column("error").null_count
            all_ids.append(t.column("id").combine_chunks())
    ids = pa.concat_arrays(all_ids) if all_ids else pa.array([], pa.string())
    dupes: list[str] = []
    if len(ids):
        counts = pc.value_counts(ids)
        dupes = pc.filter(counts, pc.greater(counts.field("counts"), 1)).field("values").to_pylist()
    return {"rows": rows, "total": len(ids), "errors": errors, "duplicate_ids": dupes[:10],
            "duplicates": len(dupes)}


# -- the run's manifest, resume ------------------------------------------------------------
def read_manifest(dest: Path) -> dict[str, Any] | None:
    path = dest / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def write_manifest(dest: Path, data: dict[str, Any]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".{MANIFEST}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, dest / MANIFEST)


def check_resume(dest: Path, config: RunConfig, versions: dict[str, str]) -> list[str]:
    """Refuse to add to DEST with other encoders, options or weights; return warnings about versions."""
    old = read_manifest(dest)
    if old is None:
        if dest.exists() and any(dest.iterdir()):
            raise InvalidInputError(
                f"DEST {str(dest)!r} exists and holds files not written by embed-dataset (no {MANIFEST}); "
                "choose an empty or new directory"
            )
        return []
    before = RunConfig.from_json(old["config"]).identity()
    now = config.identity()
    if before != now:
        diffs = _differences(before, now)
        raise InvalidOptionsError(
            f"DEST {str(dest)!r} was written with other settings, so its vectors would not match this run's: "
            + "; ".join(diffs[:6])
            + ". Resume with the same encoders, options and weights, write to another DEST, "
            "or start over with resume=False (--no-resume), which replaces DEST's embeddings"
        )
    warnings = []
    for name, was in sorted(old.get("versions", {}).items()):
        now_v = versions.get(name)
        if now_v != was:
            warnings.append(f"{name} was {was} when DEST was started, now {now_v or 'not installed'}")
    return warnings


def _differences(before: Any, now: Any, where: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(before) | set(now)):
            sub = f"{where}.{key}" if where else str(key)
            if key not in before:
                out.append(f"{sub}: not in DEST, now {now[key]!r}")
            elif key not in now:
                out.append(f"{sub}: DEST has {before[key]!r}, this run none")
            else:
                out += _differences(before[key], now[key], sub)
        return out
    return [] if before == now else [f"{where}: DEST has {before!r}, this run {now!r}"]


def clear(dest: Path) -> None:
    """Remove what embed-dataset wrote to DEST (for ``resume=False``); refuse foreign directories."""
    import shutil

    if not dest.exists():
        return
    if read_manifest(dest) is None and any(dest.iterdir()):
        raise InvalidInputError(
            f"DEST {str(dest)!r} holds files not written by embed-dataset (no {MANIFEST}); nothing was removed. "
            "Choose an empty or new directory"
        )
    for directory in partitions(dest).values():
        shutil.rmtree(directory)
    for extra in (dest / "lance", dest / "_fault_fired", dest / MANIFEST):
        if extra.is_dir():
            shutil.rmtree(extra)
        elif extra.exists():
            extra.unlink()


# -- reading ---------------------------------------------------------------------------------
def load(dest: str | os.PathLike, space: str | None = None, columns: list[str] | None = None) -> dict[str, pa.Table]:
    """DEST's partitions as arrow tables (space → table), with each partition's metadata on the schema."""
    dest = Path(dest)
    found = partitions(dest)
    if space is not None:
        if space not in found:
            raise InvalidInputError(f"{str(dest)!r} has no space {space!r}; it has: {', '.join(found) or 'none'}")
        found = {space: found[space]}
    out = {}
    for name, directory in found.items():
        files = part_files(directory)
        if not files:
            continue
        tables = [pq.read_table(f, columns=columns) for f in files]
        schema = tables[0].schema
        out[name] = pa.concat_tables([t.replace_schema_metadata(schema.metadata) for t in tables])
    return out


def lance_module():
    """``lance`` when pylance is importable (its Rust logger quieted to errors), else ``None``."""
    os.environ.setdefault("LANCE_LOG", "error")
    try:
        import lance
    except ImportError:
        return None
    return lance


def write_lance(dest: Path) -> list[Path]:
    """Copy every partition into ``DEST/lance/<partition>.lance`` (when pylance is importable)."""
    lance = lance_module()
    if lance is None:
        return []
    out = []
    for space, directory in partitions(dest).items():
        files = part_files(directory)
        if not files:
            continue
        schema = pq.read_schema(files[0])

        def batches(files=files, schema=schema):
            for f in files:
                for b in pq.ParquetFile(f).iter_batches(batch_size=4096):
                    yield pa.RecordBatch.from_arrays(b.columns, schema=schema)

        target = dest / "lance" / f"{directory.name}.lance"
        reader = pa.RecordBatchReader.from_batches(schema, batches())
        lance.write_dataset(reader, str(target), mode="overwrite")
        out.append(target)
    return out
