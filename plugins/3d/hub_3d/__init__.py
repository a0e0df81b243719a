"""3D modality for modality-hub: point clouds and meshes as tokens.

Items: numpy/torch float arrays (N, 3) or (N, 3 + C) (C extra channels such as
normals or colours), ``trimesh.Trimesh`` meshes (sampled on their surface),
``trimesh.PointCloud`` / ``Scene``, and .ply/.obj/.off/.stl/.xyz/.npy files.
Every cloud is centred on its centroid and scaled to the unit sphere (max norm 1).

Encoders (plain torch, ONNX-exportable forward; FPS and kNN in ``hub_3d._ops``):
``point-bert`` (default) and ``pointnet2``, plus ``tiny-point-bert`` and
``tiny-pointnet2`` for tests and demos.  Each yields ``num_groups`` tokens per item.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from hub import EncoderSpec, Modality, hookimpl

from ._encoder import PRESETS, PointBertOptions, PointCloudEncoder, PointNet2Options, PointsProcessor, build_encoder, build_processor
from ._io import FILE_SUFFIXES, is_point_cloud
from ._models import PointBERT, PointBertConfig, PointNet2, PointNet2Config
from ._ops import farthest_point_sample, gather_points, knn

__all__ = [
    "PointCloudEncoder",
    "PointBertOptions",
    "PointNet2Options",
    "PointBERT",
    "PointBertConfig",
    "PointNet2",
    "PointNet2Config",
    "PRESETS",
    "build_encoder",
    "build_processor",
    "PointsProcessor",
    "farthest_point_sample",
    "knn",
    "gather_points",
    "examples",
    "sample_item",
]

ACCEPTS = (
    "numpy/torch float array (N, 3) xyz or (N, 3 + C) with C extra channels (normals, colours)",
    "trimesh.Trimesh (sampled on its surface), trimesh.PointCloud or trimesh.Scene",
    "path to a " + ", ".join(FILE_SUFFIXES) + " file",
    "dict {'data': file bytes, 'format': 'ply' | 'obj' | 'off' | 'stl' | 'xyz' | 'npy'}",
)


def sample_item() -> np.ndarray:
    """512 points on a unit icosphere (seeded): a small valid item for ``mhub demo``."""
    import trimesh

    points, _ = trimesh.sample.sample_surface(trimesh.creation.icosphere(subdivisions=2), 512, seed=0)
    return np.asarray(points, dtype=np.float32)  # (512, 3)


#: point counts ``examples`` cycles through (x 1.0-1.1): above and below every preset's
#: ``num_points`` (1024 and 256), never below the largest preset minimum (128); the first
#: is small, so a batch of the first item alone pads to fewer points than later batches
EXAMPLE_POINTS = (180, 1500, 700, 140, 300, 1100, 420, 200, 900, 250)


def examples(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` noisy shapes (spheres, boxes, tori of random size, seeded) as float32 ``(N, 3)`` arrays,
    ``N`` cycling through :data:`EXAMPLE_POINTS` with jitter."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        count = int(EXAMPLE_POINTS[i % len(EXAMPLE_POINTS)] * rng.uniform(1.0, 1.1))
        shape = ("sphere", "box", "torus")[int(rng.integers(0, 3))]
        u = rng.standard_normal((count, 3))
        if shape == "sphere":
            pts = u / np.linalg.norm(u, axis=1, keepdims=True)
        elif shape == "box":
            pts = rng.uniform(-1, 1, (count, 3))
            face = rng.integers(0, 3, count)
            pts[np.arange(count), face] = np.sign(pts[np.arange(count), face])
        else:
            a, b = rng.uniform(0, 2 * np.pi, (2, count))
            pts = np.stack([(1 + 0.3 * np.cos(b)) * np.cos(a), (1 + 0.3 * np.cos(b)) * np.sin(a), 0.3 * np.sin(b)], 1)
        pts = pts * rng.uniform(0.5, 2.0, 3) + rng.normal(0, 0.01, (count, 3)) + rng.uniform(-1, 1, 3)
        items.append(pts.astype(np.float32))
    return items


@hookimpl
def register_modalities(register):
    register(
        Modality(
            name="3d",
            accepts=ACCEPTS,
            detect=is_point_cloud,
            extensions=FILE_SUFFIXES,
            default_encoder="point-bert",
            demo_encoder="tiny-point-bert",
            sample=sample_item,
            examples=examples,
            description="3D point clouds and meshes (centred, scaled to the unit sphere)",
        )
    )


@hookimpl
def register_encoders(register):
    for name, preset in PRESETS.items():
        register(
            EncoderSpec(
                name=name, modality="3d", factory=partial(build_encoder, name), options=preset.options,
                processor=partial(build_processor, name),
                weights=None, license="apache-2.0", pretrained=False, description=preset.description,
            )
        )
from ._augment import register_augmentations  # noqa: E402,F401  (pluggy finds the hook on this module)
