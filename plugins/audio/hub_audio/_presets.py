"""Encoder presets: pretrained defaults (loaded with ``hub.weights.from_pretrained``) and
tiny random-init models built in code (tests and ``mhub demo``; ``pretrained=False``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from pydantic import BaseModel, ConfigDict, Field

from hub.errors import InvalidOptionsError

from ._encoders import (
    ClapAudioEncoder,
    ClapAudioProcessor,
    ClapOptions,
    SSLAudioEncoder,
    SSLAudioProcessor,
    SSLOptions,
    WhisperAudioEncoder,
    WhisperAudioProcessor,
    WhisperOptions,
)

__all__ = [
    "Preset", "PRESETS", "tiny_whisper", "tiny_wav2vec2", "tiny_hubert", "tiny_clap",
    "tiny_whisper_processor", "tiny_wav2vec2_processor", "tiny_hubert_processor", "tiny_clap_processor",
]


def _seeded(seed: int, build: Callable[[], Any]) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


# -- tiny presets ------------------------------------------------------------------------
class TinyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0


class TinyWhisperOptions(TinyOptions):
    pool_stride: int = Field(1, ge=1, le=8)
    chunk_length: int = Field(2, ge=1, le=30, description="window in seconds")
    # sizes: the defaults are tiny; whisper-base's are num_mel_bins=80, hidden_size=512, num_layers=6,
    # num_heads=8, chunk_length=30 (random init at real size: benchmarks)
    num_mel_bins: int = Field(16, ge=8, le=256)
    hidden_size: int = Field(32, ge=8, le=4096)
    num_layers: int = Field(2, ge=1, le=64)
    num_heads: int = Field(2, ge=1, le=64)


class TinyClapOptions(TinyOptions):
    htsat: bool = Field(False, description="the real HTSAT geometry (laion/clap-htsat-*: 48 kHz, 10 s windows, "
                                           "64 mels, 768-d, depths 2/2/6/2), random init: benchmarks")


class TinySSLOptions(TinyOptions):
    window_seconds: float = Field(2.0, gt=0, le=600)


def _tiny_whisper_parts(chunk_length: int, num_mel_bins: int = 16, hidden_size: int = 32, num_layers: int = 2,
                        num_heads: int = 2) -> tuple[Any, Any]:
    from transformers import WhisperConfig, WhisperFeatureExtractor

    if hidden_size % num_heads:
        raise InvalidOptionsError(f"hidden_size={hidden_size} is not a multiple of num_heads={num_heads}")
    fe = WhisperFeatureExtractor(feature_size=num_mel_bins, chunk_length=chunk_length)
    config = WhisperConfig(
        num_mel_bins=num_mel_bins, d_model=hidden_size, encoder_layers=num_layers, encoder_attention_heads=num_heads,
        encoder_ffn_dim=4 * hidden_size if hidden_size > 32 else 64,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
        max_source_positions=fe.nb_max_frames // 2, max_target_positions=16,
    )
    return fe, config


def tiny_whisper(seed: int = 0, pool_stride: int = 1, chunk_length: int = 2, **sizes: int) -> WhisperAudioEncoder:
    """Untrained 2-layer Whisper encoder, 16 mel bins, 32-d, windows of ``chunk_length`` s (50 tokens/s);
    ``sizes`` (``num_mel_bins``, ``hidden_size``, ``num_layers``, ``num_heads``) scale it up."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    fe, config = _tiny_whisper_parts(chunk_length, **sizes)
    enc = WhisperAudioEncoder(model=_seeded(seed, lambda: WhisperEncoder(config)), feature_extractor=fe, pool_stride=pool_stride)
    enc.weights = f"random-init(seed={seed})"
    return enc


def tiny_whisper_processor(seed: int = 0, pool_stride: int = 1, chunk_length: int = 2, **sizes: int) -> WhisperAudioProcessor:
    """The processor of :func:`tiny_whisper` (feature extractor and config; no weights)."""
    return WhisperAudioProcessor(*_tiny_whisper_parts(chunk_length, **sizes), pool_stride=pool_stride)


_SSL_FAMILIES = {  # tiny preset -> (config class, model class, config options)
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model", {"feat_extract_norm": "group"}),
    "hubert": ("HubertConfig", "HubertModel", {"feat_extract_norm": "layer", "do_stable_layer_norm": True, "conv_bias": True}),
}


def _tiny_ssl_parts(family: str) -> tuple[Any, Any]:
    import transformers
    from transformers import Wav2Vec2FeatureExtractor

    config_cls, _, options = _SSL_FAMILIES[family]
    cfg = getattr(transformers, config_cls)(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=32, **options,
    )
    layer_norm = cfg.feat_extract_norm == "layer"
    return Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=layer_norm), cfg


def _tiny_ssl(family: str, seed: int, window_seconds: float) -> SSLAudioEncoder:
    import transformers

    fe, cfg = _tiny_ssl_parts(family)
    model = _seeded(seed, lambda: getattr(transformers, _SSL_FAMILIES[family][1])(cfg))
    enc = SSLAudioEncoder(model=model, feature_extractor=fe, window_seconds=window_seconds)
    enc.weights = f"random-init(seed={seed})"
    return enc


def tiny_wav2vec2(seed: int = 0, window_seconds: float = 2.0) -> SSLAudioEncoder:
    """Untrained 2-layer wav2vec2 (base conv geometry, GroupNorm conv stem as wav2vec2-base): 49 tokens/s."""
    return _tiny_ssl("wav2vec2", seed, window_seconds)


def tiny_hubert(seed: int = 0, window_seconds: float = 2.0) -> SSLAudioEncoder:
    """Untrained 2-layer HuBERT (base conv geometry, LayerNorm conv stem as hubert-large): 49 tokens/s."""
    return _tiny_ssl("hubert", seed, window_seconds)


