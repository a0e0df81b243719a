"""`MultimodalLM`: plug modality encoders into an LLM backbone at inference, and unplug them.

Encoder → projector → the backbone's token-embedding space, interleaved with
text (LLaVA-style).  The backbone is never reloaded or modified: plugging adds
an encoder and a projector beside it, unplugging drops them again.

A *prompt* is either a list of parts (``str`` parts are text, anything else is
an item of a plugged modality) or a template string in which each item stands
for one placeholder (``"<image> What is in <audio>?"``, items given as
``images=[...]``, ``audio=[...]``).  Before anything runs, the composer counts
every item's tokens (``encoder.num_tokens`` → ``projector.num_tokens``) and
refuses prompts whose placeholders and items disagree, that use a modality that
is not plugged, or that would not fit the backbone's context window.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from .backbone import Backbone
from .encoder import Encoder, describe_item
from .errors import (
    BundleError,
    ContextLengthError,
    HubError,
    InvalidInputError,
    ModalityNotPluggedError,
    PromptError,
)
from .projectors import PROJECTOR_KINDS, Projector, build_projector

if TYPE_CHECKING:  # pragma: no cover
    from ._hub import Hub

__all__ = ["MultimodalLM", "Composition", "PluggedModality", "BundleManifest"]

MANIFEST = "manifest.json"
BUNDLE_FORMAT = 1


@dataclass
class PluggedModality:
    """One plugged modality: its encoder, projector and prompt markers."""

    modality: str
    encoder: Encoder
    projector: Projector
    placeholder: str
    start: str | None = None
    end: str | None = None
    encoder_name: str | None = None
    encoder_options: dict[str, Any] = field(default_factory=dict)
    start_ids: list[int] = field(default_factory=list)
    end_ids: list[int] = field(default_factory=list)

    def tokens(self, prepared: Any) -> int:
        """Embeddings one prepared item contributes (boundary tokens excluded)."""
        return int(self.projector.num_tokens(self.encoder.num_tokens(prepared)))

    def info(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder_name or self.encoder.name,
            "encoder_params": sum(p.numel() for p in self.encoder.parameters()),
            "projector": self.projector.kind,
            "projector_params": sum(p.numel() for p in self.projector.parameters()),
            "placeholder": self.placeholder,
            "start": self.start,
            "end": self.end,
        }


@dataclass
class Composition:
    """A batch of composed prompts, left-padded, ready for the backbone.

    ``input_ids`` holds text ids, ``-1`` at modality positions and the pad id
    on padding; ``spans[b]`` lists ``(modality, start, end)`` of each item's
    embeddings in row ``b``.
    """

    inputs_embeds: torch.Tensor  # (batch, seq, hidden)
    attention_mask: torch.Tensor  # (batch, seq) long
    position_ids: torch.Tensor  # (batch, seq)
    input_ids: torch.Tensor  # (batch, seq)
    spans: list[list[tuple[str, int, int]]]
    lengths: list[int]


# -- bundle manifest ----------------------------------------------------------------


class BackboneRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter: str
    source: str = Field(description="hub id, preset name, or a directory relative to the bundle")
    options: dict[str, Any] = {}
    saved: bool = Field(False, description="the backbone's weights are inside the bundle at `source`")


class PluggedRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    encoder: str
    encoder_options: dict[str, Any] = {}
    encoder_dir: str | None = Field(None, description="encoder weights saved in the bundle (loaded as weights=...)")
    projector_dir: str
    placeholder: str
    start: str | None = None
    end: str | None = None


class BundleManifest(BaseModel):
    """``manifest.json`` of a saved multimodal LM bundle."""

    model_config = ConfigDict(extra="forbid")

    format: int = BUNDLE_FORMAT
    kind: str = "multimodal-lm"
    backbone: BackboneRef
    modalities: dict[str, PluggedRef] = {}


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


# -- the composer ---------------------------------------------------------------------


class MultimodalLM:
    """An LLM backbone with modality encoders plugged in through projectors.

    >>> lm = Hub().attach("tiny-llama")                          # doctest: +SKIP
    >>> lm.plug("image", encoder="tiny-clip", projector="mlp")   # doctest: +SKIP
    >>> lm.generate(["Describe", img], max_new_tokens=8)         # doctest: +SKIP
    """

    def __init__(self, backbone: Backbone, hub: "Hub | None" = None, *, backbone_ref: BackboneRef | None = None) -> None:
        from ._hub import Hub

        self.backbone = backbone.eval()
        self.hub = hub or Hub()
        self._plugged: dict[str, PluggedModality] = {}
        self._backbone_ref = backbone_ref

    # -- plug / unplug ---------------------------------------------------------------
    def plug(
        self,
        modality: str,
        encoder: str | Encoder | None = None,
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
        same modality.  The backbone is not touched."""
        self.hub.registry.modality(modality)  # a typed error if no plugin provides it
        encoder_options = dict(encoder_options or {})
        if isinstance(encoder, Encoder):
            enc, enc_name = encoder, None  # an instance may hold any weights: a bundle saves them
        else:
            enc_name = encoder or self.hub.registry.modality(modality).default_encoder
            enc = self.hub.registry.create_encoder(enc_name, **encoder_options)
        if enc.modality != modality:
            raise InvalidInputError(
                f"encoder {enc.name!r} encodes {enc.modality!r}, not {modality!r}; "
                f"{modality} encoders: {', '.join(self.hub.encoders(modality=modality))}"
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
        return self

    def _projector(self, projector: Any, enc: Encoder, options: dict[str, Any]) -> Projector:
        hidden = int(self.backbone.hidden_size)
        if isinstance(projector, Projector):
            proj = projector
        elif isinstance(projector, str) and projector in PROJECTOR_KINDS:
            proj = build_projector(projector, enc.dim, hidden, **options)
        elif isinstance(projector, (str, os.PathLike)) and Path(projector).is_dir():
            proj = Projector.load(projector)
        else:
            raise InvalidInputError(
                f"projector {projector!r} is neither a kind ({', '.join(PROJECTOR_KINDS)}), "
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
            sample = self.hub.registry.modality(m).sample
            try:
                info["tokens_per_sample"] = p.tokens(p.encoder.prepare(sample(), 0)) if sample else None
            except HubError:
                info["tokens_per_sample"] = None
            out[m] = info
        return out

    def _not_plugged(self, modality: str) -> str:
        have = ", ".join(f"{m} ({p.placeholder})" for m, p in self._plugged.items()) or "nothing"
        return f"modality {modality!r} is not plugged; plugged: {have}. Use lm.plug({modality!r}, ...)"

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        p = next(iter(self.backbone.parameters()))
        return p.device, p.dtype

    # -- composing -------------------------------------------------------------------
    def _placeholder_regex(self) -> re.Pattern[str] | None:
        """Alternation of every known placeholder; ``None`` when there is none (text only)."""
        marks = {p.placeholder: m for m, p in self._plugged.items()}
        for m in self.hub.modalities():  # default placeholders of unplugged modalities are recognised too
            marks.setdefault(f"<{m}>", m)
        self._marks = marks
        if not marks:
            return None
        return re.compile("|".join(re.escape(k) for k in sorted(marks, key=len, reverse=True)))

    def _parts(self, prompt: Any, index: int, pools: dict[str, list[Any]]) -> list[tuple[str, Any]]:
        """A prompt → [("text", str) | (modality, item)]."""
        if isinstance(prompt, str):
            rx = self._placeholder_regex()
            parts: list[tuple[str, Any]] = []
            pos = 0
            for match in rx.finditer(prompt) if rx is not None else ():
                if match.start() > pos:
                    parts.append(("text", prompt[pos : match.start()]))
                modality = self._marks[match.group(0)]
                if modality not in self._plugged:
                    raise ModalityNotPluggedError(f"prompt {index}: placeholder {match.group(0)!r}: " + self._not_plugged(modality))
                pool = pools.get(modality, [])
                if not pool:
                    raise PromptError(self._count_message(index, prompt, pools))
                parts.append((modality, pool.pop(0)))
                pos = match.end()
            if pos < len(prompt):
                parts.append(("text", prompt[pos:]))
            return parts
        if isinstance(prompt, (list, tuple)):
            parts = []
            for j, part in enumerate(prompt):
                if isinstance(part, str):
                    parts.append(("text", part))
                    continue
                try:
                    modality = self.hub.detect(part)
                except HubError as exc:
                    raise PromptError(f"prompt {index}, part {j}: {exc}") from None
                if modality not in self._plugged:
                    raise ModalityNotPluggedError(f"prompt {index}, part {j} ({describe_item(part)}): " + self._not_plugged(modality))
                parts.append((modality, part))
            return parts
        raise PromptError(f"prompt {index} is {describe_item(prompt)}; a prompt is a str template or a list of text and items")

    def _count_message(self, index: int, prompt: str, pools: dict[str, list[Any]]) -> str:
        counts = {m: len(re.findall(re.escape(p.placeholder), prompt)) for m, p in self._plugged.items()}
        given = {m: len(v) for m, v in self._given.items()}
        detail = "; ".join(f"{m}: {counts.get(m, 0)} placeholder(s) {self._plugged[m].placeholder!r}, "
                           f"{given.get(m, 0)} item(s) given" for m in sorted(set(counts) | set(given)) if m in self._plugged)
        return f"prompt {index}: placeholders and items disagree ({detail})"

    def _pools(self, items: dict[str, Any]) -> dict[str, list[Any]]:
        pools: dict[str, list[Any]] = {}
        for key, value in items.items():
            modality = self._modality_of_key(key)
            pools[modality] = list(value) if isinstance(value, (list, tuple)) else [value]
        self._given = {m: list(v) for m, v in pools.items()}
        return pools

    def _modality_of_key(self, key: str) -> str:
        names = set(self.hub.modalities()) | set(self._plugged)
        for m in names:
            if key in (m, f"{m}s", f"{m}_items"):
                return m
        raise PromptError(f"unknown item keyword {key!r}; use a modality name ({', '.join(sorted(names))}), "
                          "optionally plural (images=...)")

    def compose(self, prompts: Sequence[Any], **items: Any) -> Composition:
        """Compose a batch of prompts into left-padded input embeddings.

        Counts every item's tokens first; raises :class:`PromptError`,
        :class:`ModalityNotPluggedError` or :class:`ContextLengthError` before
        any encoder runs.
        """
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
            raise PromptError("compose() takes a non-empty list of prompts")
        pools = self._pools(items)
        parsed = [self._parts(p, i, pools) for i, p in enumerate(prompts)]
        leftover = {m: len(v) for m, v in pools.items() if v}
        if leftover:
            raise PromptError(
                "more items than placeholders: "
                + "; ".join(f"{n} {m} item(s) left over (placeholder {self._plugged[m].placeholder!r})"
                            for m, n in leftover.items() if m in self._plugged)
            )

        # 1. prepare items and count tokens, before any model runs
        prefix = list(self.backbone.prefix_ids())
        plans: list[list[tuple[str, Any]]] = []  # ("ids", list[int]) | (modality, (slot, n))
        queues: dict[str, list[Any]] = {}
        counts: list[dict[str, int]] = []
        for b, parts in enumerate(parsed):
            plan: list[tuple[str, Any]] = [("ids", prefix)] if prefix else []
            tally = {"text": len(prefix)}
            for kind, value in parts:
                if kind == "text":
                    ids = self.backbone.tokenize(value)
                    plan.append(("ids", ids))
                    tally["text"] += len(ids)
                    continue
                plug = self._plugged[kind]
                try:
                    prepared = plug.encoder.prepare(value, len(queues.get(kind, [])))
                except HubError as exc:
                    raise PromptError(f"prompt {b}: {kind} item: {exc}") from None
                n = plug.tokens(prepared)
                if plug.start_ids:
                    plan.append(("ids", plug.start_ids))
                plan.append((kind, (len(queues.setdefault(kind, [])), n)))
                queues[kind].append(prepared)
                if plug.end_ids:
                    plan.append(("ids", plug.end_ids))
                tally["text"] += len(plug.start_ids) + len(plug.end_ids)
                tally[kind] = tally.get(kind, 0) + n
            plans.append(plan)
            counts.append(tally)
        lengths = [sum(t.values()) for t in counts]
        limit = int(self.backbone.max_context)
        for b, (length, tally) in enumerate(zip(lengths, counts)):
            if length > limit:
                detail = ", ".join(f"{k} {v}" for k, v in tally.items())
                raise ContextLengthError(
                    f"prompt {b} composes to {length} tokens ({detail}), over the backbone's context window of "
                    f"{limit} by {length - limit}; use fewer or smaller items, a pooling/resampler projector, "
                    "or shorter text (nothing is truncated silently)"
                )
        if max(lengths) == 0:
            raise PromptError("every prompt is empty")

        # 2. run each modality's encoder + projector once over all its items
        device, dtype = self._device_dtype()
        embedded: dict[str, list[torch.Tensor]] = {}
        with torch.no_grad():
            for modality, prepared in queues.items():
                plug = self._plugged[modality]
                tensors = {k: v.to(device) for k, v in plug.encoder.collate(prepared).items()}
                te = plug.encoder(**tensors)
                out, mask = plug.projector(te.tokens, te.mask)  # (items, T', hidden), (items, T')
                embedded[modality] = [out[i][mask[i]].to(dtype) for i in range(out.shape[0])]

        # 3. lay out each row, then left-pad the batch
        width = max(lengths)
        hidden = int(self.backbone.hidden_size)
        pad = int(self.backbone.pad_token_id)
        ids = torch.full((len(plans), width), pad, dtype=torch.long, device=device)
        attn = torch.zeros(len(plans), width, dtype=torch.long, device=device)
        modality_rows: list[list[tuple[int, torch.Tensor]]] = []
        spans: list[list[tuple[str, int, int]]] = []
        for b, plan in enumerate(plans):
            pos = width - lengths[b]
            attn[b, pos:] = 1
            rows, row_spans = [], []
            for kind, value in plan:
                if kind == "ids":
                    ids[b, pos : pos + len(value)] = torch.tensor(value, dtype=torch.long)
                    pos += len(value)
                    continue
                slot, n = value
                vec = embedded[kind][slot]
                if vec.shape[0] != n:
                    raise HubError(
                        f"{kind} encoder {self._plugged[kind].encoder.name!r} announced {n} tokens for an item but "
                        f"produced {vec.shape[0]}; this is a bug in the plugin's num_tokens()"
                    )
                ids[b, pos : pos + n] = -1
                rows.append((pos, vec))
                row_spans.append((kind, pos, pos + n))
                pos += n
            modality_rows.append(rows)
            spans.append(row_spans)
        with torch.no_grad():
            embeds = self.backbone.embed_ids(ids.clamp(min=0)).clone()  # (batch, seq, hidden)
        for b, rows in enumerate(modality_rows):
            for pos, vec in rows:
                embeds[b, pos : pos + vec.shape[0]] = vec
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        assert embeds.shape == (len(plans), width, hidden)
        return Composition(embeds, attn, position_ids, ids, spans, lengths)

    # -- running ---------------------------------------------------------------------
    def forward(self, prompt: Any, **items: Any) -> torch.Tensor:
        """Logits ``(1, seq, vocab)`` of one prompt (float32)."""
        return self.forward_batch([prompt], **items)

    def forward_batch(self, prompts: Sequence[Any], **items: Any) -> torch.Tensor:
        """Logits ``(batch, seq, vocab)`` of left-padded prompts; padding rows are meaningless."""
        comp = self.compose(prompts, **items)
        with torch.inference_mode():
            return self.backbone(comp.inputs_embeds, comp.attention_mask, comp.position_ids).float()

    def generate(self, prompt: Any, max_new_tokens: int = 32, **kwargs: Any) -> str:
        """Generated text for one prompt (greedy unless generation kwargs say otherwise)."""
        items = {k: kwargs.pop(k) for k in list(kwargs) if self._is_item_key(k)}
        return self.generate_batch([prompt], max_new_tokens=max_new_tokens, **items, **kwargs)[0]

    def generate_batch(self, prompts: Sequence[Any], max_new_tokens: int = 32, **kwargs: Any) -> list[str]:
        """Generated text for each prompt of a left-padded batch, with KV cache."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        items = {k: kwargs.pop(k) for k in list(kwargs) if self._is_item_key(k)}
        comp = self.compose(prompts, **items)
        room = int(self.backbone.max_context) - comp.inputs_embeds.shape[1]
        if room < max_new_tokens:
            raise ContextLengthError(
                f"prompts of {comp.inputs_embeds.shape[1]} tokens leave room for {max(room, 0)} new tokens in the "
                f"backbone's context window of {self.backbone.max_context}; asked for {max_new_tokens}"
            )
        with torch.inference_mode():
            new = self.backbone.generate(comp.inputs_embeds, comp.attention_mask, max_new_tokens, **kwargs)
        return [self.backbone.decode(ids) for ids in new]

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
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        ref = self._backbone_ref
        if include_backbone or ref is None:
            if not hasattr(self.backbone, "save_pretrained"):
                raise BundleError("the backbone has no source to reference and cannot save_pretrained()")
            self.backbone.save_pretrained(str(out / "backbone"))
            adapter = ref.adapter if ref else getattr(self.backbone, "adapter", "transformers")
            ref = BackboneRef(adapter=adapter, source="backbone", saved=True)
        modalities = {}
        for m, plug in self._plugged.items():
            proj_dir = f"projectors/{m}"
            plug.projector.save(out / proj_dir)
            enc_dir, enc_name, enc_options = None, plug.encoder_name, plug.encoder_options
            if enc_name is None or getattr(plug.encoder, "_save_in_bundle", False):
                reload_as = plug.encoder.reload_as or plug.encoder.name
                if not hasattr(plug.encoder, "save_pretrained") or reload_as not in self.hub.registry.list_encoders():
                    raise BundleError(
                        f"the {m} encoder ({plug.encoder.name!r}) was not built from the registry by name and has no "
                        "registered encoder that reloads its save_pretrained() output (Encoder.reload_as)"
                    )
                enc_dir, enc_name, enc_options = f"encoders/{m}", reload_as, plug.encoder.reload_options()
                plug.encoder.save_pretrained(str(out / enc_dir))
            modalities[m] = PluggedRef(
                encoder=enc_name, encoder_options=enc_options,
                encoder_dir=enc_dir, projector_dir=proj_dir, placeholder=plug.placeholder, start=plug.start, end=plug.end,
            )
        manifest = BundleManifest(backbone=ref, modalities=modalities)
        (out / MANIFEST).write_text(json.dumps(manifest.model_dump(), indent=2) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike, hub: "Hub | None" = None) -> "MultimodalLM":
        """Load a bundle written by :meth:`save`."""
        from ._hub import Hub

        from ._manifest import read_manifest

        root = Path(directory)
        manifest = read_manifest(root / MANIFEST, BundleManifest, "a bundle", BUNDLE_FORMAT)
        hub = hub or Hub()
        ref = manifest.backbone
        source = str(root / ref.source) if ref.saved else ref.source
        lm = hub.attach(source, adapter=ref.adapter, **ref.options)
        if not ref.saved:
            lm._backbone_ref = ref
        for m, plug in manifest.modalities.items():
            options = dict(plug.encoder_options)
            if plug.encoder_dir:
                options["weights"] = str(root / plug.encoder_dir)
            encoder = hub.registry.create_encoder(plug.encoder, **options)
            lm.plug(m, encoder=encoder, projector=root / plug.projector_dir,
                    placeholder=plug.placeholder, start=plug.start, end=plug.end)
            lm._plugged[m].encoder_name = plug.encoder
            lm._plugged[m].encoder_options = dict(plug.encoder_options)
            if plug.encoder_dir:
                lm._plugged[m].encoder._save_in_bundle = True
        return lm
