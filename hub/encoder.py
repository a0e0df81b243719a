"""The encoder base class: ``preprocess`` (Python, per item) then ``forward`` (tensors)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .errors import InvalidInputError
from .tokens import Pooling, TokenEmbeddings

__all__ = ["Encoder", "describe_item", "invalid_item"]


class Encoder(torch.nn.Module):
    """Raw items → :class:`TokenEmbeddings` in the encoder's own space.

    Subclasses implement four methods:

    * ``prepare(item, index)`` — per item, plain Python, no grad: decode,
      validate, tokenize, resize.  Raises :class:`InvalidInputError` naming the
      item for anything it cannot encode.
    * ``collate(prepared)`` — a list of prepared items → ``dict`` of tensors.
    * ``num_tokens(prepared)`` — how many tokens this item will yield, known
      before ``forward`` runs (the composer relies on it).
    * ``forward(**tensors)`` — pure tensor code, exportable to ONNX; returns
      :class:`TokenEmbeddings`.

    ``length(prepared)`` (optional) is the sort key for length bucketing.
    The registry sets ``name``, ``modality``, ``license`` and ``pretrained``
    on instances it creates.
    """

    name: str = "encoder"
    modality: str = ""
    dim: int = 0
    pooling: Pooling = "mean"
    weights: str | None = None
    license: str = "unknown"
    pretrained: bool = True
    accepts: tuple[str, ...] = ()
    #: the registered encoder that reloads this encoder's ``save_pretrained(dir)`` output
    #: with ``weights=dir`` (e.g. ``hf-vision``); ``None``: its own name does
    reload_as: str | None = None
    #: the weights-free half (a :class:`hub.processor.Processor`); when set, ``prepare``, ``collate``,
    #: ``num_tokens`` and ``length`` delegate to it
    item_processor: Any = None

    def reload_options(self) -> dict[str, Any]:
        """Options besides ``weights=`` that ``reload_as`` needs to rebuild this encoder."""
        return {}

    # -- to implement (or delegate to ``item_processor``) -------------------------
    def prepare(self, item: Any, index: int = 0) -> Any:
        if self.item_processor is None:  # pragma: no cover - abstract
            raise NotImplementedError(f"{type(self).__name__} implements neither prepare() nor item_processor")
        return self.item_processor.prepare(item, index)

    def collate(self, prepared: Sequence[Any]) -> dict[str, torch.Tensor]:
        if self.item_processor is None:  # pragma: no cover - abstract
            raise NotImplementedError(f"{type(self).__name__} implements neither collate() nor item_processor")
        return self.item_processor.collate(prepared)

    def num_tokens(self, prepared: Any) -> int:
        if self.item_processor is None:  # pragma: no cover - abstract
            raise NotImplementedError(f"{type(self).__name__} implements neither num_tokens() nor item_processor")
        return self.item_processor.num_tokens(prepared)

    def forward(self, **tensors: torch.Tensor) -> TokenEmbeddings:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- provided ----------------------------------------------------------------
    def length(self, prepared: Any) -> int:
        """Sort key for length bucketing; the token count by default."""
        if self.item_processor is not None:
            return self.item_processor.length(prepared)
        return self.num_tokens(prepared)

    @property
    def space(self) -> str:
        """The id of this encoder's native embedding space."""
        return f"{self.modality}/{self.name}@{self.weights or 'random-init'}"

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def preprocess(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Items → the tensors ``forward`` takes."""
        if not items:
            raise InvalidInputError(f"{self.name}: preprocess() got no items")
        return self.collate([self.prepare(item, i) for i, item in enumerate(items)])

    def count_tokens(self, item: Any) -> int:
        """Tokens that ``item`` will yield (runs ``prepare`` only)."""
        return self.num_tokens(self.prepare(item, 0))

    @torch.inference_mode()
    def encode(self, items: Sequence[Any]) -> TokenEmbeddings:
        """``forward(**preprocess(items))`` on the encoder's device, no grad."""
        device = self.device
        tensors = {k: v.to(device) for k, v in self.preprocess(items).items()}
        return self(**tensors)

    def tokens(self, tokens: torch.Tensor, mask: torch.Tensor) -> TokenEmbeddings:
        """Wrap ``forward`` outputs as this encoder's :class:`TokenEmbeddings`."""
        return TokenEmbeddings(tokens.float(), mask.bool(), self.modality, self.space, self.pooling)

    def invalid(self, index: int, item: Any, problem: str, accepted: str | None = None) -> InvalidInputError:
        """An :class:`InvalidInputError` that names the item, the problem and what is accepted."""
        return invalid_item(self.name, self.accepts, index, item, problem, accepted)


def invalid_item(name: str, accepts: Sequence[str], index: int, item: Any, problem: str,
                 accepted: str | None = None) -> InvalidInputError:
    """The :class:`InvalidInputError` of an item ``name`` refuses: names the item, the problem and what is accepted."""
    accepted = accepted or (", ".join(accepts) if accepts else None)
    msg = f"item {index} ({describe_item(item)}): {problem}"
    if accepted:
        msg += f". {name} accepts: {accepted}"
    return InvalidInputError(msg, index=index)


def describe_item(item: Any, limit: int = 40) -> str:
    """A short, safe description of an item for error messages."""
    import os

    if isinstance(item, str):
        text = item if len(item) <= limit else item[: limit - 3] + "..."
        return f"str {text!r}"
    if isinstance(item, os.PathLike):
        return f"path {os.fspath(item)!r}"
    if isinstance(item, memoryview):  # (a view of bytes, e.g. a dataset's binary column)
        return f"bytes of length {item.nbytes}"
    if isinstance(item, (bytes, bytearray)):
        return f"{type(item).__name__} of length {len(item)}"
    shape = getattr(item, "shape", None)
    if shape is not None and not callable(shape):
        dtype = getattr(item, "dtype", "")
        return f"{type(item).__module__.split('.')[0]}.{type(item).__name__} shape {tuple(shape)} {dtype}".strip()
    size = getattr(item, "size", None)
    if type(item).__module__.startswith("PIL"):
        return f"PIL.Image {size[0]}x{size[1]} {getattr(item, 'mode', '')}"
    if isinstance(item, (list, tuple, dict)):
        return f"{type(item).__name__} of length {len(item)}"
    return f"{type(item).__module__}.{type(item).__qualname__} object"
