"""int8 exports: ONNX Runtime's dynamic quantization of the MatMul weights, calibrated on the modality's examples.

What is quantized: every ``MatMul`` whose second input is a constant 2-D weight (the linear layers:
attention projections, feed-forward), with int8 weights per output channel and activations quantized
to uint8 at run time per tensor (``onnxruntime.quantization.quantize_dynamic``; ONNX Runtime runs them
as ``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat`` with VNNI where the CPU has it).  Embeddings,
softmax, LayerNorm, GELU and the attention scores stay in float.

What is block-quantized instead: the linear layers that cost the most accuracy.  A few of them (in MiniLM
the feed-forward layers of the first blocks, whose inputs carry outlier channels) account for most of the
error of per-tensor activations.  Their sensitivity is measured in PyTorch on ``Modality.examples``: each
``nn.Linear`` alone is fake-quantized the way ONNX Runtime will quantize it
(``torch.fake_quantize_per_channel_affine`` for the weight, ``torch.fake_quantize_per_tensor_affine`` over
the whole input tensor) and the output's worst cosine to fp32 is its cost.  The costliest, until the summed
cost of the rest is within :data:`INT8_BUDGET`, become ONNX Runtime ``MatMulNBits`` nodes with 8-bit weights
in blocks of :data:`BLOCK_SIZE` along the input dimension and ``accuracy_level=4`` (activations quantized to
int8 per block of each row at run time, so an outlier channel only widens its own block's scale;
``onnxruntime.quantization.matmul_nbits_quantizer``).  On MiniLM-L6 that keeps the calibration cosine
where float layers kept it and runs those layers about 1.6x faster than fp32 (``BLOCK_SIZE=32``: more
accurate, slower; per-tensor ``DynamicQuantizeMatMul`` stays the fastest for the other layers).  When the
quantized graph falls below :data:`CALIBRATION_MIN_COSINE` on those examples, the budget is halved and the
float graph quantized again; the last attempt keeps the costliest layers in plain float.  Each linear layer
is found in the exported graph by the name scope the exporter records on its MatMul node.  The export's
parity check then measures the whole int8 graph.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .parity import INT8_MIN_COSINE, compare

__all__ = ["quantize_int8", "linear_nodes", "sensitivity", "keep_float", "INT8_BUDGET", "CALIBRATION_MIN_COSINE",
           "BLOCK_SIZE"]

#: the summed cost (1 - min cosine per linear layer, see :func:`sensitivity`) the quantized layers may add up to
INT8_BUDGET = 0.01
#: the worst cosine the int8 graph must keep on the calibration examples, else fewer layers are quantized
#: (the parity threshold: the export's check on fresh examples asks the same)
CALIBRATION_MIN_COSINE = INT8_MIN_COSINE
#: the block (along the input dimension) of the 8-bit ``MatMulNBits`` layers: one weight scale and one
#: activation scale per block (MiniLM-L6, 512 sentences: 128 gives min cosine 0.9944 with 6 such layers, 32 0.9937)
BLOCK_SIZE = 128
ATTEMPTS = 4  # the budget halved after each failed one; the last keeps the costliest layers in float


def _weight_matmuls(model: Any) -> list[Any]:
    """MatMul nodes whose second input is a constant 2-D weight (an initializer)."""
    inits = {i.name: i for i in model.graph.initializer}
    return [n for n in model.graph.node
            if n.op_type == "MatMul" and n.domain in ("", "ai.onnx") and n.input[1] in inits
            and len(inits[n.input[1]].dims) == 2]


def linear_nodes(model: Any, modules: Sequence[str]) -> dict[str, str]:
    """``{MatMul node name: module path}`` for the weight MatMuls the exporter traced inside ``modules``.

    The ``torch.export`` exporter records each node's module path in ``pkg.torch.onnx.name_scopes``;
    a node inside one of ``modules`` (``encoder.model.encoder.layer.0.output.dense``) maps to it.
    Nodes without that metadata map to ``""``.
    """
    wanted = set(modules)
    out = {}
    for node in _weight_matmuls(model):
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            scopes = []
        out[node.name] = next((s for s in reversed(scopes) if s in wanted), "")
    return out


def _fake_quant(x: torch.Tensor) -> torch.Tensor:
    """uint8, asymmetric, one scale for the whole tensor, range including 0 (DynamicQuantizeLinear)."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zero = int(np.clip(round(-lo / scale), 0, 255))
    return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero, 0, 255).to(x.dtype)


def _fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """int8, symmetric, one scale per output channel (rows of an ``nn.Linear`` weight)."""
    scale = (w.detach().abs().amax(dim=1).float() / 127.0).clamp(min=1e-12)
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w.float(), scale, zero, 0, -127, 127).to(w.dtype)


