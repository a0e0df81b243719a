"""Backbone adapter for modality-hub: Hugging Face transformers causal LMs.

Registers the ``transformers`` backbone: any ``AutoModelForCausalLM`` + tokenizer
(Llama, Qwen2, Mistral, Phi, GPT-2, ...) from a hub id (local HF cache) or a local
directory, plus the offline presets ``tiny-llama``, ``tiny-qwen2`` and ``tiny-gpt2``
(random init, a byte-level BPE trained in-process; tests and demos only)::

    from hub import default_registry
    backbone = default_registry().backbone_spec("transformers").factory("tiny-llama")
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hub import BackboneSpec, EncoderSpec, hookimpl
from hub.errors import InvalidOptionsError

from ._backbone import HFBackbone, UnsupportedBackboneError, causal_lm_model_types, model_type_of
from ._tiny import TINY_FAMILIES, TinyBackboneOptions, tiny_backbone, tiny_tokenizer

__all__ = [
    "HFBackbone",
    "HFBackboneOptions",
    "TINY_PRESETS",
    "TinyBackboneOptions",
    "UnsupportedBackboneError",
    "create_backbone",
    "detect",
    "import_checkpoint",
    "tiny_backbone",
    "tiny_tokenizer",
]

#: preset name → tiny family
TINY_PRESETS: dict[str, str] = {f"tiny-{family}": family for family in TINY_FAMILIES}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class HFBackboneOptions(BaseModel):
    """Options for loading a pretrained causal LM."""

    model_config = ConfigDict(extra="forbid")

    allow_download: bool | None = Field(None, description="download missing weights (default: yes, unless HF_HUB_OFFLINE=1 or MODALITY_HUB_ALLOW_DOWNLOAD=0)")
    dtype: str | None = Field(None, description="'float32', 'bfloat16', 'float16' or 'auto' (default: the checkpoint's)")


def _validate(model: type[BaseModel], options: dict[str, Any], what: str) -> dict[str, Any]:
    try:
        return model(**options).model_dump()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(options)'}: {e['msg']}" for e in exc.errors())
        raise InvalidOptionsError(
            f"invalid options for backbone {what}: {problems}. Accepted options: {', '.join(model.model_fields)}"
        ) from None


def create_backbone(source: str, **options: Any) -> HFBackbone:
    """Build a backbone from a tiny preset name, a local directory or a hub id (local cache)."""
    family = TINY_PRESETS.get(str(source))
    if family is not None:
        return tiny_backbone(family, **_validate(TinyBackboneOptions, options, repr(source)))
    return HFBackbone.from_pretrained(source, **_validate(HFBackboneOptions, options, repr(source)))


def detect(source: str) -> bool:
    """True for the tiny presets, a directory holding a causal-LM config, or an ``org/name`` hub id."""
    source = str(source)
    if source in TINY_PRESETS:
        return True
    path = Path(source).expanduser()
    if path.is_dir():
        return model_type_of(path) in causal_lm_model_types()
    if path.exists():
        return False
    return bool(_HUB_ID.match(source))


@hookimpl
def register_backbones(register):
    register(
        BackboneSpec(
            name="transformers",
            factory=create_backbone,
            detect=detect,
            description=(
                "Hugging Face transformers causal LMs (Llama, Qwen2, Mistral, Phi, GPT-2): hub id or local "
                f"directory; offline presets {', '.join(TINY_PRESETS)}"
            ),
            importer=import_checkpoint,
            demo_source="tiny-llama",
        )
    )


def import_checkpoint(path: str, registry: Any = None, **options: Any):
    """``Hub.from_transformers``: a LLaVA or Qwen2-Audio checkpoint → ``MultimodalLM`` on ``registry``."""
    from .importers import from_transformers

    return from_transformers(path, registry=registry, **options)


class Qwen2AudioTowerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: str = Field(description="directory written by Qwen2AudioTowerEncoder.save_pretrained (inside a bundle)")


def _qwen2_audio_tower(weights: str):
    from .importers import Qwen2AudioTowerEncoder

    return Qwen2AudioTowerEncoder.from_pretrained(weights)


@hookimpl
def register_encoders(register):
    # reloads the audio tower that from_transformers() takes out of a Qwen2-Audio checkpoint
    register(EncoderSpec(
        name="qwen2-audio-tower", modality="audio", factory=_qwen2_audio_tower, options=Qwen2AudioTowerOptions,
        license="apache-2.0", description="Qwen2-Audio's audio tower (Whisper encoder + avg-pool), from a bundle",
    ))