def tiny_wav2vec2_processor(seed: int = 0, window_seconds: float = 2.0) -> SSLAudioProcessor:
    """The processor of :func:`tiny_wav2vec2` (feature extractor and config; no weights)."""
    return SSLAudioProcessor(*_tiny_ssl_parts("wav2vec2"), window_seconds=window_seconds)


def tiny_hubert_processor(seed: int = 0, window_seconds: float = 2.0) -> SSLAudioProcessor:
    """The processor of :func:`tiny_hubert` (feature extractor and config; no weights)."""
    return SSLAudioProcessor(*_tiny_ssl_parts("hubert"), window_seconds=window_seconds)


def _tiny_clap_parts(htsat: bool = False) -> tuple[Any, Any]:
    from transformers import ClapAudioConfig, ClapFeatureExtractor

    if htsat:  # transformers' defaults are laion/clap-htsat-*'s geometry
        return ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad"), ClapAudioConfig()
    fe = ClapFeatureExtractor(
        feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=2, fft_window_size=400,
        frequency_max=8000, truncation="rand_trunc", padding="repeatpad",
    )
    config = ClapAudioConfig(
        spec_size=64, num_mel_bins=16, window_size=4, patch_size=4, patch_stride=(4, 4), depths=(1, 1),
        num_attention_heads=(1, 2), patch_embeds_hidden_size=16, hidden_size=32, projection_dim=16,
    )
    return fe, config


def tiny_clap(seed: int = 0, htsat: bool = False) -> ClapAudioEncoder:
    """Untrained 2-stage HTSAT audio tower, 16 kHz, 2 s windows, 8 x 8 = 64 tokens of 32-d per window
    (``htsat=True``: the real HTSAT geometry, 48 kHz, 10 s windows, 64 tokens of 768-d)."""
    from transformers import ClapAudioModelWithProjection

    fe, config = _tiny_clap_parts(htsat)
    enc = ClapAudioEncoder(model=_seeded(seed, lambda: ClapAudioModelWithProjection(config)), feature_extractor=fe)
    enc.weights = f"random-init(seed={seed})"
    return enc


def tiny_clap_processor(seed: int = 0, htsat: bool = False) -> ClapAudioProcessor:
    """The processor of :func:`tiny_clap` (feature extractor and config; no weights)."""
    return ClapAudioProcessor(*_tiny_clap_parts(htsat))


# -- the preset table -------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    factory: Callable[..., Any]
    options: type[BaseModel]
    weights: str | None
    license: str
    description: str
    pretrained: bool = True
    processor: Callable[..., Any] | None = None  # the weights-free half, from the same options


def _pretrained(cls: Any, weights: str) -> Callable[..., Any]:
    def factory(**opts: Any) -> Any:
        opts = {k: v for k, v in opts.items() if v is not None}
        opts.setdefault("weights", weights)
        return cls(**opts)

    return factory


PRESETS: dict[str, Preset] = {
    "whisper-base": Preset(
        _pretrained(WhisperAudioEncoder, "openai/whisper-base"), WhisperOptions, "openai/whisper-base", "apache-2.0",
        "Whisper base encoder: 512-d, 50 tokens/s (25 with pool_stride=2), 30 s windows",
        processor=_pretrained(WhisperAudioProcessor.from_options, "openai/whisper-base"),
    ),
    "wav2vec2-base": Preset(
        _pretrained(SSLAudioEncoder, "facebook/wav2vec2-base-960h"), SSLOptions, "facebook/wav2vec2-base-960h",
        "apache-2.0", "wav2vec2 base (960 h LibriSpeech): 768-d, 49 tokens/s",
        processor=_pretrained(SSLAudioProcessor.from_options, "facebook/wav2vec2-base-960h"),
    ),
    "hubert-base": Preset(
        _pretrained(SSLAudioEncoder, "facebook/hubert-base-ls960"), SSLOptions, "facebook/hubert-base-ls960",
        "apache-2.0", "HuBERT base (LibriSpeech 960 h): 768-d, 49 tokens/s",
        processor=_pretrained(SSLAudioProcessor.from_options, "facebook/hubert-base-ls960"),
    ),
    "clap-htsat": Preset(
        _pretrained(ClapAudioEncoder, "laion/clap-htsat-unfused"), ClapOptions, "laion/clap-htsat-unfused",
        "apache-2.0", "CLAP HTSAT audio tower (unfused): 768-d, 64 tokens per 10 s window, 48 kHz",
        processor=_pretrained(ClapAudioProcessor.from_options, "laion/clap-htsat-unfused"),
    ),
    "tiny-whisper": Preset(tiny_whisper, TinyWhisperOptions, None, "apache-2.0",
                           "untrained 2-layer Whisper encoder, 32-d, 2 s windows, 50 tokens/s (tests, demos)", False,
                           tiny_whisper_processor),
    "tiny-wav2vec2": Preset(tiny_wav2vec2, TinySSLOptions, None, "apache-2.0",
                            "untrained 2-layer wav2vec2, 32-d, GroupNorm conv stem, 49 tokens/s (tests, demos)", False,
                            tiny_wav2vec2_processor),
    "tiny-hubert": Preset(tiny_hubert, TinySSLOptions, None, "apache-2.0",
                          "untrained 2-layer HuBERT, 32-d, LayerNorm conv stem, 49 tokens/s (tests, demos)", False,
                          tiny_hubert_processor),
    "tiny-clap": Preset(tiny_clap, TinyClapOptions, None, "apache-2.0",
                        "untrained 2-stage CLAP HTSAT audio tower, 32-d, 64 tokens per 2 s window (tests, demos)", False,
                        tiny_clap_processor),
}
