"""Audio augmentations: modality-preserving transforms for self-supervised learning.

Every augmentation is ``fn(item, rng, **params) -> dict``: it reads any accepted
audio item with the plugin's own decoder (:mod:`hub_audio._io`: soundfile,
mix-down to mono, validation) and returns a **new** item in the canonical
in-memory form ``{"array": float32 mono np.ndarray (samples,), "sampling_rate":
int}`` at the item's own sample rate, never modifying the input.  Randomness
comes only from ``rng`` (a ``numpy.random.Generator``; an int seed or ``None``
also works).  Every augmentation keeps the number of samples except ``speed``.

==========  ============================================================================
name        what it does (params)
==========  ============================================================================
gain        multiply by a gain drawn from ``db`` (``torchaudio.functional.gain``), then
            clip to [-1, 1]
noise       add white Gaussian noise at an SNR drawn from ``snr_db``
            (``torchaudio.functional.add_noise``); silence stays silent
time_shift  shift by up to ``max_fraction`` of the length, either way; ``circular``
            wraps around (``np.roll``), ``pad`` fills with zeros
speed       play faster or slower by a factor drawn from ``factor`` (rounded to a
            fraction with denominator <= 100) by resampling, as
            ``torchaudio.functional.speed`` does; duration becomes ``duration /
            factor`` and the pitch moves with it (Kaldi-style speed perturbation)
time_mask   zero ``num_masks`` spans, each of 1 to ``max_fraction`` of the samples
            (SpecAugment's time mask on the waveform)
freq_mask   zero ``num_masks`` frequency bands, each of up to ``max_fraction`` of the
            band [0, Nyquist]: ``rfft``, zero the bins, ``irfft`` (a waveform-level
            version of SpecAugment's frequency mask; torchaudio's
            ``FrequencyMasking`` works on spectrograms only)
==========  ============================================================================
"""

from __future__ import annotations

import functools
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import torchaudio
from pydantic import Field

from hub import AugmentationSpec, InvalidInputError, hookimpl
from hub.augment import AugmentParams as _Params
from hub.augment import parse_params
from hub.augment import value_range as _range

from ._io import BadAudio, _raw, load_waveform

__all__ = ["AUGMENTATIONS", "read_audio", "register_augmentations"]

Audio = dict  # {"array": float32 (samples,), "sampling_rate": int}


# -- params ------------------------------------------------------------------------------------------
class GainParams(_Params):
    db: _range(ge=-60.0, le=60.0) = Field((-6.0, 6.0), description="gain in dB, drawn uniformly")


class NoiseParams(_Params):
    snr_db: _range(ge=-20.0, le=100.0) = Field((10.0, 30.0), description="signal-to-noise ratio in dB, drawn uniformly")


class TimeShiftParams(_Params):
    max_fraction: float = Field(0.2, gt=0.0, le=1.0, description="largest shift, as a share of the length")
    mode: Literal["circular", "pad"] = Field("circular", description="wrap around, or fill with zeros")


class SpeedParams(_Params):
    factor: _range(ge=0.25, le=4.0) = Field((0.9, 1.1), description="speed factor (> 1: faster and shorter)")


class TimeMaskParams(_Params):
    max_fraction: float = Field(0.1, gt=0.0, le=1.0, description="longest span, as a share of the samples")
    num_masks: int = Field(1, ge=1, le=16)


class FreqMaskParams(_Params):
    max_fraction: float = Field(0.15, gt=0.0, le=1.0, description="widest band, as a share of [0, Nyquist]")
    num_masks: int = Field(1, ge=1, le=16)


# -- machinery ---------------------------------------------------------------------------------------
def read_audio(item: Any) -> Audio:
    """Any accepted audio item → ``{"array": float32 mono (samples,), "sampling_rate": int}`` (a new array)."""
    if isinstance(item, str) and os.path.isfile(item):  # the hub hands paths on as given
        item = Path(item)
    try:
        array, rate = _raw(item)
    except BadAudio as exc:
        raise InvalidInputError(f"cannot augment this audio item: {exc}") from None
    wave = load_waveform({"array": array, "sampling_rate": rate}, rate,
                         lambda problem: InvalidInputError(f"cannot augment this audio item: {problem}"))
    return {"array": np.array(wave.samples, dtype=np.float32), "sampling_rate": wave.sampling_rate}


