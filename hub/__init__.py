"""modality-hub: everything as LLM tokens.

Public API (pinned by ``tests/test_public_api.py``)::

    from hub import Hub
    h = Hub()
    te = h.embed(["a cat", "a dog"])
    te.tokens, te.mask, te.pooled(normalize=True)
"""

from ._hub import Hub
from ._registry import Registry, default_registry
from .encoder import Encoder, describe_item
from .backbone import Backbone
from .errors import (
    AmbiguousModalityError,
    BundleError,
    ContextLengthError,
    DuplicateNameError,
    ExportError,
    HubError,
    InvalidInputError,
    InvalidOptionsError,
    ModalityNotPluggedError,
    PluginError,
    PromptError,
    ProviderError,
    SpaceMismatchError,
    UnknownEncoderError,
    UnknownModalityError,
    WeightsNotFoundError,
)
from .hookspecs import hookimpl
from .lm import MultimodalLM, Projector, ProjectorConfig, build_projector
from .specs import AugmentationSpec, BackboneSpec, EncoderSpec, Modality, PluginInfo
from .tokens import SkippedItem, TokenEmbeddings

__version__ = "0.1.0"

__all__ = [
    "AmbiguousModalityError",
    "AugmentationSpec",
    "Backbone",
    "BackboneSpec",
    "BundleError",
    "ContextLengthError",
    "DuplicateNameError",
    "Encoder",
    "EncoderSpec",
    "ExportError",
    "Hub",
    "HubError",
    "InvalidInputError",
    "InvalidOptionsError",
    "Modality",
    "ModalityNotPluggedError",
    "MultimodalLM",
    "PluginError",
    "PluginInfo",
    "Projector",
    "ProjectorConfig",
    "PromptError",
    "ProviderError",
    "Registry",
    "SkippedItem",
    "SpaceMismatchError",
    "TokenEmbeddings",
    "UnknownEncoderError",
    "UnknownModalityError",
    "WeightsNotFoundError",
    "__version__",
    "build_projector",
    "default_registry",
    "describe_item",
    "hookimpl",
]
