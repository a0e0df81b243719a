"""Audio items → mono float32 waveforms at the encoder's sample rate.

Decoding goes through ``soundfile`` (libsndfile >= 1.1 reads wav, flac, ogg
vorbis/opus and mp3 from the wheel; no FFmpeg); resampling through
``torchaudio.functional.resample``.  ``torchaudio.load`` is not used: it needs
TorchCodec and FFmpeg.

Channel rule for 2-D arrays: the *smaller* axis is the channel axis
(``(channels, samples)`` and ``(samples, channels)`` both work); a square array
is read channels-first.  Channels are mixed down by their mean.  Integer PCM
arrays are scaled to [-1, 1] by their dtype's range.
"""

from __future__ import annotations

import functools
import io
import math
import os
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any, Callable

import numpy as np
import soundfile as sf
import torch
import torchaudio

__all__ = [
    "AUDIO_EXTENSIONS",
    "BadAudio",
    "Waveform",
    "audio_format",
    "is_audio",
    "load_waveform",
]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


class BadAudio(Exception):
    """Internal: what is wrong with an item (the encoder turns it into InvalidInputError)."""


@dataclass(frozen=True)
class Waveform:
    """A validated mono waveform: ``samples`` (n,) float32 at ``sampling_rate`` Hz."""

    samples: np.ndarray
    sampling_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sampling_rate


# -- detection ---------------------------------------------------------------------
def audio_format(head: bytes) -> str | None:
    """The container named by the magic number at the start of ``head`` (or ``None``).

    wav: ``RIFF....WAVE``; flac: ``fLaC``; ogg: ``OggS``; mp3: an ``ID3`` tag or an
    MPEG audio frame sync (11 set bits, then a valid version and layer).
    """
    head = bytes(head[:12])
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        version, layer = (head[1] >> 3) & 0x3, (head[1] >> 1) & 0x3
        if version != 0b01 and layer != 0b00:  # 01 = reserved version; layer 00 = ADTS AAC, not mp3
            return "mp3"
    return None


def _is_number(x: Any) -> bool:
    return isinstance(x, (Real, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _is_array(x: Any) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor))


def is_audio(item: Any) -> bool:
    """Cheap claim for modality detection: never decodes, never raises.

    Claims bytes with an audio magic number, ``{"array", "sampling_rate"}`` dicts
    (Hugging Face datasets' decoded ``Audio``), ``{"bytes"}`` / ``{"path"}`` dicts
    (``Audio(decode=False)``) and ``(waveform, sample_rate)`` tuples.  A bare
    array has no sample rate and is not claimed.
    """
    try:
        if isinstance(item, (bytes, bytearray, memoryview)):
            return audio_format(bytes(item[:12])) is not None
        if isinstance(item, dict):
            if "array" in item and "sampling_rate" in item:
                return True
            if isinstance(item.get("bytes"), (bytes, bytearray)):
                return audio_format(bytes(item["bytes"][:12])) is not None
            path = item.get("path")
            return isinstance(path, (str, os.PathLike)) and Path(path).suffix.lower() in AUDIO_EXTENSIONS
        if isinstance(item, tuple) and len(item) == 2:
            return _is_array(item[0]) and _is_number(item[1])
    except Exception:  # noqa: BLE001 - a detector that cannot tell does not claim
        return False
    return False


# -- decoding ----------------------------------------------------------------------
def _decode(source: Any, what: str) -> tuple[np.ndarray, int]:
    """``soundfile.read`` → ``(frames, channels)`` float32 and the rate."""
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError) as exc:
        reason = getattr(exc, "error_string", None) or str(exc)
        raise BadAudio(f"cannot decode {what} (corrupt or unsupported): {reason}") from None
    return data, int(rate)


def _read_path(path: Path) -> tuple[np.ndarray, int]:
    suffix = path.suffix.lower()
    if suffix not in AUDIO_EXTENSIONS:
        raise BadAudio(f"unsupported audio file type {suffix or '(no extension)'}")
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError as exc:
        raise BadAudio(f"cannot read the file: {exc}") from None
    if not head:
        raise BadAudio("the file is empty (zero-length audio)")
    return _decode(str(path), f"{suffix} file")


def _read_bytes(data: bytes) -> tuple[np.ndarray, int]:
    if not data:
        raise BadAudio("empty bytes (zero-length audio)")
    fmt = audio_format(data[:12])
    if fmt is None:
        raise BadAudio("bytes are not wav, flac, ogg or mp3 (no known magic number)")
    return _decode(io.BytesIO(data), f"{fmt} bytes")


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x)
    if isinstance(x, (list, tuple)):
        try:
            return np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError):
            raise BadAudio("the waveform list is not a list of numbers") from None
    raise BadAudio(f"the waveform must be a numpy array or torch tensor, got {type(x).__name__}")


