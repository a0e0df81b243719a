"""Losses: SimCLR's NT-Xent, CLIP's symmetric InfoNCE, Chamfer distance."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["nt_xent", "clip_loss", "chamfer_distance"]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: ``z1[i]`` and ``z2[i]`` are positives, the other 2B - 2 views negatives.

    z1, z2: (batch, dim) → scalar.
    """
    z = nn.functional.normalize(torch.cat([z1, z2]), dim=-1)  # (2B, dim)
    n = z1.shape[0]
    sim = z @ z.T / temperature  # (2B, 2B)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)  # (2B,)
    return nn.functional.cross_entropy(sim, target)


def clip_loss(x: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE, with repeated captions handled as shared positives.

    x: (batch, dim) normalized item embeddings; anchors: (captions, dim) normalized
    embeddings of the captions in the batch; labels: (batch,) each item's caption row.
    Items → captions is a plain cross-entropy; captions → items spreads the target
    evenly over every item of that caption (so duplicates are not negatives).
    """
    logits = logit_scale * x @ anchors.T  # (batch, captions)
    to_caption = nn.functional.cross_entropy(logits, labels)
    onehot = nn.functional.one_hot(labels, anchors.shape[0]).T.float()  # (captions, batch)
    targets = onehot / onehot.sum(1, keepdim=True).clamp(min=1)
    to_item = nn.functional.cross_entropy(logits.T, targets)
    return (to_caption + to_item) / 2


def chamfer_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared-L2 Chamfer distance between point sets. pred, target: (sets, k, 3) → scalar."""
    d = torch.cdist(pred, target).pow(2)  # (sets, k, k)
    return d.min(2).values.mean() + d.min(1).values.mean()
