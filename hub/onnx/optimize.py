"""Fused graphs: onnxscript's ONNX Runtime fusion rewrites on an exported graph.

The ``torch.export`` exporter writes attention as the decomposed scaled-dot-product (MatMul,
Softmax, Where, ...), LayerNormalization and Gelu as separate ops.  onnxscript's
``onnxscript.rewriter.ort_fusions.optimize_for_ort`` recognises these dynamo-exported patterns
(ONNX Runtime's older ``onnxruntime.transformers.optimizer`` expects the TorchScript exporter's
BERT graph and fuses no attention here) and rewrites them into ONNX Runtime's contrib kernels:
``Attention`` / ``MultiHeadAttention``, ``SkipLayerNormalization``, ``BiasGelu`` / ``FastGelu``.
Encoders without transformer blocks (graphs, point clouds, convolutions) come out with constant
folding and nothing fused; the parity check then runs on the rewritten graph as on any other.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["fuse", "fused_ops", "CONTRIB_DOMAIN"]

#: ONNX Runtime's contrib-op domain: the fused kernels live there
CONTRIB_DOMAIN = "com.microsoft"


@contextmanager
def _quiet() -> Iterator[None]:
    """onnx_ir's passes log every step at INFO; keep the export's output to its own lines."""
    loggers = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def fused_ops(model_path: str | Path) -> dict[str, int]:
    """``{op type: count}`` of the ONNX Runtime contrib ops (``com.microsoft``) in a saved graph."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    counts = Counter(n.op_type for n in model.graph.node if n.domain == CONTRIB_DOMAIN)
    return dict(sorted(counts.items()))


def fuse(src: str | Path, dst: str | Path | None = None) -> dict[str, int]:
    """Rewrite ``src`` (in place unless ``dst``) with onnxscript's ORT fusions; the fused ops it then holds.

    Metadata and doc strings are cleared (the exporter's stack traces name local source paths).
    Raises what the rewriter raises; :func:`hub.onnx.export.export` keeps the unfused graph then.
    """
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    with _quiet():
        model = ir.load(str(src))
        model, _ = optimize_for_ort(model, clear_metadata=True)
        ir.save(model, str(dst or src))
    return fused_ops(dst or src)
