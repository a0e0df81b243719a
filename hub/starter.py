"""The starter pack: one shared space learned offline from real, small data, and its evaluation.

Four labelled data sets are built on the spot, seeded, with no download:

* **image** — scikit-learn's handwritten digits (8 x 8 greyscale, upscaled), "a handwritten seven";
* **audio** — the ten digit words spoken by ``espeak-ng`` in several voices, speeds and
  pitches (the Debian package ``espeak-ng``), "the spoken word seven";
* **graph** — networkx families (cycle, path, star, ...) of varied sizes, "a wheel graph";
* **3d** — trimesh primitives (box, sphere, ...) in random poses with anisotropic size
  changes and noise, sampled to point clouds, "a torus".

Each has a held-out split never seen in training (stratified; for audio whole
voice / speed / pitch combinations are held out).  :func:`build_starter_pack`
pretrains each small encoder self-supervised (contrastive, with the modality's
registered augmentations) where that helps, aligns it to the text anchor
(``minilm-l6``) with InfoNCE on the captions, and saves every
:class:`~hub.training.AlignResult` under ``out_dir/<modality>/`` with a
``pack.json`` manifest; a second call loads it.  :func:`evaluate` measures
zero-shot classification per modality and emergent audio → image retrieval,
:func:`ablation` compares the pipeline with and without pretraining, and
:func:`query` / :func:`draw_query` answer a text query across the modalities.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from .errors import BundleError, HubError, InvalidInputError, InvalidOptionsError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from ._hub import Hub
    from .training import AlignResult

__all__ = [
    "DIGITS",
    "GRAPH_FAMILIES",
    "SHAPES",
    "VOICES",
    "BUDGETS",
    "MissingToolError",
    "StarterData",
    "ModalityPlan",
    "StarterBudget",
    "StarterPack",
    "digit_images",
    "spoken_digits",
    "graph_families",
    "primitive_shapes",
    "build_data",
    "build_starter_pack",
    "load_starter_pack",
    "default_pack_dir",
    "zero_shot",
    "retrieval",
    "render_item",
    "draw_retrieval",
    "PackManifest",
    "BUILDERS",
    "RENDERERS",
    "espeak_binary",
    "synthesize",
    "evaluate",
    "ablation",
    "query",
    "draw_query",
]

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
        """(item, caption) pairs of the training split, for :func:`hub.training.align`."""
        items, labels = self.split(False)
        return [(x, self.caption(y)) for x, y in zip(items, labels)]

    def fingerprint(self) -> str:
        """A short hash of the labels and the split (a reloaded pack checks it rebuilt the same data)."""
        h = hashlib.sha256(self.labels.astype(np.int64).tobytes() + self.held_out.astype(np.uint8).tobytes())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.items)


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

    resample = torchaudio.transforms.Resample(ESPEAK_RATE, rate)  # one kernel for every clip
    jobs = [(c, label, combo) for c, combo in enumerate(chosen) for label in range(len(DIGITS))]
    with tempfile.TemporaryDirectory(prefix="mhub-espeak-") as work, ThreadPoolExecutor(4) as pool:
        raws = list(pool.map(lambda j: synthesize(DIGITS[j[1]], *j[2], binary=binary, workdir=work), jobs))
    items, labels, held, info = [], [], [], []
    with torch.no_grad():
        for (c, label, (voice, speed, pitch)), raw in zip(jobs, raws):
            samples = raw if rate == ESPEAK_RATE else resample(torch.from_numpy(raw)).numpy()
            items.append({"array": samples, "sampling_rate": rate})
            labels.append(label)
            held.append(c in held_combos)
            info.append({"voice": voice, "speed": speed, "pitch": pitch, "seconds": round(len(samples) / rate, 3)})
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


# -- plans and budgets ----------------------------------------------------------------------


class ModalityPlan(BaseModel):
    """How the starter pack learns one modality: its data, encoder, pretraining and alignment."""

    model_config = ConfigDict(extra="forbid")

    modality: str
    data: dict[str, Any] = Field(default_factory=dict, description="options of the data builder")
    encoder: str
    encoder_options: dict[str, Any] = Field(default_factory=dict)
    pretrain_epochs: int = Field(0, ge=0, description="contrastive pretraining epochs (0: none)")
    pretrain_objective: Literal["contrastive", "masked"] = "contrastive"
    pretrain_lr: float = Field(1e-3, gt=0)
    pretrain_batch_size: int = Field(64, ge=2)
    align_epochs: int = Field(10, ge=1)
    align_lr: float = Field(1e-3, gt=0)
    align_batch_size: int = Field(32, ge=2)
    train_encoder: bool = Field(False, description="train the encoder with the projector during alignment")
    projector: str = "mlp"


class StarterBudget(BaseModel):
    """A named set of plans, one per modality."""

    model_config = ConfigDict(extra="forbid")

    name: str
    plans: dict[str, ModalityPlan]


_POINTS = {"num_points": 512, "num_groups": 32, "group_size": 32, "dim": 64, "heads": 4}

#: the budgets :func:`build_starter_pack` knows; "full" fits ~10 minutes on 2 CPU cores, "tiny" is for tests
BUDGETS: dict[str, StarterBudget] = {
    "full": StarterBudget(name="full", plans={
        "image": ModalityPlan(modality="image", encoder="tiny-clip", encoder_options={"image_size": 32},
                              pretrain_epochs=5, align_epochs=30, align_lr=2e-3, align_batch_size=64, train_encoder=True),
        "audio": ModalityPlan(modality="audio", data={"combos": 48}, encoder="tiny-whisper",
                              align_epochs=30, align_lr=2e-3, train_encoder=True),
        "graph": ModalityPlan(modality="graph", data={"per_class": 60}, encoder="gin", pretrain_epochs=10,
                              align_epochs=20, align_lr=3e-3),
        "3d": ModalityPlan(modality="3d", data={"per_class": 150}, encoder="tiny-point-bert", encoder_options=_POINTS,
                           pretrain_epochs=10, pretrain_lr=3e-4, align_epochs=30, train_encoder=True),
    }),
    "tiny": StarterBudget(name="tiny", plans={
        "image": ModalityPlan(modality="image", data={"per_class": 4}, encoder="tiny-clip",
                              encoder_options={"image_size": 16}, pretrain_epochs=1, align_epochs=1, align_batch_size=16),
        "audio": ModalityPlan(modality="audio", data={"combos": 3, "voices": ("en", "en-us", "en+f3")},
                              encoder="tiny-whisper", align_epochs=1, align_batch_size=16, train_encoder=True),
        "graph": ModalityPlan(modality="graph", data={"per_class": 3}, encoder="gin", pretrain_epochs=1,
                              align_epochs=1, align_batch_size=16),
        "3d": ModalityPlan(modality="3d", data={"per_class": 3, "points": 160}, encoder="tiny-point-bert",
                           encoder_options={"num_points": 128, "num_groups": 8, "group_size": 16},
                           pretrain_epochs=1, align_epochs=1, align_batch_size=16),
    }),
}


def _budget(budget: str | StarterBudget) -> StarterBudget:
    if isinstance(budget, StarterBudget):
        return budget
    if budget not in BUDGETS:
        raise InvalidOptionsError(f"unknown starter-pack budget {budget!r}; use one of {', '.join(BUDGETS)}")
    return BUDGETS[budget]


# -- the pack -------------------------------------------------------------------------------------


class PackManifest(BaseModel):
    """``pack.json``: what was built, from which seed and plan, how long it took, with which versions."""

    model_config = ConfigDict(extra="forbid")

    format: int = PACK_FORMAT
    kind: str = "starter-pack"
    seed: int
    budget: StarterBudget
    pretrain: bool = Field(True, description="False: pretraining skipped (the ablation)")
    anchor_encoder: str = ANCHOR_ENCODER
    modalities: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per modality: sizes, timings, losses")
    seconds: float = 0.0
    versions: dict[str, str] = Field(default_factory=dict)


@dataclass
class StarterPack:
    """Aligned encoders of every starter modality (one shared space, text as anchor) and their data."""

    directory: Path
    manifest: PackManifest
    results: dict[str, "AlignResult"]
    data: dict[str, StarterData]

    @property
    def modalities(self) -> list[str]:
        return list(self.results)

    def embed(self, modality: str, items: Sequence[Any]) -> torch.Tensor:
        """Normalized embeddings of ``items`` in the shared space: (items, 384)."""
        if modality not in self.results:
            raise InvalidInputError(f"the starter pack has no {modality!r} encoder; it has {', '.join(self.results)}")
        return self.results[modality].embed_aligned(list(items))

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalized embeddings of ``texts`` by the anchor (minilm-l6): (texts, 384)."""
        return next(iter(self.results.values())).embed_anchor(list(texts))


