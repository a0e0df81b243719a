"""The Ray engine: ``read_* → map_batches(<embedder actor>) → atomic part files``, on Ray Data.

``workers`` actors (a fixed pool, ``concurrency=workers``) each build the hub and
its encoders once, use a fraction of a CPU (so reading still gets slots on a
small machine) or a GPU when they have one, and write their batches' part files
themselves (temporary name, then rename) into DEST, which every node must reach.
A batch whose actor dies is retried on a restarted actor (Ray Data's actor pools
restart actors and retry their tasks by default); its part files have deterministic names, so a retry
replaces rather than duplicates.  Works with a local ``ray.init()`` and with a
cluster (``ray.init(address=...)`` or ``RAY_ADDRESS``).
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from .._registry import ENV_PLUGINS
from ..errors import InvalidInputError, InvalidOptionsError
from ._config import RunConfig
from ._sources import FileSource, Rows, Source, TableSource, as_id

__all__ = ["run_ray", "RayEmbedder", "actor_resources"]

#: CPUs requested by each read task (reading is I/O; the actors hold the compute).
READ_CPUS = 0.1


def actor_resources(workers: int, num_cpus: float | None, num_gpus: float | None) -> tuple[float, float]:
    """CPUs and GPUs per actor.

    By default the actors share the cluster's CPUs less one (at most 1 CPU each): Ray Data's own
    tasks (reading, Parquet metadata and sampling, which ask for 0.5-1 CPU) must still find a slot,
    or the pipeline waits forever for a CPU the actors hold.  A GPU share each when the cluster has GPUs.
    """
    import ray

    res = ray.cluster_resources()
    if num_cpus is None:
        cpus = float(res.get("CPU", 1))
        num_cpus = max(0.05, min(1.0, round(max(cpus - 1.0, 0.2 * cpus) / workers, 2)))
    if num_gpus is None:
        gpus = float(res.get("GPU", 0))
        num_gpus = min(1.0, round(gpus / workers, 2)) if gpus else 0.0
    return float(num_cpus), float(num_gpus)


class RayEmbedder:
    """The map_batches callable class: loads the encoders once per actor, embeds and writes a batch."""

    def __init__(self, *, config: dict[str, Any], dest: str, kind: str, id_column: str, column: str,
                 modality_column: str | None, base: str | None, root: str | None, skip: Any,
                 fault: tuple[int, str] | None, model_batch_size: int, threads: int, cache: Any = None,
                 plugins: list[str] | None = None, installed: list[str] | None = None) -> None:
        if plugins and ENV_PLUGINS not in os.environ:  # load only the plugins this run needs (faster start)
            os.environ[ENV_PLUGINS] = ",".join(plugins)
        import ray
        import torch

        from .._hub import Hub
        from ._config import weights_hash
        from ._embed import BatchEmbedder
        from ._fault import Fault

        torch.set_num_threads(max(1, threads))
        gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
        self.device = "cuda" if gpu else "cpu"
        hub = Hub(device="cuda" if gpu else None)
        cfg = RunConfig.from_json(config)
        for route in cfg.routes.values():  # every node must hold the same plugins and weights
            enc = hub.encoder(route.encoder, modality=route.modality, **route.options)
            if weights_hash(enc) != route.weights_sha256 or enc.space != route.space:
                raise InvalidOptionsError(
                    f"on node {ray.util.get_node_ip_address()}: encoder {route.encoder!r} has other weights "
                    f"({enc.space}) than on the driver ({route.space}); install the same plugins and weights "
                    "on every node"
                )
        self.embedder = BatchEmbedder(hub, cfg, model_batch_size=model_batch_size, cache=cache,
                                      onnx_device="cuda" if gpu else "cpu", installed=installed)
        self.dest, self.kind = Path(dest), kind
        self.id_column, self.column, self.modality_column = id_column, column, modality_column
        self.base, self.root = base, (Path(root) if root else None)
        self.skip = ray.get(skip) if isinstance(skip, ray.ObjectRef) else skip
        self.fault = Fault(fault, self.dest, how="exit")
        self.extensions = self.embedder.extensions
        self.bytes_ok: dict[str, bool] = {}

    def _takes_bytes(self, modality: str, data: bytes) -> bool:
        """Whether ``modality`` reads file bytes (image, audio) or needs the path (text, graph, 3D files)."""
        if modality not in self.bytes_ok:
            detect = self.embedder.hub.registry.modality(modality).detect
            try:
                self.bytes_ok[modality] = bool(detect and detect(data))
            except Exception:  # noqa: BLE001
                self.bytes_ok[modality] = False
        return self.bytes_ok[modality]

    def _rows(self, batch: pa.Table) -> Rows:
        n = batch.num_rows
        if self.kind == "files":
            paths = [Path(p) for p in batch.column("path").to_pylist()]
            data = batch.column("bytes").to_pylist()
            ids, items = [], []
            for p, b in zip(paths, data):
                rel = p.resolve().relative_to(self.root)
                ids.append(rel.as_posix())
                mods = self.extensions.get(p.suffix.lower(), [])
                items.append(b if len(mods) == 1 and self._takes_bytes(mods[0], b) else p.resolve())
            return Rows(ids, items, [None] * n, [None] * n)
        ids = [as_id(v, "a row") for v in batch.column(self.id_column).to_pylist()]
        mods = batch.column(self.modality_column).to_pylist() if self.modality_column else [None] * n
        if self.base is not None:
            bases = [self.base] * n
        else:
            bases = [str(Path(p).parent) for p in batch.column("path").to_pylist()]
        return Rows(ids, batch.column(self.column).to_pylist(), mods, bases)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ._local import write_tables

        rows = self._rows(batch)
        skipped = 0
        if self.skip is not None and len(self.skip) and len(rows):
            drop = pc.is_in(pa.array(rows.ids, pa.string()), value_set=self.skip).to_numpy(zero_copy_only=False)
            keep = [i for i in range(len(rows)) if not drop[i]]
            skipped = len(rows) - len(keep)
            rows = rows.take(keep)
        written = errors = 0
        if len(rows):
            written, errors = write_tables(self.dest, self.embedder.embed(rows), self.fault)
        return pa.table({"rows": [written], "errors": [errors], "skipped": [skipped], "device": [self.device]})


def _read(source: Source, skip: pa.Array | None, read_cpus: float, blocks: int):
    """The Ray Data dataset of the source's rows (file sources already without the ``skip`` ids)."""
    import ray

    if isinstance(source, FileSource):
        done = set(skip.to_pylist()) if skip is not None and len(skip) else set()
        paths = [str(p.resolve()) for p in source.files if source.id_of(p) not in done]
        if not paths:
            return None, None
        return ray.data.read_binary_files(paths, include_paths=True, num_cpus=read_cpus,
                                          override_num_blocks=min(blocks, len(paths))), None
    assert isinstance(source, TableSource)
    files = [str(p.resolve()) for p in source.files]
    parents = {str(Path(f).parent) for f in files}
    base = parents.pop() if len(parents) == 1 else None
    cols = source.read_columns
    if base is None and "path" in cols:
        raise InvalidInputError(
            "the Ray engine needs each row's source file to resolve relative paths, and Ray names that column "
            "'path', which this source already uses; put the table files in one directory, or rename the column"
        )
    # enough blocks for every actor to get work even from one file (Ray splits a read task's output)
    args: dict[str, Any] = {"include_paths": base is None, "num_cpus": read_cpus, "override_num_blocks": blocks}
    if source.kind == "parquet":
        ds = ray.data.read_parquet(files, columns=cols, **args)
    elif source.kind == "csv":
        import pyarrow.csv as pcsv

        opts = pcsv.ConvertOptions(column_types={c: pa.string() for c in cols}, include_columns=cols)
        ds = ray.data.read_csv(files, convert_options=opts, **args)
    else:
        if "lines" in inspect.signature(ray.data.read_json).parameters:
            args["lines"] = True
        ds = ray.data.read_json(files, **args)
    return ds, base


