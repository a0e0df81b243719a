"""Vision towers (CLIP, SigLIP, ViT, DINOv2) as image encoders: one token per patch."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from hub import Encoder, TokenEmbeddings
from hub.errors import InvalidOptionsError
from hub.weights import from_pretrained

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
    allow_download: bool | None = None


class TinyVisionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    image_size: int = Field(32, ge=8)
    patch_size: int = Field(8, ge=2)
    hidden_size: int = Field(32, ge=8)
    num_layers: int = Field(2, ge=1)
    feature_layer: int | None = None
    cls_token: Literal["keep", "drop"] = "keep"


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
            if not weights:
                raise InvalidOptionsError("hf-vision needs weights=HUB_ID_OR_DIRECTORY")
            config = from_pretrained(transformers.AutoConfig, weights, allow_download=allow_download,
                                     what="vision config", safetensors=False)
            family = MODEL_TYPES.get(config.model_type)
            if family is None:
                raise InvalidOptionsError(
                    f"{weights!r} is a {config.model_type!r} model; image encoders load {sorted(MODEL_TYPES)}"
                )
            cls = getattr(transformers, FAMILIES[family].model)
            model = from_pretrained(cls, weights, allow_download=allow_download, what="vision model")
            processor = from_pretrained(transformers.AutoImageProcessor, weights, allow_download=allow_download,
                                        what="image processor", safetensors=False)
        self.weights = weights
        self.family = family or MODEL_TYPES[model.config.model_type]
        self.model = model.eval()
        self.processor = processor
        cfg = model.config
        self.patch_size = int(cfg.patch_size)
        self.prefix_tokens = FAMILIES[self.family].prefix_tokens + int(getattr(cfg, "num_register_tokens", 0) or 0)
        layers = int(cfg.num_hidden_layers)
        if feature_layer is not None and not -(layers + 1) <= feature_layer <= layers:
            raise InvalidOptionsError(f"feature_layer {feature_layer} out of range for a {layers}-layer model "
                                      f"(hidden_states has {layers + 1} entries)")
        self.feature_layer = feature_layer
        self.cls_token = cls_token
        self.dim = int(cfg.hidden_size)

    # -- preprocess --------------------------------------------------------------
    def prepare(self, item: Any, index: int = 0) -> torch.Tensor:
        try:
            img = to_rgb(item)
        except ImageItemError as exc:
            raise self.invalid(index, item, str(exc)) from None
        return self.processor(images=[img], return_tensors="pt")["pixel_values"][0]  # (3, H, W)

    def collate(self, prepared: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.stack(list(prepared))}  # (batch, 3, H, W)

    def num_tokens(self, prepared: torch.Tensor) -> int:
        h, w = int(prepared.shape[-2]), int(prepared.shape[-1])
        patches = (h // self.patch_size) * (w // self.patch_size)
        return patches + (self.prefix_tokens if self.cls_token == "keep" else 0)

    # -- forward ------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor) -> TokenEmbeddings:  # (batch, 3, H, W)
        out = self.model(pixel_values=pixel_values, output_hidden_states=self.feature_layer is not None)
        hidden = out.last_hidden_state if self.feature_layer is None else out.hidden_states[self.feature_layer]
        if self.cls_token == "drop":
            hidden = hidden[:, self.prefix_tokens :]  # (batch, patches, dim)
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        return self.tokens(hidden, mask)

    def reload_options(self) -> dict[str, Any]:
        return {"feature_layer": self.feature_layer, "cls_token": self.cls_token}

    def save_pretrained(self, directory: str) -> None:
        """Write model (safetensors) and processor so ``hf-vision`` with ``weights=directory`` reloads them."""
        self.model.save_pretrained(directory)
        self.processor.save_pretrained(directory)


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

    fam = FAMILIES[family]
    common = dict(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=2,
                  image_size=image_size, patch_size=patch_size)
    if family.startswith("dinov2"):
        config = getattr(transformers, fam.config)(mlp_ratio=2, **common)
    else:
        config = getattr(transformers, fam.config)(intermediate_size=hidden_size * 2, **common)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cls = getattr(transformers, fam.model)
        model = cls(config, add_pooling_layer=False) if family == "vit" else cls(config)
    enc = HFVisionEncoder(model=model.eval(), processor=_tiny_processor(family, image_size), family=family,
                          feature_layer=feature_layer, cls_token=cls_token)
    enc.weights = f"random-init(seed={seed})"
    return enc
