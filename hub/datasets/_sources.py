"""Dataset sources: Parquet / JSONL / CSV tables, or a directory or glob of item files.

A source streams :class:`Rows` (ids, items, modalities, base directories) in
bounded batches; nothing reads the whole dataset into memory.  Table rows hold
text, or a path or bytes for the other modalities; a relative path resolves
against the directory of the file the row came from.  For a directory or glob
of files, the id is the path relative to the root and the modality comes from
the suffix.
"""

from __future__ import annotations

import glob as globlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import InvalidInputError

__all__ = ["Rows", "Source", "TableSource", "FileSource", "open_source", "TABLE_SUFFIXES"]

TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
                  ".json": "jsonl", ".csv": "csv"}
_MAGIC = set("*?[")
#: item column names tried, in order, when none is given
ITEM_COLUMNS = ("item", "text", "path", "file", "image", "audio", "graph", "points", "bytes")
_READ_ROWS = 4096  # rows per read from a table file (re-chunked to the run's batch size downstream)


@dataclass
class Rows:
    """A batch of source rows: parallel lists."""

    ids: list[str] = field(default_factory=list)
    items: list[Any] = field(default_factory=list)
    modalities: list[str | None] = field(default_factory=list)
    bases: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, keep: list[int]) -> "Rows":
        return Rows([self.ids[i] for i in keep], [self.items[i] for i in keep],
                    [self.modalities[i] for i in keep], [self.bases[i] for i in keep])

    def extend(self, other: "Rows") -> None:
        self.ids += other.ids
        self.items += other.items
        self.modalities += other.modalities
        self.bases += other.bases

    def split(self, n: int) -> tuple["Rows", "Rows"]:
        return (Rows(self.ids[:n], self.items[:n], self.modalities[:n], self.bases[:n]),
                Rows(self.ids[n:], self.items[n:], self.modalities[n:], self.bases[n:]))


def as_id(value: Any, where: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        raise InvalidInputError(f"{where} has no id; every row needs a value in the id column")
    return value if isinstance(value, str) else str(value)


def _ids(column: Any, values: list[Any], path: Path) -> list[str]:
    """A batch's ids as strings (a string column without nulls as it is; others checked row by row)."""
    import pyarrow as pa

    if column.null_count == 0 and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return values
    where = f"{path}: a row"
    return [as_id(v, where) for v in values]


def _items(column: Any) -> list[Any]:
    """An item column's values. Binary values are memoryviews of Arrow's buffer, not copies: a fresh ``bytes``
    for every row of every batch is memory that glibc returns to the OS after each batch and the next batch
    faults in again (on small images, about 60% of the local engine's page faults; docs/datasets.md, runs G
    and H)."""
    import numpy as np
    import pyarrow as pa

    kind = column.type
    large = pa.types.is_large_binary(kind)
    if not (large or pa.types.is_binary(kind)) or len(column) == 0:
        return column.to_pylist()
    _, offsets, data = column.buffers()
    if data is None:
        return column.to_pylist()
    dtype = np.int64 if large else np.int32
    ends = np.frombuffer(offsets, dtype=dtype, count=len(column) + 1,
                         offset=column.offset * np.dtype(dtype).itemsize).tolist()
    view = memoryview(data)
    items: list[Any] = [view[a:b] for a, b in zip(ends, ends[1:])]
    if column.null_count:
        for i in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)).tolist():
            items[i] = None
    return items


class Source:
    """Common interface of the sources."""

    kind: str  # "parquet" | "jsonl" | "csv" | "files"
    files: list[Path]
    description: str

    def iter_rows(self) -> Iterator[Rows]:  # pragma: no cover - abstract
        raise NotImplementedError

    def iter_ids(self) -> Iterator[list[str]]:
        for rows in self.iter_rows():
            yield rows.ids

    def first_occurrences(self, ids: set[str]) -> Rows:
        """The first row of each id in ``ids`` (for ``dedupe="first"``)."""
        out, seen = Rows(), set()
        for rows in self.iter_rows():
            keep = []
            for i, x in enumerate(rows.ids):
                if x in ids and x not in seen:
                    seen.add(x)
                    keep.append(i)
            kept = rows.take(keep)
            # copies: a view would keep its whole batch's buffer alive until the end of the run
            kept.items = [bytes(x) if isinstance(x, memoryview) else x for x in kept.items]
            out.extend(kept)
        return out


