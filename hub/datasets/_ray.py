"""The Ray engine: ``read_* → map_batches(<embedder actor>) → atomic part files``, on Ray Data.

``workers`` actors (a fixed pool, ``concurrency=workers``) each build the hub and
its encoders once, use a fraction of a CPU (so reading still gets slots on a
small machine) or a GPU when they have one, and write their batches' part files
themselves (temporary name, then rename) into DEST, which every node must reach.

A dead actor is restarted (``max_restarts=-1``) and the batch it was running is
retried **once** on it (``max_task_retries=1``; Ray Data's default, -1, would retry a
poison item forever).  Part files have deterministic names, so a retry replaces
rather than duplicates.  A batch that kills its actor twice does not stop the run
(``DataContext.max_errored_blocks=-1`` while it runs); when the pipeline is done, the
source ids missing from DEST run again one row at a time on a separate actor without
restarts, and a row that kills it is written as an ``error`` row (after
``MAX_KILLED`` such rows, the rest are recorded without running: a systemic
crash); every id ends up in DEST exactly once, and nothing is retried without bound.  Works with a local
``ray.init()`` and with a cluster (``ray.init(address=...)`` or ``RAY_ADDRESS``).
"""

from __future__ import annotations

import inspect
import logging
import os
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from .._registry import ENV_PLUGINS
from ..errors import InvalidInputError, InvalidOptionsError
from ._config import RunConfig
from ._fault import Fault, poison_setting
from ._sources import FileSource, Rows, Source, TableSource, as_id

__all__ = ["run_ray", "RayEmbedder", "actor_resources"]

_IMPORTED = time.time()  # in an actor: when unpickling the class had imported the hub (and torch)
#: per-batch wall-clock times an actor reports: its process started, this module imported (torch, the hub,
#: Ray Data), its constructor started and ended (the encoders' code and weights), the batch began and ended
_TIMES = ("spawned", "imported", "born", "ready", "began", "ended")

#: CPUs requested by each read task (reading is I/O; the actors hold the compute).
READ_CPUS = 0.1
#: retries of a batch whose actor died (on the restarted actor); then its rows run one by one
TASK_RETRIES = 1
#: rows that killed their actor when run alone; past this, the remaining rows are not run again
MAX_KILLED = 8
KILLED = ("the row killed its Ray worker process: its batch died twice (retried once), then the row alone "
          "died again; it crashes the encoder's process (a native library, out of memory...) and is not retried")
SYSTEMIC = (f"the row's batch killed its Ray worker twice (retried once) and was not run again alone: {MAX_KILLED} "
            "rows of this run already killed their worker on their own, so the crash looks systemic (see the "
            "actors' logs in Ray's dashboard); fix it and rerun with resume to embed these rows")


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
                 plugins: list[str] | None = None, installed: list[str] | None = None,
                 poison: str | None = None) -> None:
        self.born = time.time()  # wall clock (the driver compares it with its own: start-up time)
        self.spawned = _process_start()
        self.key = uuid.uuid4().hex
        if plugins and ENV_PLUGINS not in os.environ:  # load only the plugins this run needs (faster start)
            os.environ[ENV_PLUGINS] = ",".join(plugins)
        import ray
        import torch

        from .._hub import Hub
        from ._config import weights_hash
        from ._embed import BatchEmbedder
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
        self.poison = poison
        self.extensions = self.embedder.extensions
        self.bytes_ok: dict[str, bool] = {}
        self.ready = time.time()

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

    def embed_rows(self, rows: Rows) -> tuple[int, int]:
        """Embed and write rows read by the driver (the isolation pass); returns (rows, errors)."""
        from ._local import write_tables

        Fault.poison(rows.ids, self.poison)
        return write_tables(self.dest, self.embedder.embed(rows), self.fault)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ._local import write_tables

        began = time.time()
        rows = self._rows(batch)
        skipped = 0
        if self.skip is not None and len(self.skip) and len(rows):
            drop = pc.is_in(pa.array(rows.ids, pa.string()), value_set=self.skip).to_numpy(zero_copy_only=False)
            keep = [i for i in range(len(rows)) if not drop[i]]
            skipped = len(rows) - len(keep)
            rows = rows.take(keep)
        written = errors = 0
        Fault.poison(rows.ids, self.poison)
        if len(rows):
            written, errors = write_tables(self.dest, self.embedder.embed(rows), self.fault)
        return pa.table({"rows": [written], "errors": [errors], "skipped": [skipped], "device": [self.device],
                         "actor": [self.key], "spawned": [self.spawned], "imported": [_IMPORTED], "born": [self.born],
                         "ready": [self.ready], "began": [began], "ended": [time.time()]})


