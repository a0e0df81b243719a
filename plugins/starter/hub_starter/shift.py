"""Shifted evaluation sets: items unlike the training data, generated, seeded, never trained on.

Every builder returns a :class:`~hub_starter.data.StarterData` whose items are all
held out (``held_out`` is all ``True``) and whose ``info[i]["shift"]`` names the
kind of shift, so :func:`hub_starter.evaluation.evaluate` reports each kind apart:

* **image** — ``font``: digits drawn with Pillow's bundled scalable font (sizes, weights, slants,
  rotations) instead of handwriting scans; ``stroke``: held-out scans thickened or thinned
  (max / min filters); ``contrast``: held-out scans dimmed, washed out or inverted (dark ink on light);
  ``placement``: held-out scans shrunk and moved off centre;
* **audio** — ``variant``: training voices with espeak-ng variants no training voice uses (called ``voice``
  before the ``accent`` and ``speaker`` kinds came); ``speed`` and ``pitch``: training voices at speeds and
  pitches outside the training ranges; ``accent``: espeak-ng voices of other languages (:data:`ACCENT_VOICES`)
  reading the English digit words with their own letter-to-sound rules (where espeak-ng recognises an English
  word it switches to English for it), i.e. foreign-accented English from voices outside the training list;
  ``speaker``: the English voices with the named espeak-ng speakers of :data:`SPEAKER_VARIANTS` (whispered,
  creaky, and four human-like speakers), which no training voice uses;
* **graph** — ``size``: every family at 31 to 60 nodes (the training range is 6 to 30: up to 2x);
* **3d** — ``stretch``: per-axis factors beyond the training range; ``noise``: 3-5x the noise;
  ``cut``: a random plane cuts 20-40 % of the shape away; ``points``: 128 or 2048 points (training: 512).

The seeds of the shifted sets (``[seed, 100 + k]``) never meet the training seeds; image shifts start
from the held-out split of :func:`digit_images`, so no training scan appears in them either.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .data import (
    DIGITS, GRAPH_FAMILIES, SHAPES, SPEEDS, PITCHES, VOICES, StarterData, _mesh, _require, digit_images,
    espeak_binary, synthesize,
)

#: image shift kinds
IMAGE_SHIFTS = ("font", "stroke", "contrast", "placement")
#: espeak-ng voices with variants none of :data:`VOICES` uses (kind ``variant``)
SHIFT_VOICES = ("en+f1", "en-us+f5", "en-gb-scotland+m1", "en-029+m5", "en-us-nyc+m6", "en-gb-x-rp+klatt3")
# The two kinds below were chosen, and this list written, before either the pack or the baseline was run on them
# (issue 17 asks for "espeak-ng voices and variants outside the training list"; every training voice is English):
#: kind ``accent``: built-in voices of Latin-script languages, so that each reads the English spelling with its own
#: rules, as a speaker of that language might: three Germanic (nearer English), three Romance (farther)
ACCENT_VOICES = ("de", "nl", "sv", "fr", "es", "it")
#: kind ``speaker``: named espeak-ng speaker variants on the training English voices: a whispered and a creaky
#: source (no voicing like any training voice) and four human-like speakers with their own formants and tone
SPEAKER_VARIANTS = ("whisper", "croak", "Annie", "edward", "grandpa", "steph")
#: audio shift kinds, in the order :func:`shifted_speech` lists them
AUDIO_SHIFTS = ("variant", "speed", "pitch", "accent", "speaker")
#: speeds and pitches outside the training grid (:data:`SPEEDS` 120-210, :data:`PITCHES` 30-90)
SHIFT_SPEEDS = (85, 100, 245, 270)
SHIFT_PITCHES = (5, 15, 99)
SHAPE_SHIFTS = ("stretch", "noise", "cut", "points")


def _all_held(modality: str, classes: Sequence[str], template: str, items: list[Any], labels: list[int],
              info: list[dict[str, Any]]) -> StarterData:
    arr = np.asarray(labels, dtype=np.int64)
    return StarterData(modality, tuple(classes), template, items, arr, np.ones(len(arr), dtype=bool), info)


def _font_digit(label: int, size: int, rng: np.random.Generator) -> Any:
    """A digit drawn with Pillow's bundled font (the same on every machine), light ink on black."""
    from PIL import Image, ImageDraw, ImageFont

    big = size * 4
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=int(rng.integers(int(big * 0.55), int(big * 0.85))))
    weight = int(rng.integers(0, 5))  # 0: regular ... 4: heavy
    box = draw.textbbox((0, 0), str(label), font=font, stroke_width=weight)
    x = (big - (box[2] - box[0])) // 2 - box[0]
    y = (big - (box[3] - box[1])) // 2 - box[1]
    draw.text((x, y), str(label), fill=255, font=font, stroke_width=weight, stroke_fill=255)
    shear = float(rng.uniform(-0.3, 0.3))  # slanted styles
    canvas = canvas.transform((big, big), Image.Transform.AFFINE, (1, shear, -shear * big / 2, 0, 1, 0),
                              Image.Resampling.BILINEAR)
    canvas = canvas.rotate(float(rng.uniform(-12, 12)), Image.Resampling.BILINEAR)
    return canvas.resize((size, size), Image.Resampling.BOX).convert("RGB")


