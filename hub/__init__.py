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
from .errors import (
    AmbiguousModalityError,
    DuplicateNameError,
    HubError,
    InvalidInputError,
    InvalidOptionsError,
    PluginError,
    SpaceMismatchError,
    UnknownEncoderError,
    UnknownModalityError,
    WeightsNotFoundError,
)
from .hookspecs import hookimpl
from .specs import BackboneSpec, EncoderSpec, Modality, PluginInfo
from .tokens import SkippedItem, TokenEmbeddings

__version__ = "0.1.0"

__all__ = [
    "AmbiguousModalityError",
    "BackboneSpec",
    "DuplicateNameError",
    "Encoder",
    "EncoderSpec",
    "Hub",
    "HubError",
    "InvalidInputError",
    "InvalidOptionsError",
    "SkippedItem",
    "Modality",
    "PluginError",
    "PluginInfo",
    "Registry",
    "SpaceMismatchError",
    "TokenEmbeddings",
    "UnknownEncoderError",
    "UnknownModalityError",
    "WeightsNotFoundError",
    "__version__",
    "default_registry",
    "describe_item",
    "hookimpl",
]
