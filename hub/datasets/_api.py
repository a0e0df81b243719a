"""``embed_dataset``: scan the source, check DEST, run an engine, verify what was written."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InvalidInputError, InvalidOptionsError
from . import _store as store
from ._config import fault_setting, package_versions
from ._embed import BatchEmbedder, build_config, extension_map, plugins_for
from ._fault import Fault
from ._sources import Source, open_source

if TYPE_CHECKING:  # pragma: no cover
    from .._hub import Hub

__all__ = ["embed_dataset", "DatasetSummary", "scan_ids"]

_SHOW_DUPLICATES = 5


@dataclass
class DatasetSummary:
    """What a run did.  ``rows_written`` counts this run's rows (errors included)."""

    dest: str
    engine: str
    source: str
    rows_in_source: int
    rows_written: int
    errors: int
    already_done: int
    duplicates_dropped: int
    seconds: float
    spaces: dict[str, int] = field(default_factory=dict)
    rows_in_dest: int = 0
    errors_in_dest: int = 0
    duplicate_ids_in_dest: int = 0
    lance: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def items_per_s(self) -> float:
        return self.rows_written / self.seconds if self.seconds > 0 else 0.0

    @property
    def complete(self) -> bool:
        """Every unique source id is in DEST exactly once."""
        return self.duplicate_ids_in_dest == 0 and self.rows_in_dest == self.rows_in_source - self.duplicates_dropped

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "items_per_s": self.items_per_s, "complete": self.complete}


def scan_ids(source: Source) -> tuple[pa.Array, list[tuple[str, int]]]:
    """All ids of the source (arrow strings, compact) and the duplicated ones with their counts."""
    chunks = [pa.array(ids, pa.string()) for ids in source.iter_ids() if ids]
    ids = pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())
    if not len(ids):
        return ids, []
    counts = pc.value_counts(ids)
    many = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    return ids, [(d["values"], d["counts"]) for d in many.to_pylist()]


