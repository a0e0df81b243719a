"""Deprecated: moved to ``hub.onnx.bench``; this module re-exports it with a ``DeprecationWarning``."""

from ._shim import moved

moved("hub.bench", "hub.onnx.bench", globals())
