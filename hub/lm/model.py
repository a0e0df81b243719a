"""`MultimodalLM`: plug modality encoders into an LLM backbone at inference, and unplug them.

Encoder → projector → the backbone's token-embedding space, interleaved with
text (LLaVA-style).  The backbone is never reloaded or modified: plugging adds
an encoder and a projector beside it, unplugging drops them again.

A *prompt* is either a list of parts (``str`` parts are text, anything else is
an item of a plugged modality) or a template string in which each item stands
for one placeholder (``"<image> What is in <audio>?"``, items given as
``images=[...]``, ``audio=[...]``).  Before anything runs, the composer
(:mod:`hub.lm.compose`) counts every item's tokens and refuses prompts whose
placeholders and items disagree, that use a modality that is not plugged, or
that would not fit the backbone's context window.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .._registry import Registry, default_registry
from ..backbone import Backbone
from ..encoder import Encoder
from ..errors import BundleError, ContextLengthError, HubError, InvalidInputError, ModalityNotPluggedError, PromptError
from .bundle import BUNDLE_FORMAT, MANIFEST, BackboneRef, BundleManifest, PluggedRef
from .compose import Composer, Composition, PluggedModality
from .projectors import Projector, build_projector

__all__ = ["MultimodalLM", "attach", "GENERATION_OPTIONS"]

#: keywords ``generate`` passes on to the backbone (transformers' generation options); others are refused
GENERATION_OPTIONS = frozenset({
    "do_sample", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "no_repeat_ngram_size",
    "num_beams", "length_penalty", "min_new_tokens", "stop_strings", "eos_token_id", "bad_words_ids",
})


def _release_memory(device: torch.device) -> None:
    """Collect the dropped modules and hand freed memory back (CUDA cache; glibc heap on Linux)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl): the allocator keeps its pages
            pass


def attach(registry: Registry, source: str, adapter: str | None = None, *,
           encoder_loader: Callable[[Any], Encoder] | None = None, **options: Any) -> "MultimodalLM":
    """Load an LLM backbone (hub id, directory or preset) through ``adapter`` (or the first installed adapter
    that detects ``source``), ready to plug modalities into."""
    source = str(source)
    if adapter is not None:
        spec = registry.backbone_spec(adapter)
    else:
        specs = [registry.backbone_spec(n) for n in registry.list_backbones()]
        fits = [s for s in specs if s.detect is None or s.detect(source)]
        if not fits:
            raise InvalidInputError(
                f"no installed backbone adapter can load {source!r}; adapters: "
                f"{', '.join(s.name for s in specs) or 'none (pip install modality-hub-transformers)'}"
            )
        spec = fits[0]
    backbone = spec.factory(source, **options)
    return MultimodalLM(backbone, registry, backbone_ref=BackboneRef(adapter=spec.name, source=source, options=options),
                        encoder_loader=encoder_loader)


