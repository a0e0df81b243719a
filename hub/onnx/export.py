"""Exporting an encoder (alone, or with its projector and pooling) to ONNX, checked against PyTorch.

The ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``) traces the
encoder's ``forward`` half with a dynamic dimension for every collate dimension that varies
across items (batch, sequence length, frames, nodes, points); ONNX Runtime is then checked
against PyTorch on fresh items, and ``model.onnx`` is written with a pydantic
``manifest.json`` (inputs/outputs, preprocessing, source ids, weight hashes, opset, parity
report).  A failed export raises :class:`~hub.errors.ExportError` and keeps nothing.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .._registry import Registry, resolve_registry
from ..encoder import Encoder
from ..errors import ExportError, HubError, InvalidInputError
from .._atomic import atomic_dir
from .._manifest import inside
from ..lm import MultimodalLM, Projector
from ..train import AlignResult, is_aligned_dir
from ..lm.bundle import MANIFEST as BUNDLE_MANIFEST
from ..lm.bundle import load_bundle_manifest
from ..tokens import Pooling, TokenEmbeddings
from ..weights import state_dict_sha256
from .manifest import MANIFEST_NAME, MODEL_NAME, Dtype, ExportManifest, TensorSpec, file_sha256
from .optimize import fuse
from .parity import OUTPUT_NAMES, graph_input_names, parity, worst
from .processor import save_processor
from .triton import write_triton_repository

__all__ = ["export", "PARITY_BATCHES", "PROBE_BATCHES"]

#: where a local encoder directory is copied inside an export (recorded relative: never an absolute path)
ENCODER_DIR = "encoder"

#: batch sizes of the parity cases (fresh items, varied sizes)
PARITY_BATCHES = (1, 1, 2, 7)
#: batch sizes whose collates decide which dimensions are dynamic
PROBE_BATCHES = (1, 2, 3, 4)
#: batch sizes of the int8 calibration (fresh items): each linear layer's cost is measured on them
CALIBRATION_BATCHES = (16,)


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
    transforms: tuple = ()  # an aligned directory's input transforms (align.json), applied before the processor


def _resolve(source: str | Encoder, encoder: str | None, options: dict[str, Any] | None, bundle: str | None,
             with_projector: bool, registry: Registry, hub: Any) -> _Source:
    options = dict(options or {})
    if with_projector and bundle is None:
        raise InvalidInputError("with_projector=True needs bundle= (a MultimodalLM bundle directory whose projector "
                                "for this modality is fused into the graph)")
    if isinstance(source, Encoder):
        enc, name = source, source.name
        if name not in registry.list_encoders():
            raise ExportError(
                f"encoder instance {name!r} is not a registered encoder, so the export could not name the "
                "preprocessing to rebuild at serving time; export it by registered name (and options=)"
            )
        modality = enc.modality
    else:
        modality = source
        registry.modality(modality)  # a typed error when no plugin provides it
        enc = None
        name = encoder or registry.modality(modality).default_encoder
    preprocess_options = dict(options)
    projector, space, pooling, transforms = None, None, None, ()
    if bundle is not None and (Path(bundle) / "align.json").is_file():
        # an aligned projector from hub.train.align (no backbone): its encoder + projector
        ref = AlignResult.read_manifest(bundle)  # size cap, format, hashes, paths, options
        if ref.modality != modality:
            raise InvalidInputError(f"{str(bundle)!r} aligns {ref.modality!r}, not {modality!r}")
        if encoder is not None and encoder != ref.encoder:
            raise InvalidInputError(f"{str(bundle)!r} was aligned with encoder {ref.encoder!r}, not {encoder!r}")
        result = AlignResult.load(bundle, registry=registry)
        enc, name, options = result.encoder, ref.encoder, dict(ref.encoder_options)
        preprocess_options, transforms = dict(options), tuple(ref.transforms)
        if ref.encoder_dir:
            preprocess_options["weights"] = str(inside(Path(bundle), ref.encoder_dir, "align.json: encoder_dir"))
        if with_projector:
            projector, space = result.projector, ref.space
            pooling = enc.pooling if projector.per_token else "mean"
    elif bundle is not None:
        lm = MultimodalLM.load(bundle, registry=registry)
        if modality not in lm._plugged:
            raise InvalidInputError(f"bundle {str(bundle)!r} has no {modality!r} plugged; it plugs "
                                    f"{', '.join(lm._plugged) or 'nothing'}")
        plug = lm._plugged[modality]
        ref = load_bundle_manifest(Path(bundle)).modalities[modality]  # checked as MultimodalLM.load checks it
        if enc is None:
            if encoder is not None and encoder != ref.encoder:
                raise InvalidInputError(f"bundle {str(bundle)!r} plugs encoder {ref.encoder!r} for {modality}, "
                                        f"not {encoder!r}; leave encoder= out to export the bundle's")
            enc, name = plug.encoder, ref.encoder
            options = dict(ref.encoder_options)
            preprocess_options = dict(options)
            if ref.encoder_dir:
                preprocess_options["weights"] = str(inside(Path(bundle), ref.encoder_dir, f"{BUNDLE_MANIFEST}: encoder_dir"))
        if with_projector:
            projector = plug.projector
            if projector.in_dim != enc.dim:
                raise InvalidInputError(f"the bundle's {modality} projector takes dim {projector.in_dim}; "
                                        f"encoder {name!r} gives dim {enc.dim}")
            space = lm.backbone.space
            pooling = enc.pooling if projector.per_token else "mean"
    if enc is None:
        enc = (hub.encoder(name, modality=modality, **options) if hub is not None  # shares the hub's instance
               else registry.create_encoder(name, **options))
    return _Source(enc.eval(), name, options, preprocess_options, projector,
                   space or enc.space, pooling or enc.pooling, transforms)


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

def _ort_failure(stage: str, name: str, modality: str, exc: Exception, graph_names: dict[str, str],
                 dims: dict[str, dict[int, str]]) -> str:
    """The :class:`ExportError` message for ONNX Runtime failing to load (``stage="loading"``) or run the graph."""
    import onnxruntime as ort

    text = str(exc).strip()
    first = text.splitlines()[0][:500].rstrip(".") if text else ""
    from_ort = type(exc).__module__.startswith("onnxruntime")
    if stage == "running" and not from_ort:
        return (f"checking the ONNX export of {name} ({modality}) against PyTorch failed before comparing: "
                f"{type(exc).__name__}: {first}. The plugin's prepare/collate/forward must accept every item of "
                "Modality.examples(n, seed) and collate the same keys, ranks and dtypes for every batch")
    if "Duplicate definition" in text:
        fix = (f"two graph values share a name; graph inputs are {graph_names} (collate key -> input) and outputs "
               f"are {list(OUTPUT_NAMES)}: rename the clashing collate key")
    elif "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text:
        fix = ("an operator in the encoder's forward has no ONNX Runtime kernel for its input types: cast inputs "
               "to float32/int64 in forward, try dtype='fp32', or another opset (opset=18..)")
    elif stage == "loading":
        fix = ("the graph does not validate: try another opset (opset=18 or newer), dtype='fp32', or a newer "
               "onnxruntime; report the encoder if it persists")
    else:
        fix = (f"the graph loads but fails on fresh examples of other sizes: forward specialises on a size seen "
               f"while tracing (dynamic dimensions asked for: {dims or 'none'}). Keep forward pure tensor code "
               "(no Python branching on sizes, no .item()/.tolist(), no sizes baked into reshape/view)")
    return (f"ONNX Runtime {ort.__version__} failed {stage} the export of {name} ({modality}): "
            f"{type(exc).__name__}: {first}. Fix: {fix}. Nothing was written")



def _unfuse(model_path: Path, unfused: Path, name: str, why: str) -> tuple[dict[str, int], bool]:
    """Put the unfused graph back (the fusions failed or broke the graph): ``({}, False)`` for ``fused, optimize``."""
    warnings.warn(f"ONNX Runtime fusions of {name} failed ({why.splitlines()[0][:300] if why else ''}); "
                  "keeping the unfused graph", RuntimeWarning, stacklevel=3)
    shutil.move(str(unfused), str(model_path))
    return {}, False


def _local_dir(value: Any) -> Path | None:
    """``value`` as a local directory when it names one (absolute, or existing relative to the working directory)."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() or path.exists() else None


