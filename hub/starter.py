"""Deprecated: moved to ``hub_starter``; this module re-exports it with a ``DeprecationWarning``."""

from ._shim import moved

moved("hub.starter", "hub_starter", globals())
