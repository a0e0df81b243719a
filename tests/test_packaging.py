"""Each plugin is its own distribution: it declares every third-party import and imports no other plugin."""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent for p in ROOT.glob("*/*/pyproject.toml") if p.parent.parent.name in ("plugins", "adapters", "examples"))


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(reqs):
    return {_norm(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in reqs}


def _imports(package_dir: Path) -> set[str]:
    found = set()
    for py in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_imports_are_declared(pkg):
    meta = tomllib.loads((pkg / "pyproject.toml").read_text())["project"]
    declared = _requirement_names(meta.get("dependencies", []))
    for extra in meta.get("optional-dependencies", {}).values():
        declared |= _requirement_names(extra)
    own = {p.name for p in pkg.iterdir() if (p / "__init__.py").is_file()}
    assert len(own) == 1, f"{pkg}: expected one import package, found {own}"
    dists = packages_distributions()
    undeclared, other_plugins = [], []
    for module in sorted(_imports(pkg) - own - set(sys.stdlib_module_names) - {"__future__"}):
        if module.startswith("hub_"):
            # a plugin may build on another only by declaring it (the starter pack needs the five modalities)
            if not {_norm(d) for d in dists.get(module, [])} & declared:
                other_plugins.append(module)
            continue
        owners = {_norm(d) for d in dists.get(module, [])} or {_norm(module)}
        if module == "hub":
            owners = {"modality-hub"}
        if not owners & declared:
            undeclared.append(f"{module} (from {', '.join(sorted(owners))})")
    assert not other_plugins, f"{pkg.name} imports other plugins: {other_plugins}; each plugin must stand alone or declare the ones it builds on"
    assert not undeclared, f"{pkg.name}/pyproject.toml does not declare: {undeclared}"
    assert "modality-hub" in declared
    assert "modality_hub" in tomllib.loads((pkg / "pyproject.toml").read_text())["project"]["entry-points"]
