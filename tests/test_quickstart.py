"""A quick start: plugin discovery and ``mhub --help`` import none of the heavy libraries.

Each check runs in a fresh interpreter (this test process has imported them long ago) and reads
``sys.modules`` at the end; on failure it names the module and the import chain
(``python -X importtime``) that brought it in.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

#: libraries discovery must not import (each costs seconds; transformers and pyarrow came in
#: through torch_geometric)
HEAVY = ("transformers", "torch_geometric", "trimesh", "pyarrow")

DISCOVERY = """
from hub import Hub
h = Hub()
mods, encs, augs = h.modalities(), h.encoders(), h.augmentations()
"""

CLI_HELP = """
import runpy, sys
sys.argv = ["mhub", "--help"]
try:
    runpy.run_module("hub.cli", run_name="__main__")
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
"""

REPORT = """
import json, sys
print("\\nQUICKSTART " + json.dumps({"heavy": [m for m in HEAVY if m in sys.modules], "extra": EXTRA}))
"""


def _run(code: str, extra: str = "None") -> tuple[dict, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("MODALITY_HUB_PLUGINS", None)  # every installed plugin, as users get it
    script = f"HEAVY = {HEAVY!r}\n" + code + REPORT.replace("EXTRA", extra)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("QUICKSTART "))
    return json.loads(line.removeprefix("QUICKSTART ")), proc.stderr


def _chain(importtime: str, module: str) -> str:
    """``module <- parent <- ... <- top-level import`` from ``-X importtime`` output (children come first)."""
    rows = []
    for line in importtime.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+\d+ \|( *)(\S+)$", line)
        if m:
            rows.append((len(m.group(1)), m.group(2)))
    for i, (depth, name) in enumerate(rows):
        if name == module:
            chain = [name]
            for d, n in rows[i + 1:]:
                if d < depth:
                    chain.append(n)
                    depth = d
            return " <- ".join(chain)
    return f"{module} (no importtime line)"


def _assert_light(result: dict, importtime: str, what: str) -> None:
    chains = [_chain(importtime, m) for m in result["heavy"]]
    assert not result["heavy"], f"{what} imported {result['heavy']}:\n" + "\n".join(chains)


def test_discovery_imports_no_heavy_library():
    result, importtime = _run(
        DISCOVERY,
        extra='{"modalities": sorted(mods), "encoders": len(encs), "augmentations": sorted(augs)}',
    )
    extra = result["extra"]
    # the check means something only if the plugins that use those libraries were discovered
    assert {"text", "image", "audio", "graph", "3d"} <= set(extra["modalities"])
    assert extra["encoders"] >= 20
    assert {"graph/node_drop", "graph/subgraph", "3d/rotation", "audio/speed", "image/jigsaw"} <= set(extra["augmentations"])
    _assert_light(result, importtime, "Hub().modalities() / encoders() / augmentations()")


def test_cli_help_imports_no_heavy_library():
    result, importtime = _run(CLI_HELP)
    _assert_light(result, importtime, "mhub --help")


def test_lazy_names_still_import_and_work():
    """The public names of the lazy modules resolve, and an augmentation still runs through them."""
    code = """
import numpy as np
import hub_graph._augment as ga
from hub_starter import build_starter_pack, evaluate, StarterBudget
import hub_starter
assert callable(build_starter_pack) and callable(evaluate) and hub_starter.StarterBudget is StarterBudget
item = {"edge_index": np.array([[0, 1, 2, 3], [1, 2, 3, 0]]), "num_nodes": 4}
out = ga.node_drop(item, np.random.default_rng(0), share=0.25)
assert out.num_nodes == 3, out
assert ga.read_graph(item).x.shape == (4, ga.DEFAULT_IN_CHANNELS)
assert ga._induced is not None  # implementation names stay reachable from the light module
try:
    hub_starter.no_such_name
except AttributeError as exc:
    assert "no_such_name" in str(exc)
else:
    raise AssertionError("hub_starter.no_such_name did not raise AttributeError")
"""
    result, _ = _run(code)
    assert "torch_geometric" in result["heavy"]  # the wrapper imported the implementation when called


@pytest.mark.parametrize("module", ["hub_graph", "hub_3d", "hub_audio", "hub_image", "hub_text", "hub_starter"])
def test_each_plugin_imports_light(module):
    """Importing one plugin package alone (as pluggy's entry-point loading does) stays light too."""
    result, importtime = _run(f"import {module}\n")
    _assert_light(result, importtime, f"import {module}")
