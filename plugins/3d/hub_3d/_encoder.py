"""The point-cloud encoder behind every ``hub_3d`` preset: options, presets, save/load."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hub import Encoder, TokenEmbeddings
from hub.errors import InvalidOptionsError, WeightsNotFoundError
from hub.processor import Processor

if TYPE_CHECKING:  # pragma: no cover
    from hub.train.masked import MaskedBatch

from ._ops import farthest_point_sample, gather_points, knn
from ._io import FILE_SUFFIXES, BadItem, canonical_points, read_points
from ._models import ARCHITECTURES

__all__ = ["PointCloudEncoder", "PointBertOptions", "PointNet2Options", "PRESETS", "Preset", "build_encoder", "FORMAT"]

#: ``format`` field written to config.json by ``save_pretrained``
FORMAT = "modality-hub-3d"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: options that weights do not fix (they may differ from the saved config)
RUNTIME_FIELDS = frozenset({"num_points", "seed"})


class PointBertOptions(BaseModel):
    """Options of the Point-BERT-style presets; unset ones come from the preset (or from ``weights``)."""

    model_config = ConfigDict(extra="forbid")

    weights: str | None = Field(None, description="local directory from save_pretrained (config.json + model.safetensors)")
    num_points: int | None = Field(None, ge=1, description="points per cloud; larger clouds are subsampled (seeded)")
    num_groups: int | None = Field(None, ge=1, description="tokens per item (FPS centres)")
    group_size: int | None = Field(None, ge=1, description="kNN neighbours per group")
    channels: int | None = Field(None, ge=0, description="extra per-point channels after xyz (3 for normals/RGB)")
    dim: int | None = Field(None, ge=4, description="token width")
    depth: int | None = Field(None, ge=1, description="transformer blocks")
    heads: int | None = Field(None, ge=1, description="attention heads")
    seed: int | None = Field(None, description="seed of the random init, subsampling and mesh sampling")


class PointNet2Options(BaseModel):
    """Options of the PointNet++-style presets; unset ones come from the preset (or from ``weights``)."""

    model_config = ConfigDict(extra="forbid")

    weights: str | None = Field(None, description="local directory from save_pretrained (config.json + model.safetensors)")
    num_points: int | None = Field(None, ge=1, description="points per cloud; larger clouds are subsampled (seeded)")
    num_groups: int | None = Field(None, ge=1, description="tokens per item (centres of the last level)")
    group_size: int | None = Field(None, ge=1, description="kNN neighbours per group")
    channels: int | None = Field(None, ge=0, description="extra per-point channels after xyz (3 for normals/RGB)")
    dim: int | None = Field(None, ge=4, description="token width")
    depth: int | None = Field(None, ge=1, le=4, description="set-abstraction levels")
    seed: int | None = Field(None, description="seed of the random init, subsampling and mesh sampling")


@dataclass(frozen=True)
class Preset:
    """A named configuration of one architecture."""

    architecture: str
    options: type[BaseModel]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_TINY = dict(num_points=256, num_groups=16, group_size=16, dim=32, depth=2)

PRESETS: dict[str, Preset] = {
    "point-bert": Preset(
        "point-bert", PointBertOptions, {},
        "Point-BERT-style grouped transformer (random init): 1024 points, 64 tokens (FPS + 32-NN groups), "
        "384-d, 12 blocks, 6 heads",
    ),
    "tiny-point-bert": Preset(
        "point-bert", PointBertOptions, {**_TINY, "heads": 2},
        "untrained tiny Point-BERT-style encoder (tests, demos): 256 points, 16 tokens, 32-d, 2 blocks",
    ),
    "pointnet2": Preset(
        "pointnet2", PointNet2Options, {},
        "PointNet++-style set abstraction (random init, kNN groups): 1024 points → 128 → 64 tokens, 256-d",
    ),
    "tiny-pointnet2": Preset(
        "pointnet2", PointNet2Options, dict(_TINY),
        "untrained tiny PointNet++-style encoder (tests, demos): 256 points → 32 → 16 tokens, 32-d",
    ),
}


def _load_weights(weights: str, load_state: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """config.json and model.safetensors from a save_pretrained directory (safetensors only); without
    ``load_state`` only config.json is read (a processor needs no tensors)."""
    from safetensors.torch import load_file

    path = Path(weights).expanduser()
    if not path.is_dir():
        raise WeightsNotFoundError(
            f"3d weights {weights!r}: expected a local directory written by save_pretrained "
            f"(holding {CONFIG_NAME} and {WEIGHTS_NAME}); hub ids are not supported for 3d encoders"
        )
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (config_file, weights_file) if load_state else (config_file,):
        if not f.is_file():
            raise WeightsNotFoundError(f"3d weights in {str(path)!r}: missing {f.name} (pickled weights are refused)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsNotFoundError(f"3d weights in {str(path)!r}: {CONFIG_NAME} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.pop("format", None) != FORMAT:
        raise WeightsNotFoundError(f"3d weights in {str(path)!r}: {CONFIG_NAME} was not written by hub_3d save_pretrained")
    if not load_state:
        return config, None
    try:
        state = load_file(str(weights_file))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise WeightsNotFoundError(f"3d weights in {str(path)!r}: cannot read {WEIGHTS_NAME} ({exc})") from None
    return config, state


def _resolve(preset: str, options: dict[str, Any], load_state: bool) -> tuple[Any, dict[str, torch.Tensor] | None, Any]:
    """The config of ``preset`` with ``options`` (and, with ``load_state``, the weights of ``weights=DIR``)."""
    spec = PRESETS[preset]
    config_cls, _ = ARCHITECTURES[spec.architecture]
    weights = options.pop("weights", None)
    given = {k: v for k, v in options.items() if v is not None}
    state = None
    if weights:
        saved, state = _load_weights(weights, load_state)
        if saved.get("architecture") != spec.architecture:
            raise InvalidOptionsError(
                f"weights in {weights!r} are for a {saved.get('architecture')!r} encoder, not {spec.architecture!r}; "
                f"use a {saved.get('architecture')} preset"
            )
        clash = {k: (v, saved.get(k)) for k, v in given.items() if k not in RUNTIME_FIELDS and saved.get(k) != v}
        if clash:
            raise InvalidOptionsError(
                f"options {', '.join(f'{k}={v!r} (weights have {s!r})' for k, (v, s) in clash.items())} "
                f"contradict the weights in {weights!r}; only {sorted(RUNTIME_FIELDS)} may change"
            )
        values = {**saved, **given}
    else:
        values = {**spec.defaults, **given}
    try:
        config = config_cls(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(options)'}: {e['msg']}" for e in exc.errors())
        raise InvalidOptionsError(f"invalid options for 3d encoder {preset!r}: {problems}") from None
    return config, state, weights


def build_encoder(preset: str, **options: Any) -> "PointCloudEncoder":
    """The encoder of ``preset`` with ``options`` (``None`` values fall back to the preset or to ``weights``).

    With ``weights=DIR`` the architecture comes from ``DIR/config.json``; only
    ``num_points`` and ``seed`` may differ from it.
    """
    config, state, weights = _resolve(preset, options, load_state=True)
    return PointCloudEncoder(config, state=state, weights=weights)


def build_processor(preset: str, **options: Any) -> "PointsProcessor":
    """The processor of ``preset`` with ``options``: its config alone (``weights=DIR`` reads only
    ``DIR/config.json``; no tensors load)."""
    config, _, _ = _resolve(preset, options, load_state=False)
    return PointsProcessor(config)


class PointsProcessor(Processor):
    """Points, meshes and 3D files → canonical clouds; the weights-free half of :class:`PointCloudEncoder`.

    Per item (see ``hub_3d._io.canonical_points``): read the points (meshes are sampled on
    their surface, ``num_points`` points, seeded), keep xyz + ``channels`` extra columns,
    check they are finite and at least ``min_points``, sort them canonically, subsample
    clouds larger than ``num_points`` (seeded, after sorting), centre on the centroid and
    scale to the unit sphere.  ``collate`` pads; ``point_mask`` keeps padding out.
    """

    modality = "3d"
    accepts = (
        "numpy/torch float array (N, 3) or (N, 3 + C)",
        "trimesh.Trimesh / PointCloud / Scene",
        "path to " + " / ".join(FILE_SUFFIXES),
    )

    def __init__(self, config: Any) -> None:
        self.config = config

    def prepare(self, item: Any, index: int = 0) -> torch.Tensor:
        cfg = self.config
        try:
            points = read_points(item, cfg.num_points, cfg.seed)
            points = canonical_points(
                points, channels=cfg.channels, min_points=cfg.min_points, num_points=cfg.num_points,
                seed=cfg.seed, why=cfg.min_points_reason,
            )
        except BadItem as exc:
            raise self.invalid(index, item, str(exc)) from None
        return torch.from_numpy(points)  # (n, 3 + channels)

    def collate(self, prepared: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        longest = max(int(p.shape[0]) for p in prepared)
        points = torch.zeros(len(prepared), longest, 3 + self.config.channels)  # (batch, points, 3 + C)
        mask = torch.zeros(len(prepared), longest, dtype=torch.bool)  # (batch, points)
        for i, p in enumerate(prepared):
            points[i, : p.shape[0]] = p
            mask[i, : p.shape[0]] = True
        return {"points": points, "point_mask": mask}

    def num_tokens(self, prepared: torch.Tensor) -> int:
        return self.config.num_groups

    def length(self, prepared: torch.Tensor) -> int:
        """Bucket by point count, so clouds of similar size share a batch."""
        return int(prepared.shape[0])

    def save(self, directory: str | Path) -> dict[str, Any]:
        """``config.json`` only (the architecture and preprocessing numbers; no weights)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(json.dumps({"format": FORMAT, **self.config.model_dump()}, indent=2) + "\n")
        return {}


