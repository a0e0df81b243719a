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
2 passes, few items (development).  Timings for a report run under the shared lock:
``flock /tmp/bench.lock python benchmarks/encoders.py --size real --modality audio``.
"""

from __future__ import annotations

import argparse
import os
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
    args = ap.parse_args()

    cases = load_cases(args.cases)
    size = "tiny" if args.quick else args.size
    cases = [c for c in cases if size == "all" or c.size == size]
    cases = [c for c in cases if not args.modality or c.modality in args.modality]
    cases = [c for c in cases if not args.encoder or c.encoder in args.encoder]
    passes, items = (2, 8) if args.quick else (args.passes, args.items)
    run(cases=cases, hub=Hub(), repeats=passes, items=items, batch_size=args.batch, json_path=args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
