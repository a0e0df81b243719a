"""Image augmentations: modality-preserving transforms for self-supervised learning.

Every augmentation is ``fn(item, rng, **params) -> PIL.Image.Image``: it reads
any accepted image item (through :func:`hub_image._items.to_rgb`) and returns a
**new RGB PIL image of the same width and height** (the canonical in-memory
form), never modifying the input.  Randomness comes only from ``rng`` (a
``numpy.random.Generator``; an int seed or ``None`` also works), so the same
seed gives the same image.  Pixel work is done by Pillow (``ImageEnhance``,
``Image.rotate``, ``Image.resize`` with a box, HSV conversion) and numpy.

===============  =========================================================================
name             what it does (params)
===============  =========================================================================
colour_jitter    brightness / contrast / saturation factors in ``[1 - b, 1 + b]`` and a hue
                 shift in ``[-hue, hue]`` turns, applied in a random order (torchvision's
                 ``ColorJitter`` semantics)
rotation         rotate by an angle in ``[-degrees, degrees]`` about the centre; corners are
                 filled with ``fill``; size kept (``expand=False``)
crop             random resized crop: a box of ``scale`` of the area and ``ratio`` aspect,
                 resized back to the original size (torchvision's ``RandomResizedCrop``)
jigsaw           split into ``grid x grid`` tiles and shuffle them (never the identity);
                 pixels beyond the last whole tile stay in place
resolution       downscale by a factor in ``factor`` then upscale back to the original size
===============  =========================================================================
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import numpy as np
from PIL import Image, ImageEnhance
from pydantic import Field

from hub import AugmentationSpec, InvalidInputError, hookimpl
from hub.augment import AugmentParams as _Params
from hub.augment import parse_params
from hub.augment import value_range as _range

from ._items import ImageItemError, to_rgb

__all__ = ["AUGMENTATIONS", "register_augmentations"]

Interpolation = Literal["nearest", "bilinear", "bicubic"]
_RESAMPLE: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


# -- params ------------------------------------------------------------------------------------------
class ColourJitterParams(_Params):
    """Factors are drawn uniformly from ``[max(0, 1 - x), 1 + x]``; hue from ``[-hue, hue]`` turns."""

    brightness: float = Field(0.4, ge=0.0, le=10.0, description="brightness factor spread")
    contrast: float = Field(0.4, ge=0.0, le=10.0, description="contrast factor spread")
    saturation: float = Field(0.4, ge=0.0, le=10.0, description="saturation factor spread")
    hue: float = Field(0.1, ge=0.0, le=0.5, description="hue shift spread, in turns of the colour wheel")


class RotationParams(_Params):
    degrees: float = Field(30.0, ge=0.0, le=180.0, description="angle drawn from [-degrees, degrees]")
    fill: tuple[Annotated[int, Field(ge=0, le=255)], Annotated[int, Field(ge=0, le=255)],
                Annotated[int, Field(ge=0, le=255)]] = Field((0, 0, 0), description="RGB of uncovered corners")
    interpolation: Interpolation = "bilinear"


class CropParams(_Params):
    scale: _range(gt=0.0, le=1.0) = Field((0.08, 1.0), description="share of the area the box covers")
    ratio: _range(gt=0.0, le=100.0) = Field((3 / 4, 4 / 3), description="aspect (width / height) of the box")
    interpolation: Interpolation = "bilinear"


class JigsawParams(_Params):
    grid: int = Field(3, ge=2, le=16, description="tiles per side (grid x grid tiles); "
                      "lowered to the image's smaller side for tiny images")


class ResolutionParams(_Params):
    factor: _range(ge=1.0, le=64.0) = Field((1.5, 4.0), description="downscale factor (each side is divided by it)")
    downsample: Interpolation = "bilinear"
    upsample: Interpolation = "bilinear"


# -- machinery ---------------------------------------------------------------------------------------
def _read(item: Any) -> Image.Image:
    if isinstance(item, str) and os.path.isfile(item):  # the hub hands paths on as given
        item = Path(item)
    try:
        return to_rgb(item)
    except ImageItemError as exc:
        raise InvalidInputError(f"cannot augment this image item: {exc}") from None


def _augmentation(params: type[_Params]) -> Callable[[Callable[..., Image.Image]], Callable[..., Image.Image]]:
    """Wrap ``impl(img, rng, p)`` as ``fn(item, rng, **params)``: read, validate, run."""

    def wrap(impl: Callable[..., Image.Image]) -> Callable[..., Image.Image]:
        @functools.wraps(impl)
        def fn(item: Any, rng: np.random.Generator | int | None = None, **kwargs: Any) -> Image.Image:
            p = parse_params(params, kwargs, f"image augmentation {impl.__name__!r}")
            out = impl(_read(item), np.random.default_rng(rng), p)
            return out if out.mode == "RGB" else out.convert("RGB")

        return fn

    return wrap


def _factor(rng: np.random.Generator, spread: float) -> float:
    return float(rng.uniform(max(0.0, 1.0 - spread), 1.0 + spread))


def _hue(img: Image.Image, shift: float) -> Image.Image:
    """Shift the hue by ``shift`` turns in PIL's HSV space (uint8 wrap-around = the colour wheel)."""
    if int(round(shift * 255)) == 0:  # the HSV round trip is lossy; skip it when nothing moves
        return img.copy()
    h, s, v = img.convert("HSV").split()
    hue = (np.asarray(h, dtype=np.int16) + int(round(shift * 255))) % 256
    return Image.merge("HSV", (Image.fromarray(hue.astype(np.uint8), "L"), s, v)).convert("RGB")


