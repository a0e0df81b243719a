"""Normalisation that removes nuisance factors before an item meets its encoder (training and inference alike).

* image (:func:`normalise_digit`): polarity (light ink on a dark page, judged from the border), contrast
  (stretched to the full range), placement and scale (the ink's bounding box, squared, fills the frame),
  and resolution / stroke detail (resampled through the 8 x 8 grid of the training scans, then up again);
* 3d (:func:`normalise_cloud`): pose (the principal axes become x, y, z, signs fixed by the third moment)
  and stretch (each principal axis scaled to unit spread), so a box stays a box however it was stretched,
  and ``points`` resampled to a fixed count (seeded by the content).

Graphs and audio need none: the graph encoder's mean pooling is size-free, and the audio front end
normalises level itself.  The pack applies these when its plan says ``normalise=True``
(:meth:`hub_starter.pack.StarterPack.embed`).
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import numpy as np


def normalise_digit(item: Any, grid: int = 8) -> Any:
    """A digit image as the training scans look: light ink on black, full contrast, centred, filling the frame."""
    from PIL import Image

    size = item.size
    a = np.asarray(item.convert("L"), dtype=np.float32) / 255.0
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if np.median(border) > 0.5 * (a.max() + a.min()):  # dark ink on a light page
        a = 1.0 - a
    bg = float(np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])))
    a = np.clip(a - bg, 0, None)
    peak = float(a.max())
    if peak < 1e-6:
        return item.convert("RGB")
    a = a / peak
    ys, xs = np.nonzero(a > 0.25)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = max(y1 - y0, x1 - x0)
    square = np.zeros((side, side), dtype=np.float32)  # the box, centred in a square (aspect kept)
    oy, ox = (side - (y1 - y0)) // 2, (side - (x1 - x0)) // 2
    square[oy : oy + y1 - y0, ox : ox + x1 - x0] = a[y0:y1, x0:x1]
    img = Image.fromarray((square * 255).round().astype(np.uint8))
    small = np.asarray(img.resize((grid, grid), Image.Resampling.BOX), dtype=np.float32)
    small = small * (255.0 / max(float(small.max()), 1e-6))
    out = Image.fromarray(small.round().astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    return out.convert("RGB")


def normalise_cloud(item: Any, points: int | None = None, whiten: bool = True, normals: Any = None) -> np.ndarray:
    """A point cloud in its principal frame with unit spread along each axis (float32 (N, 3)); ``whiten=False``
    keeps the proportions (one scale for all axes).  ``normals`` ((N, 3), optional) are carried through the
    same linear map (inverse transpose, renormalised) and appended: (N, 6)."""
    xyz = np.asarray(item, dtype=np.float64)[:, :3]
    xyz = xyz - xyz.mean(0)
    _, vectors = np.linalg.eigh(np.cov(xyz.T))
    xyz = xyz @ vectors[:, ::-1]  # largest spread first
    scale = np.maximum(xyz.std(0), 1e-9) if whiten else np.full(3, max(float(xyz.std()), 1e-9))
    xyz = xyz / (scale if whiten else float(scale[0]))
    skew = (xyz**3).mean(0)
    signs = np.where(skew < 0, -1.0, 1.0)
    xyz = xyz * signs
    if normals is not None:  # n' ∝ n A^-T for p' = p A, A = R diag(signs / scale)
        n = (np.asarray(normals, dtype=np.float64) @ vectors[:, ::-1]) * (scale * signs)
        xyz = np.concatenate([xyz, n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)], axis=1)
    if points is not None and len(xyz) != points:
        seed = int.from_bytes(hashlib.sha256(np.ascontiguousarray(xyz, dtype=np.float32).tobytes()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        xyz = xyz[np.sort(rng.choice(len(xyz), points, replace=len(xyz) < points))]
    return xyz.astype(np.float32)


#: modality → ``normalise(item) -> item``
NORMALISERS: dict[str, Callable[[Any], Any]] = {"image": normalise_digit, "3d": normalise_cloud}


# -- the normalisers as registered transforms ----------------------------------------------------------
#: registered name (per modality) of each normaliser; the pack's aligned directories name it in align.json's
#: ``transforms``, so ``h.embed(items, encoder="PACK/3d")`` normalises exactly as the pack does
TRANSFORM = "starter-normalise"


def digit_transform(item: Any, rng: Any) -> Any:
    """:func:`normalise_digit` on any image item the image plugin accepts (path, bytes, PIL, array)."""
    from hub_image._augment import _read

    return normalise_digit(_read(item))


def cloud_transform(item: Any, rng: Any) -> np.ndarray:
    """:func:`normalise_cloud` on any 3D item the 3D plugin accepts (points, file, mesh)."""
    from hub import InvalidInputError
    from hub_3d._augment import read_cloud

    points, has_normals = read_cloud(item, rng)
    if len(points) < 4:
        raise InvalidInputError(f"cannot normalise a point cloud of {len(points)} point(s); at least 4 are needed")
    out = normalise_cloud(points, normals=points[:, 3:6] if has_normals else None)
    if points.shape[1] > out.shape[1]:  # other channels (colours, features) travel unchanged
        out = np.concatenate([out, points[:, out.shape[1]:].astype(np.float32)], axis=1)
    return out


def register_transforms(register: Callable[..., None]) -> None:
    """Register the normalisers as deterministic augmentations (``register_augmentations`` hook)."""
    from hub import AugmentationSpec

    register(AugmentationSpec(name=TRANSFORM, modality="image", fn=digit_transform,
                              description="starter pack: a digit as the training scans look (polarity, contrast, "
                                          "placement, scale, 8 x 8 detail); deterministic"))
    register(AugmentationSpec(name=TRANSFORM, modality="3d", fn=cloud_transform,
                              description="starter pack: principal axes and unit spread per axis (float32 (N, 3)); "
                                          "deterministic"))
