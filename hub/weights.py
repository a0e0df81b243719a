"""Loading pretrained weights without surprises: safetensors only, no remote code, one download rule."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from .errors import WeightsNotFoundError

__all__ = ["from_pretrained", "downloads_allowed", "download_policy", "state_dict_sha256", "tensor_problems",
           "ENV_ALLOW_DOWNLOAD"]

ENV_ALLOW_DOWNLOAD = "MODALITY_HUB_ALLOW_DOWNLOAD"
ENV_HF_OFFLINE = "HF_HUB_OFFLINE"
_TRUE = ("1", "true", "yes", "on")


def _env_flag(name: str) -> bool | None:
    """``True`` / ``False`` for a set boolean variable, ``None`` when unset or empty (unknown words count as off)."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    return value in _TRUE


def download_policy(allow_download: bool | None = None) -> tuple[bool, str]:
    """Whether weights may be downloaded, and which rule decided it (for error messages).

    One rule, the ecosystem's (transformers, sentence-transformers and timm download on first
    use and stay offline under ``HF_HUB_OFFLINE=1``):

    1. ``HF_HUB_OFFLINE=1`` is the ecosystem's off switch: huggingface_hub itself refuses the
       network then, so nothing here can turn downloads on;
    2. an explicit argument (``allow_download=`` of a load call) wins over the environment;
    3. the environment: ``MODALITY_HUB_ALLOW_DOWNLOAD=0`` turns downloads off (``=1`` on);
    4. the default: downloads allowed.

    A loaded file (bundle, export, pack) never supplies ``allow_download: true``: the loaders
    refuse it (:func:`hub._manifest.file_options`), so files can only narrow this."""
    if _env_flag(ENV_HF_OFFLINE):
        return False, f"{ENV_HF_OFFLINE}=1"
    if allow_download is not None:
        return bool(allow_download), f"allow_download={bool(allow_download)}"
    env = _env_flag(ENV_ALLOW_DOWNLOAD)
    if env is not None:
        return env, f"{ENV_ALLOW_DOWNLOAD}={os.environ[ENV_ALLOW_DOWNLOAD].strip()}"
    return True, "the default"


def downloads_allowed(allow_download: bool | None = None) -> bool:
    """See :func:`download_policy`: explicit argument > environment > default (allowed); ``HF_HUB_OFFLINE=1`` is off."""
    return download_policy(allow_download)[0]


def _how_to_allow(reason: str) -> str:
    if reason.startswith(ENV_HF_OFFLINE):
        return f"unset {ENV_HF_OFFLINE} to allow downloading"
    if reason.startswith("allow_download"):
        return "pass allow_download=True to allow downloading"
    return f"unset {ENV_ALLOW_DOWNLOAD} (or set it to 1) to allow downloading"


def from_pretrained(
    cls: Any,
    weights: str | os.PathLike,
    *,
    allow_download: bool | None = None,
    what: str = "model",
    safetensors: bool = True,
    **kwargs: Any,
) -> Any:
    """``cls.from_pretrained(weights)`` from a local directory, the local HF cache, or a download.

    Model weights load from safetensors only (``use_safetensors=True``); never
    ``trust_remote_code`` (a caller's ``trust_remote_code`` is refused).  Downloads follow
    :func:`download_policy`.  When the files are absent and downloads are off, the error
    names the id, which rule turned downloads off, and how to provide the files, instead of
    a deep stack trace.
    """
    if kwargs.pop("trust_remote_code", False):
        raise WeightsNotFoundError(f"{what} weights {os.fspath(weights)!r}: trust_remote_code is never used; "
                                   "modality-hub loads only model classes that ship with transformers")
    source = os.fspath(weights)
    local = Path(source).expanduser()
    if local.exists() and not local.is_dir():
        raise WeightsNotFoundError(f"{what} weights {source!r}: expected a directory (from save_pretrained), got a file")
    if safetensors:
        kwargs.setdefault("use_safetensors", True)
    if getattr(cls, "__name__", "").startswith("Auto"):
        kwargs["trust_remote_code"] = False  # the Auto* classes would otherwise ask (or refuse) per repo
    allowed, reason = download_policy(allow_download)
    try:
        return cls.from_pretrained(str(local) if local.is_dir() else source, local_files_only=not allowed, **kwargs)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, huggingface_hub validation errors, ...
        first = str(exc).splitlines()[0] if str(exc) else ""
        if local.is_dir():
            raise WeightsNotFoundError(
                f"{what} weights in {str(local)!r} could not be loaded ({type(exc).__name__}: {exc}). "
                "The directory must hold a config and model.safetensors (pickled .bin weights are refused)."
            ) from exc
        if not allowed:
            raise WeightsNotFoundError(
                f"{what} weights {source!r} are not available locally and downloads are off ({reason}). "
                f"Provide them with `huggingface-cli download {source}` (then they load from the HF cache), "
                f"or pass a local directory saved with save_pretrained, or {_how_to_allow(reason)}. "
                f"({type(exc).__name__}: {first})"
            ) from exc
        raise WeightsNotFoundError(
            f"{what} weights {source!r} could not be loaded or downloaded ({type(exc).__name__}: {first}). "
            "Check the id and your network, or pass a local directory saved with save_pretrained; "
            f"{ENV_HF_OFFLINE}=1 or {ENV_ALLOW_DOWNLOAD}=0 keep everything offline"
        ) from exc


def state_dict_sha256(module: torch.nn.Module) -> str:
    """A stable sha256 over a module's ``state_dict``: names, dtypes, shapes and bytes, in sorted name order."""
    h = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no 90 MB copy (same digest)
    return h.hexdigest()


def tensor_problems(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """What differs between the tensor names and shapes a module expects and those a file or state dict holds:
    ``["missing tensors [...]", "unexpected tensors [...]", "shape mismatch a: expected (2, 3), got (3, 2)"]``."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [f"{k}: expected {tuple(expected[k])}, got {tuple(got[k])}" for k in sorted(set(expected) & set(got))
             if tuple(expected[k]) != tuple(got[k])]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if wrong:
        problems.append("shape mismatch " + "; ".join(wrong))
    return problems