def _portable(staging: Path, options: dict[str, Any], preprocess: dict[str, Any], weights: str | None, *,
              copy: bool = True) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """Options and ``weights`` as the manifest records them: never a path outside the export.

    A local weights directory (a bundle's saved encoder, or one the caller named) is copied into
    ``staging/encoder`` and recorded as ``"encoder"`` (relative: :func:`hub.onnx.manifest.load_manifest`
    resolves it inside the export), or dropped when not ``copy`` (the export carries its processor's own
    files); hub ids and descriptions stay as they are."""
    copied: dict[str, str] = {}

    def portable(value: Any) -> Any:
        local = _local_dir(value)
        if local is None:
            return value
        if not local.is_dir() or not copy:
            return None
        key = str(local.resolve())
        if key not in copied:
            name = ENCODER_DIR if not copied else f"{ENCODER_DIR}-{len(copied)}"
            shutil.copytree(local, staging / name, symlinks=False)
            copied[key] = name
        return copied[key]

    out_options = {k: portable(v) if k == "weights" else v for k, v in options.items()}
    out_pre = {k: portable(v) if k == "weights" else v for k, v in preprocess.items()}
    out_weights = portable(weights) if _local_dir(weights) is not None else weights
    return ({k: v for k, v in out_options.items() if v is not None},
            {k: v for k, v in out_pre.items() if v is not None}, out_weights)


