"""Parity: ONNX Runtime against PyTorch on fresh items, per batch, with the worst numbers kept."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..encoder import Encoder
from ..errors import InvalidInputError
from .manifest import _TORCH, Dtype, ParityCase, ParityReport, TensorSpec

__all__ = ["as_feed", "feed_keys", "graph_input_names", "compare", "parity", "worst", "FP32_TOLERANCE",
           "FP16_MIN_COSINE", "INT8_MIN_COSINE", "OUTPUT_NAMES"]

#: parity tolerances, read at call time (tests monkeypatch them)
FP32_TOLERANCE = 1e-4  # max abs diff over real tokens
FP16_MIN_COSINE = 0.999  # min cosine over real tokens, against PyTorch fp32
INT8_MIN_COSINE = 0.99  # min cosine over real tokens (or pooled rows), against PyTorch fp32


#: the graph's output names (``tokens``, ``mask``; ``pooled``): collate keys never become input names equal to these
OUTPUT_NAMES = ("tokens", "mask", "pooled")
_PREFIX = "input_"


def graph_input_names(keys: Sequence[str]) -> dict[str, str]:
    """``{collate key: graph input name}``: the key itself, or ``input_<key>`` when the key is an output name.

    ONNX needs one namespace for inputs and outputs, so a plugin whose ``collate`` returns
    ``mask`` (or ``tokens``, ``pooled``) gets the graph input ``input_mask``; the prefix repeats
    until the name is neither an output nor another collate key.  The rule depends on the key
    set alone, so serving recomputes the same mapping from the same ``collate``.
    """
    keys = list(keys)
    out = {}
    for key in keys:
        name = key
        while name in OUTPUT_NAMES or (name != key and name in keys):
            name = _PREFIX + name
        out[key] = name
    return out


def feed_keys(keys: Sequence[str], inputs: Sequence[TensorSpec]) -> list[tuple[TensorSpec, str]]:
    """Each graph input with the collate key that feeds it (exports older than the renaming use the key itself)."""
    by_graph = {g: k for k, g in graph_input_names(keys).items()}
    pairs = []
    for spec in inputs:
        key = by_graph.get(spec.name, spec.name)
        if key not in keys:
            raise InvalidInputError(f"the ONNX graph needs input {spec.name!r} (collate key {key!r}); the encoder's "
                                    f"collate gave {sorted(keys)}. Was this export made with other encoder options?")
        pairs.append((spec, key))
    return pairs


def as_feed(tensors: dict[str, torch.Tensor], inputs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Collate tensors → ONNX Runtime's feed ``{graph input name: numpy array}`` (see :func:`graph_input_names`)."""
    return {spec.name: tensors[key].detach().to("cpu", _TORCH[spec.dtype]).contiguous().numpy()
            for spec, key in feed_keys(list(tensors), inputs)}


def compare(ref: Sequence[torch.Tensor], got: Sequence[np.ndarray], pooled: bool) -> tuple[float, float]:
    """(max abs diff, min cosine) over real tokens (or pooled rows); a mask mismatch or NaN is (inf, -1)."""
    if pooled:
        a, b = ref[0].float().cpu(), torch.from_numpy(np.asarray(got[0])).float()  # (batch, dim)
    else:
        mask_ref, mask_got = ref[1].cpu().bool(), torch.from_numpy(np.asarray(got[1])).bool()
        if mask_ref.shape != mask_got.shape or not torch.equal(mask_ref, mask_got):
            return float("inf"), -1.0
        a, b = ref[0].float().cpu()[mask_ref], torch.from_numpy(np.asarray(got[0])).float()[mask_ref]  # (real, dim)
    if a.shape != b.shape:
        return float("inf"), -1.0
    if a.numel() == 0:
        return 0.0, 1.0
    diff = float((a - b).abs().max())
    cos = float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1, eps=1e-12).min())
    if not np.isfinite(diff) or not np.isfinite(cos):
        return float("inf"), -1.0
    return diff, cos


def parity(session: Any, reference: torch.nn.Module, encoder: Encoder, names: Sequence[str], inputs: Sequence[TensorSpec],
            batches: Sequence[Sequence[Any]], dtype: Dtype) -> ParityReport:
    metric, tol = {"fp16": ("cosine", FP16_MIN_COSINE), "int8": ("cosine", INT8_MIN_COSINE)}.get(
        dtype, ("max_abs_diff", FP32_TOLERANCE))
    cases = []
    device = encoder.device
    for items in batches:
        prepared = [encoder.prepare(x, i) for i, x in enumerate(items)]
        tensors = encoder.collate(prepared)
        with torch.inference_mode():
            ref = reference(*[tensors[n].to(device) for n in names])
        got = session.run(None, as_feed(tensors, inputs))
        diff, cos = compare(ref, got, reference.pooled)
        cases.append(ParityCase(batch=len(items), sizes=[int(encoder.length(p)) for p in prepared],
                                max_abs_diff=diff, min_cosine=cos))
    ok = all((c.min_cosine >= tol) if metric == "cosine" else (c.max_abs_diff <= tol) for c in cases)
    return ParityReport(passed=ok, tolerance=tol, metric=metric, cases=cases)


def worst(report: ParityReport) -> ParityCase:
    if report.metric == "cosine":
        return min(report.cases, key=lambda c: c.min_cosine)
    return max(report.cases, key=lambda c: c.max_abs_diff)
