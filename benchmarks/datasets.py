"""Dataset embedding throughput: the local engine and the Ray engine against a plain Hub.embed loop.

    python benchmarks/datasets.py                 # 100k short texts (minilm-l6), 20k images (tiny-clip)
    python benchmarks/datasets.py --quick         # 2k texts, 400 images, RSS at 1k / 10k rows
    python benchmarks/datasets.py --texts 50000 --images 0 --modes plain,local --repeats 1

For each workload, in one run and on the same items (a Parquet file: id + text,
or id + PNG bytes):

* plain: ``Hub.embed`` over the items in chunks of ``--batch-size`` in this process
  (items already in memory, vectors pooled and kept; nothing read or written);
* local: ``hub.datasets.embed_dataset(engine="local")`` (reads Parquet, writes Parquet);
* ray: ``embed_dataset(engine="ray", workers=--workers)`` on a local Ray started once
  beforehand (actor start-up and model loading are inside the timing).

The modes run interleaved ``--repeats`` times, the order rotated every round
(plain, local, ray; then local, ray, plain; ...), and each mode's median is
kept: on a shared machine the load changes from minute to minute, and a mode
always run first (or last) would carry the drift.  The plain loop and the
local engine also record the CPU seconds this process spent per item (less
sensitive to other processes than wall time), and every run the load average.
For Ray, the summary's ``phases`` split start-up (actor processes, imports,
model loading) from the steady embedding rate.  After each Ray run, and outside
every timing, the benchmark waits until Ray's processes are idle: the actors'
and workers' teardown goes on for about 4 s after ``embed_dataset`` returns
(0.7-0.9 CPU s per second, measured) and would otherwise slow whichever mode
runs next.  ``--image-repeats`` gives the image workload its own (larger) number
of rounds: each round takes seconds, and its ratio is the most sensitive to noise.

Items/s and the ratios local/plain and ray/plain are printed and written to
``benchmarks/results/datasets.json``.  The local engine's peak RSS is measured in
fresh processes at two sizes (``--rss-sizes``) on short texts with a small
text encoder (``--rss-encoder``, default tiny-bert: the engine's memory is measured,
not the model's speed), sampling RSS every 20 ms: it should stay flat as the
dataset grows.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402

WORDS = ("cat dog car train graph mesh audio music tree river sun moon red blue small large old new fast slow "
         "house road city field song voice photo cloud point edge node wave light dark").split()


def make_texts(n: int, path: Path, seed: int = 0) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 13, n)
    picks = rng.integers(0, len(WORDS), int(lengths.sum()))
    texts, at = [], 0
    for i, k in enumerate(lengths):
        texts.append(f"item {i}: " + " ".join(WORDS[j] for j in picks[at : at + k]))
        at += k
    pq.write_table(pa.table({"id": [f"t{i}" for i in range(n)], "text": texts}), path, row_group_size=8192)
    return texts


def make_images(n: int, path: Path, seed: int = 0, size: int = 40) -> list[bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    pq.write_table(pa.table({"id": [f"i{i}" for i in range(n)], "image": pa.array(out, pa.binary())}), path,
                   row_group_size=2048)
    return out


def plain_loop(h, items, encoder: str, modality: str, batch_size: int, model_batch_size: int,
               runtime: str = "torch") -> float:
    start = time.perf_counter()
    kept = []
    for s in range(0, len(items), batch_size):
        te = h.embed(items[s : s + batch_size], modality=modality, encoder=encoder, batch_size=model_batch_size,
                     progress=False, runtime=runtime)
        kept.append(te.pooled().numpy())
    return time.perf_counter() - start


def current_rss() -> int:
    """Resident set size of this process in bytes (psutil when installed, else /proc/self/statm)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_child(n: int, workdir: Path, batch_size: int, encoder: str) -> dict:
    """Run in a fresh process: embed n texts with the local engine, sampling RSS every 20 ms."""
    import threading

    from hub import Hub
    from hub.datasets import embed_dataset

    src = workdir / f"rss-{n}.parquet"
    make_texts(n, src, seed=1)
    h = Hub()
    h.embed(["warm up"], encoder=encoder)
    base = current_rss()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], current_rss())
            stop.wait(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    s = embed_dataset(src, workdir / f"rss-{n}-out", encoder=encoder, column="text", hub=h, progress=False,
                      batch_size=batch_size, lance=False)
    stop.set()
    t.join()
    mb = 1024 * 1024
    return {"rows": n, "encoder": encoder, "rss_mb_before": round(base / mb, 1), "peak_rss_mb": round(peak[0] / mb, 1),
            "growth_mb": round((peak[0] - base) / mb, 1),
            "items_per_s": round(s.rows_written / s.details["embed_seconds"], 1), "complete": s.complete}


def _ray_cpu_seconds() -> float | None:
    """CPU seconds used so far by this machine's Ray processes (workers, raylet, GCS), from /proc; None elsewhere."""
    if not os.path.isdir("/proc"):
        return None
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read(300)
            if b"ray::" not in cmd and b"raylet" not in cmd and b"gcs_server" not in cmd and b"default_worker" not in cmd:
                continue
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError, IndexError):
            continue
    return total


