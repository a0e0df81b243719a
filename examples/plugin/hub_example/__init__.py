"""An example modality-hub plugin: the ``series`` modality (1-D numeric sequences).

Each series is cut into patches of ``patch`` values (the last one zero-padded);
a linear layer embeds each patch as one token, PatchTST-style.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from hub import Encoder, EncoderSpec, Modality, TokenEmbeddings, hookimpl

ACCEPTS = ("1-D numpy float array or torch float tensor with at least one finite value per element",)


def is_series(item: Any) -> bool:
    """Claim 1-D float arrays (cheap; never raises)."""
    if isinstance(item, np.ndarray):
        return item.ndim == 1 and np.issubdtype(item.dtype, np.floating)
    return isinstance(item, torch.Tensor) and item.ndim == 1 and item.is_floating_point()


class SeriesOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patch: int = Field(4, ge=1, description="values per token")
    dim: int = Field(16, ge=1, description="token dim")
    seed: int = 0


class SeriesEncoder(Encoder):
    """Series → one token per ``patch`` values (ceil(len / patch) tokens)."""

    accepts = ACCEPTS

    def __init__(self, patch: int = 4, dim: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.patch, self.dim = patch, dim
        self.weights = f"random-init(seed={seed})"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.proj = torch.nn.Linear(patch, dim)

    def prepare(self, item: Any, index: int = 0) -> torch.Tensor:
        if not is_series(item):
            raise self.invalid(index, item, "expected a 1-D float array")
        x = torch.as_tensor(np.asarray(item, dtype=np.float32))
        if x.numel() == 0:
            raise self.invalid(index, item, "empty series")
        if not bool(torch.isfinite(x).all()):
            raise self.invalid(index, item, "series holds NaN or inf")
        pad = (-x.numel()) % self.patch
        return torch.nn.functional.pad(x, (0, pad)).view(-1, self.patch)  # (tokens, patch)

    def collate(self, prepared: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        width = max(p.shape[0] for p in prepared)
        patches = torch.zeros(len(prepared), width, self.patch)
        mask = torch.zeros(len(prepared), width, dtype=torch.bool)
        for i, p in enumerate(prepared):
            patches[i, : p.shape[0]] = p
            mask[i, : p.shape[0]] = True
        return {"patches": patches, "mask": mask}

    def num_tokens(self, prepared: torch.Tensor) -> int:
        return int(prepared.shape[0])

    def forward(self, patches: torch.Tensor, mask: torch.Tensor) -> TokenEmbeddings:
        return self.tokens(self.proj(patches), mask)  # (batch, tokens, dim)


def examples(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` valid series of varied lengths (2 to 49 values), the same for the same seed.

    ``hub.onnx.export`` needs them: it collates batches of them to find the dimensions that
    vary (batch, patches) and checks ONNX Runtime against PyTorch on fresh ones.
    """
    rng = np.random.default_rng(seed)
    lengths = 2 + (np.arange(n) * 11 + int(rng.integers(48))) % 48  # a spread of sizes, not one size
    return [np.cumsum(rng.standard_normal(int(k))).astype(np.float32) for k in lengths]  # random walks


@hookimpl
def register_modalities(register):
    register(Modality(
        name="series", accepts=ACCEPTS, detect=is_series, default_encoder="series-patch",
        sample=lambda: np.sin(np.linspace(0, 6.28, 32)).astype(np.float32), examples=examples,
        description="1-D numeric series (example plugin)",
    ))


@hookimpl
def register_encoders(register):
    register(EncoderSpec(
        name="series-patch", modality="series", factory=SeriesEncoder, options=SeriesOptions,
        license="apache-2.0", pretrained=False, description="linear patch embedding (untrained example)",
    ))
