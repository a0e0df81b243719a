"""Importers: transformers multimodal checkpoints → :class:`hub.lm.MultimodalLM`.

A composite checkpoint is split into the hub's parts, with its weights reused as
they are, so the composed model gives the checkpoint's own logits:

* ``LlavaForConditionalGeneration`` → image encoder (``hub_image.HFVisionEncoder``
  over its vision tower, at ``vision_feature_layer``, CLS dropped for the
  ``default`` select strategy) + ``mlp`` projector (``multi_modal_projector``) +
  :class:`HFBackbone` (language model + ``lm_head``); placeholder ``<image>``.
* ``Qwen2AudioForConditionalGeneration`` → audio encoder
  (:class:`Qwen2AudioTowerEncoder`: ``WhisperFeatureExtractor`` log-mel, the
  Whisper-style encoder, its stride-2 average pool and final layer norm) +
  ``linear`` projector (``multi_modal_projector.linear``) + :class:`HFBackbone`;
  placeholder ``<|AUDIO|>`` between ``<|audio_bos|>`` / ``<|audio_eos|>``.

``from_transformers(path)`` picks the importer from ``config.model_type``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from hub import Encoder, TokenEmbeddings
from hub.errors import InvalidInputError, InvalidOptionsError, WeightsNotFoundError
from hub.lm import MultimodalLM, Projector, build_projector
from hub.weights import from_pretrained

from ._backbone import HFBackbone

__all__ = [
    "IMPORTERS",
    "Qwen2AudioTowerEncoder",
    "from_llava",
    "from_qwen2_audio",
    "from_transformers",
    "load_llava_projector",
    "projector_from_llava",
    "projector_from_qwen2_audio",
]


# -- shared helpers -------------------------------------------------------------------
def _is_path(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike))


def _load_model(cls: Any, path: Any, what: str, allow_download: bool | None) -> Any:
    """``cls.from_pretrained(path)`` (safetensors only); a checkpoint missing tensors is refused."""
    model, info = from_pretrained(cls, path, allow_download=allow_download, what=what, output_loading_info=True)
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        raise WeightsNotFoundError(
            f"{what} {os.fspath(path)!r} lacks {len(missing)} tensors of {cls.__name__} "
            f"(e.g. {', '.join(missing[:3])}); it would load partly random. Pass a complete "
            f"{cls.__name__} checkpoint (save_pretrained layout)"
        )
    return model.eval()


def _load_aux(cls: Any, path: Any, what: str, allow_download: bool | None, fix: str) -> Any:
    """A tokenizer / processor saved beside the checkpoint (no weights, so no safetensors rule)."""
    try:
        return from_pretrained(cls, path, allow_download=allow_download, what=what, safetensors=False)
    except WeightsNotFoundError as exc:
        raise WeightsNotFoundError(f"{exc}. {fix}") from exc


def _need(value: Any, what: str, importer: str) -> Any:
    if value is None:
        raise InvalidOptionsError(
            f"{importer}: a model object was given without its {what}; pass {what}=... "
            "(or import from the checkpoint directory, which holds it)"
        )
    return value


def _causal_lm(text_config: Any, language_model: nn.Module, lm_head: nn.Module) -> nn.Module:
    """The checkpoint's language model + ``lm_head`` as an ``AutoModelForCausalLM``, sharing their tensors.

    The wrapper is built on the meta device (no allocation) and its base model and
    head are replaced by the checkpoint's own modules: nothing is copied or re-initialized.
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        causal = AutoModelForCausalLM.from_config(text_config)
    setattr(causal, causal.base_model_prefix, language_model)
    causal.lm_head = lm_head
    left = [n for n, t in [*causal.named_parameters(), *causal.named_buffers()] if t.is_meta]
    if left:  # pragma: no cover - a causal-LM class with parts beyond base model + lm_head
        raise InvalidOptionsError(
            f"{type(causal).__name__} has parts beyond its base model and lm_head ({', '.join(left[:3])}); "
            "this importer cannot split it"
        )
    causal.config = language_model.config
    return causal.eval()


