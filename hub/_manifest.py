"""Reading what the hub loads from directories it did not necessarily write: manifests, paths, options, weights.

Bundles, aligned-projector directories, exports, starter packs and checkpoints are exchanged like
model repos, so everything here treats a directory as untrusted input:

* :func:`read_manifest` — a JSON manifest through its pydantic model, size-capped *before* parsing,
  with a format number (older formats load with a warning);
* :func:`inside` — a manifest-relative path kept inside the directory (no ``..``, no absolute path,
  no symlink leading out);
* :func:`file_options` — options from a file can only *narrow* what the caller allows;
* :func:`safetensors_header` / :func:`check_tensors` — a safetensors header parsed by hand and checked
  against the expected names, shapes, dtypes and caps before any tensor is allocated;
* :func:`hash_files` / :func:`verify_files` — sha256 of every file, recorded and checked;
* :func:`check_pretrained_dir` — a ``save_pretrained`` directory checked before transformers sees it.

Every refusal is a :class:`~hub.errors.BundleError` naming the file, what was refused and why.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import warnings
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import BundleError, InvalidOptionsError, WeightsNotFoundError
from .weights import tensor_problems

M = TypeVar("M", bound=BaseModel)

__all__ = [
    "read_manifest", "read_json", "inside", "check_widths", "file_options", "safetensors_header", "check_tensors",
    "hash_files", "verify_files", "check_pretrained_dir", "load_module_state", "check_tree", "file_sha256", "estimate_params",
    "is_hub_id", "LegacyFormatWarning", "BundleFileMissingError", "BundleConfigError",
    "MANIFEST_MAX_BYTES", "CONFIG_MAX_BYTES", "TOKENIZER_MAX_BYTES", "MAX_WIDTH", "MAX_PARAMS",
]

KiB, MiB = 1 << 10, 1 << 20
#: size caps, checked before a file is parsed
MANIFEST_MAX_BYTES = 4 * MiB  # manifest.json, align.json, pack.json, an export's manifest (parity reports)
CONFIG_MAX_BYTES = 4 * MiB  # config.json of a save_pretrained directory, projector.json
TOKENIZER_MAX_BYTES = 512 * MiB  # tokenizer.json / vocab files: tens of MB are normal
OTHER_MAX_BYTES = 64 * MiB  # any other non-weight file in a loaded directory
SAFETENSORS_HEADER_MAX_BYTES = 64 * MiB
SAFETENSORS_MAX_TENSORS = 200_000
#: shape caps: widths a projector or a file-supplied option may claim, and parameters of one module
MAX_WIDTH = 65_536
MAX_PARAMS = 1 << 31
#: an option whose name says it is a size ("image_size", "patch_size", ...): capped when it comes from a file
MAX_SIZE_OPTION = 8192
MAX_INT_OPTION = 1 << 24


class LegacyFormatWarning(UserWarning):
    """A directory of an older format was loaded: it carries no hashes, so its files were not verified."""


class BundleFileMissingError(BundleError, WeightsNotFoundError):
    """A file a saved directory must hold is missing (a :class:`BundleError` and a :class:`WeightsNotFoundError`)."""


class BundleConfigError(BundleError, InvalidOptionsError):
    """A config file of a saved directory does not validate (a :class:`BundleError` and an :class:`InvalidOptionsError`)."""


# -- files and JSON ------------------------------------------------------------------------------


def read_json(path: Path, what: str, max_bytes: int = MANIFEST_MAX_BYTES, *,
              error: type[BundleError] = BundleError) -> Any:
    """JSON from ``path`` with a size cap checked before reading (``error``, a :class:`BundleError`, otherwise)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BundleFileMissingError(f"{str(path)!r}: {what} cannot be read ({exc.strerror or exc})") from None
    if size > max_bytes:
        raise error(f"{str(path)!r}: {what} is {size:,} bytes; refusing to parse more than {max_bytes:,} "
                          "(a manifest or config this large is not one the hub wrote)")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise error(f"{str(path)!r}: {what} is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None


def read_manifest(path: Path, model: type[M], what: str, fmt: int, fix: str = "", *,
                  legacy: Iterable[int] = (), max_bytes: int = MANIFEST_MAX_BYTES) -> M:
    """``model`` from ``path``, or :class:`BundleError` saying what is missing, invalid or of another format.

    The size cap is checked before parsing.  Formats in ``legacy`` load with a
    :class:`LegacyFormatWarning` (they carry no hashes); any other format is refused with the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise BundleFileMissingError(f"{str(path.parent)!r} is not {what}: {path.name} is missing"
                                     + (f" ({fix})" if fix else ""))
    raw = read_json(path, f"the manifest of {what}", max_bytes)
    found = raw.get("format", fmt) if isinstance(raw, dict) else fmt
    legacy = tuple(legacy)
    if isinstance(found, int) and not isinstance(found, bool) and found != fmt and found not in legacy:
        accepted = ", ".join(str(f) for f in (fmt, *legacy))
        newer = " (written by a newer modality-hub: upgrade to load it)" if found > fmt else ""
        raise BundleError(f"{path}: format {found}; this modality-hub reads format {accepted}{newer}")
    try:
        manifest = model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise BundleError(f"{path}: invalid manifest: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    if found in legacy:
        warnings.warn(f"{path}: format {found} ({what}) carries no file hashes, so its files are not verified; "
                      f"save it again to write format {fmt}", LegacyFormatWarning, stacklevel=3)
    return manifest


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- paths ---------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def is_hub_id(value: str) -> bool:
    """``name`` or ``org/name`` (a Hugging Face hub id or a registry preset), never a path with ``..``."""
    return bool(_HUB_ID.match(value)) and ".." not in value


def inside(root: Path, relative: str, what: str, *, must_exist: bool = True) -> Path:
    """``root / relative`` when it stays inside ``root``: no absolute path, no ``..``, no symlink leading out.

    ``root`` itself may be reached through a symlink (the user chose it); nothing under it may point
    outside it.  Raises :class:`BundleError` naming ``what`` and the path."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise BundleError(f"{what}: {relative!r} is not a relative path")
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", relative) or relative.startswith("~"):
        raise BundleError(f"{what}: {relative!r} is an absolute path; a saved directory may only reference "
                          "files inside itself (pass an outside location explicitly at load time)")
    if ".." in pure.parts:
        raise BundleError(f"{what}: {relative!r} leads out of {str(root)!r} ('..' is refused); a saved directory "
                          "may only reference files inside itself")
    base = root.resolve()
    path = base.joinpath(*pure.parts)
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise BundleError(f"{what}: {relative!r} is a symlink (or under one) leading out of {str(root)!r} to "
                          f"{str(resolved)!r}; refused")
    if must_exist and not path.exists():
        raise BundleFileMissingError(f"{what}: {relative!r} is missing in {str(root)!r}")
    return path


def check_tree(directory: Path, root: Path, what: str) -> list[Path]:
    """Every regular file under ``directory`` (sorted); a symlink leading out of ``root`` is refused."""
    base = root.resolve()
    files = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            if p.is_symlink():
                target = p.resolve()
                if target != base and base not in target.parents:
                    raise BundleError(f"{what}: {str(p)!r} is a symlink leading out of {str(root)!r} "
                                      f"(to {str(target)!r}); refused")
                if target.is_dir():
                    raise BundleError(f"{what}: {str(p)!r} is a symlink to a directory; refused")
        files.extend(Path(dirpath) / f for f in filenames)
    return sorted(files)


# -- options that come from files ----------------------------------------------------------------

#: keys a file may set only to narrow (a false value); a true value is refused
_NARROW_ONLY = {"allow_download": False, "local_files_only": True}
#: keys a file never sets: the caller decides (a file naming them is refused)
_CALLER_ONLY = frozenset({"trust_remote_code", "device", "device_map", "token", "use_auth_token", "cache_dir",
                          "proxies", "mirror", "endpoint", "revision_url", "code_revision", "force_download"})
_PATH_KEYS = frozenset({"weights", "path", "directory", "dir", "file", "root", "source", "model_path"})
_SIZE_KEY = re.compile(r"(^|_)(size|dim|width|channels|points|groups|queries|length|layers|heads|depth)s?($|_)")


def _is_path_key(key: str) -> bool:
    return key in _PATH_KEYS or key.endswith(("_dir", "_path", "_file"))


def _check_value(value: Any, key: str, where: str, depth: int = 0) -> None:
    if depth > 8:
        raise BundleError(f"{where}: option {key!r} is nested deeper than 8 levels; refused")
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return
    if isinstance(value, int):
        cap = MAX_SIZE_OPTION if _SIZE_KEY.search(key) and "vocab" not in key and "max_" not in key else MAX_INT_OPTION
        if abs(value) > cap:
            raise BundleError(f"{where}: option {key}={value} exceeds the cap of {cap:,} for options read from a "
                              "file (pass it explicitly at load time if you mean it)")
        return
    if isinstance(value, str):
        if len(value) > 4096:
            raise BundleError(f"{where}: option {key!r} is a string of {len(value):,} characters; refused")
        if _is_path_key(key) and not is_hub_id(value):
            raise BundleError(
                f"{where}: option {key}={value!r} is a local path; a file may name only a hub id here "
                "(org/name) or a path inside its own directory through its manifest. Pass an outside "
                f"location explicitly at load time"
            )
        if _is_path_key(key) and os.path.exists(value):
            raise BundleError(f"{where}: option {key}={value!r} names an existing path relative to the working "
                              "directory, not a hub id; refused (a file may only reference files inside itself)")
        return
    if isinstance(value, (list, tuple)):
        if len(value) > 4096:
            raise BundleError(f"{where}: option {key!r} is a list of {len(value):,} values; refused")
        for v in value:
            _check_value(v, key, where, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _check_key(str(k), v, where)
            _check_value(v, str(k), where, depth + 1)
        return
    raise BundleError(f"{where}: option {key!r} has a value of type {type(value).__name__}; refused")


def _check_key(key: str, value: Any, where: str) -> None:
    if key in _CALLER_ONLY:
        raise BundleError(
            f"{where}: option {key!r} is set by the file; refused: a loaded file cannot choose "
            f"{'devices' if key.startswith('device') else 'remote code' if 'code' in key else 'credentials or locations'}"
            f" (pass {key}= explicitly when you load it)"
        )
    if key in _NARROW_ONLY and value is not None and bool(value) != _NARROW_ONLY[key]:
        raise BundleError(
            f"{where}: option {key}={value!r} would widen what this process allows; refused: a loaded file can "
            f"only narrow permissions (downloads follow the caller: allow_download= at load time, then "
            "MODALITY_HUB_ALLOW_DOWNLOAD, then the default)"
        )


def file_options(options: Mapping[str, Any], where: str, *, allowed: Iterable[str] | None = None,
                 root: Path | None = None) -> dict[str, Any]:
    """Options read from a file, checked so that the file can only narrow what the caller allows.

    Refused (:class:`BundleError`): ``allow_download: true`` / ``local_files_only: false``;
    ``trust_remote_code``, ``device``/``device_map``, credentials and cache locations; a
    path-valued option (``weights``, ``*_dir``, ...) that is not a hub id or that exists as a
    local path; sizes beyond :data:`MAX_SIZE_OPTION`; a set of options that describes a model
    of more than :data:`MAX_PARAMS` parameters.  ``allowed``: the only keys accepted (the
    option model's fields); others are refused.  ``None`` values are dropped.
    ``root``: the directory the file belongs to; a path-valued option naming an existing path inside
    it (checked by :func:`inside`) is resolved to that absolute path instead.
    """
    if not isinstance(options, Mapping):
        raise BundleError(f"{where}: options must be a JSON object; got {type(options).__name__}")
    if len(options) > 256:
        raise BundleError(f"{where}: {len(options)} options; refused (at most 256)")
    allowed = None if allowed is None else frozenset(allowed)
    out: dict[str, Any] = {}
    for key, value in options.items():
        key = str(key)
        _check_key(key, value, where)
        if (root is not None and _is_path_key(key) and isinstance(value, str) and value
                and not PurePosixPath(value).is_absolute() and ".." not in PurePosixPath(value).parts
                and os.path.lexists(Path(root) / value)):
            out[key] = str(inside(Path(root), value, f"{where}: option {key}"))
            continue
        if allowed is not None and key not in allowed:
            raise BundleError(f"{where}: option {key!r} is not one this component takes "
                              f"({', '.join(sorted(allowed)) or 'none'}); refused")
        _check_value(value, key, where)
        if value is not None:
            out[key] = value
    est = estimate_params(out)
    if est > MAX_PARAMS:
        raise BundleError(f"{where}: the options describe a model of about {est:,} parameters (more than "
                          f"{MAX_PARAMS:,}); refused before building anything")
    return out


# -- sizes of models described by configs ---------------------------------------------------------

_WIDTH = ("hidden_size", "d_model", "n_embd", "dim", "embed_dim", "hidden_dim", "width", "hidden_channels",
          "word_embed_proj_dim", "projection_dim", "encoder_embed_dim")
_INTER = ("intermediate_size", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "n_inner", "mlp_dim")
_LAYERS = ("num_hidden_layers", "num_layers", "n_layer", "encoder_layers", "decoder_layers", "depth",
           "num_blocks")
_POS = ("max_position_embeddings", "n_positions", "max_source_positions", "max_target_positions")


def _int(cfg: Mapping[str, Any], keys: Iterable[str]) -> int:
    vals = [v for k in keys if isinstance(v := cfg.get(k), int) and not isinstance(v, bool) and v > 0]
    return max(vals) if vals else 0


def estimate_params(cfg: Mapping[str, Any], depth: int = 0) -> int:
    """A rough upper estimate of the parameters a transformer-like config (or option set) builds.

    width ``w``, layers ``L``, inner width ``i`` (default ``4w``), vocab ``V``, positions ``P``:
    ``L (4w² + 2wi) + V w + P w``, summed over nested sub-configs.  Used to refuse configs that
    would allocate far more than their weights hold, before anything is built."""
    if depth > 8:
        return 0
    w = _int(cfg, _WIDTH)
    total = 0
    if w:
        layers = max(_int(cfg, _LAYERS), 1)
        inner = _int(cfg, _INTER) or 4 * w
        total = layers * (4 * w * w + 2 * w * inner) + (_int(cfg, ("vocab_size",)) + _int(cfg, _POS)) * w
    for v in cfg.values():
        if isinstance(v, Mapping):
            total += estimate_params(v, depth + 1)
    return total


# -- safetensors headers -------------------------------------------------------------------------

_ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
              "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
#: what ``torch.dtype`` names map to in a safetensors header
TORCH_TO_ST = {"torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16",
               "torch.int64": "I64", "torch.int32": "I32", "torch.int16": "I16", "torch.int8": "I8",
               "torch.uint8": "U8", "torch.bool": "BOOL"}


def safetensors_header(path: Path, what: str = "weights") -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]]:
    """``({name: (dtype, shape)}, metadata)`` of a safetensors file, read without loading any tensor.

    Checks: the 8-byte little-endian header length fits the file and a cap; the header is a JSON
    object; every tensor has a known dtype, a shape of non-negative ints, and byte offsets that
    match its shape and lie inside the file, without overlaps.  A pickle renamed ``.safetensors``,
    a truncated file or a header claiming more bytes than the file holds is refused with
    :class:`BundleError` here, before anything is allocated."""
    where = f"{str(path)!r} ({what})"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise BundleError(f"{where} is not a safetensors file: {size} bytes, shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > SAFETENSORS_HEADER_MAX_BYTES or n + 8 > size:
                pickle_hint = " (it starts like a Python pickle: pickles are never loaded)" if head[:1] == b"\x80" else ""
                raise BundleError(
                    f"{where} is not a safetensors file (or is truncated): its header claims {n:,} bytes, the file "
                    f"holds {size:,}{pickle_hint}; refused"
                )
            raw = f.read(n)
    except OSError as exc:
        raise BundleFileMissingError(f"{where} cannot be read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise BundleError(f"{where} is not a safetensors file: its header is not JSON; refused") from None
    if not isinstance(header, dict):
        raise BundleError(f"{where} is not a safetensors file: its header is not a JSON object; refused")
    meta = header.pop("__metadata__", {}) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise BundleError(f"{where}: __metadata__ must map strings to strings; refused")
    if len(header) > SAFETENSORS_MAX_TENSORS:
        raise BundleError(f"{where}: {len(header):,} tensors; refused (at most {SAFETENSORS_MAX_TENSORS:,})")
    data = size - 8 - n
    spans = []
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) - {"dtype", "shape", "data_offsets"}:
            raise BundleError(f"{where}: tensor {name!r} has a malformed header entry; refused")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _ST_DTYPES:
            raise BundleError(f"{where}: tensor {name!r} has dtype {dtype!r}; accepted: {', '.join(_ST_DTYPES)}")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in shape)):
            raise BundleError(f"{where}: tensor {name!r} has shape {shape!r}; refused")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise BundleError(f"{where}: tensor {name!r} has data_offsets {offsets!r}; refused")
        begin, end = offsets
        nbytes = math.prod(shape) * _ST_DTYPES[dtype]
        if not 0 <= begin <= end or end - begin != nbytes:
            raise BundleError(f"{where}: tensor {name!r} of shape {tuple(shape)} ({dtype}) needs {nbytes:,} bytes, "
                              f"its offsets give {end - begin:,}; refused")
        if end > data:
            raise BundleError(f"{where} is truncated: tensor {name!r} ends at byte {end:,} of a data section of "
                              f"{data:,}; refused")
        spans.append((begin, end, name))
        tensors[name] = (dtype, tuple(shape))
    spans.sort()
    for (b0, e0, a), (b1, e1, b) in zip(spans, spans[1:]):
        if b1 < e0 and e1 > b1:
            raise BundleError(f"{where}: tensors {a!r} and {b!r} overlap; refused")
    return tensors, meta


