"""Image modality for modality-hub: vision towers through transformers.

Encoders: ``clip-vit-b32`` (default), ``clip-vit-l14-336`` (LLaVA-1.5's tower:
layer -2, CLS dropped), ``siglip-base``, ``vit-base``, ``dinov2-small``,
``hf-vision`` (any CLIP/SigLIP/ViT/DINOv2 checkpoint you name with ``weights=``)
and untrained offline presets ``tiny-clip``, ``tiny-siglip``, ``tiny-vit``,
``tiny-dinov2``.
"""

from __future__ import annotations

from hub import EncoderSpec, Modality, hookimpl

from ._encoder import (
    PRESETS,
    TINY,
    HFVisionEncoder,
    TinyVisionOptions,
    VisionOptions,
    VisionProcessor,
    tiny_vision,
    tiny_vision_processor,
)
from ._items import ACCEPTS, EXTENSIONS, example_images, is_image, sample_image

__all__ = [
    "HFVisionEncoder", "VisionOptions", "VisionProcessor", "example_images", "tiny_vision", "tiny_vision_processor", "is_image",
]


@hookimpl
def register_modalities(register):
    register(
        Modality(
            name="image",
            accepts=ACCEPTS,
            detect=is_image,
            extensions=EXTENSIONS,
            default_encoder="clip-vit-b32",
            demo_encoder="tiny-clip",
            sample=sample_image,
            examples=example_images,
            description="Still images (photos, drawings, screenshots)",
        )
    )


def _real(preset: dict, build=HFVisionEncoder):
    def factory(**opts):
        merged = {k: v for k, v in preset.items() if k in VisionOptions.model_fields}
        merged.update({k: v for k, v in opts.items() if v is not None})
        return build(**merged)

    return factory


def _tiny(family: str, build=tiny_vision):
    return lambda **opts: build(family, **opts)


@hookimpl
def register_encoders(register):
    for name, preset in PRESETS.items():
        register(EncoderSpec(
            name=name, modality="image", factory=_real(preset), options=VisionOptions,
            processor=_real(preset, VisionProcessor.from_options),
            weights=preset["weights"], license=preset["license"], description=preset["description"],
        ))
    register(EncoderSpec(
        name="hf-vision", modality="image", factory=lambda **o: HFVisionEncoder(**o), options=VisionOptions,
        processor=lambda **o: VisionProcessor.from_options(**o),
        weights=None, license="depends on weights",
        description="any CLIP / SigLIP / ViT / DINOv2 checkpoint: pass weights=HUB_ID_OR_DIR",
    ))
    for family in TINY:
        register(EncoderSpec(
            name=f"tiny-{family}", modality="image", factory=_tiny(family), options=TinyVisionOptions,
            processor=_tiny(family, tiny_vision_processor),
            weights=None, license="apache-2.0", pretrained=False,
            description=f"untrained 2-layer {family} vision tower on 32x32 inputs (tests, demos)",
        ))
from ._augment import register_augmentations  # noqa: E402,F401  (pluggy finds the hook on this module)
