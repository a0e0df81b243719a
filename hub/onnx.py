"""ONNX export of encoders (alone, or with their projector and pooling) and ONNX Runtime serving.

``export(...)`` traces an encoder's ``forward`` half with the ``torch.export``-based
exporter (``torch.onnx.export(..., dynamo=True)``; the TorchScript exporter is
deprecated since PyTorch 2.9), with a dynamic dimension for every collate
dimension that varies across items (batch, sequence length, frames, nodes,
points), checks ONNX Runtime against PyTorch on fresh items and writes
``model.onnx`` plus a pydantic ``manifest.json`` (inputs/outputs, preprocessing,
source ids, weight hashes, opset, parity report).  A failed export raises
:class:`~hub.errors.ExportError` and keeps nothing.

:class:`OnnxEncoder` serves such a directory: the plugin's ``prepare``/``collate``
in Python, the graph in ONNX Runtime (IO binding on CUDA), the same
:class:`~hub.tokens.TokenEmbeddings` out.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from .encoder import Encoder
from .errors import BundleError, ExportError, HubError, InvalidInputError, ProviderError
from .tokens import Pooling, TokenEmbeddings

if TYPE_CHECKING:  # pragma: no cover
    from ._hub import Hub
    from .projectors import Projector

__all__ = [
    "TensorSpec",
    "ParityCase",
    "ParityReport",
    "ExportManifest",
    "export",
    "OnnxEncoder",
    "load_manifest",
    "write_triton_repository",
    "state_dict_sha256",
    "file_sha256",
]

MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.onnx"
FORMAT = 1
#: parity tolerances, read at call time (tests monkeypatch them)
FP32_TOLERANCE = 1e-4  # max abs diff over real tokens
FP16_MIN_COSINE = 0.999  # min cosine over real tokens, against PyTorch fp32
#: batch sizes of the parity cases (fresh items, varied sizes)
PARITY_BATCHES = (1, 1, 2, 7)
#: batch sizes whose collates decide which dimensions are dynamic
PROBE_BATCHES = (1, 2, 3, 4)
TRITON_MAX_BATCH_SIZE = 64
Dtype = Literal["fp32", "fp16"]
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


# -- manifest ---------------------------------------------------------------------------


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


def load_manifest(directory: str | os.PathLike) -> ExportManifest:
    """Read ``directory/manifest.json`` (a :class:`BundleError` naming the problem if it is not an export)."""
    from ._manifest import read_manifest

    return read_manifest(Path(directory) / MANIFEST_NAME, ExportManifest, "an ONNX export", FORMAT,
                         "write one with hub.onnx.export or `mhub export`")


# -- hashes -----------------------------------------------------------------------------


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_dict_sha256(module: torch.nn.Module) -> str:
    """A stable sha256 over a module's ``state_dict``: names, dtypes, shapes and bytes, in sorted name order."""
    h = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# -- what gets exported -------------------------------------------------------------------


class _Graph(torch.nn.Module):
    """The exported function: collate tensors (positional, in ``names`` order) → ``(tokens, mask)`` or ``(pooled,)``.

    Calls the encoder's own ``forward`` (so every plugin exports as it runs), then the
    projector, then the pooling of :meth:`TokenEmbeddings.pooled`; outputs are float32.
    """

    def __init__(self, encoder: Encoder, names: Sequence[str], projector: "Projector | None", pooled: bool,
                 pooling: Pooling) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.names = tuple(names)
        self.pooled = pooled
        self.pooling = pooling

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        te = self.encoder(**dict(zip(self.names, tensors)))
        tokens, mask = te.tokens, te.mask  # (batch, tokens, dim), (batch, tokens)
        if self.projector is not None:
            dtype = next(self.projector.parameters()).dtype
            tokens, mask = self.projector(tokens.to(dtype), mask)  # (batch, tokens', hidden)
        tokens = tokens.float()
        if self.pooled:
            return (TokenEmbeddings(tokens, mask, te.modality, te.space, self.pooling).pooled(),)  # (batch, dim)
        return tokens, mask.bool()


