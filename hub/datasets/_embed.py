"""One batch of rows → arrow tables per embedding space (shared by the local engine and the Ray actors).

Each row is routed to its modality's encoder (the ``modality`` column, else the
only encoder, else the file suffix, else the hub's detection), its item is
resolved (relative paths against the source file's directory), and every group
goes through :meth:`hub.Hub.embed` with ``on_error="skip"``.  A row that fails
keeps its id and gets its reason in ``error``; the other rows are unaffected.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ..encoder import describe_item
from ..errors import HubError
from ._config import Route, RunConfig, package_versions, parse_routes, split_options, weights_hash
from ._sources import Rows
from ._store import UNROUTED, schema_for

if TYPE_CHECKING:  # pragma: no cover
    from .._hub import Hub

__all__ = ["BatchEmbedder", "build_config", "extension_map", "plugins_for"]

_ITEM_N = re.compile(r"^item \d+\b")


def extension_map(hub: "Hub") -> dict[str, list[str]]:
    """File suffix → the installed modalities that read it."""
    out: dict[str, list[str]] = {}
    for m in hub.modalities():
        for ext in hub.registry.modality(m).extensions:
            out.setdefault(ext, []).append(m)
    return out


def plugins_for(hub: "Hub", config: RunConfig) -> list[str] | None:
    """The plugins a single-encoder run needs (a Ray actor loads only these); ``None`` with several
    encoders, whose rows may need every modality's detection."""
    if len(config.routes) != 1:
        return None
    (route,) = config.routes.values()
    names = [p.name for p in hub.plugins() if p.ok and (route.encoder in p.encoders or route.modality in p.modalities)]
    return names or None


def build_config(hub: "Hub", encoder: Any, options: dict[str, Any] | None, *, normalize: bool, runtime: str,
                 tokens: bool) -> RunConfig:
    """Build every routed encoder once (refusing unknown encoders or bad options up front) and describe it."""
    names = parse_routes(hub, encoder)
    opts = split_options(names, options)
    routes = {}
    for mod, name in names.items():
        enc = hub.encoder(name, modality=mod, **opts[mod])
        if runtime == "onnx":  # export once here (cached), not concurrently in every Ray actor
            hub.onnx_encoder(name, modality=mod, **opts[mod])
        routes[mod] = Route(modality=mod, encoder=enc.name, options=opts[mod], space=enc.space, dim=int(enc.dim),
                            pooling=enc.pooling, weights_sha256=weights_hash(enc))
    return RunConfig(routes=routes, normalize=normalize, runtime=runtime, tokens=tokens)


def _fixed_size(values: np.ndarray, dim: int, valid: np.ndarray) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~valid))


