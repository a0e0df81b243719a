"""How ``Hub.embed`` uses the cache: resolve the ``cache=`` argument, look up prepared items, run misses."""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections.abc import MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..errors import CacheError
from ..tokens import TokenEmbeddings
from ._key import (
    UnhashableItemError,
    encoder_fingerprint,
    file_signature,
    fingerprint_digest,
    item_digest,
    processor_digest,
    raw_digest,
)
from ._rows import _DTYPES, decode
from ._store import DB_NAME, EmbeddingCache

__all__ = ["resolve_cache", "default_cache_path", "cached_embed", "keys_for", "CachedCall"]

_OPEN: dict[tuple[int, str], EmbeddingCache] = {}
_OPEN_LOCK = threading.Lock()
_WARNED: set[str] = set()

CacheArg = Any  # None | bool | str | os.PathLike | EmbeddingCache
_OVERLAP = 256  # raw keys per lookup while the next ones are hashed


def default_cache_path(hub: Any = None) -> Path:
    """``<hub cache_dir>/embeddings.sqlite`` (``cache_dir``: ``MODALITY_HUB_CACHE`` or ``~/.cache/modality-hub``)."""
    if hub is not None and getattr(hub, "cache_dir", None) is not None:
        base = Path(hub.cache_dir)
    else:
        base = Path(os.environ.get("MODALITY_HUB_CACHE") or Path.home() / ".cache" / "modality-hub")
    return base / DB_NAME


def open_cache(path: str | os.PathLike, **kwargs: Any) -> EmbeddingCache:
    """One :class:`EmbeddingCache` per file and process (reused, so the open-time check runs once)."""
    p = Path(path).expanduser()
    if p.is_dir() or (not p.suffix and not p.exists()):
        p = p / DB_NAME
    key = (os.getpid(), str(p.resolve()))
    with _OPEN_LOCK:
        cache = _OPEN.get(key)
        if cache is None or kwargs:
            cache = EmbeddingCache(p, **kwargs)
            if not kwargs:
                _OPEN[key] = cache
        return cache


def resolve_cache(arg: CacheArg, hub: Any = None) -> EmbeddingCache | None:
    """``cache=`` → a store or ``None``.

    ``None`` uses the hub's default (``Hub(cache=...)``); ``False``: off; ``True``: the default
    location; a path (file or directory); or an :class:`EmbeddingCache`.
    """
    if arg is None:
        arg = getattr(hub, "cache", None)
        if arg is None:
            return None
    if isinstance(arg, EmbeddingCache):
        return arg
    if arg is False:
        return None
    if arg is True:
        return open_cache(default_cache_path(hub))
    if isinstance(arg, (str, os.PathLike)):
        if not str(arg):
            raise CacheError("cache='' is not a location; pass True for the default, a path, or False")
        return open_cache(arg)
    raise CacheError(f"cache must be None, True, False, a path or an EmbeddingCache; got {type(arg).__name__}")


def keys_for(encoder: Any, prepared: Mapping[int, Any], *, options: Mapping[str, Any] | None = None,
             storage: str = "float32", output: str = "tokens", normalize: bool = False) -> dict[int, bytes | None]:
    """The cache key (32 bytes) of each prepared item; ``None`` for items whose prepared form cannot be hashed."""
    base = fingerprint_digest(encoder_fingerprint(encoder, options=options, output=output, normalize=normalize))
    base += storage.encode()
    return {i: None if d is None else hashlib.sha256(base + d).digest()
            for i, d in _digests(encoder, prepared).items()}


def _digests(encoder: Any, prepared: Mapping[int, Any]) -> dict[int, bytes | None]:
    out: dict[int, bytes | None] = {}
    for i, p in prepared.items():
        try:
            out[i] = item_digest(p)
        except UnhashableItemError as exc:
            tag = f"{type(encoder).__qualname__}:{exc}"
            if tag not in _WARNED:
                _WARNED.add(tag)
                warnings.warn(f"embedding cache: {exc}; such items are computed every time", RuntimeWarning,
                              stacklevel=5)
            out[i] = None
    return out


