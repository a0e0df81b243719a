"""The encoders a server serves: ``NAME_OR_DIR[=ALIAS]`` specs → :class:`ServedModel` s.

* ``NAME`` is a registered encoder (``minilm-l6``, ``tiny-clip``...), built through
  ``Hub.encoder`` (``--runtime torch``) or ``Hub.onnx_encoder`` (``--runtime onnx``: exported
  to the hub's cache on first use, with its parity check).
* ``DIR`` is an ONNX export directory (``manifest.json`` + ``model.onnx``, from ``mhub export``),
  loaded with ``OnnxEncoder``: the manifest's file hashes are checked before anything is
  loaded, and ``--device cuda`` without a working CUDA provider is an error, not a silent
  fallback.  The export names its encoder; its preprocessing comes from the registry.
* ``ALIAS`` is the ``model`` id clients send (default: the encoder name, or the directory's name).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import InvalidOptionsError

__all__ = ["ServedModel", "parse_spec", "load_models", "runtime_of"]

Runtime = Literal["torch", "onnx"]


@dataclass
class ServedModel:
    """One served encoder and what ``GET /v1/models`` says about it."""

    alias: str
    encoder: Any  # an Encoder, an OnnxEncoder, or anything with prepare/collate/num_tokens/__call__
    source: str = ""
    warm_up: list[Any] | None = None  # items run once at startup, before the server is ready

    @property
    def modality(self) -> str:
        return str(self.encoder.modality)

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    @property
    def space(self) -> str:
        return str(self.encoder.space)

    @property
    def runtime(self) -> Runtime:
        return runtime_of(self.encoder)

    @property
    def device(self) -> str:
        return str(getattr(self.encoder, "device", "cpu"))

    @property
    def matryoshka_dims(self) -> list[int] | None:
        dims = getattr(self.encoder, "matryoshka_dims", None)
        return sorted(int(d) for d in dims) if dims else None

    def length(self, prepared: Any) -> int:
        fn = getattr(self.encoder, "length", None)
        return int(fn(prepared) if fn is not None else self.encoder.num_tokens(prepared))


def runtime_of(encoder: Any) -> Runtime:
    return "onnx" if hasattr(encoder, "session") and hasattr(encoder, "manifest") else "torch"


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``NAME_OR_DIR[=ALIAS]`` → (name or dir, alias)."""
    target, sep, alias = spec.partition("=")
    if not target or (sep and not alias):
        raise InvalidOptionsError(f"--encoder {spec!r}: expected NAME_OR_DIR or NAME_OR_DIR=ALIAS")
    return target, (alias or None)


def load_models(specs: list[str], *, hub: Any, runtime: Runtime = "torch", device: str = "cpu") -> list[ServedModel]:
    """Build every served encoder (errors are the hub's typed errors, naming the spec)."""
    if runtime not in ("torch", "onnx"):
        raise InvalidOptionsError(f"runtime must be 'torch' or 'onnx', got {runtime!r}")
    if not specs:
        specs = [hub.registry.modality("text").default_encoder]
    out: list[ServedModel] = []
    for spec in specs:
        target, alias = parse_spec(spec)
        path = Path(target).expanduser()
        if path.is_dir() or os.sep in target:
            if not (path / "manifest.json").is_file():
                raise InvalidOptionsError(
                    f"--encoder {target!r}: a served directory must be an ONNX export (manifest.json + model.onnx, "
                    "from `mhub export`); registered encoders are served by name (`mhub plugins` lists them)")
            from ..onnx import OnnxEncoder

            encoder = OnnxEncoder(path, device=device, hub=hub)
            out.append(ServedModel(alias or path.name, encoder, str(path)))
        elif runtime == "onnx":
            out.append(ServedModel(alias or target, hub.onnx_encoder(target, device=device), target))
        else:
            encoder = hub.encoder(target)
            if device != "cpu":
                encoder = encoder.to(device)
            out.append(ServedModel(alias or target, encoder, target))
    for m in out:  # warm-up items: the modality's own examples (registered by its plugin)
        modality = hub.registry.modality(m.modality)
        if modality.examples is not None:
            m.warm_up = list(modality.examples(32))
        elif modality.sample is not None:
            m.warm_up = [modality.sample()]
    seen: dict[str, str] = {}
    for m in out:
        if m.alias in seen:
            raise InvalidOptionsError(f"model id {m.alias!r} is served twice ({seen[m.alias]} and {m.source}); "
                                      "give one an alias: --encoder NAME=ALIAS")
        seen[m.alias] = m.source
    return out
