"""Bundle manifests: what ``manifest.json`` of a saved multimodal LM holds, and how it is checked on load.

Format 2 (written since issue 11) adds ``files``: the sha256 of every file in the bundle.
Format 1 bundles still load, with a :class:`~hub._manifest.LegacyFormatWarning` (their files
cannot be verified); every other check (paths, options, shapes) applies to both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .._atomic import recover
from .._manifest import file_options, inside, is_hub_id, read_manifest, verify_files
from ..errors import BundleError

__all__ = ["BackboneRef", "PluggedRef", "BundleManifest", "MANIFEST", "BUNDLE_FORMAT", "LEGACY_FORMATS",
           "load_bundle_manifest", "saved_options"]

MANIFEST = "manifest.json"
BUNDLE_FORMAT = 2
#: older formats that still load (with a LegacyFormatWarning: no hashes to verify)
LEGACY_FORMATS = (1,)
#: option keys a bundle never records (the caller decides them at load time)
_NOT_SAVED = frozenset({"allow_download", "trust_remote_code", "device", "device_map", "token", "cache_dir"})


class BackboneRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter: str
    source: str = Field(description="hub id, preset name, or a directory relative to the bundle")
    options: dict[str, Any] = {}
    saved: bool = Field(False, description="the backbone's weights are inside the bundle at `source`")


class PluggedRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    encoder: str
    encoder_options: dict[str, Any] = {}
    encoder_dir: str | None = Field(None, description="encoder weights saved in the bundle (loaded as weights=...)")
    projector_dir: str
    placeholder: str
    start: str | None = None
    end: str | None = None


class BundleManifest(BaseModel):
    """``manifest.json`` of a saved multimodal LM bundle."""

    model_config = ConfigDict(extra="forbid")

    format: int = BUNDLE_FORMAT
    kind: str = "multimodal-lm"
    backbone: BackboneRef
    modalities: dict[str, PluggedRef] = {}
    files: dict[str, str] = Field(default_factory=dict, description="sha256 of every file (relative path → hex)")


def saved_options(options: dict[str, Any]) -> dict[str, Any]:
    """Options as a bundle records them: never permissions or devices (the loader's caller decides those)."""
    return {k: v for k, v in options.items() if k not in _NOT_SAVED}


def load_bundle_manifest(root: Path, *, backbone: str | None = None) -> BundleManifest:
    """Read and check ``root/manifest.json`` before anything is built from it.

    Repairs an interrupted save first (:func:`hub._atomic.recover`).  Checks, each refused with a
    :class:`BundleError` that names the field: the kind; every path stays inside ``root``
    (``projector_dir``, ``encoder_dir``, a saved backbone's ``source``); a backbone referenced
    outside the bundle is a hub id or preset, unless the caller passes ``backbone=`` explicitly;
    options can only narrow permissions; with format 2, every file's sha256 matches."""
    recover(root, marker=MANIFEST, what="a bundle")
    manifest = read_manifest(root / MANIFEST, BundleManifest, "a bundle", BUNDLE_FORMAT, legacy=LEGACY_FORMATS)
    where = str(root / MANIFEST)
    if manifest.kind != "multimodal-lm":
        raise BundleError(f"{where}: kind {manifest.kind!r}; a bundle has kind 'multimodal-lm'")
    if manifest.format >= 2:
        if not manifest.files:
            raise BundleError(f"{where}: format {manifest.format} lists no file hashes; refused (the manifest was "
                              "edited or truncated)")
        verify_files(root, manifest.files, f"bundle {str(root)!r}")
    ref = manifest.backbone
    ref.options = file_options(ref.options, f"{where}: backbone.options")
    if ref.saved:
        inside(root, ref.source, f"{where}: backbone.source")
    elif backbone is None and not is_hub_id(ref.source):
        raise BundleError(
            f"{where}: backbone.source {ref.source!r} is a path outside the bundle; a bundle may reference only a "
            "hub id or preset outside itself. Pass backbone=<source> to MultimodalLM.load to use it explicitly"
        )
    for m, plug in manifest.modalities.items():
        plug.encoder_options = file_options(plug.encoder_options, f"{where}: modalities.{m}.encoder_options")
        if "weights" in plug.encoder_options and plug.encoder_dir:
            raise BundleError(f"{where}: modalities.{m} names both encoder_dir and encoder_options.weights; refused")
        inside(root, plug.projector_dir, f"{where}: modalities.{m}.projector_dir")
        if plug.encoder_dir is not None:
            inside(root, plug.encoder_dir, f"{where}: modalities.{m}.encoder_dir")
    return manifest