class MultimodalLM(Composer, torch.nn.Module):
    """An LLM backbone with modality encoders plugged in through projectors.

    >>> lm = Hub().attach("tiny-llama")                          # doctest: +SKIP
    >>> lm.plug("image", encoder="tiny-clip", projector="mlp")   # doctest: +SKIP
    >>> lm.generate(["Describe", img], max_new_tokens=8)         # doctest: +SKIP

    It is a ``torch.nn.Module``: the backbone and every plugged encoder and projector are
    submodules (``lm.modalities[name].encoder`` / ``.projector``), so ``.to()``, ``.train()`` /
    ``.eval()``, ``parameters()`` and ``state_dict()`` behave as PyTorch users expect.

    Items go with a prompt as keywords named after their modality (``image=``, ``images=``,
    ``image_items=``) or in one ``items={"3d": [...], "image": [...]}`` mapping, the spelling
    every modality has (``3d`` is no Python keyword).  An unknown keyword is a
    :class:`PromptError` naming the accepted ones; :data:`GENERATION_OPTIONS` lists what
    ``generate`` passes on to the backbone.
    """

    def __init__(self, backbone: Backbone, registry: Registry | None = None, *,
                 backbone_ref: BackboneRef | None = None, encoder_loader: Callable[[Any], Encoder] | None = None) -> None:
        torch.nn.Module.__init__(self)
        #: builds an encoder from a directory (an aligned encoder written by ``align``); given by the Hub
        self.encoder_loader = encoder_loader
        self.backbone = backbone.eval()
        #: the plugged modules, by modality: ``{"encoder": ..., "projector": ...}``
        self.modalities = torch.nn.ModuleDict()
        self.registry = getattr(registry, "registry", registry) or default_registry()  # a Hub works too
        self._plugged: dict[str, PluggedModality] = {}
        self._backbone_ref = backbone_ref

    # -- plug / unplug ---------------------------------------------------------------
    def plug(
        self,
        modality: str,
        encoder: str | os.PathLike | Encoder | None = None,
        projector: str | os.PathLike | Projector = "mlp",
        *,
        placeholder: str | None = None,
        start: str | None = None,
        end: str | None = None,
        encoder_options: dict[str, Any] | None = None,
        projector_options: dict[str, Any] | None = None,
    ) -> "MultimodalLM":
        """Plug ``modality`` in: an encoder (name or instance) and a projector
        (a kind — ``linear``, ``mlp``, ``resampler``, ``pool`` — a saved
        projector directory, or an instance).  Replaces an earlier plug of the
        same modality.  The backbone is not touched.  ``encoder`` may also be a directory written by
        ``align`` (an aligned encoder) when this model has an ``encoder_loader`` (``Hub.attach`` /
        ``Hub.load`` give it one)."""
        self.registry.modality(modality)  # a typed error if no plugin provides it
        encoder_options = dict(encoder_options or {})
        if isinstance(encoder, Encoder):
            enc, enc_name = encoder, None  # an instance may hold any weights: a bundle saves them
        elif isinstance(encoder, os.PathLike) or (isinstance(encoder, str) and Path(encoder).is_dir()
                                                    and encoder not in self.registry.list_encoders()):
            if self.encoder_loader is None:
                raise InvalidInputError(
                    f"encoder {str(encoder)!r} is a directory; this MultimodalLM has no encoder_loader to read it. "
                    "Attach the backbone with Hub.attach (or pass encoder_loader=), or pass an Encoder instance"
                )
            enc, enc_name = self.encoder_loader(encoder), None
        else:
            enc_name = encoder or self.registry.modality(modality).default_encoder
            enc = self.registry.create_encoder(enc_name, **encoder_options)
        if enc.modality != modality:
            raise InvalidInputError(
                f"encoder {enc.name!r} encodes {enc.modality!r}, not {modality!r}; "
                f"{modality} encoders: {', '.join(self.registry.list_encoders(modality=modality))}"
            )
        proj = self._projector(projector, enc, projector_options or {})
        if placeholder is None:
            placeholder = f"<{modality}>"
        if not placeholder or placeholder in (p.placeholder for m, p in self._plugged.items() if m != modality):
            raise InvalidInputError(f"placeholder {placeholder!r} is empty or already used by another modality")
        device, dtype = self._device_dtype()
        enc = enc.eval().to(device)
        proj = proj.to(device=device)
        self._plugged[modality] = PluggedModality(
            modality, enc, proj, placeholder, start, end, enc_name, encoder_options,
            self.backbone.tokenize(start) if start else [], self.backbone.tokenize(end) if end else [],
        )
        self.modalities[modality] = torch.nn.ModuleDict({"encoder": enc, "projector": proj})
        return self

    def _projector(self, projector: Any, enc: Encoder, options: dict[str, Any]) -> Projector:
        hidden = int(self.backbone.hidden_size)
        if isinstance(projector, Projector):
            proj = projector
        elif isinstance(projector, str) and projector in self.registry.list_projectors():
            proj = build_projector(projector, enc.dim, hidden, registry=self.registry, **options)
        elif isinstance(projector, (str, os.PathLike)) and Path(projector).is_dir():
            proj = Projector.load(projector, registry=self.registry)
        else:
            raise InvalidInputError(
                f"projector {projector!r} is neither a kind ({', '.join(self.registry.list_projectors())}), "
                "a saved projector directory, nor a Projector"
            )
        cfg = proj.config
        if cfg.in_dim != enc.dim or cfg.out_dim != hidden:
            raise InvalidInputError(
                f"projector maps {cfg.in_dim} → {cfg.out_dim}, but encoder {enc.name!r} gives dim {enc.dim} "
                f"and the backbone's hidden size is {hidden}"
            )
        return proj.eval()

    def unplug(self, modality: str) -> None:
        """Drop a modality's encoder and projector and free their memory."""
        if modality not in self._plugged:
            raise ModalityNotPluggedError(self._not_plugged(modality))
        entry = self._plugged.pop(modality)
        del self.modalities[modality]
        device = entry.encoder.device
        del entry
        _release_memory(device)

    @property
    def plugged(self) -> dict[str, dict[str, Any]]:
        """What is plugged: encoder, projector kind, placeholder, parameter counts, and the
        tokens the modality's sample item yields (``tokens_per_sample``; fixed-size encoders
        such as vision towers give that count for every item)."""
        out = {}
        for m, p in self._plugged.items():
            info = p.info()
            sample = self.registry.modality(m).sample
            try:
                info["tokens_per_sample"] = p.tokens(p.encoder.prepare(sample(), 0)) if sample else None
            except HubError:
                info["tokens_per_sample"] = None
            out[m] = info
        return out

    # -- running ---------------------------------------------------------------------
    def forward(self, prompt: Any, items: dict[str, Any] | None = None, **item_keywords: Any) -> torch.Tensor:
        """Logits ``(1, seq, vocab)`` of one prompt (float32)."""
        return self.forward_batch([prompt], items, **item_keywords)

    def forward_batch(self, prompts: Sequence[Any], items: dict[str, Any] | None = None,
                      **item_keywords: Any) -> torch.Tensor:
        """Logits ``(batch, seq, vocab)`` of left-padded prompts; padding rows are meaningless."""
        comp = self.compose(prompts, **self._items(items, item_keywords, generation=False))
        with torch.inference_mode():
            return self.backbone(comp.inputs_embeds, comp.attention_mask, comp.position_ids).float()

    def generate(self, prompt: Any, max_new_tokens: int = 32, items: dict[str, Any] | None = None,
                 **kwargs: Any) -> str:
        """Generated text for one prompt (greedy unless generation options say otherwise)."""
        return self.generate_batch([prompt], max_new_tokens=max_new_tokens, items=items, **kwargs)[0]

    def generate_batch(self, prompts: Sequence[Any], max_new_tokens: int = 32, items: dict[str, Any] | None = None,
                       **kwargs: Any) -> list[str]:
        """Generated text for each prompt of a left-padded batch, with KV cache.  Keywords are items (by
        modality) or :data:`GENERATION_OPTIONS`; anything else is a :class:`PromptError`."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in GENERATION_OPTIONS}
        comp = self.compose(prompts, **self._items(items, kwargs, generation=True))
        room = int(self.backbone.max_context) - comp.inputs_embeds.shape[1]
        if room < max_new_tokens:
            raise ContextLengthError(
                f"prompts of {comp.inputs_embeds.shape[1]} tokens leave room for {max(room, 0)} new tokens in the "
                f"backbone's context window of {self.backbone.max_context}; asked for {max_new_tokens}"
            )
        with torch.inference_mode():
            new = self.backbone.generate(comp.inputs_embeds, comp.attention_mask, max_new_tokens, **options)
        return [self.backbone.decode(ids) for ids in new]

    def _items(self, items: dict[str, Any] | None, keywords: dict[str, Any], *, generation: bool) -> dict[str, Any]:
        """The ``items=`` mapping and item keywords as one dict; an unknown keyword is a :class:`PromptError`."""
        if items is not None and not isinstance(items, dict):
            raise PromptError(f"items= takes a dict of modality name → items, e.g. {{'3d': [cloud]}}; got "
                              f"{type(items).__name__}")
        merged = dict(items or {})
        for key, value in keywords.items():
            if not self._is_item_key(key):
                names = sorted(set(self.registry.list_modalities()) | set(self._plugged))
                accepted = ", ".join(f"{m}= / {m}s=" if m.isidentifier() else f"items={{{m!r}: ...}}" for m in names)
                extra = f"; generation options: {', '.join(sorted(GENERATION_OPTIONS))}" if generation else ""
                raise PromptError(f"unknown keyword {key!r}: items go by modality ({accepted}){extra}")
            if key in merged:
                raise PromptError(f"items for {key!r} given twice (as a keyword and in items=)")
            merged[key] = value
        for key in merged:
            self._modality_of_key(key)  # a typed error for an unknown modality in items=
        return merged

    def _is_item_key(self, key: str) -> bool:
        try:
            self._modality_of_key(key)
            return True
        except PromptError:
            return False

    # -- bundles ---------------------------------------------------------------------
    def save(self, directory: str | os.PathLike, *, include_backbone: bool | None = None) -> Path:
        """Write a bundle: ``manifest.json`` + safetensors (projectors, encoders and backbone when needed).

        The backbone is referenced by its source (hub id, directory or preset)
        unless it has none or ``include_backbone=True``; encoders are referenced
        by registry name and options, and their weights are saved when they
        were not built from the registry (e.g. imported from a checkpoint).
        Written atomically: staged in ``<directory>.tmp-*`` beside it, then swapped in, so a
        kill leaves the previous bundle or the new one; the manifest (format 2) records the
        sha256 of every file.  Permissions and devices are never recorded.
        """
        from .._atomic import atomic_dir
        from .._manifest import hash_files
        from .bundle import saved_options

        ref = self._backbone_ref
        with atomic_dir(directory, marker=MANIFEST, what="a bundle") as stage:
            if include_backbone or ref is None or ref.saved:  # a loaded self-contained bundle stays self-contained
                if not hasattr(self.backbone, "save_pretrained"):
                    raise BundleError("the backbone has no source to reference and cannot save_pretrained()")
                adapter = ref.adapter if ref else getattr(self.backbone, "adapter", None)
                if adapter is None:
                    raise BundleError("the backbone names no adapter to reload it with (Backbone.adapter); "
                                      "attach it through Hub.attach so the bundle can reference it")
                self.backbone.save_pretrained(str(stage / "backbone"))
                ref = BackboneRef(adapter=adapter, source="backbone", saved=True)
            else:
                ref = ref.model_copy(update={"options": saved_options(ref.options)})
            modalities = {}
            for m, plug in self._plugged.items():
                proj_dir = f"projectors/{m}"
                plug.projector.save(stage / proj_dir)
                enc_dir, enc_name, enc_options = None, plug.encoder_name, plug.encoder_options
                if enc_name is None or getattr(plug.encoder, "_save_in_bundle", False):
                    reload_as = plug.encoder.reload_as or plug.encoder.name
                    if not hasattr(plug.encoder, "save_pretrained") or reload_as not in self.registry.list_encoders():
                        raise BundleError(
                            f"the {m} encoder ({plug.encoder.name!r}) was not built from the registry by name and has "
                            "no registered encoder that reloads its save_pretrained() output (Encoder.reload_as)"
                        )
                    enc_dir, enc_name, enc_options = f"encoders/{m}", reload_as, plug.encoder.reload_options()
                    plug.encoder.save_pretrained(str(stage / enc_dir))
                modalities[m] = PluggedRef(
                    encoder=enc_name, encoder_options=saved_options(dict(enc_options)), encoder_dir=enc_dir,
                    projector_dir=proj_dir, placeholder=plug.placeholder, start=plug.start, end=plug.end,
                )
            manifest = BundleManifest(backbone=ref, modalities=modalities, files=hash_files(stage))
            (stage / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")  # last: marks the stage complete
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, registry: Registry | None = None, *,
             hub: Any = None, backbone: str | None = None, backbone_options: dict[str, Any] | None = None,
             encoder_loader: Callable[[Any], Encoder] | None = None) -> "MultimodalLM":
        """Load a bundle written by :meth:`save` (``hub=``: a Hub whose registry to use, as before).

        The bundle is untrusted input: it is checked before anything is built
        (:func:`hub.lm.bundle.load_bundle_manifest`: hashes, paths inside the bundle, options that can
        only narrow permissions; saved encoder and backbone directories through
        :func:`hub._manifest.check_pretrained_dir`).  ``backbone=``: a source to use instead of the
        bundle's (required when the bundle references a local directory outside itself).
        ``backbone_options``: the caller's options for the backbone adapter; they win over the bundle's
        (e.g. ``{"allow_download": True}``, ``{"dtype": "bfloat16"}``): an explicit argument beats the file.
        """
        from .._manifest import check_pretrained_dir, inside
        from .bundle import load_bundle_manifest

        registry = registry or getattr(hub, "registry", None) or default_registry()
        root = Path(directory)
        manifest = load_bundle_manifest(root, backbone=backbone)
        hashes = manifest.files if manifest.format >= 2 else None
        where = str(root / MANIFEST)
        ref = manifest.backbone
        if backbone is not None:
            source = str(backbone)
        elif ref.saved:
            saved = inside(root, ref.source, f"{where}: backbone.source")
            check_pretrained_dir(saved, root, f"bundle {str(root)!r}: the saved backbone", hashes)
            source = str(saved)
        else:
            source = ref.source
        lm = attach(registry, source, adapter=ref.adapter, encoder_loader=encoder_loader,
                    **{**ref.options, **dict(backbone_options or {})})
        lm._backbone_ref = ref if ref.saved and backbone is None else ref.model_copy(update={"source": source, "saved": False})
        for m, plug in manifest.modalities.items():
            options = dict(plug.encoder_options)
            if plug.encoder_dir:
                enc_path = inside(root, plug.encoder_dir, f"{where}: modalities.{m}.encoder_dir")
                check_pretrained_dir(enc_path, root, f"bundle {str(root)!r}: the {m} encoder", hashes)
                options["weights"] = str(enc_path)
            encoder = registry.create_encoder(plug.encoder, **options)
            proj_path = inside(root, plug.projector_dir, f"{where}: modalities.{m}.projector_dir")
            check_pretrained_dir(proj_path, root, f"bundle {str(root)!r}: the {m} projector", hashes)
            lm.plug(m, encoder=encoder, projector=proj_path,
                    placeholder=plug.placeholder, start=plug.start, end=plug.end)
            lm._plugged[m].encoder_name = plug.encoder
            lm._plugged[m].encoder_options = dict(plug.encoder_options)
            if plug.encoder_dir:
                lm._plugged[m].encoder._save_in_bundle = True
        return lm
