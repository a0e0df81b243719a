"""The starter pack's four labelled data sets, built on the spot, seeded, with no download."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from hub.errors import HubError, InvalidInputError, InvalidOptionsError

PACK_MANIFEST = "pack.json"
PACK_FORMAT = 1
ANCHOR_ENCODER = "minilm-l6"
ESPEAK_INSTALL = "apt-get install espeak-ng (Debian/Ubuntu), brew install espeak-ng (macOS)"

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class MissingToolError(HubError, FileNotFoundError):
    """An external program or optional library the starter pack needs is not installed."""


def _require(module: str, install: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingToolError(f"the starter pack needs the Python package {module!r}; install it: {install}") from None


# -- data ---------------------------------------------------------------------------------------


@dataclass
class StarterData:
    """A small labelled data set of one modality, with a held-out split and a caption per class.

    ``items[i]`` has class ``classes[labels[i]]``; ``held_out[i]`` marks the items
    never seen in training; ``info[i]`` says how item ``i`` was made (voice,
    size, pose, ...); ``template`` turns a class name into its caption.
    """

    modality: str
    classes: tuple[str, ...]
    template: str
    items: list[Any]
    labels: np.ndarray  # (items,) int
    held_out: np.ndarray  # (items,) bool
    info: list[dict[str, Any]] = field(default_factory=list)

    def caption(self, label: int) -> str:
        """The plain-words caption of class ``label`` ("a handwritten seven")."""
        return self.template.format(self.classes[int(label)])

    def prompts(self) -> list[str]:
        """One caption per class, in class order: the zero-shot prompts."""
        return [self.caption(i) for i in range(len(self.classes))]

    def split(self, held_out: bool) -> tuple[list[Any], np.ndarray]:
        """The items and labels of the held-out (``True``) or the training (``False``) split."""
        idx = np.flatnonzero(self.held_out == held_out)
        return [self.items[i] for i in idx], self.labels[idx]

    def pairs(self) -> list[tuple[Any, str]]:
        """(item, caption) pairs of the training split, for :func:`hub.train.align`."""
        items, labels = self.split(False)
        return [(x, self.caption(y)) for x, y in zip(items, labels)]

    def fingerprint(self) -> str:
        """A short sha256 of the content: every item (image pixels, audio samples, graph edges, point arrays),
        the labels and the split (a reloaded pack checks it rebuilt the same data).  Audio hashes the clip
        espeak-ng wrote (exact), not the resampled floats."""
        h = hashlib.sha256(self.labels.astype(np.int64).tobytes() + self.held_out.astype(np.uint8).tobytes())
        for i, item in enumerate(self.items):
            digest = self.info[i].get("sha256") if i < len(self.info) else None
            h.update(bytes.fromhex(digest) if digest else item_bytes(item))
        return h.hexdigest()[:16]

    def label_fingerprint(self) -> str:
        """The fingerprint of packs built before content was hashed: labels and split only."""
        h = hashlib.sha256(self.labels.astype(np.int64).tobytes() + self.held_out.astype(np.uint8).tobytes())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.items)


def item_bytes(item: Any) -> bytes:
    """The content of one starter item as bytes, with its shape: a PIL image's mode, size and pixels; an audio
    dict's rate and float32 samples; a networkx graph's node count and sorted edges; an array's shape and values."""
    if hasattr(item, "tobytes") and hasattr(item, "mode") and hasattr(item, "size"):  # PIL image
        return f"image:{item.mode}:{item.size}".encode() + item.tobytes()
    if isinstance(item, dict) and "array" in item:
        samples = np.ascontiguousarray(item["array"], dtype=np.float32)
        return f"audio:{item.get('sampling_rate')}:{samples.shape}".encode() + samples.tobytes()
    if hasattr(item, "edges") and hasattr(item, "number_of_nodes"):  # networkx graph
        edges = np.asarray(sorted(tuple(sorted((int(a), int(b)))) for a, b in item.edges()), dtype=np.int64)
        return f"graph:{item.number_of_nodes()}:{len(edges)}".encode() + edges.tobytes()
    arr = np.ascontiguousarray(item)
    return f"array:{arr.dtype}:{arr.shape}".encode() + arr.tobytes()