def run_ray(source: Source, dest: Path, config: RunConfig, *, batch_size: int, model_batch_size: int, workers: int,
            skip: pa.Array | None, total: int, progress: bool, fault: tuple[int, str] | None,
            num_cpus: float | None = None, num_gpus: float | None = None, address: str | None = None,
            cache: Any = None, plugins: list[str] | None = None, installed: list[str] | None = None
            ) -> dict[str, Any]:
    """Embed ``source`` into DEST on Ray Data; returns counts, seconds and the actors' devices."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise InvalidOptionsError(
            f"engine='ray' needs Ray Data: pip install 'modality-hub[ray]' ({exc})"
        ) from None
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": address} if address else {}
        ray.init(**kwargs, log_to_driver=False, configure_logging=False)
        started = True
    start = time.perf_counter()
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts rows; Ray's dashboard shows the operators
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        cpus, gpus = actor_resources(workers, num_cpus, num_gpus)
        blocks = max(2 * workers, min(-(-max(total, 1) // batch_size), 20_000))
        ds, base = _read(source, skip, READ_CPUS, blocks)
        written = errors = 0
        devices: set[str] = set()
        if ds is not None:
            skip_ref = ray.put(skip) if skip is not None and len(skip) and source.kind != "files" else None
            tm = source.modality_column if isinstance(source, TableSource) else None
            kwargs = dict(
                config=config.to_json(), dest=str(dest.resolve()), kind=source.kind,
                id_column=getattr(source, "id_column", "id"), column=getattr(source, "column", "bytes"),
                modality_column=tm, base=base,
                root=str(source.root.resolve()) if isinstance(source, FileSource) else None,
                skip=skip_ref, fault=fault, model_batch_size=model_batch_size, threads=max(1, int(round(cpus))),
                cache=cache, plugins=plugins, installed=installed,
            )
            # Ray Data restarts a dead actor and retries its batch by default (max_restarts=-1,
            # max_task_retries=-1 on actor pools; passing them through ray_remote_args is deprecated).
            out = ds.map_batches(
                RayEmbedder, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus, num_gpus=gpus or None,
            )
            with tqdm(total=total, unit="row", desc=f"embed-dataset (ray, {workers} actors)", disable=not progress,
                      smoothing=0.1) as bar:
                for b in out.iter_batches(batch_size=None, batch_format="pyarrow"):
                    for r, e, s, d in zip(*(b.column(c).to_pylist() for c in ("rows", "errors", "skipped", "device"))):
                        written, errors = written + r, errors + e
                        devices.add(d)
                        bar.update(r)
        return {"written": written, "errors": errors, "seconds": time.perf_counter() - start,
                "devices": sorted(devices), "cpus_per_actor": cpus, "gpus_per_actor": gpus}
    finally:
        if started:
            ray.shutdown()
