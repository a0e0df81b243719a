"""Cache keys: what an encoder's output depends on (its fingerprint) and a hash of each prepared item."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import weakref
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["item_digest", "encoder_fingerprint", "weights_sha256", "library_versions", "UnhashableItemError",
           "KEY_FORMAT"]

#: bump when the key layout or the stored row layout changes: old entries then simply miss
KEY_FORMAT = 1


class UnhashableItemError(TypeError):
    """A prepared item holds a type the cache cannot hash; the item is computed and not cached."""


# -- prepared items ---------------------------------------------------------------------------


def _feed(h: Any, obj: Any, depth: int = 0) -> None:
    """Feed a canonical, type-tagged serialisation of ``obj`` into hash ``h``.

    Tensors and arrays by dtype + shape + bytes, mappings recursively with sorted keys,
    strings as utf-8; two equal prepared items hash alike whatever the raw item was.
    """
    if depth > 64:
        raise UnhashableItemError("prepared item nested deeper than 64 levels")
    if obj is None or isinstance(obj, (bool, int, float, complex)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, str):
        b = obj.encode("utf-8", "surrogatepass")
        h.update(b"s%d:" % len(b) + b)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        b = bytes(obj)
        h.update(b"b%d:" % len(b) + b)
    elif isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        t = t.cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.element_size() else b"")
    elif isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            h.update(f"O{obj.shape}:".encode())
            for x in obj.reshape(-1).tolist():
                _feed(h, x, depth + 1)
        else:
            a = np.ascontiguousarray(obj)
            h.update(f"A{a.dtype.str}{a.shape}:".encode())
            h.update(a.view(np.uint8).reshape(-1).data if a.size else b"")
    elif isinstance(obj, np.generic):
        _feed(h, np.asarray(obj), depth + 1)
    elif isinstance(obj, Mapping):
        keys = list(obj.keys())
        try:
            keys = sorted(keys)
        except TypeError:
            keys = sorted(keys, key=repr)
        h.update(f"M{len(keys)}:".encode())
        for k in keys:
            _feed(h, k, depth + 1)
            _feed(h, obj[k], depth + 1)
    elif isinstance(obj, (list, tuple)):
        tag = type(obj).__qualname__ if hasattr(obj, "_fields") else type(obj).__name__  # NamedTuples by type
        h.update(f"L{tag}{len(obj)}:".encode())
        for x in obj:
            _feed(h, x, depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(f"D{type(obj).__module__}.{type(obj).__qualname__}:".encode())
        _feed(h, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, depth + 1)
    elif callable(getattr(obj, "to_dict", None)):  # torch_geometric Data / HeteroData, BatchEncoding
        h.update(f"O{type(obj).__module__}.{type(obj).__qualname__}:".encode())
        _feed(h, dict(obj.to_dict()), depth + 1)
    else:
        raise UnhashableItemError(
            f"cannot hash a prepared {type(obj).__module__}.{type(obj).__qualname__}; the cache hashes tensors, "
            "numpy arrays, str/bytes/numbers, lists, tuples, dicts, dataclasses and objects with to_dict()"
        )


def item_digest(prepared: Any) -> bytes:
    """sha256 (32 bytes) of a prepared item's canonical serialisation."""
    h = hashlib.sha256()
    _feed(h, prepared)
    return h.digest()


# -- encoders ----------------------------------------------------------------------------------

# weights hash per encoder instance, memoised with a cheap signature of its tensors (storage pointer
# and in-place version counter per parameter/buffer): training steps, load_state_dict and .to() change
# the signature and trigger a re-hash; writes through ``.data`` bypass version counters and are not seen.
_WEIGHTS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def _signature(module: torch.nn.Module) -> tuple:
    return tuple((n, t.data_ptr(), t._version, t.dtype, tuple(t.shape))
                 for n, t in [*module.named_parameters(), *module.named_buffers()])


def _state_dict_sha256(module: torch.nn.Module) -> str:
    try:
        from ..weights import state_dict_sha256  # type: ignore[attr-defined]
    except ImportError:  # until the lead moves it out of hub.onnx
        from ..onnx import state_dict_sha256
    return state_dict_sha256(module)


