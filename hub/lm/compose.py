"""Composing prompts: text, items and boundary markers laid out as one left-padded batch of embeddings.

:class:`Composer` is the one place that turns prompts into the backbone's input:
inference (``MultimodalLM.forward`` / ``generate``) uses it, and so does caption
alignment in :mod:`hub.train`.  It counts every item's tokens before any model runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .._registry import Registry
from ..backbone import Backbone
from ..detect import detect
from ..encoder import Encoder, describe_item
from ..errors import ContextLengthError, HubError, ModalityNotPluggedError, PromptError
from .projectors import Projector

__all__ = ["Composer", "Composition", "PluggedModality"]


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
    labels: torch.Tensor | None = None  # (batch, seq): target ids where a row has them, else -100


class Composer:
    """Prompt parsing, token counting and layout over ``backbone`` and the ``_plugged`` modalities.

    Subclasses (:class:`hub.lm.MultimodalLM`) set ``backbone``, ``registry`` and ``_plugged``.
    """

    backbone: Backbone
    registry: Registry
    _plugged: dict[str, PluggedModality]

    def __init__(self, backbone: Backbone, registry: Registry, plugged: dict[str, PluggedModality] | None = None) -> None:
        """A composer over ``backbone`` alone (training uses one); :class:`~hub.lm.MultimodalLM` is one too."""
        self.backbone = backbone
        self.registry = registry
        self._plugged = dict(plugged or {})

    def _not_plugged(self, modality: str) -> str:
        have = ", ".join(f"{m} ({p.placeholder})" for m, p in self._plugged.items()) or "nothing"
        return f"modality {modality!r} is not plugged; plugged: {have}. Use lm.plug({modality!r}, ...)"

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        p = next(iter(self.backbone.parameters()))
        return p.device, p.dtype

    def _placeholder_regex(self) -> re.Pattern[str] | None:
        """Alternation of every known placeholder; ``None`` when there is none (text only)."""
        marks = {p.placeholder: m for m, p in self._plugged.items()}
        for m in self.registry.list_modalities():  # default placeholders of unplugged modalities are recognised too
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
                    modality = detect(self.registry, part)
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
        names = set(self.registry.list_modalities()) | set(self._plugged)
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
        lengths = self._check_lengths(counts)
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
        return self._layout(plans, lengths, embedded)

    def compose_embedded(self, rows: Sequence[Sequence[tuple[str, Any]]]) -> Composition:
        """Lay out rows whose items are already embeddings in the backbone's space (with gradients when
        they have them): the caption alignment in :mod:`hub.train` composes its sequences here, the
        same way inference does (the backbone's prefix, left padding, positions from the mask).

        A row is a list of ``("text", str)``, ``("ids", list[int])``, ``("embeds", tensor (n, hidden))``
        and ``("target", list[int])`` parts; ``Composition.labels`` holds the target ids at their
        positions and ``-100`` everywhere else (next-token loss: compare ``logits[:, :-1]`` with
        ``labels[:, 1:]``).
        """
        prefix = list(self.backbone.prefix_ids())
        plans: list[list[tuple[str, Any]]] = []
        embedded: dict[str, list[torch.Tensor]] = {"embeds": []}
        counts: list[dict[str, int]] = []
        for row in rows:
            plan: list[tuple[str, Any]] = [("ids", prefix)] if prefix else []
            tally = {"text": len(prefix), "embeds": 0}
            for kind, value in row:
                if kind in ("text", "ids", "target"):
                    ids = self.backbone.tokenize(value) if kind == "text" else [int(v) for v in value]
                    plan.append(("target" if kind == "target" else "ids", ids))
                    tally["text"] += len(ids)
                elif kind == "embeds":
                    plan.append(("embeds", (len(embedded["embeds"]), int(value.shape[0]))))
                    embedded["embeds"].append(value)
                    tally["embeds"] += int(value.shape[0])
                else:
                    raise PromptError(f"compose_embedded() parts are text, ids, embeds or target; got {kind!r}")
            plans.append(plan)
            counts.append(tally)
        lengths = self._check_lengths(counts)
        return self._layout(plans, lengths, embedded)

    def _check_lengths(self, counts: list[dict[str, int]]) -> list[int]:
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
        return lengths

    def _layout(self, plans: list[list[tuple[str, Any]]], lengths: list[int],
                embedded: dict[str, list[torch.Tensor]]) -> Composition:
        """Left-padded ids, mask, positions and embeddings of planned rows; item embeddings keep their graph."""
        device, dtype = self._device_dtype()
        width = max(lengths)
        hidden = int(self.backbone.hidden_size)
        pad = int(self.backbone.pad_token_id)
        ids = torch.full((len(plans), width), pad, dtype=torch.long, device=device)
        labels = torch.full((len(plans), width), -100, dtype=torch.long, device=device)
        attn = torch.zeros(len(plans), width, dtype=torch.long, device=device)
        modality_rows: list[list[tuple[int, torch.Tensor]]] = []
        spans: list[list[tuple[str, int, int]]] = []
        for b, plan in enumerate(plans):
            pos = width - lengths[b]
            attn[b, pos:] = 1
            rows, row_spans = [], []
            for kind, value in plan:
                if kind in ("ids", "target"):
                    ids[b, pos : pos + len(value)] = torch.tensor(value, dtype=torch.long)
                    if kind == "target":
                        labels[b, pos : pos + len(value)] = torch.tensor(value, dtype=torch.long)
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
                embeds[b, pos : pos + vec.shape[0]] = vec.to(dtype)
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        assert embeds.shape == (len(plans), width, hidden)
        return Composition(embeds, attn, position_ids, ids, spans, lengths, labels)