def _restyle(img: Any, kind: str, rng: np.random.Generator) -> tuple[Any, dict[str, Any]]:
    from PIL import Image, ImageFilter

    size = img.size[0]
    grey = img.convert("L")
    if kind == "stroke":
        k = int(rng.choice([3, 5]))
        thick = bool(rng.random() < 0.6)
        out = grey.filter(ImageFilter.MaxFilter(k) if thick else ImageFilter.MinFilter(3))
        return out.convert("RGB"), {"stroke": f"{'thicker' if thick else 'thinner'}-{k if thick else 3}"}
    if kind == "contrast":
        a = np.asarray(grey, dtype=np.float32) / 255.0
        mode = str(rng.choice(["dim", "washed", "inverted"]))
        if mode == "dim":
            lo, hi = 0.0, float(rng.uniform(0.25, 0.45))
        elif mode == "washed":
            lo = float(rng.uniform(0.35, 0.55))
            hi = lo + float(rng.uniform(0.2, 0.35))
        else:
            lo, hi = float(rng.uniform(0.85, 1.0)), float(rng.uniform(0.0, 0.25))  # dark ink on a light page
        out = np.clip(lo + a * (hi - lo), 0, 1)
        return Image.fromarray((out * 255).round().astype(np.uint8)).convert("RGB"), {"contrast": mode}
    # placement: shrink to 45-70 % and put the digit anywhere it fits
    scale = float(rng.uniform(0.45, 0.7))
    side = max(4, int(round(size * scale)))
    small = grey.resize((side, side), Image.Resampling.BILINEAR)
    page = Image.new("L", (size, size), 0)
    x, y = (int(rng.integers(0, size - side + 1)) for _ in range(2))
    page.paste(small, (x, y))
    return page.convert("RGB"), {"placement": [round(scale, 2), x, y]}


def shifted_digits(seed: int = 0, *, per_kind: int = 10, size: int = 32, per_class: int | None = None) -> StarterData:
    """``per_kind`` digits of every class in every kind of :data:`IMAGE_SHIFTS` (see the module's docstring)."""
    rng = np.random.default_rng([seed, 101])
    base = digit_images(seed, per_class=per_class, size=size)
    held_items, held_labels = base.split(True)
    items, labels, info = [], [], []
    for kind in IMAGE_SHIFTS:
        for label in range(len(DIGITS)):
            pool = np.flatnonzero(held_labels == label)
            picks = rng.choice(pool, size=per_kind, replace=len(pool) < per_kind)
            for j in range(per_kind):
                if kind == "font":
                    img, extra = _font_digit(label, size, rng), {}
                else:
                    img, extra = _restyle(held_items[int(picks[j])], kind, rng)
                items.append(img)
                labels.append(label)
                info.append({"shift": kind, **extra})
    return _all_held("image", DIGITS, base.template, items, labels, info)


