"""``mhub cache info|clear|verify``: the on-disk embedding cache (see :mod:`hub.cache`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import HubError
from ._common import CONTEXT, fail

__all__ = ["register", "cache"]

_PATH = click.option("--path", "path", type=click.Path(path_type=Path), default=None,
                     help="Cache file or directory (default: <cache dir>/embeddings.sqlite; MODALITY_HUB_CACHE "
                          "sets the cache dir).")


def _open(path: Path | None):
    from ..cache import EmbeddingCache, default_cache_path

    return EmbeddingCache(path if path is not None else default_cache_path())


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@click.group(context_settings=CONTEXT)
def cache() -> None:
    """The on-disk embedding cache used by `embed --cache`, Hub(cache=True) and embed(cache=...)."""


@cache.command(context_settings=CONTEXT)
@_PATH
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info(path: Path | None, as_json: bool) -> None:
    """Where the cache is, how many entries and bytes it holds, per embedding space."""
    try:
        c = _open(path)
        data = c.info()
        c.close()
    except HubError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"path      {data['path']}")
    click.echo(f"entries   {data['entries']}")
    if "aliases" in data:
        click.echo(f"aliases   {data['aliases']} (raw items that skip prepare)")
    click.echo(f"stored    {_size(data['payload_bytes'])} of {_size(data['max_bytes'])} (bound; LRU eviction)")
    click.echo(f"file      {_size(data['file_bytes'])} (with WAL)")
    for space, n in data["spaces"].items():
        click.echo(f"  {n:>8}  {space}")
    for p in data["set_aside"]:
        click.secho(f"corrupt file set aside: {p}", fg="yellow")


@cache.command(context_settings=CONTEXT)
@_PATH
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def clear(path: Path | None, yes: bool) -> None:
    """Delete every entry (and corrupt files set aside)."""
    try:
        c = _open(path)
        if not yes:
            click.confirm(f"delete {c.info()['entries']} cached embeddings in {c.path}?", abort=True)
        n = c.clear()
        c.close()
    except HubError as exc:
        fail(exc)
    click.echo(f"cleared {n} entries from {c.path}")


@cache.command(context_settings=CONTEXT)
@_PATH
def verify(path: Path | None) -> None:
    """Check the file (integrity_check) and every row's checksum; bad rows are dropped. Exit 1 if any."""
    try:
        c = _open(path)
        report = c.verify()
        c.close()
    except HubError as exc:
        fail(exc)
    ok = report["integrity"] == ["ok"] and report["bad_rows"] == 0
    click.echo(f"{'ok' if ok else 'problems'}: {report['entries']} entries, {report['bad_rows']} bad rows dropped, "
               f"integrity: {'; '.join(report['integrity'][:3])}")
    raise SystemExit(0 if ok else 1)


def register(cli: click.Group) -> None:
    cli.add_command(cache)
