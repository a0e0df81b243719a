"""The core's layout: imports go one way, no cycles, no plugin imported or named in code, files stay small.

Read from the source with ``ast`` (nothing is imported): module-level and function-level imports both
count; imports under ``if TYPE_CHECKING:`` do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HUB = ROOT / "hub"
#: the layers, lowest first; a module may import its own layer and the layers below it, never above
LAYERS = [
    {"hub.errors", "hub.tokens", "hub.specs", "hub.hookspecs", "hub._manifest", "hub.augment", "hub._registry",
     "hub.encoder", "hub.backbone", "hub.weights", "hub.detect", "hub._shim", "hub.processor", "hub._untrained",
     "hub._atomic"},
    {"hub.lm"},
    {"hub.train"},
    {"hub.onnx", "hub.onnx.optimize", "hub.onnx.quantize"},
    {"hub._hub", "hub.testing", "hub.cache"},
    {"hub.cli", "hub.serve", "hub.datasets", "hub", "hub.bench", "hub.multimodal", "hub.projectors", "hub.training",
     "hub.starter"},
]
MAX_LINES = 550  # "about 500"


def _modules() -> dict[str, Path]:
    out = {}
    for path in HUB.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    if node.level:
        base = module.split(".") if _is_package(module) else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in MODULES else target)
    return out


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str) -> None:
        self.module = module
        self.found: list[tuple[str, int]] = []

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(a.name, node.lineno) for a in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.found += [(t, node.lineno) for t in _resolve(self.module, node)]


def _imports(module: str) -> list[tuple[str, int]]:
    visitor = _Imports(module)
    visitor.visit(ast.parse(MODULES[module].read_text(encoding="utf-8")))
    return visitor.found


GRAPH = {m: sorted({t for t, _ in _imports(m) if t in MODULES and t != m}) for m in MODULES}


def _layer(module: str) -> int:
    best = None
    for i, layer in enumerate(LAYERS):
        for name in layer:
            if module == name or (name != "hub" and module.startswith(name + ".")):
                if best is None or len(name) > best[1]:
                    best = (i, len(name))
    assert best is not None, f"{module} is in no layer; add it to LAYERS in tests/test_layout.py and docs/architecture.md"
    return best[0]


def test_no_plugin_is_imported_by_the_core():
    bad = [f"{m}:{line} imports {t}" for m in MODULES for t, line in _imports(m) if t.split(".")[0].startswith("hub_")]
    assert not bad, bad


def test_no_import_cycles():
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not sccs, f"import cycles: {sccs}"


def test_layers_import_downwards_only():
    bad = []
    for m, targets in GRAPH.items():
        for t in targets:
            if _layer(t) > _layer(m) and not m.startswith(t + ".") and m != "hub":
                bad.append(f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})")
    assert not bad, bad


def test_nothing_below_the_facade_builds_a_hub():
    facade = _layer("hub._hub")
    bad = [m for m, targets in GRAPH.items() if "hub._hub" in targets and _layer(m) < facade]
    assert not bad, bad


def _code_strings(path: Path) -> list[tuple[str, int]]:
    """String constants in code: docstrings and ``help=`` texts left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skip.add(id(first.value))
        if isinstance(node, ast.keyword) and node.arg in ("help", "description"):
            skip |= {id(n) for n in ast.walk(node.value)}
    return [(n.value, n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip]


def test_no_plugin_names_in_core_code(hub):
    names = set(hub.encoders()) | set(hub.backbones()) | {"tiny-llama", "tiny-qwen2", "tiny-gpt2"}
    names |= {p.name for p in hub.plugins()} - {"core-projectors"}
    names -= set(hub.modalities())  # modality names ("image", "text") are vocabulary, not plugins
    names -= {"transformers"}  # also the library's name (versions are reported by it)
    shims = {"hub.starter"}  # the deprecated re-export of the starter plugin must name it
    bad = [f"{m}:{line}: {value!r}" for m, path in MODULES.items() if m not in shims
           for value, line in _code_strings(path) if value in names or value.startswith("hub_")]
    assert not bad, bad


@pytest.mark.parametrize("module", sorted(MODULES))
def test_core_files_stay_small(module):
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines; split it (about 500 at most)"


@pytest.mark.parametrize("old, new, name", [
    ("hub.projectors", "hub.lm.projectors", "build_projector"),
    ("hub.multimodal", "hub.lm", "MultimodalLM"),
    ("hub.training", "hub.train", "align"),
    ("hub.bench", "hub.onnx.bench", "run"),
    ("hub.starter", "hub_starter", "build_starter_pack"),
])
def test_old_module_paths_warn_and_reexport(old, new, name):
    import importlib
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        shim = importlib.import_module(old)
    assert getattr(shim, name) is getattr(importlib.import_module(new), name)


def test_plugins_add_commands_through_the_hook():
    from click.testing import CliRunner

    from hub.cli import main

    out = CliRunner().invoke(main, ["--help"]).output
    assert "starter-pack" in out and "eval" in out  # registered by the starter plugin, not the core
    assert "--pack" in CliRunner().invoke(main, ["demo", "--help"]).output
