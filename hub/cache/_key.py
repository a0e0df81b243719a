"""Cache keys: what an encoder's output depends on (its fingerprint) and a hash of each prepared item."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import stat
import sys
import weakref
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["item_digest", "encoder_fingerprint", "weights_sha256", "library_versions", "UnhashableItemError",
           "KEY_FORMAT", "raw_digest", "processor_digest", "decoder_versions", "DECODERS"]

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
    if isinstance(obj, bytes):  # first: raw image / audio bytes (no copy)
        h.update(b"b%d:" % len(obj))
        h.update(obj)
    elif obj is None or isinstance(obj, (bool, int, float, complex)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, str):
        b = obj.encode("utf-8", "surrogatepass")
        h.update(b"s%d:" % len(b) + b)
    elif isinstance(obj, (bytearray, memoryview)):
        b = bytes(obj)
        h.update(b"b%d:" % len(b))
        h.update(b)
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

            # top_level.txt of each *.dist-info first (one small read each); packages_distributions() reads
            # every RECORD file (0.5 s here) and is only the fallback
            # the folders whose name contains the package's (modality_hub_image: hub_image) first; all the others
            # only when none of those claims it (130 reads here, 3 ms)
            folders = _installed_folders()
            near = [f for f, (name, _) in folders.items() if _norm(top) in _norm(name) or _norm(name) in _norm(top)]
            found = set()
            for group in (near, [f for f in folders if f not in near]):
                for folder in group:
                    name, ver = folders[folder]
                    try:
                        with open(os.path.join(folder, "top_level.txt"), encoding="utf-8") as f:
                            if top in f.read().split():
                                found.add(f"{_norm(name)}=={ver}")
                    except OSError:
                        continue
                if found:
                    break
            if not found:
                found = {f"{d}=={version(d)}" for d in packages_distributions().get(top) or []}
            _DISTS[top] = ",".join(sorted(found)) or "unknown"
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


# -- raw items: a cheap key that lets a cached pass skip ``prepare`` ------------------------------

#: libraries that decode or tokenize raw items (their versions are part of every raw alias's key)
DECODERS = ("pillow", "tokenizers", "soundfile", "librosa", "torchaudio", "scipy", "trimesh", "torch-geometric")
_CHUNK = 1 << 20


def _is_pil(obj: Any) -> bool:
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "tobytes") and hasattr(obj, "mode")


def _feed_raw(h: Any, obj: Any, top: bool, depth: int = 0) -> tuple | bool:
    """Feed a raw item's content into ``h``; ``False`` when it has no content-only form that is safe to key on.

    Strings only as the item itself (inside a dict or tuple a string may name a file), files by their bytes
    (and suffix), PIL images by mode, size, palette, info and pixels (single-frame only), arrays and tensors
    by dtype, shape and bytes; numbers, ``None``, bytes, and tuples/lists/dicts of those.  For a file the
    return value is its ``(size, mtime_ns, inode)`` so the caller can see it change while it was read.
    """
    if depth > 16:
        return False
    if isinstance(obj, bytes):
        _feed(h, obj)
    elif isinstance(obj, str):
        if not top:
            return False
        _feed(h, obj)
    elif isinstance(obj, os.PathLike):
        if not top:
            return False
        path = os.fspath(obj)
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return False
        h.update(b"F" + Path(path).suffix.lower().encode("utf-8", "surrogatepass") + b"%d:" % st.st_size)
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return (st.st_size, st.st_mtime_ns, st.st_ino)
    elif _is_pil(obj):
        if getattr(obj, "n_frames", 1) != 1:
            return False  # a multi-frame image: which frame prepare reads is the plugin's choice
        h.update(f"P{obj.mode}{tuple(obj.size)}:".encode())
        palette = obj.getpalette() if obj.mode in ("P", "PA") else None
        _feed(h, [palette, {str(k): v for k, v in obj.info.items()}])
        _feed(h, obj.tobytes())
    elif isinstance(obj, (torch.Tensor, np.ndarray, np.generic, bytes, bytearray, memoryview)) or obj is None \
            or isinstance(obj, (bool, int, float, complex)):
        if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
            return False
        _feed(h, obj)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{type(obj).__qualname__}{len(obj)}:".encode())
        for x in obj:
            if _feed_raw(h, x, False, depth + 1) is False:
                return False
    elif isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            return False
        h.update(f"M{len(obj)}:".encode())
        for k in sorted(obj, key=repr):
            _feed(h, k)
            if _feed_raw(h, obj[k], False, depth + 1) is False:
                return False
    else:
        return False
    return True


def raw_digest(item: Any) -> tuple[bytes, tuple | None] | None:
    """sha256 of a raw item's content (see :func:`_feed_raw`) and, for a file, its stat signature;
    ``None`` when the item has no safe content-only form (it is then always prepared)."""
    if type(item) is bytes:  # the common case, as ``_feed`` hashes it
        h = hashlib.sha256(b"b%d:" % len(item))
        h.update(item)
        return h.digest(), None
    h = hashlib.sha256()
    try:
        res = _feed_raw(h, item, True)
    except (UnhashableItemError, OSError, ValueError, TypeError):
        return None
    if res is False:
        return None
    return h.digest(), (res if isinstance(res, tuple) else None)


def file_signature(item: Any) -> tuple | None:
    try:
        st = os.stat(os.fspath(item))
    except (OSError, TypeError):
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


_INSTALLED: dict[str, str] = {}
_FOLDERS: dict[str, tuple[str, str]] = {}


@functools.lru_cache(maxsize=None)
def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed() -> dict[str, str]:
    """``{normalised distribution name: version}`` from the ``*.dist-info`` folder names on ``sys.path``
    (a directory listing each; ``importlib.metadata.version`` parses every METADATA file, 4 ms a name)."""
    if not _INSTALLED:
        for folder, (name, ver) in _installed_folders().items():
            _INSTALLED[_norm(name)] = ver
        _INSTALLED.setdefault("", "")
    return _INSTALLED


def _installed_folders() -> dict[str, tuple[str, str]]:
    """``{path of a *.dist-info / *.egg-info folder: (name, version)}`` on ``sys.path``, later entries first."""
    if not _FOLDERS:
        for entry in reversed(sys.path):  # the first on sys.path wins, as for imports
            try:
                names = os.listdir(entry or ".")
            except OSError:
                continue
            for n in names:
                m = n.endswith("-info") and re.fullmatch(r"(.+?)-([^-]+)\.(?:dist|egg)-info", n)
                if m:
                    _FOLDERS[os.path.join(entry or ".", n)] = (m.group(1), m.group(2))
    return _FOLDERS


def decoder_versions() -> dict[str, str]:
    """Versions of the libraries that decode or tokenize raw items (installed or not, imported or not)."""
    found = _installed()
    return {name: found.get(_norm(name), "absent") for name in DECODERS}


_TORCH_INTERNALS = frozenset(vars(torch.nn.Module()))
_SKIP = frozenset({"registry", "session", "hub"})


def _state(h: Any, obj: Any, home: str, deep: bool, depth: int, seen: set[int]) -> None:
    """Feed the state of an encoder's item processing (not its weights) into ``h``: options, configs,
    image processors and feature extractors (their JSON), tokenizers (their full serialisation when
    ``deep``, else length and init arguments), and the attributes of processor objects."""
    if depth > 5 or id(obj) in seen:
        h.update(b"^")
        return
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, torch.Tensor, np.ndarray, np.generic)):
        try:
            _feed(h, obj)
        except UnhashableItemError:
            h.update(b"?")
        return
    seen.add(id(obj))
    cls = type(obj)
    h.update(f"<{cls.__module__}.{cls.__qualname__}>".encode())
    if isinstance(obj, torch.nn.Module) and depth > 0:
        return  # weights and modules: in the fingerprint's weights hash
    if hasattr(obj, "backend_tokenizer") or hasattr(obj, "get_vocab"):  # a transformers tokenizer
        backend = getattr(obj, "backend_tokenizer", None)
        h.update(json.dumps(getattr(obj, "init_kwargs", {}), sort_keys=True, default=str).encode())
        h.update(f"{len(obj)}|{getattr(obj, 'model_max_length', '')}|{getattr(obj, 'padding_side', '')}|"
                 f"{getattr(obj, 'truncation_side', '')}".encode())
        if deep and backend is not None:
            # the pipeline and vocabulary; not the truncation/padding settings, which every call sets anew.  In the
            # library's own order (fixed for a tokenizers version, which is in the key): sorting the vocabulary's keys
            # took 60 of the 100 ms this costs once per process; a different order could only miss, never collide
            state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
            h.update(json.dumps(state).encode())
        elif deep:
            h.update(json.dumps(sorted(obj.get_vocab().items()), default=str).encode())
        return
    to_json = getattr(obj, "to_json_string", None)
    if callable(to_json) and not deep and hasattr(obj, "__dict__"):  # the light pass: the attributes' repr
        h.update(repr(sorted(vars(obj).items(), key=lambda kv: kv[0])).encode())
        return
    if callable(to_json):  # transformers configs, image processors, feature extractors
        try:
            h.update(to_json().encode())
            return
        except Exception:  # noqa: BLE001 - fall back to the attributes
            pass
    if isinstance(obj, Mapping):
        for k in sorted(obj, key=repr):
            _state(h, k, home, deep, depth + 1, seen)
            _state(h, obj[k], home, deep, depth + 1, seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for x in (sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj):
            _state(h, x, home, deep, depth + 1, seen)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _state(h, f.name, home, deep, depth + 1, seen)
            _state(h, getattr(obj, f.name), home, deep, depth + 1, seen)
    elif hasattr(obj, "__dict__") and (depth == 0 or _is_processor(obj) or cls.__module__.split(".")[0] == home):
        for k in sorted(vars(obj)):
            if k in _TORCH_INTERNALS or k in _SKIP:
                continue
            h.update(f".{k}=".encode())
            _state(h, vars(obj)[k], home, deep, depth + 1, seen)


def _is_processor(obj: Any) -> bool:
    from ..processor import Processor

    return isinstance(obj, Processor)


_PROCESSORS: "weakref.WeakKeyDictionary[Any, tuple[bytes, bytes]]" = weakref.WeakKeyDictionary()


def processor_digest(encoder: Any) -> bytes:
    """sha256 of what an encoder's ``prepare`` depends on besides the item (see :func:`_state`) and the
    decoder library versions.  A light pass (attribute reprs: valid within this process only) runs every
    call; the full one (configs as JSON, tokenizer vocabularies and pipelines) only when the light one
    changes."""
    home = type(encoder).__module__.split(".")[0]
    light = hashlib.sha256()
    _state(light, encoder, home, False, 0, set())
    sig = light.digest()
    try:
        memo = _PROCESSORS.get(encoder)
    except TypeError:  # not weak-referenceable
        memo = None
    if memo is not None and memo[0] == sig:
        return memo[1]
    deep = hashlib.sha256(json.dumps(decoder_versions(), sort_keys=True).encode())
    _state(deep, encoder, home, True, 0, set())
    digest = deep.digest()
    try:
        _PROCESSORS[encoder] = (sig, digest)
    except TypeError:
        pass
    return digest
