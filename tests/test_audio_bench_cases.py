"""The real-size audio bench cases stay whisper-base-sized / HTSAT-sized, and each timed pass spans
several batches (a one-batch pass is one ~2.5 s sample of a shared machine's load: the noise band
of ``benchmarks/encoders.py`` then measured the neighbours, not the runtimes)."""

from __future__ import annotations

from pathlib import Path

from hub.onnx.bench import load_cases

ROOT = Path(__file__).resolve().parents[1]


def _real_audio() -> dict[str, object]:
    cases = load_cases(ROOT / "benchmarks" / "bench_cases.json")
    return {c.encoder: c for c in cases if c.modality == "audio" and c.size == "real"}


def test_real_size_audio_cases_keep_their_sizes():
    real = _real_audio()
    whisper, clap = real["tiny-whisper"], real["tiny-clap"]
    assert whisper.options == {"num_mel_bins": 80, "hidden_size": 512, "num_layers": 6, "num_heads": 8,
                               "chunk_length": 30}
    assert whisper.batch_size == 4 and clap.options == {"htsat": True} and clap.batch_size == 4


def test_real_size_audio_passes_span_several_batches():
    for case in _real_audio().values():
        assert case.items >= 3 * case.batch_size, case.label
