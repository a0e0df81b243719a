"""Which modality an item belongs to: files by suffix, other items by each modality's ``detect``.

Lower layers (the multimodal LM, training) detect items with these functions and a
:class:`~hub.Registry`; :meth:`hub.Hub.detect` is the same call on the hub's registry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._registry import Registry
from .encoder import describe_item
from .errors import AmbiguousModalityError, InvalidInputError, UnknownModalityError
from .specs import Modality

__all__ = ["as_path", "check_file", "detect", "accepts_table"]


def as_path(item: Any) -> Path | None:
    """A ``Path`` when ``item`` names a file (or a directory, to be refused); else ``None``.

    ``pathlib.Path`` objects always count as paths.  A ``str`` counts when it
    names an existing file, or an existing directory written with a path
    separator ("data/", "/tmp/x") — a bare word is text even if a folder of
    that name happens to exist in the working directory.
    """
    if isinstance(item, os.PathLike):
        return Path(item)
    if isinstance(item, str) and item and len(item) < 4096 and "\n" not in item:
        try:
            if os.path.isfile(item):
                return Path(item)
            if os.path.isdir(item) and (os.sep in item or item in (".", "..")):
                return Path(item)
        except (OSError, ValueError):
            return None
    return None


def check_file(path: Path, item: Any) -> None:
    """:class:`InvalidInputError` for a directory or a missing file."""
    if path.is_dir():
        raise InvalidInputError(
            f"{describe_item(item)} is a directory; pass the files in it, "
            f"e.g. sorted(Path({str(path)!r}).glob('*.png'))"
        )
    if not path.is_file():
        raise InvalidInputError(f"{describe_item(item)}: no such file")


def accepts_table(mods: list[Modality]) -> str:
    if not mods:
        return "No modality plugins are installed (see `mhub plugins`)."
    return "Installed modalities accept: " + "; ".join(f"{m.name}: {', '.join(m.accepts)}" for m in mods)


def _detect_file(path: Path, item: Any, mods: list[Modality]) -> str:
    check_file(path, item)
    suffix = path.suffix.lower()
    claims = [m.name for m in mods if suffix in m.extensions]
    if len(claims) == 1:
        return claims[0]
    if not claims:
        raise UnknownModalityError(
            f"{describe_item(item)}: no installed modality reads {suffix or 'extension-less'} files. "
            + "; ".join(f"{m.name}: {', '.join(m.extensions) or 'no files'}" for m in mods)
        )
    raise AmbiguousModalityError(
        f"{describe_item(item)}: {suffix} files are read by several modalities ({', '.join(claims)}); "
        "pass modality=..."
    )


def detect(registry: Registry, item: Any) -> str:
    """The modality of ``item`` among ``registry``'s modalities."""
    mods = [registry.modality(m) for m in registry.list_modalities()]
    path = as_path(item)
    if path is not None:
        return _detect_file(path, item, mods)
    claims = []
    for m in mods:
        if m.detect is None:
            continue
        try:
            if m.detect(item):
                claims.append(m.name)
        except Exception:  # noqa: BLE001 - a detector that cannot tell does not claim
            continue
    if len(claims) == 1:
        return claims[0]
    if not claims:
        raise UnknownModalityError(f"no installed modality accepts {describe_item(item)}. {accepts_table(mods)}")
    raise AmbiguousModalityError(
        f"{describe_item(item)} is accepted by several modalities ({', '.join(claims)}); pass modality=..."
    )
