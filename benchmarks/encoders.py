"""Every modality's encoder, torch eager vs ONNX Runtime, at tiny and real sizes, through the public path.

    python benchmarks/encoders.py [--size tiny|real|all] [--modality audio] [--passes 5] [--quick]
                                  [--cases benchmarks/bench_cases.json] [--json benchmarks/results/encoders.json]

The cases (``benchmarks/bench_cases.json``) are each modality's tiny preset and a real-size
configuration with random weights (ViT-B/16-sized, whisper-base-sized, CLAP HTSAT, a 256-d GAT on
~4,000-node batches, point-bert, MiniLM-L6).  Per case, ``hub.onnx.bench.run`` embeds the same
length-bucketed batches with ``Hub().embed(..., runtime="torch")`` and ``runtime="onnx"`` (export
made once, timed apart), alternating which runtime goes first over ``--passes`` passes; it prints
the median ratio and its noise band (min-max of the per-pass ratios; ``*`` = faster in every pass)
and writes JSON with the machine, thread counts and the load average.  ``--quick``: tiny cases only,
2 passes, few items (development).  ``--phases``: after the run, time each case's phases apart
(``prepare``, ``collate``, the forward on torch and the ONNX Runtime session run, median of the
passes, interleaved), through the same encoder objects ``h.embed`` uses.  Timings for a report run under the shared lock:
``flock /tmp/bench.lock python benchmarks/encoders.py --size real --modality audio``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hub import Hub  # noqa: E402
from hub.onnx.bench import load_cases, run  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=Path, default=HERE / "bench_cases.json")
    ap.add_argument("--size", choices=("tiny", "real", "all"), default="all")
    ap.add_argument("--modality", action="append", help="only these modalities (repeatable)")
    ap.add_argument("--encoder", action="append", help="only cases of these encoders (repeatable)")
    ap.add_argument("--passes", type=int, default=5, help="timed passes per case, interleaved (median reported)")
    ap.add_argument("--items", type=int, default=32, help="items per case unless the case sets its own")
    ap.add_argument("--batch", type=int, default=8, help="batch size unless the case sets its own")
    ap.add_argument("--quick", action="store_true", help="tiny cases, 2 passes, 8 items: a quick check")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "encoders.json")
    ap.add_argument("--phases", action="store_true", help="also time prepare / collate / forward / session run apart")
    args = ap.parse_args()

    cases = load_cases(args.cases)
    size = "tiny" if args.quick else args.size
    cases = [c for c in cases if size == "all" or c.size == size]
    cases = [c for c in cases if not args.modality or c.modality in args.modality]
    cases = [c for c in cases if not args.encoder or c.encoder in args.encoder]
    passes, items = (2, 8) if args.quick else (args.passes, args.items)
    hub = Hub()
    run(cases=cases, hub=hub, repeats=passes, items=items, batch_size=args.batch, json_path=args.json)
    print(f"wrote {args.json}")
    if args.phases:
        table = {c.label or c.encoder: phases(hub, c, passes, items, args.batch) for c in cases}
        for label, row in table.items():
            print(f"{label}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in row.items()) + " (per pass, median)")
        path = args.json.with_name(args.json.stem + "-phases.json")
        path.write_text(json.dumps({"load_average": list(os.getloadavg()), "phases_ms_per_pass": table}, indent=2))
        print(f"wrote {path}")


def phases(hub: Hub, case, passes: int, items: int, batch_size: int) -> dict[str, float]:
    """Median ms per pass of each phase of ``h.embed`` on both runtimes (the encoders it caches)."""
    import tempfile

    import torch

    from hub.onnx.bench import _case_batches
    from hub.onnx.export import export

    batches, _ = _case_batches(hub, case, case.items or items, case.batch_size or batch_size, 0)
    enc = hub.encoder(case.encoder, **case.options)
    with tempfile.TemporaryDirectory(prefix="mhub-phases-") as tmp:
        export(case.modality, tmp, encoder=case.encoder, options=case.options, registry=hub.registry, hub=hub)
        served = hub.onnx_encoder(case.encoder, directory=tmp, **case.options)
        times: dict[str, list[float]] = {k: [] for k in ("prepare", "collate", "torch forward", "onnx run")}
        for p in range(passes + 1):  # the first is a warm-up
            tot = dict.fromkeys(times, 0.0)
            for batch in batches:
                t0 = time.perf_counter()
                prepared = [enc.prepare(x, i) for i, x in enumerate(batch)]
                t1 = time.perf_counter()
                tensors = enc.collate(prepared)
                t2 = time.perf_counter()
                runs = [("torch forward", lambda: enc(**tensors)), ("onnx run", lambda: served.run(**tensors))]
                for name, fn in runs if p % 2 == 0 else runs[::-1]:
                    start = time.perf_counter()
                    with torch.inference_mode():
                        fn()
                    tot[name] += time.perf_counter() - start
                tot["prepare"] += t1 - t0
                tot["collate"] += t2 - t1
            if p:
                for k, v in tot.items():
                    times[k].append(v)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


if __name__ == "__main__":
    main()
