"""The training loop the learners share: seeded epochs, batches, progress, checkpoints, and encoder helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from .._registry import Registry, resolve_registry
from ..encoder import Encoder
from ..errors import HubError, InvalidInputError, InvalidOptionsError
from ..tokens import TokenEmbeddings
from .checkpoints import save_checkpoint

__all__ = ["make_config", "resolve_registry", "resolve_encoder", "forward", "train_epochs", "resume_run"]


def make_config(model: type[BaseModel], **values: Any) -> Any:
    try:
        return model(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(options)'}: {e['msg']}" for e in exc.errors())
        raise InvalidOptionsError(f"invalid {model.__name__} options: {problems}") from None



def resolve_encoder(registry: Registry, modality: str, encoder: str | Encoder | None,
                    options: dict[str, Any] | None) -> tuple[Encoder, str | None]:
    """A fresh encoder (never a hub's cached instance, which training would change) and its name."""
    registry.modality(modality)  # typed error for an unknown modality
    if isinstance(encoder, Encoder):
        if options:
            raise InvalidOptionsError("encoder_options apply to an encoder given by name, not to an Encoder instance")
        enc, name = encoder, None
    else:
        name = encoder or registry.modality(modality).default_encoder
        enc = registry.create_encoder(name, **dict(options or {}))
    if enc.modality != modality:
        raise InvalidInputError(
            f"encoder {enc.name!r} encodes {enc.modality!r}, not {modality!r}; "
            f"{modality} encoders: {', '.join(registry.list_encoders(modality=modality))}"
        )
    return enc, name


def forward(encoder: Encoder, items: Sequence[Any]) -> TokenEmbeddings:
    """``encoder(**collate(prepare(...)))`` on the encoder's device, with autograd as the caller has it."""
    device = encoder.device
    tensors = encoder.collate([encoder.prepare(x, i) for i, x in enumerate(items)])
    return encoder(**{k: v.to(device) for k, v in tensors.items()})


def _batches(order: Sequence[int], size: int, min_size: int = 1) -> list[list[int]]:
    """Consecutive batches of ``order``; a trailing batch under ``min_size`` joins the one before."""
    out = [list(order[i : i + size]) for i in range(0, len(order), size)]
    if len(out) > 1 and len(out[-1]) < min_size:
        out[-2].extend(out.pop())
    return out


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, epoch]).integers(2**62))


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)



def train_epochs(
    step: Callable[[list[int], np.random.Generator, torch.Generator], torch.Tensor],
    *,
    kind: str,
    what: str,
    n_items: int,
    batch_size: int,
    min_batch: int,
    start: int,
    epochs: int,
    seed: int,
    lr: float,
    train: Sequence[torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    root: Path | None,
    modules: dict[str, torch.nn.Module],
    config: BaseModel,
    losses: list[float],
    epoch_losses: list[float],
    progress: bool,
) -> Path | None:
    """Epochs ``start..epochs-1`` of ``step(batch_indices, rng, gen) -> loss``; every random draw comes from
    ``(seed, epoch)`` so a resumed run equals an uninterrupted one.  Appends to ``losses`` / ``epoch_losses``;
    returns the last checkpoint written (``None`` without ``root``)."""
    checkpoint = None
    with torch.random.fork_rng(devices=[]):
        for epoch in range(start, epochs):
            epoch_seed = _epoch_seed(seed, epoch)
            torch.manual_seed(epoch_seed)  # dropout and any other global-RNG draw of this epoch
            rng = np.random.default_rng(epoch_seed)
            gen = torch.Generator().manual_seed(epoch_seed)
            batches = _batches(rng.permutation(n_items).tolist(), batch_size, min_batch)
            for module in train:
                module.train()
            bar = _progress(len(batches), f"{what} epoch {epoch + 1}/{epochs}", progress)
            run: list[float] = []
            for batch in batches:
                loss = step(batch, rng, gen)
                if not torch.isfinite(loss):
                    raise HubError(f"{kind} loss became {loss.item()} at epoch {epoch + 1}; lower lr (now {lr})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                run.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{run[-1]:.4f}")
            bar.close()
            losses.extend(run)
            epoch_losses.append(float(np.mean(run)))
            if root is not None:
                checkpoint = save_checkpoint(root, modules, optimizer, {
                    "kind": kind, "epoch": epoch + 1, "step": len(losses), "losses": losses,
                    "epoch_losses": epoch_losses, "config": json.loads(config.model_dump_json()),
                    "seeds": {"seed": seed, "epoch_seed": epoch_seed},
                })
    return checkpoint


def resume_run(out_dir: Any, resume: bool, modules: dict[str, Any], optimizer: Any,
               config: BaseModel) -> tuple[Path | None, int, list[float], list[float], Path | None]:
    """``(root, start epoch, losses, epoch losses, existing checkpoint)`` of a run writing to ``out_dir``:
    restored from ``out_dir/checkpoint`` when ``resume`` and one exists (it must match ``config``)."""
    from .checkpoints import CHECKPOINT_DIR, load_checkpoint

    root = Path(out_dir) if out_dir is not None else None
    start, losses, epoch_losses = 0, [], []
    if root is not None and resume:
        state = load_checkpoint(root, modules, optimizer, config)
        if state is not None:
            start, losses, epoch_losses = int(state["epoch"]), list(state["losses"]), list(state["epoch_losses"])
    checkpoint = root / CHECKPOINT_DIR if root is not None and (root / CHECKPOINT_DIR).is_dir() else None
    return root, start, losses, epoch_losses, checkpoint
