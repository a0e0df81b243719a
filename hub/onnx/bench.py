"""Benchmarks: torch eager vs ONNX Runtime per modality, through the public path, interleaved, median of N.

    from hub.onnx.bench import run, load_cases
    rows = run(["text"], batch_size=8, items=32, hub=hub)                       # each modality's presets
    rows = run(cases=load_cases("benchmarks/bench_cases.json"), hub=hub)        # tiny and real-size configs

A *case* is an encoder name with options (``BenchCase``): a modality's untrained preset (default:
see :func:`presets`), or a real-size configuration with random weights (e.g. ``tiny-whisper`` with
whisper-base's sizes), read from a JSON file of cases.  Per case, the same
``examples(items, seed)`` are length-bucketed once (as ``Hub.embed`` does) into batches of
``batch_size``, and each runtime embeds those batches through ``hub.embed(batch, encoder=...,
options=..., runtime=...)``, the call users make: torch eager, and ONNX Runtime on an export made
once beforehand (``export_s``, never inside the timings; ``runtime="onnx", onnx_dir=...``).

After one warm-up pass each, ``passes`` timed passes over all batches alternate the order of the
runtimes (torch first on even passes, ONNX first on odd), so drift in machine load falls on both.
Each pass gives a ratio (torch seconds / ONNX seconds); a row reports the median ratio
(``speedup_vs_torch``) and the spread of the per-pass ratios as its noise band
(``ratio_lo``..``ratio_hi``, min..max).  ``beyond_noise`` is true when the whole band is above 1.0.
Rows also carry items/s (from the median pass), per-batch latency p50/p90, the largest difference
to torch's tokens and the smallest pooled cosine on those inputs.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm.auto import tqdm

from ..errors import HubError, InvalidInputError, WeightsNotFoundError
from ..tokens import TokenEmbeddings

__all__ = ["BenchCase", "BenchRow", "RUNTIMES", "presets", "load_cases", "machine_info", "run", "format_table"]

Runtime = Literal["torch", "onnx"]
RUNTIMES: tuple[str, ...] = ("torch", "onnx")


class BenchCase(BaseModel):
    """One configuration to measure: a registered encoder with options, on its modality's examples."""

    model_config = ConfigDict(extra="forbid")

    modality: str
    encoder: str
    options: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None  # what the options make, e.g. "whisper-base-sized (random init)"
    size: Literal["tiny", "real"] = "tiny"
    batch_size: int | None = Field(None, ge=1)  # default: run()'s
    items: int | None = Field(None, ge=1)  # default: run()'s


class BenchRow(BaseModel):
    """One (case, runtime) measurement; ratios and diffs are against torch eager in the same run."""

    model_config = ConfigDict(extra="forbid")

    modality: str
    encoder: str
    runtime: str
    batch_size: int
    items: int
    label: str | None = None
    size: str = "tiny"
    options: dict[str, Any] = Field(default_factory=dict)
    passes: int = 0
    tokens_per_item: float | None = None  # mean real tokens per item
    items_per_s: float | None = None  # from the median pass
    s_per_pass: float | None = None  # median over the timed passes
    ms_per_batch_p50: float | None = None
    ms_per_batch_p90: float | None = None
    speedup_vs_torch: float | None = None  # median over passes of torch s / this runtime's s
    ratio_lo: float | None = None  # noise band: the smallest per-pass ratio
    ratio_hi: float | None = None  # ... and the largest
    beyond_noise: bool | None = None  # ratio_lo > 1.0: faster than torch in every pass
    max_abs_diff: float | None = None  # over real tokens, against torch eager
    min_cosine: float | None = None  # of pooled vectors per item, against torch eager
    export_s: float | None = None  # onnx: seconds to export (parity checks included); not in the timings
    providers: list[str] | None = None  # onnx: execution providers the session actually uses
    fused_ops: dict[str, int] | None = None  # onnx: ONNX Runtime fused kernels in the exported graph
    error: str | None = None  # why this row has no numbers


def presets(hub: Any, modality: str) -> list[str]:
    """Encoders benchmarked for ``modality``, from the registry: its first untrained preset (always runs
    offline), then its demo encoder (``Modality.demo_encoder``), without repeats."""
    known = set(hub.encoders(modality=modality))
    mod = hub.registry.modality(modality)
    untrained = hub.registry.list_encoders(modality=modality, pretrained=False)
    chosen = untrained[:1] + ([mod.demo_encoder] if mod.demo_encoder in known else [])
    return list(dict.fromkeys(chosen))


