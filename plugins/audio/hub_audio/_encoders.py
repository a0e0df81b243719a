"""Audio encoders on transformers: Whisper, wav2vec2 / HuBERT and CLAP's audio tower.

Every encoder works on *windows*: a waveform longer than the encoder's window
is cut into consecutive windows, each window is encoded on its own (as one row
of the model batch), and the windows' real tokens are concatenated in time
order.  ``collate`` precomputes, per item, which rows of the flattened
``(windows * frames, dim)`` model output are its tokens (``gather``) and which
positions are real (``token_mask``), so ``forward`` is pure tensor code.

Token rates (16 kHz input):

* Whisper: conv2 has stride 2 over 10 ms mel frames → 50 tokens per second
  (``ceil(ceil(n / 160) / 2)`` for ``n`` samples); 1500 per 30 s window.
  Whisper pads every window to 30 s; only the frames of real audio are kept.
  ``pool_stride=2`` average-pools pairs of real frames → 25 per second, as
  Qwen2-Audio does (``ceil(tokens / 2)``).
* wav2vec2 / HuBERT: the conv feature encoder (kernels 10,3,3,3,3,2,2, strides
  5,2,2,2,2,2,2 for the base models) gives ``L -> (L - k) // s + 1`` per layer,
  i.e. 49 tokens per second (320-sample hop, 400-sample receptive field), computed
  exactly from the model config.
* CLAP (HTSAT): a fixed grid per window — (spec_size / patch_stride / 2^(stages-1))^2
  = 8 x 8 = 64 tokens per 10 s window for laion/clap-htsat-*.  CLAP tiles a
  short clip to fill its window (``repeatpad``) as it was trained, so all 64
  tokens are real; a 25 s clip gives 3 windows = 192 tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hub import Encoder, TokenEmbeddings
from hub.errors import InvalidInputError, InvalidOptionsError, WeightsNotFoundError
from hub.weights import from_pretrained

from ._io import load_waveform

__all__ = [
    "AudioEncoder",
    "WhisperAudioEncoder",
    "SSLAudioEncoder",
    "ClapAudioEncoder",
    "WhisperOptions",
    "SSLOptions",
    "ClapOptions",
]

ACCEPTS = (
    "path or bytes of a .wav, .flac, .ogg or .mp3 file",
    "{'array': waveform, 'sampling_rate': Hz} (Hugging Face datasets Audio)",
    "(waveform, sample_rate) with a numpy/torch waveform (samples,), (channels, samples) or (samples, channels)",
)


# -- options -------------------------------------------------------------------------
class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: str | None = Field(None, description="hub id or local directory (save_pretrained layout)")
    allow_download: bool | None = Field(None, description="download missing weights (default: yes, unless HF_HUB_OFFLINE=1 or MODALITY_HUB_ALLOW_DOWNLOAD=0)")


class WhisperOptions(_Options):
    pool_stride: int = Field(1, ge=1, le=8, description="average-pool this many frames per token (2: 25 tokens/s, as Qwen2-Audio)")


class SSLOptions(_Options):
    window_seconds: float = Field(30.0, gt=0, le=600, description="audio is encoded in windows of this length")


class ClapOptions(_Options):
    pass


# -- shared machinery -----------------------------------------------------------------
@dataclass(frozen=True)
class PreparedAudio:
    """One item after ``prepare``: per-window model inputs and real tokens per window."""

    windows: tuple[np.ndarray, ...]
    tokens: tuple[int, ...]
    seconds: float


def _load(cls: Any, weights: str, allow_download: bool | None, what: str, optional: tuple[str, ...] = ()) -> Any:
    """``from_pretrained`` that refuses checkpoints missing model tensors (no silent random init)."""
    try:
        model, info = from_pretrained(cls, weights, allow_download=allow_download, what=what, output_loading_info=True)
    except WeightsNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a config of another family fails validation
        raise WeightsNotFoundError(
            f"{what} weights {weights!r} could not be loaded as {cls.__name__}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    missing = [k for k in info.get("missing_keys", ()) if not any(o in k for o in optional)]
    if missing:
        raise WeightsNotFoundError(
            f"{what} weights {weights!r} lack {len(missing)} tensors of {cls.__name__} "
            f"(e.g. {', '.join(sorted(missing)[:3])}); pass a checkpoint of this encoder family"
        )
    return model.eval()


def _conv_out(length: int, conv: nn.Conv1d) -> int:
    """Output length of a Conv1d (the formula in torch's Conv1d docs)."""
    (k,), (s,), (p,), (d,) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    return (length + 2 * p - d * (k - 1) - 1) // s + 1


class AudioEncoder(Encoder):
    """Base of the audio encoders: decode → mono → resample → windows → tokens."""

    modality = "audio"
    accepts = ACCEPTS
    sampling_rate: int = 16000
    window_samples: int = 480000
    min_samples: int = 1

    # -- per family ----------------------------------------------------------------
    def _prepare_windows(self, windows: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
        """Model inputs and real token counts for the windows of one item."""
        raise NotImplementedError

    def _collate_windows(self, windows: list[np.ndarray]) -> tuple[dict[str, torch.Tensor], int]:
        """Model inputs for all windows of a batch and the frames per window of the output."""
        raise NotImplementedError

    # -- Encoder API ----------------------------------------------------------------
    def prepare(self, item: Any, index: int = 0) -> PreparedAudio:
        wave = load_waveform(item, self.sampling_rate, lambda problem: self.invalid(index, item, problem))
        samples = wave.samples
        if len(samples) < self.min_samples:
            raise self.invalid(
                index, item,
                f"audio too short: {len(samples)} samples at {self.sampling_rate} Hz; {self.name} needs at least "
                f"{self.min_samples} ({1000 * self.min_samples / self.sampling_rate:.1f} ms)",
            )
        inputs, tokens = self._prepare_windows(self._split(samples))
        return PreparedAudio(tuple(inputs), tuple(int(t) for t in tokens), wave.seconds)

    def _split(self, samples: np.ndarray) -> list[np.ndarray]:
        """Consecutive windows of ``window_samples``; a tail shorter than ``min_samples`` joins the window before."""
        w = self.window_samples
        windows = [samples[s : s + w] for s in range(0, len(samples), w)]
        if len(windows) > 1 and len(windows[-1]) < self.min_samples:
            tail = windows.pop()
            windows[-1] = np.concatenate([windows[-1], tail])
        return windows

    def num_tokens(self, prepared: PreparedAudio) -> int:
        return sum(prepared.tokens)

    def collate(self, prepared: Sequence[PreparedAudio]) -> dict[str, torch.Tensor]:
        windows = [w for p in prepared for w in p.windows]
        tensors, frames = self._collate_windows(windows)
        width = max(self.num_tokens(p) for p in prepared)
        gather = torch.zeros(len(prepared), width, dtype=torch.long)
        token_mask = torch.zeros(len(prepared), width, dtype=torch.bool)
        row = 0
        for b, p in enumerate(prepared):
            pos = 0
            for n in p.tokens:
                gather[b, pos : pos + n] = row * frames + torch.arange(n)
                token_mask[b, pos : pos + n] = True
                pos += n
                row += 1
        return {**tensors, "gather": gather, "token_mask": token_mask}

    def _assemble(self, hidden: torch.Tensor, gather: torch.Tensor, token_mask: torch.Tensor) -> TokenEmbeddings:
        """Windows' hidden states (windows, frames, dim) → each item's tokens (batch, tokens, dim)."""
        flat = hidden.reshape(-1, hidden.shape[-1])  # (windows * frames, dim)
        tokens = flat[gather] * token_mask.unsqueeze(-1).to(flat.dtype)  # (batch, tokens, dim)
        return self.tokens(tokens, token_mask)


# -- Whisper --------------------------------------------------------------------------
class WhisperAudioEncoder(AudioEncoder):
    """Whisper's encoder: log-mel (``WhisperFeatureExtractor``) → conv stem → transformer.

    50 tokens per second of audio (25 with ``pool_stride=2``); windows of the
    feature extractor's ``chunk_length`` (30 s).  Whisper always sees a full
    padded window; the tokens of the padding are dropped.
    """

    def __init__(
        self,
        weights: str | None = None,
        pool_stride: int = 1,
        allow_download: bool | None = None,
        *,
        model: Any = None,
        feature_extractor: Any = None,
    ) -> None:
        super().__init__()
        from transformers import WhisperFeatureExtractor, WhisperModel

        if model is None:
            if not weights:
                raise InvalidOptionsError("the Whisper encoder needs weights=HUB_ID_OR_DIRECTORY")
            feature_extractor = from_pretrained(
                WhisperFeatureExtractor, weights, allow_download=allow_download, what="Whisper feature extractor", safetensors=False
            )
            model = _load(WhisperModel, weights, allow_download, "Whisper").get_encoder()
        self.weights = weights
        self.encoder = model.eval()  # WhisperEncoder
        self.processor = feature_extractor
        self.pool_stride = int(pool_stride)
        self.sampling_rate = int(feature_extractor.sampling_rate)
        self.window_samples = int(feature_extractor.n_samples)
        self.dim = int(model.config.d_model)
        frames_in = int(feature_extractor.nb_max_frames)
        self.frames = _conv_out(_conv_out(frames_in, model.conv1), model.conv2)
        if self.frames != model.config.max_source_positions:
            raise InvalidOptionsError(
                f"Whisper feature extractor windows of {feature_extractor.chunk_length} s give {self.frames} frames, "
                f"but the encoder has {model.config.max_source_positions} positions; use a matching chunk_length"
            )

    def _prepare_windows(self, windows: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
        out = self.processor(
            windows, sampling_rate=self.sampling_rate, return_attention_mask=True, return_tensors="np"
        )
        feats = out["input_features"].astype(np.float32)  # (windows, mels, frames)
        mel_frames = [int(f) for f in out["attention_mask"].sum(axis=1)]  # real mel frames per window
        frames = [_conv_out(_conv_out(f, self.encoder.conv1), self.encoder.conv2) for f in mel_frames]
        return list(zip(feats, frames)), [math.ceil(f / self.pool_stride) for f in frames]

    def _collate_windows(self, windows: list[tuple[np.ndarray, int]]) -> tuple[dict[str, torch.Tensor], int]:
        feats = torch.from_numpy(np.stack([f for f, _ in windows]))  # (windows, mels, frames)
        real = torch.tensor([n for _, n in windows])
        tensors = {"input_features": feats}
        if self.pool_stride > 1:  # only the masked pool reads it (an unused input would drop out of an ONNX graph)
            tensors["frame_mask"] = torch.arange(self.frames)[None, :] < real[:, None]  # (windows, frames)
        return tensors, math.ceil(self.frames / self.pool_stride)

    def forward(
        self,
        input_features: torch.Tensor,  # (windows, mels, frames)
        gather: torch.Tensor,  # (batch, tokens)
        token_mask: torch.Tensor,  # (batch, tokens)
        frame_mask: torch.Tensor | None = None,  # (windows, frames): True on frames of real audio (pool_stride > 1)
    ) -> TokenEmbeddings:
        hidden = self.encoder(input_features).last_hidden_state  # (windows, frames, dim)
        if self.pool_stride > 1:
            if frame_mask is None:
                raise InvalidInputError(f"{self.name}: pool_stride={self.pool_stride} needs frame_mask (from collate)")
            # masked average pool: each pooled token is the mean of the *real* frames it covers
            m = frame_mask.to(hidden.dtype).unsqueeze(1)  # (windows, 1, frames)
            x = hidden.transpose(1, 2) * m  # (windows, dim, frames)
            s = self.pool_stride
            num = nn.functional.avg_pool1d(x, s, s, ceil_mode=True)  # (windows, dim, frames / s)
            den = nn.functional.avg_pool1d(m, s, s, ceil_mode=True).clamp_min(1e-6)
            hidden = (num / den).transpose(1, 2)  # (windows, frames / s, dim)
        return self._assemble(hidden, gather, token_mask)


# -- wav2vec2 / HuBERT ------------------------------------------------------------------
class _MaskedGroupNormConv(nn.Module):
    """The first conv layer of wav2vec2 / HuBERT base (conv → GroupNorm → activation), with the
    GroupNorm statistics taken over real frames only when it is told which frames are real.

    Those checkpoints normalise each channel over the whole time axis, so zero
    padding changes every real frame (transformers documents that batched and
    single results differ).  transformers' feature encoder feeds this layer
    ``input_values[:, None]``:

    * ``(windows, 1, samples)`` — a plain waveform: the layer behaves exactly as the one it replaces;
    * ``(windows, 1, 2, samples)`` — waveform and attention mask stacked (what
      ``SSLAudioEncoder.forward`` passes as ``input_values``): statistics over the
      real frames only, so a padded batch equals single items.

    The mask travels inside the input tensor, so ``forward`` is stateless and
    exports to ONNX as one tensor path.  Submodules keep their names (same state-dict keys).
    """

    def __init__(self, layer: nn.Module, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv, self.layer_norm, self.activation = layer.conv, layer.layer_norm, layer.activation
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # (windows, 1, samples): transformers' own call
            return self.activation(self.layer_norm(self.conv(x)))
        values, sample_mask = x[:, :, 0], x[:, 0, 1]  # (windows, 1, samples), (windows, samples)
        h = self.conv(values)  # (windows, channels, frames)
        return self.activation(self._masked_norm(h, sample_mask.sum(-1)))

    def _masked_norm(self, x: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        norm: nn.GroupNorm = self.layer_norm
        b, c, t = x.shape
        g = norm.num_groups
        frames = torch.div(samples - self.kernel, self.stride, rounding_mode="floor") + 1  # (windows,) real frames
        mask = (torch.arange(t, device=x.device)[None, :] < frames[:, None]).to(x.dtype)  # (windows, frames)
        xg = x.reshape(b, g, c // g, t)
        m = mask[:, None, None, :]  # (windows, 1, 1, frames)
        count = m.sum(dim=(2, 3), keepdim=True) * (c // g)
        mean = (xg * m).sum(dim=(2, 3), keepdim=True) / count
        var = ((xg - mean).pow(2) * m).sum(dim=(2, 3), keepdim=True) / count
        y = ((xg - mean) / torch.sqrt(var + norm.eps)).reshape(b, c, t)
        if norm.affine:
            y = y * norm.weight[None, :, None] + norm.bias[None, :, None]
        return y


class SSLAudioEncoder(AudioEncoder):
    """wav2vec2 / HuBERT (any ``AutoModel`` with a conv feature encoder): one token per 20 ms.

    Tokens per window follow the conv stack exactly (``model._get_feat_extract_output_lengths``):
    49 per second at 16 kHz for the base models.  Padding is masked in the
    transformer (``attention_mask``) and, for ``feat_extract_norm="group"``
    checkpoints, in the first conv layer's GroupNorm too, so batching never
    changes an item's tokens.
    """

    def __init__(
        self,
        weights: str | None = None,
        window_seconds: float = 30.0,
        allow_download: bool | None = None,
        *,
        model: Any = None,
        feature_extractor: Any = None,
    ) -> None:
        super().__init__()
        from transformers import AutoFeatureExtractor, AutoModel

        if model is None:
            if not weights:
                raise InvalidOptionsError("this encoder needs weights=HUB_ID_OR_DIRECTORY")
            feature_extractor = from_pretrained(
                AutoFeatureExtractor, weights, allow_download=allow_download, what="audio feature extractor", safetensors=False
            )
            model = _load(AutoModel, weights, allow_download, "wav2vec2/HuBERT", optional=("masked_spec_embed",))
        if not hasattr(model, "_get_feat_extract_output_lengths") or not hasattr(model, "feature_extractor"):
            raise InvalidOptionsError(
                f"{type(model).__name__} is not a wav2vec2-style model (needs a conv feature encoder); "
                "use a wav2vec2, HuBERT or WavLM checkpoint"
            )
        self.weights = weights
        self.model = model.eval()
        self.processor = feature_extractor
        cfg = model.config
        self.dim = int(cfg.hidden_size)
        self.sampling_rate = int(feature_extractor.sampling_rate)
        # the receptive field of one output frame = the shortest audio that yields a token
        field = 1
        for k, s in reversed(list(zip(cfg.conv_kernel, cfg.conv_stride))):
            field = (field - 1) * s + k
        self.min_samples = int(field)
        self.window_samples = int(round(window_seconds * self.sampling_rate))
        if self.window_samples < self.min_samples:
            raise InvalidOptionsError(f"window_seconds={window_seconds} is shorter than one token ({field} samples)")
        layers = model.feature_extractor.conv_layers
        #: True when the first conv layer normalises over time (GroupNorm): padding must be masked there
        self.masked_norm = isinstance(getattr(layers[0], "layer_norm", None), nn.GroupNorm)
        if self.masked_norm:
            layers[0] = _MaskedGroupNormConv(layers[0], int(cfg.conv_kernel[0]), int(cfg.conv_stride[0]))

    def _out_len(self, samples: int) -> int:
        return int(self.model._get_feat_extract_output_lengths(torch.tensor(samples)))

    def _prepare_windows(self, windows: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
        values = [
            np.asarray(self.processor(w, sampling_rate=self.sampling_rate, return_tensors="np")["input_values"][0], dtype=np.float32)
            for w in windows
        ]
        return values, [self._out_len(len(w)) for w in windows]

    def _collate_windows(self, windows: list[np.ndarray]) -> tuple[dict[str, torch.Tensor], int]:
        batch = self.processor.pad(
            [{"input_values": w} for w in windows], padding=True, return_attention_mask=True, return_tensors="pt"
        )
        values = batch["input_values"].float()  # (windows, samples)
        return {"input_values": values, "attention_mask": batch["attention_mask"].long()}, self._out_len(values.shape[1])

    def forward(
        self,
        input_values: torch.Tensor,  # (windows, samples)
        attention_mask: torch.Tensor,  # (windows, samples)
        gather: torch.Tensor,  # (batch, tokens)
        token_mask: torch.Tensor,  # (batch, tokens)
    ) -> TokenEmbeddings:
        values = input_values
        if self.masked_norm:  # the first conv layer reads the mask from a second row (see _MaskedGroupNormConv)
            values = torch.stack([input_values, attention_mask.to(input_values.dtype)], dim=1)  # (windows, 2, samples)
        hidden = self.model(values, attention_mask=attention_mask).last_hidden_state  # (windows, frames, dim)
        return self._assemble(hidden, gather, token_mask)


# -- CLAP --------------------------------------------------------------------------------
class ClapAudioEncoder(AudioEncoder):
    """CLAP's audio tower (HTSAT): ``ClapFeatureExtractor`` mel → Swin → a fixed token grid per window.

    Tokens are the last hidden states of the audio tower before its pooling
    (``ClapAudioModel``'s ``last_hidden_state`` flattened): 64 x 768 per 10 s
    window for laion/clap-htsat-unfused.  ``pooled()`` (mean) equals the
    tower's own average pool.  Short clips are tiled to the window
    (``repeatpad``), so every token is real.  ``is_longer`` is always false:
    a window never exceeds ``max_length_s``, so no random crop or fusion occurs.
    """

    def __init__(
        self,
        weights: str | None = None,
        allow_download: bool | None = None,
        *,
        model: Any = None,
        feature_extractor: Any = None,
    ) -> None:
        super().__init__()
        from transformers import ClapAudioModelWithProjection, ClapFeatureExtractor

        if model is None:
            if not weights:
                raise InvalidOptionsError("the CLAP encoder needs weights=HUB_ID_OR_DIRECTORY")
            feature_extractor = from_pretrained(
                ClapFeatureExtractor, weights, allow_download=allow_download, what="CLAP feature extractor", safetensors=False
            )
            model = _load(ClapAudioModelWithProjection, weights, allow_download, "CLAP audio")
        self.weights = weights
        self.audio = (model.audio_model if hasattr(model, "audio_model") else model).eval()  # ClapAudioModel
        self.processor = feature_extractor
        enc = self.audio.audio_encoder
        cfg = self.audio.config
        self.dim = int(enc.norm.normalized_shape[0])
        self.sampling_rate = int(feature_extractor.sampling_rate)
        self.window_samples = int(feature_extractor.nb_max_samples)
        side = cfg.spec_size // 2 ** (len(cfg.depths) - 1)
        stride = cfg.patch_stride if isinstance(cfg.patch_stride, (list, tuple)) else (cfg.patch_stride,) * 2
        self.frames = int((side // stride[0]) * (side // stride[1]))
        mel_frames = self.window_samples // feature_extractor.hop_length + 1
        if mel_frames > enc.spec_size * enc.freq_ratio:
            raise InvalidOptionsError(
                f"CLAP windows of {feature_extractor.max_length_s} s give {mel_frames} mel frames; "
                f"the audio tower takes at most {enc.spec_size * enc.freq_ratio}"
            )

    def _prepare_windows(self, windows: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
        out = self.processor(windows, sampling_rate=self.sampling_rate, truncation="rand_trunc", return_tensors="np")
        feats = np.asarray(out["input_features"], dtype=np.float32)  # (windows, channels, frames, mels)
        return list(feats), [self.frames] * len(windows)

    def _collate_windows(self, windows: list[np.ndarray]) -> tuple[dict[str, torch.Tensor], int]:
        return {"input_features": torch.from_numpy(np.stack(windows))}, self.frames

    def forward(
        self,
        input_features: torch.Tensor,  # (windows, channels, frames, mels)
        gather: torch.Tensor,  # (batch, tokens)
        token_mask: torch.Tensor,  # (batch, tokens)
    ) -> TokenEmbeddings:
        is_longer = torch.zeros(input_features.shape[0], 1, dtype=torch.bool, device=input_features.device)
        grid = self.audio(input_features=input_features, is_longer=is_longer).last_hidden_state  # (windows, dim, h, w)
        hidden = grid.flatten(2).transpose(1, 2)  # (windows, h * w, dim)
        return self._assemble(hidden, gather, token_mask)
