"""The hub's exception hierarchy.

Every error the hub raises on purpose is a :class:`HubError`, and each one also
subclasses the builtin a caller would catch without knowing the hub
(``KeyError`` for unknown names, ``ValueError`` for bad input, ...).
Messages name the item, what was expected, and the fix.
"""

from __future__ import annotations

__all__ = [
    "HubError",
    "UnknownModalityError",
    "UnknownEncoderError",
    "AmbiguousModalityError",
    "InvalidInputError",
    "InvalidOptionsError",
    "PluginError",
    "DuplicateNameError",
    "SpaceMismatchError",
    "WeightsNotFoundError",
    "ModalityNotPluggedError",
    "PromptError",
    "ContextLengthError",
    "BundleError",
    "ExportError",
    "ProviderError",
]


class HubError(Exception):
    """Base class of every error raised by modality-hub."""

    def __str__(self) -> str:  # KeyError quotes its message; we don't want that.
        return str(self.args[0]) if self.args else ""


class UnknownModalityError(HubError, KeyError):
    """No installed plugin provides this modality, or no modality accepts an item."""


class UnknownEncoderError(HubError, KeyError):
    """No registered encoder has this name."""


class AmbiguousModalityError(HubError, ValueError):
    """More than one modality accepts an item; pass ``modality=`` to choose."""


class InvalidInputError(HubError, ValueError):
    """An item cannot be encoded: wrong type, empty, corrupt, out of range."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class InvalidOptionsError(HubError, ValueError):
    """Options given to an encoder (or another configurable part) do not validate."""


class PluginError(HubError, RuntimeError):
    """A plugin failed to import or to register, or registered something invalid."""


class DuplicateNameError(PluginError):
    """Two plugins registered the same modality or encoder name."""


class SpaceMismatchError(HubError, ValueError):
    """Token embeddings from different spaces (or dims) were combined."""


class WeightsNotFoundError(HubError, FileNotFoundError):
    """An encoder's weights are not available locally and downloads are off."""


class ModalityNotPluggedError(HubError, KeyError):
    """A prompt uses a modality that is not plugged into the multimodal LM."""


class PromptError(InvalidInputError):
    """A prompt's placeholders and items disagree, or a prompt part is not usable."""


class ContextLengthError(InvalidInputError):
    """A composed sequence would exceed the backbone's context window."""


class BundleError(HubError, ValueError):
    """A saved bundle (manifest + safetensors) is missing, malformed or does not match."""


class ExportError(HubError, RuntimeError):
    """An ONNX export failed (tracing, conversion, or its parity check against PyTorch); nothing was kept."""


class ProviderError(HubError, RuntimeError):
    """An ONNX Runtime execution provider that was asked for (e.g. CUDA) is not available or failed to load."""


class CacheError(HubError, RuntimeError):
    """The embedding cache (``hub.cache``) cannot be used: a bad location, option or a store it cannot open."""


class CacheCorruptError(CacheError):
    """An embedding cache row or file failed its integrity check (raised with ``on_corrupt="raise"``)."""


class UntrainedWeightsWarning(UserWarning):
    """An untrained preset (``EncoderSpec.pretrained=False``, random-init weights) embedded items.

    Warned once per encoder name per process (see ``hub._untrained``); its vectors are fine for
    tests and demos but carry no meaning. Silence it with
    ``warnings.filterwarnings("ignore", category=UntrainedWeightsWarning)``.
    """
