"""Resumable training checkpoints: safetensors + JSON only (never pickle), written atomically, checked on load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from ..errors import BundleError, InvalidOptionsError

__all__ = ["CHECKPOINT_DIR", "STATE_NAME", "OPTIMIZER_NAME", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
#: ``state.json`` holds every step's loss: capped well above any real run, checked before parsing
STATE_MAX_BYTES = 64 << 20
_ALL_DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL")


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            name = f"state.{idx}.{key}"
            if isinstance(value, torch.Tensor):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                scalars[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(root: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> Path:
    """Write ``root/checkpoint`` atomically: staged in ``root/checkpoint.tmp-*``, swapped in by rename-aside
    (:func:`hub._atomic.atomic_dir`); ``state.json`` last, with the sha256 of every weights file."""
    from safetensors.torch import save_file, save_model

    from .._atomic import atomic_dir
    from .._manifest import hash_files

    final = Path(root) / CHECKPOINT_DIR
    with atomic_dir(final, marker=STATE_NAME, what="a training checkpoint") as tmp:
        for name, module in modules.items():
            save_model(module, str(tmp / f"{name}.safetensors"), metadata={"format": "pt"})
        tensors, meta = _flatten_optimizer(optimizer)
        save_file(tensors, str(tmp / OPTIMIZER_NAME), metadata={"format": "pt"})
        payload = {**state, "optimizer": meta, "files": hash_files(tmp)}
        (tmp / STATE_NAME).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return final


def load_checkpoint(root: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer, config: BaseModel) -> dict[str, Any] | None:
    """Restore modules and optimizer from ``root/checkpoint``; ``None`` when there is none.

    The checkpoint is checked before anything is copied in: an interrupted save is repaired (or
    reported torn), ``state.json`` is size-capped, every weights file matches its sha256 (when
    listed) and its safetensors header names exactly the module's tensors and shapes."""
    from safetensors.torch import load_file, load_model

    from .._atomic import recover
    from .._manifest import check_tensors, inside, read_json, safetensors_header, verify_files

    path = Path(root) / CHECKPOINT_DIR
    recover(path, marker=STATE_NAME, what="a training checkpoint")
    if not (path / STATE_NAME).is_file():
        return None
    try:
        state = read_json(path / STATE_NAME, f"checkpoint {STATE_NAME}", STATE_MAX_BYTES)
    except BundleError as exc:
        raise BundleError(f"{exc}; pass resume=False") from None
    if not isinstance(state, dict) or not isinstance(state.get("optimizer"), dict):
        raise BundleError(f"checkpoint {str(path)!r}: {STATE_NAME} is not a checkpoint state; pass resume=False")
    files = state.get("files")
    if files is not None:
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise BundleError(f"checkpoint {str(path)!r}: {STATE_NAME} 'files' must map paths to sha256; pass resume=False")
        verify_files(path, files, f"checkpoint {str(path)!r}")
    saved = {k: v for k, v in state.get("config", {}).items() if k != "epochs"}
    now = {k: v for k, v in json.loads(config.model_dump_json()).items() if k != "epochs"}
    if saved != now:
        diff = {k: (saved.get(k), now.get(k)) for k in set(saved) | set(now) if saved.get(k) != now.get(k)}
        raise InvalidOptionsError(
            f"checkpoint {str(path)!r} was written by a different run: "
            + "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
            + ". Pass resume=False to start over, or another out_dir"
        )
    what = f"checkpoint {str(path)!r}"
    for name, module in modules.items():
        file = inside(path, f"{name}.safetensors", what)
        check_tensors(file, {k: tuple(v.shape) for k, v in module.state_dict().items()}, f"the {name} of {what}",
                      dtypes=_ALL_DTYPES, hint="pass resume=False")
    opt_file = inside(path, OPTIMIZER_NAME, what)
    safetensors_header(opt_file, f"the optimizer state of {what}")
    try:
        for name, module in modules.items():
            load_model(module, str(path / f"{name}.safetensors"))
        optimizer.load_state_dict(_unflatten_optimizer(load_file(str(opt_file)), state["optimizer"]))
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise BundleError(f"checkpoint {str(path)!r} cannot be restored ({type(exc).__name__}: {exc}); pass resume=False") from None
    return state