def _backbone(model: nn.Module, tokenizer: Any, name: str) -> HFBackbone:
    """:class:`HFBackbone` over ``model``'s language model and ``lm_head`` (the composite's ``model.model``)."""
    causal = _causal_lm(model.config.text_config, model.model.language_model, model.lm_head)
    causal.generation_config = copy.deepcopy(model.generation_config)
    return HFBackbone(model=causal, tokenizer=tokenizer, name=name)


def _plugin(module: str, distribution: str, what: str) -> Any:
    """Import a modality plugin lazily; a clear error names the distribution to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InvalidOptionsError(f"importing {what} needs the {module} plugin: pip install {distribution} ({exc})") from exc


# -- projector weights: LLaVA / Qwen2-Audio → hub projectors -----------------------------
def load_llava_projector(projector: Projector, projector_module: nn.Module) -> Projector:
    """Copy a transformers ``LlavaMultiModalProjector``'s weights into an ``mlp`` ``projector``.

    The parameter names are the same (``linear_1``, ``linear_2``), so this is a
    checked ``load_state_dict``; outputs are then bit-identical.  The LLaVA
    activation must be exact GELU (``projector_hidden_act="gelu"``).
    """
    if projector.kind != "mlp":
        raise InvalidOptionsError(f"a LLaVA projector loads into an 'mlp' projector; this one is {projector.kind!r}")
    act = getattr(projector_module, "act", None)
    probe = torch.linspace(-8.0, 8.0, 1025)
    with torch.no_grad():
        exact = act is not None and torch.equal(act(probe), nn.functional.gelu(probe))
    if not exact:
        raise InvalidOptionsError(
            f"the LLaVA projector's activation ({type(act).__name__}) is not exact GELU; mlp projectors use "
            "nn.GELU() as LLaVA's projector_hidden_act='gelu' does"
        )
    projector.load_torch_state(projector_module.state_dict(), source=type(projector_module).__name__)
    return projector


def projector_from_llava(projector_module: nn.Module) -> Projector:
    """An ``mlp`` projector equal to a transformers ``LlavaMultiModalProjector``."""
    l1, l2 = projector_module.linear_1, projector_module.linear_2
    projector = build_projector(
        "mlp", l1.in_features, l2.out_features, depth=2, hidden_dim=l1.out_features, bias=l1.bias is not None
    )
    return load_llava_projector(projector, projector_module)


def projector_from_qwen2_audio(
    projector_module: nn.Module, layer_norm: nn.LayerNorm | None = None, stride: int | None = None
) -> Projector:
    """A projector equal to Qwen2-Audio's ``multi_modal_projector`` (one ``linear``).

    With ``stride`` (the audio tower's ``avg_pooler``, 2) and optionally
    ``layer_norm`` (the audio tower's ``layer_norm``, applied after pooling),
    it is a ``pool`` projector that also does the tower's last two steps.
    Qwen2-Audio's ``AvgPool1d`` drops a trailing odd frame; ``pool`` keeps it
    as a window of one (ceil), so outputs agree on even lengths.
    """
    import math

    linear: nn.Linear = projector_module.linear
    if stride is None and layer_norm is None:
        projector = build_projector("linear", linear.in_features, linear.out_features, bias=linear.bias is not None)
        projector.load_torch_state(projector_module.state_dict(), source=type(projector_module).__name__)
        return projector
    projector = build_projector(
        "pool", linear.in_features, linear.out_features, stride=stride or 1,
        norm=layer_norm is not None, bias=linear.bias is not None,
    )
    state = {f"linear.{k}": v for k, v in linear.state_dict().items()}
    if layer_norm is not None:
        if not math.isclose(layer_norm.eps, 1e-5) or not layer_norm.elementwise_affine:
            raise InvalidOptionsError(
                f"pool projectors use LayerNorm(eps=1e-5, affine); got eps={layer_norm.eps}, "
                f"elementwise_affine={layer_norm.elementwise_affine}"
            )
        state.update({f"norm.{k}": v for k, v in layer_norm.state_dict().items()})
    projector.load_torch_state(state, source="Qwen2-Audio projector")
    return projector


# -- LLaVA ------------------------------------------------------------------------------
#: LLaVA's vision_feature_select_strategy → hub_image's cls_token
_SELECT = {"default": "drop", "full": "keep"}


def from_llava(
    path_or_model: Any,
    *,
    tokenizer: Any = None,
    image_processor: Any = None,
    allow_download: bool | None = None,
    name: str | None = None,
) -> MultimodalLM:
    """A ``LlavaForConditionalGeneration`` checkpoint (directory) or model → :class:`MultimodalLM`.

    ``image`` is plugged with the vision tower (``hub_image.HFVisionEncoder`` at the
    checkpoint's ``vision_feature_layer`` and select strategy), an ``mlp`` projector
    holding ``multi_modal_projector``'s weights, and placeholder ``<image>``.
    """
    HFVisionEncoder = _plugin("hub_image", "modality-hub-image", "a LLaVA checkpoint").HFVisionEncoder
    import transformers

    if _is_path(path_or_model):
        model = _load_model(transformers.LlavaForConditionalGeneration, path_or_model, "LLaVA checkpoint", allow_download)
        fix = "save the processor (LlavaProcessor / its tokenizer and image processor) into the checkpoint directory"
        tokenizer = tokenizer or _load_aux(transformers.AutoTokenizer, path_or_model, "LLaVA tokenizer", allow_download, fix)
        image_processor = image_processor or _load_aux(
            transformers.AutoImageProcessor, path_or_model, "LLaVA image processor", allow_download, fix
        )
        name = name or os.fspath(path_or_model)
    else:
        model = path_or_model.eval()
        _need(tokenizer, "tokenizer", "from_llava")
        _need(image_processor, "image_processor", "from_llava")
        name = name or getattr(model, "name_or_path", "") or "llava"
    config = model.config
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise InvalidOptionsError(
            f"LLaVA checkpoint {name!r}: vision_feature_layer {layer!r} concatenates several layers; "
            "the importer supports one layer (an int)"
        )
    strategy = config.vision_feature_select_strategy
    if strategy not in _SELECT:
        raise InvalidOptionsError(
            f"LLaVA checkpoint {name!r}: vision_feature_select_strategy {strategy!r}; expected one of {sorted(_SELECT)}"
        )
    base = model.model
    encoder = HFVisionEncoder(model=base.vision_tower, processor=image_processor, feature_layer=layer,
                              cls_token=_SELECT[strategy])
    if strategy == "default" and encoder.prefix_tokens != 1:
        raise InvalidOptionsError(
            f"LLaVA checkpoint {name!r}: the 'default' strategy drops the first token, but this "
            f"{encoder.family} tower has {encoder.prefix_tokens} prefix tokens"
        )
    encoder.name, encoder.weights = "llava-vision", name
    projector = projector_from_llava(base.multi_modal_projector).eval()  # checked copy, exact GELU
    backbone = _backbone(model, tokenizer, name)
    lm = MultimodalLM(backbone)
    lm.plug("image", encoder=encoder, projector=projector, placeholder="<image>")
    return lm


# -- Qwen2-Audio ------------------------------------------------------------------------
@dataclass(frozen=True)
class PreparedClip:
    """One clip after ``prepare``: log-mel features padded to the encoder's window and its real mel frames."""

    features: torch.Tensor  # (mels, frames)
    mel_frames: int


class Qwen2AudioTowerEncoder(Encoder):
    """Qwen2-Audio's audio tower as a hub encoder, computing exactly what the model computes.

    ``WhisperFeatureExtractor`` log-mel, padded to the window (``max_source_positions``
    × 2 mel frames, 30 s for the released model); the Whisper-style encoder with
    padding frames masked out of attention; stride-2 average pool; final layer norm.
    Tokens per clip, from its real mel frames ``L`` (``_get_feat_extract_output_lengths``):
    ``((L - 1) // 2 + 1 - 2) // 2 + 1`` — 25 per second.  A clip longer than the
    window is refused (no silent truncation).

    Items are decoded, mixed down and resampled by the audio plugin
    (``modality-hub-audio``, imported when first needed).
    """

    modality = "audio"
    #: the registered encoder name that reloads save_pretrained() output (for bundles; see the report)
    reload_as = "qwen2-audio-tower"
    accepts = (
        "path or bytes of a .wav, .flac, .ogg or .mp3 file",
        "{'array': waveform, 'sampling_rate': Hz} or (waveform, sample_rate)",
    )

    def __init__(self, tower: nn.Module, feature_extractor: Any, name: str = "qwen2-audio-encoder",
                 weights: str | None = None) -> None:
        super().__init__()
        self.tower = tower.eval()  # Qwen2AudioEncoder
        self.processor = feature_extractor
        self.name = name
        self.weights = weights
        self.dim = int(tower.config.d_model)
        self.sampling_rate = int(feature_extractor.sampling_rate)
        self.window_samples = int(feature_extractor.n_samples)
        self.window_frames = int(tower.config.max_source_positions) * tower.conv1.stride[0] * tower.conv2.stride[0]
        if int(feature_extractor.nb_max_frames) != self.window_frames:
            raise InvalidOptionsError(
                f"the feature extractor gives {feature_extractor.nb_max_frames} mel frames per "
                f"{feature_extractor.chunk_length} s window, the audio tower expects {self.window_frames} "
                f"(max_source_positions {tower.config.max_source_positions} x 2); use a matching chunk_length"
            )

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], allow_download: bool | None = None) -> "Qwen2AudioTowerEncoder":
        """Reload what :meth:`save_pretrained` wrote (safetensors only)."""
        from transformers import WhisperFeatureExtractor
        from transformers.models.qwen2_audio import Qwen2AudioEncoder

        tower = _load_model(Qwen2AudioEncoder, directory, "Qwen2-Audio audio tower", allow_download)
        features = _load_aux(WhisperFeatureExtractor, directory, "Qwen2-Audio feature extractor", allow_download,
                             "write it with Qwen2AudioTowerEncoder.save_pretrained")
        return cls(tower, features, weights=os.fspath(directory))

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write the audio tower (safetensors) and the feature extractor to ``directory``."""
        self.tower.save_pretrained(directory)
        self.processor.save_pretrained(directory)

    # -- preprocess ------------------------------------------------------------------
    def prepare(self, item: Any, index: int = 0) -> PreparedClip:
        load_waveform = _plugin("hub_audio", "modality-hub-audio", "audio items").load_waveform
        wave = load_waveform(item, self.sampling_rate, lambda problem: self.invalid(index, item, problem)).samples
        if len(wave) > self.window_samples:
            raise self.invalid(
                index, item,
                f"audio is {len(wave) / self.sampling_rate:.2f} s ({len(wave)} samples); this encoder takes at most "
                f"{self.window_samples / self.sampling_rate:.2f} s ({self.window_samples} samples): cut it into clips",
            )
        out = self.processor(
            wave, sampling_rate=self.sampling_rate, return_attention_mask=True, padding="max_length",
            return_tensors="pt",
        )
        return PreparedClip(out["input_features"][0].float(), int(out["attention_mask"][0].sum()))

    def num_tokens(self, prepared: PreparedClip) -> int:
        _, tokens = self.tower._get_feat_extract_output_lengths(torch.tensor(prepared.mel_frames))
        return int(tokens)

    def collate(self, prepared: Sequence[PreparedClip]) -> dict[str, torch.Tensor]:
        return {
            "input_features": torch.stack([p.features for p in prepared]),  # (batch, mels, frames)
            "mel_frames": torch.tensor([p.mel_frames for p in prepared], dtype=torch.long),  # (batch,)
        }

    # -- forward -----------------------------------------------------------------------
    def forward(self, input_features: torch.Tensor, mel_frames: torch.Tensor) -> TokenEmbeddings:
        """(batch, mels, frames), (batch,) → tokens (batch, positions / 2, dim), as Qwen2AudioModel.forward."""
        from transformers.masking_utils import create_bidirectional_mask

        conv_len, out_len = self.tower._get_feat_extract_output_lengths(mel_frames)  # (batch,), (batch,)
        frames = (input_features.shape[-1] - 2) // 2 + 1  # conv2 output frames of the window
        positions = torch.arange(frames, device=input_features.device)
        frame_mask = (positions[None, :] < conv_len[:, None]).long()  # (batch, frames)
        dummy = torch.zeros(input_features.shape[0], frames, 1, dtype=self.tower.conv1.weight.dtype,
                            device=input_features.device)
        attention = create_bidirectional_mask(config=self.tower.config, inputs_embeds=dummy, attention_mask=frame_mask)
        hidden = self.tower(input_features, attention_mask=attention).last_hidden_state  # (batch, frames / 2, dim)
        steps = torch.arange(hidden.shape[1], device=hidden.device)
        mask = steps[None, :] < out_len[:, None]  # (batch, frames / 2)
        return self.tokens(hidden * mask.unsqueeze(-1).to(hidden.dtype), mask)


def from_qwen2_audio(
    path_or_model: Any,
    *,
    tokenizer: Any = None,
    feature_extractor: Any = None,
    allow_download: bool | None = None,
    name: str | None = None,
) -> MultimodalLM:
    """A ``Qwen2AudioForConditionalGeneration`` checkpoint (directory) or model → :class:`MultimodalLM`.

    ``audio`` is plugged with :class:`Qwen2AudioTowerEncoder`, a ``linear``
    projector holding ``multi_modal_projector.linear``, placeholder ``<|AUDIO|>``
    and the ``<|audio_bos|>`` / ``<|audio_eos|>`` boundaries when the tokenizer has them.
    """
    _plugin("hub_audio", "modality-hub-audio", "a Qwen2-Audio checkpoint")
    import transformers

    if _is_path(path_or_model):
        model = _load_model(transformers.Qwen2AudioForConditionalGeneration, path_or_model, "Qwen2-Audio checkpoint",
                            allow_download)
        fix = "save the processor (Qwen2AudioProcessor / its tokenizer and WhisperFeatureExtractor) into the directory"
        tokenizer = tokenizer or _load_aux(transformers.AutoTokenizer, path_or_model, "Qwen2-Audio tokenizer",
                                           allow_download, fix)
        feature_extractor = feature_extractor or _load_aux(
            transformers.WhisperFeatureExtractor, path_or_model, "Qwen2-Audio feature extractor", allow_download, fix
        )
        name = name or os.fspath(path_or_model)
    else:
        model = path_or_model.eval()
        _need(tokenizer, "tokenizer", "from_qwen2_audio")
        _need(feature_extractor, "feature_extractor", "from_qwen2_audio")
        name = name or getattr(model, "name_or_path", "") or "qwen2-audio"
    base = model.model
    encoder = Qwen2AudioTowerEncoder(base.audio_tower, feature_extractor, weights=name)
    projector = projector_from_qwen2_audio(base.multi_modal_projector).eval()  # linear, checked copy
    backbone = _backbone(model, tokenizer, name)
    lm = MultimodalLM(backbone)
    bounds = {k: t for k, t in (("start", "<|audio_bos|>"), ("end", "<|audio_eos|>")) if backbone.token_id(t) is not None}
    lm.plug("audio", encoder=encoder, projector=projector, placeholder="<|AUDIO|>", **bounds)
    return lm


# -- dispatch ---------------------------------------------------------------------------
IMPORTERS: dict[str, Callable[..., MultimodalLM]] = {
    "llava": from_llava,
    "qwen2_audio": from_qwen2_audio,
}


def from_transformers(path: str | os.PathLike[str], registry: Any = None, **kwargs: Any) -> MultimodalLM:
    """Import a transformers multimodal checkpoint directory, chosen by its ``config.model_type``
    (the returned model plugs and detects items through ``registry``, default the process-wide one)."""
    import transformers

    config = from_pretrained(transformers.AutoConfig, path, allow_download=kwargs.get("allow_download"),
                             what="checkpoint config", safetensors=False)
    importer = IMPORTERS.get(config.model_type)
    if importer is None:
        raise InvalidInputError(
            f"{os.fspath(path)!r} is a {config.model_type!r} checkpoint; the transformers importer supports "
            f"{', '.join(sorted(IMPORTERS))}"
        )
    lm = importer(path, **kwargs)
    if registry is not None:
        lm.registry = registry
    return lm