def _stratified(labels: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """A held-out mask with ``round(share * n_c)`` items (at least one) of every class ``c``."""
    held = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(len(idx) - 1, max(1, round(share * len(idx)))) if len(idx) > 1 else 0
        held[rng.choice(idx, size=k, replace=False)] = True
    return held


def _check_share(share: float) -> None:
    if not 0 < share < 1:
        raise InvalidOptionsError(f"held_out must be a share between 0 and 1 (e.g. 0.25); got {share}")


def digit_images(seed: int = 0, *, per_class: int | None = None, size: int = 32, held_out: float = 0.25) -> StarterData:
    """scikit-learn's handwritten digits (1797 scans of 8 x 8 greyscale) as ``size`` x ``size`` RGB PIL images.

    ``per_class``: keep that many images of each digit (seeded), else all of them.
    Held out: a stratified ``held_out`` share.  Caption: "a handwritten seven".
    """
    datasets = _require("sklearn.datasets", "pip install scikit-learn")
    from PIL import Image

    _check_share(held_out)
    digits = datasets.load_digits()
    rng = np.random.default_rng([seed, 1])
    labels = np.asarray(digits.target, dtype=np.int64)
    keep = np.arange(len(labels))
    if per_class is not None:
        keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)])
        keep.sort()
    images = []
    for i in keep:
        grey = np.clip(digits.images[i] * (255.0 / 16.0), 0, 255).astype(np.uint8)  # (8, 8), ink is bright
        img = Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR).convert("RGB")
        images.append(img)
    labels = labels[keep]
    info = [{"source": "sklearn.datasets.load_digits", "index": int(i)} for i in keep]
    return StarterData("image", DIGITS, "a handwritten {}", images, labels, _stratified(labels, held_out, rng), info)


#: espeak-ng voices (all built in, no mbrola); a voice may carry a variant after "+"
VOICES = (
    "en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
    "en+f3", "en-us+f2", "en+m3", "en-gb-x-rp+f4", "en-us+m7", "en+klatt2",
)
SPEEDS = (120, 150, 180, 210)
PITCHES = (30, 50, 70, 90)


def espeak_binary() -> str:
    """The path of ``espeak-ng`` (or ``espeak``); :class:`MissingToolError` naming the install when absent."""
    found = shutil.which("espeak-ng") or shutil.which("espeak")
    if found is None:
        raise MissingToolError(
            "spoken digits are synthesised with the espeak-ng program, which is not on PATH; install it: "
            f"{ESPEAK_INSTALL}"
        )
    return found


ESPEAK_RATE = 22050  # espeak-ng's own voices write 22.05 kHz


def synthesize(word: str, voice: str, speed: int, pitch: int, *, binary: str | None = None,
               workdir: str | os.PathLike | None = None) -> np.ndarray:
    """``word`` spoken by espeak-ng (``-v voice -s speed -p pitch``), decoded by the audio plugin at 22.05 kHz: (samples,)."""
    from hub_audio import load_waveform

    binary = binary or espeak_binary()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "word.wav"
        cmd = [binary, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), word]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode != 0 or not path.is_file():
            raise HubError(f"espeak-ng failed for {word!r} (voice {voice}, speed {speed}, pitch {pitch}): "
                           f"exit {done.returncode}: {done.stderr.strip()[:300]}")
        wave = load_waveform(path, ESPEAK_RATE, lambda problem: InvalidInputError(f"espeak-ng wrote bad audio: {problem}"))
    return np.asarray(wave.samples, dtype=np.float32)


