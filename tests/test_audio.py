"""The audio plugin: item types, decoding, resampling, windows, token counts, bad inputs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from hub import Hub
from hub.errors import InvalidInputError, UnknownModalityError, WeightsNotFoundError
from hub.testing import EncoderConformance

hub_audio = pytest.importorskip("hub_audio")
from hub_audio import audio_format, is_audio, load_waveform, sample  # noqa: E402

TINY = ["tiny-whisper", "tiny-wav2vec2", "tiny-hubert", "tiny-clap"]
SR = 16000


def sine(seconds: float, rate: int = SR, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * rate)), dtype=np.float64) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    if channels > 1:
        x = np.stack([x * (c + 1) / channels for c in range(channels)])  # (channels, samples)
    return x.astype(np.float32)


def encode_bytes(x: np.ndarray, fmt: str, subtype: str, rate: int = SR) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


FORMATS = {  # suffix -> (soundfile format, subtype)
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}


@pytest.fixture(scope="module")
def hub() -> Hub:
    return Hub()


@pytest.fixture(scope="module")
def whisper(hub):
    return hub.encoder("tiny-whisper")


# -- conformance --------------------------------------------------------------------------
class TestAudioConformance(EncoderConformance):
    @pytest.fixture(params=TINY, scope="class")
    @classmethod
    def encoder(cls, request):
        return Hub().encoder(request.param)

    @pytest.fixture
    def items(self):
        stereo = torch.from_numpy(sine(0.5, 8000, channels=2))  # (2, 4000) at 8 kHz
        return [sample(), (stereo, 8000), (sine(3.0, freq=220.0), SR)]  # 1 s, 0.5 s, 3 s (2 windows)

    @pytest.fixture
    def bad_items(self):
        return [(np.full(SR, np.nan, np.float32), SR), (np.zeros(0, np.float32), SR), b"RIFF\x00\x00\x00\x00WAVEjunk"]


# -- item types ------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", list(FORMATS))
def test_files_and_bytes_of_each_format(hub, whisper, tmp_path, suffix):
    fmt, subtype = FORMATS[suffix]
    data = encode_bytes(sine(1.0), fmt, subtype)
    path = tmp_path / f"clip{suffix}"
    path.write_bytes(data)
    decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
    expected = -(-(-(-len(decoded) // 160)) // 2)  # ceil(ceil(n / 160) / 2) Whisper tokens
    assert audio_format(data) == suffix[1:]
    assert hub.detect(path) == hub.detect(str(path)) == hub.detect(data) == "audio"
    by_path = hub.embed(str(path), encoder="tiny-whisper")  # a str naming a file is that file
    by_bytes = hub.embed(data, encoder="tiny-whisper")
    by_array = hub.embed({"array": decoded, "sampling_rate": rate, "path": str(path)}, encoder="tiny-whisper")
    assert by_path.lengths.tolist() == [expected] == [whisper.count_tokens(path)]
    assert torch.allclose(by_path.tokens, by_bytes.tokens) and torch.allclose(by_path.tokens, by_array.tokens, atol=1e-5)
    # Hugging Face datasets Audio(decode=False) dicts
    assert torch.allclose(hub.embed({"bytes": data, "path": None}, encoder="tiny-whisper").tokens, by_bytes.tokens)
    assert torch.allclose(hub.embed({"path": str(path)}, encoder="tiny-whisper").tokens, by_bytes.tokens)


def test_wav_file_decodes_to_the_same_samples(tmp_path):
    x = sine(0.25, 22050)
    path = tmp_path / "float.wav"
    sf.write(path, x, 22050, subtype="FLOAT")
    wave = load_waveform(path, 22050, AssertionError)
    assert wave.sampling_rate == 22050 and np.array_equal(wave.samples, x)


def test_tuple_dict_numpy_torch_give_the_same_tokens(hub):
    x = sine(1.0)
    ref = hub.embed((x, SR), encoder="tiny-whisper").tokens
    exact = [(torch.from_numpy(x), SR), {"array": torch.from_numpy(x), "sampling_rate": SR},
             (x.astype(np.float64), np.int64(SR)), {"array": x.tolist(), "sampling_rate": float(SR), "path": None}]
    for item in exact + [((x * 32767).astype(np.int16), SR), sample()]:
        assert hub.detect(item) == "audio"
        atol = 1e-5 if any(item is e for e in exact) else 1e-2  # int16 PCM is quantised
        assert torch.allclose(hub.embed(item, encoder="tiny-whisper").tokens, ref, atol=atol)


def test_stereo_is_mixed_down_either_layout():
    stereo = sine(0.5, channels=2)  # (2, samples)
    mono = stereo.mean(0)
    first = load_waveform((stereo, SR), SR, AssertionError).samples
    last = load_waveform((torch.from_numpy(stereo.T.copy()), SR), SR, AssertionError).samples
    six = load_waveform((np.tile(mono[:, None], (1, 6)), SR), SR, AssertionError).samples  # (samples, 6 channels)
    assert first.shape == last.shape == mono.shape
    assert np.allclose(first, mono) and np.allclose(last, mono) and np.allclose(six, mono, atol=1e-6)


def test_stereo_file(hub, tmp_path):
    stereo = sine(1.0, channels=2)
    path = tmp_path / "stereo.flac"
    sf.write(path, stereo.T, SR, subtype="PCM_24")
    wave = load_waveform(path, SR, AssertionError).samples
    assert np.allclose(wave, stereo.mean(0), atol=1e-5)
    assert hub.embed(path, encoder="tiny-whisper").lengths.tolist() == [50]


# -- resampling -------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_resampling_matches_torchaudio(hub, whisper, rate):
    x = sine(1.0, rate)
    wave = load_waveform((x, rate), SR, AssertionError)
    direct = torchaudio.functional.resample(torch.from_numpy(x), rate, SR).numpy()
    assert wave.sampling_rate == SR and np.array_equal(wave.samples, direct)
    assert len(wave.samples) == SR
    te = hub.embed((x, rate), encoder="tiny-whisper")
    assert te.lengths.tolist() == [50] == [whisper.count_tokens((x, rate))]
    assert torch.allclose(te.tokens, hub.embed((direct, SR), encoder="tiny-whisper").tokens, atol=1e-6)
    # a resampled 440 Hz tone keeps its pitch
    spectrum = np.abs(np.fft.rfft(wave.samples))
    assert abs(int(spectrum.argmax()) - 440) <= 1


def test_clap_real_rate_resamples_to_48k(hub):
    enc = Hub().encoder("tiny-clap")
    assert enc.sampling_rate == SR  # the tiny preset runs at 16 kHz; the real CLAP window is 48 kHz
    assert hub.embed((sine(1.0, 48000), 48000), encoder="tiny-clap").lengths.tolist() == [64]


# -- windows and token counts -----------------------------------------------------------------
def test_one_second_gives_one_second_of_tokens_not_a_window():
    from transformers import WhisperFeatureExtractor

    enc = hub_audio.tiny_whisper(chunk_length=30)  # Whisper's real 30 s window: 1500 positions
    x = sine(1.0)
    te = enc.encode([(x, SR)])
    assert te.tokens.shape[1] == 50 and te.lengths.tolist() == [50]
    # reference: the transformers encoder on the 30 s padded window; keep its first 50 frames
    feats = WhisperFeatureExtractor(feature_size=16, chunk_length=30)(x, sampling_rate=SR, return_tensors="pt")
    with torch.no_grad():
        full = enc.encoder(feats.input_features).last_hidden_state  # (1, 1500, dim)
    assert full.shape[1] == 1500
    assert torch.allclose(te[0], full[0, :50], atol=1e-5)


@pytest.mark.parametrize("seconds,expected", [(0.01, 1), (0.015, 1), (0.021, 2), (0.5, 25), (2.0, 100), (2.01, 101)])
def test_whisper_token_counts(whisper, seconds, expected):
    x = np.random.default_rng(0).standard_normal(int(round(seconds * SR))).astype(np.float32) * 0.1
    assert whisper.count_tokens((x, SR)) == expected
    assert whisper.encode([(x, SR)]).lengths.tolist() == [expected]


@pytest.mark.parametrize(
    "name,per_window",
    [("tiny-whisper", [100, 100, 50]), ("tiny-wav2vec2", [99, 99, 49]), ("tiny-hubert", [99, 99, 49]), ("tiny-clap", [64, 64, 64])],
)
def test_long_audio_is_split_into_windows(hub, name, per_window):
    enc = hub.encoder(name)
    x = np.random.default_rng(1).standard_normal(5 * SR).astype(np.float32) * 0.1  # 5 s; tiny windows are 2 s
    te = hub.embed([(x, SR), (x[: SR // 2], SR)], encoder=name)
    assert te.lengths.tolist()[0] == sum(per_window) == enc.count_tokens((x, SR))
    assert te.lengths.tolist()[1] == enc.count_tokens((x[: SR // 2], SR))
    # the windows' tokens are concatenated in time order: each window alone gives the same tokens
    alone = hub.embed([(x[i * 2 * SR : (i + 1) * 2 * SR], SR) for i in range(3)], encoder=name)
    assert alone.lengths.tolist() == per_window
    assert torch.allclose(te[0], torch.cat(list(alone)), atol=1e-4)


def test_ssl_short_tail_joins_the_previous_window(hub):
    enc = hub.encoder("tiny-wav2vec2")
    x = sine(2.0 + 100 / SR)  # one 2 s window + 100 samples (< 400, the conv receptive field)
    n = int(enc.model._get_feat_extract_output_lengths(torch.tensor(len(x))))
    assert enc.count_tokens((x, SR)) == n == enc.encode([(x, SR)]).lengths.item()


def test_pool_stride_two_averages_real_frames():
    plain, pooled = hub_audio.tiny_whisper(), hub_audio.tiny_whisper(pool_stride=2)
    cases = [(1.0, 50), (0.99, 50), (0.97, 49)]
    items = [(sine(seconds), SR) for seconds, _ in cases]
    a, b = plain.encode(items), pooled.encode(items)
    for i, (_, frames) in enumerate(cases):
        assert a.lengths[i] == frames and b.lengths[i] == -(-frames // 2)
        pairs = [a[i][j : j + 2].mean(0) for j in range(0, frames, 2)]  # an odd last frame stands alone
        assert torch.allclose(b[i], torch.stack(pairs), atol=1e-5)
    assert pooled.count_tokens(sample()) == 25


def test_wav2vec2_matches_transformers_and_masks_groupnorm_padding(hub):
    from transformers import Wav2Vec2FeatureExtractor

    enc = hub.encoder("tiny-wav2vec2")
    short, long = sine(0.5), sine(1.5, freq=300.0)
    values = Wav2Vec2FeatureExtractor(do_normalize=True)(short, sampling_rate=SR, return_tensors="pt").input_values
    with torch.no_grad():
        ref = enc.model(values).last_hidden_state[0]  # unpadded, plain transformers
    batch = enc.encode([(short, SR), (long, SR)])
    assert torch.allclose(batch[0], ref, atol=1e-4)
    # without the masked GroupNorm, zero padding would change the short item's tokens
    tensors = enc.collate([enc.prepare((short, SR)), enc.prepare((long, SR))])
    with torch.no_grad():
        plain = enc.model(tensors["input_values"], attention_mask=tensors["attention_mask"]).last_hidden_state
    assert not torch.allclose(plain[0, : ref.shape[0]], ref, atol=1e-3)


# -- detection ---------------------------------------------------------------------------------
def test_detect_routes_audio_items(hub, tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, sine(0.1), SR)
    for item in [path, str(path), path.read_bytes(), sample(), (sine(0.1), SR), (torch.zeros(2, 100), 8000.0),
                 {"array": sine(0.1), "sampling_rate": SR, "path": "a.wav"}]:
        assert hub.detect(item) == "audio", item if not isinstance(item, bytes) else "bytes"
    te = hub.embed([path, (sine(0.5), SR)], encoder="tiny-whisper")  # a Path and a tuple in one batch
    assert te.modality == "audio" and te.lengths.tolist() == [5, 25]


def test_detect_does_not_claim_other_things():
    not_audio = [
        np.zeros(100, np.float32),  # a bare array has no sample rate
        torch.zeros(100),
        "hello",
        b"\x89PNG\r\n\x1a\n" + bytes(8),
        b"\xff\xd8\xff\xe0" + bytes(8),  # JPEG
        b"\xff\xf1\x50\x80",  # ADTS AAC, not mp3
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
        (np.zeros(10), "16000"),
        (np.zeros(10), True),
        {"edge_index": [[0], [1]]},
        {"path": "x.png"},
    ]
    for item in not_audio:
        assert not is_audio(item), item
    with pytest.raises(UnknownModalityError):
        Hub().detect(b"\x00\x01 no magic here")


def test_modality_metadata_and_demo(hub):
    mod = hub.registry.modality("audio")
    assert mod.default_encoder == "whisper-base" and mod.demo_encoder == "tiny-whisper"
    assert set(mod.extensions) == {".wav", ".flac", ".ogg", ".mp3"}
    te = hub.embed(mod.sample(), encoder=mod.demo_encoder)
    assert te.lengths.tolist() == [50] and te.dim == 32
    assert hub.registry.encoder_spec("tiny-clap").pretrained is False
    assert hub.registry.encoder_spec("whisper-base").weights == "openai/whisper-base"


# -- bad inputs ----------------------------------------------------------------------------------
def _bad_cases(tmp_path: Path) -> dict[str, tuple[object, str]]:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage garbage")
    text_mp3 = tmp_path / "notes.mp3"
    text_mp3.write_text("this is not audio")
    aac = tmp_path / "clip.aac"
    aac.write_bytes(b"\xff\xf1" + bytes(100))
    nan_file = tmp_path / "nan.wav"
    sf.write(nan_file, np.full(100, np.nan, np.float32), SR, subtype="FLOAT")
    zero_frames = tmp_path / "zero.flac"
    sf.write(zero_frames, np.zeros(0, np.float32), SR)
    spiky = sine(0.1)
    spiky[10] = np.inf
    return {
        "zero-length array": ((np.zeros(0, np.float32), SR), "zero-length"),
        "zero-length stereo": ((np.zeros((2, 0), np.float32), SR), "zero-length"),
        "zero-length file": (empty, "empty"),
        "zero-frame flac": (zero_frames, "zero-length"),
        "nan": ((np.full(SR, np.nan, np.float32), SR), "NaN"),
        "silent-but-nan": ({"array": np.where(np.arange(SR) % 2 == 0, 0.0, np.nan), "sampling_rate": SR}, "NaN"),
        "inf": ((spiky, SR), "inf"),
        "nan file": (nan_file, "NaN"),
        "corrupt file": (corrupt, "cannot decode"),
        "text as mp3": (text_mp3, "cannot decode"),
        "unsupported extension": (aac, "unsupported"),
        "corrupt bytes": (b"fLaC" + bytes(50), "cannot decode"),
        "unknown bytes": (b"hello world, not audio", "magic"),
        "empty bytes": (b"", "empty"),
        "rate 0": ((sine(0.1), 0), "sample rate"),
        "rate negative": ({"array": sine(0.1), "sampling_rate": -16000}, "sample rate"),
        "rate nan": ((sine(0.1), float("nan")), "sample rate"),
        "rate fractional": ((sine(0.1), 16000.5), "whole number"),
        "rate str": ((sine(0.1), "16000"), "sample rate"),
        "3-d array": ((np.zeros((2, 2, 100), np.float32), SR), "dims"),
        "0-d array": ((np.ones((), np.float32), SR), "dims"),
        "complex": ((np.zeros(100, np.complex64), SR), "dtype"),
        "bare array": (sine(0.1), "sample rate"),
        "3-tuple": ((sine(0.1), SR, 1), "tuple"),
        "dict without rate": ({"array": sine(0.1)}, "sampling_rate"),
        "missing dict path": ({"path": str(tmp_path / "nope.wav")}, "no such file"),
        "text": ("not a file", "cannot read str"),
    }


@pytest.mark.parametrize("name", TINY)
def test_bad_inputs_raise_naming_the_item(hub, tmp_path, name):
    enc = hub.encoder(name)
    for case, (item, words) in _bad_cases(tmp_path).items():
        with pytest.raises(InvalidInputError) as info:
            enc.prepare(item, 7)
        msg = str(info.value)
        assert "item 7" in msg and words.lower() in msg.lower(), f"{case}: {msg}"
        assert info.value.index == 7


def test_too_short_for_wav2vec2(hub):
    with pytest.raises(InvalidInputError, match=r"too short.*400"):
        hub.encoder("tiny-wav2vec2").prepare((sine(0.005), SR), 3)
    assert hub.encoder("tiny-whisper").count_tokens((sine(0.005), SR)) == 1


def test_skip_keeps_good_items(hub, tmp_path):
    te = hub.embed([sample(), (np.full(10, np.nan), SR), b"OggS" + bytes(40), (sine(0.5), SR)],
                   encoder="tiny-whisper", on_error="skip")
    assert te.indices == [0, 3] and [e.index for e in te.errors] == [1, 2]


# -- weights -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["whisper-base", "wav2vec2-base", "hubert-base", "clap-htsat"])
def test_real_weights_offline_raise_instead_of_downloading(monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="not available locally"):
        Hub().encoder(name)


def _save_tiny(family: str, path: Path) -> None:
    """A tiny model of ``family`` saved with save_pretrained (safetensors) plus its feature extractor."""
    import transformers as tf

    if family == "whisper":
        enc = hub_audio.tiny_whisper()
        model = tf.WhisperModel(tf.WhisperConfig(**{**enc.encoder.config.to_dict(), "decoder_layers": 1}))
        model.encoder.load_state_dict(enc.encoder.state_dict())
    elif family == "wav2vec2":
        enc = hub_audio.tiny_wav2vec2()
        model = enc.model
    else:
        enc = hub_audio.tiny_clap()
        model = tf.ClapAudioModelWithProjection(enc.audio.config)
        model.audio_model.load_state_dict(enc.audio.state_dict())
    model.save_pretrained(path)
    enc.processor.save_pretrained(path)
    assert (path / "model.safetensors").is_file()


@pytest.mark.parametrize("family,name,options", [
    ("whisper", "whisper-base", {}), ("wav2vec2", "wav2vec2-base", {"window_seconds": 2.0}), ("clap", "clap-htsat", {}),
])
def test_save_pretrained_round_trip_through_weights_option(tmp_path, family, name, options):
    _save_tiny(family, tmp_path / family)
    loaded = Hub().encoder(name, weights=str(tmp_path / family), **options)
    tiny = Hub().encoder(f"tiny-{family}")
    assert loaded.weights == str(tmp_path / family) and loaded.pretrained
    items = [sample(), (sine(3.0, 8000), 8000)]
    a, b = loaded.encode(items), tiny.encode(items)
    assert a.lengths.tolist() == b.lengths.tolist()
    assert torch.allclose(a.tokens, b.tokens, atol=1e-5)


def test_wrong_family_checkpoint_is_refused(tmp_path):
    _save_tiny("wav2vec2", tmp_path / "w2v")
    with pytest.raises(WeightsNotFoundError):
        Hub().encoder("clap-htsat", weights=str(tmp_path / "w2v"))
