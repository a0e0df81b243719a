"""Old module paths kept working: each shim re-exports its new home with a ``DeprecationWarning``."""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def moved(old: str, new: str, namespace: dict[str, Any]) -> None:
    """Warn that ``old`` moved to ``new`` and copy ``new``'s public names into the shim's ``namespace``."""
    warnings.warn(f"{old} is deprecated; import from {new} instead", DeprecationWarning, stacklevel=3)
    module = importlib.import_module(new)
    names = getattr(module, "__all__", [n for n in vars(module) if not n.startswith("__")])
    namespace.update({n: getattr(module, n) for n in names})
    namespace["__all__"] = list(names)
