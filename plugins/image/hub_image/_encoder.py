"""Vision towers (CLIP, SigLIP, ViT, DINOv2) as image encoders: one token per patch."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from hub import Encoder, TokenEmbeddings
from hub.errors import InvalidOptionsError
from hub.processor import Processor
from hub.weights import from_pretrained

if TYPE_CHECKING:  # pragma: no cover
    from hub.train.masked import MaskedBatch

from ._items import ACCEPTS, ImageItemError, to_rgb


@dataclass(frozen=True)
class Family:
    model: str  # transformers class name of the vision tower
    config: str  # its config class
    processor: str  # the image processor class the tiny preset builds
    prefix_tokens: int  # CLS-like tokens before the patches (registers added from the config)


FAMILIES = {
    "clip": Family("CLIPVisionModel", "CLIPVisionConfig", "CLIPImageProcessor", 1),
    "siglip": Family("SiglipVisionModel", "SiglipVisionConfig", "SiglipImageProcessor", 0),
    "vit": Family("ViTModel", "ViTConfig", "ViTImageProcessor", 1),
    "dinov2": Family("Dinov2Model", "Dinov2Config", "BitImageProcessor", 1),
    "dinov2_with_registers": Family("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", "BitImageProcessor", 1),
}
#: config.model_type → family (full CLIP/SigLIP checkpoints load their vision tower)
MODEL_TYPES = {
    "clip": "clip", "clip_vision_model": "clip", "siglip": "siglip", "siglip_vision_model": "siglip",
    "vit": "vit", "dinov2": "dinov2", "dinov2_with_registers": "dinov2_with_registers",
}

PRESETS: dict[str, dict[str, Any]] = {
    "clip-vit-b32": dict(weights="openai/clip-vit-base-patch32", license="mit",
                         description="CLIP ViT-B/32 vision tower, 224px: 49 patch tokens + CLS, 768-d"),
    "clip-vit-l14-336": dict(weights="openai/clip-vit-large-patch14-336", license="mit", feature_layer=-2, cls_token="drop",
                             description="LLaVA-1.5's tower: CLIP ViT-L/14 at 336px, layer -2, CLS dropped: 576 tokens, 1024-d"),
    "siglip-base": dict(weights="google/siglip-base-patch16-224", license="apache-2.0",
                        description="SigLIP base/16 vision tower, 224px: 196 patch tokens (no CLS), 768-d"),
    "vit-base": dict(weights="google/vit-base-patch16-224-in21k", license="apache-2.0",
                     description="ViT-B/16 (ImageNet-21k), 224px: 196 patch tokens + CLS, 768-d"),
    "dinov2-small": dict(weights="facebook/dinov2-small", license="apache-2.0",
                         description="DINOv2 ViT-S/14, 224px crop: 256 patch tokens + CLS, 384-d"),
}
TINY = ("clip", "siglip", "vit", "dinov2")


class VisionOptions(BaseModel):
    """Options of the vision encoders."""

    model_config = ConfigDict(extra="forbid")

    weights: str | None = Field(None, description="hub id or local directory (save_pretrained layout)")
    feature_layer: int | None = Field(None, description="hidden_states index to take tokens from (LLaVA: -2); None = the model's final output")
    cls_token: Literal["keep", "drop"] = Field("keep", description="keep or drop CLS/register tokens (LLaVA 'default' = drop)")
    allow_download: bool | None = Field(None, description="download missing weights (default: yes, unless HF_HUB_OFFLINE=1 or MODALITY_HUB_ALLOW_DOWNLOAD=0)")


class TinyVisionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    image_size: int = Field(32, ge=8)
    patch_size: int = Field(8, ge=2)
    hidden_size: int = Field(32, ge=8)
    num_layers: int = Field(2, ge=1)
    feature_layer: int | None = None
    cls_token: Literal["keep", "drop"] = "keep"


class VisionProcessor(Processor):
    """Image → pixel values with the tower's image processor; the weights-free half of :class:`HFVisionEncoder`.

    Tokens per image = (H / patch) × (W / patch) after the processor's resize and crop, plus
    the CLS (and DINOv2 register) tokens unless ``cls_token="drop"``.
    """

    modality = "image"
    accepts = ACCEPTS
    reload_as = "hf-vision"

    def __init__(self, image_processor: Any, config: Any, family: str, cls_token: str = "keep",
                 feature_layer: int | None = None) -> None:
        self.image_processor = image_processor
        self.config = config  # the tower's config (small): patch size, registers, layers
        self.family = family
        self.patch_size = int(config.patch_size)
        self.prefix_tokens = FAMILIES[family].prefix_tokens + int(getattr(config, "num_register_tokens", 0) or 0)
        layers = int(config.num_hidden_layers)
        if feature_layer is not None and not -(layers + 1) <= feature_layer <= layers:
            raise InvalidOptionsError(f"feature_layer {feature_layer} out of range for a {layers}-layer model "
                                      f"(hidden_states has {layers + 1} entries)")
        self.feature_layer = feature_layer
        self.cls_token = cls_token

    @classmethod
    def from_options(cls, weights: str | None = None, feature_layer: int | None = None, cls_token: str = "keep",
                     allow_download: bool | None = None) -> "VisionProcessor":
        """The image processor and config of ``weights`` (hub id or directory); no model weights load."""
        import transformers

        if not weights:
            raise InvalidOptionsError("hf-vision needs weights=HUB_ID_OR_DIRECTORY")
        config = from_pretrained(transformers.AutoConfig, weights, allow_download=allow_download,
                                 what="vision config", safetensors=False)
        family = MODEL_TYPES.get(config.model_type)
        if family is None:
            raise InvalidOptionsError(f"{weights!r} is a {config.model_type!r} model; image encoders load {sorted(MODEL_TYPES)}")
        image_processor = from_pretrained(transformers.AutoImageProcessor, weights, allow_download=allow_download,
                                          what="image processor", safetensors=False)
        return cls(image_processor, getattr(config, "vision_config", config), family, cls_token, feature_layer)

    def prepare(self, item: Any, index: int = 0) -> torch.Tensor:
        try:
            img = to_rgb(item)
        except ImageItemError as exc:
            raise self.invalid(index, item, str(exc)) from None
        return self.image_processor(images=[img], return_tensors="pt")["pixel_values"][0]  # (3, H, W)

    def collate(self, prepared: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.stack(list(prepared))}  # (batch, 3, H, W)

    def num_tokens(self, prepared: torch.Tensor) -> int:
        h, w = int(prepared.shape[-2]), int(prepared.shape[-1])
        patches = (h // self.patch_size) * (w // self.patch_size)
        return patches + (self.prefix_tokens if self.cls_token == "keep" else 0)

    def save(self, directory: str | Path) -> dict[str, Any]:
        """The image processor's config and the tower's config; ``hf-vision`` reloads them with ``weights=``."""
        self.image_processor.save_pretrained(str(directory))
        self.config.save_pretrained(str(directory))
        return {"feature_layer": self.feature_layer, "cls_token": self.cls_token}


class HFVisionEncoder(Encoder):
    """Image → patch tokens from a transformers vision tower.

    Tokens per image = (H / patch) × (W / patch) after the processor's resize
    and crop, plus the CLS (and DINOv2 register) tokens unless
    ``cls_token="drop"``.  ``feature_layer`` picks ``hidden_states[k]`` as
    LLaVA does.
    """

    modality = "image"
    accepts = ACCEPTS
    reload_as = "hf-vision"

    def __init__(
        self,
        weights: str | None = None,
        feature_layer: int | None = None,
        cls_token: str = "keep",
        allow_download: bool | None = None,
        *,
        model: Any = None,
        processor: Any = None,
        family: str | None = None,
    ) -> None:
        super().__init__()
        import transformers

        if model is None:
            half = VisionProcessor.from_options(weights, feature_layer, cls_token, allow_download)
            cls = getattr(transformers, FAMILIES[half.family].model)
            model = from_pretrained(cls, weights, allow_download=allow_download, what="vision model")
        else:
            half = VisionProcessor(processor, model.config, family or MODEL_TYPES[model.config.model_type], cls_token,
                                   feature_layer)
        self.weights = weights
        self.family = half.family
        self.model = model.eval()
        self.item_processor = half
        self.dim = int(model.config.hidden_size)

    @property
    def processor(self) -> Any:
        """The transformers image processor."""
        return self.item_processor.image_processor

    @property
    def patch_size(self) -> int:
        return self.item_processor.patch_size

    @property
    def prefix_tokens(self) -> int:
        return self.item_processor.prefix_tokens

    @property
    def feature_layer(self) -> int | None:
        return self.item_processor.feature_layer

    @property
    def cls_token(self) -> str:
        return self.item_processor.cls_token

    # -- forward ------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor) -> TokenEmbeddings:  # (batch, 3, H, W)
        out = self.model(pixel_values=pixel_values, output_hidden_states=self.feature_layer is not None)
        hidden = out.last_hidden_state if self.feature_layer is None else out.hidden_states[self.feature_layer]
        if self.cls_token == "drop":
            hidden = hidden[:, self.prefix_tokens :]  # (batch, patches, dim)
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        return self.tokens(hidden, mask)

    def masked_batch(self, tensors: dict[str, torch.Tensor], ratio: float, gen: torch.Generator) -> "MaskedBatch":
        """Masked pretraining (SimMIM-style): zero a share of the pixel patches, predict their normalized pixels.

        The tower keeps one token per patch in row-major order after its prefix (CLS,
        registers) tokens, so masked patch ``j`` is token ``prefix + j``.
        """
        from hub.train.masked import MaskedBatch, masked_count

        pixels = tensors["pixel_values"]  # (batch, 3, H, W)
        p = int(self.patch_size)
        batch, channels = pixels.shape[:2]
        gh, gw = pixels.shape[-2] // p, pixels.shape[-1] // p
        n = gh * gw
        patches = pixels[:, :, : gh * p, : gw * p].reshape(batch, channels, gh, p, gw, p)
        patches = patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, n, p * p * channels)  # (batch, N, p*p*3)
        mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
        normed = (patches - mean) / (var + 1e-6).sqrt()  # MAE's norm_pix_loss target
        m = masked_count(ratio, n)
        masked = torch.rand(batch, n, generator=gen).argsort(1)[:, :m].to(pixels.device)  # (batch, M)
        hidden = torch.zeros(batch, n, dtype=torch.bool, device=pixels.device).scatter_(1, masked, True)
        grid = hidden.reshape(batch, 1, gh, 1, gw, 1).expand(batch, 1, gh, p, gw, p).reshape(batch, 1, gh * p, gw * p)
        inputs = pixels.clone()
        inputs[:, :, : gh * p, : gw * p] = inputs[:, :, : gh * p, : gw * p].masked_fill(grid, 0.0)
        rows = torch.div(masked, gw, rounding_mode="floor").float() / max(gh - 1, 1)
        cols = (masked % gw).float() / max(gw - 1, 1)
        offset = int(self.prefix_tokens) if getattr(self, "cls_token", "keep") == "keep" else 0
        return MaskedBatch(
            inputs={**tensors, "pixel_values": inputs},
            targets=normed.gather(1, masked.unsqueeze(-1).expand(-1, -1, normed.shape[-1])),  # (batch, M, p*p*3)
            target_mask=torch.ones(batch, m, dtype=torch.bool, device=pixels.device),
            queries=torch.stack([rows, cols], dim=-1),  # (batch, M, 2)
            token_index=masked + offset,
            loss="mse",
        )

    def reload_options(self) -> dict[str, Any]:
        return {"feature_layer": self.feature_layer, "cls_token": self.cls_token}

    def save_pretrained(self, directory: str) -> None:
        """Write model (safetensors) and processor so ``hf-vision`` with ``weights=directory`` reloads them."""
        self.model.save_pretrained(directory)
        self.item_processor.image_processor.save_pretrained(directory)


def _tiny_processor(family: str, size: int):
    import transformers

    square = {"height": size, "width": size}
    kwargs = {"size": {"shortest_edge": size}, "crop_size": square} if family == "clip" or family.startswith("dinov2") else {"size": square}
    name = FAMILIES[family].processor
    # transformers 5 keeps a PIL backend beside the torchvision one; torchvision is not required
    # (check before touching the lazy attribute, which warns when it falls back by itself)
    if importlib.util.find_spec("torchvision") is None and hasattr(transformers, f"{name}Pil"):
        name = f"{name}Pil"
    return getattr(transformers, name)(**kwargs)


def tiny_vision(
    family: str,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    feature_layer: int | None = None,
    cls_token: str = "keep",
) -> HFVisionEncoder:
    """An untrained vision tower of ``family`` on ``image_size`` inputs, built offline."""
    import transformers

    config = _tiny_config(family, image_size, patch_size, hidden_size, num_layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cls = getattr(transformers, FAMILIES[family].model)
        model = cls(config, add_pooling_layer=False) if family == "vit" else cls(config)
    enc = HFVisionEncoder(model=model.eval(), processor=_tiny_processor(family, image_size), family=family,
                          feature_layer=feature_layer, cls_token=cls_token)
    enc.weights = f"random-init(seed={seed})"
    return enc


def _tiny_config(family: str, image_size: int, patch_size: int, hidden_size: int, num_layers: int) -> Any:
    import transformers

    fam = FAMILIES[family]
    common = dict(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=2,
                  image_size=image_size, patch_size=patch_size)
    if family.startswith("dinov2"):
        return getattr(transformers, fam.config)(mlp_ratio=2, **common)
    return getattr(transformers, fam.config)(intermediate_size=hidden_size * 2, **common)


def tiny_vision_processor(
    family: str,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    feature_layer: int | None = None,
    cls_token: str = "keep",
) -> VisionProcessor:
    """The processor of :func:`tiny_vision` (its image processor and config; no weights)."""
    config = _tiny_config(family, image_size, patch_size, hidden_size, num_layers)
    return VisionProcessor(_tiny_processor(family, image_size), config, family, cls_token, feature_layer)