ENCODER_STATE = "encoder-state.safetensors"


def _save_result(result: "AlignResult", directory: Path) -> str | None:
    """``result.save(directory)``; for a trained encoder without ``save_pretrained`` (the audio presets) the
    projector bundle names the encoder by its registry name and its trained weights go beside it as a
    safetensors state dict (returned: the file name, which :func:`load_starter_pack` loads back)."""
    from safetensors.torch import save_model

    from .training import ALIGN_MANIFEST

    if not result.config.train_encoder or result.encoder_name is None or hasattr(result.encoder, "save_pretrained"):
        result.save(directory)
        return None
    import dataclasses

    frozen = dataclasses.replace(result, config=result.config.model_copy(update={"train_encoder": False}))
    frozen.save(directory)
    path = directory / ALIGN_MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["config"]["train_encoder"] = True  # the manifest tells the truth; the weights are the state dict
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    save_model(result.encoder, str(directory / ENCODER_STATE), metadata={"format": "pt"})
    return ENCODER_STATE


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform(), "torch_threads": str(torch.get_num_threads())}
    for dist in ("modality-hub", "torch", "transformers", "numpy", "scikit-learn", "networkx", "trimesh",
                 "torch-geometric", "modality-hub-image", "modality-hub-audio", "modality-hub-graph", "modality-hub-3d"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    binary = shutil.which("espeak-ng")
    if binary:
        try:
            out["espeak-ng"] = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):  # pragma: no cover - a broken binary
            pass
    return out