def spoken_digits(seed: int = 0, *, voices: Sequence[str] = VOICES, speeds: Sequence[int] = SPEEDS,
                  pitches: Sequence[int] = PITCHES, combos: int | None = 48, held_out: float = 0.25,
                  rate: int = 16000) -> StarterData:
    """The ten digit words spoken by espeak-ng, one clip per word and voice / speed / pitch combination.

    ``combos`` of the voice x speed x pitch grid are drawn (seeded; every voice
    at least once when possible); a ``held_out`` share of those combinations is
    held out whole, so held-out clips come from speakers unseen in training.
    Items are ``{"array": float32 samples, "sampling_rate": rate}``.
    Caption: "the spoken word seven".  Needs the ``espeak-ng`` program.
    """
    _check_share(held_out)
    binary = espeak_binary()
    rng = np.random.default_rng([seed, 2])
    grid = [(v, s, p) for v in voices for s in speeds for p in pitches]
    if combos is None or combos >= len(grid):
        chosen = grid
    else:
        if combos < 2:
            raise InvalidOptionsError(f"spoken_digits needs combos >= 2 (one to train, one to hold out); got {combos}")
        order = rng.permutation(len(grid))
        first = {}  # one combination of every voice first, then the rest at random
        for i in order:
            first.setdefault(grid[i][0], i)
        picks = list(first.values())[:combos]
        taken = set(picks)
        picks += [i for i in order if i not in taken][: combos - len(picks)]
        chosen = [grid[i] for i in sorted(picks)]
    n_held = min(len(chosen) - 1, max(1, round(held_out * len(chosen))))
    held_combos = set(rng.choice(len(chosen), size=n_held, replace=False).tolist())
    import torchaudio
    from concurrent.futures import ThreadPoolExecutor

    # one kernel for every clip, in float64 (rounded to float32 after), so thread counts and kernels leave the bits alone
    resample = torchaudio.transforms.Resample(ESPEAK_RATE, rate, dtype=torch.float64)
    jobs = [(c, label, combo) for c, combo in enumerate(chosen) for label in range(len(DIGITS))]
    with tempfile.TemporaryDirectory(prefix="mhub-espeak-") as work, ThreadPoolExecutor(4) as pool:
        raws = list(pool.map(lambda j: synthesize(DIGITS[j[1]], *j[2], binary=binary, workdir=work), jobs))
    items, labels, held, info = [], [], [], []
    with torch.no_grad():
        for (c, label, (voice, speed, pitch)), raw in zip(jobs, raws):
            samples = raw if rate == ESPEAK_RATE else resample(torch.from_numpy(raw).double()).float().numpy()
            items.append({"array": samples, "sampling_rate": rate})
            labels.append(label)
            held.append(c in held_combos)
            info.append({"voice": voice, "speed": speed, "pitch": pitch, "seconds": round(len(samples) / rate, 3),
                         "sha256": hashlib.sha256(item_bytes({"array": raw, "sampling_rate": ESPEAK_RATE})).hexdigest()})
    return StarterData("audio", DIGITS, "the spoken word {}", items, np.asarray(labels, dtype=np.int64),
                       np.asarray(held, dtype=bool), info)


def _tree(n: int, rng: np.random.Generator, nx: Any) -> Any:
    r = int(rng.integers(2, 4))
    h = max(2, int(round(np.log(max(n, 3) * (r - 1) + 1) / np.log(r))) - 1)
    return nx.balanced_tree(r, h)


