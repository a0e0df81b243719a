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
:class:`~hub.train.AlignResult` under ``out_dir/<modality>/`` with a
``pack.json`` manifest; a second call loads it.  :func:`evaluate` measures
zero-shot classification per modality and emergent audio → image retrieval,
:func:`ablation` compares the pipeline with and without pretraining, and
:func:`query` / :func:`draw_query` answer a text query across the modalities.
:mod:`hub_starter.shift` generates shifted evaluation sets (other digit styles, voices, graph sizes, 3D
distortions; never trained on), :mod:`hub_starter.baselines` fits raw-feature logistic regressions on the
same split, :mod:`hub_starter.normalise` removes nuisance factors (contrast, placement, pose, stretch) and
:mod:`hub_starter.views` makes the augmented views alignment sees; :func:`evaluate` reports all of it.

This plugin (distribution ``modality-hub-starter``) adds ``mhub starter-pack``, ``mhub eval`` and a step of
``mhub demo`` through the ``register_commands`` hook; the core knows nothing of it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hub import hookimpl

if TYPE_CHECKING:  # the names below import lazily (PEP 562 ``__getattr__``): plugin discovery stays light
    from .data import (
        ANCHOR_ENCODER,
        BUILDERS,
        DIGITS,
        GRAPH_FAMILIES,
        PACK_FORMAT,
        PACK_MANIFEST,
        PITCHES,
        SHAPES,
        SPEEDS,
        VOICES,
        MissingToolError,
        StarterData,
        build_data,
        digit_images,
        espeak_binary,
        graph_families,
        primitive_shapes,
        spoken_digits,
        synthesize,
    )
    from .draw import CELL, RENDERERS, draw_retrieval, render_item
    from .evaluation import ablation, draw_query, evaluate, query, retrieval, zero_shot
    from .pack import (
        BUDGETS,
        ENCODER_STATE,
        ModalityPlan,
        PackManifest,
        StarterBudget,
        StarterPack,
        build_starter_pack,
        default_pack_dir,
        load_starter_pack,
    )

#: public name -> the submodule that defines it
_EXPORTS = {
    **dict.fromkeys((
        "ANCHOR_ENCODER", "BUILDERS", "DIGITS", "GRAPH_FAMILIES", "PACK_FORMAT", "PACK_MANIFEST", "PITCHES", "SHAPES",
        "SPEEDS", "VOICES", "MissingToolError", "StarterData", "build_data", "digit_images", "espeak_binary",
        "graph_families", "primitive_shapes", "spoken_digits", "synthesize",
    ), "data"),
    **dict.fromkeys(("CELL", "RENDERERS", "draw_retrieval", "render_item"), "draw"),
    **dict.fromkeys(("ablation", "draw_query", "evaluate", "query", "retrieval", "zero_shot"), "evaluation"),
    **dict.fromkeys((
        "BUDGETS", "ENCODER_STATE", "ModalityPlan", "PackManifest", "StarterBudget", "StarterPack",
        "build_starter_pack", "default_pack_dir", "load_starter_pack",
    ), "pack"),
}

__all__ = [
    "ANCHOR_ENCODER", "BUDGETS", "BUILDERS", "CELL", "DIGITS", "ENCODER_STATE", "GRAPH_FAMILIES", "PACK_FORMAT",
    "PACK_MANIFEST", "PITCHES", "RENDERERS", "SHAPES", "SPEEDS", "VOICES", "MissingToolError", "ModalityPlan",
    "PackManifest", "StarterBudget", "StarterData", "StarterPack", "ablation", "build_data", "build_starter_pack",
    "default_pack_dir", "digit_images", "draw_query", "draw_retrieval", "espeak_binary", "evaluate",
    "graph_families", "load_starter_pack", "primitive_shapes", "query", "render_item", "retrieval",
    "spoken_digits", "synthesize", "zero_shot",
]


@hookimpl
def register_augmentations(register: Any) -> None:
    from .normalise import register_transforms

    register_transforms(register)


@hookimpl
def register_commands(cli: Any) -> None:
    from .cli import register

    register(cli)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use (``from hub_starter import evaluate`` works as before)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value