def check_widths(config: Mapping[str, Any], where: str) -> None:
    """Widths, depths, head and query counts of a module config are at most :data:`MAX_WIDTH` (checked before
    building anything: a ``projector.json`` claiming 200,000-wide layers is refused here)."""
    wide = {k: v for k, v in config.items() if isinstance(v, int) and not isinstance(v, bool) and v > MAX_WIDTH
            and k.endswith(("dim", "queries", "depth", "heads", "stride", "size", "layers"))}
    if wide:
        raise BundleError(f"{where} claims {wide}; refused before allocating anything (at most {MAX_WIDTH:,} per "
                          "width, depth or count)")


def check_tensors(path: Path, expected: Mapping[str, tuple[int, ...]], what: str, *,
                  dtypes: Iterable[str] = ("F32", "F16", "BF16", "F64"), error: type[BundleError] = BundleError,
                  hint: str = "") -> None:
    """The header of ``path`` names exactly ``expected`` with those shapes and a float dtype, and ``expected``
    holds at most :data:`MAX_PARAMS` elements (else ``error``, a :class:`BundleError`; ``hint`` is appended)."""
    params = sum(math.prod(s) for s in expected.values())
    if params > MAX_PARAMS:
        raise error(f"{what} would hold {params:,} parameters; refused before allocating anything (at most "
                    f"{MAX_PARAMS:,})")
    try:
        tensors, _ = safetensors_header(path, what)
    except BundleError as exc:
        raise error(f"{exc}" + (f". {hint}" if hint else "")) from None
    dtypes = tuple(dtypes)
    problems = tensor_problems(expected, {k: v[1] for k, v in tensors.items()})
    bad_dtype = [f"{k}: {tensors[k][0]}" for k in sorted(set(expected) & set(tensors)) if tensors[k][0] not in dtypes]
    if bad_dtype:
        problems.append(f"dtypes {', '.join(bad_dtype)} (accepted: {', '.join(dtypes)})")
    if problems:
        raise error(f"{str(path)!r} does not match {what}: " + ", ".join(problems) + (f". {hint}" if hint else ""))


