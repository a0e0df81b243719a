"""`TokenEmbeddings`: the contract every encoder speaks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch

from .errors import InvalidInputError, SpaceMismatchError

__all__ = ["TokenEmbeddings", "SkippedItem"]

Pooling = Literal["mean", "cls", "max"]


@dataclass(frozen=True)
class SkippedItem:
    """One item that was skipped by ``embed(..., on_error="skip")``."""

    index: int
    item: str
    reason: str

    def __str__(self) -> str:
        return f"item {self.index} ({self.item}): {self.reason}"


@dataclass
class TokenEmbeddings:
    """A padded batch of token embeddings in one embedding space.

    ``tokens`` is ``(batch, tokens, dim)`` float32, ``mask`` is ``(batch, tokens)``
    bool with ``True`` on real tokens.  ``space`` names the embedding space
    (an encoder's native space or a backbone's token space); batches from
    different spaces never mix silently.  ``pooling`` is the encoder's
    sentence-level pooling (``mean`` unless the model was trained otherwise).

    When produced by ``Hub.embed(..., on_error="skip")``, ``indices`` holds the
    position of each row in the caller's input and ``errors`` the skipped items.
    """

    tokens: torch.Tensor  # (batch, tokens, dim)
    mask: torch.Tensor  # (batch, tokens)
    modality: str
    space: str
    pooling: Pooling = "mean"
    indices: list[int] | None = None
    errors: list[SkippedItem] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3:
            raise InvalidInputError(
                f"TokenEmbeddings.tokens must be (batch, tokens, dim); got shape {tuple(self.tokens.shape)}"
            )
        if not self.tokens.is_floating_point():
            raise InvalidInputError(f"TokenEmbeddings.tokens must be float; got {self.tokens.dtype}")
        if self.mask.shape != self.tokens.shape[:2]:
            raise InvalidInputError(
                f"TokenEmbeddings.mask must be (batch, tokens) = {tuple(self.tokens.shape[:2])}; "
                f"got {tuple(self.mask.shape)}"
            )
        if self.mask.dtype != torch.bool:
            self.mask = self.mask.bool()
        if self.pooling not in ("mean", "cls", "max"):
            raise InvalidInputError(f"pooling must be 'mean', 'cls' or 'max'; got {self.pooling!r}")
        if self.indices is None and not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            # (under torch.export / ONNX export the batch size is symbolic: leave the default indices out)
            self.indices = list(range(self.tokens.shape[0]))

    # -- shape ---------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.tokens.shape[-1])

    @property
    def lengths(self) -> torch.Tensor:
        """Number of real tokens per item, ``(batch,)`` int64."""
        return self.mask.sum(dim=1)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        """The unpadded tokens of item ``i``: ``(n_i, dim)``."""
        return self.tokens[i][self.mask[i]]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        lens = self.lengths.tolist()
        return (
            f"TokenEmbeddings(modality={self.modality!r}, space={self.space!r}, batch={len(self)}, "
            f"tokens={self.tokens.shape[1]}, dim={self.dim}, "
            f"lengths={lens if len(lens) <= 8 else lens[:8] + ['...']}, skipped={len(self.errors)})"
        )

    # -- pooling -------------------------------------------------------------
    def pooled(self, normalize: bool = False, method: Pooling | None = None) -> torch.Tensor:
        """One vector per item, ``(batch, dim)``.

        ``method`` defaults to the encoder's pooling: a masked mean for most
        encoders, the first token for CLS-trained models (e.g. BGE).
        """
        method = method or self.pooling
        mask = self.mask.unsqueeze(-1).to(self.tokens.dtype)  # (batch, tokens, 1)
        if method == "mean":
            out = (self.tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        elif method == "cls":
            out = self.tokens[:, 0]
        elif method == "max":
            out = self.tokens.masked_fill(~self.mask.unsqueeze(-1), float("-inf")).amax(1)
        else:
            raise InvalidInputError(f"unknown pooling {method!r}; use 'mean', 'cls' or 'max'")
        if normalize:
            out = torch.nn.functional.normalize(out, p=2, dim=-1)
        return out

    # -- conversion ----------------------------------------------------------
    def to(self, *args, **kwargs) -> "TokenEmbeddings":
        return TokenEmbeddings(
            self.tokens.to(*args, **kwargs),
            self.mask.to(self.tokens.to(*args, **kwargs).device),
            self.modality,
            self.space,
            self.pooling,
            list(self.indices or []),
            list(self.errors),
        )

    def to_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens, mask)`` as numpy arrays (float32, bool)."""
        return (
            self.tokens.detach().float().cpu().numpy(),
            self.mask.detach().cpu().numpy(),
        )

    def select(self, rows: Sequence[int]) -> "TokenEmbeddings":
        """A new batch holding ``rows`` in the given order."""
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=self.tokens.device)
        indices = self.indices or []
        return TokenEmbeddings(
            self.tokens.index_select(0, idx),
            self.mask.index_select(0, idx),
            self.modality,
            self.space,
            self.pooling,
            [indices[r] for r in rows],
            list(self.errors),
        )

    # -- combining -----------------------------------------------------------
    @classmethod
    def cat(cls, parts: Sequence["TokenEmbeddings"]) -> "TokenEmbeddings":
        """Concatenate batches along the batch axis, padding to the longest.

        All parts must share ``space``, ``modality``, ``dim`` and ``pooling``;
        anything else raises :class:`SpaceMismatchError` rather than mixing
        tokens of different spaces.
        """
        if not parts:
            raise InvalidInputError("TokenEmbeddings.cat needs at least one batch")
        first = parts[0]
        for p in parts[1:]:
            if (p.space, p.modality, p.dim, p.pooling) != (first.space, first.modality, first.dim, first.pooling):
                raise SpaceMismatchError(
                    "cannot concatenate token embeddings from different spaces: "
                    f"{first.modality}/{first.space} (dim {first.dim}, {first.pooling} pooling) vs "
                    f"{p.modality}/{p.space} (dim {p.dim}, {p.pooling} pooling); "
                    "project them into one space first (a projector), or keep them apart"
                )
        width = max(int(p.tokens.shape[1]) for p in parts)
        tokens, masks, indices, errors = [], [], [], []
        for p in parts:
            pad = width - int(p.tokens.shape[1])
            tokens.append(torch.nn.functional.pad(p.tokens, (0, 0, 0, pad)))
            masks.append(torch.nn.functional.pad(p.mask, (0, pad), value=False))
            indices.extend(p.indices or [])
            errors.extend(p.errors)
        return cls(
            torch.cat(tokens), torch.cat(masks), first.modality, first.space, first.pooling, indices, errors
        )

    @classmethod
    def from_list(
        cls,
        items: Sequence[torch.Tensor],
        *,
        modality: str,
        space: str,
        pooling: Pooling = "mean",
        dim: int | None = None,
    ) -> "TokenEmbeddings":
        """Pad a list of ``(n_i, dim)`` tensors into one batch."""
        if not items:
            if dim is None:
                raise InvalidInputError("from_list of no items needs dim=")
            return cls(torch.zeros(0, 0, dim), torch.zeros(0, 0, dtype=torch.bool), modality, space, pooling)
        width = max(int(t.shape[0]) for t in items)
        d = int(items[0].shape[-1])
        tokens = items[0].new_zeros(len(items), width, d)
        mask = torch.zeros(len(items), width, dtype=torch.bool, device=items[0].device)
        for i, t in enumerate(items):
            tokens[i, : t.shape[0]] = t
            mask[i, : t.shape[0]] = True
        return cls(tokens, mask, modality, space, pooling)
