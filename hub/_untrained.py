"""Untrained presets say so: one :class:`~hub.errors.UntrainedWeightsWarning` per encoder name per process.

transformers warns when weights are newly initialised; the hub does the same when an
untrained preset (``EncoderSpec.pretrained=False`` whose weights are a ``random-init``)
embeds, and names the trained alternatives.  An untrained preset built with trained
weights (``weights=DIR`` from ``pretrain``) is not warned about.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

from .errors import UntrainedWeightsWarning

__all__ = ["warn_untrained", "is_untrained", "reset"]

_lock = threading.Lock()
_warned: set[str] = set()


def is_untrained(encoder: Any) -> bool:
    """An encoder the registry marked ``pretrained=False`` whose weights are a random init (or unnamed);
    or one that says nothing about ``pretrained`` (an ``OnnxEncoder``) whose weights are a random init."""
    weights = getattr(encoder, "weights", None) or getattr(getattr(encoder, "manifest", None), "weights", None)
    random_init = weights is not None and str(weights).startswith("random-init")
    pretrained = getattr(encoder, "pretrained", None)
    if pretrained is None:
        return random_init
    return pretrained is False and (weights is None or random_init)


def _message(encoder: Any, registry: Any) -> str:
    name, modality = getattr(encoder, "name", "?"), getattr(encoder, "modality", "?")
    trained = ""
    if registry is not None:
        try:
            names = registry.list_encoders(modality=modality, pretrained=True)
        except Exception:  # noqa: BLE001 - a hint only; never let it break embed()
            names = []
        if names:
            trained = f"; pretrained {modality} encoders: {', '.join(names)}"
    return (
        f"encoder {name!r} ({modality}) is an untrained preset ({getattr(encoder, 'weights', None) or 'random-init'}): "
        "its vectors are for tests and demos and carry no meaning. For a trained space, pass "
        "encoder=DIR with a directory written by `align` (hub.train.align / `mhub align`), or use the starter "
        f"pack's aligned encoders (`mhub starter-pack`){trained}. This warning is shown once per encoder per process"
    )


def warn_untrained(encoder: Any, registry: Any = None, *, stacklevel: int = 3) -> bool:
    """Warn (once per encoder name per process, thread-safe) when ``encoder`` is an untrained preset.

    Returns whether this call warned.  ``stacklevel=3`` points at the caller of the
    function that calls this one (``Hub.embed``'s caller).
    """
    if not is_untrained(encoder):
        return False
    name = str(getattr(encoder, "name", type(encoder).__name__))
    with _lock:
        if name in _warned:
            return False
        _warned.add(name)
    warnings.warn(_message(encoder, registry), UntrainedWeightsWarning, stacklevel=stacklevel)
    return True


def reset() -> None:
    """Forget which encoders were warned about (tests)."""
    with _lock:
        _warned.clear()
