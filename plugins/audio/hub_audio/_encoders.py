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
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hub import Encoder, TokenEmbeddings
from hub.errors import InvalidInputError, InvalidOptionsError, WeightsNotFoundError
from hub.processor import Processor
from hub.weights import from_pretrained

from ._io import load_waveform

__all__ = [
    "AudioEncoder",
    "AudioProcessor",
    "WhisperAudioProcessor",
    "SSLAudioProcessor",
    "ClapAudioProcessor",
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


def _is_local(weights: str | None) -> bool:
    return bool(weights) and Path(str(weights)).expanduser().is_dir()


def _architecture(weights: str | None) -> str | None:
    """``architectures[0]`` of a local ``config.json`` (what ``save_pretrained`` wrote), else ``None``."""
    if not _is_local(weights):
        return None
    from hub._manifest import CONFIG_MAX_BYTES, read_json

    config = Path(str(weights)).expanduser() / "config.json"
    if not config.is_file():
        return None
    cfg = read_json(config, "audio encoder config.json", CONFIG_MAX_BYTES)
    arch = cfg.get("architectures") if isinstance(cfg, dict) else None
    return str(arch[0]) if isinstance(arch, list) and arch else None


def _load(cls: Any, weights: str, allow_download: bool | None, what: str, optional: tuple[str, ...] = ()) -> Any:
    """``from_pretrained`` that refuses checkpoints missing model tensors (no silent random init).

    A local directory is checked first with :func:`hub._manifest.check_pretrained_dir`: no pickle-format
    file, size caps, safetensors headers that parse, a config no larger than its tensors."""
    if _is_local(weights):
        from hub._manifest import check_pretrained_dir

        path = Path(str(weights)).expanduser()
        check_pretrained_dir(path, path, f"{what} weights {str(weights)!r}")
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


def _config(cls: Any, weights: str, allow_download: bool | None, what: str) -> Any:
    """A model config alone (no tensors), as ``from_pretrained`` reads it."""
    try:
        return from_pretrained(cls, weights, allow_download=allow_download, what=what, safetensors=False)
    except WeightsNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - a config of another family fails validation
        raise WeightsNotFoundError(f"{what} {weights!r} could not be read as {cls.__name__}: {type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc


def _conv_len(length: int, kernel: int, stride: int, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a Conv1d (the formula in torch's Conv1d docs)."""
    return (length + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _save_pretrained(module: Any, processor: "AudioProcessor", directory: str | Path) -> Path:
    """``module.save_pretrained`` (config + model.safetensors, never pickles) and the feature extractor."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    module.save_pretrained(str(path), safe_serialization=True)
    processor.feature_extractor.save_pretrained(str(path))
    return path


class AudioProcessor(Processor):
    """Decode → mono → resample → windows → per-window model inputs; the weights-free half of an
    :class:`AudioEncoder`.  Holds the transformers feature extractor and the model config (numbers only)."""

    modality = "audio"
    accepts = ACCEPTS
    sampling_rate: int = 16000
    window_samples: int = 480000
    min_samples: int = 1

    def __init__(self, feature_extractor: Any, config: Any) -> None:
        self.feature_extractor = feature_extractor
        self.config = config

    # -- per family ----------------------------------------------------------------
    def _prepare_windows(self, windows: list[np.ndarray]) -> tuple[list[Any], list[int]]:
        """Model inputs and real token counts for the windows of one item."""
        raise NotImplementedError

    def _collate_windows(self, windows: list[Any]) -> tuple[dict[str, torch.Tensor], int]:
        """Model inputs for all windows of a batch and the frames per window of the output."""
        raise NotImplementedError

    def reload_options(self) -> dict[str, Any]:
        """Options besides ``weights=`` that rebuild this processor (and its encoder) from a saved directory."""
        return {}

    # -- Processor API --------------------------------------------------------------
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

    def save(self, directory: str | Path) -> dict[str, Any]:
        """The feature extractor's ``preprocessor_config.json`` and the model's ``config.json`` (no weights)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.feature_extractor.save_pretrained(str(path))
        self.config.save_pretrained(str(path))
        return self.reload_options()


class AudioEncoder(Encoder):
    """Base of the audio encoders: the :class:`AudioProcessor` (``item_processor``) prepares and collates;
    ``forward`` runs the model and gathers each item's tokens."""

    modality = "audio"
    accepts = ACCEPTS
    item_processor: AudioProcessor

    @property
    def processor(self) -> Any:
        """The transformers feature extractor."""
        return self.item_processor.feature_extractor

    @property
    def sampling_rate(self) -> int:
        return self.item_processor.sampling_rate

    @property
    def window_samples(self) -> int:
        return self.item_processor.window_samples

    @property
    def min_samples(self) -> int:
        return self.item_processor.min_samples

    def reload_options(self) -> dict[str, Any]:
        return self.item_processor.reload_options()

    def _assemble(self, hidden: torch.Tensor, gather: torch.Tensor, token_mask: torch.Tensor) -> TokenEmbeddings:
        """Windows' hidden states (windows, frames, dim) → each item's tokens (batch, tokens, dim)."""
        flat = hidden.reshape(-1, hidden.shape[-1])  # (windows * frames, dim)
        tokens = flat[gather] * token_mask.unsqueeze(-1).to(flat.dtype)  # (batch, tokens, dim)
        return self.tokens(tokens, token_mask)


# -- Whisper --------------------------------------------------------------------------
#: WhisperEncoder's conv stem: conv1 (kernel 3, stride 1, padding 1), conv2 (kernel 3, stride 2, padding 1)
_WHISPER_CONVS = ((3, 1, 1), (3, 2, 1))


def _whisper_frames(mel_frames: int) -> int:
    for k, s, p in _WHISPER_CONVS:
        mel_frames = _conv_len(mel_frames, k, s, p)
    return mel_frames


class WhisperAudioProcessor(AudioProcessor):
    """Whisper's log-mel (``WhisperFeatureExtractor``) per window; 50 tokens/s (``ceil(frames / pool_stride)``)."""

    reload_as = "whisper-base"

    def __init__(self, feature_extractor: Any, config: Any, pool_stride: int = 1) -> None:
        super().__init__(feature_extractor, config)
        self.pool_stride = int(pool_stride)
        self.sampling_rate = int(feature_extractor.sampling_rate)
        self.window_samples = int(feature_extractor.n_samples)
        self.frames = _whisper_frames(int(feature_extractor.nb_max_frames))
        if self.frames != config.max_source_positions:
            raise InvalidOptionsError(
                f"Whisper feature extractor windows of {feature_extractor.chunk_length} s give {self.frames} frames, "
                f"but the encoder has {config.max_source_positions} positions; use a matching chunk_length"
            )

    @classmethod
    def from_options(cls, weights: str | None = None, pool_stride: int = 1, allow_download: bool | None = None,
                     **_: Any) -> "WhisperAudioProcessor":
        """The feature extractor and config of ``weights`` (hub id or directory); no model weights load."""
        from transformers import WhisperConfig, WhisperFeatureExtractor

        if not weights:
            raise InvalidOptionsError("the Whisper encoder needs weights=HUB_ID_OR_DIRECTORY")
        fe = from_pretrained(WhisperFeatureExtractor, weights, allow_download=allow_download,
                             what="Whisper feature extractor", safetensors=False)
        return cls(fe, _config(WhisperConfig, weights, allow_download, "Whisper config"), pool_stride)

    def reload_options(self) -> dict[str, Any]:
        return {"pool_stride": self.pool_stride}

    def _prepare_windows(self, windows: list[np.ndarray]) -> tuple[list[Any], list[int]]:
        out = self.feature_extractor(
            windows, sampling_rate=self.sampling_rate, return_attention_mask=True, return_tensors="np"
        )
        feats = out["input_features"].astype(np.float32)  # (windows, mels, frames)
        mel_frames = [int(f) for f in out["attention_mask"].sum(axis=1)]  # real mel frames per window
        frames = [_whisper_frames(f) for f in mel_frames]
        return list(zip(feats, frames)), [math.ceil(f / self.pool_stride) for f in frames]

    def _collate_windows(self, windows: list[tuple[np.ndarray, int]]) -> tuple[dict[str, torch.Tensor], int]:
        feats = torch.from_numpy(np.stack([f for f, _ in windows]))  # (windows, mels, frames)
        real = torch.tensor([n for _, n in windows])
        tensors = {"input_features": feats}
        if self.pool_stride > 1:  # only the masked pool reads it (an unused input would drop out of an ONNX graph)
            tensors["frame_mask"] = torch.arange(self.frames)[None, :] < real[:, None]  # (windows, frames)
        return tensors, math.ceil(self.frames / self.pool_stride)


class WhisperAudioEncoder(AudioEncoder):
    """Whisper's encoder: log-mel (``WhisperFeatureExtractor``) → conv stem → transformer.

    50 tokens per second of audio (25 with ``pool_stride=2``); windows of the
    feature extractor's ``chunk_length`` (30 s).  Whisper always sees a full
    padded window; the tokens of the padding are dropped.  ``save_pretrained(dir)``
    writes the encoder alone (``WhisperEncoder``, safetensors) and the feature extractor;
    ``whisper-base`` with ``weights=dir`` reloads it.
    """

    reload_as = "whisper-base"

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
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if model is None:
            if not weights:
                raise InvalidOptionsError("the Whisper encoder needs weights=HUB_ID_OR_DIRECTORY")
            feature_extractor = from_pretrained(
                WhisperFeatureExtractor, weights, allow_download=allow_download, what="Whisper feature extractor", safetensors=False
            )
            if _architecture(weights) == "WhisperEncoder":  # written by save_pretrained below: the encoder alone
                model = _load(WhisperEncoder, weights, allow_download, "Whisper")
            else:
                model = _load(WhisperModel, weights, allow_download, "Whisper").get_encoder()
        self.weights = weights
        self.encoder = model.eval()  # WhisperEncoder
        self.item_processor = WhisperAudioProcessor(feature_extractor, model.config, pool_stride)
        self.dim = int(model.config.d_model)
        geometry = tuple((c.kernel_size[0], c.stride[0], c.padding[0]) for c in (model.conv1, model.conv2))
        if geometry != _WHISPER_CONVS:
            raise InvalidOptionsError(f"this Whisper encoder's conv stem {geometry} is not Whisper's {_WHISPER_CONVS}")

    @property
    def pool_stride(self) -> int:
        return self.item_processor.pool_stride

    @property
    def frames(self) -> int:
        return self.item_processor.frames

    def save_pretrained(self, directory: str | Path) -> Path:
        """The encoder (``config.json`` + ``model.safetensors``) and ``preprocessor_config.json``."""
        return _save_pretrained(self.encoder, self.item_processor, directory)

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


def _ssl_out_len(config: Any, samples: int) -> int:
    """Output frames of the conv feature encoder for ``samples`` (transformers'
    ``_get_feat_extract_output_lengths``, from the config alone)."""
    n = int(samples)
    for k, s in zip(config.conv_kernel, config.conv_stride):
        n = _conv_len(n, int(k), int(s))
    if getattr(config, "add_adapter", False):
        for _ in range(int(config.num_adapter_layers)):
            n = _conv_len(n, 1, int(config.adapter_stride))
    return n


class SSLAudioProcessor(AudioProcessor):
    """wav2vec2 / HuBERT input values (``Wav2Vec2FeatureExtractor``) per window; tokens follow the conv stack."""

    reload_as = "wav2vec2-base"

    def __init__(self, feature_extractor: Any, config: Any, window_seconds: float = 30.0) -> None:
        super().__init__(feature_extractor, config)
        if not hasattr(config, "conv_kernel") or not hasattr(config, "conv_stride"):
            raise InvalidOptionsError(
                f"{type(config).__name__} is not a wav2vec2-style model (needs a conv feature encoder); "
                "use a wav2vec2, HuBERT or WavLM checkpoint"
            )
        if getattr(config, "model_type", "") == "hubert":
            self.reload_as = "hubert-base"
        self.window_seconds = float(window_seconds)
        self.sampling_rate = int(feature_extractor.sampling_rate)
        # the receptive field of one output frame = the shortest audio that yields a token
        field = 1
        for k, s in reversed(list(zip(config.conv_kernel, config.conv_stride))):
            field = (field - 1) * s + k
        self.min_samples = int(field)
        self.window_samples = int(round(window_seconds * self.sampling_rate))
        if self.window_samples < self.min_samples:
            raise InvalidOptionsError(f"window_seconds={window_seconds} is shorter than one token ({field} samples)")

    @classmethod
    def from_options(cls, weights: str | None = None, window_seconds: float = 30.0, allow_download: bool | None = None,
                     **_: Any) -> "SSLAudioProcessor":
        """The feature extractor and config of ``weights`` (hub id or directory); no model weights load."""
        from transformers import AutoConfig, AutoFeatureExtractor

        if not weights:
            raise InvalidOptionsError("this encoder needs weights=HUB_ID_OR_DIRECTORY")
        fe = from_pretrained(AutoFeatureExtractor, weights, allow_download=allow_download,
                             what="audio feature extractor", safetensors=False)
        return cls(fe, _config(AutoConfig, weights, allow_download, "wav2vec2/HuBERT config"), window_seconds)

    def reload_options(self) -> dict[str, Any]:
        return {"window_seconds": self.window_seconds}

    def _out_len(self, samples: int) -> int:
        return _ssl_out_len(self.config, samples)

    def _prepare_windows(self, windows: list[np.ndarray]) -> tuple[list[Any], list[int]]:
        values = [
            np.asarray(self.feature_extractor(w, sampling_rate=self.sampling_rate, return_tensors="np")["input_values"][0],
                       dtype=np.float32)
            for w in windows
        ]
        return values, [self._out_len(len(w)) for w in windows]

    def _collate_windows(self, windows: list[np.ndarray]) -> tuple[dict[str, torch.Tensor], int]:
        batch = self.feature_extractor.pad(
            [{"input_values": w} for w in windows], padding=True, return_attention_mask=True, return_tensors="pt"
        )
        values = batch["input_values"].float()  # (windows, samples)
        return {"input_values": values, "attention_mask": batch["attention_mask"].long()}, self._out_len(values.shape[1])


class SSLAudioEncoder(AudioEncoder):
    """wav2vec2 / HuBERT (any ``AutoModel`` with a conv feature encoder): one token per 20 ms.

    Tokens per window follow the conv stack exactly (``model._get_feat_extract_output_lengths``):
    49 per second at 16 kHz for the base models.  Padding is masked in the
    transformer (``attention_mask``) and, for ``feat_extract_norm="group"``
    checkpoints, in the first conv layer's GroupNorm too, so batching never
    changes an item's tokens.  ``save_pretrained(dir)`` writes the model (safetensors)
    and the feature extractor; ``wav2vec2-base`` / ``hubert-base`` with ``weights=dir`` reload it.
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
        self.item_processor = SSLAudioProcessor(feature_extractor, model.config, window_seconds)
        self.reload_as = self.item_processor.reload_as
        self.dim = int(model.config.hidden_size)
        layers = model.feature_extractor.conv_layers
        #: True when the first conv layer normalises over time (GroupNorm): padding must be masked there
        self.masked_norm = isinstance(getattr(layers[0], "layer_norm", None), nn.GroupNorm)
        if self.masked_norm and not isinstance(layers[0], _MaskedGroupNormConv):
            cfg = model.config
            layers[0] = _MaskedGroupNormConv(layers[0], int(cfg.conv_kernel[0]), int(cfg.conv_stride[0]))

    def _out_len(self, samples: int) -> int:
        return self.item_processor._out_len(samples)

    def save_pretrained(self, directory: str | Path) -> Path:
        """The model (``config.json`` + ``model.safetensors``) and ``preprocessor_config.json``."""
        return _save_pretrained(self.model, self.item_processor, directory)

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
class ClapAudioProcessor(AudioProcessor):
    """CLAP's mel (``ClapFeatureExtractor``, ``repeatpad``) per window; a fixed token grid per window."""

    reload_as = "clap-htsat"

    def __init__(self, feature_extractor: Any, config: Any) -> None:
        super().__init__(feature_extractor, config)
        self.sampling_rate = int(feature_extractor.sampling_rate)
        self.window_samples = int(feature_extractor.nb_max_samples)
        self.fast_log_mel = True  # False: the extractor's own numpy path (the same values, ~2.5x slower)
        self._spectrogram: Any = None  # with _mel_filters: built on first use (importing torchaudio)
        self._mel_filters: torch.Tensor | None = None
        side = config.spec_size // 2 ** (len(config.depths) - 1)
        stride = config.patch_stride if isinstance(config.patch_stride, (list, tuple)) else (config.patch_stride,) * 2
        self.frames = int((side // stride[0]) * (side // stride[1]))
        mel_frames = self.window_samples // feature_extractor.hop_length + 1
        most = config.spec_size * (config.spec_size // config.num_mel_bins)  # spec_size * freq_ratio
        if mel_frames > most:
            raise InvalidOptionsError(
                f"CLAP windows of {feature_extractor.max_length_s} s give {mel_frames} mel frames; "
                f"the audio tower takes at most {most}"
            )

    @classmethod
    def from_options(cls, weights: str | None = None, allow_download: bool | None = None, **_: Any) -> "ClapAudioProcessor":
        """The feature extractor and audio config of ``weights`` (hub id or directory); no model weights load."""
        from transformers import ClapAudioConfig, ClapFeatureExtractor

        if not weights:
            raise InvalidOptionsError("the CLAP encoder needs weights=HUB_ID_OR_DIRECTORY")
        fe = from_pretrained(ClapFeatureExtractor, weights, allow_download=allow_download,
                             what="CLAP feature extractor", safetensors=False)
        return cls(fe, _config(ClapAudioConfig, weights, allow_download, "CLAP audio config"))

    def _prepare_windows(self, windows: list[np.ndarray]) -> tuple[list[Any], list[int]]:
        fe = self.feature_extractor
        if self.fast_log_mel and fe.padding == "repeatpad" and all(len(w) <= self.window_samples for w in windows):
            feats = self._log_mel(windows)
        else:
            out = fe(windows, sampling_rate=self.sampling_rate, truncation="rand_trunc", return_tensors="np")
            feats = np.asarray(out["input_features"], dtype=np.float32)  # (windows, channels, frames, mels)
        return list(feats), [self.frames] * len(windows)

    def _log_mel(self, windows: list[np.ndarray]) -> np.ndarray:
        """``ClapFeatureExtractor``'s log-mel of windows of at most ``max_length_s`` (``truncation="rand_trunc"``,
        ``padding="repeatpad"``): (windows, 1, frames, mels) float32.

        The extractor's steps (transformers' numpy ``spectrogram``: periodic Hann window, centred with
        reflect padding, power 2, its own Slaney filter bank, floor 1e-10, dB) with the STFT of
        ``torchaudio.transforms.Spectrogram`` in float64 instead of a Python loop of one ``np.fft.rfft`` per
        frame: 14 ms instead of 37 ms per 10 s window at 48 kHz (2 threads).  The window is float64 too: a
        float32 one leaks its rounding into bins 120 dB below a peak (0.03 dB off there).  The result is the
        extractor's to float32 rounding (tests/test_onnx_audio_fused.py).
        """
        import torchaudio

        fe, n = self.feature_extractor, self.window_samples
        if self._spectrogram is None:
            self._spectrogram = torchaudio.transforms.Spectrogram(
                n_fft=int(fe.fft_window_size), hop_length=int(fe.hop_length), window_fn=torch.hann_window,
                wkwargs={"dtype": torch.float64}, power=None, center=True, pad_mode="reflect")
            self._mel_filters = torch.from_numpy(np.asarray(fe.mel_filters_slaney, dtype=np.float64).T.copy())  # (mels, freqs)
        waves = torch.zeros(len(windows), n, dtype=torch.float64)
        for row, w in zip(waves, windows):  # repeatpad: whole repeats of the clip, then zeros (as the extractor pads)
            w = torch.from_numpy(np.asarray(w, dtype=np.float64))
            row[: n // len(w) * len(w)] = w.repeat(n // len(w))
        with torch.no_grad():
            power = self._spectrogram(waves).abs().square()  # (windows, freqs, frames)
            mel = torch.matmul(self._mel_filters, power)  # (windows, mels, frames)
            db = torchaudio.functional.amplitude_to_DB(mel, multiplier=10.0, amin=1e-10, db_multiplier=0.0)
        return db.transpose(1, 2).float().unsqueeze(1).numpy()

    def _collate_windows(self, windows: list[np.ndarray]) -> tuple[dict[str, torch.Tensor], int]:
        return {"input_features": torch.from_numpy(np.stack(windows))}, self.frames


class ClapAudioEncoder(AudioEncoder):
    """CLAP's audio tower (HTSAT): ``ClapFeatureExtractor`` mel → Swin → a fixed token grid per window.

    Tokens are the last hidden states of the audio tower before its pooling
    (``ClapAudioModel``'s ``last_hidden_state`` flattened): 64 x 768 per 10 s
    window for laion/clap-htsat-unfused.  ``pooled()`` (mean) equals the
    tower's own average pool.  Short clips are tiled to the window
    (``repeatpad``), so every token is real.  ``is_longer`` is always false:
    a window never exceeds ``max_length_s``, so no random crop or fusion occurs.
    ``save_pretrained(dir)`` writes the tower alone (``ClapAudioModel``, safetensors) and the
    feature extractor; ``clap-htsat`` with ``weights=dir`` reloads it.
    """

    reload_as = "clap-htsat"

    def __init__(
        self,
        weights: str | None = None,
        allow_download: bool | None = None,
        *,
        model: Any = None,
        feature_extractor: Any = None,
    ) -> None:
        super().__init__()
        from transformers import ClapAudioModel, ClapAudioModelWithProjection, ClapFeatureExtractor

        if model is None:
            if not weights:
                raise InvalidOptionsError("the CLAP encoder needs weights=HUB_ID_OR_DIRECTORY")
            feature_extractor = from_pretrained(
                ClapFeatureExtractor, weights, allow_download=allow_download, what="CLAP feature extractor", safetensors=False
            )
            if _architecture(weights) == "ClapAudioModel":  # written by save_pretrained below: the tower alone
                model = _load(ClapAudioModel, weights, allow_download, "CLAP audio")
            else:
                model = _load(ClapAudioModelWithProjection, weights, allow_download, "CLAP audio")
        self.weights = weights
        self.audio = (model.audio_model if hasattr(model, "audio_model") else model).eval()  # ClapAudioModel
        self.item_processor = ClapAudioProcessor(feature_extractor, self.audio.config)
        self.dim = int(self.audio.audio_encoder.norm.normalized_shape[0])
        tower = self.audio.audio_encoder
        frames = self.item_processor.window_samples // int(feature_extractor.hop_length) + 1
        # reshape_mel2img stretches every window's frames to spec_size * freq_ratio with a bicubic
        # interpolate (align_corners=True), after the per-mel-bin BatchNorm.  Every window has the same
        # frame count, so that stretch is a fixed linear map over time: torch's own bicubic applied to the
        # identity gives its (width, frames) matrix, and a MatMul applies it before the tower (the tower
        # then skips its interpolate; BatchNorm is affine per mel bin, so the order does not matter).
        # Same values as the interpolate (to float rounding) on both runtimes; exported, a MatMul instead
        # of ONNX Runtime's single-threaded cubic Resize (19.6 ms of a 4 x 10 s batch's 364 ms, vs 3 ms).
        width = int(tower.spec_size * tower.freq_ratio)
        stretch = None
        if frames < width:
            # in the tower's dtype: the interpolate computes its source positions in it (float32 here)
            eye = torch.eye(frames, dtype=next(self.audio.parameters()).dtype)[None, None]  # (1, 1, frames, frames)
            stretch = nn.functional.interpolate(eye, (width, frames), mode="bicubic", align_corners=True)[0, 0]
        self.register_buffer("_stretch", stretch, persistent=False)

    @property
    def frames(self) -> int:
        return self.item_processor.frames

    def save_pretrained(self, directory: str | Path) -> Path:
        """The audio tower (``config.json`` + ``model.safetensors``) and ``preprocessor_config.json``."""
        return _save_pretrained(self.audio, self.item_processor, directory)

    def forward(
        self,
        input_features: torch.Tensor,  # (windows, channels, frames, mels)
        gather: torch.Tensor,  # (batch, tokens)
        token_mask: torch.Tensor,  # (batch, tokens)
    ) -> TokenEmbeddings:
        is_longer = torch.zeros(input_features.shape[0], 1, dtype=torch.bool, device=input_features.device)
        if self._stretch is not None and input_features.shape[2] == self._stretch.shape[1]:
            input_features = torch.matmul(self._stretch.to(input_features.dtype), input_features)  # (windows, 1, width, mels)
        grid = self.audio(input_features=input_features, is_longer=is_longer).last_hidden_state  # (windows, dim, h, w)
        hidden = grid.flatten(2).transpose(1, 2)  # (windows, h * w, dim)
        return self._assemble(hidden, gather, token_mask)
