"""Benchmarks: torch eager vs ONNX Runtime per modality, same inputs, same run.

    from hub.onnx.bench import run
    rows = run(["text"], batch_size=8, items=32, json_path="benchmarks/results/bench.json")

For each modality (default: every installed one that can make ``examples``)
and its benchmark presets, the same ``examples(items, seed)`` are
length-bucketed once (as ``Hub.embed`` does) into batches of ``batch_size``.
Each runtime embeds those same batches end to end (preprocess included) after
one warm-up batch: torch eager through ``Hub.embed``, ONNX Runtime through
``hub.onnx.OnnxEncoder.encode`` on a model exported once (export time is
reported apart, never timed with the runs).  Rows carry items/s (best of
``repeats``), per-batch latency p50/p90, the speedup against torch eager from
the same run, and the largest difference to torch's tokens on those inputs.
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
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from ..encoder import Encoder
from ..errors import HubError, InvalidInputError, WeightsNotFoundError
from ..tokens import TokenEmbeddings

__all__ = ["BenchRow", "RUNTIMES", "presets", "machine_info", "run", "format_table"]

Runtime = Literal["torch", "onnx"]
RUNTIMES: tuple[str, ...] = ("torch", "onnx")



class BenchRow(BaseModel):
    """One (modality, encoder, runtime) measurement; ratios and diffs are against torch eager in the same run."""

    model_config = ConfigDict(extra="forbid")

    modality: str
    encoder: str
    runtime: str
    batch_size: int
    items: int
    tokens_per_item: float | None = None  # mean real tokens per item
    items_per_s: float | None = None  # best of the repeats
    ms_per_batch_p50: float | None = None
    ms_per_batch_p90: float | None = None
    speedup_vs_torch: float | None = None  # items/s over torch eager's items/s, same run
    max_abs_diff: float | None = None  # over real tokens, against torch eager
    min_cosine: float | None = None  # of pooled vectors per item, against torch eager
    export_s: float | None = None  # onnx: seconds to export (parity checks included); not in items/s
    providers: list[str] | None = None  # onnx: execution providers the session actually uses
    error: str | None = None  # why this row has no numbers


def presets(hub: Any, modality: str) -> list[str]:
    """Encoders benchmarked for ``modality``, from the registry: its first untrained preset (always runs
    offline), then its demo encoder (``Modality.demo_encoder``), without repeats."""
    known = set(hub.encoders(modality=modality))
    mod = hub.registry.modality(modality)
    untrained = hub.registry.list_encoders(modality=modality, pretrained=False)
    chosen = untrained[:1] + ([mod.demo_encoder] if mod.demo_encoder in known else [])
    return list(dict.fromkeys(chosen))


def machine_info() -> dict[str, Any]:
    """CPU, core and thread counts, library versions: what a benchmark number depends on."""
    info: dict[str, Any] = {
        "cpu": _cpu_name(),
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "torch_threads": torch.get_num_threads(),
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


def _time(fn: Callable[[list[Any]], TokenEmbeddings], batches: list[list[Any]], repeats: int,
          ) -> tuple[float, list[float], list[TokenEmbeddings]]:
    """Warm up on one batch, then ``repeats`` runs over every batch: (best total s, per-batch s, last outputs)."""
    fn(batches[0])
    best, lat, outs = float("inf"), [], []
    for _ in range(max(1, repeats)):
        outs, total = [], 0.0
        for batch in batches:
            start = time.perf_counter()
            outs.append(fn(batch))
            dt = time.perf_counter() - start
            lat.append(dt)
            total += dt
        best = min(best, total)
    return best, lat, outs


def _pct(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0] * 1000
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def _bench_encoder(hub: Any, modality: str, name: str, runtimes: Sequence[str], batch_size: int, items: int,
                   repeats: int, seed: int, workdir: Path) -> list[BenchRow]:
    mod = hub.registry.modality(modality)
    base = dict(modality=modality, encoder=name, batch_size=batch_size, items=items)
    try:
        enc: Encoder = hub.encoder(name)
    except WeightsNotFoundError as exc:
        return [BenchRow(runtime=r, **base, error=f"weights not available: {str(exc).splitlines()[0]}") for r in runtimes]
    data = list(mod.examples(items, seed))
    prepared = [enc.prepare(x, i) for i, x in enumerate(data)]
    order = sorted(range(len(data)), key=lambda i: enc.length(prepared[i]))  # the hub's length bucketing
    batches = [[data[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]
    tokens = sum(enc.num_tokens(p) for p in prepared) / len(prepared)
    base["tokens_per_item"] = tokens

    runners: dict[str, Callable[[], tuple[Callable[[list[Any]], TokenEmbeddings], dict[str, Any]]]] = {
        "torch": lambda: (lambda b: hub.embed(b, encoder=name, batch_size=batch_size, progress=False), {}),
        "onnx": lambda: _onnx_runner(hub, enc, workdir / f"{modality}-{name}"),
    }
    rows: list[BenchRow] = []
    ref: list[TokenEmbeddings] | None = None
    torch_rate: float | None = None
    for runtime in runtimes:
        try:
            fn, extra = runners[runtime]()
            best, lat, outs = _time(fn, batches, repeats)
        except HubError as exc:
            rows.append(BenchRow(runtime=runtime, **base, error=f"{type(exc).__name__}: {exc}"))
            continue
        rate = len(data) / best
        row = BenchRow(runtime=runtime, **base, items_per_s=rate, ms_per_batch_p50=_pct(lat, 50),
                       ms_per_batch_p90=_pct(lat, 90), **extra)
        if runtime == "torch":
            ref, torch_rate = outs, rate
            row.speedup_vs_torch, row.max_abs_diff, row.min_cosine = 1.0, 0.0, 1.0
        elif ref is not None and torch_rate:
            row.speedup_vs_torch = rate / torch_rate
            row.max_abs_diff, row.min_cosine = _compare(ref, outs)
        rows.append(row)
    return rows


def _onnx_runner(hub: Any, enc: Encoder, out_dir: Path):
    from .export import export
    from .runtime import OnnxEncoder

    start = time.perf_counter()
    export(enc, out_dir, hub=hub)
    export_s = time.perf_counter() - start
    onx = OnnxEncoder(out_dir, device="cpu", hub=hub)
    return onx.encode, {"export_s": export_s, "providers": list(onx.providers)}


def run(
    modalities: Sequence[str] | None = None,
    runtimes: Sequence[str] = ("torch", "onnx"),
    batch_size: int = 8,
    items: int = 32,
    repeats: int = 3,
    json_path: str | os.PathLike | None = None,
    hub: Any = None,
    progress: bool = True,
    *,
    seed: int = 0,
    encoders: Sequence[str] | None = None,
    print_table: bool = True,
) -> list[dict[str, Any]]:
    """Benchmark torch eager against ONNX Runtime; returns one row dict per (modality, encoder, runtime).

    ``modalities``: default every installed modality with ``Modality.examples``.
    ``encoders``: benchmark these instead of each modality's presets (see :func:`presets`).
    Rows whose encoder cannot run (weights absent, export failed) carry ``error`` and no numbers.
    Prints a table unless ``print_table=False``; writes ``{"meta": machine_info(), "rows": [...]}``
    to ``json_path`` when given.
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
    if modalities is None:
        modalities = [m for m in installed if hub.registry.modality(m).examples is not None]
    for m in modalities:
        if hub.registry.modality(m).examples is None:  # raises UnknownModalityError for unknown names
            raise InvalidInputError(
                f"modality {m!r} cannot be benchmarked: its plugin defines no Modality.examples(n, seed); "
                f"benchmarkable: {', '.join(x for x in installed if hub.registry.modality(x).examples) or 'none'}"
            )
    jobs = []
    for m in modalities:
        names = [e for e in encoders if hub.registry.encoder_spec(e).modality == m] if encoders else presets(hub, m)
        jobs.extend((m, e) for e in names)
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="mhub-bench-") as tmp:
        for modality, name in tqdm(jobs, desc="bench", unit="encoder", disable=not progress):
            rows.extend(_bench_encoder(hub, modality, name, runtimes, batch_size, items, repeats, seed, Path(tmp)))
    out = [r.model_dump() for r in rows]
    if print_table:
        print(format_table(out))
    if json_path is not None:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = machine_info() | {"batch_size": batch_size, "items": items, "repeats": repeats, "seed": seed}
        path.write_text(json.dumps({"meta": meta, "rows": out}, indent=2))
    return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as a fixed-width text table (errors on their own line)."""
    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    head = (f"{'modality':<8} {'encoder':<16} {'runtime':<7} {'tok/item':>8} {'items/s':>9} {'p50 ms':>8} "
            f"{'p90 ms':>8} {'speedup':>7} {'max|diff|':>9} {'min cos':>8} {'export s':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['modality']:<8} {r['encoder']:<16} {r['runtime']:<7} error: {r['error']}")
            continue
        lines.append(
            f"{r['modality']:<8} {r['encoder']:<16} {r['runtime']:<7} {num(r['tokens_per_item'], '8.1f')} "
            f"{num(r['items_per_s'], '9.1f')} {num(r['ms_per_batch_p50'], '8.2f')} {num(r['ms_per_batch_p90'], '8.2f')} "
            f"{num(r['speedup_vs_torch'], '6.2f') + 'x' if r['speedup_vs_torch'] is not None else '-':>7} {num(r['max_abs_diff'], '9.1e')} {num(r['min_cosine'], '8.5f')} "
            f"{num(r['export_s'], '8.1f')}"
        )
    return "\n".join(lines)
