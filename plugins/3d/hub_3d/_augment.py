"""3D augmentations: modality-preserving transforms for self-supervised learning.

Every augmentation is ``fn(item, rng, **params) -> np.ndarray``: it reads any
accepted 3D item with the plugin's own reader (:func:`hub_3d._io.read_points`;
meshes are sampled on their surface, :data:`MESH_POINTS` points, with face
normals as 3 extra channels) and returns a **new** ``float32`` array ``(N', 3 + C)``
in the canonical form — xyz first, extra channels kept — never modifying the
input.  Coordinates are *not* normalised here (the encoders centre and scale
every cloud); geometric transforms act about the cloud's centroid, so the cloud
stays where it was.  Randomness comes only from ``rng`` (a
``numpy.random.Generator``; an int seed or ``None`` also works).

**Normals.** Rotations and scalings also transform channels 3-5 as normal
vectors when ``normals=True``, or — by default (``normals=None``) — when the item
was a mesh or mesh file (whose reader put face normals there).  Other extra
channels (colours, intensities) are carried along unchanged.

=================  ==========================================================================
name               what it does (params)
=================  ==========================================================================
rotation           a uniformly random rotation in SO(3) (``mode="so3"``,
                   ``scipy.spatial.transform.Rotation.random``) or about the ``up_axis`` by an
                   angle in ``[-max_degrees, max_degrees]`` (``mode="up"``); keeps every pairwise
                   distance
jitter             add Gaussian noise ``sigma`` clipped to ``[-clip, clip]`` per coordinate, both
                   as a share of the cloud's radius (PointNet's 0.01 / 0.05 on a unit sphere)
crop               keep the points on one side of a random plane: a random normal direction,
                   the plane placed so a share drawn from ``keep`` stays (at least
                   ``min_points``)
anisotropic_scale  scale each axis by its own factor drawn from ``factors`` (2/3 to 3/2, as in
                   PointNet++ / Point-BERT training)
point_dropout      drop a share drawn from ``share`` of the points at random (at least
                   ``min_points`` stay); the rest keep their order
=================  ==========================================================================
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import Field

from hub import AugmentationSpec, InvalidInputError, hookimpl
from hub.augment import AugmentParams as _Params
from hub.augment import parse_params
from hub.augment import value_range as _range

from ._io import BadItem, read_points

__all__ = ["AUGMENTATIONS", "MESH_POINTS", "read_cloud", "register_augmentations"]

#: surface points sampled from a mesh item before augmenting it
MESH_POINTS = 2048
_AXES = {"x": 0, "y": 1, "z": 2}
#: files read as meshes (sampled on the surface, face normals as channels 3-5)
_MESH_FILES = (".ply", ".obj", ".off", ".stl")


_NORMALS = Field(None, description="treat channels 3-5 as normals (None: only for mesh items)")


# -- params ------------------------------------------------------------------------------------------
class RotationParams(_Params):
    mode: Literal["so3", "up"] = Field("so3", description="any rotation, or about the up axis only")
    up_axis: Literal["x", "y", "z"] = Field("z", description="the up axis for mode='up'")
    max_degrees: float = Field(180.0, ge=0.0, le=180.0, description="angle range for mode='up'")
    normals: bool | None = _NORMALS


class JitterParams(_Params):
    sigma: float = Field(0.01, ge=0.0, le=1.0, description="noise std, as a share of the cloud's radius")
    clip: float = Field(0.05, gt=0.0, le=1.0, description="noise bound, as a share of the cloud's radius")


class CropParams(_Params):
    keep: _range(gt=0.0, le=1.0) = Field((0.6, 0.9), description="share of the points the plane keeps")
    min_points: int = Field(32, ge=1, description="points kept at least (all when the cloud has fewer)")


class AnisotropicScaleParams(_Params):
    factors: _range(gt=0.0, le=100.0) = Field((2 / 3, 3 / 2), description="range of each axis' factor")
    normals: bool | None = _NORMALS


class PointDropoutParams(_Params):
    share: _range(ge=0.0, lt=1.0) = Field((0.1, 0.5), description="share of the points to drop")
    min_points: int = Field(32, ge=1, description="points kept at least (all when the cloud has fewer)")


# -- machinery ---------------------------------------------------------------------------------------
def read_cloud(item: Any, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Any accepted 3D item → (float64 points (N, 3 + C), whether channels 3-5 are mesh normals)."""
    if isinstance(item, str) and os.path.isfile(item):
        item = Path(item)
    try:
        points = read_points(item, MESH_POINTS, int(rng.integers(2**31)))
    except BadItem as exc:
        raise InvalidInputError(f"cannot augment this 3d item: {exc}") from None
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise InvalidInputError(f"cannot augment this 3d item: {int(bad.sum())} point(s) have NaN or inf values "
                                f"(first at row {int(np.argmax(bad))})")
    mesh = type(item).__module__.startswith("trimesh") or (
        isinstance(item, Path) and item.suffix.lower() in _MESH_FILES)
    return np.array(points, dtype=np.float64), (mesh and points.shape[1] == 6)  # only mesh sampling gives 6 here


