"""How ``Hub.embed`` uses the cache: resolve the ``cache=`` argument, look up prepared items, run misses."""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..errors import CacheError
from ..tokens import TokenEmbeddings
from ._key import UnhashableItemError, encoder_fingerprint, fingerprint_digest, item_digest
from ._store import DB_NAME, EmbeddingCache

__all__ = ["resolve_cache", "default_cache_path", "cached_embed", "keys_for"]

_OPEN: dict[tuple[int, str], EmbeddingCache] = {}
_OPEN_LOCK = threading.Lock()
_WARNED: set[str] = set()

CacheArg = Any  # None | bool | str | os.PathLike | EmbeddingCache


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
    import hashlib

    base = fingerprint_digest(encoder_fingerprint(encoder, options=options, output=output, normalize=normalize))
    base += storage.encode()
    out: dict[int, bytes | None] = {}
    for i, p in prepared.items():
        try:
            out[i] = hashlib.sha256(base + item_digest(p)).digest()
        except UnhashableItemError as exc:
            tag = f"{type(encoder).__qualname__}:{exc}"
            if tag not in _WARNED:
                _WARNED.add(tag)
                warnings.warn(f"embedding cache: {exc}; such items are computed every time", RuntimeWarning,
                              stacklevel=4)
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
    keys = keys_for(encoder, prepared, options=options, storage=cache.dtype)
    hits = cache.get_many([k for k in keys.values() if k is not None])
    rows: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for i, k in keys.items():
        e = hits.get(k) if k is not None else None
        if e is not None:
            rows[i] = (e.tokens, e.mask)
    misses = [i for i in prepared if i not in rows]
    if misses:
        te = run(misses)
        new = dict(zip(te.indices or misses, _rows(te)))
        store = []
        for i, (t, m) in new.items():
            if keys.get(i) is not None:
                store.append((keys[i], encoder.space, t, m))
        if cache.dtype == "float32":
            rows.update(new)
        else:  # serve exactly what a later hit will return
            rows.update({i: (t.float().half().float(), m) for i, (t, m) in new.items()})
        try:
            cache.put_many(store)
        except CacheError as exc:
            warnings.warn(f"embedding cache: results not stored ({exc})", RuntimeWarning, stacklevel=3)
    order = sorted(rows)
    device = encoder.device
    width = max((int(rows[i][0].shape[0]) for i in order), default=0)
    dim = int(encoder.dim) if not order else int(rows[order[0]][0].shape[1])
    tokens = torch.zeros(len(order), width, dim, dtype=torch.float32, device=device)
    mask = torch.zeros(len(order), width, dtype=torch.bool, device=device)
    for r, i in enumerate(order):
        t, m = rows[i]
        w = int(t.shape[0])
        tokens[r, :w] = t.to(device)
        mask[r, :w] = True if m is None else m.to(device)
    return TokenEmbeddings(tokens, mask, encoder.modality, encoder.space, encoder.pooling, order)