@dataclass
class _Source:
    encoder: Encoder
    name: str
    options: dict[str, Any]
    preprocess_options: dict[str, Any]
    projector: "Projector | None"
    space: str
    pooling: Pooling


def _resolve(source: str | Encoder, encoder: str | None, options: dict[str, Any] | None, bundle: str | None,
             with_projector: bool, hub: "Hub") -> _Source:
    from .multimodal import MANIFEST as BUNDLE_MANIFEST
    from .multimodal import BundleManifest, MultimodalLM

    options = dict(options or {})
    if with_projector and bundle is None:
        raise InvalidInputError("with_projector=True needs bundle= (a MultimodalLM bundle directory whose projector "
                                "for this modality is fused into the graph)")
    if isinstance(source, Encoder):
        enc, name = source, source.name
        if name not in hub.registry.list_encoders():
            raise ExportError(
                f"encoder instance {name!r} is not a registered encoder, so the export could not name the "
                "preprocessing to rebuild at serving time; export it by registered name (and options=)"
            )
        modality = enc.modality
    else:
        modality = source
        hub.registry.modality(modality)  # a typed error when no plugin provides it
        enc = None
        name = encoder or hub.registry.modality(modality).default_encoder
    preprocess_options = dict(options)
    projector, space, pooling = None, None, None
    if bundle is not None and (Path(bundle) / "align.json").is_file():
        # an aligned projector from hub.training.align (no backbone): its encoder + projector
        from .training import AlignManifest, AlignResult

        ref = AlignManifest.model_validate_json((Path(bundle) / "align.json").read_text())
        if ref.modality != modality:
            raise InvalidInputError(f"{str(bundle)!r} aligns {ref.modality!r}, not {modality!r}")
        if encoder is not None and encoder != ref.encoder:
            raise InvalidInputError(f"{str(bundle)!r} was aligned with encoder {ref.encoder!r}, not {encoder!r}")
        result = AlignResult.load(bundle, hub=hub)
        enc, name, options = result.encoder, ref.encoder, dict(ref.encoder_options)
        preprocess_options = dict(options)
        if ref.encoder_dir:
            preprocess_options["weights"] = str((Path(bundle) / ref.encoder_dir).resolve())
        if with_projector:
            projector, space = result.projector, ref.space
            pooling = enc.pooling if projector.per_token else "mean"
    elif bundle is not None:
        lm = MultimodalLM.load(bundle, hub=hub)
        if modality not in lm._plugged:
            raise InvalidInputError(f"bundle {str(bundle)!r} has no {modality!r} plugged; it plugs "
                                    f"{', '.join(lm._plugged) or 'nothing'}")
        plug = lm._plugged[modality]
        ref = BundleManifest.model_validate_json((Path(bundle) / BUNDLE_MANIFEST).read_text()).modalities[modality]
        if enc is None:
            if encoder is not None and encoder != ref.encoder:
                raise InvalidInputError(f"bundle {str(bundle)!r} plugs encoder {ref.encoder!r} for {modality}, "
                                        f"not {encoder!r}; leave encoder= out to export the bundle's")
            enc, name = plug.encoder, ref.encoder
            options = dict(ref.encoder_options)
            preprocess_options = dict(options)
            if ref.encoder_dir:
                preprocess_options["weights"] = str((Path(bundle) / ref.encoder_dir).resolve())
        if with_projector:
            projector = plug.projector
            if projector.in_dim != enc.dim:
                raise InvalidInputError(f"the bundle's {modality} projector takes dim {projector.in_dim}; "
                                        f"encoder {name!r} gives dim {enc.dim}")
            space = lm.backbone.space
            pooling = enc.pooling if projector.per_token else "mean"
    if enc is None:
        enc = hub.encoder(name, modality=modality, **options)
    return _Source(enc.eval(), name, options, preprocess_options, projector,
                   space or enc.space, pooling or enc.pooling)