class PointCloudEncoder(Encoder):
    """Point clouds, meshes and 3D files → one token per point group.

    Preprocessing (per item, see ``hub_3d._io.canonical_points``): read the
    points (meshes are sampled on their surface, ``num_points`` points, seeded),
    keep xyz + ``channels`` extra columns, check they are finite and at least
    ``min_points``, sort them canonically, subsample clouds larger than
    ``num_points`` (seeded, after sorting), centre on the centroid and scale to
    the unit sphere (max norm 1).  Clouds between ``min_points`` and
    ``num_points`` points are used as they are: ``collate`` pads them and
    ``point_mask`` keeps padding out of FPS and kNN (no repeat-padding).

    Tokens per item: exactly ``num_groups``, in farthest-point-sampling order,
    all real.  The result does not depend on the order of the input points.
    """

    modality = "3d"
    accepts = (
        "numpy/torch float array (N, 3) or (N, 3 + C)",
        "trimesh.Trimesh / PointCloud / Scene",
        "path to " + " / ".join(FILE_SUFFIXES),
    )

    def __init__(self, config: Any, *, state: dict[str, torch.Tensor] | None = None, weights: str | None = None) -> None:
        super().__init__()
        _, network = ARCHITECTURES[config.architecture]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = network(config)
        if state is not None:
            try:
                self.model.load_state_dict(state)
            except RuntimeError as exc:
                raise WeightsNotFoundError(f"3d weights in {weights!r} do not match their config.json: {exc}") from None
        self.config = config
        self.item_processor = PointsProcessor(config)
        self.dim = config.dim
        self.weights = str(weights) if weights else f"random-init(seed={config.seed})"

    # -- forward ------------------------------------------------------------------
    def forward(self, points: torch.Tensor, point_mask: torch.Tensor) -> TokenEmbeddings:
        tokens = self.model(points, point_mask)  # (batch, groups, dim)
        mask = torch.ones_like(tokens[..., 0], dtype=torch.bool)  # (batch, groups)
        return self.tokens(tokens, mask)

    # -- weights ------------------------------------------------------------------
    def masked_batch(self, tensors: dict[str, torch.Tensor], ratio: float, gen: torch.Generator) -> "MaskedBatch":
        """Masked pretraining (Point-MAE-style): FPS + kNN groups as the encoder forms them; the points of a
        share of the groups are removed from the input, and the decoder predicts each masked group's
        neighbour xyz relative to its centre (Chamfer loss), queried by the centre."""
        from hub.train.masked import MaskedBatch, masked_count

        cfg = self.config
        points, mask = tensors["points"], tensors["point_mask"].bool()  # (batch, N, 3 + C), (batch, N)
        xyz = points[..., :3]
        batch, groups, k = points.shape[0], int(cfg.num_groups), int(cfg.group_size)
        centres = gather_points(xyz, farthest_point_sample(xyz, mask, groups))  # (batch, G, 3)
        members = knn(centres, xyz, mask, k)  # (batch, G, k)
        rel = gather_points(xyz, members) - centres.unsqueeze(2)  # (batch, G, k, 3)
        m = min(groups - 1, masked_count(ratio, groups)) if groups > 1 else 1
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

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors``; load with ``weights=directory``."""
        from safetensors.torch import save_file

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        config = {"format": FORMAT, **self.config.model_dump()}
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
        return path
