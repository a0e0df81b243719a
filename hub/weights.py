"""Loading pretrained weights without surprises: local first, safetensors only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import WeightsNotFoundError

__all__ = ["from_pretrained", "ENV_ALLOW_DOWNLOAD"]

ENV_ALLOW_DOWNLOAD = "MODALITY_HUB_ALLOW_DOWNLOAD"


def downloads_allowed(allow_download: bool | None = None) -> bool:
    """Downloads happen only when asked for (option or ``MODALITY_HUB_ALLOW_DOWNLOAD=1``)
    and never when ``HF_HUB_OFFLINE=1``."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    if allow_download is not None:
        return allow_download
    return os.environ.get(ENV_ALLOW_DOWNLOAD, "0").lower() in ("1", "true", "yes")


def from_pretrained(
    cls: Any,
    weights: str | os.PathLike,
    *,
    allow_download: bool | None = None,
    what: str = "model",
    safetensors: bool = True,
    **kwargs: Any,
) -> Any:
    """``cls.from_pretrained(weights)`` from a local directory or the local HF cache.

    Model weights load from safetensors only (``use_safetensors=True``); no
    ``trust_remote_code``.  When the files are absent the error names the id
    and how to provide it, instead of a download or a deep stack trace.
    """
    source = os.fspath(weights)
    local = Path(source).expanduser()
    if local.exists() and not local.is_dir():
        raise WeightsNotFoundError(f"{what} weights {source!r}: expected a directory (from save_pretrained), got a file")
    if safetensors:
        kwargs.setdefault("use_safetensors", True)
    allowed = downloads_allowed(allow_download)
    try:
        return cls.from_pretrained(str(local) if local.is_dir() else source, local_files_only=not allowed, **kwargs)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, huggingface_hub validation errors, ...
        if local.is_dir():
            raise WeightsNotFoundError(
                f"{what} weights in {str(local)!r} could not be loaded ({type(exc).__name__}: {exc}). "
                "The directory must hold a config and model.safetensors (pickled .bin weights are refused)."
            ) from exc
        raise WeightsNotFoundError(
            f"{what} weights {source!r} are not available locally and downloads are off. "
            f"Provide them with `huggingface-cli download {source}` (then they load from the HF cache), "
            f"or pass a local directory saved with save_pretrained, or set {ENV_ALLOW_DOWNLOAD}=1 "
            f"to allow downloading. ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
