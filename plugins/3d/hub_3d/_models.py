"""Point-cloud networks: a Point-BERT-style grouped transformer and a PointNet++-style
set-abstraction stack, with their pydantic configs.

Both take a padded batch ``points`` (batch, points, 3 + channels) with a
``point_mask`` (batch, points) and return one token per group (batch, groups, dim).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from ._ops import farthest_point_sample, gather_points, knn

__all__ = ["PointBertConfig", "PointNet2Config", "PointBERT", "PointNet2", "ARCHITECTURES"]


class _PointConfig(BaseModel):
    """What every point encoder shares: input size, grouping, width, seed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_points: int = Field(1024, ge=1, description="points per cloud the encoder sees; larger clouds are subsampled")
    num_groups: int = Field(64, ge=1, description="tokens per item: farthest-point-sampled centres (G)")
    group_size: int = Field(32, ge=1, description="neighbours per group (k of kNN)")
    channels: int = Field(0, ge=0, description="extra per-point channels used after xyz (e.g. 3 for normals or RGB)")
    dim: int = Field(384, ge=4, description="token width")
    seed: int = Field(0, description="seed of the random init, the subsampling and the mesh surface sampling")

    @property
    def min_points(self) -> int:
        """Fewest real points a cloud needs."""
        return max(self.num_groups, self.group_size)

    @property
    def min_points_reason(self) -> str:
        return f"FPS picks num_groups={self.num_groups} centres, kNN takes group_size={self.group_size} neighbours"

    @model_validator(mode="after")
    def _check(self):
        if self.num_points < self.min_points:
            raise ValueError(
                f"num_points={self.num_points} is below the {self.min_points} points this configuration needs "
                "(see num_groups, group_size, depth)"
            )
        return self


class PointBertConfig(_PointConfig):
    """Point-BERT-style encoder: FPS + kNN groups, mini-PointNet tokens, transformer."""

    architecture: Literal["point-bert"] = "point-bert"
    depth: int = Field(12, ge=1, description="transformer blocks")
    heads: int = Field(6, ge=1, description="attention heads (must divide dim)")

    @model_validator(mode="after")
    def _check_heads(self):
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        return self


class PointNet2Config(_PointConfig):
    """PointNet++-style encoder: ``depth`` set-abstraction levels, the last with ``num_groups`` centres."""

    architecture: Literal["pointnet2"] = "pointnet2"
    dim: int = Field(256, ge=4, description="token width")
    depth: int = Field(2, ge=1, le=4, description="set-abstraction levels; level l has num_groups * 2**(depth-1-l) centres")

    def level_groups(self) -> list[int]:
        return [self.num_groups * 2 ** (self.depth - 1 - level) for level in range(self.depth)]

    @property
    def min_points(self) -> int:
        return max(self.level_groups()[0], self.group_size)

    @property
    def min_points_reason(self) -> str:
        return (
            f"its first set-abstraction level picks {self.level_groups()[0]} centres "
            f"(num_groups={self.num_groups} * 2**(depth-1)), kNN takes group_size={self.group_size} neighbours"
        )


# -- building blocks -------------------------------------------------------------


class MiniPointNet(nn.Module):
    """Point-BERT's group embedding: shared MLP → max → concat with the group max → MLP → max.

    Invariant to the order of the points in a group (max pooling).
    """

    def __init__(self, in_channels: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Linear(in_channels, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, 2 * hidden))
        self.second = nn.Sequential(nn.Linear(4 * hidden, 4 * hidden), nn.LayerNorm(4 * hidden), nn.GELU(), nn.Linear(4 * hidden, dim))

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        feats = self.first(groups)  # (batch, G, k, 2h)
        pooled = feats.amax(dim=2, keepdim=True).expand_as(feats)  # (batch, G, k, 2h)
        feats = self.second(torch.cat([pooled, feats], dim=-1))  # (batch, G, k, dim)
        return feats.amax(dim=2)  # (batch, G, dim)


class Block(nn.Module):
    """A pre-norm transformer block (attention + MLP), as in Point-BERT / ViT."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, tokens, head_dim)
        attn = nn.functional.scaled_dot_product_attention(q, k, v)  # (batch, heads, tokens, head_dim)
        x = x + self.proj(attn.transpose(1, 2).reshape(batch, tokens, dim))
        return x + self.mlp(self.norm2(x))  # (batch, tokens, dim)


def _group(points: torch.Tensor, mask: torch.Tensor, groups: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FPS centres and their kNN groups, xyz made relative to the centre.

    points: (batch, N, 3 + C); mask: (batch, N) → centres (batch, G, 3), groups (batch, G, k, 3 + C).
    """
    xyz = points[..., :3]  # (batch, N, 3)
    centres = gather_points(xyz, farthest_point_sample(xyz, mask, groups))  # (batch, G, 3)
    members = gather_points(points, knn(centres, xyz, mask, k))  # (batch, G, k, 3 + C)
    rel = members[..., :3] - centres.unsqueeze(2)  # (batch, G, k, 3)
    return centres, torch.cat([rel, members[..., 3:]], dim=-1)