class TableSource(Source):
    """Parquet, JSONL or CSV files with an id column, an item column and an optional modality column."""

    def __init__(self, files: list[Path], kind: str, column: str | None, id_column: str, modality_column: str | None):
        self.files, self.kind, self.column, self.id_column = files, kind, column, id_column
        self.description = f"{kind} ({len(files)} file{'s' * (len(files) != 1)})"
        self.modality_column = modality_column
        self._check_columns()

    # -- columns ---------------------------------------------------------------
    def _columns_of(self, path: Path) -> list[str]:
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        if self.kind == "csv":
            with open(path, newline="", encoding="utf-8") as fh:
                import csv

                return next(csv.reader(fh), [])
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InvalidInputError(f"{path}: line 1 is not JSON ({exc})") from None
                    return list(row) if isinstance(row, dict) else []
        return []

    def _check_columns(self) -> None:
        for path in self.files[:1]:
            cols = self._columns_of(path)
            if self.kind == "jsonl" and not cols:
                return  # an empty file
            if self.column is None:
                guess = [c for c in ITEM_COLUMNS if c in cols]
                if not guess:
                    raise InvalidInputError(f"{path}: which column holds the items? Its columns are {cols}; "
                                            "pass --column (column=...)")
                self.column = guess[0]
            for what, name in (("id column", self.id_column), ("item column", self.column)):
                if name not in cols:
                    raise InvalidInputError(
                        f"{path}: no {what} {name!r}; its columns are {cols}. "
                        f"Choose with {'--id-column' if what == 'id column' else '--column'} "
                        f"({'id_column' if what == 'id column' else 'column'}=...)"
                    )
            if self.modality_column and self.modality_column not in cols:
                self.modality_column = None

    @property
    def read_columns(self) -> list[str]:
        cols = [self.id_column, self.column]
        if self.modality_column and self.modality_column not in cols:
            cols.append(self.modality_column)
        return list(dict.fromkeys(cols))

    # -- reading ---------------------------------------------------------------
    def iter_rows(self) -> Iterator[Rows]:
        if self.kind == "jsonl":
            for path in self.files:
                yield from self._jsonl(path, str(path.parent.resolve()))
            return
        # Arrow decodes the next batch in a background thread (it releases the GIL) while the model runs on
        # this one: decoding was 3.6% of the main thread's samples on 20,000 small images (py-spy). The
        # conversion to Python objects stays here: done in that thread too (it holds the GIL), the engine
        # measured 0.873x the plain loop instead of 1.009x (docs/datasets.md, run G).
        for path, base, batch in prefetched(self._all_arrow_batches(self.read_columns)):
            idc = batch.column(self.id_column)
            ids = _ids(idc, idc.to_pylist(), path)
            n = len(ids)
            yield Rows(
                ids,
                _items(batch.column(self.column)),
                batch.column(self.modality_column).to_pylist() if self.modality_column else [None] * n,
                [base] * n,
            )

    def iter_ids(self) -> Iterator[list[str]]:
        if self.kind == "jsonl":
            yield from super().iter_ids()
            return
        for path in self.files:
            for batch in self._arrow_batches(path, [self.id_column]):
                yield _ids(batch.column(0), batch.column(0).to_pylist(), path)

    def _all_arrow_batches(self, columns: list[str]) -> Iterator[tuple[Path, str, Any]]:
        for path in self.files:
            base = str(path.parent.resolve())
            for batch in self._arrow_batches(path, columns):
                yield path, base, batch

    def _arrow_batches(self, path: Path, columns: list[str]):
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            # memory-mapped: pages are decoded from the page cache instead of being copied into fresh buffers
            with pq.ParquetFile(path, memory_map=True) as pf:
                missing = [c for c in columns if c not in pf.schema_arrow.names]
                if missing:
                    raise InvalidInputError(f"{path}: no column {missing[0]!r}; its columns are {pf.schema_arrow.names}")
                # decoded in this thread: handing each batch to Arrow's thread pool and waking it costs more
                # than the decoding itself next to a model that holds the cores (measured: 0.28 -> 0.17 s of
                # engine time per 8,000 small images on 2 busy cores)
                yield from pf.iter_batches(batch_size=_READ_ROWS, columns=columns, use_threads=False)
            return
        import pyarrow as pa
        import pyarrow.csv as pcsv

        types = {c: pa.string() for c in columns}
        try:
            reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 20),
                                   convert_options=pcsv.ConvertOptions(column_types=types, include_columns=columns))
        except pa.ArrowInvalid as exc:
            raise InvalidInputError(f"{path}: cannot read as CSV: {exc}") from None
        for batch in reader:
            yield batch.select(columns) if list(batch.schema.names) != columns else batch

    def _jsonl(self, path: Path, base: str) -> Iterator[Rows]:
        rows = Rows()
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidInputError(f"{path}:{lineno}: not a JSON object ({exc})") from None
                if not isinstance(rec, dict):
                    raise InvalidInputError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
                rows.ids.append(as_id(rec.get(self.id_column), f"{path}:{lineno}"))
                rows.items.append(rec.get(self.column))
                rows.modalities.append(rec.get(self.modality_column) if self.modality_column else None)
                rows.bases.append(base)
                if len(rows) >= _READ_ROWS:
                    yield rows
                    rows = Rows()
        if len(rows):
            yield rows