def _process_start() -> float:
    """When this process started (wall clock), from /proc; else now."""
    try:
        with open("/proc/self/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as fh:
            boot = next(int(x.split()[1]) for x in fh if x.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def _read(source: Source, skip: pa.Array | None, read_cpus: float, blocks: int, rows_per_block: int):
    """The Ray Data dataset of the source's rows (file sources already without the ``skip`` ids).

    Table reads are re-cut into blocks of at most ``rows_per_block`` rows (a streaming repartition):
    Ray 2.60 reads one Parquet file as one block whatever ``override_num_blocks`` says, and one block
    is one task, so a single-file source would run on one actor while the others wait."""
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
    return ds.repartition(target_num_rows_per_block=rows_per_block), base


def _missing(all_ids: pa.Array, dest: Path, skip: pa.Array | None) -> pa.Array:
    """Source ids neither in DEST nor skipped (rows of batches that failed)."""
    from ._store import done_ids

    gone = done_ids(dest)
    if skip is not None and len(skip):
        gone = pa.concat_arrays([gone, skip])
    return pc.filter(all_ids, pc.invert(pc.is_in(all_ids, value_set=gone))) if len(gone) else all_ids


def _isolate(source: Source, all_ids: pa.Array, missing: pa.Array, dest: Path, config: RunConfig,
             kwargs: dict[str, Any], cpus: float, gpus: float, progress: bool) -> tuple[int, int, int]:
    """Rows of batches that killed their actor twice, one at a time on an actor without restarts (the driver
    reads them); a row that kills it is written as an error row and the next row gets a fresh actor.
    Returns (rows written, errors, rows that killed their actor)."""
    import ray

    from ._local import batches

    spawn = ray.remote(RayEmbedder).options(num_cpus=cpus, num_gpus=gpus or None, max_restarts=0,
                                            max_task_retries=0).remote
    dead = tuple(getattr(ray.exceptions, n) for n in ("RayActorError", "ActorUnavailableError")
                 if hasattr(ray.exceptions, n))
    others = pc.filter(all_ids, pc.invert(pc.is_in(all_ids, value_set=missing)))
    actor, written, errors, killed = None, 0, 0, []
    with tqdm(total=len(missing), unit="row", desc="embed-dataset (ray, rows of failed batches, one at a time)",
              disable=not progress) as bar:
        for rows in batches(source, 1, others if len(others) else None):
            if len(killed) >= MAX_KILLED:
                w = _killed_rows(dest, config, rows.ids, SYSTEMIC)
                written, errors = written + w, errors + w
            else:
                actor = actor or spawn(**kwargs)
                try:
                    w, e = ray.get(actor.embed_rows.remote(rows))
                    written, errors = written + w, errors + e
                except dead:
                    ray.kill(actor, no_restart=True)
                    actor = None
                    killed += rows.ids
                    w = _killed_rows(dest, config, rows.ids, KILLED)
                    written, errors = written + w, errors + w
            bar.update(len(rows))
    if actor is not None:
        ray.kill(actor, no_restart=True)
    return written, errors, len(killed)


def _killed_rows(dest: Path, config: RunConfig, ids: list[str], reason: str) -> int:
    """Write ``ids`` as error rows (no vector): in the run's one space, or ``unrouted`` with several encoders."""
    from ._config import package_versions
    from ._store import UNROUTED, schema_for, write_part

    route = next(iter(config.routes.values())) if len(config.routes) == 1 else None
    schema = schema_for(route, config, package_versions())
    cols = {"id": pa.array(ids, pa.string()), "modality": pa.array([route.modality if route else None] * len(ids),
                                                                   pa.string()),
            "error": pa.array([reason] * len(ids), pa.string())}
    table = pa.table({f.name: cols.get(f.name, pa.nulls(len(ids), f.type)) for f in schema}, schema=schema)
    write_part(dest, route.space if route else UNROUTED, table)
    return len(ids)


def _phases(timing: list[pa.Table], wall0: float, wall1: float) -> dict[str, Any]:
    """Where the pipeline's time went (wall clock, seconds from the start of run_ray): when the actors
    started and were ready (imports and model loading in between), when the first batch began, the
    actors' busy time and their steady rate (rows per busy second, all actors together)."""
    if not timing:
        return {}
    t = pa.concat_tables(timing).to_pydict()
    actors: dict[str, dict[str, float]] = {}
    for a, n, spawned, imported, born, ready, began, ended in zip(*(t[c] for c in ("actor", "rows", *_TIMES))):
        x = actors.setdefault(a, {"spawned": spawned, "imported": imported, "born": born, "ready": ready,
                                  "busy": 0.0, "rows": 0, "last": ended})
        x["busy"] += ended - began
        x["rows"] += n
        x["last"] = max(x["last"], ended)
    first = min(t["began"])
    busy = sum(x["busy"] for x in actors.values())
    per_actor = [x["rows"] / x["busy"] for x in actors.values() if x["busy"] > 0]
    return {"phases": {
        "actors": len(actors),
        "actor_process_s": round(min(x["spawned"] for x in actors.values()) - wall0, 2),
        "actor_imported_s": round(min(x["imported"] for x in actors.values()) - wall0, 2),
        "actor_born_s": round(min(x["born"] for x in actors.values()) - wall0, 2),
        "actor_ready_s": round(max(x["ready"] for x in actors.values()) - wall0, 2),
        "actor_init_s": round(max(x["ready"] - x["born"] for x in actors.values()), 2),
        "first_batch_s": round(first - wall0, 2),
        "last_batch_end_s": round(max(t["ended"]) - wall0, 2),
        "total_s": round(wall1 - wall0, 2),
        "busy_actor_s": round(busy, 2),
        "per_actor_rows_per_busy_s": round(sum(per_actor) / len(per_actor), 1) if per_actor else 0.0,
        "steady_rows_per_s": round(sum(t["rows"]) / max(1e-9, max(t["ended"]) - first), 1),
    }}


def run_ray(source: Source, dest: Path, config: RunConfig, *, batch_size: int, model_batch_size: int, workers: int,
            skip: pa.Array | None, total: int, progress: bool, fault: tuple[int, str] | None,
            num_cpus: float | None = None, num_gpus: float | None = None, address: str | None = None,
            cache: Any = None, plugins: list[str] | None = None, installed: list[str] | None = None,
            all_ids: pa.Array | None = None) -> dict[str, Any]:
    """Embed ``source`` into DEST on Ray Data; returns counts, seconds and the actors' devices.

    ``all_ids`` (the source's ids): after the pipeline, ids still missing from DEST (their batch killed
    its actor twice) run one row per task, and rows that kill their actor again become error rows."""
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
    start, wall0 = time.perf_counter(), time.time()
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.max_errored_blocks)
    try:
        ctx.enable_progress_bars = False  # ours counts rows; Ray's dashboard shows the operators
        ctx.max_errored_blocks = -1  # a batch that killed its actor twice is isolated below, not fatal
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        cpus, gpus = actor_resources(workers, num_cpus, num_gpus)
        common = dict(
            config=config.to_json(), dest=str(dest.resolve()), kind=source.kind,
            id_column=getattr(source, "id_column", "id"), column=getattr(source, "column", "bytes"),
            modality_column=source.modality_column if isinstance(source, TableSource) else None,
            root=str(source.root.resolve()) if isinstance(source, FileSource) else None,
            fault=fault, model_batch_size=model_batch_size, threads=max(1, int(round(cpus))),
            cache=cache, plugins=plugins, installed=installed, poison=poison_setting(),
        )
        devices: set[str] = set()
        timing: list[pa.Table] = []

        written = errors = 0
        blocks = max(2 * workers, min(-(-max(total, 1) // batch_size), 20_000))
        ds, base = _read(source, skip, READ_CPUS, blocks, batch_size)
        if ds is not None:
            skip_ref = ray.put(skip) if skip is not None and len(skip) and source.kind != "files" else None
            # a dead actor is restarted, and its batch retried once (Ray Data's default retries forever); Ray 2.60
            # has no named parameter for these and warns that extra remote args are deprecated (removal: 2.64)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated", category=DeprecationWarning)
                out = ds.map_batches(
                    RayEmbedder, fn_constructor_kwargs={**common, "base": base, "skip": skip_ref},
                    batch_size=batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
                    num_cpus=cpus, num_gpus=gpus or None, max_restarts=-1, max_task_retries=TASK_RETRIES,
                )
            with tqdm(total=total, unit="row", desc=f"embed-dataset (ray, {workers} actors)", disable=not progress,
                      smoothing=0.1) as bar:
                for b in out.iter_batches(batch_size=None, batch_format="pyarrow"):
                    timing.append(b.select(["actor", "rows", *_TIMES]))
                    for r, e, s, d in zip(*(b.column(c).to_pylist() for c in ("rows", "errors", "skipped", "device"))):
                        written, errors = written + r, errors + e
                        devices.add(d)
                        bar.update(r)
        isolated = killed = 0
        if all_ids is not None and len(missing := _missing(all_ids, dest, skip)):
            isolated = len(missing)  # rows of batches that killed their actor twice
            w, e, killed = _isolate(source, all_ids, missing, dest, config, {**common, "base": None, "skip": None},
                                    cpus, gpus, progress)
            written, errors = written + w, errors + e
        return {"written": written, "errors": errors, "seconds": time.perf_counter() - start,
                **_phases(timing, wall0, time.time()), "devices": sorted(devices), "cpus_per_actor": cpus, "gpus_per_actor": gpus,
                "rows_isolated": isolated, "rows_killed_worker": killed}
    finally:
        ctx.enable_progress_bars, ctx.max_errored_blocks = saved
        if started:
            ray.shutdown()
