"""Learning the shared space: self-supervised pretraining and alignment.

* :func:`pretrain` trains an encoder without labels, either **contrastive**
  (SimCLR: two augmented views of each item, registered augmentations chained
  at random, pooled tokens → a small MLP head → NT-Xent / InfoNCE over the 2B
  views) or **masked** (MAE / SimMIM style: hide a share of the input
  patches / point groups and reconstruct them with a light decoder).
* :func:`align` trains a projector from a modality's encoder into an anchor
  space, either **infonce** (CLIP-style symmetric InfoNCE against the frozen
  anchor encoder's pooled embeddings of the paired captions: one shared space
  with text as the anchor, as ImageBind does with images) or **caption**
  (LLaVA stage one: next-token loss on the caption through a frozen backbone,
  only the projector learns).

Both train in the caller's process with torch, show a tqdm bar with the loss,
and write resumable checkpoints as safetensors + JSON (never pickle):
``out_dir/checkpoint/`` holds ``<module>.safetensors`` per trained module,
``optimizer.safetensors`` (the optimizer's state tensors, flattened by name) and
``state.json`` (epoch, step, losses, config, seeds).  Every random choice
(order, views, masks, dropout) derives from ``(seed, epoch)``, so a run resumed
at an epoch boundary equals an uninterrupted one.

Masked pretraining needs to know how an encoder's input splits into patches:
an encoder may implement ``masked_batch(tensors, ratio, generator) ->
MaskedBatch`` itself, else :data:`MASKED_ADAPTERS` (keyed by encoder class
name) provides it — vision towers (``HFVisionEncoder``) and point-cloud
encoders (``PointCloudEncoder``) today.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from .backbone import Backbone
from .encoder import Encoder
from .errors import BundleError, ContextLengthError, HubError, InvalidInputError, InvalidOptionsError
from .projectors import PROJECTOR_KINDS, Projector, build_projector
from .tokens import TokenEmbeddings

if TYPE_CHECKING:  # pragma: no cover
    from ._hub import Hub

__all__ = [
    "PretrainConfig",
    "AlignConfig",
    "TrainResult",
    "AlignResult",
    "MaskedBatch",
    "AlignManifest",
    "ProjectionHead",
    "MaskedDecoder",
    "MASKED_ADAPTERS",
    "pretrain",
    "align",
    "nt_xent",
    "clip_loss",
    "chamfer_distance",
]

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
ALIGN_MANIFEST = "align.json"
ALIGN_FORMAT = 1


# -- configs ------------------------------------------------------------------------------


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


class AlignConfig(BaseModel):
    """What defines an alignment run (saved in ``state.json`` and ``align.json``)."""

    model_config = ConfigDict(extra="forbid")

    modality: str
    objective: Literal["infonce", "caption"] = "infonce"
    encoder: str | None = None
    encoder_options: dict[str, Any] = {}
    anchor: str = "text"
    anchor_encoder: str | None = None
    anchor_options: dict[str, Any] = {}
    backbone: str | None = Field(None, description="caption: backbone source (hub id, directory or preset)")
    projector: str = "mlp"
    projector_options: dict[str, Any] = {}
    train_encoder: bool = False
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    temperature: float = Field(0.07, gt=0, description="infonce: initial temperature (CLIP: 0.07)")
    learn_temperature: bool = Field(True, description="infonce: learn the logit scale (capped at 100, as CLIP)")
    seed: int = 0


def _config(model: type[BaseModel], **values: Any) -> Any:
    try:
        return model(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(options)'}: {e['msg']}" for e in exc.errors())
        raise InvalidOptionsError(f"invalid {model.__name__} options: {problems}") from None


# -- losses -------------------------------------------------------------------------------


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


# -- masked modelling: how each encoder family hides and reconstructs its input ---------


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


def _count(ratio: float, total: int) -> int:
    return min(total, max(1, round(ratio * total)))


def _mask_vision(encoder: Any, tensors: dict[str, torch.Tensor], ratio: float, gen: torch.Generator) -> MaskedBatch:
    """Vision towers (SimMIM-style): zero a share of the pixel patches, predict their normalized pixels.

    The tower keeps one token per patch in row-major order after its prefix (CLS,
    registers) tokens, so masked patch ``j`` is token ``prefix + j``.
    """
    pixels = tensors["pixel_values"]  # (batch, 3, H, W)
    p = int(encoder.patch_size)
    batch, channels = pixels.shape[:2]
    gh, gw = pixels.shape[-2] // p, pixels.shape[-1] // p
    n = gh * gw
    patches = pixels[:, :, : gh * p, : gw * p].reshape(batch, channels, gh, p, gw, p)
    patches = patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, n, p * p * channels)  # (batch, N, p*p*3)
    mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
    normed = (patches - mean) / (var + 1e-6).sqrt()  # MAE's norm_pix_loss target
    m = _count(ratio, n)
    masked = torch.rand(batch, n, generator=gen).argsort(1)[:, :m].to(pixels.device)  # (batch, M)
    hidden = torch.zeros(batch, n, dtype=torch.bool, device=pixels.device).scatter_(1, masked, True)
    grid = hidden.reshape(batch, 1, gh, 1, gw, 1).expand(batch, 1, gh, p, gw, p).reshape(batch, 1, gh * p, gw * p)
    inputs = pixels.clone()
    inputs[:, :, : gh * p, : gw * p] = inputs[:, :, : gh * p, : gw * p].masked_fill(grid, 0.0)
    rows = torch.div(masked, gw, rounding_mode="floor").float() / max(gh - 1, 1)
    cols = (masked % gw).float() / max(gw - 1, 1)
    offset = int(encoder.prefix_tokens) if getattr(encoder, "cls_token", "keep") == "keep" else 0
    return MaskedBatch(
        inputs={**tensors, "pixel_values": inputs},
        targets=normed.gather(1, masked.unsqueeze(-1).expand(-1, -1, normed.shape[-1])),  # (batch, M, p*p*3)
        target_mask=torch.ones(batch, m, dtype=torch.bool, device=pixels.device),
        queries=torch.stack([rows, cols], dim=-1),  # (batch, M, 2)
        token_index=masked + offset,
        loss="mse",
    )


def _mask_points(encoder: Any, tensors: dict[str, torch.Tensor], ratio: float, gen: torch.Generator) -> MaskedBatch:
    """Point clouds (Point-MAE-style): FPS + kNN groups as the encoder forms them; the points of a
    share of the groups are removed from the input, and the decoder predicts each masked group's
    neighbour xyz relative to its centre (Chamfer loss), queried by the centre."""
    from hub_3d._ops import farthest_point_sample, gather_points, knn

    cfg = encoder.config
    points, mask = tensors["points"], tensors["point_mask"].bool()  # (batch, N, 3 + C), (batch, N)
    xyz = points[..., :3]
    batch, groups, k = points.shape[0], int(cfg.num_groups), int(cfg.group_size)
    centres = gather_points(xyz, farthest_point_sample(xyz, mask, groups))  # (batch, G, 3)
    members = knn(centres, xyz, mask, k)  # (batch, G, k)
    rel = gather_points(xyz, members) - centres.unsqueeze(2)  # (batch, G, k, 3)
    m = min(groups - 1, _count(ratio, groups)) if groups > 1 else 1
    masked = torch.rand(batch, groups, generator=gen).argsort(1)[:, :m].to(points.device)  # (batch, M)
    removed_idx = members.gather(1, masked.unsqueeze(-1).expand(-1, -1, k)).reshape(batch, -1)  # (batch, M*k)
    removed = torch.zeros_like(mask).scatter_(1, removed_idx, True) & mask  # (batch, N)
    keep = mask & ~removed
    need = int(cfg.min_points)
    for b in range(batch):  # the encoder needs min_points real points: give back the first removed ones
        short = need - int(keep[b].sum())
        if short > 0:
            keep[b, removed[b].nonzero().flatten()[:short]] = True
    inputs = points.masked_fill(~keep.unsqueeze(-1), 0.0)
    take = masked.unsqueeze(-1)
    return MaskedBatch(
        inputs={**tensors, "points": inputs, "point_mask": keep},
        targets=rel.gather(1, take.unsqueeze(-1).expand(-1, -1, k, 3)).reshape(batch, m, k * 3),  # (batch, M, k*3)
        target_mask=torch.ones(batch, m, dtype=torch.bool, device=points.device),
        queries=centres.gather(1, take.expand(-1, -1, 3)),  # (batch, M, 3)
        token_index=None,
        loss="chamfer",
    )


#: encoder class name → masked-modelling adapter ``(encoder, tensors, ratio, generator) -> MaskedBatch``
MASKED_ADAPTERS: dict[str, Callable[[Any, dict[str, torch.Tensor], float, torch.Generator], MaskedBatch]] = {
    "HFVisionEncoder": _mask_vision,
    "PointCloudEncoder": _mask_points,
}


def _masked_fn(encoder: Encoder) -> Callable[[dict[str, torch.Tensor], float, torch.Generator], MaskedBatch]:
    hook = getattr(encoder, "masked_batch", None)
    if callable(hook):
        return hook
    for cls in type(encoder).__mro__:
        if cls.__name__ in MASKED_ADAPTERS:
            adapter = MASKED_ADAPTERS[cls.__name__]
            return lambda tensors, ratio, gen: adapter(encoder, tensors, ratio, gen)
    raise InvalidInputError(
        f"masked pretraining does not know how to mask the input of encoder {encoder.name!r} "
        f"({type(encoder).__name__}, modality {encoder.modality!r}); supported encoder classes: "
        f"{', '.join(MASKED_ADAPTERS)} (image vision towers, 3d point clouds). Use objective='contrastive', "
        "or give the encoder a masked_batch(tensors, ratio, generator) -> hub.training.MaskedBatch method"
    )


# -- heads --------------------------------------------------------------------------------


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


class _LogitScale(nn.Module):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def forward(self) -> torch.Tensor:
        return self.value.clamp(max=math.log(100.0)).exp()


# -- checkpoints: safetensors + JSON only ---------------------------------------------------


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            name = f"state.{idx}.{key}"
            if isinstance(value, torch.Tensor):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                scalars[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _save_checkpoint(root: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> Path:
    """Write ``root/checkpoint`` atomically (a temporary folder renamed over the old one)."""
    from safetensors.torch import save_file, save_model

    final, tmp = root / CHECKPOINT_DIR, root / f"{CHECKPOINT_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        save_model(module, str(tmp / f"{name}.safetensors"), metadata={"format": "pt"})
    tensors, meta = _flatten_optimizer(optimizer)
    save_file(tensors, str(tmp / OPTIMIZER_NAME), metadata={"format": "pt"})
    (tmp / STATE_NAME).write_text(json.dumps({**state, "optimizer": meta}, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def _load_checkpoint(root: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer, config: BaseModel) -> dict[str, Any] | None:
    """Restore modules and optimizer from ``root/checkpoint``; ``None`` when there is none."""
    from safetensors.torch import load_file, load_model

    path = root / CHECKPOINT_DIR
    if not (path / STATE_NAME).is_file():
        return None
    try:
        state = json.loads((path / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"checkpoint {str(path)!r}: {STATE_NAME} is not valid JSON ({exc}); pass resume=False") from None
    saved = {k: v for k, v in state.get("config", {}).items() if k != "epochs"}
    now = {k: v for k, v in json.loads(config.model_dump_json()).items() if k != "epochs"}
    if saved != now:
        diff = {k: (saved.get(k), now.get(k)) for k in set(saved) | set(now) if saved.get(k) != now.get(k)}
        raise InvalidOptionsError(
            f"checkpoint {str(path)!r} was written by a different run: "
            + "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
            + ". Pass resume=False to start over, or another out_dir"
        )
    try:
        for name, module in modules.items():
            load_model(module, str(path / f"{name}.safetensors"))
        optimizer.load_state_dict(_unflatten_optimizer(load_file(str(path / OPTIMIZER_NAME)), state["optimizer"]))
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise BundleError(f"checkpoint {str(path)!r} cannot be restored ({type(exc).__name__}: {exc}); pass resume=False") from None
    return state


# -- shared helpers -------------------------------------------------------------------------


def _resolve_hub(hub: "Hub | None") -> "Hub":
    from ._hub import Hub

    return hub or Hub()


def _resolve_encoder(hub: "Hub", modality: str, encoder: str | Encoder | None, options: dict[str, Any] | None) -> tuple[Encoder, str | None]:
    """A fresh encoder (never the hub's cached instance, which training would change) and its name."""
    hub.registry.modality(modality)  # typed error for an unknown modality
    if isinstance(encoder, Encoder):
        if options:
            raise InvalidOptionsError("encoder_options apply to an encoder given by name, not to an Encoder instance")
        enc, name = encoder, None
    else:
        name = encoder or hub.registry.modality(modality).default_encoder
        enc = hub.registry.create_encoder(name, **dict(options or {}))
    if enc.modality != modality:
        raise InvalidInputError(
            f"encoder {enc.name!r} encodes {enc.modality!r}, not {modality!r}; "
            f"{modality} encoders: {', '.join(hub.encoders(modality=modality))}"
        )
    return enc, name


def _forward(encoder: Encoder, items: Sequence[Any]) -> TokenEmbeddings:
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


# -- pretraining -------------------------------------------------------------------------------


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

    def __init__(self, encoder: Encoder, config: PretrainConfig, hub: "Hub", items: Sequence[Any]) -> None:
        self.encoder, self.config, self.hub = encoder, config, hub

    def head(self) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, head: nn.Module, items: Sequence[Any], rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract


class _Contrastive(_Objective):
    min_batch = 2

    def __init__(self, encoder: Encoder, config: PretrainConfig, hub: "Hub", items: Sequence[Any]) -> None:
        super().__init__(encoder, config, hub, items)
        registered = [k.split("/", 1)[1] for k in hub.augmentations(config.modality)]
        names = registered if config.augmentations is None else [a.split("/", 1)[-1] for a in config.augmentations]
        if not names:
            raise InvalidInputError(
                f"contrastive pretraining needs augmentations for {config.modality!r}, and none are registered; "
                "install the modality's plugin with its augmentations, pass augmentations=[...] names, "
                "or use objective='masked'"
            )
        for n in names:
            hub.registry.augmentation(config.modality, n)  # typed error naming the known ones
        self.names = names

    def head(self) -> nn.Module:
        return ProjectionHead(self.encoder.dim, self.config.projection_dim)

    def view(self, item: Any, rng: np.random.Generator) -> Any:
        """A random chain of augmentations: each one with probability 1/2, in random order, at least one."""
        order = [self.names[i] for i in rng.permutation(len(self.names))]
        chosen = [n for n in order if rng.random() < 0.5] or order[:1]
        return self.hub.augment(item, chosen, self.config.modality, rng=rng)

    def loss(self, head: nn.Module, items: Sequence[Any], rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        views = [self.view(x, rng) for x in items] + [self.view(x, rng) for x in items]
        pooled = _forward(self.encoder, views).pooled()  # (2B, dim)
        z = head(pooled)  # (2B, projection_dim)
        return nt_xent(z[: len(items)], z[len(items) :], self.config.temperature)


class _Masked(_Objective):
    min_batch = 1

    def __init__(self, encoder: Encoder, config: PretrainConfig, hub: "Hub", items: Sequence[Any]) -> None:
        super().__init__(encoder, config, hub, items)
        self.mask = _masked_fn(encoder)
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


def _train_epochs(
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
                checkpoint = _save_checkpoint(root, modules, optimizer, {
                    "kind": kind, "epoch": epoch + 1, "step": len(losses), "losses": losses,
                    "epoch_losses": epoch_losses, "config": json.loads(config.model_dump_json()),
                    "seeds": {"seed": seed, "epoch_seed": epoch_seed},
                })
    return checkpoint


def pretrain(
    modality: str,
    items: Sequence[Any],
    *,
    encoder: str | Encoder | None = None,
    objective: str = "contrastive",
    hub: "Hub | None" = None,
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
    reconstruct them (vision towers and point-cloud encoders; see :data:`MASKED_ADAPTERS`).
    With ``out_dir``, a checkpoint is written after every epoch and ``resume=True``
    continues from it.  Returns the trained encoder in eval mode.
    """
    hub = _resolve_hub(hub)
    if objective not in OBJECTIVES:
        raise InvalidOptionsError(f"unknown pretraining objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    items = list(items)
    enc, name = _resolve_encoder(hub, modality, encoder, encoder_options)
    config = _config(
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
        task = task_cls(enc, config, hub, items)
        head = task.head().to(enc.device)
    enc.requires_grad_(True)
    params = [p for p in [*enc.parameters(), *head.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    modules = {"encoder": enc, "head": head}
    root = Path(out_dir) if out_dir is not None else None
    losses: list[float] = []
    epoch_losses: list[float] = []
    start = 0
    if root is not None and resume:
        state = _load_checkpoint(root, modules, optimizer, config)
        if state is not None:
            start, losses, epoch_losses = int(state["epoch"]), list(state["losses"]), list(state["epoch_losses"])

    checkpoint = root / CHECKPOINT_DIR if root is not None and (root / CHECKPOINT_DIR).is_dir() else None
    try:
        checkpoint = _train_epochs(
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


# -- alignment ---------------------------------------------------------------------------------


class AlignManifest(BaseModel):
    """``align.json`` beside an aligned projector (``projector.json`` + ``projector.safetensors``)."""

    model_config = ConfigDict(extra="forbid")

    format: int = ALIGN_FORMAT
    kind: str = "aligned-projector"
    modality: str
    objective: Literal["infonce", "caption"]
    space: str = Field(description="the space the projector maps into")
    encoder: str = Field(description="registry name that rebuilds the encoder")
    encoder_options: dict[str, Any] = {}
    encoder_dir: str | None = Field(None, description="encoder weights saved beside (loaded as weights=...)")
    anchor: str
    anchor_encoder: str | None = None
    anchor_options: dict[str, Any] = {}
    backbone: str | None = None
    config: dict[str, Any] = {}


@dataclass
class AlignResult:
    """An aligned projector (and the encoder it reads), the loss of every step, and how to save it.

    ``save(dir)`` writes ``projector.json`` + ``projector.safetensors`` at the top
    of ``dir`` (so ``lm.plug(modality, encoder=..., projector=dir)`` takes it as
    is), ``align.json``, and the encoder under ``dir/encoder`` when it was trained
    or given as an instance.
    """

    modality: str
    objective: str
    encoder: Encoder
    projector: Projector
    config: AlignConfig
    losses: list[float]
    space: str
    anchor_encoder: Encoder | None = None
    backbone: Backbone | None = None
    encoder_name: str | None = None
    checkpoint: Path | None = None
    directory: Path | None = None
    epoch_losses: list[float] = field(default_factory=list)

    @torch.no_grad()
    def embed_aligned(self, items: Sequence[Any], batch_size: int = 64) -> torch.Tensor:
        """Pooled, L2-normalized embeddings of ``items`` in the aligned space: (items, out_dim)."""
        self.encoder.eval()
        self.projector.eval()
        out = []
        for i in range(0, len(items), batch_size):
            te = _forward(self.encoder, list(items[i : i + batch_size]))
            out.append(self.projector.project(te, self.space).pooled(normalize=True))
        return torch.cat(out)

    @torch.no_grad()
    def embed_anchor(self, texts: Sequence[Any]) -> torch.Tensor:
        """The anchor encoder's pooled, normalized embeddings (infonce only): (items, out_dim)."""
        if self.anchor_encoder is None:
            raise InvalidInputError(f"a {self.objective!r} alignment has no anchor encoder; its space is {self.space!r}")
        return self.anchor_encoder.encode(list(texts)).pooled(normalize=True)

    def save(self, directory: str | os.PathLike) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.projector.save(out)
        enc_name, enc_options, enc_dir = self.encoder_name, dict(self.config.encoder_options), None
        if self.config.train_encoder or enc_name is None:
            reload_as = self.encoder.reload_as or self.encoder.name
            if not hasattr(self.encoder, "save_pretrained") or reload_as not in _resolve_hub(None).registry.list_encoders():
                raise BundleError(
                    f"encoder {self.encoder.name!r} has no save_pretrained() reloadable by a registered encoder "
                    "(Encoder.reload_as); align it by registry name with train_encoder=False"
                )
            self.encoder.save_pretrained(str(out / "encoder"))
            enc_name, enc_options, enc_dir = reload_as, self.encoder.reload_options(), "encoder"
        anchor_name = getattr(self.anchor_encoder, "name", None) if self.anchor_encoder is not None else None
        manifest = AlignManifest(
            modality=self.modality, objective=self.config.objective, space=self.space, encoder=enc_name,
            encoder_options=enc_options, encoder_dir=enc_dir, anchor=self.config.anchor,
            anchor_encoder=anchor_name, anchor_options=dict(self.config.anchor_options),
            backbone=self.config.backbone, config=json.loads(self.config.model_dump_json()),
        )
        (out / ALIGN_MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
        self.directory = out
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike, hub: "Hub | None" = None) -> "AlignResult":
        """Reload a directory written by :meth:`save` (the backbone of a caption alignment is not loaded)."""
        hub = _resolve_hub(hub)
        from ._manifest import read_manifest

        root = Path(directory)
        manifest = read_manifest(root / ALIGN_MANIFEST, AlignManifest, "an aligned projector", ALIGN_FORMAT)
        options = dict(manifest.encoder_options)
        if manifest.encoder_dir:
            options["weights"] = str(root / manifest.encoder_dir)
        encoder = hub.registry.create_encoder(manifest.encoder, **options).eval()
        anchor = None
        if manifest.anchor_encoder:
            anchor = hub.registry.create_encoder(manifest.anchor_encoder, **manifest.anchor_options).eval()
        config = AlignConfig(**manifest.config)
        return cls(manifest.modality, manifest.objective, encoder, Projector.load(root), config, [], manifest.space,
                   anchor, None, manifest.encoder, directory=root)


def _pairs(pairs: Sequence[Any]) -> tuple[list[Any], list[str]]:
    items, captions = [], []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not isinstance(pair[1], str) or not pair[1].strip():
            raise InvalidInputError(f"pair {i} must be (item, caption str) with a non-empty caption; got {type(pair).__name__}")
        items.append(pair[0])
        captions.append(pair[1])
    if len(items) < 2:
        raise InvalidInputError(f"align needs at least 2 pairs; got {len(items)}")
    return items, captions


class _Aligner:
    """One alignment objective: its target width and the loss of a batch of cached tokens."""

    space: str
    out_dim: int

    def loss(self, projected: TokenEmbeddings, batch: list[int]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def modules(self) -> dict[str, nn.Module]:
        return {}


class _InfoNCE(_Aligner):
    def __init__(self, hub: "Hub", config: AlignConfig, captions: list[str], anchor: str | Encoder | None) -> None:
        self.encoder, _ = _resolve_encoder(hub, config.anchor, anchor, config.anchor_options)
        self.encoder.eval().requires_grad_(False)
        unique = sorted(set(captions))
        self.labels = torch.tensor([unique.index(c) for c in captions])  # (pairs,)
        with torch.no_grad():
            vecs = [self.encoder.encode(unique[i : i + 64]).pooled(normalize=True).clone() for i in range(0, len(unique), 64)]
        self.anchors = torch.cat(vecs)  # (captions, anchor_dim)
        self.out_dim = int(self.anchors.shape[-1])
        self.space = self.encoder.space
        self.scale = _LogitScale(config.temperature)
        self.scale.value.requires_grad_(config.learn_temperature)

    def modules(self) -> dict[str, nn.Module]:
        return {"logit_scale": self.scale}

    def loss(self, projected: TokenEmbeddings, batch: list[int]) -> torch.Tensor:
        x = projected.pooled(normalize=True)  # (batch, anchor_dim)
        labels = self.labels[batch]
        rows, inverse = labels.unique(return_inverse=True)
        anchors = self.anchors[rows].to(x.device)  # (captions in batch, anchor_dim)
        return clip_loss(x, anchors, inverse.to(x.device), self.scale())


class _Caption(_Aligner):
    def __init__(self, hub: "Hub", config: AlignConfig, captions: list[str], backbone: Any) -> None:
        from .multimodal import MultimodalLM

        if backbone is None:
            raise InvalidOptionsError("objective='caption' needs backbone= (a backbone source such as 'tiny-llama', "
                                      "a Backbone or a MultimodalLM)")
        if isinstance(backbone, MultimodalLM):
            backbone = backbone.backbone
        elif not isinstance(backbone, Backbone):
            backbone = hub.attach(str(backbone)).backbone
        self.backbone = backbone.eval()
        self.frozen = [(p, p.requires_grad) for p in backbone.parameters()]
        backbone.requires_grad_(False)
        eos = backbone.eos_token_id
        self.prefix = list(backbone.prefix_ids())
        self.ids = [backbone.tokenize(c) + ([int(eos)] if eos is not None else []) for c in captions]
        self.out_dim = int(backbone.hidden_size)
        self.space = backbone.space

    def restore(self) -> None:
        for p, flag in self.frozen:
            p.requires_grad_(flag)

    def loss(self, projected: TokenEmbeddings, batch: list[int]) -> torch.Tensor:
        bb = self.backbone
        device = next(iter(bb.parameters())).device
        dtype = next(iter(bb.parameters())).dtype
        rows, labels = [], []
        for j, i in enumerate(batch):
            item = projected[j].to(device=device, dtype=dtype)  # (n, hidden), with grad
            ids = self.ids[i]
            with torch.no_grad():
                text = bb.embed_ids(torch.tensor([self.prefix + ids], device=device))[0]  # (p + c, hidden)
            p = len(self.prefix)
            rows.append(torch.cat([text[:p], item, text[p:]]))  # prefix | item | caption
            labels.append([-100] * (p + item.shape[0]) + ids)
        width = max(r.shape[0] for r in rows)
        if width > bb.max_context:
            raise ContextLengthError(
                f"a caption pair composes to {width} tokens, over the backbone's context window of {bb.max_context}; "
                "use shorter captions or a pool / resampler projector"
            )
        embeds = torch.stack([nn.functional.pad(r, (0, 0, 0, width - r.shape[0])) for r in rows])  # (batch, seq, hidden)
        attn = torch.tensor([[1] * r.shape[0] + [0] * (width - r.shape[0]) for r in rows], device=device)
        target = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels], device=device)  # (batch, seq)
        position_ids = torch.arange(width, device=device).expand(len(rows), -1)
        logits = bb(embeds, attn, position_ids)  # (batch, seq, vocab)
        return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target[:, 1:].reshape(-1), ignore_index=-100)


def align(
    modality: str,
    pairs: Sequence[tuple[Any, str]],
    *,
    encoder: str | Encoder | None = None,
    anchor: str = "text",
    anchor_encoder: str | Encoder | None = None,
    anchor_options: dict[str, Any] | None = None,
    projector: str = "mlp",
    projector_options: dict[str, Any] | None = None,
    objective: str = "infonce",
    backbone: Any = None,
    train_encoder: bool = False,
    hub: "Hub | None" = None,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    temperature: float = 0.07,
    learn_temperature: bool = True,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    encoder_options: dict[str, Any] | None = None,
) -> AlignResult:
    """Train a ``projector`` from ``modality``'s encoder into a shared space on ``(item, caption)`` pairs.

    ``objective="infonce"``: the projected, pooled tokens meet the frozen anchor
    encoder's pooled embeddings of the captions (``anchor_encoder`` defaults to
    the anchor modality's default encoder), with CLIP's symmetric InfoNCE.
    ``objective="caption"``: LLaVA stage one — next-token loss on the caption
    after the projected item, through the frozen ``backbone``.  The encoder is
    frozen (its tokens computed once) unless ``train_encoder``.  With
    ``out_dir``: checkpoints every epoch (resumable) and the result saved there.
    """
    hub = _resolve_hub(hub)
    items, captions = _pairs(pairs)
    if projector not in PROJECTOR_KINDS:
        raise InvalidOptionsError(f"unknown projector kind {projector!r}; use one of {', '.join(PROJECTOR_KINDS)}")
    enc, name = _resolve_encoder(hub, modality, encoder, encoder_options)
    backbone_ref = backbone if isinstance(backbone, str) else None
    config = _config(
        AlignConfig, modality=modality, objective=objective, encoder=name, encoder_options=dict(encoder_options or {}),
        anchor=anchor, anchor_encoder=anchor_encoder if isinstance(anchor_encoder, str) else None,
        anchor_options=dict(anchor_options or {}), backbone=backbone_ref, projector=projector,
        projector_options=dict(projector_options or {}), train_encoder=train_encoder, epochs=epochs,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, temperature=temperature,
        learn_temperature=learn_temperature, seed=seed,
    )
    aligners: dict[str, Callable[[], _Aligner]] = {
        "infonce": lambda: _InfoNCE(hub, config, captions, anchor_encoder),
        "caption": lambda: _Caption(hub, config, captions, backbone),
    }
    task = aligners[objective]()
    proj = build_projector(projector, enc.dim, task.out_dim, **{"seed": seed, **config.projector_options}).to(enc.device)

    cached: list[torch.Tensor] | None = None
    if not train_encoder:
        enc.eval().requires_grad_(False)
        cached = []
        with torch.no_grad():
            for i in range(0, len(items), 64):
                te = _forward(enc, items[i : i + 64])
                cached.extend(t.clone() for t in te)  # (n_i, dim) each
    else:
        enc.requires_grad_(True)

    modules: dict[str, nn.Module] = {"projector": proj, **task.modules()}
    if train_encoder:
        modules["encoder"] = enc
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    root = Path(out_dir) if out_dir is not None else None
    losses: list[float] = []
    epoch_losses: list[float] = []
    start = 0
    if root is not None and resume:
        state = _load_checkpoint(root, modules, optimizer, config)
        if state is not None:
            start, losses, epoch_losses = int(state["epoch"]), list(state["losses"]), list(state["epoch_losses"])
    checkpoint = root / CHECKPOINT_DIR if root is not None and (root / CHECKPOINT_DIR).is_dir() else None

    def batch_tokens(batch: list[int]) -> TokenEmbeddings:
        if cached is None:
            return _forward(enc, [items[i] for i in batch])
        return TokenEmbeddings.from_list([cached[i] for i in batch], modality=modality, space=enc.space, pooling=enc.pooling)

    try:
        checkpoint = _train_epochs(
            lambda batch, rng, gen: task.loss(proj.project(batch_tokens(batch), task.space), batch),
            kind="align", what=f"align {modality} ({objective})", n_items=len(items), batch_size=batch_size,
            min_batch=2, start=start, epochs=epochs, seed=seed, lr=lr, train=[proj, enc] if train_encoder else [proj],
            optimizer=optimizer, root=root, modules=modules, config=config, losses=losses,
            epoch_losses=epoch_losses, progress=progress,
        ) or checkpoint
    finally:
        proj.eval()
        enc.eval()
        if isinstance(task, _Caption):
            task.restore()
    result = AlignResult(
        modality, objective, enc, proj, config, losses, task.space,
        anchor_encoder=getattr(task, "encoder", None), backbone=getattr(task, "backbone", None),
        encoder_name=name, checkpoint=checkpoint, epoch_losses=epoch_losses,
    )
    if root is not None:
        result.save(root)
    return result
