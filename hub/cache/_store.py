"""`EmbeddingCache`: an SQLite store of per-item token embeddings (WAL, checksummed rows, LRU bound)."""

from __future__ import annotations

import atexit
import os
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
import torch

from ..errors import CacheCorruptError, CacheError
from ._rows import _DTYPES, CacheEntry, _alias_check, _alias_ok, _checksum, _entry, _valid, decode

__all__ = ["EmbeddingCache", "CacheCorruptionWarning", "CacheEntry", "DEFAULT_MAX_BYTES", "DB_NAME"]

DB_NAME = "embeddings.sqlite"
#: default size bound of the stored embeddings (payload bytes); override with ``max_bytes`` or this variable
ENV_MAX_BYTES = "MODALITY_HUB_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 4 << 30
SCHEMA_VERSION = "1"
_MMAP_BYTES = 1 << 31
_IN_CHUNK = 999  # keys per SELECT ... IN (...): SQLite's historical bound on parameters

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS stats(id INTEGER PRIMARY KEY CHECK (id = 0), entries INTEGER NOT NULL, "
    "bytes INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO stats VALUES (0, 0, 0)",
    # small columns only: touching ``accessed`` rewrites a short row, not the tokens
    "CREATE TABLE IF NOT EXISTS entries(id INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE, space TEXT NOT NULL, "
    "n INTEGER NOT NULL, dim INTEGER NOT NULL, dtype TEXT NOT NULL, size INTEGER NOT NULL, "
    "created REAL NOT NULL, accessed REAL NOT NULL, checksum BLOB NOT NULL)",
    # no index on ``accessed``: it doubled the cost of recording access times (each touch moved an index entry);
    # eviction, rare, sorts the table instead
    "DROP INDEX IF EXISTS entries_accessed",
    "CREATE TABLE IF NOT EXISTS blobs(id INTEGER PRIMARY KEY, mask BLOB, data BLOB NOT NULL)",
    # key of a raw item (+ encoder, processor state, storage dtype) -> the key of its entry (keyed by the prepared
    # form), and an 8-byte check of the pair: a raw form seen before skips ``prepare``.  An alias lives as long
    # as its entry (eviction drops the aliases left without one)
    "CREATE TABLE IF NOT EXISTS raw_keys(raw BLOB PRIMARY KEY, key BLOB NOT NULL, chk BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TRIGGER IF NOT EXISTS entries_added AFTER INSERT ON entries BEGIN "
    "UPDATE stats SET entries = entries + 1, bytes = bytes + NEW.size WHERE id = 0; END",
    "CREATE TRIGGER IF NOT EXISTS entries_removed AFTER DELETE ON entries BEGIN "
    "UPDATE stats SET entries = entries - 1, bytes = bytes - OLD.size WHERE id = 0; "
    "DELETE FROM blobs WHERE id = OLD.id; END",
)


_MAX_PENDING = 100_000  # keys whose access time may wait for the next write
_PENDING_SECONDS = 60.0  # ... and for how long
_PENDING: "set[EmbeddingCache]" = set()  # stores with unwritten access times (held until written)


@atexit.register
def _flush_at_exit() -> None:
    for cache in list(_PENDING):  # a store dropped without close() too
        try:
            cache.flush()
        except Exception:  # noqa: BLE001 - only LRU order is at stake
            pass


class CacheCorruptionWarning(RuntimeWarning):
    """A corrupt cache row or file was found; it was dropped (or set aside) and is being rebuilt."""