def weights_sha256(module: torch.nn.Module) -> str:
    """``hub.weights.state_dict_sha256(module)``, computed once per instance and weights version."""
    sig = _signature(module)
    memo = _WEIGHTS.get(module)
    if memo is not None and memo[0] == sig:
        return memo[1]
    digest = _state_dict_sha256(module)
    _WEIGHTS[module] = (sig, digest)
    return digest


_VERSIONS: dict[str, str] = {}


def library_versions(runtime: str = "torch") -> dict[str, str]:
    """Versions of the libraries that can change numerics; part of every key."""
    names = ["torch", "transformers", "numpy"] + (["onnxruntime"] if runtime == "onnx" else [])
    out = {}
    for name in names:
        if name not in _VERSIONS:
            mod = sys.modules.get(name)
            if mod is None:
                try:
                    from importlib.metadata import version

                    _VERSIONS[name] = version(name)
                except Exception:  # noqa: BLE001 - not installed
                    _VERSIONS[name] = "absent"
            else:
                _VERSIONS[name] = str(getattr(mod, "__version__", "unknown"))
        out[name] = _VERSIONS[name]
    return out


_DISTS: dict[str, str] = {}


def _plugin_version(cls: type) -> str:
    """``distribution==version`` of the package that defines an encoder class (its code changes numerics too)."""
    top = cls.__module__.split(".")[0]
    if top not in _DISTS:
        try:
            from importlib.metadata import packages_distributions, version

            dists = packages_distributions().get(top) or []
            _DISTS[top] = ",".join(f"{d}=={version(d)}" for d in sorted(set(dists))) or "unknown"
        except Exception:  # noqa: BLE001
            _DISTS[top] = "unknown"
    return _DISTS[top]


def encoder_fingerprint(encoder: Any, *, options: Mapping[str, Any] | None = None, output: str = "tokens",
                        normalize: bool = False) -> dict[str, Any]:
    """Everything besides the item that changes what ``encoder`` returns, as a JSON-able dict.

    Space, encoder class and its package version, a weights hash (``state_dict_sha256``, or the
    ONNX export's manifest hashes), options, runtime (torch / onnx + provider) and device type,
    parameter dtype (or the export's dtype), the output kind (``tokens`` or ``pooled``),
    normalisation, and the torch / transformers / numpy (and onnxruntime) versions.
    """
    fp: dict[str, Any] = {"format": KEY_FORMAT, "space": str(encoder.space), "modality": str(encoder.modality),
                          "name": str(encoder.name), "pooling": str(getattr(encoder, "pooling", "mean")),
                          "options": json.loads(json.dumps(dict(options or {}), sort_keys=True, default=str)),
                          "output": output, "normalize": bool(normalize)}
    manifest = getattr(encoder, "manifest", None)
    if manifest is not None and hasattr(manifest, "hashes"):  # hub.onnx.OnnxEncoder
        fp.update(runtime=f"onnx/{(getattr(encoder, 'providers', None) or ['?'])[0]}", dtype=str(manifest.dtype),
                  weights=hashlib.sha256(json.dumps(dict(manifest.hashes), sort_keys=True).encode()).hexdigest(),
                  export={"pooled": bool(manifest.pooled), "projector": manifest.projector,
                          "encoder_options": manifest.encoder_options, "opset": manifest.opset},
                  code=_plugin_version(type(encoder._encoder)), versions=library_versions("onnx"))
    elif isinstance(encoder, torch.nn.Module):
        first = next(iter([*encoder.parameters(), *encoder.buffers()]), None)
        fp.update(runtime=f"torch/{encoder.device.type}", dtype=str(first.dtype) if first is not None else "none",
                  weights=weights_sha256(encoder), cls=f"{type(encoder).__module__}.{type(encoder).__qualname__}",
                  training=bool(encoder.training), code=_plugin_version(type(encoder)),
                  versions=library_versions("torch"))
    else:
        raise UnhashableItemError(f"cannot fingerprint encoder {encoder!r}: neither a torch module nor an OnnxEncoder")
    return fp


def fingerprint_digest(fp: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).digest()