# -- dynamic dimensions ---------------------------------------------------------------------


def _dynamic_dims(names: Sequence[str], probes: Sequence[tuple[int, dict[str, torch.Tensor]]]) -> dict[str, dict[int, str]]:
    """``{input: {dim: name}}`` for every dimension that varies across the probe collates.

    Dimensions that follow the item count are ``batch``; dimensions with the same sizes in
    every probe share one name (``input_ids_dim1`` for the sequence length of text).
    """
    groups: dict[tuple[int, ...], str] = {tuple(n for n, _ in probes): "batch"}
    out: dict[str, dict[int, str]] = {}
    for name in names:
        ranks = {int(t[name].ndim) for _, t in probes}
        if len(ranks) != 1:
            raise ExportError(f"collate output {name!r} has different ranks across batches ({sorted(ranks)}); "
                              "an exported graph needs a fixed rank per input")
        for k in range(ranks.pop()):
            sizes = tuple(int(t[name].shape[k]) for _, t in probes)
            if len(set(sizes)) > 1:
                out.setdefault(name, {})[k] = groups.setdefault(sizes, f"{name}_dim{k}")
    return out


def _trace_probe(probes: Sequence[tuple[int, dict[str, torch.Tensor]]], dims: dict[str, dict[int, str]]) -> dict[str, torch.Tensor]:
    """The probe batch to trace with: every dynamic dimension >= 2 (torch.export specialises 0 and 1)."""
    for n, tensors in sorted(probes, key=lambda p: (p[0] != 3, p[0])):
        if n >= 2 and all(int(tensors[i].shape[k]) >= 2 for i, ks in dims.items() for k in ks):
            return tensors
    return max(probes, key=lambda p: p[0])[1]


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (torchvision op registration, axis renaming, deprecations)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx._internal.exporter._registration", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _onnx_dtype(elem_type: int) -> str:
    import onnx

    return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))) if elem_type != onnx.TensorProto.BFLOAT16 else "bfloat16"