def _is_corruption(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return True
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


class EmbeddingCache:
    """An on-disk cache of token embeddings, one row per (encoder fingerprint, prepared item) key.

    SQLite through the standard library: WAL journal, a busy timeout and ``BEGIN IMMEDIATE``
    write transactions, so several processes (and threads) can read and write one file at once.
    Each row carries a blake2b checksum over its key, shape, dtype and bytes; a row that fails it
    is never served (warned with :class:`CacheCorruptionWarning`, dropped and recomputed, or
    :class:`~hub.errors.CacheCorruptError` with ``on_corrupt="raise"``).  A file that fails
    ``PRAGMA quick_check`` (or any SQLite "malformed"/"not a database" error) is moved aside to
    ``<name>.corrupt-<time>`` and a fresh store is started.

    ``max_bytes`` bounds the stored payload (token bytes); when a write passes it, the least
    recently used rows are evicted until the payload is under 90% of the bound.  ``dtype``
    ``"float32"`` (default) returns exactly what the encoder produced; ``"float16"`` halves the
    size at a rounding error (see the README for the measured parity).
    """

    def __init__(self, path: str | os.PathLike, *, max_bytes: int | None = None,
                 dtype: Literal["float32", "float16"] = "float32", on_corrupt: Literal["rebuild", "raise"] = "rebuild",
                 check: Literal["quick", "full", "none"] = "quick", timeout: float = 60.0) -> None:
        if dtype not in _DTYPES:
            raise CacheError(f"cache dtype must be 'float32' or 'float16', got {dtype!r}")
        if on_corrupt not in ("rebuild", "raise"):
            raise CacheError(f"on_corrupt must be 'rebuild' or 'raise', got {on_corrupt!r}")
        if check not in ("quick", "full", "none"):
            raise CacheError(f"check must be 'quick', 'full' or 'none', got {check!r}")
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / DB_NAME
        if max_bytes is None:
            env = os.environ.get(ENV_MAX_BYTES)
            try:
                max_bytes = int(float(env)) if env else DEFAULT_MAX_BYTES
            except ValueError:
                raise CacheError(f"{ENV_MAX_BYTES}={env!r} is not a number of bytes") from None
        if max_bytes <= 0:
            raise CacheError(f"max_bytes must be positive, got {max_bytes}")
        self.path = path.resolve()
        self.max_bytes = int(max_bytes)
        self.dtype = dtype
        self.on_corrupt = on_corrupt
        self.check = check
        self.timeout = float(timeout)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._pending: list[tuple[float, list[bytes]]] = []  # (time, keys) read, access time not yet written

    def __getstate__(self) -> dict:  # picklable (multiprocessing, Ray): the connection is reopened there
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_conn", "_pid", "_pending")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.RLock(), _conn=None, _pid=-1, _pending=[])

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r}, dtype={self.dtype!r}, max_bytes={self.max_bytes})"

    # -- connection ---------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._pid != -1:  # a connection inherited through fork is never reused, nor the parent's pending reads
            self._pending = []
        self._conn = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create the cache directory {str(self.path.parent)!r}: {exc}") from None
        try:
            conn = self._open()
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc) and not isinstance(exc, _Corrupt):
                raise CacheError(f"cannot open the embedding cache {str(self.path)!r}: {exc}") from None
            self._corrupt_file(str(exc))
            conn = self._open()
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            if self.check != "none":
                # "quick": every table but the blobs (the bulk of the file: 55 ms for 5 MB, seconds for 500 MB), whose
                # rows carry checksums and whose pages SQLite checks as it reads them; "full": the whole file
                tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                checks = ([f"PRAGMA quick_check({t})" for t in tables if t != "blobs"] or ["PRAGMA quick_check"]) \
                    if self.check == "quick" else ["PRAGMA integrity_check"]
                for q in checks:
                    rows = conn.execute(q).fetchall()
                    if [r[0] for r in rows] != ["ok"]:
                        raise _Corrupt("; ".join(str(r[0]) for r in rows[:3]))
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                # both only take effect on a new, empty file; 1 KiB pages: rows of any size spill into full
                # overflow pages, so the file stays close to the token bytes (4 KiB pages waste up to half a page
                # per row for rows of 0.5-1 page, e.g. tiny-clip's 2.2 KB rows took 2.1x their size)
                conn.execute("PRAGMA page_size = 1024")
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # reads through a read-only memory map (SQLite's own; capped at 2 GiB by its build): a page costs a
            # memcpy, not a read() call -- 10k cached texts (460 MB, 1 KiB pages) read in 0.2 s CPU instead of 0.6
            conn.execute(f"PRAGMA mmap_size = {_MMAP_BYTES}")
            conn.execute("PRAGMA journal_size_limit = 8388608")  # the WAL shrinks back after a big write
            with self._write(conn):
                for stmt in _SCHEMA:
                    conn.execute(stmt)
                row = conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
                if row is None:
                    conn.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
                elif row[0] != SCHEMA_VERSION:
                    raise CacheError(f"{str(self.path)!r} holds cache schema {row[0]}, this version reads "
                                     f"{SCHEMA_VERSION}; clear it with `mhub cache clear`")
        except BaseException:
            conn.close()
            raise
        return conn

    class _Txn:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, exc, tb) -> None:
            if exc_type is None:
                self.conn.execute("COMMIT")
            elif self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass

    def _write(self, conn: sqlite3.Connection) -> "EmbeddingCache._Txn":
        return EmbeddingCache._Txn(conn)

    def _corrupt_file(self, reason: str) -> None:
        """Move the file (and its WAL) aside, warn, and let the next connect start fresh."""
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
        self._conn = None
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        msg = (f"embedding cache {str(self.path)!r} is corrupt ({reason}); moved it to {str(aside)!r} and "
               "started a fresh cache (entries are recomputed as they are needed)")
        if self.on_corrupt == "raise":
            raise CacheCorruptError(msg.replace("moved it to", "leaving it in place; delete it or use on_corrupt="
                                                "'rebuild' to move it to"))
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            try:
                if suffix == "-shm":
                    src.unlink(missing_ok=True)
                elif src.exists():
                    os.replace(src, Path(str(aside) + suffix))
            except OSError:
                pass
        warnings.warn(msg, CacheCorruptionWarning, stacklevel=4)

    def _run(self, fn, *args):
        """``fn(conn, *args)`` under the lock; a corrupt database is set aside and ``fn`` retried once."""
        with self._lock:
            for attempt in (0, 1):
                conn = self._connect()
                try:
                    return fn(conn, *args)
                except sqlite3.DatabaseError as exc:
                    if attempt == 0 and _is_corruption(exc):
                        self._corrupt_file(str(exc))
                        continue
                    raise CacheError(f"embedding cache {str(self.path)!r}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Write pending access times (:meth:`flush`) and close the connection."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                try:
                    self._flush(self._conn)
                except sqlite3.Error:
                    pass
                self._conn.close()
            self._conn = None

    # -- rows -------------------------------------------------------------------------------------
    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, CacheEntry]:
        """The stored entries among ``keys`` (misses are absent); touches their last-access time."""
        if not keys:
            return {}
        found, bad = self._run(self._select, list(dict.fromkeys(keys)), True)
        if bad:
            msg = (f"embedding cache {str(self.path)!r}: {len(bad)} row(s) failed their checksum "
                   f"(key {bad[0].hex()[:16]}…); not served")
            if self.on_corrupt == "raise":
                raise CacheCorruptError(msg)
            warnings.warn(msg + "; dropped them, they are recomputed and stored again", CacheCorruptionWarning,
                          stacklevel=3)
            self.delete(bad)
        return found

    def _select(self, conn: sqlite3.Connection, keys: list[bytes], touch: bool) -> tuple[dict[bytes, CacheEntry], list[bytes]]:
        found: dict[bytes, CacheEntry] = {}
        bad: list[bytes] = []
        touched: list[bytes] = []
        for s in range(0, len(keys), _IN_CHUNK):
            chunk = keys[s : s + _IN_CHUNK]
            rows = conn.execute(
                "SELECT e.key, e.id, e.n, e.dim, e.dtype, e.checksum, b.mask, b.data FROM entries e "
                f"LEFT JOIN blobs b ON b.id = e.id WHERE e.key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            for row in rows:
                entry = _entry(*row)
                if entry is None:
                    bad.append(row[0])
                else:
                    found[row[0]] = entry
                    touched.append(row[0])
        if touch:
            self._touch(conn, touched)
        return found, bad

    def _touch(self, conn: sqlite3.Connection, keys: list[bytes]) -> None:
        """Note that ``keys`` were read now.  The access times are written before this store evicts (in
        that transaction), by :meth:`flush`, :meth:`close`, at exit, or at a read once a minute old: a
        call makes no write of its own for them."""
        if keys:
            now = time.time()
            self._pending.append((now, keys))
            _PENDING.add(self)
            if now - self._pending[0][0] > _PENDING_SECONDS or sum(len(k) for _, k in self._pending) >= _MAX_PENDING:
                self._flush(conn)  # a long-lived reader (a server) writes them now and then

    def _write_touches(self, conn: sqlite3.Connection) -> None:  # in a write transaction
        pending, self._pending = self._pending, []
        _PENDING.discard(self)
        for now, keys in pending:
            for s in range(0, len(keys), _IN_CHUNK - 1):
                chunk = keys[s : s + _IN_CHUNK - 1]
                conn.execute(f"UPDATE entries SET accessed = ? WHERE key IN ({','.join('?' * len(chunk))})",
                             [now, *chunk])

    def _flush(self, conn: sqlite3.Connection) -> None:
        if self._pending:
            try:
                with self._write(conn):
                    self._write_touches(conn)
            except sqlite3.OperationalError as exc:  # busy past the timeout: only LRU order is at stake
                warnings.warn(f"embedding cache: could not record access times ({exc})", RuntimeWarning, stacklevel=4)

    def flush(self) -> None:
        """Write the access times of the reads since this store's last write (LRU order for other processes)."""
        if self._pending:
            self._run(self._flush)

    def get_raw(self, raws: Sequence[bytes]) -> dict[bytes, tuple[bytes, CacheEntry]]:
        """The entries behind raw-item keys, one query: ``{raw key: (entry key, entry)}`` (misses are absent).

        Touches the entries' access time.  A raw-key row or an entry that fails its check is never used:
        warned, dropped, and the item is prepared (and its entry computed) again."""
        return {raw: (rec[0], decode(*rec[1:])) for raw, rec in self.get_raw_records(raws).items()}

    def get_raw_records(self, raws: Sequence[bytes]) -> dict[bytes, tuple[bytes, int, int, str, bytes | None, bytes]]:
        """As :meth:`get_raw`, but checked records ``(entry key, n, dim, dtype, packed mask or None, bytes)``
        left undecoded, for callers that decode many at once (:class:`hub.cache.CachedCall`)."""
        if not raws:
            return {}
        found, bad_raw, bad = self._run(self._select_raw, list(dict.fromkeys(raws)))
        if bad_raw or bad:
            msg = (f"embedding cache {str(self.path)!r}: {len(bad_raw)} raw-item alias row(s) and {len(bad)} row(s) "
                   "failed their checksum; not served")
            if self.on_corrupt == "raise":
                raise CacheCorruptError(msg)
            warnings.warn(msg + "; dropped them, they are recomputed and stored again", CacheCorruptionWarning,
                          stacklevel=4)
            if bad_raw:
                self._run(lambda conn: self._delete_aliases(conn, bad_raw))
            if bad:
                self.delete(bad)
        return found

    def _select_raw(self, conn: sqlite3.Connection, raws: list[bytes]):
        found: dict[bytes, tuple] = {}
        bad_raw: list[bytes] = []
        bad: list[bytes] = []
        touched: list[bytes] = []
        for s in range(0, len(raws), _IN_CHUNK):
            chunk = raws[s : s + _IN_CHUNK]
            rows = conn.execute(
                "SELECT a.raw, a.chk, e.key, e.id, e.n, e.dim, e.dtype, e.checksum, b.mask, b.data FROM raw_keys a "
                "JOIN entries e ON e.key = a.key LEFT JOIN blobs b ON b.id = e.id "
                f"WHERE a.raw IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            for raw, chk, key, rid, n, dim, dtype, checksum, mask, data in rows:
                if not _alias_ok(raw, key, chk):
                    bad_raw.append(raw)
                elif not _valid(key, n, dim, dtype, checksum, mask, data):
                    bad.append(key)
                else:
                    found[raw] = (key, n, dim, dtype, mask, data)
                    touched.append(key)
        self._touch(conn, touched)
        return found, bad_raw, bad

    @staticmethod
    def _delete_aliases(conn: sqlite3.Connection, raws: Sequence[bytes]) -> None:
        with EmbeddingCache._Txn(conn):
            conn.executemany("DELETE FROM raw_keys WHERE raw = ?", [(r,) for r in raws])

    def put_many(self, rows: Iterable[tuple[bytes, str, torch.Tensor, torch.Tensor | None]],
                 aliases: Iterable[tuple[bytes, bytes]] = ()) -> int:
        """Store ``(key, space, tokens (n, dim), mask (n,) or None)`` rows; keys already present are kept.
        ``aliases``: ``(raw-item key, entry key)`` pairs, written in the same transaction.

        Returns how many rows were added.  Evicts least recently used rows past ``max_bytes``.
        """
        np_dtype = _DTYPES[self.dtype]
        packed = []
        for key, space, tokens, mask in rows:
            t = tokens.detach().to("cpu", torch.float32).contiguous().numpy()
            if t.ndim != 2:
                raise CacheError(f"cache rows are (tokens, dim); got shape {t.shape}")
            data = t.astype(np_dtype, copy=False).tobytes()
            m = None
            if mask is not None and not bool(mask.all()):
                m = np.packbits(mask.detach().cpu().numpy().astype(bool)).tobytes()
            n, dim = int(t.shape[0]), int(t.shape[1])
            packed.append((key, space, n, dim, _checksum(key, n, dim, self.dtype, m, data), m, data))
        pairs = [(raw, key, _alias_check(raw, key)) for raw, key in aliases]
        if not packed and not pairs:
            return 0
        return self._run(self._insert, packed, pairs)

    def _insert(self, conn: sqlite3.Connection, packed: list, pairs: list = ()) -> int:
        now = time.time()
        added = 0
        with self._write(conn):
            if pairs:
                conn.executemany("INSERT OR REPLACE INTO raw_keys(raw, key, chk) VALUES (?, ?, ?)", pairs)
            for key, space, n, dim, checksum, mask, data in packed:
                size = len(data) + (len(mask) if mask is not None else 0)
                cur = conn.execute(
                    "INSERT OR IGNORE INTO entries(key, space, n, dim, dtype, size, created, accessed, checksum) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (key, space, n, dim, self.dtype, size, now, now, checksum))
                if cur.rowcount == 1:
                    conn.execute("INSERT OR REPLACE INTO blobs(id, mask, data) VALUES (?, ?, ?)",
                                 (cur.lastrowid, mask, data))
                    added += 1
            self._evict(conn)
        return added

    def _evict(self, conn: sqlite3.Connection) -> int:
        total = conn.execute("SELECT bytes FROM stats WHERE id = 0").fetchone()[0]
        if total <= self.max_bytes:
            return 0
        self._write_touches(conn)  # this process's reads count before choosing what goes
        target = total - int(self.max_bytes * 0.9)
        ids, freed = [], 0
        for rid, size in conn.execute("SELECT id, size FROM entries ORDER BY accessed, id"):
            ids.append(rid)
            freed += size
            if freed >= target:
                break
        for s in range(0, len(ids), _IN_CHUNK):
            chunk = ids[s : s + _IN_CHUNK]
            conn.execute(f"DELETE FROM entries WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        conn.execute("DELETE FROM raw_keys WHERE key NOT IN (SELECT key FROM entries)")  # their aliases too
        conn.execute("PRAGMA incremental_vacuum")
        return len(ids)

    def delete(self, keys: Sequence[bytes]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                conn.executemany("DELETE FROM entries WHERE key = ?", [(k,) for k in keys])
        self._run(run)

    # -- housekeeping ---------------------------------------------------------------------------
    def info(self) -> dict:
        """Location, entries, payload and file bytes, the bound, and entries per embedding space."""
        def run(conn: sqlite3.Connection) -> dict:
            entries, payload = conn.execute("SELECT entries, bytes FROM stats WHERE id = 0").fetchone()
            spaces = dict(conn.execute("SELECT space, COUNT(*) FROM entries GROUP BY space ORDER BY space").fetchall())
            dtypes = dict(conn.execute("SELECT dtype, COUNT(*) FROM entries GROUP BY dtype").fetchall())
            aliases = conn.execute("SELECT COUNT(*) FROM raw_keys").fetchone()[0]
            return {"entries": int(entries), "payload_bytes": int(payload), "spaces": spaces, "dtypes": dtypes,
                    "aliases": int(aliases)}
        out = {"path": str(self.path), "max_bytes": self.max_bytes, "dtype": self.dtype, **self._run(run)}
        out["file_bytes"] = sum(p.stat().st_size for p in self._files() if p.exists())
        out["set_aside"] = [str(p) for p in sorted(self.path.parent.glob(self.path.name + ".corrupt-*"))]
        return out

    def _files(self) -> list[Path]:
        return [Path(str(self.path) + s) for s in ("", "-wal", "-shm")]

    def clear(self) -> int:
        """Delete every entry (and files set aside as corrupt); returns how many entries were removed."""
        def run(conn: sqlite3.Connection) -> int:
            with self._write(conn):
                n = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
                conn.execute("DELETE FROM blobs")
                conn.execute("DELETE FROM entries")
                conn.execute("DELETE FROM raw_keys")
                conn.execute("UPDATE stats SET entries = 0, bytes = 0 WHERE id = 0")
            try:
                conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError:  # another process is reading: the space is reused instead
                pass
            return int(n)
        n = self._run(run)
        for p in self.path.parent.glob(self.path.name + ".corrupt-*"):
            try:
                p.unlink()
            except OSError:
                pass
        return n

    def verify(self) -> dict:
        """Check every row's checksum and the file (``PRAGMA integrity_check``); returns counts, drops bad rows."""
        def run(conn: sqlite3.Connection) -> tuple[list[str], list[bytes], int, list[bytes]]:
            integrity = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            keys = [r[0] for r in conn.execute("SELECT key FROM entries")]
            bad_aliases = [raw for raw, key, chk in conn.execute("SELECT raw, key, chk FROM raw_keys")
                           if not isinstance(key, bytes) or not _alias_ok(raw, key, chk)]
            return integrity, keys, len(keys), bad_aliases
        integrity, keys, n, bad_aliases = self._run(run)
        if bad_aliases:
            self._run(lambda conn: self._delete_aliases(conn, bad_aliases))
        bad: list[bytes] = []
        for s in range(0, len(keys), _IN_CHUNK):
            _, b = self._run(self._select, keys[s : s + _IN_CHUNK], False)
            bad.extend(b)
        if bad:
            self.delete(bad)
        return {"integrity": integrity, "entries": n, "bad_rows": len(bad) + len(bad_aliases)}


class _Corrupt(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` did not say ok."""