def _check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).is_file())):
        raise ExportError(f"{str(out)!r} exists and is not an empty directory or an earlier ONNX export; "
                          "choose a new or empty directory (nothing was written)")

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
    optimize: bool = True,
    triton: bool = False,
    registry: Registry | None = None,
    hub: Any = None,
    seed: int = 0,
) -> ExportManifest:
    """Export an encoder (+ the bundle's projector, + pooling) to ``out_dir/model.onnx`` with a manifest.

    ``source`` is a modality name (then ``encoder``, or the modality's default, built
    with ``options``) or a registered :class:`Encoder` instance (``options``: the options
    it was built with, so serving rebuilds the same preprocessing).  ``bundle`` is a
    :class:`~hub.lm.MultimodalLM` bundle directory: its encoder for the modality
    is exported, and with ``with_projector=True`` its projector runs in the same graph
    (tokens in the backbone's space).  ``pooled=True`` fuses the pooling: one vector
    per item.  ``dtype="fp16"`` exports a half-precision graph (float inputs float16,
    outputs float32); ``dtype="int8"`` quantizes the linear layers' weights (:mod:`hub.onnx.quantize`:
    dynamic int8, the costliest layers on the modality's examples as 8-bit blocks).  ``optimize=True``
    (the default) rewrites the graph with ONNX Runtime's fused kernels (:mod:`hub.onnx.optimize`:
    Attention, BiasGelu; SkipLayerNormalization split back into Add + LayerNormalization); the manifest's ``fused_ops`` counts them.  The parity check (ONNX Runtime CPU vs PyTorch fp32 on fresh
    ``Modality.examples`` at batch sizes 1, 2 and 7) must pass — max abs diff
    ≤ :data:`hub.onnx.parity.FP32_TOLERANCE` for fp32, cosine ≥ :data:`hub.onnx.parity.FP16_MIN_COSINE` for fp16,
    ≥ :data:`hub.onnx.parity.INT8_MIN_COSINE` for int8 — or
    :class:`ExportError` is raised and nothing is kept.  ``triton=True`` also writes
    ``out_dir/triton/<name>/`` (see :func:`write_triton_repository`).
    """
    if encoder is not None and bundle is None and not isinstance(source, Encoder) and is_aligned_dir(encoder):
        bundle, encoder, with_projector = encoder, None, True  # an aligned directory is an encoder: both halves
    if dtype not in ("fp32", "fp16", "int8"):
        raise InvalidInputError(f"dtype must be 'fp32', 'fp16' or 'int8'; got {dtype!r}")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise InvalidInputError(f"opset must be an int >= 7 (the exporter targets 18 and newer best); got {opset!r}")
    out = Path(out_dir)
    _check_out_dir(out)
    registry = resolve_registry(registry, hub)
    src = _resolve(source, encoder, options, None if bundle is None else str(bundle), with_projector, registry, hub)
    enc = src.encoder
    modality = registry.modality(enc.modality)
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
    graph_names = graph_input_names(names)  # input_<key> for a key that is also an output name (mask, tokens, pooled)
    dims = _dynamic_dims(names, probes)
    for key, axes in getattr(enc.item_processor, "dynamic_dims", {}).items():  # own, dynamic even where probes agree
        dims.setdefault(key, {}).update({k: f"{key}_axis{k}" for k in axes})
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

    # staged beside out_dir (same filesystem), swapped in only when complete and checked (hub._atomic)
    with atomic_dir(out, marker=MANIFEST_NAME, what="an ONNX export", error=ExportError) as staging:
        model_path = staging / MODEL_NAME
        try:
            with _quiet_exporter(), torch.no_grad():
                program = torch.onnx.export(graph, args, input_names=[graph_names[n] for n in names], output_names=output_names,
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
        quantization = None
        if dtype == "int8":  # the linear layers' weights, calibrated on fresh examples (hub.onnx.quantize)
            from .quantize import quantize_int8

            calib = list(modality.examples(sum(CALIBRATION_BATCHES), seed + 2))
            cbatches = [enc.collate([enc.prepare(x, i) for i, x in enumerate(calib[s : s + n])])
                        for s, n in zip(np.cumsum((0, *CALIBRATION_BATCHES)), CALIBRATION_BATCHES)]
            quantization = quantize_int8(model_path, reference, [tuple(t[n].to(device) for n in names) for t in cbatches],
                                         pooled)
        fused: dict[str, int] = {}
        unfused = staging / "unfused.onnx"  # kept until the fused graph passes its check (removed before hashing)
        if optimize:
            shutil.copyfile(model_path, unfused)
            try:
                fused = fuse(model_path)
            except Exception as exc:  # noqa: BLE001 - the rewriter raises many kinds; the plain graph still serves
                fused, optimize = _unfuse(model_path, unfused, src.name, f"{type(exc).__name__}: {exc}")

        def verify() -> tuple[list[TensorSpec], list[TensorSpec], int, Any]:
            inputs, outputs, graph_opset = _graph_specs(model_path)
            for spec in inputs:  # the exporter must not have fixed a dimension that varies
                for k, d in dims.get({g: n for n, g in graph_names.items()}.get(spec.name, spec.name), {}).items():
                    if isinstance(spec.shape[k], int):
                        raise ExportError(
                            f"the exported graph fixed {spec.name!r} dimension {k} to {spec.shape[k]}, but it varies "
                            f"across items ({d}); the encoder's forward specialises on that size"
                        )
            import onnxruntime as ort

            try:
                session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind exception types
                raise ExportError(_ort_failure("loading", src.name, enc.modality, exc, graph_names, dims)) from exc
            fresh = list(modality.examples(sum(PARITY_BATCHES), seed + 1))
            batches, start = [], 0
            for n in PARITY_BATCHES:
                batches.append(fresh[start : start + n])
                start += n
            try:
                return inputs, outputs, graph_opset, parity(session, reference, enc, names, inputs, batches, dtype)
            except HubError:
                raise
            except Exception as exc:  # noqa: BLE001 - an onnxruntime run failure, or the plugin failing on examples
                raise ExportError(_ort_failure("running", src.name, enc.modality, exc, graph_names, dims)) from exc

        while True:  # the fused graph first; the unfused one when fusing broke what the plain graph passes
            try:
                inputs, outputs, graph_opset, report = verify()
            except ExportError as exc:
                if not optimize:
                    raise
                fused, optimize = _unfuse(model_path, unfused, src.name, str(exc))
                continue
            if report.passed or not optimize:
                break
            w = worst(report)
            fused, optimize = _unfuse(model_path, unfused, src.name, f"parity {w.max_abs_diff:.3g} max abs diff, "
                                                                     f"{w.min_cosine:.6f} min cosine")
        unfused.unlink(missing_ok=True)
        if not report.passed:
            w = worst(report)
            bound = "<" if report.metric == "cosine" else ">"
            value = w.min_cosine if report.metric == "cosine" else w.max_abs_diff
            raise ExportError(
                f"ONNX export of {src.name} ({enc.modality}{', with projector' if src.projector else ''}"
                f"{', pooled' if pooled else ''}, {dtype}) failed its parity check against PyTorch: worst case "
                f"batch {w.batch}, item sizes {w.sizes}: {report.metric} {value:.3g} {bound} tolerance "
                f"{report.tolerance:g} (max abs diff {w.max_abs_diff:.3g}, min cosine {w.min_cosine:.6f}). "
                f"Nothing was written to {str(out)!r}. Try dtype='fp32', optimize=False, another opset, or "
                "report the encoder"
            )
        preprocess = save_processor(enc, src.name, src.preprocess_options, registry, staging)
        if src.transforms:  # OnnxEncoder applies them before the processor, as the aligned encoder does
            preprocess["transforms"] = [dict(t) for t in src.transforms]
        # never a path outside the export: a local weights directory is copied in (or dropped when the
        # processor's own files are there) and recorded relative (hub.onnx.manifest.load_manifest resolves it)
        options, preprocess["options"], weights = _portable(staging, src.options, dict(preprocess.get("options") or {}),
                                                            enc.weights, copy=not preprocess.get("processor_dir"))
        hashes = {p.relative_to(staging).as_posix(): file_sha256(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        hashes["encoder"] = state_dict_sha256(enc)
        if src.projector is not None:
            hashes["projector"] = state_dict_sha256(src.projector)
        manifest = ExportManifest(
            modality=enc.modality, encoder=src.name, encoder_options=options, weights=weights,
            space=src.space, pooling=src.pooling, with_projector=src.projector is not None,
            projector=src.projector.config.model_dump() if src.projector is not None else None,
            pooled=pooled, dtype=dtype, opset=graph_opset, inputs=inputs, outputs=outputs,
            preprocess=preprocess, optimized=optimize, fused_ops=fused, quantization=quantization,
            hashes=hashes, parity=report,
        )
        (staging / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
        if triton:
            write_triton_repository(staging, staging / "triton")
        _check_out_dir(out)
    return manifest
