"""The processor: the half of an encoder that turns raw items into tensors, and holds no weights.

As transformers splits tokenizers and image processors from models, every encoder here
has two halves:

* a :class:`Processor` (``prepare`` per item, ``collate`` per batch, ``num_tokens``
  before any model runs): plain Python and small files (a tokenizer, a preprocessor
  config), never model weights;
* the encoder's ``forward``: pure tensors, the half ONNX export traces.

A plugin registers a processor factory beside its encoder factory
(``EncoderSpec(processor=...)``, same options), so serving an export
(:class:`hub.onnx.OnnxEncoder`) builds the processor alone and never loads the torch
weights.  An encoder that keeps ``prepare``/``collate`` as its own methods still works:
``Registry.create_processor`` then wraps the whole encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from .encoder import invalid_item
from .errors import InvalidInputError

__all__ = ["Processor", "EncoderProcessor"]


class Processor:
    """Items → tensors for one encoder: ``prepare``, ``collate``, ``num_tokens``; no weights.

    ``save(directory)`` writes the files it needs (tokenizer, preprocessor config) and
    returns the options that rebuild it from there with ``weights=directory`` through
    the processor factory of the encoder named ``reload_as``, so an ONNX export carries
    its own preprocessing.
    """

    name: str = "processor"
    modality: str = ""
    accepts: tuple[str, ...] = ()
    #: the registered encoder whose ``processor`` factory reloads ``save(directory)`` with ``weights=directory``
    reload_as: str | None = None

    def prepare(self, item: Any, index: int = 0) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def collate(self, prepared: Sequence[Any]) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def num_tokens(self, prepared: Any) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def length(self, prepared: Any) -> int:
        """Sort key for length bucketing; the token count by default."""
        return self.num_tokens(prepared)

    def save(self, directory: str | Path) -> dict[str, Any] | None:
        """Write the processor's files to ``directory`` and return the options (besides ``weights=directory``)
        that reload it through ``reload_as``; ``None`` when it needs no files (its own options rebuild it)."""
        return None

    def invalid(self, index: int, item: Any, problem: str, accepted: str | None = None) -> InvalidInputError:
        """An :class:`InvalidInputError` that names the item, the problem and what is accepted."""
        return invalid_item(self.name, self.accepts, index, item, problem, accepted)


class EncoderProcessor(Processor):
    """The processor of an encoder that has no separate one: its own methods (the weights stay loaded)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.name, self.modality = encoder.name, encoder.modality
        self.accepts = tuple(getattr(encoder, "accepts", ()))

    def prepare(self, item: Any, index: int = 0) -> Any:
        return self.encoder.prepare(item, index)

    def collate(self, prepared: Sequence[Any]) -> dict[str, torch.Tensor]:
        return self.encoder.collate(prepared)

    def num_tokens(self, prepared: Any) -> int:
        return self.encoder.num_tokens(prepared)

    def length(self, prepared: Any) -> int:
        return self.encoder.length(prepared)