def embed_dataset(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    encoder: str | Sequence[str] | Mapping[str, str],
    column: str | None = None,
    id_column: str = "id",
    modality_column: str | None = "modality",
    engine: Literal["local", "ray"] = "local",
    batch_size: int = 1024,
    model_batch_size: int = 32,
    workers: int = 2,
    runtime: Literal["torch", "onnx"] = "torch",
    tokens: bool = False,
    normalize: bool = False,
    resume: bool = True,
    dedupe: Literal["first"] | None = None,
    options: Mapping[str, Any] | None = None,
    cache: Any = None,
    lance: bool | None = None,
    progress: bool | None = None,
    hub: "Hub | None" = None,
    device: str | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    address: str | None = None,
) -> DatasetSummary:
    """Embed a dataset bigger than memory into a Parquet dataset partitioned by embedding space.

    ``source`` is a Parquet file or directory, a JSONL or CSV file, or a
    directory or glob of item files (``photos/**/*.jpg``).  ``encoder`` is one
    encoder name, or one per modality (``["image=tiny-clip", "text=minilm-l6"]``)
    for a mixed dataset routed by its ``modality`` column or file suffixes.
    ``column`` holds the items (text, or a path or bytes; default ``item`` or
    ``text``, whichever exists); ``id_column`` the ids (file sources: the
    relative path).

    ``engine="local"`` streams in one process; ``engine="ray"`` runs ``workers``
    Ray actors (``ray.init()`` is called when Ray is not initialised, with
    ``address`` if given).  ``batch_size`` rows make one part file per space;
    ``model_batch_size`` items go through the model at once.  ``resume=True``
    skips ids already in DEST (refusing other encoders, options or weights);
    ``resume=False`` replaces DEST's embeddings.  Duplicate ids are refused
    unless ``dedupe="first"``.  ``normalize=True`` stores L2-normalised vectors;
    ``tokens=True`` adds ``num_tokens`` and ``tokens`` columns.  ``lance``
    (default: when pylance is importable) also writes ``DEST/lance/``.
    """
    from .._hub import Hub

    t0 = time.perf_counter()
    if engine not in ("local", "ray"):
        raise InvalidOptionsError(f"engine must be 'local' or 'ray', got {engine!r}")
    if runtime not in ("torch", "onnx"):
        raise InvalidOptionsError(f"runtime must be 'torch' or 'onnx', got {runtime!r}")
    if dedupe not in (None, "first"):
        raise InvalidOptionsError(f"dedupe must be None or 'first', got {dedupe!r}")
    for name, value in (("batch_size", batch_size), ("model_batch_size", model_batch_size), ("workers", workers)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidOptionsError(f"{name} must be a positive int, got {value!r}")
    hub = hub or Hub(device=device)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise InvalidInputError(f"DEST {str(dest)!r} is a file; DEST is a directory (a Parquet dataset)")

    src = open_source(source, column=column, id_column=id_column, modality_column=modality_column,
                      extensions=set(extension_map(hub)))
    ids, dupes = scan_ids(src)
    if dupes and dedupe is None:
        shown = ", ".join(f"{x!r} ({n}x)" for x, n in dupes[:_SHOW_DUPLICATES])
        more = f" and {len(dupes) - _SHOW_DUPLICATES} more" if len(dupes) > _SHOW_DUPLICATES else ""
        raise InvalidInputError(
            f"source {os.fspath(source)!r} has {len(dupes)} duplicated id{'s' * (len(dupes) != 1)}: {shown}{more}. "
            "Ids must be unique to resume safely; fix the source or pass dedupe='first' (--dedupe first) "
            "to keep each id's first row"
        )

    config = build_config(hub, encoder, dict(options or {}), normalize=normalize, runtime=runtime, tokens=tokens)
    versions = package_versions()
    warnings: list[str] = []
    if resume:
        warnings += store.check_resume(dest, config, versions)
    else:
        store.clear(dest)
    store.clean_temporaries(dest)
    if store.read_manifest(dest) is None:
        store.write_manifest(dest, {
            "format": store.FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": os.fspath(source), "id_column": id_column, "column": getattr(src, "column", None),
            "config": config.to_json(), "versions": versions,
        })

    done = store.done_ids(dest) if resume else pa.array([], pa.string())
    dup_ids = pa.array([x for x, _ in dupes], pa.string())
    skip = pa.concat_arrays([done, dup_ids]) if len(dup_ids) else done
    extra = src.first_occurrences({x for x, _ in dupes}) if dupes else None
    if extra is not None and len(done):
        drop = pc.is_in(pa.array(extra.ids, pa.string()), value_set=done).to_numpy(zero_copy_only=False)
        extra = extra.take([i for i in range(len(extra)) if not drop[i]])
    unique = pc.unique(ids) if dupes else ids
    in_done = int(pc.sum(pc.is_in(unique, value_set=done)).as_py() or 0) if len(done) and len(ids) else 0
    todo = len(ids) - (int(pc.sum(pc.is_in(ids, value_set=skip)).as_py() or 0) if len(skip) else 0)
    todo += len(extra) if extra is not None else 0
    show = progress if progress is not None else True

    fault = fault_setting()
    embedder = BatchEmbedder(hub, config, model_batch_size=model_batch_size, cache=cache,
                             onnx_device="cuda" if str(hub.device or "").startswith("cuda") else "cpu")
    if engine == "local":
        from ._local import run_local

        stats: dict[str, Any] = run_local(src, dest, embedder, batch_size=batch_size, skip=skip if len(skip) else None,
                                          extra=extra, total=todo, progress=show, fault=Fault(fault, dest))
    else:
        from ._local import batches, write_tables
        from ._ray import run_ray

        stats = run_ray(src, dest, config, batch_size=batch_size, model_batch_size=model_batch_size,
                        workers=workers, skip=skip if len(skip) else None, total=todo - len(extra or ()),
                        progress=show, fault=fault, num_cpus=num_cpus, num_gpus=num_gpus, address=address,
                        cache=cache, plugins=plugins_for(hub, config), installed=hub.modalities(), all_ids=ids)
        if extra is not None and len(extra):  # each duplicated id's first row, embedded here
            for rows in batches(_NoRows(), batch_size, None, extra):
                w, e = write_tables(dest, embedder.embed(rows), Fault(None, dest))
                stats["written"] += w
                stats["errors"] += e
    store.clean_temporaries(dest)
    check = store.verify(dest)
    want_lance = lance if lance is not None else _lance_available()
    lance_paths = [str(p) for p in store.write_lance(dest)] if want_lance else []
    if lance and not lance_paths and not _lance_available():
        warnings.append("lance=True but pylance is not installed (pip install pylance); wrote Parquet only")
    return DatasetSummary(
        dest=str(dest), engine=engine, source=src.description, rows_in_source=len(ids),
        rows_written=int(stats["written"]), errors=int(stats["errors"]), already_done=in_done,
        duplicates_dropped=sum(n - 1 for _, n in dupes), seconds=time.perf_counter() - t0,
        spaces=check["rows"], rows_in_dest=check["total"], errors_in_dest=check["errors"],
        duplicate_ids_in_dest=check["duplicates"], lance=lance_paths, warnings=warnings,
        details={k: v for k, v in stats.items() if k not in ("written", "errors")}
        | {"embed_seconds": stats["seconds"], "ignored_files": getattr(src, "ignored", {})},
    )


class _NoRows:
    def iter_rows(self):
        return iter(())


def _lance_available() -> bool:
    return store.lance_module() is not None