def shifted_speech(seed: int = 0, *, per_kind: int = 8, rate: int = 16000) -> StarterData:
    """The ten digit words from :data:`SHIFT_VOICES` (``variant``), from training voices at
    :data:`SHIFT_SPEEDS` (``speed``) or :data:`SHIFT_PITCHES` (``pitch``), from :data:`ACCENT_VOICES`
    (``accent``) and from training English voices with :data:`SPEAKER_VARIANTS` (``speaker``): ``per_kind``
    combinations each (the last two at training speeds and pitches, drawn from their own seed, so the first three
    kinds are the same clips whatever the last two hold)."""
    import hashlib
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    import torch
    import torchaudio

    from .data import ESPEAK_RATE, item_bytes

    # per_kind 8 (it was 4) came with the accent and speaker kinds, before any of them was measured: 80 clips a
    # kind, so that one clip is 0.0125 of a kind and the comparison with the baseline is not decided by one clip
    binary = espeak_binary()
    rng = np.random.default_rng([seed, 102])
    combos: list[tuple[str, str, int, int]] = []
    for _ in range(per_kind):
        combos.append(("variant", str(rng.choice(SHIFT_VOICES)), int(rng.choice(SPEEDS)), int(rng.choice(PITCHES))))
        combos.append(("speed", str(rng.choice(VOICES)), int(rng.choice(SHIFT_SPEEDS)), int(rng.choice(PITCHES))))
        combos.append(("pitch", str(rng.choice(VOICES)), int(rng.choice(SPEEDS)), int(rng.choice(SHIFT_PITCHES))))
    english = sorted({v.split("+")[0] for v in VOICES})
    other = np.random.default_rng([seed, 105])
    for _ in range(per_kind):
        combos.append(("accent", str(other.choice(ACCENT_VOICES)), int(other.choice(SPEEDS)), int(other.choice(PITCHES))))
        combos.append(("speaker", f"{other.choice(english)}+{other.choice(SPEAKER_VARIANTS)}", int(other.choice(SPEEDS)),
                       int(other.choice(PITCHES))))
    jobs = [(combo, label) for combo in combos for label in range(len(DIGITS))]
    with tempfile.TemporaryDirectory(prefix="mhub-espeak-") as work, ThreadPoolExecutor(4) as pool:
        raws = list(pool.map(lambda j: synthesize(DIGITS[j[1]], *j[0][1:], binary=binary, workdir=work), jobs))
    resample = torchaudio.transforms.Resample(ESPEAK_RATE, rate, dtype=torch.float64)
    items, labels, info = [], [], []
    with torch.no_grad():
        for ((kind, voice, speed, pitch), label), raw in zip(jobs, raws):
            samples = raw if rate == ESPEAK_RATE else resample(torch.from_numpy(raw).double()).float().numpy()
            items.append({"array": samples, "sampling_rate": rate})
            labels.append(label)
            info.append({"shift": kind, "voice": voice, "speed": speed, "pitch": pitch,
                         "sha256": hashlib.sha256(item_bytes({"array": raw, "sampling_rate": ESPEAK_RATE})).hexdigest()})
    return _all_held("audio", DIGITS, "the spoken word {}", items, labels, info)


def larger_graphs(seed: int = 0, *, per_class: int = 15, nodes: tuple[int, int] = (31, 60)) -> StarterData:
    """``per_class`` graphs of every family at ``nodes`` sizes (training: 6 to 30), nodes in random order."""
    nx = _require("networkx", "pip install networkx (or modality-hub-graph)")
    rng = np.random.default_rng([seed, 103])
    names = tuple(GRAPH_FAMILIES)
    items, labels, info = [], [], []
    for _ in range(per_class):
        for label, name in enumerate(names):
            n = int(rng.integers(nodes[0], nodes[1] + 1))
            g = nx.convert_node_labels_to_integers(GRAPH_FAMILIES[name](n, rng, nx))
            perm = rng.permutation(g.number_of_nodes())
            h = nx.Graph()
            h.add_nodes_from(range(g.number_of_nodes()))
            h.add_edges_from((int(perm[a]), int(perm[b])) for a, b in g.edges())
            items.append(h)
            labels.append(label)
            info.append({"shift": "size", "family": name, "size": n, "nodes": h.number_of_nodes()})
    return _all_held("graph", names, "a {} graph", items, labels, info)