def _log(message: str, enabled: bool) -> None:
    if enabled:
        from tqdm.auto import tqdm

        tqdm.write(f"[starter-pack] {message}")


def default_pack_dir(hub: "Hub | None" = None, budget: str = "full", pretrain: bool = True) -> Path:
    """``<cache>/starter-pack`` (the "tiny" budget and no-pretraining packs get their own folders)."""
    from .training import _resolve_hub

    name = "starter-pack" + ("" if budget == "full" else f"-{budget}") + ("" if pretrain else "-no-pretrain")
    return _resolve_hub(hub).cache_dir / name


def _same_build(manifest: PackManifest, seed: int, budget: StarterBudget, pretrain: bool, modalities: list[str]) -> bool:
    return (manifest.format == PACK_FORMAT and manifest.seed == seed and manifest.pretrain == pretrain
            and json.loads(manifest.budget.model_dump_json()) == json.loads(budget.model_dump_json())
            and sorted(manifest.modalities) == sorted(modalities))


def build_starter_pack(
    out_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
    force: bool = False,
    budget: str | StarterBudget = "full",
    pretrain: bool = True,
    modalities: Sequence[str] | None = None,
    hub: "Hub | None" = None,
) -> StarterPack:
    """Build (or load, when ``out_dir`` holds the same build) the starter pack.

    For every modality of ``budget`` (or of ``modalities``): build its data
    (seeded), pretrain the encoder self-supervised when the plan says so (and
    ``pretrain``), align it to the text anchor with InfoNCE on the training
    captions, and save it under ``out_dir/<modality>/``; ``out_dir/pack.json``
    records seed, plan, sizes, per-stage seconds and versions.  ``force``
    rebuilds.  Prints per-stage times and shows tqdm bars when ``progress``.
    """
    from .training import _resolve_hub, align
    from .training import pretrain as run_pretrain

    hub = _resolve_hub(hub)
    plan = _budget(budget)
    mods = list(modalities) if modalities is not None else list(plan.plans)
    unknown = [m for m in mods if m not in plan.plans]
    if unknown:
        raise InvalidOptionsError(f"budget {plan.name!r} has no plan for {', '.join(unknown)}; it plans {', '.join(plan.plans)}")
    root = Path(out_dir) if out_dir is not None else default_pack_dir(hub, plan.name, pretrain)
    path = root / PACK_MANIFEST
    if path.is_file() and not force:
        try:
            manifest = PackManifest.model_validate_json(path.read_text(encoding="utf-8"))
        except ValueError:
            manifest = None
        if manifest is not None and _same_build(manifest, seed, plan, pretrain, mods):
            _log(f"loading the cached pack at {root}", progress)
            return load_starter_pack(root, hub=hub)
        _log(f"{root} holds another build; rebuilding", progress)
    root.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # an interrupted rebuild never looks complete
    manifest = PackManifest(seed=seed, budget=plan, pretrain=pretrain, versions=_versions())
    results: dict[str, AlignResult] = {}
    datasets: dict[str, StarterData] = {}
    start = time.perf_counter()
    for m in mods:
        p = plan.plans[m]
        times: dict[str, float] = {}
        t = time.perf_counter()
        data = build_data(m, seed, **p.data)
        times["data"] = time.perf_counter() - t
        train_items, _ = data.split(False)
        encoder: Any = p.encoder
        options: dict[str, Any] | None = dict(p.encoder_options)
        info: dict[str, Any] = {}
        if pretrain and p.pretrain_epochs:
            t = time.perf_counter()
            trained = run_pretrain(
                m, train_items, encoder=p.encoder, encoder_options=options, objective=p.pretrain_objective,
                epochs=p.pretrain_epochs, batch_size=p.pretrain_batch_size, lr=p.pretrain_lr, seed=seed,
                progress=progress, hub=hub,
            )
            times["pretrain"] = time.perf_counter() - t
            info["pretrain_epoch_losses"] = [round(x, 4) for x in trained.epoch_losses]
            encoder, options = trained.encoder, None
        t = time.perf_counter()
        result = align(
            m, data.pairs(), encoder=encoder, encoder_options=options, anchor_encoder=ANCHOR_ENCODER,
            projector=p.projector, objective="infonce", train_encoder=p.train_encoder, epochs=p.align_epochs,
            batch_size=p.align_batch_size, lr=p.align_lr, seed=seed, progress=progress, hub=hub,
        )
        times["align"] = time.perf_counter() - t
        t = time.perf_counter()
        target = root / m
        shutil.rmtree(target, ignore_errors=True)
        state = _save_result(result, target)
        times["save"] = time.perf_counter() - t
        manifest.modalities[m] = {
            "classes": list(data.classes), "template": data.template, "train": int((~data.held_out).sum()),
            "held_out": int(data.held_out.sum()), "fingerprint": data.fingerprint(),
            "encoder": p.encoder, "pretrained": bool(pretrain and p.pretrain_epochs),
            "encoder_state": state, "align_epoch_losses": [round(x, 4) for x in result.epoch_losses],
            "seconds": {k: round(v, 2) for k, v in times.items()}, **info,
        }
        _log(f"{m}: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items())
             + f" ({len(data)} items, {int(data.held_out.sum())} held out)", progress)
        results[m], datasets[m] = result, data
    manifest.seconds = round(time.perf_counter() - start, 2)
    path.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    _log(f"built in {manifest.seconds:.1f}s → {root}", progress)
    return StarterPack(root, manifest, results, datasets)


