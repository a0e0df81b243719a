"""Items → validated, canonical, normalized point arrays (plain numpy, per item).

Reading is done by maintained libraries: trimesh for .ply/.obj/.off/.stl and
for surface sampling, ``numpy.load(allow_pickle=False)`` for .npy and
``numpy.loadtxt`` for .xyz.  Every problem raises :class:`BadItem` with a
message the encoder turns into an ``InvalidInputError`` naming the item.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["BadItem", "FILE_SUFFIXES", "BYTES_FORMATS", "read_points", "read_points_bytes", "is_point_cloud", "canonical_points"]

#: widest float array that ``detect`` claims without ``modality="3d"`` (xyz + up to 13 channels)
MAX_DETECT_COLUMNS = 16


class BadItem(Exception):
    """An item that cannot become a point cloud; the message says why."""


# -- detection -------------------------------------------------------------------


def is_point_cloud(item: Any) -> bool:
    """Cheap claim for in-memory items: trimesh geometry, or a 2-D float array (N, 3..16).

    Integer arrays (e.g. uint8 pixels) and 3-D arrays (images) are left to
    other modalities; wider float arrays still encode with ``modality="3d"``.
    """
    tm = sys.modules.get("trimesh")
    if tm is not None and isinstance(item, (tm.Trimesh, tm.PointCloud, tm.Scene)):
        return True
    if isinstance(item, np.ndarray):
        return item.ndim == 2 and 3 <= item.shape[1] <= MAX_DETECT_COLUMNS and item.dtype.kind == "f"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(item, torch.Tensor):
        return item.ndim == 2 and 3 <= item.shape[1] <= MAX_DETECT_COLUMNS and item.is_floating_point()
    return False


# -- readers ----------------------------------------------------------------------


def _from_array(array: Any) -> np.ndarray:
    """A numpy or torch array (N, 3 + C) → float64 (N, 3 + C), shape and dtype checked."""
    if not isinstance(array, np.ndarray):  # torch.Tensor
        tensor = array.detach().cpu()
        if tensor.is_floating_point() and tensor.dtype not in (_torch().float32, _torch().float64):
            tensor = tensor.float()  # float16 / bfloat16 have no numpy twin
        array = tensor.numpy()
    if array.dtype.kind not in "fiu":
        raise BadItem(f"dtype {array.dtype} is not a real number type; pass float coordinates")
    if array.size == 0:
        raise BadItem(f"no points (empty array of shape {tuple(array.shape)})")
    if array.ndim != 2 or array.shape[1] < 3:
        raise BadItem(f"wrong shape {tuple(array.shape)}: a point cloud is (N, 3) xyz or (N, 3 + C) with C extra channels")
    return np.asarray(array, dtype=np.float64)


def _torch():
    import torch

    return torch


def _from_trimesh(geometry: Any, count: int, seed: int) -> np.ndarray:
    """Trimesh / PointCloud / Scene → points; meshes are sampled on their surface.

    A mesh with faces gives ``count`` surface points (``trimesh.sample.sample_surface``
    with ``seed``) plus the face normal of each as 3 extra channels; a mesh
    without faces or a point cloud gives its vertices (xyz only).
    """
    import trimesh

    if isinstance(geometry, trimesh.Scene):
        parts = list(geometry.dump())
        if not parts:
            raise BadItem("empty scene: no geometry (an empty or unreadable file?)")
        meshes = [g for g in parts if isinstance(g, trimesh.Trimesh) and len(g.faces)]
        if meshes:
            geometry = meshes[0] if len(meshes) == 1 else trimesh.util.concatenate(meshes)
        else:
            vertices = [np.asarray(g.vertices, dtype=np.float64).reshape(-1, 3) for g in parts if hasattr(g, "vertices")]
            geometry = trimesh.PointCloud(np.concatenate(vertices) if vertices else np.zeros((0, 3)))
    vertices = np.asarray(geometry.vertices, dtype=np.float64).reshape(-1, 3)
    faces = getattr(geometry, "faces", None)
    if len(vertices) == 0:
        raise BadItem("empty mesh: no vertices")
    if not np.isfinite(vertices).all():
        raise BadItem("vertices hold NaN or inf coordinates")
    if isinstance(geometry, trimesh.PointCloud) or faces is None or len(faces) == 0:
        return vertices
    area = float(geometry.area)
    if not area > 0.0:
        raise BadItem("empty mesh: its faces have zero surface area")
    points, face_index = trimesh.sample.sample_surface(geometry, count, seed=seed)
    normals = np.asarray(geometry.face_normals, dtype=np.float64)[face_index]
    return np.concatenate([np.asarray(points, dtype=np.float64), normals], axis=1)  # (count, 6)


def _read_npy(path: Path, count: int, seed: int) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadItem(f"cannot read as .npy (pickled and object arrays are refused): {exc}") from None
    return _from_array(array)


def _read_xyz(path: Path, count: int, seed: int) -> np.ndarray:
    """Whitespace- or comma-separated rows ``x y z [c ...]``; '#' starts a comment."""
    last: Exception | None = None
    for delimiter in (None, ","):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "input contained no data"
                array = np.loadtxt(path, delimiter=delimiter, comments="#", ndmin=2, dtype=np.float64)
            return _from_array(array)
        except (ValueError, UnicodeDecodeError) as exc:
            last = exc
    raise BadItem(f"cannot parse as .xyz text (rows of 'x y z [extra ...]' numbers): {last}")


def _read_trimesh(path: Path, count: int, seed: int) -> np.ndarray:
    import trimesh

    suffix = path.suffix.lower().lstrip(".")
    try:
        geometry = trimesh.load(path, file_type=suffix)
    except Exception as exc:  # noqa: BLE001 - trimesh's parsers raise anything on corrupt files
        raise BadItem(f"cannot read as .{suffix} (corrupt or unsupported file): {type(exc).__name__}: {exc}") from None
    return _from_trimesh(geometry, count, seed)


#: file suffix -> reader(path, count, seed)
READERS: dict[str, Callable[[Path, int, int], np.ndarray]] = {
    ".ply": _read_trimesh,
    ".obj": _read_trimesh,
    ".off": _read_trimesh,
    ".stl": _read_trimesh,
    ".xyz": _read_xyz,
    ".npy": _read_npy,
}
FILE_SUFFIXES = tuple(READERS)
#: ``format`` values of :func:`read_points_bytes` (the file suffixes without the dot)
BYTES_FORMATS = tuple(s.lstrip(".") for s in FILE_SUFFIXES)


def read_points_bytes(data: bytes | str, format: str, count: int, seed: int) -> np.ndarray:
    """File content with an explicit ``format`` (ply, obj, off, stl, xyz, npy) → float64 points (N, 3 + C).

    The same readers as for files, for content that arrives without a file name (an HTTP
    request, a database row): trimesh reads ply/obj/off/stl from a file object with
    ``file_type=format``; meshes are sampled on their surface as files are.
    """
    fmt = str(format).lower().lstrip(".")
    if fmt not in BYTES_FORMATS:
        raise BadItem(f"unknown 3D format {format!r}; formats: {', '.join(BYTES_FORMATS)}")
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadItem(f"{fmt} content must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise BadItem(f"empty {fmt} content")
    if fmt == "npy":
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise BadItem(f"cannot read as .npy (pickled and object arrays are refused): {exc}") from None
        return _from_array(array)
    if fmt == "xyz":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadItem(f"xyz content is not UTF-8 text ({exc})") from None
        return _read_xyz(text.splitlines(), count, seed)  # type: ignore[arg-type]  (loadtxt reads a list of lines)
    import trimesh

    try:
        geometry = trimesh.load(io.BytesIO(data), file_type=fmt)
    except Exception as exc:  # noqa: BLE001 - trimesh's parsers raise anything on corrupt content
        raise BadItem(f"cannot read as .{fmt} (corrupt or unsupported content): {type(exc).__name__}: {exc}") from None
    return _from_trimesh(geometry, count, seed)


def read_points(item: Any, count: int, seed: int) -> np.ndarray:
    """Any accepted item → float64 points (N, 3 + C) before validation of values.

    ``count`` and ``seed`` drive the surface sampling of meshes.
    """
    if isinstance(item, Path):
        reader = READERS.get(item.suffix.lower())
        if reader is None:
            raise BadItem(f"cannot read {item.suffix or 'extension-less'} files as 3D; readable: {', '.join(FILE_SUFFIXES)}")
        return reader(item, count, seed)
    if isinstance(item, dict) and "format" in item:
        unknown = sorted(map(str, set(item) - {"data", "format"}))
        if unknown or "data" not in item:
            raise BadItem(f"a 3D content dict takes exactly 'data' (bytes) and 'format' ({', '.join(BYTES_FORMATS)}); "
                          f"got keys {sorted(map(str, item))}")
        return read_points_bytes(item["data"], item["format"], count, seed)
    if isinstance(item, str):
        if Path(item).suffix.lower() in READERS:
            raise BadItem("no such file")
        raise BadItem("a str is not a point cloud (text goes to the text modality; a path must name an existing file)")
    if isinstance(item, np.ndarray):
        return _from_array(item)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(item, torch.Tensor):
        return _from_array(item)
    tm = sys.modules.get("trimesh")
    if tm is not None and isinstance(item, (tm.Trimesh, tm.PointCloud, tm.Scene)):
        return _from_trimesh(item, count, seed)
    raise BadItem(f"{type(item).__name__} is not a point cloud, mesh or 3D file")


# -- validation and normalization -----------------------------------------------------


def canonical_points(
    points: np.ndarray, *, channels: int, min_points: int, num_points: int, seed: int, why: str = ""
) -> np.ndarray:
    """Validate, order canonically, subsample and normalize one cloud → float32 (n, 3 + channels).

    * columns: xyz plus the first ``channels`` extra columns (more are ignored,
      fewer are an error);
    * every value must be finite; at least ``min_points`` points (``why`` says
      where that number comes from);
    * points are sorted lexicographically (x, then y, z, channels) so the
      result does not depend on the order they came in; clouds larger than
      ``num_points`` keep a seeded random subset of ``num_points`` of the
      sorted points (so subsampling is order-invariant too);
    * xyz is centred on its centroid and scaled so the farthest point has norm 1
      (extra channels are left as given); a cloud with every point identical
      has no scale and is refused.
    """
    n, width = points.shape
    if width < 3 + channels:
        raise BadItem(
            f"has {width - 3} extra channel(s) per point; this encoder uses xyz + {channels} "
            f"(shape (N, {3 + channels}))"
        )
    points = points[:, : 3 + channels]
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise BadItem(f"{int(bad.sum())} point(s) have NaN or inf values (first at row {int(np.argmax(bad))})")
    if n < min_points:
        raise BadItem(
            f"has {n} point(s); this encoder needs at least {min_points}{f' ({why})' if why else ''}; "
            f"it uses up to {num_points} and subsamples larger clouds"
        )
    points = points[np.lexsort(points.T[::-1])]  # canonical order: by x, then y, z, ...
    if n > num_points:
        keep = np.sort(np.random.default_rng(seed).choice(n, num_points, replace=False))
        points = points[keep]
    xyz = points[:, :3]
    centroid = xyz.mean(axis=0)
    xyz = xyz - centroid
    scale = float(np.sqrt((xyz**2).sum(axis=1)).max())
    if not scale > 1e-9 * max(1.0, float(np.abs(centroid).max())):
        raise BadItem("degenerate cloud: all points are (nearly) identical, so it has no scale to normalize")
    points = np.concatenate([xyz / scale, points[:, 3:]], axis=1)
    return points.astype(np.float32)