def _rows(te: TokenEmbeddings) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Per row: tokens up to the last real one, and the mask over them when it is not all true."""
    out = []
    lengths = te.mask.shape[1] - te.mask.flip(1).int().argmax(1)  # one past the last True
    lengths = torch.where(te.mask.any(1), lengths, torch.zeros_like(lengths))
    for r in range(len(te)):
        w = int(lengths[r])
        m = te.mask[r, :w]
        out.append((te.tokens[r, :w], None if bool(m.all()) else m))
    return out


def cached_embed(cache: EmbeddingCache, encoder: Any, prepared: Mapping[int, Any],
                 run: Callable[[list[int]], TokenEmbeddings], *, options: Mapping[str, Any] | None = None) -> TokenEmbeddings:
    """Serve ``prepared`` items from ``cache``, ``run`` (length-bucketed forward) the misses, store them.

    Returns one batch in input order (``indices`` = the prepared items' input positions).  Real tokens,
    masks and pooled vectors equal the uncached run's bit for bit with ``float32`` storage; padded
    positions (mask false) hold zeros.
    """
    return CachedCall(cache, encoder, options=options).embed(prepared, run)


class CachedCall:
    """One ``embed`` call through the cache, in two steps:

    1. :meth:`serve_raw` (optional): items whose *raw* form (file bytes, image pixels, string) was seen
       before with this encoder, processor state and storage dtype are served without ``prepare``: an
       alias row maps sha256(fingerprint, storage, processor state, decoder versions, raw content) to the
       key of the entry recorded when that raw form was last prepared (one query joins the two);
    2. :meth:`embed`: the rest, prepared by the caller: looked up by their prepared form (so a path, bytes
       and a PIL image of one picture share an entry), the misses run, entries and aliases stored.
    """

    def __init__(self, cache: EmbeddingCache, encoder: Any, *, options: Mapping[str, Any] | None = None) -> None:
        self.cache, self.encoder = cache, encoder
        self.fingerprint = fingerprint_digest(encoder_fingerprint(encoder, options=options))
        self.base = self.fingerprint + cache.dtype.encode()
        #: input index -> (tokens, mask) served so far (rows found by raw key are decoded on access)
        self.rows = _Rows()
        self._raw: dict[int, tuple[bytes, tuple | None, Any]] = {}  # index -> (alias key, file signature, item)

    def key(self, digest: bytes) -> bytes:
        return hashlib.sha256(self.base + digest).digest()

    def serve_raw(self, items: Mapping[int, Any]) -> list[int]:
        """Serve the items seen before in this raw form; returns the indices still to prepare, in order."""
        alias_base = b"alias" + self.base + processor_digest(self.encoder)
        # hashing (sha256 releases the GIL on large buffers) and the lookups (so does SQLite's step) overlap:
        # each block of keys is looked up in a worker thread while the next block is hashed
        raws, found, pool, pending = self._raw, {}, None, []
        block: list[bytes] = []
        for n, (i, x) in enumerate(items.items(), 1):
            r = raw_digest(x)
            if r is not None:
                a = hashlib.sha256(alias_base + r[0]).digest()
                raws[i] = (a, r[1], x)
                block.append(a)
            if len(block) >= _OVERLAP and n < len(items):
                if pool is None:
                    pool = ThreadPoolExecutor(1, thread_name_prefix="hub-cache")
                pending.append(pool.submit(self.cache.get_raw_records, block))
                block = []
        try:
            found = self.cache.get_raw_records(block) if block else {}
            for f in pending:
                found.update(f.result())
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        records = self.rows.records
        for i, (a, _, _) in raws.items():
            rec = found.get(a)
            if rec is not None:
                records[i] = rec[1:]  # decoded all at once by ``embed``
        return [i for i in items if i not in records and i not in self.rows.done]

    def embed(self, prepared: Mapping[int, Any], run: Callable[[list[int]], TokenEmbeddings]) -> TokenEmbeddings:
        """Look ``prepared`` up, ``run`` the misses, store them; one batch in input order with the rows
        :meth:`serve_raw` served."""
        cache, encoder, rows = self.cache, self.encoder, self.rows
        digests = _digests(encoder, prepared)
        keys = {i: self.key(d) for i, d in digests.items() if d is not None}
        hits = cache.get_many(list(keys.values()))
        for i, k in keys.items():
            e = hits.get(k)
            if e is not None:
                rows[i] = (e.tokens, e.mask)
        aliases = []
        for i, (alias, sig, item) in self._raw.items():
            # a file that changed while it was hashed and prepared gets no alias
            if i in keys and (sig is None or file_signature(item) == sig):
                aliases.append((alias, keys[i]))
        misses = [i for i in prepared if i not in rows]
        store = []
        if misses:
            te = run(misses)
            new = dict(zip(te.indices or misses, _rows(te)))
            store = [(keys[i], encoder.space, t, m) for i, (t, m) in new.items() if i in keys]
            if cache.dtype == "float32":
                rows.update(new)
            else:  # serve exactly what a later hit will return
                rows.update({i: (t.float().half().float(), m) for i, (t, m) in new.items()})
        if store or aliases:
            try:
                cache.put_many(store, aliases)
            except CacheError as exc:
                warnings.warn(f"embedding cache: results not stored ({exc})", RuntimeWarning, stacklevel=3)
        order = sorted(rows)
        device = encoder.device
        if not order:
            tokens = torch.zeros(0, 0, int(encoder.dim), dtype=torch.float32, device=device)
            return TokenEmbeddings(tokens, torch.zeros(0, 0, dtype=torch.bool, device=device), encoder.modality,
                                   encoder.space, encoder.pooling, order)
        tokens, mask = rows.assemble(order)
        return TokenEmbeddings(tokens.to(device), mask.to(device), encoder.modality, encoder.space, encoder.pooling,
                               order)


class _Rows(MutableMapping):
    """``{input index: (tokens, mask)}``; rows found by raw key stay stored records ``(n, dim, dtype, packed
    mask, bytes)`` until :meth:`assemble` copies them straight into the padded output (a tensor per row, then
    ``pad_sequence``, cost ~10 us an item and a second copy)."""

    def __init__(self) -> None:
        self.done: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.records: dict[int, tuple[int, int, str, bytes | None, bytes]] = {}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if i in self.done:
            return self.done[i]
        e = decode(*self.records[i])
        return e.tokens, e.mask

    def __setitem__(self, i: int, value: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        self.records.pop(i, None)
        self.done[i] = value

    def __delitem__(self, i: int) -> None:
        if self.records.pop(i, None) is None:
            del self.done[i]

    def __contains__(self, i: object) -> bool:
        return i in self.done or i in self.records

    def __iter__(self):
        yield from self.done
        yield from self.records

    def __len__(self) -> int:
        return len(self.done) + len(self.records)

    def assemble(self, order: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (len(order), longest, dim) float32 zero-padded, mask)`` on the CPU, rows in ``order``.

        Each row is copied once, straight from its stored bytes into the output, and only the padding is
        zeroed.  The output is allocated by torch, not numpy: numpy asks for transparent huge pages on large
        arrays, and first touching ~800 MB of those (10k texts) cost 1.5-2 s of kernel time on the test
        machine, against ~0.4 s for torch's plain pages."""
        records, done = self.records, self.done
        lengths = np.zeros(len(order), np.int64)
        dims = set()
        for r, i in enumerate(order):
            rec = records.get(i)
            if rec is not None:
                lengths[r] = rec[0]
                dims.add(rec[1])
            else:
                t = done[i][0]
                lengths[r] = t.shape[0]
                dims.add(int(t.shape[1]))
        if len(dims) != 1:
            raise CacheError(f"cached rows of different widths {sorted(dims)} in one call")
        dim = dims.pop()
        width = int(lengths.max()) if len(order) else 0
        tokens = torch.empty((len(order), width, dim), dtype=torch.float32)
        out = tokens.numpy()
        masks: list[tuple[int, Any]] = []
        for r, i in enumerate(order):
            rec = records.get(i)
            if rec is not None:
                n, _, dtype, m, data = rec
                if n:
                    out[r, :n] = np.frombuffer(data, dtype=_DTYPES[dtype]).reshape(n, dim)
                if m is not None:
                    masks.append((r, np.unpackbits(np.frombuffer(m, np.uint8), count=n).astype(bool)))
            else:
                t, m = done[i]
                n = int(t.shape[0])
                if n:
                    out[r, :n] = t.detach().to("cpu", torch.float32).numpy()
                if m is not None:
                    masks.append((r, m.detach().cpu().numpy().astype(bool)))
            if n < width:
                out[r, n:] = 0
        mask = np.arange(width)[None, :] < lengths[:, None]
        for r, m in masks:
            mask[r, : m.shape[0]] = m
        return tokens, torch.from_numpy(mask)
