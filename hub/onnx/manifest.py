"""The manifest of an ONNX export (``manifest.json`` beside ``model.onnx``) and the type tables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from .._atomic import recover
from .._manifest import file_options, file_sha256, inside, read_manifest
from ..errors import BundleError
from ..tokens import Pooling
from ..augment import check_transforms

__all__ = ["TensorSpec", "ParityCase", "ParityReport", "ExportManifest", "load_manifest", "file_sha256",
           "MANIFEST_NAME", "MODEL_NAME", "FORMAT", "WEIGHT_HASHES", "Dtype", "Device"]

MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.onnx"
FORMAT = 1
Dtype = Literal["fp32", "fp16", "int8"]
Device = Literal["cpu", "cuda", "auto"]
WEIGHT_HASHES = ("encoder", "projector")

# onnx element type names ↔ numpy / torch / Triton
_NUMPY = {
    "float32": np.float32, "float16": np.float16, "float64": np.float64, "int64": np.int64, "int32": np.int32,
    "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}
_TORCH = {
    "float32": torch.float32, "float16": torch.float16, "float64": torch.float64, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}
_TRITON = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "bfloat16": "TYPE_BF16",
    "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}

class TensorSpec(BaseModel):
    """One graph input or output: name, element type and shape (a ``str`` names a dynamic dimension)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    dtype: str
    shape: list[int | str]


class ParityCase(BaseModel):
    """ONNX Runtime vs PyTorch on one batch: per-item sizes (``encoder.length``) and the worst numbers."""

    model_config = ConfigDict(extra="forbid")

    batch: int
    sizes: list[int]
    max_abs_diff: float
    min_cosine: float


class ParityReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    passed: bool
    tolerance: float
    metric: Literal["max_abs_diff", "cosine"]
    cases: list[ParityCase]


class ExportManifest(BaseModel):
    """``manifest.json`` beside ``model.onnx``."""

    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT
    modality: str
    encoder: str
    encoder_options: dict[str, Any] = {}
    weights: str | None = None
    space: str
    pooling: Pooling = "mean"
    with_projector: bool = False
    projector: dict[str, Any] | None = None
    pooled: bool = False
    dtype: Dtype = "fp32"
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocess: dict[str, Any]
    hashes: dict[str, str]
    parity: ParityReport
    #: rewritten with ONNX Runtime's fused kernels (hub.onnx.optimize); older exports: False
    optimized: bool = False
    #: ``{contrib op: count}`` in the graph (Attention, SkipLayerNormalization, ...)
    fused_ops: dict[str, int] = {}
    #: int8 exports: what was quantized and what kept in float (hub.onnx.quantize)
    quantization: dict[str, Any] | None = None

def load_manifest(directory: str | os.PathLike) -> ExportManifest:
    """Read ``directory/manifest.json`` (a :class:`BundleError` naming the problem if it is not an export).

    The export is untrusted input: an interrupted write is repaired or reported torn
    (:func:`hub._atomic.recover`); the manifest is size-capped before parsing; every hashed file
    stays inside the export; options can only narrow permissions, and a ``weights`` path inside the
    export is resolved there (never outside: :func:`hub._manifest.file_options`)."""
    root = Path(directory)
    recover(root, marker=MANIFEST_NAME, what="an ONNX export")
    m = read_manifest(root / MANIFEST_NAME, ExportManifest, "an ONNX export", FORMAT,
                      "write one with hub.onnx.export or `mhub export`")
    where = str(root / MANIFEST_NAME)
    for rel in m.hashes:
        if rel not in WEIGHT_HASHES:
            inside(root, rel, f"{where}: hashes", must_exist=False)
    m.encoder_options = file_options(m.encoder_options, f"{where}: encoder_options", root=root)
    pre = dict(m.preprocess)
    for key in ("options", "processor_options"):
        if key in pre:
            if not isinstance(pre[key], dict):
                raise BundleError(f"{where}: preprocess.{key} must be an object")
            pre[key] = file_options(pre[key], f"{where}: preprocess.{key}", root=root)
    if pre.get("processor_dir") is not None:
        inside(root, str(pre["processor_dir"]), f"{where}: preprocess.processor_dir")
    if "transforms" in pre:
        pre["transforms"] = check_transforms(pre["transforms"], f"{where}: preprocess.transforms")
    m.preprocess = pre
    _check_external_data(root / MODEL_NAME, root, where)
    return m


def _check_external_data(model: Path, root: Path, where: str) -> None:
    """Tensors a ``model.onnx`` keeps in external files must name files inside the export (ONNX Runtime
    would otherwise read any file the ``location`` names).  A byte scan first: graphs without external
    data (the usual case) are not parsed."""
    if not model.is_file() or model.stat().st_size == 0:
        return
    import mmap

    with open(model, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm.find(b"location") < 0:
            return
    import onnx
    from onnx import external_data_helper as edh

    graph = onnx.load(str(model), load_external_data=False)
    tensors = edh._get_all_tensors(graph) if hasattr(edh, "_get_all_tensors") else graph.graph.initializer
    for t in tensors:
        if edh.uses_external_data(t):
            location = next((e.value for e in t.external_data if e.key == "location"), "")
            inside(root, location, f"{where}: model.onnx keeps tensor {t.name!r} in", must_exist=False)
