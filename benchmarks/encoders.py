"""Throughput of every offline encoder preset: tokens per item and items/s on this machine.

    python benchmarks/encoders.py [--batch 8] [--items 32] [--json benchmarks/results/encoders.json]

For each modality, every untrained preset (and every pretrained encoder whose
weights are available locally) embeds the modality's sample item ``--items``
times in batches of ``--batch`` after one warm-up batch.  Numbers depend on the
machine; the script prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from hub import Hub, InvalidOptionsError, WeightsNotFoundError  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs; the best is kept")
    ap.add_argument("--modality", action="append", help="only these modalities (repeatable)")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/encoders.json"))
    args = ap.parse_args()

    h = Hub()
    rows = []
    jobs = [(m, e) for m in h.modalities() if not args.modality or m in args.modality for e in h.encoders(modality=m)]
    for modality, name in tqdm(jobs, desc="encoders", unit="encoder"):
        mod = h.registry.modality(modality)
        if mod.sample is None:
            continue
        try:
            enc = h.encoder(name)
        except (WeightsNotFoundError, InvalidOptionsError):  # weights not here, or a generic loader needing weights=
            continue
        items = [mod.sample() for _ in range(args.items)]
        h.embed(items[: args.batch], encoder=name, batch_size=args.batch)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            te = h.embed(items, encoder=name, batch_size=args.batch)
            best = min(best, time.perf_counter() - start)
        rows.append({
            "modality": modality, "encoder": name, "pretrained": enc.pretrained,
            "params": sum(p.numel() for p in enc.parameters()), "tokens_per_item": int(te.lengths[0]),
            "dim": te.dim, "items_per_s": args.items / best, "ms_per_item": 1000 * best / args.items,
        })
    header = f"{'modality':<8} {'encoder':<18} {'trained':<7} {'params':>10} {'tokens':>6} {'dim':>5} {'items/s':>9} {'ms/item':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['modality']:<8} {r['encoder']:<18} {('yes' if r['pretrained'] else 'no'):<7} {r['params']:>10,} "
              f"{r['tokens_per_item']:>6} {r['dim']:>5} {r['items_per_s']:>9.1f} {r['ms_per_item']:>8.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {"batch": args.batch, "items": args.items, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.platform(), "cpu": platform.processor() or platform.machine()}
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
