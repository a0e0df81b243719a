"""What a dataset run embeds with: encoder routes per modality, options, and the run's settings.

A :class:`RunConfig` is everything that decides the vectors (encoders, options,
weights, normalisation, runtime, token columns).  It is recorded in DEST and a
resumed run must match it; package versions are recorded too but only reported.
"""

from __future__ import annotations

import functools
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ..errors import InvalidOptionsError

if TYPE_CHECKING:  # pragma: no cover
    from .._hub import Hub

__all__ = ["Route", "RunConfig", "parse_routes", "split_options", "package_versions", "weights_hash",
           "ENV_FAULT", "fault_setting"]

#: Fault injection for tests: ``N`` (or ``N:after-rename``) makes the local process, or one Ray actor,
#: die once (``SIGKILL`` / ``os._exit``) after writing N part files, in the middle of writing the next one.
#: "Once" is per DEST: a marker file ``DEST/_fault_fired`` records that it happened.
ENV_FAULT = "MODALITY_HUB_FAULT_EXIT_AFTER"

#: packages whose versions are recorded in DEST (information only)
VERSIONED = ("modality-hub", "torch", "transformers", "pyarrow", "onnxruntime", "ray", "numpy")


@dataclass(frozen=True)
class Route:
    """One modality's encoder in a run: what it is and what its vectors are."""

    modality: str
    encoder: str
    options: dict[str, Any] = field(default_factory=dict)
    space: str = ""
    dim: int = 0
    pooling: str = "mean"
    weights_sha256: str = ""

    def identity(self) -> dict[str, Any]:
        """The fields that decide the vectors (compared on resume)."""
        return {"encoder": self.encoder, "options": self.options, "space": self.space, "dim": self.dim,
                "pooling": self.pooling, "weights_sha256": self.weights_sha256}


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's output, as recorded in ``DEST/_modality_hub.json``."""

    routes: dict[str, Route]
    normalize: bool = False
    runtime: str = "torch"
    tokens: bool = False

    def identity(self) -> dict[str, Any]:
        return {
            "routes": {m: r.identity() for m, r in sorted(self.routes.items())},
            "normalize": self.normalize,
            "runtime": self.runtime,
            "tokens": self.tokens,
        }

    def to_json(self) -> dict[str, Any]:
        return {"routes": {m: asdict(r) for m, r in sorted(self.routes.items())}, "normalize": self.normalize,
                "runtime": self.runtime, "tokens": self.tokens}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RunConfig":
        return cls(routes={m: Route(**r) for m, r in data["routes"].items()}, normalize=bool(data["normalize"]),
                   runtime=data["runtime"], tokens=bool(data["tokens"]))


def parse_routes(hub: "Hub", encoder: str | Iterable[str] | Mapping[str, str]) -> dict[str, str]:
    """``"tiny-clip"``, ``["image=tiny-clip", "text=minilm-l6"]`` or ``{"image": "tiny-clip"}`` → modality → encoder."""
    if isinstance(encoder, Mapping):
        pairs = [(str(m), str(e)) for m, e in encoder.items()]
    else:
        specs = [encoder] if isinstance(encoder, str) else list(encoder or [])
        pairs = []
        for spec in specs:
            mod, sep, name = str(spec).partition("=")
            pairs.append((mod.strip(), name.strip()) if sep else ("", mod.strip()))
    if not pairs:
        raise InvalidOptionsError(
            "embed_dataset needs an encoder: encoder='minilm-l6', or one per modality "
            "(['image=tiny-clip', 'text=minilm-l6']); see `mhub plugins` for the installed encoders"
        )
    routes: dict[str, str] = {}
    for mod, name in pairs:
        if not name:
            raise InvalidOptionsError(f"encoder route {mod + '=' if mod else ''}{name!r} names no encoder; "
                                      "write ENCODER or MODALITY=ENCODER")
        spec_mod = hub.registry.encoder_spec(name).modality  # UnknownEncoderError lists the encoders
        if mod and mod != spec_mod:
            raise InvalidOptionsError(f"encoder {name!r} encodes {spec_mod!r}, not {mod!r}; "
                                      f"{mod} encoders: {', '.join(hub.encoders(modality=mod)) or 'none'}")
        if spec_mod in routes and routes[spec_mod] != name:
            raise InvalidOptionsError(f"two encoders for {spec_mod!r}: {routes[spec_mod]!r} and {name!r}; "
                                      "a run has one encoder per modality")
        routes[spec_mod] = name
    return routes


def split_options(routes: Mapping[str, str], options: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Encoder options per modality: ``{"max_length": 64}`` for a single encoder, or ``{"text": {...}}``."""
    options = dict(options or {})
    if not options:
        return {m: {} for m in routes}
    if all(k in routes and isinstance(v, Mapping) for k, v in options.items()):
        return {m: dict(options.get(m, {})) for m in routes}
    if len(routes) == 1:
        return {next(iter(routes)): options}
    raise InvalidOptionsError(
        f"options {sorted(options)} are ambiguous with {len(routes)} encoders ({', '.join(routes)}); "
        "key them by modality, e.g. options={'text': {'max_length': 64}}"
    )


def weights_hash(module: Any) -> str:
    """sha256 of an encoder's state dict (``hub.weights.state_dict_sha256``)."""
    try:
        from ..weights import state_dict_sha256
    except ImportError:  # the function moves from hub.onnx to hub.weights
        from ..onnx import state_dict_sha256
    return state_dict_sha256(module)


def package_versions() -> dict[str, str]:
    """Versions of the packages that produce the vectors (recorded in DEST for information)."""
    return dict(_package_versions())


@functools.lru_cache(maxsize=1)
def _package_versions() -> dict[str, str]:  # read once per process (importlib.metadata parses every METADATA file)
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def fault_setting() -> tuple[int, str] | None:
    """``MODALITY_HUB_FAULT_EXIT_AFTER`` parsed: (parts written before dying, "before-rename" | "after-rename")."""
    raw = os.environ.get(ENV_FAULT, "").strip()
    if not raw:
        return None
    count, _, point = raw.partition(":")
    point = point or "before-rename"
    if not count.isdigit() or point not in ("before-rename", "after-rename"):
        raise InvalidOptionsError(f"{ENV_FAULT}={raw!r}: expected N or N:before-rename or N:after-rename")
    return int(count), point


def dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, default=str)
