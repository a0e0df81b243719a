"""Deprecated: moved to ``hub.lm``; this module re-exports it with a ``DeprecationWarning``."""

from ._shim import moved

moved("hub.multimodal", "hub.lm", globals())
