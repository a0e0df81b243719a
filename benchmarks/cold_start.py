"""Cold start of the hub: imports, plugin discovery, model load, first embedding.

Every measurement is a fresh Python subprocess (nothing warm but the OS page cache), repeated
``--runs`` times; a row reports the median and the min-max band.  Rows, through the public API
and the ``mhub`` command (wall time, and CPU time of the process: user + system, which a busy machine
skews less):

* ``python -c pass`` and ``import torch``: floors (the core needs torch; ratios are against
  ``import torch`` measured in the same run);
* ``import hub.cli``; ``Hub().modalities()`` (import + plugin discovery); ``mhub --help``;
* ``mhub embed hello``: wall time of the command;
* the phases of ``Hub().embed("hello")`` in one process: ``import hub``, discovery
  (``modalities()/encoders()/augmentations()``), encoder load (``h.encoder("minilm-l6")``:
  imports transformers and reads the weights), first embed;
* ``python -X importtime -m hub.cli embed hello``: the summed import time (top-level modules)
  and the part of it under ``transformers``; and which heavy libraries discovery imported.

``--tree NAME=PYTHONPATH`` (repeatable) measures other source trees in the same run,
interleaved run by run with the current one (e.g. a checkout of the code before a change, with
its ``hub`` and ``plugins/*`` directories on the path).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cold_start.py --runs 3
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cold_start.py --quick

Writes ``benchmarks/results/cold_start.json``.  On a shared machine, compare medians of the same
run only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("transformers", "torch_geometric", "trimesh", "pyarrow", "scipy", "networkx", "pandas", "hub.train")
BIN = Path(sys.executable).parent

PHASES = r"""
import json, sys, time
def now():
    return time.perf_counter(), time.process_time()
t0 = now()
from hub import Hub
t1 = now()
h = Hub(); h.modalities(); h.encoders(); h.augmentations()
t2 = now()
heavy = [m for m in HEAVY if m in sys.modules]
enc = h.encoder(ENCODER)
t3 = now()
te = h.embed("hello", encoder=ENCODER)
t4 = now()
assert te.tokens.shape[0] == 1
span = lambda a, b: [b[0] - a[0], b[1] - a[1]]
print(json.dumps({"import hub": span(t0, t1), "discovery": span(t1, t2), "encoder load": span(t2, t3),
                  "first embed": span(t3, t4), "heavy after discovery": heavy}))
"""

COMMANDS: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import torch": [sys.executable, "-c", "import torch"],
    "import hub.cli": [sys.executable, "-c", "import hub.cli"],
    "Hub().modalities()": [sys.executable, "-c", "from hub import Hub; Hub().modalities()"],
    "mhub --help": [str(BIN / "mhub"), "--help"],
    "mhub embed hello": [str(BIN / "mhub"), "embed", "hello"],
}


def _env(pythonpath: str | None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _wall(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the child, less sensitive to a busy machine)."""
    c, t = _cpu_children(), time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t, _cpu_children() - c


def _phases(env: dict[str, str], encoder: str) -> dict:
    code = f"HEAVY = {HEAVY!r}\nENCODER = {encoder!r}\n" + PHASES
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _importtime(env: dict[str, str]) -> dict[str, float]:
    """Summed top-level import time of ``mhub embed hello`` and the ``transformers`` subtree (seconds)."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-m", "hub.cli", "embed", "hello"], env=env,
                         check=True, capture_output=True, text=True).stderr
    total = transformers = 0
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$", line)
        if not m:
            continue
        if len(m.group(3)) == 1:  # a top-level import: its cumulative time covers its subtree
            total += int(m.group(2))
        if m.group(4) == "transformers":
            transformers += int(m.group(2))
    return {"imports (importtime)": (total / 1e6, None), "of which transformers": (transformers / 1e6, None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per row (median reported)")
    ap.add_argument("--quick", action="store_true", help="one run per row")
    ap.add_argument("--encoder", default="minilm-l6", help="text encoder for the phases row")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PYTHONPATH",
                    help="another source tree to measure, interleaved with the current one")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cold_start.json"))
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    trees: dict[str, str | None] = {"current": None}
    for spec in args.tree:
        name, _, path = spec.partition("=")
        trees[name] = path
    samples: dict[str, dict[str, list]] = {t: {} for t in trees}
    for r in range(runs):
        order = list(trees.items()) if r % 2 == 0 else list(trees.items())[::-1]  # no tree always goes first
        for tree, path in order:
            env = _env(path)
            s = samples[tree]
            for name, cmd in COMMANDS.items():
                s.setdefault(name, []).append(_wall(cmd, env))  # (wall, cpu)
            for name, value in _phases(env, args.encoder).items():
                s.setdefault(name, []).append(value)
            for name, value in _importtime(env).items():
                s.setdefault(name, []).append(value)
            print(f"run {r + 1}/{runs} {tree}: mhub embed hello {s['mhub embed hello'][-1][0]:.2f} s", file=sys.stderr)

    report: dict = {"runs": runs, "command": sys.argv, "python": sys.version.split()[0], "cpus": os.cpu_count(),
                    "load average": os.getloadavg(), "trees": {}}
    for tree, s in samples.items():
        rows = {}
        base = statistics.median(w for w, _ in s["import torch"])
        for name, values in s.items():
            if name == "heavy after discovery":
                rows[name] = sorted({m for v in values for m in v})
                continue
            wall = [w for w, _ in values]
            cpu = [c for _, c in values if c is not None]
            med = statistics.median(wall)
            rows[name] = {"median_s": med, "min_s": min(wall), "max_s": max(wall), "x import torch": med / base,
                          "cpu_median_s": statistics.median(cpu) if cpu else None, "samples_s": wall}
        report["trees"][tree] = rows

    names = [n for n in samples["current"] if n != "heavy after discovery"]
    header = f"{'seconds (median of ' + str(runs) + ')':<32}" + "".join(f"{t + ' wall [min-max]':>28}{'cpu':>8}" for t in trees)
    print(header)
    print("-" * len(header))
    for name in names:
        cells = []
        for tree in trees:
            row = report["trees"][tree][name]
            cpu = f"{row['cpu_median_s']:.2f}" if row["cpu_median_s"] is not None else "-"
            cells.append(f"{row['median_s']:7.2f} [{row['min_s']:.2f}-{row['max_s']:.2f}]".rjust(28) + cpu.rjust(8))
        print(f"{name:<32}" + "".join(cells))
    for tree in trees:
        print(f"heavy modules after discovery ({tree}): {report['trees'][tree]['heavy after discovery'] or 'none'}")
    if len(trees) > 1:
        for tree in list(trees)[1:]:
            for name in ("Hub().modalities()", "mhub embed hello", "imports (importtime)"):
                a, b = report["trees"][tree][name], report["trees"]["current"][name]
                cpu = f", cpu {a['cpu_median_s'] / b['cpu_median_s']:.2f}x" if a["cpu_median_s"] and b["cpu_median_s"] else ""
                print(f"{name}: {tree} / current = wall {a['median_s'] / b['median_s']:.2f}x{cpu}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
