"""Masked modelling's contract: an encoder hides part of its input and says what to reconstruct.

An encoder that supports masked pretraining implements
``masked_batch(tensors, ratio, generator) -> MaskedBatch`` (the image plugin's
vision towers and the 3D plugin's point-cloud encoders do).  The core knows no
encoder class: it calls that method and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from ..encoder import Encoder
from ..errors import InvalidInputError

__all__ = ["MaskedBatch", "masked_count", "masked_fn"]


@dataclass
class MaskedBatch:
    """A batch prepared for masked modelling.

    ``inputs`` are the encoder's forward tensors with the masked content hidden;
    ``targets`` (batch, M, F) what the decoder must predict for each masked unit,
    ``target_mask`` (batch, M) which of them are real, ``queries`` (batch, M, Q)
    where each masked unit sits (normalized patch row/column, a group's centre
    xyz), and ``token_index`` (batch, M) the encoder token at the unit's position
    when there is one (vision towers), else ``None``.  ``loss`` is ``"mse"`` or
    ``"chamfer"`` (targets are then flattened ``(k, 3)`` point sets).
    """

    inputs: dict[str, torch.Tensor]
    targets: torch.Tensor  # (batch, M, F)
    target_mask: torch.Tensor  # (batch, M)
    queries: torch.Tensor  # (batch, M, Q)
    token_index: torch.Tensor | None = None  # (batch, M)
    loss: Literal["mse", "chamfer"] = "mse"


def masked_count(ratio: float, total: int) -> int:
    return min(total, max(1, round(ratio * total)))


def masked_fn(encoder: Encoder) -> Callable[[dict[str, torch.Tensor], float, torch.Generator], MaskedBatch]:
    """``encoder.masked_batch``, or :class:`InvalidInputError` saying how to add it."""
    hook = getattr(encoder, "masked_batch", None)
    if callable(hook):
        return hook
    raise InvalidInputError(
        f"masked pretraining needs encoder {encoder.name!r} ({type(encoder).__name__}, modality "
        f"{encoder.modality!r}) to implement masked_batch(tensors, ratio, generator) -> hub.train.MaskedBatch; "
        "the image plugin's vision towers and the 3d plugin's point-cloud encoders do. Use objective='contrastive'"
    )
