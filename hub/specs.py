"""Fixed metadata that plugins register: modalities, encoders, backbones."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel

from .errors import PluginError

if TYPE_CHECKING:  # pragma: no cover
    from .encoder import Encoder

__all__ = ["Modality", "EncoderSpec", "BackboneSpec", "AugmentationSpec", "ProjectorSpec", "PluginInfo"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise PluginError(
            f"invalid {kind} name {name!r}: use lowercase letters, digits, '-' and '_' "
            "(a '.' is reserved for weight tags, e.g. 'clip-vit-b16.laion')"
        )


@dataclass(frozen=True)
class Modality:
    """A kind of input, and how the hub recognises its items.

    ``detect(item) -> bool`` claims in-memory items (a ``str``, a PIL image, a
    graph object); ``extensions`` claims files by suffix.  ``accepts`` is the
    human-readable list shown in errors.  ``sample()`` makes one small item for
    ``mhub demo`` and conformance tests; ``examples(n, seed)`` makes ``n`` items
    of varied sizes (ONNX export parity checks, benchmarks).
    """

    name: str
    accepts: tuple[str, ...]
    default_encoder: str
    detect: Callable[[Any], bool] | None = None
    extensions: tuple[str, ...] = ()
    demo_encoder: str | None = None
    sample: Callable[[], Any] | None = None
    description: str = ""
    #: ``examples(n, seed) -> list`` of ``n`` valid items of varied sizes (export parity checks, benchmarks)
    examples: Callable[[int, int], list[Any]] | None = None

    def __post_init__(self) -> None:
        _check_name("modality", self.name)
        object.__setattr__(self, "extensions", tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in self.extensions))
        object.__setattr__(self, "accepts", tuple(self.accepts))


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder: its name, modality and how to build it.

    ``factory(**options)`` returns an :class:`hub.Encoder`; ``options`` is a
    pydantic model (``extra="forbid"``) validating what users pass.  ``weights``
    is the default weights id (a Hugging Face hub id, a local directory, or
    ``None`` for a randomly initialised preset); ``pretrained=False`` marks an
    untrained preset (tests and demos only).  ``tags`` maps ``name.tag`` weight
    variants to weights ids.  ``processor(**options)`` (optional) builds the encoder's
    weights-free half (:class:`hub.processor.Processor`) from the same options, for
    serving exports without the torch weights.
    """

    name: str
    modality: str
    factory: Callable[..., "Encoder"]
    options: type[BaseModel] | None = None
    weights: str | None = None
    license: str = "unknown"
    pretrained: bool = True
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    processor: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        _check_name("encoder", self.name)
        _check_name("modality", self.modality)
        if not callable(self.factory):
            raise PluginError(f"encoder {self.name!r}: factory must be callable, got {type(self.factory).__name__}")
        for tag in self.tags:
            _check_name("weight tag", tag)

    def __hash__(self) -> int:
        return hash((self.name, self.modality))


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone adapter: builds an LLM backbone from a hub id or directory.

    ``detect(source) -> bool`` says whether this adapter can load ``source``.
    """

    name: str
    factory: Callable[..., Any]
    detect: Callable[[str], bool] | None = None
    description: str = ""
    #: optional: ``importer(path) -> MultimodalLM`` for composite checkpoints (e.g. LLaVA)
    importer: Callable[..., Any] | None = None
    #: optional: a source that loads offline with no weights (a tiny preset) for ``mhub demo``
    demo_source: str | None = None

    def __post_init__(self) -> None:
        _check_name("backbone", self.name)


@dataclass(frozen=True)
class AugmentationSpec:
    """A modality-preserving transform for self-supervised learning.

    ``fn(item, rng, **params)`` takes any item the modality accepts and a
    ``numpy.random.Generator`` and returns a new, valid item of the same
    modality (in the plugin's documented canonical form); ``params`` is a
    pydantic model of its options.  Names are unique per modality; the
    registry key is ``"<modality>/<name>"``.
    """

    name: str
    modality: str
    fn: Callable[..., Any]
    params: type[BaseModel] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("augmentation", self.name)
        _check_name("modality", self.modality)
        if not callable(self.fn):
            raise PluginError(f"augmentation {self.name!r}: fn must be callable")

    @property
    def key(self) -> str:
        return f"{self.modality}/{self.name}"


@dataclass(frozen=True)
class ProjectorSpec:
    """A projector kind: the :class:`hub.lm.Projector` subclass that builds it and its pydantic config model.

    ``config`` validates ``projector.json`` and the options users pass (``extra="forbid"``); its
    ``kind`` field must default to ``kind``.
    """

    kind: str
    cls: type
    config: type[BaseModel]
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("projector kind", self.kind)
        if not isinstance(self.cls, type) or not isinstance(self.config, type) or not issubclass(self.config, BaseModel):
            raise PluginError(f"projector kind {self.kind!r}: cls must be a class and config a pydantic model")

    @property
    def name(self) -> str:
        return self.kind


@dataclass(frozen=True)
class PluginInfo:
    """One plugin as the registry saw it: where it came from, what it gave, how it failed."""

    name: str
    distribution: str | None
    version: str | None
    modalities: tuple[str, ...] = ()
    encoders: tuple[str, ...] = ()
    backbones: tuple[str, ...] = ()
    augmentations: tuple[str, ...] = ()
    projectors: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
