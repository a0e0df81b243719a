"""Turning image items (PIL, files, bytes, numpy, torch) into RGB PIL images."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

ACCEPTS = (
    "PIL.Image.Image (any mode; RGBA is composited on white, greyscale/palette converted to RGB)",
    "path to a .png/.jpg/.jpeg/.webp/.bmp/.gif/.tif/.tiff file (GIF: first frame)",
    "bytes of such a file",
    "numpy uint8 array HxWxC (C = 1, 3 or 4) or HxW",
    "torch float tensor CxHxW (C = 1, 3 or 4) with values in [0, 1]",
)
EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


class ImageItemError(ValueError):
    """Why an item is not a usable image (turned into InvalidInputError by the encoder)."""


def _is_image_bytes(data: bytes) -> bool:
    head = bytes(data[:12])
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def is_image(item: Any) -> bool:
    """Cheap claim for modality detection (never raises, never decodes)."""
    if isinstance(item, Image.Image):
        return True
    if isinstance(item, (bytes, bytearray, memoryview)):
        return _is_image_bytes(bytes(item[:12]))
    if isinstance(item, np.ndarray):
        return item.dtype == np.uint8 and (item.ndim == 2 or (item.ndim == 3 and item.shape[-1] in (1, 3, 4)))
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(item, torch.Tensor) and item.is_floating_point() and item.ndim == 3 and item.shape[0] in (1, 3, 4)


def _open(source: Any) -> Image.Image:
    try:
        img = Image.open(source)
        img.seek(0)  # GIF / multi-frame: the first frame
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageItemError(f"not a readable image ({type(exc).__name__}: {exc})") from None
    return img


def to_rgb(item: Any) -> Image.Image:
    """Any accepted item → an RGB PIL image with non-zero size."""
    import torch

    if isinstance(item, Path):
        img = _open(item)
    elif isinstance(item, (bytes, bytearray, memoryview)):
        if len(item) == 0:
            raise ImageItemError("empty bytes")
        img = _open(io.BytesIO(bytes(item)))
    elif isinstance(item, Image.Image):
        img = item
    elif isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise ImageItemError(f"numpy images must be uint8 (HxWxC); got dtype {item.dtype}")
        arr = item[..., 0] if item.ndim == 3 and item.shape[-1] == 1 else item
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
            raise ImageItemError(f"numpy images must be HxW or HxWxC with C in (1, 3, 4); got shape {item.shape}")
        if arr.size == 0:
            raise ImageItemError(f"image has zero size {item.shape}")
        img = Image.fromarray(np.ascontiguousarray(arr))
    elif isinstance(item, torch.Tensor):
        if not item.is_floating_point() or item.ndim != 3 or item.shape[0] not in (1, 3, 4):
            raise ImageItemError(f"torch images must be float CxHxW with C in (1, 3, 4); got {item.dtype} {tuple(item.shape)}")
        if item.numel() == 0:
            raise ImageItemError(f"image has zero size {tuple(item.shape)}")
        x = item.detach().float().cpu()
        if not bool(torch.isfinite(x).all()):
            raise ImageItemError("tensor holds NaN or inf")
        if float(x.min()) < 0.0 or float(x.max()) > 1.0:
            raise ImageItemError(f"float pixel values must lie in [0, 1]; got [{float(x.min()):.3g}, {float(x.max()):.3g}]")
        arr = (x * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
        img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    else:
        raise ImageItemError(f"unsupported type {type(item).__module__}.{type(item).__name__}")
    if img.width == 0 or img.height == 0:
        raise ImageItemError(f"image is {img.width}x{img.height}; it needs at least one pixel")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def sample_image() -> Image.Image:
    """A small drawing (a red disc on blue sky over green grass) for demos and tests."""
    img = Image.new("RGB", (64, 48), (135, 206, 235))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 32, 64, 48], fill=(34, 139, 34))
    draw.ellipse([24, 8, 40, 24], fill=(220, 20, 60))
    return img


def example_images(n: int, seed: int = 0) -> list[Image.Image]:
    """``n`` RGB drawings of varied sizes (16 to 96 px a side, any aspect), the same for the same
    ``seed``: a random background, a rectangle and an ellipse (ONNX export parity checks, benchmarks)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = (int(v) for v in rng.integers(16, 97, size=2))
        img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, size=3)))
        draw = ImageDraw.Draw(img)
        for shape in (draw.rectangle, draw.ellipse):
            x0, x1 = sorted(int(v) for v in rng.integers(0, w, size=2))
            y0, y1 = sorted(int(v) for v in rng.integers(0, h, size=2))
            shape([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(0, 256, size=3)))
        noise = rng.integers(-12, 13, size=(h, w, 3))
        arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        out.append(Image.fromarray(arr))
    return out
