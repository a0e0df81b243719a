"""The ``mhub`` command line.

Core commands live in one module per command group (:data:`CORE_COMMAND_MODULES`);
each module has ``register(cli)``.  Plugins add their own commands through the
``register_commands(cli)`` hook (as simonw/llm does): the group is handed to every
loaded plugin the first time a command is looked up, so ``mhub --help`` lists them
and a broken plugin only loses its own commands.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from typing import Any

import click

from ._common import CONTEXT, fail, parse_options

__all__ = ["main", "HubGroup", "CORE_COMMAND_MODULES", "fail", "parse_options"]

#: modules whose ``register(cli)`` adds the core commands, in help order
CORE_COMMAND_MODULES: tuple[str, ...] = (
    "hub.cli.core",
    "hub.cli.demo",
    "hub.cli.lm",
    "hub.cli.onnx",
    "hub.cli.train",
    "hub.cli.serve",
    "hub.cli.datasets",
    "hub.cli.cache",
)


class HubGroup(click.Group):
    """The ``mhub`` group: core commands at import, plugin commands on first lookup."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plugins_loaded = False

    def _load_plugin_commands(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from .._registry import default_registry

        default_registry().register_commands(self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            self._load_plugin_commands()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def invoke(self, ctx: click.Context) -> Any:
        _quiet(bool(ctx.params.get("verbose")))  # before plugins import their libraries
        self._load_plugin_commands()  # plugins may extend core commands (e.g. demo steps) before they run
        return super().invoke(ctx)


def _quiet(verbose: bool) -> None:
    """Libraries' progress bars and warnings only with ``--verbose``; the hub's own tqdm bars stay.

    Set before transformers / huggingface_hub are imported (plugins import them lazily), which is when
    they read these switches (transformers' "Loading weights" bar follows HF_HUB_DISABLE_PROGRESS_BARS).
    """
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", module=r"(transformers|torch|torch_geometric|onnxscript|huggingface_hub)(\.|$)")
    for name in ("transformers", "torch", "onnxscript", "huggingface_hub", "torch_geometric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # already imported (in-process callers): switch its bars off directly
        try:
            sys.modules["transformers"].utils.logging.disable_progress_bar()
        except AttributeError:  # pragma: no cover - a transformers without the switch
            pass


@click.group(cls=HubGroup, context_settings=CONTEXT)
@click.version_option(package_name="modality-hub")
@click.option("--verbose", "-v", is_flag=True, help="Show libraries' progress bars, logs and warnings.")
def main(verbose: bool = False) -> None:
    """modality-hub: embed any input (text, image, audio, graph, 3D) as LLM tokens."""
    _quiet(verbose)


for _module in CORE_COMMAND_MODULES:
    importlib.import_module(_module).register(main)


if __name__ == "__main__":  # pragma: no cover
    main()
