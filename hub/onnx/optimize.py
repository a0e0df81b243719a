"""Fused graphs: onnxscript's ONNX Runtime fusion rewrites on an exported graph.

The ``torch.export`` exporter writes attention as the decomposed scaled-dot-product (MatMul,
Softmax, Where, ...), LayerNormalization and Gelu as separate ops.  onnxscript's
``onnxscript.rewriter.ort_fusions.optimize_for_ort`` recognises these dynamo-exported patterns
(ONNX Runtime's older ``onnxruntime.transformers.optimizer`` expects the TorchScript exporter's
BERT graph and fuses no attention here) and rewrites them into ONNX Runtime's contrib kernels:
``Attention`` / ``MultiHeadAttention``, ``SkipLayerNormalization``, ``BiasGelu`` / ``FastGelu``.

``SkipLayerNormalization`` is then split back into ``Add`` + ``LayerNormalization`` (both still single
ONNX Runtime kernels): ONNX Runtime's CPU ``SkipLayerNormalization`` kernel (1.32, fp32) measured about
5x slower than the two ops it replaces (3.2 ms vs 0.63 ms on a 32x50x384 input, one thread), which made
the 12 of MiniLM-L6 about 10% of the fp32 graph's time and 15-18% of the int8 graph's.  ``fuse(...,
skip_layer_norm=True)`` keeps them fused (on CUDA the fused kernel is the faster one).
``Pad`` nodes whose pads are constant zeros (Swin's pad-to-a-window-multiple when the grid already
is one: 12 in CLAP's HTSAT tower, each a full copy of its input) are removed by an onnxscript rewrite
rule (:func:`no_op_pad_rule`); ONNX Runtime keeps them.
Encoders without transformer blocks (graphs, point clouds, convolutions) come out with constant
folding and nothing fused; the parity check then runs on the rewritten graph as on any other.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["fuse", "fused_ops", "split_skip_layer_norm", "no_op_pad_rule", "CONTRIB_DOMAIN"]

#: ONNX Runtime's contrib-op domain: the fused kernels live there
CONTRIB_DOMAIN = "com.microsoft"


@functools.cache  # built once, on first use (onnxscript imports lazily)
def no_op_pad_rule() -> Any:
    """onnxscript rewrite rule: ``Pad(x, pads, ...)`` with constant all-zero ``pads`` → ``x``."""
    import onnx_ir as ir
    from onnxscript.rewriter.pattern import RewriteRule

    def target(op: Any, x: Any, pads: Any) -> Any:
        return op.Pad(x, pads, _allow_other_inputs=True, _allow_other_attributes=True)

    def zero_pads(context: Any, x: Any, pads: Any, **_: Any) -> bool:
        tensor = ir.convenience.get_const_tensor(pads)
        return tensor is not None and not tensor.numpy().any()

    def replacement(op: Any, x: Any, **_: Any) -> Any:
        return op.Identity(x)

    return RewriteRule(target, replacement, zero_pads, name="NoOpPad")


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


def split_skip_layer_norm(model: Any) -> int:
    """Replace each ``SkipLayerNormalization`` of an ``onnx_ir`` model by ``Add`` (+ ``Add`` bias) +
    ``LayerNormalization`` over the last axis, in place; how many were split.

    Nodes whose mean / inverse-std outputs are used are left fused (``LayerNormalization`` gives them
    for its own input only, which is the same sum, but nothing here needs them).
    """
    import onnx_ir as ir

    count = 0
    for node in list(model.graph):
        if node.op_type != "SkipLayerNormalization" or node.domain != CONTRIB_DOMAIN:
            continue
        outs = list(node.outputs)
        if any(o.uses() for o in outs[1:3]):
            continue
        x, skip, gamma, beta, bias = (list(node.inputs) + [None] * 5)[:5]
        attrs = node.attributes
        eps = attrs["epsilon"].as_float() if "epsilon" in attrs else 1e-12
        added = ir.Node("", "Add", [x, skip], name=f"{node.name}/add")
        new = [added]
        total = added.outputs[0]
        if bias is not None:
            new.append(ir.Node("", "Add", [total, bias], name=f"{node.name}/add_bias"))
            total = new[-1].outputs[0]
        norm = ir.Node("", "LayerNormalization", [total, gamma, beta] if beta is not None else [total, gamma],
                       {"axis": ir.AttrInt64("axis", -1), "epsilon": ir.AttrFloat32("epsilon", eps)},
                       name=f"{node.name}/layer_norm")
        new.append(norm)
        total.shape, total.dtype = outs[0].shape, outs[0].dtype
        model.graph.insert_before(node, new)
        outs[0].replace_all_uses_with(norm.outputs[0], replace_graph_outputs=True)
        if len(outs) > 3 and outs[3] is not None:
            outs[3].replace_all_uses_with(total, replace_graph_outputs=True)
        norm.outputs[0].shape, norm.outputs[0].dtype = outs[0].shape, outs[0].dtype
        names = [(outs[0].name, norm.outputs[0])] + ([(outs[3].name, total)] if len(outs) > 3 and outs[3] is not None else [])
        model.graph.remove(node, safe=True)
        for name, value in names:  # a graph output keeps its name (the manifest and OnnxEncoder use it)
            if value.is_graph_output():
                value.name = name
        count += 1
    return count


def fuse(src: str | Path, dst: str | Path | None = None, *, skip_layer_norm: bool = False) -> dict[str, int]:
    """Rewrite ``src`` (in place unless ``dst``) with onnxscript's ORT fusions; the fused ops it then holds.

    ``skip_layer_norm=False`` splits ``SkipLayerNormalization`` back (see the module docstring).

    Metadata and doc strings are cleared (the exporter's stack traces name local source paths).
    Raises what the rewriter raises; :func:`hub.onnx.export.export` keeps the unfused graph then.
    """
    import onnx_ir as ir
    from onnx_ir.passes.common import IdentityEliminationPass
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    with _quiet():
        model = ir.load(str(src))
        model, _ = optimize_for_ort(model, clear_metadata=True)
        model = rewrite(model, [no_op_pad_rule()])
        IdentityEliminationPass()(model)
        if not skip_layer_norm:
            split_skip_layer_norm(model)
        ir.save(model, str(dst or src))
    return fused_ops(dst or src)
