"""The audio encoders' weights-free processors, save_pretrained / reload, and aligned audio directories."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from hub import Encoder, Hub
from hub.errors import BundleError, InvalidOptionsError
from hub.processor import EncoderProcessor, Processor

hub_audio = pytest.importorskip("hub_audio")

TINY = ["tiny-whisper", "tiny-wav2vec2", "tiny-hubert", "tiny-clap"]


@pytest.fixture(scope="module")
def hub() -> Hub:
    return Hub()


@pytest.fixture(scope="module")
def items():
    return hub_audio.examples(5, seed=1)  # varied rates and lengths, one longer than a tiny window


@pytest.mark.parametrize("name", TINY)
def test_processor_prepares_exactly_as_the_encoder(hub, items, name):
    processor = hub.registry.create_processor(name)
    encoder = hub.encoder(name)
    assert isinstance(processor, Processor) and not isinstance(processor, EncoderProcessor)
    assert not isinstance(processor, torch.nn.Module)  # holds no weights
    assert encoder.item_processor is not None
    assert all(getattr(type(encoder), m) is getattr(Encoder, m) for m in ("prepare", "collate", "num_tokens"))  # delegates
    a = processor.collate([processor.prepare(x, i) for i, x in enumerate(items)])
    b = encoder.collate([encoder.prepare(x, i) for i, x in enumerate(items)])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [processor.num_tokens(processor.prepare(x)) for x in items] == [encoder.count_tokens(x) for x in items]


def test_ssl_token_count_from_the_config_matches_the_model(hub):
    proc, enc = hub.registry.create_processor("tiny-wav2vec2"), hub.encoder("tiny-wav2vec2")
    for n in (400, 401, 719, 720, 16000, 32000, 31999):
        assert proc._out_len(n) == int(enc.model._get_feat_extract_output_lengths(torch.tensor(n)))


@pytest.mark.parametrize("name", TINY)
def test_save_pretrained_round_trip_is_bit_exact(hub, items, tmp_path, name):
    enc = hub.encoder(name)
    out = enc.save_pretrained(tmp_path / name)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["config.json", "model.safetensors", "preprocessor_config.json"]  # safetensors only
    loaded = hub.encoder(enc.reload_as, weights=str(out), **enc.reload_options())
    assert loaded.weights == str(out) and type(loaded) is type(enc)
    a, b = enc.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ta, tb = enc.encode(items), loaded.encode(items)
    assert torch.equal(ta.mask, tb.mask) and torch.equal(ta.tokens, tb.tokens)
    # the processor alone reloads from the same directory (what an export's processor/ holds)
    proc = hub.registry.create_processor(enc.reload_as, weights=str(out), **enc.reload_options())
    assert isinstance(proc, Processor) and proc.num_tokens(proc.prepare(items[0])) == enc.count_tokens(items[0])


def test_a_saved_directory_is_checked_before_loading(hub, tmp_path):
    out = hub.encoder("tiny-whisper").save_pretrained(tmp_path / "w")
    (out / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(BundleError, match="pickle-format file"):
        hub.encoder("whisper-base", weights=str(out))
    (out / "pytorch_model.bin").unlink()
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(d_model=60000, encoder_ffn_dim=240000)  # a config far larger than its tensors
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="parameters"):
        hub.encoder("whisper-base", weights=str(out))


def test_a_processor_refuses_a_config_of_another_family(tmp_path, hub):
    out = hub.encoder("tiny-clap").save_pretrained(tmp_path / "clap")
    with pytest.raises(InvalidOptionsError, match="not a wav2vec2-style model"):
        hub.registry.create_processor("wav2vec2-base", weights=str(out))


@pytest.fixture(scope="module")
def aligned_audio(tmp_path_factory):
    """tiny-whisper aligned into minilm-l6's space with its encoder trained: written by align."""
    h = Hub()
    clips = hub_audio.examples(6, seed=2)
    pairs = [(c, f"sound number {i % 3}") for i, c in enumerate(clips)]
    out = tmp_path_factory.mktemp("aligned") / "audio2text"
    result = h.align("audio", pairs, encoder="tiny-whisper", train_encoder=True, epochs=1, batch_size=3,
                     progress=False, out_dir=out)
    return out, clips, result


def test_an_aligned_audio_directory_is_an_encoder(aligned_audio):
    out, clips, result = aligned_audio
    assert (out / "encoder" / "model.safetensors").is_file()  # save_pretrained, not a state dict beside
    assert not (out / "encoder-state.safetensors").exists()
    manifest = json.loads((out / "align.json").read_text())
    assert manifest["encoder"] == "whisper-base" and manifest["encoder_dir"] == "encoder"
    h = Hub()
    te = h.embed(clips[:3], encoder=str(out))
    assert te.space == h.encoder("minilm-l6").space
    expected = result.embed_aligned(clips[:3])
    assert torch.allclose(te.pooled(normalize=True), expected, atol=1e-5)
    # the trained encoder differs from the untrained preset: the directory really carries its weights
    fresh = h.encoder("tiny-whisper").state_dict()
    trained = result.encoder.state_dict()
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh)


def test_an_old_directory_with_encoder_state_still_loads(aligned_audio, tmp_path):
    """Starter packs written before audio had save_pretrained keep the trained weights in
    encoder-state.safetensors beside a manifest that names the preset: they still load."""
    import dataclasses

    from safetensors.torch import save_model

    from hub.train import aligned_encoder
    from hub.train.align import ALIGN_MANIFEST, ENCODER_STATE

    out, clips, result = aligned_audio
    legacy = tmp_path / "legacy"
    frozen = dataclasses.replace(result, encoder_name="tiny-whisper",
                                 config=result.config.model_copy(update={"train_encoder": False}))
    frozen.save(legacy)
    manifest = json.loads((legacy / ALIGN_MANIFEST).read_text())
    assert manifest["encoder"] == "tiny-whisper" and not (legacy / "encoder").exists()
    manifest["config"]["train_encoder"] = True
    (legacy / ALIGN_MANIFEST).write_text(json.dumps(manifest, indent=2))
    save_model(result.encoder, str(legacy / ENCODER_STATE), metadata={"format": "pt"})
    enc = aligned_encoder(legacy)
    got = enc.encode(clips[:2]).pooled(normalize=True)
    assert torch.allclose(got, result.embed_aligned(clips[:2]), atol=1e-5)
    shutil.rmtree(legacy)


def test_tiny_presets_scale_to_real_sizes_for_benchmarks(hub):
    clap = hub.registry.create_processor("tiny-clap", htsat=True)  # HTSAT geometry: no weights built
    assert (clap.sampling_rate, clap.window_samples, clap.frames) == (48000, 480000, 64)
    whisper = hub.registry.create_processor("tiny-whisper", num_mel_bins=80, hidden_size=512, num_layers=6,
                                            num_heads=8, chunk_length=30)
    assert whisper.frames == 1500 and whisper.config.d_model == 512 and whisper.config.encoder_ffn_dim == 2048
    assert whisper.collate([whisper.prepare(hub_audio.sample())])["input_features"].shape == (1, 80, 3000)
    with pytest.raises(InvalidOptionsError, match="not a multiple of num_heads"):
        hub.registry.create_processor("tiny-whisper", hidden_size=48, num_heads=5)