def _graph_specs(model_path: Path) -> tuple[list[TensorSpec], list[TensorSpec], int]:
    """Inputs, outputs and the default-domain opset of a saved ONNX model (weights not loaded)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)

    def spec(v: Any) -> TensorSpec:
        t = v.type.tensor_type
        shape: list[int | str] = []
        for k, d in enumerate(t.shape.dim):
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            else:
                shape.append(d.dim_param or f"{v.name}_dim{k}")
        return TensorSpec(name=v.name, dtype=_onnx_dtype(t.elem_type), shape=shape)

    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return [spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output], opset


# -- parity ---------------------------------------------------------------------------------


def _as_feed(tensors: dict[str, torch.Tensor], inputs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    feed = {}
    for spec in inputs:
        if spec.name not in tensors:
            raise InvalidInputError(f"the ONNX graph needs input {spec.name!r}; got {sorted(tensors)}")
        feed[spec.name] = tensors[spec.name].detach().to("cpu", _TORCH[spec.dtype]).contiguous().numpy()
    return feed


def _compare(ref: Sequence[torch.Tensor], got: Sequence[np.ndarray], pooled: bool) -> tuple[float, float]:
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


def _parity(session: Any, reference: _Graph, encoder: Encoder, names: Sequence[str], inputs: Sequence[TensorSpec],
            batches: Sequence[Sequence[Any]], dtype: Dtype) -> ParityReport:
    metric, tol = ("cosine", FP16_MIN_COSINE) if dtype == "fp16" else ("max_abs_diff", FP32_TOLERANCE)
    cases = []
    device = encoder.device
    for items in batches:
        prepared = [encoder.prepare(x, i) for i, x in enumerate(items)]
        tensors = encoder.collate(prepared)
        with torch.inference_mode():
            ref = reference(*[tensors[n].to(device) for n in names])
        got = session.run(None, _as_feed(tensors, inputs))
        diff, cos = _compare(ref, got, reference.pooled)
        cases.append(ParityCase(batch=len(items), sizes=[int(encoder.length(p)) for p in prepared],
                                max_abs_diff=diff, min_cosine=cos))
    ok = all((c.min_cosine >= tol) if metric == "cosine" else (c.max_abs_diff <= tol) for c in cases)
    return ParityReport(passed=ok, tolerance=tol, metric=metric, cases=cases)


def _worst(report: ParityReport) -> ParityCase:
    if report.metric == "cosine":
        return min(report.cases, key=lambda c: c.min_cosine)
    return max(report.cases, key=lambda c: c.max_abs_diff)


# -- export ---------------------------------------------------------------------------------


def _check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).is_file())):
        raise ExportError(f"{str(out)!r} exists and is not an empty directory or an earlier ONNX export; "
                          "choose a new or empty directory (nothing was written)")


def _graph_name(manifest: ExportManifest) -> str:
    parts = [manifest.modality, manifest.encoder]
    parts += ["projected"] if manifest.with_projector else []
    parts += ["pooled"] if manifest.pooled else []
    parts += ["fp16"] if manifest.dtype == "fp16" else []
    return "-".join(parts).replace("/", "_").replace(".", "_")


def export(
    source: str | Encoder,
    out_dir: str | os.PathLike,
    *,
    encoder: str | None = None,
    options: dict[str, Any] | None = None,
    bundle: str | os.PathLike | None = None,
    with_projector: bool = False,
    pooled: bool = False,
    dtype: Dtype = "fp32",
    opset: int | None = None,
    triton: bool = False,
    hub: "Hub | None" = None,
    seed: int = 0,
) -> ExportManifest:
    """Export an encoder (+ the bundle's projector, + pooling) to ``out_dir/model.onnx`` with a manifest.

    ``source`` is a modality name (then ``encoder``, or the modality's default, built
    with ``options``) or a registered :class:`Encoder` instance (``options``: the options
    it was built with, so serving rebuilds the same preprocessing).  ``bundle`` is a
    :class:`~hub.multimodal.MultimodalLM` bundle directory: its encoder for the modality
    is exported, and with ``with_projector=True`` its projector runs in the same graph
    (tokens in the backbone's space).  ``pooled=True`` fuses the pooling: one vector
    per item.  ``dtype="fp16"`` exports a half-precision graph (float inputs float16,
    outputs float32).  The parity check (ONNX Runtime CPU vs PyTorch fp32 on fresh
    ``Modality.examples`` at batch sizes 1, 2 and 7) must pass — max abs diff
    ≤ :data:`FP32_TOLERANCE` for fp32, cosine ≥ :data:`FP16_MIN_COSINE` for fp16 — or
    :class:`ExportError` is raised and nothing is kept.  ``triton=True`` also writes
    ``out_dir/triton/<name>/`` (see :func:`write_triton_repository`).
    """
    from ._hub import Hub

    if dtype not in ("fp32", "fp16"):
        raise InvalidInputError(f"dtype must be 'fp32' or 'fp16'; got {dtype!r}")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise InvalidInputError(f"opset must be an int >= 7 (the exporter targets 18 and newer best); got {opset!r}")
    out = Path(out_dir)
    _check_out_dir(out)
    hub = hub or Hub()
    src = _resolve(source, encoder, options, None if bundle is None else str(bundle), with_projector, hub)
    enc = src.encoder
    modality = hub.registry.modality(enc.modality)
    if modality.examples is None:
        raise ExportError(f"modality {enc.modality!r} registers no examples(n, seed); its plugin must pass "
                          "Modality(examples=...) so exports can be checked against PyTorch")

    # 1. which dimensions vary: collate batches of 1, 2, 3, 4 items of varied sizes
    items = list(modality.examples(sum(PROBE_BATCHES), seed))
    probes, start = [], 0
    for n in PROBE_BATCHES:
        probes.append((n, enc.collate([enc.prepare(x, i) for i, x in enumerate(items[start : start + n])])))
        start += n
    names = list(probes[0][1])  # the collate's own key order
    dims = _dynamic_dims(names, probes)
    trace = _trace_probe(probes, dims)

    reference = _Graph(enc, names, src.projector, pooled, src.pooling).eval()
    graph = reference
    if dtype == "fp16":
        graph = copy.deepcopy(reference).half().eval()
    device = enc.device
    args = tuple(
        trace[n].to(device, torch.float16) if dtype == "fp16" and trace[n].is_floating_point() else trace[n].to(device)
        for n in names
    )
    from torch.export import Dim

    shared = {d: Dim(d) for ks in dims.values() for d in ks.values()}
    dynamic_shapes = (tuple({k: shared[d] for k, d in dims.get(n, {}).items()} or None for n in names),)
    output_names = ["pooled"] if pooled else ["tokens", "mask"]

    staging = Path(tempfile.mkdtemp(prefix="mhub-export-"))
    try:
        model_path = staging / MODEL_NAME
        try:
            with _quiet_exporter(), torch.no_grad():
                program = torch.onnx.export(graph, args, input_names=names, output_names=output_names,
                                            dynamic_shapes=dynamic_shapes, opset_version=opset, dynamo=True,
                                            verbose=False)
                program.save(str(model_path))
        except HubError:
            raise
        except Exception as exc:  # noqa: BLE001 - torch.export / onnxscript raise many kinds
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ExportError(
                f"exporting {src.name} ({enc.modality}) to ONNX failed: {type(exc).__name__}: {first[:500]}. "
                f"Dynamic dimensions asked for: {dims or 'none'}; the forward half must be pure tensor code "
                "(no Python branching on sizes, no .item()/.tolist())"
            ) from exc
        del program
        inputs, outputs, graph_opset = _graph_specs(model_path)
        for spec in inputs:  # the exporter must not have fixed a dimension that varies
            for k, d in dims.get(spec.name, {}).items():
                if isinstance(spec.shape[k], int):
                    raise ExportError(
                        f"the exported graph fixed {spec.name!r} dimension {k} to {spec.shape[k]}, but it varies "
                        f"across items ({d}); the encoder's forward specialises on that size"
                    )
        import onnxruntime as ort

        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        fresh = list(modality.examples(sum(PARITY_BATCHES), seed + 1))
        batches, start = [], 0
        for n in PARITY_BATCHES:
            batches.append(fresh[start : start + n])
            start += n
        report = _parity(session, reference, enc, names, inputs, batches, dtype)
        del session
        if not report.passed:
            w = _worst(report)
            bound = "<" if report.metric == "cosine" else ">"
            value = w.min_cosine if report.metric == "cosine" else w.max_abs_diff
            raise ExportError(
                f"ONNX export of {src.name} ({enc.modality}{', with projector' if src.projector else ''}"
                f"{', pooled' if pooled else ''}, {dtype}) failed its parity check against PyTorch: worst case "
                f"batch {w.batch}, item sizes {w.sizes}: {report.metric} {value:.3g} {bound} tolerance "
                f"{report.tolerance:g} (max abs diff {w.max_abs_diff:.3g}, min cosine {w.min_cosine:.6f}). "
                f"Nothing was written to {str(out)!r}. Try dtype='fp32', another opset, or report the encoder"
            )
        hashes = {p.name: file_sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
        hashes["encoder"] = state_dict_sha256(enc)
        if src.projector is not None:
            hashes["projector"] = state_dict_sha256(src.projector)
        manifest = ExportManifest(
            modality=enc.modality, encoder=src.name, encoder_options=src.options, weights=enc.weights,
            space=src.space, pooling=src.pooling, with_projector=src.projector is not None,
            projector=src.projector.config.model_dump() if src.projector is not None else None,
            pooled=pooled, dtype=dtype, opset=graph_opset, inputs=inputs, outputs=outputs,
            preprocess={"encoder": src.name, "options": src.preprocess_options},
            hashes=hashes, parity=report,
        )
        (staging / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
        if triton:
            write_triton_repository(staging, staging / "triton")
        _check_out_dir(out)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(out))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


# -- Triton ---------------------------------------------------------------------------------


def write_triton_repository(export_dir: str | os.PathLike, repo_dir: str | os.PathLike, name: str | None = None,
                            max_batch_size: int = TRITON_MAX_BATCH_SIZE) -> Path:
    """Write a Triton Inference Server model repository entry for an export: ``repo/NAME/config.pbtxt``
    and ``repo/NAME/1/model.onnx`` (+ its external data).  Returns ``repo/NAME``.

    When every input and output is batch-first (dimension 0 named ``batch``) the config sets
    ``max_batch_size`` and dynamic batching and leaves the batch dimension out of ``dims``;
    otherwise (e.g. graphs fed as one node list) ``max_batch_size: 0`` with full shapes and no
    dynamic batching, as Triton requires.  Dynamic dimensions are ``-1``.
    """
    src = Path(export_dir)
    manifest = load_manifest(src)
    name = name or _graph_name(manifest)
    specs = manifest.inputs + manifest.outputs
    batched = max_batch_size > 0 and all(s.shape and s.shape[0] == "batch" for s in specs)

    def block(kind: str, tensors: Sequence[TensorSpec]) -> str:
        rows = []
        for s in tensors:
            dims = [-1 if isinstance(d, str) else int(d) for d in (s.shape[1:] if batched else s.shape)]
            if s.dtype not in _TRITON:
                raise ExportError(f"Triton has no type for {kind} {s.name!r} of dtype {s.dtype}")
            rows.append(f'  {{\n    name: "{s.name}"\n    data_type: {_TRITON[s.dtype]}\n'
                        f'    dims: [ {", ".join(map(str, dims)) or ""} ]\n  }}')
        return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"

    text = (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size if batched else 0}\n'
            + block("input", manifest.inputs) + block("output", manifest.outputs)
            + ("dynamic_batching { }\n" if batched else "")
            + "instance_group [\n  {\n    count: 1\n    kind: KIND_GPU\n  }\n]\n")
    root = Path(repo_dir) / name
    (root / "1").mkdir(parents=True, exist_ok=True)
    (root / "config.pbtxt").write_text(text)
    for file in manifest.hashes:
        if file not in WEIGHT_HASHES:
            shutil.copy2(src / file, root / "1" / file)
    return root


# -- serving --------------------------------------------------------------------------------


def _cuda_device_id(device: str) -> int:
    _, _, index = device.partition(":")
    return int(index) if index.isdigit() else 0


def _cuda_missing() -> str | None:
    """Why this onnxruntime cannot offer CUDA, or ``None`` when its CUDA provider is installed."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return None
    return (f"this onnxruntime ({ort.__version__}, build {ort.get_device()}) has no CUDAExecutionProvider "
            f"(it offers {', '.join(available)}); install onnxruntime-gpu in place of onnxruntime "
            "(pip install 'modality-hub[gpu]'; the two packages cannot be installed together)")


class OnnxEncoder:
    """Serve an exported encoder with ONNX Runtime: same items in, same :class:`TokenEmbeddings` out.

    ``device``: ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``) or ``"auto"`` (CUDA when its provider
    loads, else CPU).  ``providers`` lists what the session really uses.  Asking for CUDA
    when the CUDA provider is missing or fails to load raises :class:`ProviderError`
    with the reason, unless ``allow_cpu_fallback=True`` (then it warns and runs on CPU).
    The manifest's file hashes are checked first: a tampered or mismatched ``model.onnx``
    raises :class:`BundleError`.

    Preprocessing (``prepare``/``collate``) comes from the plugin: the encoder named in
    the manifest is rebuilt from the registry (through ``hub.encoder``, so it shares the
    hub's cached instance).  That holds the PyTorch weights in memory beside the
    ONNX session — a known cost until plugins expose preprocessing on its own.
    With ``pooled`` exports ``encode`` returns one token per item (the pooled vector,
    mask all true), so ``.pooled()`` gives the same vectors as the PyTorch encoder.
    On CUDA, inputs and outputs stay on the GPU through IO binding.  ``session_options``
    (an ``onnxruntime.SessionOptions``) sets threads and graph optimisation.
    """

    def __init__(self, directory: str | os.PathLike, device: Device | str = "cpu", *, allow_cpu_fallback: bool = False,
                 hub: "Hub | None" = None, session_options: Any = None) -> None:
        from ._hub import Hub

        import onnxruntime as ort

        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory)
        self._counter: Any = None
        self._verify_files()
        if not (device in ("cpu", "cuda", "auto") or str(device).startswith("cuda:")):
            raise InvalidInputError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto'; got {device!r}")
        self._options = session_options  # an onnxruntime.SessionOptions (threads, graph optimisation level), or None
        self.session, self.providers = self._session(str(device), allow_cpu_fallback, ort)
        on_cuda = "CUDAExecutionProvider" in self.providers
        self._device_id = _cuda_device_id(str(device)) if on_cuda else 0
        self.device = torch.device("cuda", self._device_id) if on_cuda else torch.device("cpu")
        m = self.manifest
        self.hub = hub or Hub()
        self._encoder = self.hub.encoder(m.preprocess["encoder"], **m.preprocess.get("options", {}))
        self.modality = m.modality
        self.space = m.space
        self.pooling: Pooling = m.pooling
        self.name = m.encoder
        self.dim = int(m.outputs[0].shape[-1])
        self._out_names = [o.name for o in m.outputs]

    def __repr__(self) -> str:
        return (f"OnnxEncoder({str(self.directory)!r}, modality={self.modality!r}, encoder={self.name!r}, "
                f"dtype={self.manifest.dtype!r}, providers={self.providers})")

    # -- loading ---------------------------------------------------------------------------
    def _verify_files(self) -> None:
        for file, expected in self.manifest.hashes.items():
            if file in WEIGHT_HASHES:
                continue
            path = self.directory / file
            if not path.is_file():
                raise BundleError(f"{str(path)!r} is missing; the export manifest lists it (re-export the model)")
            actual = file_sha256(path)
            if actual != expected:
                raise BundleError(
                    f"{str(path)!r} does not match its export manifest (sha256 {actual[:16]}… != "
                    f"{expected[:16]}…): the file was modified or belongs to another export. Refusing to load it; "
                    "re-export the model"
                )

    def _session(self, device: str, allow_cpu_fallback: bool, ort: Any) -> tuple[Any, list[str]]:
        model = str(self.directory / MODEL_NAME)
        cpu = ["CPUExecutionProvider"]
        if device == "cpu":
            session = ort.InferenceSession(model, self._options, providers=cpu)
            return session, list(session.get_providers())
        reason = _cuda_missing()
        session = None
        if reason is None:
            if hasattr(ort, "preload_dlls"):  # CUDA / cuDNN from the nvidia-* wheels, when present
                try:
                    ort.preload_dlls()
                except Exception:  # noqa: BLE001 - the session below says whether CUDA loaded
                    pass
            try:
                session = ort.InferenceSession(
                    model, self._options, providers=[("CUDAExecutionProvider", {"device_id": _cuda_device_id(device)}), *cpu]
                )
            except Exception as exc:  # noqa: BLE001
                reason = f"creating a CUDA session failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            else:
                if "CUDAExecutionProvider" not in session.get_providers():
                    reason = ("CUDAExecutionProvider is installed but failed to load (onnxruntime logged why: "
                              "usually missing CUDA / cuDNN libraries of the versions this onnxruntime-gpu was "
                              "built for, or no visible GPU)")
        if reason is None:
            return session, list(session.get_providers())
        if device.startswith("cuda") and not allow_cpu_fallback:
            raise ProviderError(f"device={device!r} needs ONNX Runtime's CUDAExecutionProvider, but {reason}. "
                                "Pass allow_cpu_fallback=True (or device='auto') to run on CPU instead")
        if device.startswith("cuda"):
            warnings.warn(f"running on CPUExecutionProvider: {reason}", RuntimeWarning, stacklevel=3)
        session = ort.InferenceSession(model, self._options, providers=cpu)
        return session, list(session.get_providers())

    # -- preprocessing (the plugin's) --------------------------------------------------------
    def prepare(self, item: Any, index: int = 0) -> Any:
        return self._encoder.prepare(item, index)

    def collate(self, prepared: Sequence[Any]) -> dict[str, torch.Tensor]:
        return self._encoder.collate(prepared)

    def num_tokens(self, prepared: Any) -> int:
        n = int(self._encoder.num_tokens(prepared))
        if self.manifest.pooled:
            return 1
        if self.manifest.projector is not None:
            if self._counter is None:  # built once: only its num_tokens() is used
                from .projectors import Projector

                self._counter = Projector.from_config(self.manifest.projector)
            return int(self._counter.num_tokens(n))
        return n

    def length(self, prepared: Any) -> int:
        return int(self._encoder.length(prepared))

    # -- running ---------------------------------------------------------------------------
    def run(self, **tensors: torch.Tensor) -> TokenEmbeddings:
        """The graph on collate tensors → :class:`TokenEmbeddings` (numpy feeds on CPU, IO binding on CUDA)."""
        if self.device.type == "cuda":
            outs = self._run_bound(tensors, "cuda", self._device_id)
        else:
            outs = [torch.from_numpy(np.asarray(o)) for o in self.session.run(self._out_names, _as_feed(tensors, self.manifest.inputs))]
        return self._wrap(outs)

    __call__ = run

    def encode(self, items: Sequence[Any]) -> TokenEmbeddings:
        """``run(**collate([prepare(x) ...]))``."""
        if not items:
            raise InvalidInputError(f"{self.name} (onnx): encode() got no items")
        return self.run(**self.collate([self.prepare(x, i) for i, x in enumerate(items)]))

    def _wrap(self, outs: Sequence[torch.Tensor]) -> TokenEmbeddings:
        if self.manifest.pooled:
            vectors = outs[0].float()  # (batch, dim)
            mask = torch.ones(vectors.shape[0], 1, dtype=torch.bool, device=vectors.device)
            return TokenEmbeddings(vectors.unsqueeze(1), mask, self.modality, self.space, self.pooling)
        return TokenEmbeddings(outs[0].float(), outs[1].bool(), self.modality, self.space, self.pooling)

    def _run_bound(self, tensors: dict[str, torch.Tensor], device_type: str, device_id: int) -> list[torch.Tensor]:
        """Run with IO binding: inputs bound from torch tensors on ``device_type`` (no host copy),
        outputs allocated by ONNX Runtime on the device and handed to torch through DLPack."""
        device = torch.device(device_type, device_id) if device_type == "cuda" else torch.device("cpu")
        binding = self.session.io_binding()
        keep = []
        for spec in self.manifest.inputs:
            if spec.name not in tensors:
                raise InvalidInputError(f"the ONNX graph needs input {spec.name!r}; got {sorted(tensors)}")
            t = tensors[spec.name].to(device=device, dtype=_TORCH[spec.dtype]).contiguous()
            keep.append(t)
            binding.bind_input(spec.name, device_type, device_id, _NUMPY[spec.dtype], tuple(t.shape), t.data_ptr())
        for spec in self.manifest.outputs:
            binding.bind_output(spec.name, device_type, device_id)
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()  # inputs written by torch before ORT reads them
        self.session.run_with_iobinding(binding)
        outs = []
        for spec, value in zip(self.manifest.outputs, binding.get_outputs()):
            try:
                t = torch.utils.dlpack.from_dlpack(value._ortvalue.to_dlpack())
            except Exception:  # noqa: BLE001 - builds without DLPack export: copy through the host
                t = torch.from_numpy(value.numpy()).to(device)
            outs.append(t.bool() if spec.dtype == "bool" else t)
        del keep
        return outs
