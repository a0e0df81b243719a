"""Per-item limits checked before full decoding: headers and counts, never the payload itself.

* images: width x height from the header (PIL opens lazily and reads no pixels), so a
  decompression-bomb PNG is refused before anything of its claimed size is allocated;
* audio: frames / sample rate from the container header (soundfile ``info``);
* graphs: nodes and edges counted from the JSON lists, or from the element tags of
  GraphML / GML / edge-list text before it is parsed;
* 3D: points from the JSON list, or from the header of ply/off/stl/npy content
  (obj and xyz: vertex lines counted).

Each check raises :class:`~hub.serve.errors.ApiError` 413 naming the item.
"""

from __future__ import annotations

import io
import re
import struct
from typing import Any

from .config import ServeConfig
from .errors import ApiError

__all__ = ["check_text", "check_image", "check_audio", "check_graph_lists", "check_graph_text", "check_points_count",
           "check_points_bytes", "too_large"]


def too_large(param: str, what: str, value: Any, limit: Any, option: str) -> ApiError:
    return ApiError(413, f"{param}: {what} {value} is above this server's limit of {limit} (mhub serve --{option})",
                    param=param, reason="item_too_large", code="item_too_large")


def check_text(text: str, param: str, cfg: ServeConfig) -> None:
    if len(text) > cfg.max_text_chars:
        raise too_large(param, "text length (characters)", len(text), cfg.max_text_chars, "max-text-chars")


def check_image(data: bytes, param: str, cfg: ServeConfig) -> None:
    """The header's size against ``max_image_pixels``; PIL's open reads the header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:  # lazy: no pixel data is decoded here
            width, height = img.size
    except Image.DecompressionBombError as exc:
        raise too_large(param, "image size", f"({exc})", cfg.max_image_pixels, "max-image-pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ApiError(400, f"{param}: not a readable image ({type(exc).__name__}: {exc}); send PNG, JPEG, WebP, GIF, "
                       "BMP or TIFF bytes as a base64 data URI", param=param, reason="invalid_input") from None
    if width * height > cfg.max_image_pixels:
        raise too_large(param, f"image of {width}x{height} =", f"{width * height} pixels", cfg.max_image_pixels,
                        "max-image-pixels")


def check_audio(data: bytes, param: str, cfg: ServeConfig) -> None:
    """Duration from the container header (frames / rate) against ``max_audio_seconds``."""
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - libsndfile raises its own errors on corrupt bytes
        raise ApiError(400, f"{param}: not readable audio ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                       "send wav, flac, ogg or mp3 bytes as base64", param=param, reason="invalid_input") from None
    if info.samplerate <= 0:
        raise ApiError(400, f"{param}: audio header gives sample rate {info.samplerate}", param=param,
                       reason="invalid_input")
    seconds = info.frames / info.samplerate
    if seconds > cfg.max_audio_seconds:
        raise too_large(param, "audio duration (s)", round(seconds, 2), cfg.max_audio_seconds, "max-audio-seconds")


def check_graph_lists(edge_index: list[list[int]], x: list | None, num_nodes: int | None, param: str,
                      cfg: ServeConfig) -> None:
    edges = len(edge_index[1]) if len(edge_index) == 2 else max((len(r) for r in edge_index), default=0)
    if edges > cfg.max_graph_edges:
        raise too_large(param, "edge count", edges, cfg.max_graph_edges, "max-graph-edges")
    nodes = num_nodes if num_nodes is not None else (len(x) if x is not None else None)
    if nodes is None:  # nodes implied by the largest index
        nodes = 1 + max((max(r) for r in edge_index if r), default=-1)
    if nodes > cfg.max_graph_nodes:
        raise too_large(param, "node count", nodes, cfg.max_graph_nodes, "max-graph-nodes")


_GRAPHML_NODE = re.compile(rb"<(?:\w+:)?node\b")
_GRAPHML_EDGE = re.compile(rb"<(?:\w+:)?edge\b")
_GML_NODE = re.compile(rb"\bnode\s*\[")
_GML_EDGE = re.compile(rb"\bedge\s*\[")


def check_graph_text(text: str, fmt: str, param: str, cfg: ServeConfig) -> None:
    """Count node and edge elements in the text (every node and edge needs one) before parsing."""
    raw = text.encode("utf-8", "ignore")
    if fmt == "graphml":
        nodes, edges = len(_GRAPHML_NODE.findall(raw)), len(_GRAPHML_EDGE.findall(raw))
    elif fmt == "gml":
        nodes, edges = len(_GML_NODE.findall(raw)), len(_GML_EDGE.findall(raw))
    else:  # edge list: one edge per non-comment line; at most two new nodes per edge
        edges = sum(1 for line in raw.splitlines() if line.strip() and not line.lstrip().startswith(b"#"))
        nodes = min(2 * edges, cfg.max_graph_nodes)
    if edges > cfg.max_graph_edges:
        raise too_large(param, "edge count", edges, cfg.max_graph_edges, "max-graph-edges")
    if nodes > cfg.max_graph_nodes:
        raise too_large(param, "node count", nodes, cfg.max_graph_nodes, "max-graph-nodes")


def check_points_count(count: int, param: str, cfg: ServeConfig) -> None:
    if count > cfg.max_points:
        raise too_large(param, "point count", count, cfg.max_points, "max-points")


_PLY_VERTEX = re.compile(rb"^element\s+vertex\s+(\d+)", re.MULTILINE)


def _count_points(data: bytes, fmt: str) -> int | None:
    """Points (vertices) an item declares, read from its header; ``None`` when it cannot tell."""
    if fmt == "ply":
        end = data.find(b"end_header")
        m = _PLY_VERTEX.search(data[: end if end >= 0 else 4096])
        return int(m.group(1)) if m else None
    if fmt == "stl":
        if data[:5].lower() == b"solid" and b"facet" in data[:4096]:  # ASCII STL: 3 vertices per facet
            return 3 * data.count(b"facet normal")
        if len(data) >= 84:
            return 3 * struct.unpack("<I", data[80:84])[0]
        return None
    if fmt == "off":  # "OFF\nV F E" or "OFF V F E" (also COFF, NOFF, ...)
        lines = [ln for ln in data[:4096].splitlines() if ln.strip() and not ln.lstrip().startswith(b"#")]
        tokens = b" ".join(lines[:2]).split()
        if len(tokens) > 1 and tokens[0].upper().endswith(b"OFF") and tokens[1].isdigit():
            return int(tokens[1])
        return None
    if fmt == "obj":
        return len(re.findall(rb"(?m)^\s*v\s", data))
    if fmt == "xyz":
        return sum(1 for line in data.splitlines() if line.strip() and not line.lstrip().startswith(b"#"))
    if fmt == "npy":
        try:
            import numpy as np

            f = io.BytesIO(data)
            version = np.lib.format.read_magic(f)
            shape, _, _ = np.lib.format._read_array_header(f, version)  # header only, no data
            return int(shape[0]) if shape else 1
        except Exception:  # noqa: BLE001 - the plugin's reader reports a corrupt file
            return None
    return None


def check_points_bytes(data: bytes, fmt: str, param: str, cfg: ServeConfig) -> None:
    count = _count_points(data, fmt)
    if count is not None:
        check_points_count(count, param, cfg)
