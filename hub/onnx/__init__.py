"""ONNX export of encoders (alone, or with their projector and pooling) and ONNX Runtime serving.

* :func:`export` (:mod:`hub.onnx.export`): ``model.onnx`` + ``manifest.json``, checked against PyTorch
  (:mod:`hub.onnx.parity`);
* :class:`OnnxEncoder` (:mod:`hub.onnx.runtime`): the plugin's ``prepare``/``collate`` in Python, the
  graph in ONNX Runtime (IO binding on CUDA), the same :class:`~hub.tokens.TokenEmbeddings` out;
* :mod:`hub.onnx.optimize` (ONNX Runtime's fused kernels) and :mod:`hub.onnx.quantize` (int8);
* :func:`write_triton_repository` (:mod:`hub.onnx.triton`);
* :mod:`hub.onnx.bench`: torch eager against ONNX Runtime through the public path.
"""

from ..weights import state_dict_sha256
from .export import PARITY_BATCHES, PROBE_BATCHES, export
from .manifest import (
    FORMAT,
    MANIFEST_NAME,
    MODEL_NAME,
    ExportManifest,
    ParityCase,
    ParityReport,
    TensorSpec,
    file_sha256,
    load_manifest,
)
from .parity import FP16_MIN_COSINE, FP32_TOLERANCE, INT8_MIN_COSINE
from .runtime import OnnxEncoder
from .triton import TRITON_MAX_BATCH_SIZE, write_triton_repository

__all__ = [
    "ExportManifest",
    "FORMAT",
    "FP16_MIN_COSINE",
    "FP32_TOLERANCE",
    "INT8_MIN_COSINE",
    "MANIFEST_NAME",
    "MODEL_NAME",
    "OnnxEncoder",
    "PARITY_BATCHES",
    "PROBE_BATCHES",
    "ParityCase",
    "ParityReport",
    "TRITON_MAX_BATCH_SIZE",
    "TensorSpec",
    "export",
    "file_sha256",
    "load_manifest",
    "state_dict_sha256",
    "write_triton_repository",
]
