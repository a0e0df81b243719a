"""Deprecated: moved to ``hub.train``; this module re-exports it with a ``DeprecationWarning``."""

from ._shim import moved

moved("hub.training", "hub.train", globals())