# -- augmentations -----------------------------------------------------------------------------------
@_augmentation(ColourJitterParams)
def colour_jitter(img: Image.Image, rng: np.random.Generator, p: ColourJitterParams) -> Image.Image:
    steps: list[Callable[[Image.Image], Image.Image]] = [
        lambda im, f=_factor(rng, p.brightness): ImageEnhance.Brightness(im).enhance(f),
        lambda im, f=_factor(rng, p.contrast): ImageEnhance.Contrast(im).enhance(f),
        lambda im, f=_factor(rng, p.saturation): ImageEnhance.Color(im).enhance(f),
        lambda im, f=float(rng.uniform(-p.hue, p.hue)): _hue(im, f),
    ]
    out = img.copy()
    for i in rng.permutation(len(steps)):
        out = steps[int(i)](out)
    return out


@_augmentation(RotationParams)
def rotation(img: Image.Image, rng: np.random.Generator, p: RotationParams) -> Image.Image:
    angle = float(rng.uniform(-p.degrees, p.degrees))
    return img.rotate(angle, resample=_RESAMPLE[p.interpolation], expand=False, fillcolor=tuple(p.fill))


@_augmentation(CropParams)
def crop(img: Image.Image, rng: np.random.Generator, p: CropParams) -> Image.Image:
    width, height = img.size
    area = width * height
    log_ratio = (math.log(p.ratio[0]), math.log(p.ratio[1]))
    box = None
    for _ in range(10):  # torchvision's RandomResizedCrop.get_params
        target = area * float(rng.uniform(*p.scale))
        aspect = math.exp(float(rng.uniform(*log_ratio)))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = (left, top, left + w, top + h)
            break
    if box is None:  # fall back to a centre crop at the nearest allowed aspect
        aspect = width / height
        w, h = (width, min(height, round(width / p.ratio[0]))) if aspect < p.ratio[0] else (
            (min(width, round(height * p.ratio[1])), height) if aspect > p.ratio[1] else (width, height))
        left, top = (width - w) // 2, (height - h) // 2
        box = (left, top, left + w, top + h)
    return img.resize((width, height), resample=_RESAMPLE[p.interpolation], box=box)


@_augmentation(JigsawParams)
def jigsaw(img: Image.Image, rng: np.random.Generator, p: JigsawParams) -> Image.Image:
    arr = np.asarray(img)  # (height, width, 3)
    k = min(p.grid, arr.shape[0], arr.shape[1])
    out = arr.copy()
    if k < 2:  # a 1-pixel-wide image has one tile
        return Image.fromarray(out, "RGB")
    th, tw = arr.shape[0] // k, arr.shape[1] // k
    tiles = [arr[r * th:(r + 1) * th, c * tw:(c + 1) * tw] for r in range(k) for c in range(k)]
    order = rng.permutation(len(tiles))
    while (order == np.arange(len(tiles))).all():  # the identity is no augmentation
        order = rng.permutation(len(tiles))
    for dst, src in enumerate(order):
        r, c = divmod(dst, k)
        out[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = tiles[int(src)]
    return Image.fromarray(out, "RGB")


@_augmentation(ResolutionParams)
def resolution(img: Image.Image, rng: np.random.Generator, p: ResolutionParams) -> Image.Image:
    width, height = img.size
    factor = float(rng.uniform(*p.factor))
    small = (max(1, round(width / factor)), max(1, round(height / factor)))
    low = img.resize(small, resample=_RESAMPLE[p.downsample])
    return low.resize((width, height), resample=_RESAMPLE[p.upsample])


#: name -> (fn, params model, description)
AUGMENTATIONS: dict[str, tuple[Callable[..., Image.Image], type[_Params], str]] = {
    "colour_jitter": (colour_jitter, ColourJitterParams,
                      "random brightness, contrast, saturation and hue, in a random order"),
    "rotation": (rotation, RotationParams, "rotate by a random angle about the centre; same size, corners filled"),
    "crop": (crop, CropParams, "random resized crop (share of the area, aspect range) back to the same size"),
    "jigsaw": (jigsaw, JigsawParams, "split into grid x grid tiles and shuffle them"),
    "resolution": (resolution, ResolutionParams, "downscale by a random factor, then upscale back to the same size"),
}


@hookimpl
def register_augmentations(register):
    for name, (fn, params, description) in AUGMENTATIONS.items():
        register(AugmentationSpec(name=name, modality="image", fn=fn, params=params,
                                  description=f"{description} (returns an RGB PIL image of the input's size)"))
