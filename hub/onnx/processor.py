"""An export's own preprocessing: the processor's files copied into the export, and rebuilt from there.

``export`` saves the encoder's :class:`~hub.processor.Processor` under ``<export>/processor/``
(tokenizer, preprocessor config) and records in the manifest's ``preprocess`` how to rebuild it;
:class:`~hub.onnx.OnnxEncoder` rebuilds the processor alone: the torch weights stay on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._registry import Registry
from ..encoder import Encoder
from ..errors import BundleError
from ..augment import TransformedProcessor
from ..processor import EncoderProcessor, Processor

__all__ = ["PROCESSOR_DIR", "save_processor", "load_processor"]

PROCESSOR_DIR = "processor"


def _processor_of(encoder: Encoder, name: str, options: dict[str, Any], registry: Registry) -> Processor | None:
    if encoder.item_processor is not None:
        return encoder.item_processor
    try:
        spec = registry.encoder_spec(name)
    except Exception:  # noqa: BLE001 - not registered: no separate processor
        return None
    return registry.create_processor(name, **options) if spec.processor is not None else None


def save_processor(encoder: Encoder, name: str, options: dict[str, Any], registry: Registry, staging: Path) -> dict[str, Any]:
    """Copy the encoder's processor files into ``staging/processor`` when it has any; the ``preprocess``
    entry of the manifest: the encoder and options that rebuild the processor, and where its files are."""
    preprocess: dict[str, Any] = {"encoder": name, "options": dict(options)}
    processor = _processor_of(encoder, name, options, registry)
    if processor is None or isinstance(processor, EncoderProcessor):
        return preprocess
    saved = processor.save(staging / PROCESSOR_DIR)
    if saved is not None:
        preprocess.update(processor=getattr(processor, "reload_as", None) or name, processor_options=saved,
                          processor_dir=PROCESSOR_DIR)
    return preprocess


def load_processor(preprocess: dict[str, Any], directory: Path, registry: Registry) -> Processor:
    """The processor of an export: from its own files when it carries them, else from the registry by
    encoder name and options (built alone when the plugin registers a processor factory)."""
    if preprocess.get("processor_dir"):
        folder = (directory / str(preprocess["processor_dir"])).resolve()
        if directory.resolve() not in folder.parents or not folder.is_dir():
            raise BundleError(f"{str(directory)!r}: the manifest's processor_dir {preprocess['processor_dir']!r} "
                              "is not a folder inside the export; re-export the model")
        options = {**dict(preprocess.get("processor_options") or {}), "weights": str(folder)}
        processor = registry.create_processor(str(preprocess["processor"]), **options)
    else:
        processor = registry.create_processor(str(preprocess["encoder"]), **dict(preprocess.get("options") or {}))
    processor.name = str(preprocess["encoder"])
    if preprocess.get("transforms"):
        processor = TransformedProcessor(processor, preprocess["transforms"], registry)
    return processor
