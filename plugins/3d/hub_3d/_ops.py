"""Farthest-point sampling, kNN and gathering in plain, batched torch.

``torch_geometric.nn.fps`` / ``knn`` dispatch to pyg-lib / torch-cluster kernels,
which are not installable everywhere and do not export to ONNX.  These versions
use only ``gather``, ``topk``, ``argmax`` and elementwise ops on padded batches
``(batch, points, 3)`` with a ``(batch, points)`` mask, so an encoder's whole
``forward`` traces to ONNX: the FPS loop runs a fixed number of times (the
number of centres, a config constant) and unrolls.
"""

from __future__ import annotations

import torch

__all__ = ["gather_points", "farthest_point_sample", "knn"]


def gather_points(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[b, index[b, ...]]`` for every batch row.

    values: (batch, points, channels); index: (batch, *shape) int64 → (batch, *shape, channels).
    """
    batch, channels = values.shape[0], values.shape[-1]
    flat = index.reshape(batch, -1, 1).expand(-1, -1, channels)  # (batch, M, channels)
    out = values.gather(1, flat)  # (batch, M, channels)
    return out.reshape(index.shape + (channels,))


def farthest_point_sample(xyz: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of ``count`` farthest-point-sampled centres per cloud, in FPS order.

    The first centre is the real point farthest from the cloud's centroid (not
    a random one), so the result does not depend on the order of the input
    points (up to exact distance ties).  Padded points (``mask`` False) are
    never picked; each cloud must have at least ``count`` real points.

    xyz: (batch, points, 3); mask: (batch, points) bool → (batch, count) int64.
    """
    weight = mask.unsqueeze(-1).to(xyz.dtype)  # (batch, points, 1)
    centroid = (xyz * weight).sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp(min=1.0)  # (batch, 1, 3)
    from_centroid = ((xyz - centroid) ** 2).sum(-1).masked_fill(~mask, -1.0)  # (batch, points)
    farthest = from_centroid.argmax(dim=1)  # (batch,)
    # distance of every point to its nearest picked centre; padded points stay at -1
    nearest = torch.full_like(from_centroid, float("inf")).masked_fill(~mask, -1.0)  # (batch, points)
    picked = []
    for _ in range(count):
        picked.append(farthest)
        centre = gather_points(xyz, farthest.unsqueeze(1))  # (batch, 1, 3)
        nearest = torch.minimum(nearest, ((xyz - centre) ** 2).sum(-1))
        farthest = nearest.argmax(dim=1)
    return torch.stack(picked, dim=1)  # (batch, count)


def knn(query: torch.Tensor, xyz: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` nearest real points of ``xyz`` to each query point.

    query: (batch, queries, 3); xyz: (batch, points, 3); mask: (batch, points) bool
    → (batch, queries, k) int64, nearest first.  Each cloud needs >= k real points.
    """
    dist = ((query.unsqueeze(2) - xyz.unsqueeze(1)) ** 2).sum(-1)  # (batch, queries, points)
    dist = dist.masked_fill(~mask.unsqueeze(1), float("inf"))
    # k padding columns at infinity: topk then never needs points >= k, so torch.export adds no
    # guard on the (dynamic) point count; they are never picked while a cloud has >= k real points
    pad = torch.full_like(dist[..., :1], float("inf")).expand(-1, -1, k)  # (batch, queries, k)
    index = torch.cat([dist, pad], dim=-1).topk(k, dim=-1, largest=False).indices  # (batch, queries, k)
    last = torch.ones_like(mask, dtype=index.dtype).sum(1).sub(1)[:, None, None]  # (batch, 1, 1) = points - 1
    return torch.minimum(index, last)