def _pos_embed(dim: int) -> nn.Sequential:
    """Point-BERT's positional embedding: an MLP on the centre's xyz."""
    return nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))


# -- the two architectures ---------------------------------------------------------


class PointBERT(nn.Module):
    """Point-BERT-style grouped transformer (Yu et al., 2022), without the CLS token.

    FPS picks ``num_groups`` centres, kNN takes each centre's ``group_size``
    neighbours, a mini-PointNet embeds each group (xyz relative to its centre,
    plus any extra channels), the centre's xyz goes through an MLP positional
    embedding added before every block, then ``depth`` transformer blocks and a
    final LayerNorm: one token per group.
    """

    def __init__(self, config: PointBertConfig) -> None:
        super().__init__()
        self.config = config
        self.group_encoder = MiniPointNet(3 + config.channels, config.dim, hidden=max(16, config.dim // 3))
        self.pos_embed = _pos_embed(config.dim)
        self.blocks = nn.ModuleList(Block(config.dim, config.heads) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, points: torch.Tensor, point_mask: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        centres, groups = _group(points, point_mask, cfg.num_groups, cfg.group_size)
        x = self.group_encoder(groups)  # (batch, G, dim)
        pos = self.pos_embed(centres)  # (batch, G, dim)
        for block in self.blocks:
            x = block(x + pos)
        return self.norm(x)  # (batch, G, dim)


class SetAbstraction(nn.Module):
    """One PointNet++ set-abstraction level: FPS centres, kNN groups, shared MLP, max pool."""

    def __init__(self, groups: int, k: int, in_channels: int, width: int) -> None:
        super().__init__()
        self.groups, self.k = groups, k
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, width), nn.LayerNorm(width), nn.GELU(),
            nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(),
            nn.Linear(width, width),
        )

    def forward(self, points: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        centres, groups = _group(points, mask, self.groups, self.k)  # (batch, G, 3), (batch, G, k, 3 + C)
        return centres, self.mlp(groups).amax(dim=2)  # (batch, G, 3), (batch, G, width)


class PointNet2(nn.Module):
    """PointNet++-style set-abstraction encoder (Qi et al., 2017), kNN grouping variant.

    ``depth`` levels; level ``l`` samples ``num_groups * 2**(depth-1-l)`` centres
    (FPS) and groups ``group_size`` nearest neighbours of the previous level
    (kNN instead of the original ball query, so every group is full), with
    widths doubling up to ``dim``.  The last level's centres are the tokens: their
    features plus an MLP positional embedding of the centre xyz, then LayerNorm.
    """

    def __init__(self, config: PointNet2Config) -> None:
        super().__init__()
        self.config = config
        groups = config.level_groups()
        widths = [max(16, config.dim // 2 ** (config.depth - 1 - level)) for level in range(config.depth)]
        widths[-1] = config.dim
        levels, in_channels, available = [], 3 + config.channels, None
        for level, (g, w) in enumerate(zip(groups, widths)):
            k = config.group_size if available is None else min(config.group_size, available)
            levels.append(SetAbstraction(g, k, in_channels, w))
            in_channels, available = 3 + w, g
        self.levels = nn.ModuleList(levels)
        self.pos_embed = _pos_embed(config.dim)
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, points: torch.Tensor, point_mask: torch.Tensor) -> torch.Tensor:
        mask = point_mask
        for level in self.levels:
            centres, feats = level(points, mask)  # (batch, G_l, 3), (batch, G_l, width_l)
            points = torch.cat([centres, feats], dim=-1)  # (batch, G_l, 3 + width_l)
            mask = torch.ones_like(feats[..., 0], dtype=torch.bool)  # (batch, G_l)
        return self.norm(feats + self.pos_embed(centres))  # (batch, G, dim)


#: architecture name -> (config class, network class)
ARCHITECTURES: dict[str, tuple[type[_PointConfig], type[nn.Module]]] = {
    "point-bert": (PointBertConfig, PointBERT),
    "pointnet2": (PointNet2Config, PointNet2),
}
