"""Dataset embedding throughput: the local engine and the Ray engine against a plain Hub.embed loop.

    python benchmarks/datasets.py                 # 100k short texts (minilm-l6), 20k images (tiny-clip)
    python benchmarks/datasets.py --quick         # 2k texts, 400 images, RSS at 1k / 10k rows
    python benchmarks/datasets.py --texts 50000 --images 0 --no-ray

For each workload, in one run and on the same items (a Parquet file: id + text,
or id + PNG bytes):

* plain: ``Hub.embed`` over the items in chunks of ``--batch-size`` in this process
  (items already in memory, vectors pooled and kept; nothing read or written);
* local: ``hub.datasets.embed_dataset(engine="local")`` (reads Parquet, writes Parquet);
* ray: ``embed_dataset(engine="ray", workers=--workers)`` on a local Ray started once
  beforehand (actor start-up and model loading are inside the timing).

The three modes run interleaved ``--repeats`` times and the best of each is kept
(on a shared machine the load changes from minute to minute).

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


def plain_loop(h, items, encoder: str, modality: str, batch_size: int, model_batch_size: int) -> float:
    start = time.perf_counter()
    kept = []
    for s in range(0, len(items), batch_size):
        te = h.embed(items[s : s + batch_size], modality=modality, encoder=encoder, batch_size=model_batch_size,
                     progress=False)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=100_000)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true", help="small sizes for development (2k texts, 400 images)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--model-batch-size", type=int, default=32)
    ap.add_argument("--rss-sizes", default="10000,100000")
    ap.add_argument("--rss-encoder", default="tiny-bert",
                    help="text encoder of the RSS runs (the engine's memory, not the model's speed, is measured)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs of each mode; the best is kept")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="PyTorch intra-op threads of this process (plain loop, local engine, RSS runs); 0: PyTorch's "
                         "default. On a shared machine 1 avoids waits for descheduled OpenMP threads (Ray actors "
                         "always run 1 per CPU they hold)")
    ap.add_argument("--no-ray", action="store_true")
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

    from hub import Hub
    from hub.datasets import embed_dataset

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
    if not args.no_ray:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for modality, encoder, column, items, path in workloads:
            h.embed(items[:64], modality=modality, encoder=encoder)  # load and warm up
            row = {"workload": f"{len(items)} {modality} ({encoder})", "items": len(items)}
            best = {"plain": 0.0, "local": 0.0, "ray": 0.0}
            for rep in range(args.repeats):  # interleaved, best of N: the machine may be shared
                secs = plain_loop(h, items, encoder, modality, args.batch_size, args.model_batch_size)
                best["plain"] = max(best["plain"], len(items) / secs)
                s = embed_dataset(path, work / f"{modality}-local-{rep}", encoder=encoder, column=column, hub=h,
                                  batch_size=args.batch_size, model_batch_size=args.model_batch_size, lance=False,
                                  progress=False)
                assert s.complete and s.errors == 0, s
                best["local"] = max(best["local"], s.rows_written / s.seconds)
                if ray is not None:
                    s = embed_dataset(path, work / f"{modality}-ray-{rep}", encoder=encoder, column=column, hub=h,
                                      engine="ray", workers=args.workers, batch_size=args.batch_size,
                                      model_batch_size=args.model_batch_size, lance=False, progress=False)
                    assert s.complete and s.errors == 0, s
                    best["ray"] = max(best["ray"], s.rows_written / s.seconds)
                    row["ray_cpus_per_actor"] = s.details.get("cpus_per_actor")
                print(f"{row['workload']} run {rep + 1}: plain {best['plain']:.1f}, local {best['local']:.1f}, "
                      f"ray {best['ray']:.1f} items/s (best so far)", flush=True)
            row["plain_items_per_s"] = best["plain"]
            row["local_items_per_s"] = best["local"]
            row["local_ratio"] = best["local"] / best["plain"]
            if ray is not None:
                row["ray_items_per_s"] = best["ray"]
                row["ray_ratio"] = best["ray"] / best["plain"]
                row["ray_per_actor_items_per_s"] = best["ray"] / args.workers
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

    print()
    print(f"{'workload':<28} {'plain/s':>9} {'local/s':>9} {'local/plain':>11} {'ray/s':>9} {'ray/plain':>9}")
    for r in results["workloads"]:
        ray_s = f"{r['ray_items_per_s']:9.1f}" if "ray_items_per_s" in r else f"{'-':>9}"
        ray_r = f"{r['ray_ratio']:9.2f}" if "ray_ratio" in r else f"{'-':>9}"
        print(f"{r['workload']:<28} {r['plain_items_per_s']:9.1f} {r['local_items_per_s']:9.1f} "
              f"{r['local_ratio']:11.2f} {ray_s} {ray_r}")
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
