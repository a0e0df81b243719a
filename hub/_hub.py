"""`Hub`: the Python API — find modalities and encoders, embed any item."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import torch
from tqdm.auto import tqdm

from ._registry import Registry, default_registry
from .detect import accepts_table, as_path, check_file
from .detect import detect as detect_modality
from .encoder import Encoder, describe_item
from .errors import (
    AmbiguousModalityError,
    HubError,
    InvalidInputError,
    UnknownModalityError,
    WeightsNotFoundError,
)
from .specs import Modality
from .tokens import SkippedItem, TokenEmbeddings

if TYPE_CHECKING:  # pragma: no cover
    from .lm import MultimodalLM

__all__ = ["Hub"]

OnError = Literal["raise", "skip"]

#: Where exports (``runtime="onnx"``) and other derived files are cached; default ``~/.cache/modality-hub``.
ENV_CACHE = "MODALITY_HUB_CACHE"

#: Show a progress bar by default when a call runs at least this many batches.
PROGRESS_MIN_BATCHES = 8


_as_path = as_path  # the name the CLI and older code use


class Hub:
    """Embed any item as tokens through the installed modality plugins.

    >>> h = Hub()
    >>> h.modalities()                        # doctest: +SKIP
    ['image', 'text']
    >>> te = h.embed(["a cat", "a dog"])      # doctest: +SKIP
    >>> te.pooled(normalize=True).shape       # doctest: +SKIP
    torch.Size([2, 384])
    """

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        device: str | torch.device | None = None,
        cache_dir: str | os.PathLike | None = None,
        cache: Any = None,
    ) -> None:
        self.registry = registry or default_registry()
        self.device = torch.device(device) if device is not None else None
        self.cache_dir = Path(cache_dir or os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "modality-hub")
        self._encoders: dict[tuple[str, str], Encoder] = {}
        self._onnx: dict[str, Any] = {}
        #: default for ``embed(cache=...)``: None/False off, True ``cache_dir/embeddings.sqlite``, a path, or an EmbeddingCache
        self.cache = cache

    # -- discovery -----------------------------------------------------------
    def modalities(self) -> list[str]:
        """Installed modality names."""
        return self.registry.list_modalities()

    def encoders(self, pattern: str = "*", modality: str | None = None) -> list[str]:
        """Registered encoder names, filtered by fnmatch ``pattern`` and ``modality``."""
        return self.registry.list_encoders(pattern, modality=modality)

    def plugins(self):
        """Every plugin seen, with what it registered or the error it raised."""
        return self.registry.plugins()

    def encoder(self, name: str | os.PathLike | None = None, *, modality: str | None = None, **options: Any) -> Encoder:
        """The encoder ``name`` (or ``modality``'s default), built once per options and cached.

        ``name`` may also be a directory written by ``align`` (an aligned encoder: the encoder and its
        projector, vectors in the aligned space)."""
        if name is None:
            if modality is None:
                raise UnknownModalityError("encoder() needs an encoder name or modality=")
            name = self.registry.modality(modality).default_encoder
        if self._is_aligned(name):
            return self._aligned(name, modality, options)
        spec = self.registry.encoder_spec(name)
        if modality is not None and spec.modality != modality:
            raise InvalidInputError(
                f"encoder {name!r} encodes {spec.modality!r}, not {modality!r}; "
                f"{modality} encoders: {', '.join(self.encoders(modality=modality)) or 'none'}"
            )
        key = (name, json.dumps(options, sort_keys=True, default=str))
        enc = self._encoders.get(key)
        if enc is None:
            try:
                enc = self.registry.create_encoder(name, **options).eval()
            except WeightsNotFoundError as exc:
                offline = self.registry.list_encoders(modality=spec.modality, pretrained=False)
                if offline:
                    exc.args = (f"{exc} Untrained offline presets for {spec.modality}: {', '.join(offline)}.",)
                raise
            if self.device is not None:
                enc = enc.to(self.device)
            self._encoders[key] = enc
        return enc

    @staticmethod
    def _is_aligned(name: Any) -> bool:
        if isinstance(name, str) and "/" not in name and os.sep not in name:
            return False  # a registered name: no directory lookup, no import of hub.train on this path
        from .train import is_aligned_dir

        return is_aligned_dir(name)

    def _aligned(self, directory: Any, modality: str | None, options: dict[str, Any]) -> Encoder:
        """An aligned directory as an encoder (cached per directory)."""
        from .train import aligned_encoder

        if options:
            raise InvalidInputError(f"an aligned directory ({str(directory)!r}) takes no encoder options; got {sorted(options)}")
        key = (f"aligned:{Path(directory).resolve()}", "{}")
        enc = self._encoders.get(key)
        if enc is None:
            enc = aligned_encoder(directory, registry=self.registry).eval()
            if self.device is not None:
                enc = enc.to(self.device)
            self._encoders[key] = enc
        if modality is not None and enc.modality != modality:
            raise InvalidInputError(f"{str(directory)!r} aligns {enc.modality!r}, not {modality!r}")
        return enc

    def _load_aligned(self, directory: Any) -> Encoder:
        """A fresh aligned encoder from ``directory`` (for plugging: never the hub's cached instance)."""
        from .train import aligned_encoder, is_aligned_dir

        if not is_aligned_dir(directory):
            raise InvalidInputError(f"{str(directory)!r} is not an aligned directory (no align.json); write one with align")
        return aligned_encoder(directory, registry=self.registry)

    def _aligned_onnx(self, aligned: Any, directory: Any, device: str):
        """An aligned directory served by ONNX Runtime: encoder and projector in one graph, exported once."""
        import hashlib

        from . import onnx as hub_onnx

        if directory is None:
            manifest = (Path(aligned) / "align.json").read_bytes()  # a re-written directory gets a new export
            key = hashlib.sha256(str(Path(aligned).resolve()).encode() + manifest).hexdigest()[:12]
            directory = self.cache_dir / "onnx" / f"aligned-{key}"
            if not (Path(directory) / "manifest.json").is_file():
                enc = self._aligned(aligned, None, {})
                tqdm.write(f"exporting {str(aligned)!r} to ONNX in {directory} (first use; checked against PyTorch)")
                hub_onnx.export(enc.modality, directory, bundle=aligned, with_projector=True, registry=self.registry)
        cache_key = f"{Path(directory).resolve()}|{device}"
        if cache_key not in self._onnx:
            self._onnx[cache_key] = hub_onnx.OnnxEncoder(directory, device=device, registry=self.registry)
        return self._onnx[cache_key]

    def encoder_modality(self, encoder: Any) -> str:
        """The modality of encoder ``encoder`` (a registered name or an aligned directory)."""
        if self._is_aligned(encoder):
            return self._aligned(encoder, None, {}).modality
        return self.registry.encoder_spec(encoder).modality

    def onnx_encoder(self, name: str | None = None, *, modality: str | None = None,
                     directory: str | os.PathLike | None = None, device: str = "cpu", pooled: bool = False,
                     dtype: str | None = None, **options: Any):
        """An :class:`hub.onnx.OnnxEncoder` for encoder ``name`` (or ``modality``'s default).

        ``directory`` is an existing export; without it the export (fused, see :mod:`hub.onnx.optimize`;
        ``pooled``: one vector per item; ``dtype``: ``"fp32"``, ``"fp16"`` or ``"int8"``) is cached under
        ``cache_dir/onnx/<encoder>-<hash of options, pooled, dtype>`` and made on first use.
        """
        from . import onnx as hub_onnx

        if name is None:
            if modality is None:
                raise UnknownModalityError("onnx_encoder() needs an encoder name or modality=")
            name = self.registry.modality(modality).default_encoder
        if self._is_aligned(name):
            return self._aligned_onnx(name, directory, device)
        spec = self.registry.encoder_spec(name)
        if directory is None:
            import hashlib

            export = {"options": options, "pooled": bool(pooled), "dtype": dtype or "fp32", "optimize": True}
            key = hashlib.sha256(json.dumps(export, sort_keys=True, default=str).encode()).hexdigest()[:12]
            directory = self.cache_dir / "onnx" / f"{spec.name}-{key}"
            if not (Path(directory) / "manifest.json").is_file():
                tqdm.write(f"exporting {spec.name} to ONNX in {directory} (first use; checked against PyTorch)")
                hub_onnx.export(spec.modality, directory, encoder=name, options=options, registry=self.registry, hub=self,
                                pooled=bool(pooled), dtype=dtype or "fp32")
        key = f"{Path(directory).resolve()}|{device}"
        if key not in self._onnx:
            self._onnx[key] = hub_onnx.OnnxEncoder(directory, device=device, registry=self.registry, hub=self)
        enc = self._onnx[key]
        if enc.manifest.encoder != spec.name or enc.modality != spec.modality:
            raise InvalidInputError(
                f"{str(directory)!r} holds an export of {enc.manifest.encoder!r} ({enc.modality}), not {spec.name!r}"
            )
        if dtype is not None and enc.manifest.dtype != dtype:
            raise InvalidInputError(f"{str(directory)!r} holds a {enc.manifest.dtype} export, not {dtype}")
        if options and {**enc.manifest.encoder_options, **options} != enc.manifest.encoder_options:
            raise InvalidInputError(
                f"{str(directory)!r} was exported with options {enc.manifest.encoder_options}, not {options}"
            )
        return enc

    # -- detection -----------------------------------------------------------
    def detect(self, item: Any) -> str:
        """The modality of ``item``: files by suffix, other items by each modality's ``detect``
        (a memoryview as the bytes it views)."""
        return detect_modality(self.registry, bytes(item) if isinstance(item, memoryview) else item)

    @staticmethod
    def _check_file(path: Path, item: Any) -> None:
        check_file(path, item)

    @staticmethod
    def _accepts_table(mods: list[Modality]) -> str:
        return accepts_table(mods)

    # -- embedding -----------------------------------------------------------
    def embed(
        self,
        items: Any,
        modality: str | None = None,
        encoder: str | None = None,
        *,
        batch_size: int = 32,
        progress: bool | None = None,
        on_error: OnError = "raise",
        options: dict[str, Any] | None = None,
        runtime: Literal["torch", "onnx"] = "torch",
        onnx_dir: str | os.PathLike | None = None,
        onnx_device: str = "cpu",
        cache: Any = None,
        pooled: bool = False,
        onnx_dtype: str | None = None,
    ) -> TokenEmbeddings:
        """Embed items as tokens.

        ``items`` is a list (a batch) or a single item (a batch of one); a
        tuple is one item (e.g. ``(waveform, sample_rate)``).  The modality is
        detected per item unless given; items of one call share a modality.
        Items are length-bucketed into batches of ``batch_size``; rows come
        back in input order.  ``on_error="skip"`` drops bad items, reports
        them in ``.errors`` (index and reason) and keeps the rest; ``.indices``
        maps rows to input positions.

        ``runtime="onnx"`` runs the encoder's graph in ONNX Runtime: from
        ``onnx_dir`` (an export of this encoder), or from the hub's cache,
        exporting it there (with its parity check) on first use; ``onnx_dtype="int8"`` (or ``"fp16"``)
        exports a quantized graph.  ``pooled=True`` returns one token per item, the pooled vector
        (``.pooled()`` gives the vectors); with ``runtime="onnx"`` the pooling runs inside the graph
        (a pooled export), the fast way to sentence vectors.

        ``cache`` (default: the hub's ``Hub(cache=...)``): ``True`` for ``cache_dir/embeddings.sqlite``,
        a path, an :class:`hub.cache.EmbeddingCache`, or ``False``.  Prepared items found there are not
        run again; the rest run as usual and are stored (see :mod:`hub.cache`).
        """
        if runtime not in ("torch", "onnx"):
            raise InvalidInputError(f"runtime must be 'torch' or 'onnx', got {runtime!r}")
        if on_error not in ("raise", "skip"):
            raise InvalidInputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive int, got {batch_size!r}")
        batch = list(items) if isinstance(items, list) else [items]
        if not batch:
            raise InvalidInputError("embed() got an empty list; pass at least one item")
        batch = [p if (p := _as_path(x)) is not None and isinstance(x, str) else x for x in batch]
        errors: list[SkippedItem] = []

        def fail(i: int, exc: Exception) -> None:
            if on_error == "raise":
                raise exc from None
            errors.append(SkippedItem(i, describe_item(batch[i]), str(exc)))

        # 1. which modality / encoder
        if encoder is not None:
            modality = modality or self.encoder_modality(encoder)
        alive = []
        for i, x in enumerate(batch):
            try:
                if isinstance(x, os.PathLike):
                    self._check_file(Path(x), x)
                alive.append(i)
            except HubError as exc:
                fail(i, type(exc)(f"item {i}: {exc}"))
        if modality is None:
            found: dict[int, str] = {}
            for i in alive:
                try:
                    found[i] = self.detect(batch[i])
                except HubError as exc:
                    fail(i, type(exc)(f"item {i}: {exc}"))
            kinds = sorted(set(found.values()))
            if len(kinds) > 1:
                groups = "; ".join(f"{k}: items {[i for i, m in found.items() if m == k]}" for k in kinds)
                raise InvalidInputError(f"one embed() call takes one modality; these items mix them ({groups}). "
                                        "Embed each modality separately, or pass modality=...")
            alive = sorted(found)
            modality = kinds[0] if kinds else None
        if modality is None:
            enc = None
        elif runtime == "onnx":
            enc = self.onnx_encoder(encoder, modality=modality, directory=onnx_dir, device=onnx_device,
                                    pooled=pooled and onnx_dir is None, dtype=onnx_dtype, **(options or {}))
        else:
            enc = self.encoder(encoder, modality=modality, **(options or {}))
        if enc is None:  # every item failed detection
            return self._empty(errors)
        from ._untrained import warn_untrained

        warn_untrained(enc, self.registry)  # once per untrained preset per process, naming trained alternatives

        # 2. per-item preprocessing, errors tied to the item (with a cache: not of items it holds in this raw form)
        from .cache import CachedCall, resolve_cache

        store = resolve_cache(cache, self)
        call = None if store is None else CachedCall(store, enc, options=options)
        prepared: dict[int, Any] = {}
        for i in alive if call is None else call.serve_raw({i: batch[i] for i in alive}):
            try:
                # a memoryview (e.g. of a dataset's Arrow buffer) reaches the plugin as the bytes it expects,
                # copied one item at a time, so the copy is freed as soon as that item is prepared
                item = bytes(batch[i]) if isinstance(batch[i], memoryview) else batch[i]
                prepared[i] = enc.prepare(item, i)
            except HubError as exc:
                fail(i, exc)
            except Exception as exc:  # noqa: BLE001 - a plugin bug still names the item
                err = InvalidInputError(f"item {i} ({describe_item(batch[i])}): {enc.name} could not read it: "
                                        f"{type(exc).__name__}: {exc}", index=i)
                if on_error == "raise":
                    raise err from exc
                errors.append(SkippedItem(i, describe_item(batch[i]), str(err)))
        if not prepared and (call is None or not call.rows):
            return self._empty(errors, enc)

        # 3. length-bucketed batches, then back to input order (with a cache: only the items it misses)
        def run(todo: list[int]) -> TokenEmbeddings:
            order = sorted(todo, key=lambda i: enc.length(prepared[i]))
            chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
            show = progress if progress is not None else len(chunks) >= PROGRESS_MIN_BATCHES
            parts = []
            device = enc.device
            with torch.inference_mode():
                for chunk in tqdm(chunks, desc=f"embed {modality} ({enc.name})", unit="batch", disable=not show):
                    tensors = {k: v.to(device) for k, v in enc.collate([prepared[i] for i in chunk]).items()}
                    te = enc(**tensors)
                    te.indices = list(chunk)
                    parts.append(te)
            out = TokenEmbeddings.cat(parts)
            return out.select(sorted(range(len(out.indices)), key=lambda r: out.indices[r]))

        out = run(list(prepared)) if call is None else call.embed(prepared, run)
        if pooled and not getattr(getattr(enc, "manifest", None), "pooled", False):  # one token per item: the vector
            out = TokenEmbeddings(out.pooled().unsqueeze(1), torch.ones(len(out), 1, dtype=torch.bool, device=out.mask.device),
                                  out.modality, out.space, out.pooling, out.indices)
        out.errors = sorted(errors, key=lambda e: e.index)
        return out

    def _empty(self, errors: list[SkippedItem], enc: Encoder | None = None) -> TokenEmbeddings:
        msg = "; ".join(str(e) for e in errors[:5])
        if enc is None:
            raise InvalidInputError(f"no item could be embedded: {msg}")
        te = TokenEmbeddings.from_list([], modality=enc.modality, space=enc.space, pooling=enc.pooling, dim=enc.dim)
        te.errors = sorted(errors, key=lambda e: e.index)
        return te

    # -- augmentations ---------------------------------------------------------------
    def augmentations(self, modality: str | None = None) -> list[str]:
        """Registered augmentations, as ``"<modality>/<name>"``."""
        return self.registry.list_augmentations(modality)

    def augment(self, item: Any, name: str | Sequence[str], modality: str | None = None, *, seed: int | None = None,
                rng: Any = None, **params: Any) -> Any:
        """Apply one augmentation (or several in order) to ``item``; seeded, same modality out.

        ``params`` go to a single augmentation and are validated by its pydantic model.
        """
        from .augment import augment

        return augment(self.registry, item, name, modality or self.detect(item), seed=seed, rng=rng, **params)

    # -- learning --------------------------------------------------------------------
    def pretrain(self, modality: str, items: Sequence[Any], **kwargs: Any):
        """Self-supervised pretraining (contrastive or masked) of an encoder; see :func:`hub.train.pretrain`."""
        from .train import pretrain

        return pretrain(modality, items, registry=self.registry, **kwargs)

    def align(self, modality: str, pairs: Sequence[tuple[Any, str]], **kwargs: Any):
        """Align a modality to an anchor space (infonce) or a backbone (caption); see :func:`hub.train.align`."""
        from .train import align

        return align(modality, pairs, registry=self.registry, **kwargs)

    # -- backbones -------------------------------------------------------------------
    def backbones(self) -> list[str]:
        """Installed backbone adapters."""
        return self.registry.list_backbones()

    def attach(self, source: str, adapter: str | None = None, **options: Any) -> "MultimodalLM":
        """Load an LLM backbone (hub id, directory or preset) through its adapter, ready to plug modalities into."""
        from .lm import attach

        return attach(self.registry, source, adapter, encoder_loader=self._load_aligned, **options)

    def load(self, directory: str | os.PathLike, *, backbone: str | None = None,
             backbone_options: dict[str, Any] | None = None) -> "MultimodalLM":
        """Load a multimodal LM bundle saved with ``MultimodalLM.save`` (untrusted input: checked first).

        ``backbone`` / ``backbone_options``: your own backbone source and options instead of the bundle's
        (needed when it references a local directory outside itself); yours win over the file's."""
        from .lm import MultimodalLM

        return MultimodalLM.load(directory, registry=self.registry, encoder_loader=self._load_aligned,
                                 backbone=backbone, backbone_options=backbone_options)

    def from_transformers(self, path: str | os.PathLike, adapter: str = "transformers") -> "MultimodalLM":
        """Import a composite transformers checkpoint (LLaVA, Qwen2-Audio) as encoder + projector + backbone."""
        spec = self.registry.backbone_spec(adapter)
        if spec.importer is None:
            raise InvalidInputError(f"backbone adapter {adapter!r} imports no composite checkpoints")
        return spec.importer(str(path), registry=self.registry)

    def count_tokens(self, items: Sequence[Any] | Any, modality: str | None = None, encoder: str | None = None) -> list[int]:
        """Tokens each item will yield, without running the encoder's forward."""
        batch = list(items) if isinstance(items, list) else [items]
        modality = modality or (self.encoder_modality(encoder) if encoder else self.detect(batch[0]))
        enc = self.encoder(encoder, modality=modality)
        return [enc.num_tokens(enc.prepare(x, i)) for i, x in enumerate(batch)]


