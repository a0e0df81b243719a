"""The backbone interface: an LLM whose input embeddings are the shared token space.

Adapters (e.g. ``modality-hub-transformers``) implement :class:`Backbone` and
register a :class:`hub.BackboneSpec` through ``register_backbones``.  The
:class:`hub.lm.MultimodalLM` composer only talks to this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch

__all__ = ["Backbone"]


class Backbone(torch.nn.Module, ABC):
    """An LLM as seen by the hub.

    Attributes every adapter sets:

    * ``name`` — what it was loaded from (hub id or directory),
    * ``hidden_size`` — the width of its token embeddings,
    * ``max_context`` — the longest sequence it accepts (tokens),
    * ``space`` — the id of its token-embedding space (``backbone/<name>``),
    * ``pad_token_id``, ``eos_token_id``.
    """

    name: str
    #: the registered backbone adapter that reloads this backbone from a saved bundle (``BackboneSpec.name``)
    adapter: str | None = None
    hidden_size: int
    max_context: int
    pad_token_id: int
    eos_token_id: int | None

    @property
    def space(self) -> str:
        return f"backbone/{self.name}"

    # -- text ----------------------------------------------------------------------
    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` alone: no BOS/EOS or other special tokens added."""

    @abstractmethod
    def prefix_ids(self) -> list[int]:
        """Ids that start every sequence (e.g. ``[bos]``; empty for GPT-2-style models)."""

    @abstractmethod
    def token_id(self, token: str) -> int | None:
        """The id of a single special token (a placeholder or boundary), or None if absent."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids, special tokens skipped."""

    # -- tensors -------------------------------------------------------------------
    @abstractmethod
    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(batch, seq) long → (batch, seq, hidden) from the input embedding table."""

    @abstractmethod
    def forward(
        self,
        inputs_embeds: torch.Tensor,  # (batch, seq, hidden)
        attention_mask: torch.Tensor,  # (batch, seq) long/bool, 0 on padding
        position_ids: torch.Tensor,  # (batch, seq)
    ) -> torch.Tensor:
        """Logits (batch, seq, vocab)."""

    @abstractmethod
    def generate(
        self,
        inputs_embeds: torch.Tensor,  # (batch, seq, hidden), left-padded
        attention_mask: torch.Tensor,  # (batch, seq)
        max_new_tokens: int,
        **kwargs: Any,
    ) -> list[list[int]]:
        """New token ids per sequence (KV-cached decoding; greedy unless kwargs say otherwise).

        Adapters may also offer ``generate_stream(inputs_embeds, attention_mask, max_new_tokens, on_tokens,
        **kwargs)`` for one sequence, calling ``on_tokens(new_ids_so_far)`` after every token and stopping
        when it returns True; ``mhub serve``'s chat streams through it when present, and sends the whole
        answer as one chunk otherwise.
        """