class FileSource(Source):
    """A directory or glob of item files: the id is the path relative to ``root``."""

    kind = "files"

    def __init__(self, root: Path, files: list[Path], ignored: dict[str, int] | None = None):
        self.root, self.files, self.ignored = root, files, ignored or {}
        self.description = f"{len(files)} files under {root}"

    def id_of(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def iter_rows(self) -> Iterator[Rows]:
        for s in range(0, len(self.files), _READ_ROWS):
            chunk = self.files[s : s + _READ_ROWS]
            yield Rows([self.id_of(p) for p in chunk], list(chunk), [None] * len(chunk), [None] * len(chunk))


_END = object()


def prefetched(iterator: Iterator[Any]) -> Iterator[Any]:
    """``iterator``'s items, each produced one ahead by a background thread while the caller works on the one
    before (its exceptions are raised here, in order); closing this generator early closes ``iterator``."""
    with ThreadPoolExecutor(1, thread_name_prefix="embed-dataset-read") as pool:
        try:
            ahead = pool.submit(next, iterator, _END)
            while (item := ahead.result()) is not _END:
                ahead = pool.submit(next, iterator, _END)
                yield item
        finally:
            pool.shutdown(wait=True)  # the read in progress ends before ``iterator`` is closed, here
            close = getattr(iterator, "close", None)
            if close is not None:
                close()


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    head = []
    for part in parts:
        if _MAGIC & set(part):
            break
        head.append(part)
    return Path(*head) if head else Path(".")


def open_source(source: str | os.PathLike, *, column: str | None, id_column: str, modality_column: str | None,
                extensions: set[str]) -> Source:
    """The source named by ``source``: a table file, a directory, or a glob.

    A directory (or glob) whose files are all Parquet, all JSONL or all CSV is a
    table; otherwise each file is an item (only suffixes in ``extensions`` are
    taken from a directory; a glob takes what it matches).
    """
    text = os.fspath(source)
    if _MAGIC & set(text) and not os.path.exists(text):
        files = sorted(Path(p) for p in globlib.glob(text, recursive=True) if os.path.isfile(p))
        if not files:
            raise InvalidInputError(f"source {text!r}: the glob matches no files")
        root, ignored = _glob_root(text), {}
    else:
        path = Path(text)
        if path.is_file():
            kind = TABLE_SUFFIXES.get(path.suffix.lower())
            if kind is None:
                raise InvalidInputError(
                    f"source {text!r}: a single file must be a table ({', '.join(sorted(TABLE_SUFFIXES))}); "
                    "for item files pass their directory or a glob such as 'photos/**/*.jpg'"
                )
            return TableSource([path], kind, column, id_column, modality_column)
        if not path.is_dir():
            raise InvalidInputError(f"source {text!r}: no such file, directory or glob match")
        root = path
        everything = sorted(p for p in path.rglob("*") if p.is_file()
                            and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))
        kinds = {TABLE_SUFFIXES.get(p.suffix.lower()) for p in everything}
        if len(kinds) == 1 and None not in kinds:
            return TableSource(everything, kinds.pop(), column, id_column, modality_column)
        files = [p for p in everything if p.suffix.lower() in extensions]
        ignored: dict[str, int] = {}
        for p in everything:
            if p.suffix.lower() not in extensions:
                ignored[p.suffix.lower() or "(none)"] = ignored.get(p.suffix.lower() or "(none)", 0) + 1
        if not files:
            raise InvalidInputError(f"source {text!r}: no files with a suffix an installed modality reads "
                                    f"({', '.join(sorted(extensions))})")
    kinds = {TABLE_SUFFIXES.get(p.suffix.lower()) for p in files}
    if len(kinds) == 1 and None not in kinds:
        return TableSource(files, kinds.pop(), column, id_column, modality_column)
    return FileSource(root, files, ignored)