class BatchEmbedder:
    """Embeds :class:`Rows` with a :class:`RunConfig`; one per process (or Ray actor)."""

    def __init__(self, hub: "Hub", config: RunConfig, *, model_batch_size: int = 32, cache: Any = None,
                 onnx_device: str = "cpu", installed: list[str] | None = None) -> None:
        self.hub, self.config, self.model_batch_size = hub, config, model_batch_size
        self.versions = package_versions()
        self.schemas = {r.space: schema_for(r, config, self.versions) for r in config.routes.values()}
        self.schemas[UNROUTED] = schema_for(None, config, self.versions)
        self.by_space = {r.space: r for r in config.routes.values()}
        self.extensions = extension_map(hub)
        self.installed = set(installed or hub.modalities())  # (a Ray actor gets the driver's list)
        self.embed_kwargs: dict[str, Any] = {"runtime": config.runtime}
        if config.runtime == "onnx":
            self.embed_kwargs["onnx_device"] = onnx_device
        if cache is not None and "cache" in inspect.signature(hub.embed).parameters:
            self.embed_kwargs["cache"] = cache

    # -- routing ---------------------------------------------------------------------------
    def _modality(self, item: Any, given: Any) -> str:
        if given is not None and str(given).strip():
            mod = str(given).strip().lower()
            if mod not in self.installed:
                raise HubError(f"unknown modality {mod!r} in the modality column; installed: "
                               f"{', '.join(sorted(self.installed))}")
            return mod
        if len(self.config.routes) == 1:
            return next(iter(self.config.routes))
        if isinstance(item, (str, os.PathLike)):
            suffix = os.path.splitext(os.fspath(item))[1].lower() if len(os.fspath(item)) < 4096 else ""
            claims = [m for m in self.extensions.get(suffix, []) if m in self.config.routes] or \
                self.extensions.get(suffix, [])
            if len(claims) == 1:
                return claims[0]
        return self.hub.detect(item)

    def _resolve(self, item: Any, mod: str, base: str | None) -> Any:
        if isinstance(item, (bytes, memoryview)):  # (Hub.embed hands a view to the plugin as bytes, item by item)
            return item
        if isinstance(item, Path):
            return item if item.is_absolute() or not base else Path(base) / item
        if isinstance(item, str) and item and len(item) < 4096 and "\n" not in item:
            suffix = os.path.splitext(item)[1].lower()
            if suffix in self.extensions:
                path = Path(item) if os.path.isabs(item) or not base else Path(base) / item
                if mod != "text" or path.is_file():
                    return path
        return item

    # -- embedding -------------------------------------------------------------------------
    def embed(self, rows: Rows) -> dict[str, pa.Table]:
        """Partition (space, or ``unrouted``) → table of these rows; every row appears exactly once."""
        n = len(rows)
        errors: list[str | None] = [None] * n
        groups: dict[str, list[int]] = {}
        items: list[Any] = [None] * n
        mods: list[str | None] = [None] * n
        only = next(iter(self.config.routes)) if len(self.config.routes) == 1 else None  # (the common case)
        for i in range(n):
            item, given = rows.items[i], rows.modalities[i]
            try:
                empty = item is None or (isinstance(item, (str, bytes, memoryview)) and not item)
                mods[i] = mod = only if only is not None and given is None else \
                    self._modality("" if item is None else item, given)
                if mod not in self.config.routes:
                    raise HubError(f"no encoder for modality {mod!r} in this run (encoders: "
                                   + ", ".join(f"{m}={r.encoder}" for m, r in self.config.routes.items())
                                   + f"); add -e {mod}=ENCODER")
                groups.setdefault(mod, []).append(i)
                if empty:
                    errors[i] = f"{describe_item(item)}: the item column is empty for this row"
                    continue
                items[i] = self._resolve(item, mod, rows.bases[i])
            except Exception as exc:  # noqa: BLE001 - a bad row is reported, never fatal
                errors[i] = f"{describe_item(item)}: {exc}" if isinstance(exc, HubError) else f"{type(exc).__name__}: {exc}"
        out: dict[str, pa.Table] = {}
        for mod, idx in groups.items():
            route = self.config.routes[mod]
            live = [k for k, i in enumerate(idx) if errors[i] is None]
            vectors, tokens = self._embed_group(route, [items[idx[k]] for k in live], [idx[k] for k in live], errors)
            vectors = {live[k]: v for k, v in vectors.items()}
            tokens = {live[k]: v for k, v in tokens.items()}
            out[route.space] = self._table(route, rows, idx, vectors, tokens, errors)
        unrouted = [i for i in range(n) if mods[i] not in self.config.routes]
        if unrouted:
            out[UNROUTED] = pa.table(
                {"id": pa.array([rows.ids[i] for i in unrouted], pa.string()),
                 "modality": pa.array([mods[i] for i in unrouted], pa.string()),
                 "error": pa.array([errors[i] for i in unrouted], pa.string())},
                schema=self.schemas[UNROUTED],
            )
        return out

    def _embed_group(self, route: Route, items: list[Any], idx: list[int], errors: list[str | None]):
        """Vectors (and token arrays) per position in ``items``; failures go to ``errors[idx[k]]``."""
        vectors: dict[int, np.ndarray] = {}
        tokens: dict[int, np.ndarray] = {}
        if not items:
            return vectors, tokens
        try:
            self._run(route, items, list(range(len(items))), vectors, tokens, idx, errors)
        except Exception:  # noqa: BLE001 - a batch-level failure (e.g. in forward): isolate the bad items
            vectors.clear()
            tokens.clear()
            for k in range(len(items)):
                try:
                    self._run(route, [items[k]], [k], vectors, tokens, idx, errors)
                except Exception as exc:  # noqa: BLE001
                    errors[idx[k]] = f"{describe_item(items[k])}: {type(exc).__name__}: {exc}"
        return vectors, tokens

    def _run(self, route: Route, items: list[Any], positions: list[int], vectors: dict, tokens: dict,
             idx: list[int], errors: list[str | None]) -> None:
        te = self.hub.embed(items, modality=route.modality, encoder=route.encoder, options=route.options or None,
                            batch_size=self.model_batch_size, progress=False, on_error="skip", **self.embed_kwargs)
        for err in te.errors:
            errors[idx[positions[err.index]]] = _ITEM_N.sub("item", err.reason)
        if len(te):
            pooled = te.pooled(normalize=self.config.normalize).detach().float().cpu().numpy()
            for r, j in enumerate(te.indices):
                vectors[positions[j]] = pooled[r]
                if self.config.tokens:
                    tokens[positions[j]] = te[r].detach().float().cpu().numpy()

    def _table(self, route: Route, rows: Rows, idx: list[int], vectors: dict[int, np.ndarray],
               tokens: dict[int, np.ndarray], errors: list[str | None]) -> pa.Table:
        dim = route.dim
        valid = np.array([k in vectors for k in range(len(idx))], dtype=bool)
        mat = np.zeros((len(idx), dim), dtype=np.float32)
        for k, v in vectors.items():
            mat[k] = v
        cols: dict[str, pa.Array] = {
            "id": pa.array([rows.ids[i] for i in idx], pa.string()),
            "modality": pa.array([route.modality] * len(idx), pa.string()),
            "embedding": _fixed_size(mat, dim, valid),
        }
        if self.config.tokens:
            counts = [len(tokens[k]) if k in tokens else 0 for k in range(len(idx))]
            flat = np.concatenate([tokens[k] for k in range(len(idx)) if k in tokens] or [np.zeros((0, dim), np.float32)])
            inner = _fixed_size(flat, dim, np.ones(len(flat), dtype=bool))
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
            cols["num_tokens"] = pa.array([counts[k] if valid[k] else None for k in range(len(idx))], pa.int32())
            cols["tokens"] = pa.ListArray.from_arrays(pa.array(offsets), inner, mask=pa.array(~valid))
        for k, i in enumerate(idx):
            if valid[k]:
                errors[i] = None
            elif errors[i] is None:
                errors[i] = "the encoder returned no vector for this row"
        cols["error"] = pa.array([errors[i] for i in idx], pa.string())
        return pa.table(cols, schema=self.schemas[route.space])
