"""Deprecated: moved to ``hub.lm.projectors``; this module re-exports it with a ``DeprecationWarning``."""

from ._shim import moved

moved("hub.projectors", "hub.lm.projectors", globals())
