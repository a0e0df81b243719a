"""Self-supervised pretraining: contrastive (SimCLR with the modality's augmentations) or masked (MAE-style).

``pretrain`` trains an encoder without labels, in the caller's process, with a tqdm
bar and resumable checkpoints (:mod:`hub.train.checkpoints`).  Every random choice
(order, views, masks, dropout) derives from ``(seed, epoch)``, so a run resumed at
an epoch boundary equals an uninterrupted one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .._registry import Registry
from ..augment import augment
from ..encoder import Encoder
from ..errors import BundleError, InvalidInputError, InvalidOptionsError
from .heads import MaskedDecoder, ProjectionHead
from .loop import forward, make_config, resolve_encoder, resolve_registry, resume_run, train_epochs
from .losses import chamfer_distance, nt_xent
from .masked import MaskedBatch, masked_fn

__all__ = ["PretrainConfig", "TrainResult", "OBJECTIVES", "pretrain"]


class PretrainConfig(BaseModel):
    """What defines a pretraining run (saved in ``state.json``; a resume must match it)."""

    model_config = ConfigDict(extra="forbid")

    modality: str
    objective: Literal["contrastive", "masked"] = "contrastive"
    encoder: str | None = Field(None, description="registry name of the encoder (None: an instance was given)")
    encoder_options: dict[str, Any] = {}
    augmentations: list[str] | None = Field(None, description="contrastive: augmentation names (None: all registered)")
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    temperature: float = Field(0.1, gt=0, description="contrastive: NT-Xent temperature")
    projection_dim: int = Field(64, ge=1, description="contrastive: output width of the projection head")
    mask_ratio: float = Field(0.5, gt=0, lt=1, description="masked: share of patches / groups hidden")
    seed: int = 0



@dataclass
class TrainResult:
    """A pretrained encoder (in eval mode), its head, the loss of every step and the checkpoint."""

    encoder: Encoder
    head: nn.Module
    losses: list[float]
    config: PretrainConfig
    checkpoint: Path | None = None
    epoch_losses: list[float] = field(default_factory=list)

    def save(self, directory: str | os.PathLike) -> Path:
        """The encoder's own ``save_pretrained(directory)`` (reload with ``weights=directory``)."""
        if not hasattr(self.encoder, "save_pretrained"):
            raise BundleError(
                f"encoder {self.encoder.name!r} ({type(self.encoder).__name__}) has no save_pretrained(); its weights "
                f"are in the checkpoint ({self.checkpoint}/encoder.safetensors, a state_dict)"
            )
        path = Path(directory)
        self.encoder.save_pretrained(str(path))
        return path


class _Objective:
    """One pretraining objective: builds its head, computes the loss of a batch."""

    def __init__(self, encoder: Encoder, config: PretrainConfig, registry: Registry, items: Sequence[Any]) -> None:
        self.encoder, self.config, self.registry = encoder, config, registry

    def head(self) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, head: nn.Module, items: Sequence[Any], rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract


