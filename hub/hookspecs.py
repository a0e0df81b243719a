"""The hooks a modality-hub plugin can implement.

A plugin is a module (or object) listed under the ``modality_hub`` entry-point
group.  It implements any of these hooks with ``@hub.hookimpl`` and calls the
``register`` callable it is given, once per thing it provides::

    from hub import hookimpl, Modality, EncoderSpec

    @hookimpl
    def register_modalities(register):
        register(Modality(name="series", ...))

    @hookimpl
    def register_encoders(register):
        register(EncoderSpec(name="series-linear", modality="series", factory=...))

Registration is validated when the plugin loads; a duplicate name is an error
that names both distributions.
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "modality_hub"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_modalities(register: Callable[..., None]) -> None:
    """Register modalities: call ``register(Modality(...))`` once for each."""


@hookspec
def register_encoders(register: Callable[..., None]) -> None:
    """Register encoders: call ``register(EncoderSpec(...))`` once for each."""


@hookspec
def register_backbones(register: Callable[..., None]) -> None:
    """Register backbone adapters: call ``register(BackboneSpec(...))`` once for each."""


@hookspec
def register_augmentations(register: Callable[..., None]) -> None:
    """Register augmentations: call ``register(AugmentationSpec(...))`` once for each."""