def load_starter_pack(directory: str | os.PathLike, *, hub: "Hub | None" = None) -> StarterPack:
    """Load a pack written by :func:`build_starter_pack` (its data is rebuilt from the seed and checked)."""
    from safetensors.torch import load_model

    from .training import AlignResult, _resolve_hub

    hub = _resolve_hub(hub)
    from ._manifest import read_manifest

    root = Path(directory)
    manifest = read_manifest(root / PACK_MANIFEST, PackManifest, "a starter pack", PACK_FORMAT,
                             "build it with build_starter_pack(); an invalid one rebuilds with force=True")
    results, datasets = {}, {}
    anchor = None
    for m, info in manifest.modalities.items():
        result = AlignResult.load(root / m, hub=hub)
        if anchor is None:
            anchor = result.anchor_encoder
        elif result.anchor_encoder is not None:
            result.anchor_encoder = anchor  # one text anchor instance serves every modality
        if info.get("encoder_state"):
            load_model(result.encoder, str(root / m / info["encoder_state"]))
            result.encoder.eval()
        data = build_data(m, manifest.seed, **manifest.budget.plans[m].data)
        if data.fingerprint() != info["fingerprint"]:
            raise BundleError(
                f"the {m} data rebuilt from seed {manifest.seed} differs from the data the pack was built on "
                f"(fingerprint {data.fingerprint()} != {info['fingerprint']}); rebuild with force=True"
            )
        results[m], datasets[m] = result, data
    return StarterPack(root, manifest, results, datasets)