class _Contrastive(_Objective):
    min_batch = 2

    def __init__(self, encoder: Encoder, config: PretrainConfig, registry: Registry, items: Sequence[Any]) -> None:
        super().__init__(encoder, config, registry, items)
        registered = [k.split("/", 1)[1] for k in registry.list_augmentations(config.modality)]
        names = registered if config.augmentations is None else [a.split("/", 1)[-1] for a in config.augmentations]
        if not names:
            raise InvalidInputError(
                f"contrastive pretraining needs augmentations for {config.modality!r}, and none are registered; "
                "install the modality's plugin with its augmentations, pass augmentations=[...] names, "
                "or use objective='masked'"
            )
        for n in names:
            registry.augmentation(config.modality, n)  # typed error naming the known ones
        self.names = names

    def head(self) -> nn.Module:
        return ProjectionHead(self.encoder.dim, self.config.projection_dim)

    def view(self, item: Any, rng: np.random.Generator) -> Any:
        """A random chain of augmentations: each one with probability 1/2, in random order, at least one."""
        order = [self.names[i] for i in rng.permutation(len(self.names))]
        chosen = [n for n in order if rng.random() < 0.5] or order[:1]
        return augment(self.registry, item, chosen, self.config.modality, rng=rng)

    def loss(self, head: nn.Module, items: Sequence[Any], rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        views = [self.view(x, rng) for x in items] + [self.view(x, rng) for x in items]
        pooled = forward(self.encoder, views).pooled()  # (2B, dim)
        z = head(pooled)  # (2B, projection_dim)
        return nt_xent(z[: len(items)], z[len(items) :], self.config.temperature)


class _Masked(_Objective):
    min_batch = 1

    def __init__(self, encoder: Encoder, config: PretrainConfig, registry: Registry, items: Sequence[Any]) -> None:
        super().__init__(encoder, config, registry, items)
        self.mask = masked_fn(encoder)
        probe = self._masked(items[: min(2, len(items))], torch.Generator().manual_seed(0))
        self.query_dim, self.target_dim = int(probe.queries.shape[-1]), int(probe.targets.shape[-1])

    def _masked(self, items: Sequence[Any], gen: torch.Generator) -> MaskedBatch:
        tensors = self.encoder.collate([self.encoder.prepare(x, i) for i, x in enumerate(items)])
        device = self.encoder.device
        with torch.no_grad():
            mb = self.mask({k: v.to(device) for k, v in tensors.items()}, self.config.mask_ratio, gen)
        return mb

    def head(self) -> nn.Module:
        return MaskedDecoder(self.encoder.dim, self.query_dim, self.target_dim)

    def loss(self, head: nn.Module, items: Sequence[Any], rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        mb = self._masked(items, gen)
        te = self.encoder(**mb.inputs)
        pred = head(te.tokens, te.mask, mb.queries, mb.token_index)  # (batch, M, F)
        keep = mb.target_mask.bool()
        pred, target = pred[keep], mb.targets[keep]  # (units, F)
        if mb.loss == "chamfer":
            return chamfer_distance(pred.reshape(pred.shape[0], -1, 3), target.reshape(target.shape[0], -1, 3))
        return nn.functional.mse_loss(pred, target)


OBJECTIVES: dict[str, type[_Objective]] = {"contrastive": _Contrastive, "masked": _Masked}


def pretrain(
    modality: str,
    items: Sequence[Any],
    *,
    encoder: str | Encoder | None = None,
    objective: str = "contrastive",
    registry: Registry | None = None,
    hub: Any = None,
    augmentations: Sequence[str] | None = None,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    temperature: float = 0.1,
    projection_dim: int = 64,
    mask_ratio: float = 0.5,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    encoder_options: dict[str, Any] | None = None,
) -> TrainResult:
    """Self-supervised pretraining of ``encoder`` (a registry name — a fresh instance is built — or an
    :class:`Encoder`, trained in place) on unlabelled ``items`` of ``modality``.

    ``objective="contrastive"``: SimCLR with random chains of ``augmentations``
    (default: every augmentation registered for the modality).
    ``objective="masked"``: hide ``mask_ratio`` of the patches / point groups and
    reconstruct them (encoders with ``masked_batch``: vision towers and point-cloud encoders).
    With ``out_dir``, a checkpoint is written after every epoch and ``resume=True``
    continues from it.  Returns the trained encoder in eval mode.  ``registry`` (or, as before, ``hub=``, a
    :class:`hub.Hub`) supplies encoders and augmentations; default: the process-wide registry.
    """
    registry = resolve_registry(registry, hub)
    if objective not in OBJECTIVES:
        raise InvalidOptionsError(f"unknown pretraining objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    items = list(items)
    enc, name = resolve_encoder(registry, modality, encoder, encoder_options)
    config = make_config(
        PretrainConfig, modality=modality, objective=objective, encoder=name, encoder_options=dict(encoder_options or {}),
        augmentations=None if augmentations is None else list(augmentations), epochs=epochs, batch_size=batch_size,
        lr=lr, weight_decay=weight_decay, temperature=temperature, projection_dim=projection_dim,
        mask_ratio=mask_ratio, seed=seed,
    )
    task_cls = OBJECTIVES[objective]
    if len(items) < getattr(task_cls, "min_batch", 1):
        raise InvalidInputError(f"{objective} pretraining needs at least {task_cls.min_batch} items; got {len(items)}")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        task = task_cls(enc, config, registry, items)
        head = task.head().to(enc.device)
    enc.requires_grad_(True)
    params = [p for p in [*enc.parameters(), *head.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    modules = {"encoder": enc, "head": head}
    root, start, losses, epoch_losses, checkpoint = resume_run(out_dir, resume, modules, optimizer, config)
    try:
        checkpoint = train_epochs(
            lambda batch, rng, gen: task.loss(head, [items[i] for i in batch], rng, gen),
            kind="pretrain", what=f"pretrain {modality} ({objective})", n_items=len(items), batch_size=batch_size,
            min_batch=task_cls.min_batch, start=start, epochs=epochs, seed=seed, lr=lr, train=[enc, head],
            optimizer=optimizer, root=root, modules=modules, config=config, losses=losses,
            epoch_losses=epoch_losses, progress=progress,
        ) or checkpoint
    finally:
        enc.eval()
        head.eval()
    return TrainResult(enc, head, losses, config, checkpoint, epoch_losses)
