"""An aligned encoder: an encoder and the projector trained to carry its tokens into another space.

:class:`ProjectedEncoder` is an :class:`~hub.Encoder` like any other: the inner encoder's processor
prepares items, ``forward`` runs the encoder then the projector, and the tokens are in the projector's
target space (an anchor's, e.g. the text encoder's), which ``space`` names.  ``hub.train`` loads one
from a directory written by ``align`` (:func:`hub.train.aligned_encoder`); the ``Hub`` accepts such a
directory wherever an encoder name is accepted.
"""

from __future__ import annotations

from typing import Any

import torch

from ..encoder import Encoder
from ..augment import TransformedProcessor
from ..processor import EncoderProcessor
from ..tokens import TokenEmbeddings
from .projectors import Projector

__all__ = ["ProjectedEncoder"]


class ProjectedEncoder(Encoder):
    """``projector(encoder(...))`` as one encoder whose tokens live in ``space``."""

    def __init__(self, encoder: Encoder, projector: Projector, space: str, *, name: str | None = None,
                 source: str | None = None, transforms: Any = (), registry: Any = None) -> None:
        super().__init__()
        self.encoder = encoder.eval()
        self.projector = projector.eval()
        self.item_processor = encoder.item_processor or EncoderProcessor(encoder)
        if transforms:  # the input normalisation the projector was trained with (align.json's transforms)
            self.item_processor = TransformedProcessor(self.item_processor, transforms, registry)
        self.name = name or f"aligned-{encoder.name}"
        self.modality = encoder.modality
        self.dim = int(projector.out_dim)
        self.pooling = encoder.pooling if projector.per_token else "mean"
        self.weights = source or encoder.weights
        self.pretrained = True
        self.accepts = tuple(getattr(encoder, "accepts", ()))
        self._space = space
        #: the registered encoder (and options) whose processor prepares this one's items
        self.preprocess_source: tuple[str, dict[str, Any]] = (encoder.name, {})

    @property
    def space(self) -> str:  # type: ignore[override]
        return self._space

    def forward(self, **tensors: torch.Tensor) -> TokenEmbeddings:
        te = self.encoder(**tensors)
        dtype = next(self.projector.parameters()).dtype
        tokens, mask = self.projector(te.tokens.to(dtype), te.mask)  # (batch, tokens', out_dim)
        return TokenEmbeddings(tokens.float(), mask.bool(), self.modality, self._space, self.pooling)
