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
that names both distributions.  ``register_commands(cli)`` is different: it is
called by the ``mhub`` command line only, with the click group, so a plugin can
add commands (``cli.add_command(...)``) or demo steps.
"""

from __future__ import annotations

from typing import Any, Callable

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


@hookspec
def register_projectors(register: Callable[..., None]) -> None:
    """Register projector kinds: call ``register(ProjectorSpec(...))`` once for each."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add ``mhub`` commands: ``cli`` is the click group (``cli.add_command(...)``); ``cli.commands["demo"]``
    takes extra demo steps through ``add_step(step, *click_options)``."""