def _augmentation(params: type[_Params]) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Wrap ``impl(points, normals, rng, p)`` as ``fn(item, rng, **params) -> float32 (N', 3 + C)``."""

    def wrap(impl: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        @functools.wraps(impl)
        def fn(item: Any, rng: np.random.Generator | int | None = None, **kwargs: Any) -> np.ndarray:
            p = parse_params(params, kwargs, f"3d augmentation {impl.__name__!r}")
            rng = np.random.default_rng(rng)
            points, mesh_normals = read_cloud(item, rng)
            normals = mesh_normals if getattr(p, "normals", None) is None else bool(p.normals)
            out = impl(points, normals and points.shape[1] >= 6, rng, p)
            return np.ascontiguousarray(out, dtype=np.float32)

        return fn

    return wrap


def _linear(points: np.ndarray, matrix: np.ndarray, normals: bool) -> np.ndarray:
    """Apply ``matrix`` (3, 3) to xyz about the centroid; normals by the inverse transpose, renormalised."""
    out = points.copy()
    centroid = points[:, :3].mean(axis=0)
    out[:, :3] = (points[:, :3] - centroid) @ matrix.T + centroid
    if normals:
        n = points[:, 3:6] @ np.linalg.inv(matrix)  # (inverse transpose) applied to row vectors
        norm = np.linalg.norm(n, axis=1, keepdims=True)
        out[:, 3:6] = np.divide(n, norm, out=np.zeros_like(n), where=norm > 0)
    return out


def _radius(points: np.ndarray) -> float:
    xyz = points[:, :3]
    radius = float(np.sqrt(((xyz - xyz.mean(axis=0)) ** 2).sum(axis=1)).max())
    return radius if radius > 0 else 1.0


# -- augmentations -----------------------------------------------------------------------------------
@_augmentation(RotationParams)
def rotation(points: np.ndarray, normals: bool, rng: np.random.Generator, p: RotationParams) -> np.ndarray:
    from scipy.spatial.transform import Rotation  # ~0.3 s to import: only when a rotation runs

    if p.mode == "so3":
        matrix = Rotation.random(rng=rng).as_matrix()
    else:
        axis = np.zeros(3)
        axis[_AXES[p.up_axis]] = 1.0
        angle = math.radians(float(rng.uniform(-p.max_degrees, p.max_degrees)))
        matrix = Rotation.from_rotvec(angle * axis).as_matrix()
    return _linear(points, matrix, normals)


@_augmentation(JitterParams)
def jitter(points: np.ndarray, normals: bool, rng: np.random.Generator, p: JitterParams) -> np.ndarray:
    radius = _radius(points)
    out = points.copy()
    out[:, :3] += np.clip(p.sigma * rng.standard_normal((len(points), 3)), -p.clip, p.clip) * radius
    return out


@_augmentation(CropParams)
def crop(points: np.ndarray, normals: bool, rng: np.random.Generator, p: CropParams) -> np.ndarray:
    n = len(points)
    keep = min(n, max(p.min_points, math.ceil(float(rng.uniform(*p.keep)) * n)))
    direction = rng.standard_normal(3)
    direction /= max(np.linalg.norm(direction), 1e-12)
    height = points[:, :3] @ direction  # signed distance along the plane's normal
    kept = np.sort(np.argsort(height, kind="stable")[:keep])  # the side below the plane, input order
    return points[kept].copy()


@_augmentation(AnisotropicScaleParams)
def anisotropic_scale(points: np.ndarray, normals: bool, rng: np.random.Generator,
                      p: AnisotropicScaleParams) -> np.ndarray:
    return _linear(points, np.diag(rng.uniform(*p.factors, size=3)), normals)


@_augmentation(PointDropoutParams)
def point_dropout(points: np.ndarray, normals: bool, rng: np.random.Generator, p: PointDropoutParams) -> np.ndarray:
    n = len(points)
    keep = min(n, max(p.min_points, n - int(round(float(rng.uniform(*p.share)) * n))))
    return points[np.sort(rng.choice(n, keep, replace=False))].copy()


#: name -> (fn, params model, description)
AUGMENTATIONS: dict[str, tuple[Callable[..., np.ndarray], type[_Params], str]] = {
    "rotation": (rotation, RotationParams, "random rotation about the centroid (any, or about the up axis)"),
    "jitter": (jitter, JitterParams, "clipped Gaussian noise on xyz, relative to the cloud's radius"),
    "crop": (crop, CropParams, "keep the points on one side of a random plane"),
    "anisotropic_scale": (anisotropic_scale, AnisotropicScaleParams, "scale each axis by its own random factor"),
    "point_dropout": (point_dropout, PointDropoutParams, "drop a random share of the points"),
}


@hookimpl
def register_augmentations(register):
    for name, (fn, params, description) in AUGMENTATIONS.items():
        register(AugmentationSpec(
            name=name, modality="3d", fn=fn, params=params,
            description=f"{description} (returns float32 (N, 3 + C) points)",
        ))