def _to_float(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind == "f":
        return arr.astype(np.float32, copy=False)
    if arr.dtype.kind in "iu":
        info = np.iinfo(arr.dtype)
        if arr.dtype.kind == "u":  # unsigned PCM is offset by half its range
            mid = (int(info.max) + 1) / 2
            return ((arr.astype(np.float64) - mid) / mid).astype(np.float32)
        return (arr.astype(np.float64) / (int(info.max) + 1)).astype(np.float32)
    raise BadAudio(f"waveform dtype {arr.dtype} is not a real number type (use float or integer PCM)")


def _mono(arr: np.ndarray) -> np.ndarray:
    """1-D, or 2-D with the smaller axis as channels (mixed down by the mean)."""
    if arr.ndim == 1:
        return arr
    if arr.ndim == 2:
        axis = 0 if arr.shape[0] <= arr.shape[1] else 1
        return arr.mean(axis=axis, dtype=np.float32) if arr.size else arr.reshape(-1)
    raise BadAudio(
        f"waveform has {arr.ndim} dims (shape {tuple(arr.shape)}); expected (samples,) or "
        "(channels, samples) / (samples, channels)"
    )


def _rate(value: Any) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not _is_number(value) or not math.isfinite(float(value)):
        raise BadAudio(f"sample rate must be a positive number, got {value!r}")
    if float(value) <= 0:
        raise BadAudio(f"sample rate must be > 0, got {value!r}")
    if float(value) != int(value):
        raise BadAudio(f"sample rate must be a whole number of Hz, got {value!r}")
    return int(value)


def _raw(item: Any) -> tuple[np.ndarray, int]:
    """Any accepted item → (array, rate), not yet validated."""
    if isinstance(item, os.PathLike):
        return _read_path(Path(item))
    if isinstance(item, (bytes, bytearray, memoryview)):
        return _read_bytes(bytes(item))
    if isinstance(item, dict):
        if "array" in item and "sampling_rate" in item:
            return _as_numpy(item["array"]), _rate(item["sampling_rate"])
        if item.get("bytes") is not None:
            return _read_bytes(bytes(item["bytes"]))
        if item.get("path") is not None:
            path = Path(item["path"])
            if not path.is_file():
                raise BadAudio(f"dict path {str(path)!r}: no such file")
            return _read_path(path)
        raise BadAudio("a dict needs 'array' and 'sampling_rate' (or 'bytes' / 'path')")
    if isinstance(item, tuple):
        if len(item) != 2:
            raise BadAudio(f"a tuple must be (waveform, sample_rate), got {len(item)} elements")
        return _as_numpy(item[0]), _rate(item[1])
    if _is_array(item):
        raise BadAudio(
            "a bare array has no sample rate; pass {'array': x, 'sampling_rate': sr} or (x, sr)"
        )
    raise BadAudio(f"cannot read {type(item).__name__} as audio")


@functools.lru_cache(maxsize=32)
def _resampler(rate: int, target_rate: int) -> torchaudio.transforms.Resample:
    """``torchaudio.transforms.Resample`` per rate pair: the sinc kernel is built once (a third of a short
    clip's preprocessing when rebuilt per call), and the output equals ``torchaudio.functional.resample``."""
    return torchaudio.transforms.Resample(rate, target_rate, dtype=torch.float32)


def load_waveform(item: Any, target_rate: int, fail: Callable[[str], Exception]) -> Waveform:
    """Decode, validate, mix down and resample one item; ``fail(problem)`` builds the error."""
    try:
        arr, rate = _raw(item)
        mono = _mono(_to_float(np.asarray(arr)))
        if mono.size == 0:
            raise BadAudio("zero-length audio (no samples)")
        if not np.isfinite(mono).all():
            bad = int((~np.isfinite(mono)).sum())
            raise BadAudio(f"{bad} of {mono.size} samples are NaN or inf")
    except BadAudio as exc:
        raise fail(str(exc)) from None
    wave = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))
    if rate != target_rate:
        wave = _resampler(rate, target_rate)(wave)
        if wave.numel() == 0:
            raise fail(f"zero-length audio after resampling {mono.size} samples from {rate} Hz to {target_rate} Hz")
    return Waveform(wave.numpy(), target_rate)
