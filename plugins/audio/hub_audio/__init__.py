"""Audio modality for modality-hub: Whisper, wav2vec2, HuBERT and CLAP encoders through transformers.

Items: paths and bytes of wav / flac / ogg / mp3 (decoded by soundfile),
``{"array", "sampling_rate"}`` dicts as Hugging Face datasets give them, and
``(waveform, sample_rate)`` tuples of numpy arrays or torch tensors.  Stereo and
multichannel audio is mixed down (the smaller axis of a 2-D array is the
channel axis); any sample rate is resampled with
``torchaudio.functional.resample`` to the encoder's rate.

Encoders: ``whisper-base`` (default, 50 tokens/s; ``pool_stride=2`` → 25/s),
``wav2vec2-base`` and ``hubert-base`` (49 tokens/s), ``clap-htsat`` (64 tokens per
10 s window), and the untrained offline presets ``tiny-whisper``,
``tiny-wav2vec2``, ``tiny-hubert`` and ``tiny-clap``.  Audio longer than an
encoder's window is encoded window by window and the tokens concatenated.

Each encoder has a weights-free processor (``WhisperAudioProcessor``,
``SSLAudioProcessor``, ``ClapAudioProcessor``: the feature extractor and the model
config), registered beside it, so a served ONNX export never builds the torch model;
``save_pretrained(dir)`` writes safetensors + configs that the full-size preset of the
family reloads with ``weights=dir`` (``Encoder.reload_as``).
"""

from __future__ import annotations

import numpy as np

from hub import EncoderSpec, Modality, hookimpl

from ._encoders import (
    ACCEPTS,
    AudioEncoder,
    AudioProcessor,
    ClapAudioEncoder,
    ClapAudioProcessor,
    PreparedAudio,
    SSLAudioEncoder,
    SSLAudioProcessor,
    WhisperAudioEncoder,
    WhisperAudioProcessor,
)
from ._io import AUDIO_EXTENSIONS, audio_format, is_audio, load_waveform
from ._presets import PRESETS, tiny_clap, tiny_hubert, tiny_wav2vec2, tiny_whisper

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioEncoder",
    "AudioProcessor",
    "ClapAudioEncoder",
    "ClapAudioProcessor",
    "SSLAudioProcessor",
    "WhisperAudioProcessor",
    "PRESETS",
    "PreparedAudio",
    "SSLAudioEncoder",
    "WhisperAudioEncoder",
    "audio_format",
    "examples",
    "is_audio",
    "load_waveform",
    "sample",
    "tiny_clap",
    "tiny_hubert",
    "tiny_wav2vec2",
    "tiny_whisper",
]


def sample() -> dict:
    """One second of a 440 Hz sine at 16 kHz, as Hugging Face datasets give audio."""
    t = np.arange(16000, dtype=np.float32) / 16000
    return {"array": (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), "sampling_rate": 16000}


#: sample rates ``examples`` cycles through (resampled by ``prepare`` to each encoder's rate)
EXAMPLE_RATES = (16000, 22050, 8000, 44100)


def examples(n: int, seed: int = 0) -> list[dict]:
    """``n`` clips of varied durations (0.2-1.6 s; every third 2.2-3.4 s, longer than the tiny
    presets' 2 s window) and sample rates (:data:`EXAMPLE_RATES`): tones plus noise, seeded."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        seconds = rng.uniform(2.2, 3.4) if i % 3 == 0 else rng.uniform(0.2, 1.6)
        rate = EXAMPLE_RATES[i % len(EXAMPLE_RATES)]
        t = np.arange(int(seconds * rate)) / rate
        freqs = rng.uniform(110.0, 0.4 * min(rate, 16000), size=3)
        wave = sum(rng.uniform(0.1, 0.4) * np.sin(2 * np.pi * f * t + rng.uniform(0, np.pi)) for f in freqs)
        wave = wave + 0.02 * rng.standard_normal(len(t))
        items.append({"array": wave.astype(np.float32), "sampling_rate": rate})
    return items


@hookimpl
def register_modalities(register):
    register(
        Modality(
            name="audio",
            accepts=ACCEPTS,
            detect=is_audio,
            extensions=AUDIO_EXTENSIONS,
            default_encoder="whisper-base",
            demo_encoder="tiny-whisper",
            sample=sample,
            examples=examples,
            description="Sound: speech, music, environmental audio",
        )
    )


@hookimpl
def register_encoders(register):
    for name, p in PRESETS.items():
        register(
            EncoderSpec(
                name=name, modality="audio", factory=p.factory, options=p.options, weights=p.weights, processor=p.processor,
                license=p.license, pretrained=p.pretrained, description=p.description,
            )
        )
from ._augment import register_augmentations  # noqa: E402,F401  (pluggy finds the hook on this module)
