"""Helpers shared by the ``mhub`` command modules."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from ..errors import HubError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they parse (numbers, true/false, null)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--option")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def fail(exc: Exception) -> NoReturn:
    """Print ``error: ...`` to stderr and exit with status 2."""
    click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(2)


def read_items(paths: tuple[str, ...]) -> list[Path]:
    """Files, and the files inside directories (sorted), as item paths."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    if not out:
        raise HubError("no input files")
    return out
