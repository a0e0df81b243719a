"""Modalities plugged into an LLM backbone: projectors, the composer, :class:`MultimodalLM` and bundles."""

from .aligned import ProjectedEncoder
from .bundle import BackboneRef, BundleManifest, PluggedRef
from .compose import Composer, Composition, PluggedModality
from .model import MultimodalLM, attach
from .projectors import (
    PROJECTOR_KINDS,
    InvalidWeightsError,
    LinearConfig,
    MLPConfig,
    PoolConfig,
    Projector,
    ProjectorConfig,
    ResamplerConfig,
    build_projector,
    projector_config,
)

__all__ = [
    "BackboneRef",
    "BundleManifest",
    "Composer",
    "Composition",
    "InvalidWeightsError",
    "LinearConfig",
    "MLPConfig",
    "MultimodalLM",
    "PROJECTOR_KINDS",
    "PluggedModality",
    "PluggedRef",
    "PoolConfig",
    "ProjectedEncoder",
    "Projector",
    "ProjectorConfig",
    "ResamplerConfig",
    "attach",
    "build_projector",
    "projector_config",
]