def sensitivity(reference: torch.nn.Module, batches: Sequence[Sequence[torch.Tensor]], modules: Sequence[str],
                pooled: bool) -> dict[str, float]:
    """``{module path: 1 - worst cosine}`` of ``reference``'s output with that one ``nn.Linear`` fake-quantized."""
    named = dict(reference.named_modules())
    with torch.inference_mode():
        refs = [reference(*args) for args in batches]
    cost: dict[str, float] = {}
    for name in modules:
        module = named[name]

        def hook(mod: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(_fake_quant(args[0]), _fake_quant_weight(mod.weight), mod.bias)

        handle = module.register_forward_hook(hook)
        worst = 1.0
        try:
            with torch.inference_mode():
                for args, ref in zip(batches, refs):
                    got = [t.detach().cpu().numpy() for t in reference(*args)]
                    worst = min(worst, compare(ref, got, pooled)[1])
        finally:
            handle.remove()
        cost[name] = max(0.0, 1.0 - worst)
    return cost


def keep_float(cost: dict[str, float], budget: float = INT8_BUDGET) -> list[str]:
    """The costliest modules to keep in float, until the summed cost of the rest is within ``budget``."""
    order = sorted(cost, key=lambda k: -cost[k])
    total = sum(cost.values())
    kept: list[str] = []
    for name in order:
        if total <= budget:
            break
        kept.append(name)
        total -= cost[name]
    return kept


def _min_cosine(model_path: Path, batches: Sequence[Sequence[torch.Tensor]], refs: Sequence[Any], pooled: bool) -> float:
    """Worst cosine of the graph at ``model_path`` against the reference outputs, on the calibration batches."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    worst = 1.0
    for args, ref in zip(batches, refs):  # graph inputs are the collate tensors, in order
        feed = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), args)}
        worst = min(worst, compare(ref, session.run(None, feed), pooled)[1])
    return worst


def _block_quantize(model_path: Path, nodes: Sequence[str]) -> None:
    """Rewrite the float MatMuls named ``nodes`` of ``model_path`` (in place) as 8-bit ``MatMulNBits`` blocks."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=BLOCK_SIZE, is_symmetric=False, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(model_path)), bits=8, block_size=BLOCK_SIZE, is_symmetric=False,
                                     accuracy_level=4, nodes_to_include=list(nodes), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(model_path), False)


def quantize_int8(model_path: Path, reference: torch.nn.Module, batches: Sequence[Sequence[torch.Tensor]],
                  pooled: bool, budget: float | None = None) -> dict[str, Any]:
    """Quantize ``model_path`` in place (see the module docstring); returns what was done, for the manifest.

    The quantized graph is checked on the calibration batches: below :data:`CALIBRATION_MIN_COSINE` it is
    quantized again from the float graph with half the budget (more layers block-quantized), the last
    attempt with those layers in float.
    """
    import logging
    import shutil

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(model_path))
    linears = [n for n, m in reference.named_modules() if isinstance(m, torch.nn.Linear)]
    nodes = linear_nodes(model, linears)
    del model
    cost = sensitivity(reference, batches, sorted({m for m in nodes.values() if m}), pooled)
    with torch.inference_mode():
        refs = [reference(*args) for args in batches]
    budget = INT8_BUDGET if budget is None else budget
    source = model_path.with_name("float-source.onnx")
    shutil.copyfile(model_path, source)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint on the root logger
    try:
        for attempt in range(1, ATTEMPTS + 1):
            kept = set(keep_float(cost, budget))
            quantized = sorted(n for n, m in nodes.items() if m not in kept)
            blocked = sorted(n for n, m in nodes.items() if m in kept) if attempt < ATTEMPTS else []
            quantize_dynamic(str(source), str(model_path), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul"], nodes_to_quantize=quantized or ["(none)"],
                             extra_options={"MatMulConstBOnly": True})
            if blocked:
                _block_quantize(model_path, blocked)
            calibration = _min_cosine(model_path, batches, refs, pooled)
            if calibration >= CALIBRATION_MIN_COSINE or not (quantized or blocked):
                break
            budget /= 2
    finally:
        root.setLevel(level)
        source.unlink(missing_ok=True)
    floats = sorted(n for n, m in nodes.items() if m in kept and n not in blocked)
    return {"method": "dynamic, MatMul weights int8 per channel, activations uint8 per tensor; the costliest layers "
                      f"MatMulNBits 8-bit in blocks of {BLOCK_SIZE} (activations int8 per block)",
            "quantized": len(quantized), "block_quantized": sorted(nodes[n] or n for n in blocked),
            "kept_float": sorted(nodes[n] or n for n in floats), "budget": budget,
            "estimated_cost": round(sum(c for m, c in cost.items() if m not in kept), 6),
            "calibration_min_cosine": round(calibration, 6), "attempts": attempt}