def harder_shapes(seed: int = 0, *, per_kind: int = 10, points: int = 512) -> StarterData:
    """``per_kind`` shapes of every class in every kind of :data:`SHAPE_SHIFTS` (see the module's docstring)."""
    trimesh = _require("trimesh", "pip install trimesh (or modality-hub-3d)")
    rng = np.random.default_rng([seed, 104])
    items, labels, info = [], [], []
    for kind in SHAPE_SHIFTS:
        for _ in range(per_kind):
            for label, name in enumerate(SHAPES):
                mesh = _mesh(name, rng, trimesh)
                if kind == "stretch":  # each axis beyond the training range (0.8, 1.25)
                    scale = np.where(rng.random(3) < 0.5, rng.uniform(0.55, 0.75, 3), rng.uniform(1.35, 1.8, 3))
                else:
                    scale = rng.uniform(0.8, 1.25, 3)
                mesh.apply_transform(np.diag([*scale, 1.0]))
                mesh.apply_transform(trimesh.transformations.random_rotation_matrix(rng.random(3)))
                n = int(rng.choice([128, 2048])) if kind == "points" else points
                pts, _ = trimesh.sample.sample_surface(mesh, n, seed=int(rng.integers(2**31)))
                radius = float(np.linalg.norm(pts - pts.mean(0), axis=1).max())
                noise = float(rng.uniform(0.03, 0.05)) if kind == "noise" else 0.01
                pts = pts + rng.normal(0.0, noise * radius, pts.shape)
                extra: dict[str, Any] = {}
                if kind == "cut":
                    cut = float(rng.uniform(0.2, 0.4))
                    direction = rng.standard_normal(3)
                    height = (pts - pts.mean(0)) @ (direction / np.linalg.norm(direction))
                    pts = pts[np.sort(np.argsort(height, kind="stable")[: int(round((1 - cut) * len(pts)))])]
                    extra["cut"] = round(cut, 2)
                pts = pts + rng.uniform(-1, 1, 3)
                items.append(pts.astype(np.float32))
                labels.append(label)
                info.append({"shift": kind, "shape": name, "points": len(pts), "noise": round(noise, 3),
                             "stretch": [round(float(s), 3) for s in scale], **extra})
    return _all_held("3d", SHAPES, "a {}", items, labels, info)


#: modality → shifted-set builder ``(seed, **options) -> StarterData`` (every item held out)
SHIFTED: dict[str, Callable[..., StarterData]] = {
    "image": shifted_digits,
    "audio": shifted_speech,
    "graph": larger_graphs,
    "3d": harder_shapes,
}

#: the options a shifted set takes from the modality's training data options
_INHERIT = {"image": ("size", "per_class"), "audio": ("rate",), "graph": (), "3d": ("points",)}


#: modality → the size options a shifted set accepts, and their cap (a pack.json names them)
SHIFT_LIMITS = {"image": {"per_kind": 100}, "audio": {"per_kind": 16}, "graph": {"per_class": 100}, "3d": {"per_kind": 100}}


def shifted_data(modality: str, seed: int = 0, data_options: dict[str, Any] | None = None, **options: Any) -> StarterData:
    """The shifted evaluation set of ``modality`` for a pack whose data was built with ``data_options``;
    ``options`` (sizes, :data:`SHIFT_LIMITS`) are checked: :class:`hub.errors.InvalidOptionsError` otherwise."""
    from hub.errors import InvalidOptionsError

    limits = SHIFT_LIMITS.get(modality)
    if limits is None:
        raise InvalidOptionsError(f"no shifted set for modality {modality!r}; shifted sets: {', '.join(SHIFTED)}")
    for key, value in options.items():
        if key not in limits:
            raise InvalidOptionsError(f"{modality} shifted-set option {key!r} is not accepted ({', '.join(limits)})")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limits[key]:
            raise InvalidOptionsError(f"{modality} shifted-set option {key}={value!r} must be an int in 1..{limits[key]}")
    inherited = {k: v for k, v in (data_options or {}).items() if k in _INHERIT.get(modality, ()) and v is not None}
    return SHIFTED[modality](seed, **{**inherited, **options})
