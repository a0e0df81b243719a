"""A Triton Inference Server model repository entry for an export."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

from ..errors import ExportError
from .manifest import _TRITON, WEIGHT_HASHES, ExportManifest, TensorSpec, load_manifest

__all__ = ["write_triton_repository", "graph_name", "TRITON_MAX_BATCH_SIZE"]

TRITON_MAX_BATCH_SIZE = 64


def graph_name(manifest: ExportManifest) -> str:
    parts = [manifest.modality, manifest.encoder]
    parts += ["projected"] if manifest.with_projector else []
    parts += ["pooled"] if manifest.pooled else []
    parts += [manifest.dtype] if manifest.dtype != "fp32" else []
    return "-".join(parts).replace("/", "_").replace(".", "_")

def write_triton_repository(export_dir: str | os.PathLike, repo_dir: str | os.PathLike, name: str | None = None,
                            max_batch_size: int = TRITON_MAX_BATCH_SIZE) -> Path:
    """Write a Triton Inference Server model repository entry for an export: ``repo/NAME/config.pbtxt``
    and ``repo/NAME/1/model.onnx`` (+ its external data).  Returns ``repo/NAME``.

    When every input and output is batch-first (dimension 0 named ``batch``) the config sets
    ``max_batch_size`` and dynamic batching and leaves the batch dimension out of ``dims``;
    otherwise (e.g. graphs fed as one node list) ``max_batch_size: 0`` with full shapes and no
    dynamic batching, as Triton requires.  Dynamic dimensions are ``-1``.
    """
    src = Path(export_dir)
    manifest = load_manifest(src)
    name = name or graph_name(manifest)
    specs = manifest.inputs + manifest.outputs
    batched = max_batch_size > 0 and all(s.shape and s.shape[0] == "batch" for s in specs)

    def block(kind: str, tensors: Sequence[TensorSpec]) -> str:
        rows = []
        for s in tensors:
            dims = [-1 if isinstance(d, str) else int(d) for d in (s.shape[1:] if batched else s.shape)]
            if s.dtype not in _TRITON:
                raise ExportError(f"Triton has no type for {kind} {s.name!r} of dtype {s.dtype}")
            rows.append(f'  {{\n    name: "{s.name}"\n    data_type: {_TRITON[s.dtype]}\n'
                        f'    dims: [ {", ".join(map(str, dims)) or ""} ]\n  }}')
        return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"

    text = (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size if batched else 0}\n'
            + block("input", manifest.inputs) + block("output", manifest.outputs)
            + ("dynamic_batching { }\n" if batched else "")
            + "instance_group [\n  {\n    count: 1\n    kind: KIND_GPU\n  }\n]\n")
    root = Path(repo_dir) / name
    (root / "1").mkdir(parents=True, exist_ok=True)
    (root / "config.pbtxt").write_text(text)
    for file in manifest.hashes:
        if file not in WEIGHT_HASHES and "/" not in file:  # the graph and its data; processor files stay behind
            shutil.copy2(src / file, root / "1" / file)
    return root