def load_module_state(module: Any, root: Path, relative: str, what: str) -> Path:
    """Copy ``root/relative`` (a safetensors state dict) into ``module`` after the checks: the path stays
    inside ``root`` (:func:`inside`) and its header names exactly the module's tensors and shapes
    (:func:`check_tensors`), so nothing is allocated for a pickle, a truncated file or other shapes.
    Returns the file's path; refusals are :class:`BundleError`."""
    from safetensors.torch import load_model

    if not isinstance(relative, str) or not relative.endswith(".safetensors"):
        raise BundleError(f"{what}: {relative!r} must name a .safetensors file; refused")
    path = inside(root, relative, what)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_tensors(path, expected, what, dtypes=tuple(_ST_DTYPES))
    try:
        load_model(module, str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors / torch errors: the file does not fit
        raise BundleError(f"{what}: {str(path)!r} cannot be loaded ({type(exc).__name__}: {exc})") from None
    return path


def stored_params(directory: Path, files: Iterable[Path], what: str) -> int:
    """Elements stored in the safetensors files among ``files`` (headers only, each checked)."""
    total = 0
    for p in files:
        if p.suffix == ".safetensors":
            tensors, _ = safetensors_header(p, what)
            total += sum(math.prod(shape) for _, shape in tensors.values())
    return total


# -- hashes --------------------------------------------------------------------------------------


def hash_files(root: Path, exclude: Iterable[str] = ()) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every regular file under ``root`` except the top-level names in ``exclude``."""
    exclude = frozenset(exclude)
    out = {}
    for p in check_tree(root, root, str(root)):
        rel = p.relative_to(root).as_posix()
        if rel.split("/", 1)[0] in exclude:
            continue
        out[rel] = file_sha256(p)
    return out


def verify_files(root: Path, hashes: Mapping[str, str], what: str) -> None:
    """Every listed file exists inside ``root`` (:func:`inside`) and has its sha256 (else :class:`BundleError`)."""
    for rel, expected in sorted(hashes.items()):
        path = inside(root, rel, f"{what}: file", must_exist=False)
        if not path.is_file():
            raise BundleFileMissingError(f"{what}: {rel!r} is missing in {str(root)!r}, though its manifest lists "
                                         "it (the directory is torn or incomplete; save it again)")
        actual = file_sha256(path)
        if actual != expected:
            raise BundleError(f"{what}: {rel!r} does not match its manifest (sha256 {actual[:16]}… != "
                              f"{str(expected)[:16]}…): the file was modified, truncated or belongs to another save; "
                              "refusing to load it")


# -- save_pretrained directories ------------------------------------------------------------------

_PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"})
_TOKENIZER_HINTS = ("tokenizer", "vocab", "merges", "spiece", "sentencepiece", ".model")


def check_pretrained_dir(directory: Path, root: Path, what: str, hashes: Mapping[str, str] | None = None) -> None:
    """Check a ``save_pretrained`` directory inside a saved bundle before transformers (or a plugin) loads it.

    * no symlink leads out of ``root``; with ``hashes`` (format 2) every file must be listed;
    * no pickle-format file (``.bin``, ``.pt``, ...): weights are safetensors only;
    * size caps: ``config.json`` and other JSON, tokenizer files (tens of MB are normal);
    * every safetensors header parses and fits its file;
    * ``config.json`` describes a model no larger than its safetensors hold (with slack), so a
      config claiming 200,000-wide layers is refused before transformers allocates it."""
    if not directory.is_dir():
        raise BundleFileMissingError(f"{what}: {str(directory)!r} is missing")
    files = check_tree(directory, root, what)
    for p in files:
        rel = p.relative_to(root).as_posix()
        if hashes is not None and rel not in hashes:
            raise BundleError(f"{what}: {rel!r} is not listed in the manifest's hashes; refused (a save_pretrained "
                              "directory inside a bundle may hold only the files its manifest lists)")
        if p.suffix.lower() in _PICKLE_SUFFIXES:
            raise BundleError(f"{what}: {rel!r} is a pickle-format file; refused (weights are loaded from "
                              "safetensors only and nothing in a bundle is executed)")
        size = p.stat().st_size
        if p.suffix != ".safetensors":
            cap = (TOKENIZER_MAX_BYTES if any(h in p.name.lower() for h in _TOKENIZER_HINTS)
                   else CONFIG_MAX_BYTES if p.suffix == ".json" else OTHER_MAX_BYTES)
            if size > cap:
                raise BundleError(f"{what}: {rel!r} is {size:,} bytes; refused (the cap for this kind of file is "
                                  f"{cap:,})")
    stored = stored_params(directory, files, what)
    config = directory / "config.json"
    if config.is_file():
        cfg = read_json(config, f"{what}: config.json", CONFIG_MAX_BYTES)
        if not isinstance(cfg, dict):
            raise BundleError(f"{what}: {str(config)!r} must hold a JSON object")
        est = estimate_params(cfg)
        if est > MAX_PARAMS or est > 16 * stored + (1 << 26):
            raise BundleError(
                f"{what}: {str(config)!r} describes a model of about {est:,} parameters, but its safetensors hold "
                f"{stored:,}; refused before building it (the config does not belong to these weights)"
            )