def load_cases(path: str | os.PathLike) -> list[BenchCase]:
    """Cases from a JSON file: a list of :class:`BenchCase` objects (or ``{"cases": [...]}``)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"bench cases {str(path)!r} cannot be read as JSON ({exc})") from None
    raw = raw.get("cases") if isinstance(raw, dict) else raw
    if not isinstance(raw, list):
        raise InvalidInputError(f"bench cases {str(path)!r}: expected a JSON list of cases (or {{'cases': [...]}})")
    cases = []
    for i, c in enumerate(raw):
        try:
            cases.append(BenchCase.model_validate(c))
        except ValidationError as exc:
            err = exc.errors()[0]
            raise InvalidInputError(f"bench cases {str(path)!r}: case {i}: {'.'.join(map(str, err['loc']))}: "
                                    f"{err['msg']}; fields: {', '.join(BenchCase.model_fields)}") from None
    return cases


def machine_info() -> dict[str, Any]:
    """CPU, core and thread counts, load average, library versions: what a benchmark number depends on."""
    info: dict[str, Any] = {
        "cpu": _cpu_name(),
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for name in ("onnxruntime", "onnx", "transformers"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _physical_cores() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except ImportError:
        return None


def _compare(ref: Sequence[TokenEmbeddings], got: Sequence[TokenEmbeddings]) -> tuple[float, float]:
    """Largest abs diff over real tokens and smallest per-item cosine of pooled vectors, batch by batch."""
    worst, cos_min = 0.0, 1.0
    for a, b in zip(ref, got):
        if a.tokens.shape != b.tokens.shape or not torch.equal(a.mask.cpu(), b.mask.cpu()):
            raise InvalidInputError(
                f"{a.modality}: ONNX Runtime returned tokens {tuple(b.tokens.shape)} "
                f"but torch eager {tuple(a.tokens.shape)} (or different masks) on the same batch"
            )
        ta, tb = a.tokens.float().cpu(), b.tokens.float().cpu()
        m = a.mask.cpu()
        if m.any():
            worst = max(worst, float((ta[m] - tb[m]).abs().max()))
        pa, pb = a.to("cpu").pooled(), b.to("cpu").pooled()
        cos_min = min(cos_min, float(torch.nn.functional.cosine_similarity(pa.float(), pb.float(), dim=-1).min()))
    return worst, cos_min


def _pass(fn: Callable[[list[Any]], TokenEmbeddings], batches: list[list[Any]]) -> tuple[float, list[float], list[TokenEmbeddings]]:
    """One pass over every batch: (total s, per-batch s, outputs)."""
    lat, outs = [], []
    for batch in batches:
        start = time.perf_counter()
        outs.append(fn(batch))
        lat.append(time.perf_counter() - start)
    return sum(lat), lat, outs


def _pct(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0] * 1000
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def _case_batches(hub: Any, case: BenchCase, items: int, batch_size: int, seed: int) -> tuple[list[list[Any]], float]:
    """The case's examples, length-bucketed into batches as ``Hub.embed`` does; and the mean tokens per item."""
    mod = hub.registry.modality(case.modality)
    processor = hub.registry.create_processor(case.encoder, **case.options)  # weights-free: sizes and lengths only
    data = list(mod.examples(items, seed))
    prepared = [processor.prepare(x, i) for i, x in enumerate(data)]
    order = sorted(range(len(data)), key=lambda i: processor.length(prepared[i]))
    batches = [[data[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]
    return batches, sum(processor.num_tokens(p) for p in prepared) / len(prepared)


def _bench_case(hub: Any, case: BenchCase, runtimes: Sequence[str], batch_size: int, items: int, passes: int,
                seed: int, workdir: Path) -> list[BenchRow]:
    batch_size, items = case.batch_size or batch_size, case.items or items
    base = dict(modality=case.modality, encoder=case.encoder, batch_size=batch_size, items=items, label=case.label,
                size=case.size, options=dict(case.options), passes=passes)
    try:
        batches, tokens = _case_batches(hub, case, items, batch_size, seed)
    except (WeightsNotFoundError, HubError) as exc:
        return [BenchRow(runtime=r, **base, error=f"{type(exc).__name__}: {str(exc).splitlines()[0]}") for r in runtimes]
    base["tokens_per_item"] = tokens
    name, opts = case.encoder, dict(case.options)

    def embed(runtime: str, onnx_dir: Path | None = None) -> Callable[[list[Any]], TokenEmbeddings]:
        return lambda b: hub.embed(b, encoder=name, options=opts or None, batch_size=batch_size, progress=False,
                                   cache=False, runtime=runtime, onnx_dir=onnx_dir)

    fns: dict[str, Callable[[list[Any]], TokenEmbeddings]] = {}
    extra: dict[str, dict[str, Any]] = {r: {} for r in runtimes}
    errors: dict[str, str] = {}
    for runtime in runtimes:
        try:
            if runtime == "onnx":
                from .export import export

                out_dir = workdir / f"{case.modality}-{name}-{len(list(workdir.iterdir()))}"
                start = time.perf_counter()
                export(case.modality, out_dir, encoder=name, options=opts, registry=hub.registry, hub=hub)
                extra[runtime]["export_s"] = time.perf_counter() - start
                fns[runtime] = embed("onnx", out_dir)
                fns[runtime](batches[0])  # warm-up (builds the session)
                served = hub.onnx_encoder(name, directory=out_dir, **opts)
                extra[runtime]["providers"] = list(served.providers)
                extra[runtime]["fused_ops"] = getattr(served.manifest, "fused_ops", None) or None
            else:
                fns[runtime] = embed("torch")
                fns[runtime](batches[0])  # warm-up (builds the encoder)
        except HubError as exc:
            errors[runtime] = f"{type(exc).__name__}: {exc}"
    live = [r for r in runtimes if r in fns]
    totals: dict[str, list[float]] = {r: [] for r in live}
    lat: dict[str, list[float]] = {r: [] for r in live}
    outs: dict[str, list[TokenEmbeddings]] = {}
    for p in range(passes):
        for runtime in (live if p % 2 == 0 else live[::-1]):  # interleaved: alternate who goes first
            total, per_batch, outs[runtime] = _pass(fns[runtime], batches)
            totals[runtime].append(total)
            lat[runtime].extend(per_batch)
    rows: list[BenchRow] = []
    for runtime in runtimes:
        if runtime in errors:
            rows.append(BenchRow(runtime=runtime, **base, error=errors[runtime]))
            continue
        median = statistics.median(totals[runtime])
        row = BenchRow(runtime=runtime, **base, items_per_s=items / median, s_per_pass=median,
                       ms_per_batch_p50=_pct(lat[runtime], 50), ms_per_batch_p90=_pct(lat[runtime], 90),
                       **extra[runtime])
        if runtime == "torch":
            row.speedup_vs_torch = row.ratio_lo = row.ratio_hi = 1.0
            row.max_abs_diff, row.min_cosine = 0.0, 1.0
        elif "torch" in totals:
            ratios = [t / o for t, o in zip(totals["torch"], totals[runtime])]
            row.speedup_vs_torch = statistics.median(ratios)
            row.ratio_lo, row.ratio_hi = min(ratios), max(ratios)
            row.beyond_noise = row.ratio_lo > 1.0
            row.max_abs_diff, row.min_cosine = _compare(outs["torch"], outs[runtime])
        rows.append(row)
    return rows


def run(
    modalities: Sequence[str] | None = None,
    runtimes: Sequence[str] = ("torch", "onnx"),
    batch_size: int = 8,
    items: int = 32,
    repeats: int = 5,
    json_path: str | os.PathLike | None = None,
    hub: Any = None,
    progress: bool = True,
    *,
    seed: int = 0,
    encoders: Sequence[str] | None = None,
    cases: Sequence[BenchCase | dict[str, Any]] | None = None,
    print_table: bool = True,
) -> list[dict[str, Any]]:
    """Benchmark torch eager against ONNX Runtime; returns one row dict per (case, runtime).

    ``repeats``: timed passes per case (interleaved; the median is reported, the spread of the
    per-pass ratios is the noise band).  ``modalities``: default every installed modality with
    ``Modality.examples``.  ``encoders``: benchmark these (default options) instead of each modality's
    presets (see :func:`presets`); ``cases``: these :class:`BenchCase` (e.g. :func:`load_cases`),
    filtered by ``modalities`` when given.  Rows whose encoder cannot run (weights absent, export
    failed) carry ``error`` and no numbers.  Prints a table unless ``print_table=False``; writes
    ``{"meta": machine_info(), "rows": [...]}`` to ``json_path`` when given.
    """
    if hub is None or not hasattr(hub, "embed"):
        raise InvalidInputError("run() measures the public path: pass hub=hub.Hub() (embed, encoder, onnx_encoder)")
    for what, value in (("batch_size", batch_size), ("items", items), ("repeats", repeats)):
        if not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{what} must be a positive int, got {value!r}")
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown or not runtimes:
        raise InvalidInputError(f"unknown runtime(s) {unknown or list(runtimes)}; choose from {', '.join(RUNTIMES)}")
    runtimes = [r for r in RUNTIMES if r in runtimes]  # torch first: the reference for ratios and diffs
    installed = hub.modalities()
    jobs: list[BenchCase]
    if cases is not None:
        jobs = [c if isinstance(c, BenchCase) else BenchCase.model_validate(c) for c in cases]
        jobs = [c for c in jobs if modalities is None or c.modality in modalities]
    else:
        if modalities is None:
            modalities = [m for m in installed if hub.registry.modality(m).examples is not None]
        jobs = []
        for m in modalities:
            names = [e for e in encoders if hub.registry.encoder_spec(e).modality == m] if encoders else presets(hub, m)
            jobs.extend(BenchCase(modality=m, encoder=e) for e in names)
    for m in dict.fromkeys(c.modality for c in jobs):
        if hub.registry.modality(m).examples is None:  # raises UnknownModalityError for unknown names
            raise InvalidInputError(
                f"modality {m!r} cannot be benchmarked: its plugin defines no Modality.examples(n, seed); "
                f"benchmarkable: {', '.join(x for x in installed if hub.registry.modality(x).examples) or 'none'}"
            )
    meta = machine_info() | {"batch_size": batch_size, "items": items, "passes": repeats, "seed": seed}
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="mhub-bench-") as tmp:
        for case in tqdm(jobs, desc="bench", unit="case", disable=not progress):
            rows.extend(_bench_case(hub, case, runtimes, batch_size, items, repeats, seed, Path(tmp)))
    if hasattr(os, "getloadavg"):
        meta["load_average_end"] = list(os.getloadavg())
    out = [r.model_dump() for r in rows]
    if print_table:
        print(format_table(out))
    if json_path is not None:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": meta, "rows": out}, indent=2))
    return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as a fixed-width text table (errors on their own line); ``band`` is the per-pass ratio spread."""
    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    head = (f"{'modality':<8} {'encoder':<24} {'size':<4} {'runtime':<7} {'tok/item':>8} {'items/s':>9} "
            f"{'p50 ms':>8} {'speedup':>7} {'band':>11} {'max|diff|':>9} {'min cos':>8} {'export s':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        label = r.get("label") or r["encoder"]
        if r.get("error"):
            lines.append(f"{r['modality']:<8} {label[:24]:<24} {r.get('size', ''):<4} {r['runtime']:<7} error: {r['error']}")
            continue
        speed = num(r.get("speedup_vs_torch"), "6.2f") + "x" if r.get("speedup_vs_torch") is not None else "-"
        band = (f"{r['ratio_lo']:.2f}-{r['ratio_hi']:.2f}" + ("*" if r.get("beyond_noise") else " ")
                if r.get("ratio_lo") is not None and r["runtime"] != "torch" else "-")
        lines.append(
            f"{r['modality']:<8} {label[:24]:<24} {r.get('size', ''):<4} {r['runtime']:<7} "
            f"{num(r['tokens_per_item'], '8.1f')} {num(r['items_per_s'], '9.1f')} {num(r['ms_per_batch_p50'], '8.2f')} "
            f"{speed:>7} {band:>11} {num(r['max_abs_diff'], '9.1e')} {num(r['min_cosine'], '8.5f')} "
            f"{num(r['export_s'], '8.1f')}"
        )
    lines.append("speedup: median over passes of torch s / runtime s; band: min-max per-pass ratio "
                 "(* = faster than torch eager in every pass)")
    return "\n".join(lines)