# -- evaluation ---------------------------------------------------------------------------------


def _topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    return scores.topk(min(k, scores.shape[1]), dim=1).indices  # (queries, k)


def zero_shot(pack: StarterPack, modality: str, k: int = 5) -> dict[str, Any]:
    """Zero-shot classification of ``modality``'s held-out items: the class captions are the text prompts,
    the nearest prompt wins.  Returns top-1 / top-``k`` accuracy, counts and the confusion matrix."""
    data = pack.data[modality]
    items, labels = data.split(True)
    x = pack.embed(modality, items)  # (items, dim)
    prompts = pack.embed_text(data.prompts())  # (classes, dim)
    top = _topk(x @ prompts.T, k).numpy()
    pred = top[:, 0]
    confusion = np.zeros((len(data.classes), len(data.classes)), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    return {
        "top1": float((pred == labels).mean()), f"top{k}": float((top == labels[:, None]).any(1).mean()),
        "n": int(len(labels)), "classes": list(data.classes), "prompts": data.prompts(),
        "confusion": confusion.tolist(),
    }


def retrieval(pack: StarterPack, source: str, target: str, k: int = 5) -> dict[str, Any]:
    """Emergent cross-modal retrieval: each held-out ``source`` item retrieves its nearest held-out ``target``
    items (the two modalities only ever met text); a hit is a retrieved item of the same class name."""
    s_data, t_data = pack.data[source], pack.data[target]
    if s_data.classes != t_data.classes:
        raise InvalidInputError(f"{source} and {target} do not share class names ({s_data.classes} vs {t_data.classes})")
    s_items, s_labels = s_data.split(True)
    t_items, t_labels = t_data.split(True)
    scores = pack.embed(source, s_items) @ pack.embed(target, t_items).T  # (queries, targets)
    top = _topk(scores, k).numpy()
    hits = t_labels[top] == s_labels[:, None]  # (queries, k)
    return {"top1": float(hits[:, 0].mean()), f"top{k}": float(hits.any(1).mean()), "queries": int(len(s_labels)),
            "targets": int(len(t_labels)), "_top": top, "_scores": scores}


def _shared_pairs(pack: StarterPack) -> list[tuple[str, str]]:
    mods = pack.modalities
    return [(a, b) for a in mods for b in mods if a != b and pack.data[a].classes == pack.data[b].classes]


def evaluate(pack: StarterPack, out_dir: str | os.PathLike | None = None, *, k: int = 5, grid_k: int = 5,
             progress: bool = False) -> dict[str, Any]:
    """Zero-shot top-1 / top-``k`` per modality and emergent retrieval between every two modalities that share
    class names (audio ↔ image), on held-out items.  Writes ``eval.json``, ``retrieval.png`` (audio → image
    grid, when both are in the pack) and ``confusion.json`` to ``out_dir`` (default ``<pack>/eval``)."""
    root = Path(out_dir) if out_dir is not None else pack.directory / "eval"
    root.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    report: dict[str, Any] = {"seed": pack.manifest.seed, "budget": pack.manifest.budget.name,
                              "pretrain": pack.manifest.pretrain, "zero_shot": {}, "retrieval": {}}
    for m in pack.modalities:
        zs = zero_shot(pack, m, k)
        report["zero_shot"][m] = zs
        _log(f"zero-shot {m}: top-1 {zs['top1']:.3f}, top-{k} {zs[f'top{k}']:.3f} ({zs['n']} held out)", progress)
    grids = {}
    for a, b in _shared_pairs(pack):
        r = retrieval(pack, a, b, k)
        grids[(a, b)] = r.pop("_top"), r.pop("_scores")
        report["retrieval"][f"{a}->{b}"] = r
        _log(f"retrieval {a} → {b}: top-1 {r['top1']:.3f}, top-{k} {r[f'top{k}']:.3f}", progress)
    report["seconds"] = round(time.perf_counter() - t, 2)
    paths = {"json": str(root / "eval.json")}
    if ("audio", "image") in grids:
        top, _ = grids[("audio", "image")]
        paths["png"] = str(draw_retrieval(pack, "audio", "image", top, root / "retrieval.png", k=grid_k))
    report["paths"] = paths
    (root / "eval.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def ablation(seed: int = 0, out_dir: str | os.PathLike | None = None, *, budget: str | StarterBudget = "full",
             modalities: Sequence[str] = ("graph", "3d"), progress: bool = True, hub: "Hub | None" = None,
             pack: StarterPack | None = None) -> dict[str, Any]:
    """The same pipeline with and without self-supervised pretraining for ``modalities``, side by side:
    ``{modality: {"pretrained": {...}, "random_init": {...}}}`` of held-out zero-shot top-1 / top-5.
    ``pack``: the (pretrained) pack to compare with (default: build or load it).  The no-pretraining
    packs go to ``out_dir`` (default ``<cache>/starter-pack-no-pretrain``) and are cached the same way."""
    plan = _budget(budget)
    with_pt = pack or build_starter_pack(seed=seed, budget=plan, progress=progress, hub=hub)
    without = build_starter_pack(out_dir, seed=seed, budget=plan, pretrain=False, modalities=list(modalities),
                                 progress=progress, hub=hub)
    report: dict[str, Any] = {"seed": seed, "budget": plan.name, "modalities": {}}
    for m in modalities:
        a, b = zero_shot(with_pt, m), zero_shot(without, m)
        report["modalities"][m] = {
            "pretrained": {"top1": a["top1"], "top5": a["top5"], "pretrain_epochs": plan.plans[m].pretrain_epochs},
            "random_init": {"top1": b["top1"], "top5": b["top5"], "pretrain_epochs": 0},
            "align": {"epochs": plan.plans[m].align_epochs, "train_encoder": plan.plans[m].train_encoder},
        }
        _log(f"ablation {m}: pretrained top-1 {a['top1']:.3f} vs random init {b['top1']:.3f}", progress)
    root = Path(out_dir) if out_dir is not None else without.directory
    (root / "eval").mkdir(parents=True, exist_ok=True)
    (root / "eval" / "ablation.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    report["path"] = str(root / "eval" / "ablation.json")
    return report


# -- query and drawing --------------------------------------------------------------------------


def query(pack: StarterPack, text: str, k: int = 1) -> dict[str, list[tuple[int, str, float]]]:
    """A text query against every modality's held-out items: ``{modality: [(held-out index, class, cosine), ...]}``,
    the ``k`` nearest first."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError("query needs a non-empty text, e.g. 'seven' or 'a torus'")
    q = pack.embed_text([text])  # (1, dim)
    out: dict[str, list[tuple[int, str, float]]] = {}
    for m in pack.modalities:
        items, labels = pack.data[m].split(True)
        scores = (pack.embed(m, items) @ q.T)[:, 0]  # (items,)
        best = scores.topk(min(k, len(items))).indices.tolist()
        out[m] = [(int(i), pack.data[m].classes[int(labels[i])], round(float(scores[i]), 4)) for i in best]
    return out


CELL = 96


def _render_image(item: Any, size: int) -> "Image.Image":
    return item.convert("RGB").resize((size, size), 0)  # nearest: keep the digit's pixels visible


def _render_audio(item: Any, size: int) -> "Image.Image":
    from PIL import Image, ImageDraw

    wave = np.asarray(item["array"], dtype=np.float32)
    img = Image.new("RGB", (size, size), (250, 250, 245))
    draw = ImageDraw.Draw(img)
    cols = np.array_split(wave, size)
    peak = max(float(np.abs(wave).max()), 1e-6)
    mid = size // 2
    for x, col in enumerate(cols):
        if col.size:
            lo, hi = float(col.min()) / peak, float(col.max()) / peak
            draw.line([(x, mid - hi * (size * 0.4)), (x, mid - lo * (size * 0.4))], fill=(40, 90, 170))
    return img


def _render_graph(item: Any, size: int) -> "Image.Image":
    import networkx as nx
    from PIL import Image, ImageDraw

    pos = nx.spring_layout(item, seed=0)
    xy = np.array([pos[n] for n in item.nodes()])
    lo, hi = xy.min(0), xy.max(0)
    scaled = {n: tuple((8 + (p - lo) / np.maximum(hi - lo, 1e-6) * (size - 16)).tolist()) for n, p in pos.items()}
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    for a, b in item.edges():
        draw.line([scaled[a], scaled[b]], fill=(120, 120, 120))
    for x, y in scaled.values():
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(200, 60, 40))
    return img


def _render_points(item: Any, size: int) -> "Image.Image":
    from PIL import Image, ImageDraw

    pts = np.asarray(item, dtype=np.float32)[:, :3]
    pts = pts - pts.mean(0)
    pts = pts / max(float(np.abs(pts).max()), 1e-6)
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    for x, y, z in pts[np.argsort(pts[:, 2])]:  # far first, near drawn over
        shade = int(200 - 80 * (z + 1))
        px, py = (x + 1) / 2 * (size - 8) + 4, (1 - (y + 1) / 2) * (size - 8) + 4
        draw.point((px, py), fill=(shade, shade, 255 if shade < 200 else 200))
    return img


#: modality → thumbnail renderer ``(item, size) -> PIL image``
RENDERERS: dict[str, Callable[[Any, int], "Image.Image"]] = {
    "image": _render_image, "audio": _render_audio, "graph": _render_graph, "3d": _render_points,
}


def render_item(modality: str, item: Any, size: int = CELL) -> "Image.Image":
    """A ``size`` x ``size`` thumbnail of ``item``: the image, a waveform, a drawn graph, projected points."""
    if modality not in RENDERERS:
        raise InvalidInputError(f"no thumbnail renderer for {modality!r}; renderers: {', '.join(RENDERERS)}")
    return RENDERERS[modality](item, size)


def _label(img: "Image.Image", text: str, colour: tuple[int, int, int] = (0, 0, 0)) -> "Image.Image":
    from PIL import Image, ImageDraw

    out = Image.new("RGB", (img.width, img.height + 16), "white")
    out.paste(img, (0, 0))
    ImageDraw.Draw(out).text((2, img.height + 2), text[:18], fill=colour)
    return out


def _frame(img: "Image.Image", colour: tuple[int, int, int]) -> "Image.Image":
    from PIL import ImageOps

    return ImageOps.expand(img, border=3, fill=colour)


def _grid(rows: list[list["Image.Image"]], path: Path, title: str) -> Path:
    from PIL import Image, ImageDraw

    w = max(sum(c.width for c in r) + 6 * (len(r) - 1) for r in rows)
    h = sum(max(c.height for c in r) for r in rows) + 6 * len(rows) + 20
    canvas = Image.new("RGB", (w + 12, h + 6), "white")
    ImageDraw.Draw(canvas).text((6, 4), title, fill=(0, 0, 0))
    y = 24
    for r in rows:
        x = 6
        for c in r:
            canvas.paste(c, (x, y))
            x += c.width + 6
        y += max(c.height for c in r) + 6
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def draw_retrieval(pack: StarterPack, source: str, target: str, top: np.ndarray, path: str | os.PathLike,
                   k: int = 5) -> Path:
    """A PNG grid: one held-out ``source`` query per class (its thumbnail and class), then its ``k`` nearest
    held-out ``target`` items, framed green when their class matches, red when not."""
    s_data, t_data = pack.data[source], pack.data[target]
    s_items, s_labels = s_data.split(True)
    t_items, t_labels = t_data.split(True)
    rows = []
    for c in range(len(s_data.classes)):
        hits = np.flatnonzero(s_labels == c)
        if not len(hits):
            continue
        q = int(hits[0])
        row = [_frame(_label(render_item(source, s_items[q]), f"{source}: {s_data.classes[c]}"), (90, 90, 90))]
        for j in top[q][:k]:
            ok = t_labels[j] == c
            row.append(_frame(_label(render_item(target, t_items[j]), t_data.classes[int(t_labels[j])]),
                              (40, 170, 60) if ok else (210, 40, 40)))
        rows.append(row)
    return _grid(rows, Path(path), f"emergent retrieval {source} -> {target} (held out; never paired in training)")


def draw_query(pack: StarterPack, text: str, path: str | os.PathLike, k: int = 1,
               answer: dict[str, list[tuple[int, str, float]]] | None = None) -> Path:
    """Draw :func:`query`'s answer as a PNG: per modality a row with the ``k`` nearest held-out items."""
    answer = answer or query(pack, text, k)
    rows = []
    for m, hits in answer.items():
        items, _ = pack.data[m].split(True)
        rows.append([_frame(_label(render_item(m, items[i]), f"{m}: {label} {score:.2f}"), (90, 90, 90))
                     for i, label, score in hits])
    return _grid(rows, Path(path), f"query: {text!r}")
