"""The local engine: one process that streams the source through the encoders in bounded batches
(reading and embedding in the main thread, writing part files in a background thread)."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from ._embed import BatchEmbedder
from ._fault import Fault
from ._sources import Rows, Source
from ._store import write_part

__all__ = ["run_local", "batches", "write_tables"]


def batches(source: Source, batch_size: int, skip: pa.Array | None, extra: Rows | None = None) -> Iterator[Rows]:
    """Rows of ``source`` not in ``skip``, re-chunked to ``batch_size``, then ``extra``'s rows."""
    buf = Rows()
    for raw in source.iter_rows():
        if skip is not None and len(skip) and len(raw):
            drop = pc.is_in(pa.array(raw.ids, pa.string()), value_set=skip).to_numpy(zero_copy_only=False)
            raw = raw.take([i for i in range(len(raw)) if not drop[i]])
        buf.extend(raw)
        while len(buf) >= batch_size:
            head, buf = buf.split(batch_size)
            yield head
    if extra is not None:
        buf.extend(extra)
    while len(buf):
        head, buf = buf.split(batch_size)
        yield head


def write_tables(dest: Path, tables: dict[str, pa.Table], fault: Fault) -> tuple[int, int]:
    """Write one batch's partitions; returns (rows, rows with an error)."""
    rows = errors = 0
    for space, table in tables.items():
        write_part(dest, space, table, before_rename=fault.before_rename)
        fault.after_rename()
        rows += table.num_rows
        errors += table.num_rows - table.column("error").null_count
    return rows, errors


def run_local(source: Source, dest: Path, embedder: BatchEmbedder, *, batch_size: int, skip: pa.Array | None,
              extra: Rows | None, total: int, progress: bool, fault: Fault) -> dict[str, float]:
    """Embed every row of ``source`` not in ``skip`` (plus ``extra``) into DEST; returns counts and seconds.

    Part files are written by one background thread while the model runs on the next batch (Parquet
    encoding releases the GIL); at most one batch waits to be written, so memory stays bounded."""
    start = time.perf_counter()
    written = errors = 0
    pending: tuple[Future, int] | None = None
    with tqdm(total=total, unit="row", desc="embed-dataset (local)", disable=not progress, smoothing=0.1) as bar, \
            ThreadPoolExecutor(1, thread_name_prefix="embed-dataset-write") as writer:

        def collect(future: Future, n: int) -> None:
            nonlocal written, errors
            w, e = future.result()  # a failed write stops the run here
            written, errors = written + w, errors + e
            bar.update(n)
            if e:
                bar.set_postfix(errors=errors, refresh=False)

        for rows in batches(source, batch_size, skip, extra):
            tables = embedder.embed(rows)
            if pending is not None:
                collect(*pending)
            pending = (writer.submit(write_tables, dest, tables, fault), len(rows))
        if pending is not None:
            collect(*pending)
    return {"written": written, "errors": errors, "seconds": time.perf_counter() - start}