#: family name → builder ``(nodes, rng, networkx) -> graph`` of about ``nodes`` nodes
GRAPH_FAMILIES: dict[str, Callable[[int, np.random.Generator, Any], Any]] = {
    "cycle": lambda n, rng, nx: nx.cycle_graph(n),
    "path": lambda n, rng, nx: nx.path_graph(n),
    "star": lambda n, rng, nx: nx.star_graph(n - 1),
    "complete": lambda n, rng, nx: nx.complete_graph(max(4, n // 2)),
    "grid": lambda n, rng, nx: nx.grid_2d_graph(a := int(rng.integers(3, 6)), max(3, n // a)),
    "tree": _tree,
    "wheel": lambda n, rng, nx: nx.wheel_graph(n),
    "ladder": lambda n, rng, nx: nx.ladder_graph(max(3, n // 2)),
}


def graph_families(seed: int = 0, *, per_class: int = 60, nodes: tuple[int, int] = (6, 30),
                   held_out: float = 0.25) -> StarterData:
    """``per_class`` networkx graphs of every family in :data:`GRAPH_FAMILIES`, of ``nodes`` sizes (seeded),
    with nodes relabelled in a random order.  Caption: "a wheel graph"."""
    nx = _require("networkx", "pip install networkx (or modality-hub-graph)")
    _check_share(held_out)
    if nodes[0] < 4 or nodes[1] < nodes[0]:
        raise InvalidOptionsError(f"nodes must be a range (low, high) with 4 <= low <= high; got {nodes}")
    rng = np.random.default_rng([seed, 3])
    names = tuple(GRAPH_FAMILIES)
    items, labels, info = [], [], []
    for _ in range(per_class):
        for label, name in enumerate(names):
            n = int(rng.integers(nodes[0], nodes[1] + 1))
            g = nx.convert_node_labels_to_integers(GRAPH_FAMILIES[name](n, rng, nx))
            perm = rng.permutation(g.number_of_nodes())
            g = nx.relabel_nodes(g, {i: int(perm[i]) for i in range(len(perm))})
            h = nx.Graph()
            h.add_nodes_from(range(g.number_of_nodes()))
            h.add_edges_from(g.edges())
            items.append(h)
            labels.append(label)
            info.append({"family": name, "nodes": h.number_of_nodes(), "edges": h.number_of_edges()})
    labels_arr = np.asarray(labels, dtype=np.int64)
    return StarterData("graph", names, "a {} graph", items, labels_arr, _stratified(labels_arr, held_out, rng), info)


def _mesh(name: str, rng: np.random.Generator, trimesh: Any) -> Any:
    u = rng.uniform
    makers: dict[str, Callable[[], Any]] = {
        "box": lambda: trimesh.creation.box(extents=u(0.6, 1.6, 3)),
        "sphere": lambda: trimesh.creation.icosphere(subdivisions=3, radius=u(0.5, 1.0)),
        "cylinder": lambda: trimesh.creation.cylinder(radius=u(0.3, 0.6), height=u(1.0, 2.0), sections=32),
        "cone": lambda: trimesh.creation.cone(radius=u(0.4, 0.8), height=u(0.8, 1.8), sections=32),
        "torus": lambda: trimesh.creation.torus(major_radius=u(0.7, 1.0), minor_radius=u(0.15, 0.35)),
        "capsule": lambda: trimesh.creation.capsule(height=u(0.8, 1.6), radius=u(0.3, 0.5)),
    }
    return makers[name]()


SHAPES = ("box", "sphere", "cylinder", "cone", "torus", "capsule")


def primitive_shapes(seed: int = 0, *, per_class: int = 60, points: int = 512, noise: float = 0.01,
                     stretch: tuple[float, float] = (0.8, 1.25), held_out: float = 0.25) -> StarterData:
    """``per_class`` trimesh primitives of every kind in :data:`SHAPES` with random sizes, an anisotropic
    ``stretch`` per axis, a random rotation and offset, ``points`` surface samples plus Gaussian ``noise``
    (a share of the shape's radius): float32 (points, 3) arrays.  Caption: "a torus"."""
    trimesh = _require("trimesh", "pip install trimesh (or modality-hub-3d)")
    _check_share(held_out)
    rng = np.random.default_rng([seed, 4])
    items, labels, info = [], [], []
    for _ in range(per_class):
        for label, name in enumerate(SHAPES):
            mesh = _mesh(name, rng, trimesh)
            scale = rng.uniform(*stretch, 3)
            mesh.apply_scale(1.0)
            mesh.apply_transform(np.diag([*scale, 1.0]))
            mesh.apply_transform(trimesh.transformations.random_rotation_matrix(rng.random(3)))
            pts, _ = trimesh.sample.sample_surface(mesh, points, seed=int(rng.integers(2**31)))
            radius = float(np.linalg.norm(pts - pts.mean(0), axis=1).max())
            pts = pts + rng.normal(0.0, noise * radius, pts.shape) + rng.uniform(-1, 1, 3)
            items.append(pts.astype(np.float32))
            labels.append(label)
            info.append({"shape": name, "stretch": [round(float(s), 3) for s in scale]})
    labels_arr = np.asarray(labels, dtype=np.int64)
    return StarterData("3d", SHAPES, "a {}", items, labels_arr, _stratified(labels_arr, held_out, rng), info)


#: modality → data builder ``(seed, **options) -> StarterData``
BUILDERS: dict[str, Callable[..., StarterData]] = {
    "image": digit_images,
    "audio": spoken_digits,
    "graph": graph_families,
    "3d": primitive_shapes,
}


def build_data(modality: str, seed: int = 0, **options: Any) -> StarterData:
    """The starter data set of ``modality`` (see :data:`BUILDERS`), built with ``options``."""
    if modality not in BUILDERS:
        raise InvalidOptionsError(f"no starter data for modality {modality!r}; starter modalities: {', '.join(BUILDERS)}")
    return BUILDERS[modality](seed, **options)