def settle_ray(limit_s: float = 20.0) -> float:
    """After a Ray run: wait until Ray's processes are idle (under 0.1 CPU over half a second), so that the
    teardown of the actors and workers (measured: 0.7-0.9 CPU s per second for about 4 s after the run
    returns) does not run inside the next mode's timing. Returns the seconds waited."""
    start = time.perf_counter()
    prev = _ray_cpu_seconds()
    if prev is None:
        time.sleep(5.0)
        return 5.0
    while time.perf_counter() - start < limit_s:
        time.sleep(0.5)
        now = _ray_cpu_seconds() or 0.0
        if now - prev < 0.05:
            break
        prev = now
    return time.perf_counter() - start


def median(xs: list[float]) -> float:
    import statistics

    return statistics.median(xs) if xs else 0.0


def run_mode(mode: str, h, args, modality: str, encoder: str, column: str, items, path: Path, out: Path) -> dict:
    """One timed run of one mode; returns its items/s, CPU seconds per item (this process) and load average."""
    from hub.datasets import embed_dataset

    load0 = os.getloadavg()[0]
    cpu0 = time.process_time()
    rec: dict = {"mode": mode}
    if mode == "plain":
        secs = plain_loop(h, items, encoder, modality, args.batch_size, args.model_batch_size, args.runtime)
        rec["items_per_s"] = len(items) / secs
    else:
        s = embed_dataset(path, out, encoder=encoder, column=column, hub=h, engine=mode, workers=args.workers,
                          batch_size=args.batch_size, model_batch_size=args.model_batch_size, runtime=args.runtime,
                          lance=args.lance, progress=False, resume=False)
        assert s.complete and s.errors == 0, s
        rec["items_per_s"] = s.rows_written / s.seconds
        rec["seconds"] = round(s.seconds, 2)
        if mode == "ray":
            rec["cpus_per_actor"] = s.details.get("cpus_per_actor")
            rec["phases"] = s.details.get("phases", {})
        shutil.rmtree(out, ignore_errors=True)
    load1 = os.getloadavg()[0]
    if mode == "ray":  # outside the timing: Ray's teardown must not count against the next mode
        rec["settle_s"] = round(settle_ray(), 1)
    if mode != "ray":  # the work runs in this process (Ray's runs in its actors)
        rec["cpu_s_per_1k_items"] = round(1000 * (time.process_time() - cpu0) / len(items), 3)
    rec["load_avg"] = [round(load0, 2), round(load1, 2)]
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=100_000)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true", help="small sizes for development (2k texts, 400 images)")
    ap.add_argument("--modes", default="plain,local,ray", help="comma-separated subset of plain,local,ray")
    ap.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                    help="the runtime of every mode (the plain loop's h.embed(runtime=...) and the engines')")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--model-batch-size", type=int, default=32)
    ap.add_argument("--rss-sizes", default="10000,100000")
    ap.add_argument("--rss-encoder", default="tiny-bert",
                    help="text encoder of the RSS runs (the engine's memory, not the model's speed, is measured)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (order rotated); medians are reported")
    ap.add_argument("--image-repeats", type=int, default=0, help="rounds of the image workload (default: --repeats)")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="PyTorch intra-op threads of this process (plain loop, local engine, RSS runs); 0: PyTorch's "
                         "default. On a shared machine 1 avoids waits for descheduled OpenMP threads (Ray actors "
                         "always run 1 per CPU they hold)")
    ap.add_argument("--lance", action="store_true",
                    help="the engines also write DEST/lance (embed_dataset's default when pylance is installed); off by "
                         "default: the plain loop writes nothing, and the Lance copy is a separate, optional output")
    ap.add_argument("--no-ray", action="store_true", help="same as --modes without ray")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/datasets.json"))
    ap.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    if args.rss_child:
        print(json.dumps(rss_child(args.rss_child, args.workdir, args.batch_size, args.rss_encoder)))
        return
    if args.quick:
        args.texts, args.images, args.rss_sizes = min(args.texts, 2000), min(args.images, 400), "1000,10000"
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.no_ray:
        modes = [m for m in modes if m != "ray"]
    if not modes or set(modes) - {"plain", "local", "ray"}:
        ap.error(f"--modes: a comma-separated subset of plain,local,ray, got {args.modes!r}")

    from hub import Hub

    work = Path(tempfile.mkdtemp(prefix="mhub-bench-datasets-"))
    h = Hub()
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                           "load_avg_at_start": os.getloadavg()},
               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "workloads": [],
               "rss": []}
    workloads = []
    if args.texts:
        items = make_texts(args.texts, work / "texts.parquet")
        workloads.append(("text", "minilm-l6", "text", items, work / "texts.parquet"))
    if args.images:
        items = make_images(args.images, work / "images.parquet")
        workloads.append(("image", "tiny-clip", "image", items, work / "images.parquet"))
    ray = None
    if "ray" in modes:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for modality, encoder, column, items, path in workloads:
            h.embed(items[:64], modality=modality, encoder=encoder, runtime=args.runtime)  # load and warm up
            row: dict = {"workload": f"{len(items)} {modality} ({encoder}, {args.runtime})", "items": len(items),
                         "runs": []}
            repeats = args.image_repeats if modality == "image" and args.image_repeats else args.repeats
            row["repeats"] = repeats
            for rep in range(repeats):  # interleaved, order rotated, medians: the machine may be shared
                order = modes[rep % len(modes):] + modes[: rep % len(modes)]
                for mode in order:
                    rec = run_mode(mode, h, args, modality, encoder, column, items, path, work / f"{modality}-{mode}")
                    rec["round"] = rep
                    row["runs"].append(rec)
                    extra = (f", start-up {rec['phases'].get('first_batch_s')} s of {rec['seconds']} s"
                             if rec.get("phases") else "")
                    print(f"{row['workload']} round {rep + 1} {mode}: {rec['items_per_s']:.1f} items/s "
                          f"(load {rec['load_avg'][0]}-{rec['load_avg'][1]}{extra})", flush=True)
            for mode in modes:
                runs = [r for r in row["runs"] if r["mode"] == mode]
                row[f"{mode}_items_per_s"] = median([r["items_per_s"] for r in runs])
                if mode != "ray":
                    row[f"{mode}_cpu_s_per_1k_items"] = median([r["cpu_s_per_1k_items"] for r in runs])
            for mode in ("local", "ray"):
                if mode in modes and "plain" in modes:
                    row[f"{mode}_ratio"] = row[f"{mode}_items_per_s"] / row["plain_items_per_s"]
                    paired = [a["items_per_s"] / b["items_per_s"] for a in row["runs"] for b in row["runs"]
                              if a["mode"] == mode and b["mode"] == "plain" and a["round"] == b["round"]]
                    row[f"{mode}_ratio_paired_median"] = median(paired)
            if "ray" in modes:
                ph = [r["phases"] for r in row["runs"] if r["mode"] == "ray" and r.get("phases")]
                row["ray_per_actor_items_per_s"] = row["ray_items_per_s"] / args.workers
                if ph:
                    row["ray_startup_s"] = median([p["first_batch_s"] for p in ph])
                    row["ray_actor_init_s"] = median([p["actor_init_s"] for p in ph])
                    row["ray_steady_items_per_s"] = median([p["steady_rows_per_s"] for p in ph])
                    row["ray_per_actor_busy_items_per_s"] = median([p["per_actor_rows_per_busy_s"] for p in ph])
                    if "plain" in modes:
                        row["ray_steady_ratio"] = row["ray_steady_items_per_s"] / row["plain_items_per_s"]
            results["workloads"].append(row)
    finally:
        if ray is not None:
            ray.shutdown()
    if not args.no_rss:
        for n in (int(x) for x in args.rss_sizes.split(",")):
            out = subprocess.run([sys.executable, __file__, "--rss-child", str(n), "--workdir", str(work),
                                  "--batch-size", str(args.batch_size), "--rss-encoder", args.rss_encoder,
                                  "--torch-threads", str(args.torch_threads)],
                                 capture_output=True, text=True, check=True)
            results["rss"].append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = results["rss"][-1]
            print(f"  local engine, {n} rows: RSS {r['rss_mb_before']} MB before, peak {r['peak_rss_mb']} MB", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    def cell(r: dict, key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else "-"

    print(f"\nmedians of interleaved rounds (texts {args.repeats}, images {args.image_repeats or args.repeats}); "
          f"load average {results['machine']['load_avg_at_start'][0]:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    print(f"{'workload':<34} {'plain/s':>9} {'local/s':>9} {'local/plain':>11} {'ray/s':>9} {'ray/plain':>9} "
          f"{'ray start-up s':>14} {'ray steady/s':>12} {'steady/plain':>12}")
    for r in results["workloads"]:
        print(f"{r['workload']:<34} {cell(r, 'plain_items_per_s', '.1f'):>9} {cell(r, 'local_items_per_s', '.1f'):>9} "
              f"{cell(r, 'local_ratio', '.3f'):>11} {cell(r, 'ray_items_per_s', '.1f'):>9} {cell(r, 'ray_ratio', '.2f'):>9} "
              f"{cell(r, 'ray_startup_s', '.1f'):>14} {cell(r, 'ray_steady_items_per_s', '.1f'):>12} "
              f"{cell(r, 'ray_steady_ratio', '.2f'):>12}")
        if "local_cpu_s_per_1k_items" in r and "plain_cpu_s_per_1k_items" in r:
            print(f"{'':<34} CPU s per 1k items in this process: plain {r['plain_cpu_s_per_1k_items']:.2f}, "
                  f"local {r['local_cpu_s_per_1k_items']:.2f}; local/plain paired median "
                  f"{cell(r, 'local_ratio_paired_median', '.3f')}")
    if results["rss"]:
        print(f"\n{'rows (local engine)':<20} {'encoder':<10} {'RSS before MB':>13} {'peak RSS MB':>12} {'growth MB':>10} {'items/s':>9}")
        for r in results["rss"]:
            print(f"{r['rows']:<20} {r['encoder']:<10} {r['rss_mb_before']:>13} {r['peak_rss_mb']:>12} "
                  f"{r['growth_mb']:>10} {r['items_per_s']:>9}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