def _augmentation(params: type[_Params]) -> Callable[[Callable[..., np.ndarray]], Callable[..., Audio]]:
    """Wrap ``impl(array, rate, rng, p) -> array`` as ``fn(item, rng, **params) -> item``."""

    def wrap(impl: Callable[..., np.ndarray]) -> Callable[..., Audio]:
        @functools.wraps(impl)
        def fn(item: Any, rng: np.random.Generator | int | None = None, **kwargs: Any) -> Audio:
            p = parse_params(params, kwargs, f"audio augmentation {impl.__name__!r}")
            audio = read_audio(item)
            out = impl(audio["array"], audio["sampling_rate"], np.random.default_rng(rng), p)
            return {"array": np.ascontiguousarray(out, dtype=np.float32), "sampling_rate": audio["sampling_rate"]}

        return fn

    return wrap


# -- augmentations -----------------------------------------------------------------------------------
@_augmentation(GainParams)
def gain(array: np.ndarray, rate: int, rng: np.random.Generator, p: GainParams) -> np.ndarray:
    db = float(rng.uniform(*p.db))
    return torchaudio.functional.gain(torch.from_numpy(array), db).clamp_(-1.0, 1.0).numpy()


@_augmentation(NoiseParams)
def noise(array: np.ndarray, rate: int, rng: np.random.Generator, p: NoiseParams) -> np.ndarray:
    snr = torch.tensor([float(rng.uniform(*p.snr_db))])
    white = torch.from_numpy(rng.standard_normal(array.shape[0]).astype(np.float32))
    wave = torch.from_numpy(array)
    return torchaudio.functional.add_noise(wave[None], white[None], snr)[0].numpy()  # (samples,)


@_augmentation(TimeShiftParams)
def time_shift(array: np.ndarray, rate: int, rng: np.random.Generator, p: TimeShiftParams) -> np.ndarray:
    n = array.shape[0]
    most = int(p.max_fraction * n)
    shift = int(rng.integers(-most, most + 1))
    if p.mode == "circular":
        return np.roll(array, shift)
    out = np.zeros_like(array)
    if shift >= 0:
        out[shift:] = array[: n - shift]
    else:
        out[:shift] = array[-shift:]
    return out


@_augmentation(SpeedParams)
def speed(array: np.ndarray, rate: int, rng: np.random.Generator, p: SpeedParams) -> np.ndarray:
    factor = Fraction(float(rng.uniform(*p.factor))).limit_denominator(100)
    # what torchaudio.functional.speed does, with the factor kept as an exact small fraction
    # (speed() truncates factor * rate to an int, which can leave a huge resampling kernel)
    out = torchaudio.functional.resample(torch.from_numpy(array), factor.numerator, factor.denominator)
    return out.numpy() if out.numel() else array[:1].copy()


@_augmentation(TimeMaskParams)
def time_mask(array: np.ndarray, rate: int, rng: np.random.Generator, p: TimeMaskParams) -> np.ndarray:
    n = array.shape[0]
    out = array.copy()
    longest = max(1, int(p.max_fraction * n))
    for _ in range(p.num_masks):
        width = int(rng.integers(1, longest + 1))
        start = int(rng.integers(0, n - width + 1))
        out[start:start + width] = 0.0
    return out


@_augmentation(FreqMaskParams)
def freq_mask(array: np.ndarray, rate: int, rng: np.random.Generator, p: FreqMaskParams) -> np.ndarray:
    n = array.shape[0]
    spectrum = np.fft.rfft(array.astype(np.float64))  # (n // 2 + 1,) bins from 0 Hz to Nyquist
    bins = spectrum.shape[0]
    widest = max(1, int(p.max_fraction * bins))
    for _ in range(p.num_masks):
        width = int(rng.integers(1, widest + 1))
        start = int(rng.integers(0, bins - width + 1))
        spectrum[start:start + width] = 0.0
    return np.fft.irfft(spectrum, n=n)


#: name -> (fn, params model, description)
AUGMENTATIONS: dict[str, tuple[Callable[..., Audio], type[_Params], str]] = {
    "gain": (gain, GainParams, "random gain in dB, clipped to [-1, 1]"),
    "noise": (noise, NoiseParams, "white Gaussian noise at a random SNR"),
    "time_shift": (time_shift, TimeShiftParams, "circular or zero-padded shift by up to a share of the length"),
    "speed": (speed, SpeedParams, "faster or slower by resampling; duration / factor, pitch moves too"),
    "time_mask": (time_mask, TimeMaskParams, "zero random spans of samples"),
    "freq_mask": (freq_mask, FreqMaskParams, "zero random frequency bands (rfft / irfft)"),
}


@hookimpl
def register_augmentations(register):
    for name, (fn, params, description) in AUGMENTATIONS.items():
        register(AugmentationSpec(
            name=name, modality="audio", fn=fn, params=params,
            description=f"{description} (returns {{'array': float32 mono, 'sampling_rate': int}})",
        ))
