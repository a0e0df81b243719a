"""Trainable heads used during learning only: SimCLR's projection head, the masked decoder, CLIP's logit scale."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ProjectionHead", "MaskedDecoder", "LogitScale"]


class ProjectionHead(nn.Module):
    """SimCLR's projection head: Linear → ReLU → Linear on pooled tokens."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out_dim))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # (batch, dim) → (batch, out_dim)
        return self.net(pooled)


class MaskedDecoder(nn.Module):
    """A light decoder: a query per masked unit (its position, plus the encoder token there when
    aligned) cross-attends to the encoder's tokens, then an MLP predicts the unit's targets."""

    def __init__(self, dim: int, query_dim: int, target_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        heads = next(h for h in (4, 2, 1) if hidden % h == 0)
        self.query = nn.Sequential(nn.Linear(query_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.token = nn.Linear(dim, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(hidden)
        self.out = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, target_dim))

    def forward(
        self,
        tokens: torch.Tensor,  # (batch, T, dim)
        mask: torch.Tensor,  # (batch, T)
        queries: torch.Tensor,  # (batch, M, Q)
        token_index: torch.Tensor | None,  # (batch, M)
    ) -> torch.Tensor:
        kv = self.token(tokens)  # (batch, T, hidden)
        h = self.query(queries)  # (batch, M, hidden)
        if token_index is not None:
            h = h + kv.gather(1, token_index.unsqueeze(-1).expand(-1, -1, kv.shape[-1]))
        attn, _ = self.attn(self.norm1(h), kv, kv, key_padding_mask=~mask.bool(), need_weights=False)
        return self.out(self.norm2(h + attn))  # (batch, M, target_dim)


class LogitScale(nn.Module):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def forward(self) -> torch.Tensor:
        return self.value.clamp(max=math.log(100.0)).exp()
