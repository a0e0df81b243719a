"""Reading the JSON manifests of bundles, exports, aligned projectors and starter packs."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from .errors import BundleError

M = TypeVar("M", bound=BaseModel)


def read_manifest(path: Path, model: type[M], what: str, fmt: int, fix: str = "") -> M:
    """``model`` from ``path``, or :class:`BundleError` saying what is missing, invalid or of another format."""
    if not path.is_file():
        raise BundleError(f"{str(path.parent)!r} is not {what}: {path.name} is missing" + (f" ({fix})" if fix else ""))
    try:
        manifest = model.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise BundleError(f"{path}: invalid manifest: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    if getattr(manifest, "format", fmt) != fmt:
        raise BundleError(f"{path}: format {manifest.format}; this modality-hub reads format {fmt}")
    return manifest
