"""Dynamic batching for one served encoder: a bounded queue and a worker thread.

The worker warms the encoder up before the server reports ready (a few batches of the modality's
examples), so the first requests do not pay for first-call allocations.

Requests arrive already prepared (``encoder.prepare`` ran per item, so a bad item never
reaches a batch) with each item's length (the token count that sets padding, known before
running).  The worker coroutine cuts batches from the queue in arrival order:

* everything queued is taken at once, its items sorted by length (less padding), then cut by a
  **cost budget**: ``items x longest item's length <= max_batch_cost`` (padding counts), and at
  most ``max_batch_items`` items; a request may be split across batches (``max_batch_cost=0``:
  2048 on CPU, where a batch of 256 short texts runs at half the items/s of a batch of 32 because
  its activations leave the cache, and 16384 on a GPU);
* after a **short wait** (``max_wait_ms``) for more items, but only while other requests for
  this encoder are still being prepared: with nothing on the way, a batch runs at once;
* with batching off, each batch holds one request's items.

Batches run in dedicated threads (``collate`` + ``forward`` under ``inference_mode``), off
the event loop: ``batch_threads`` of them run batches at the same time (default: 1, except on
CPU with one PyTorch intra-op thread, ``--torch-threads 1``: one per core, at most 4, so two
single-threaded batches run side by side on 2 cores instead of one).  If a batch that holds
several requests fails, each request's items are run again on their own so only the request at
fault fails.

**Heartbeat**: a thread stamps ``last_beat`` when a batch starts and ends, and an idle
worker sends a no-op every ``heartbeat_interval_s``; a worker silent for longer than
``heartbeat_timeout_s``, or with a batch running for longer than that (stuck), is not :meth:`alive`.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import ServeConfig
from .errors import ApiError
from .metrics import Metrics

__all__ = ["Batcher", "ItemResult", "batch_threads_for", "lower_priority"]


def batch_threads_for(on_gpu: bool) -> int:
    """Batch threads by default: 1 on a GPU, or when PyTorch runs several intra-op threads (its default:
    one per core); with one intra-op thread (``--torch-threads 1``), one batch per core, at most 4."""
    if on_gpu or torch.get_num_threads() > 1:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))


def lower_priority(nice: int) -> None:
    """In a new worker thread: add ``nice`` to this thread's niceness (Linux: per thread, and inherited by the
    threads it starts, such as PyTorch's intra-op pool), so the event loop thread preempts it for a core.
    Raising niceness needs no privilege; elsewhere, or if refused, nothing changes."""
    if nice <= 0 or not hasattr(os, "setpriority") or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        pass


@dataclass
class ItemResult:
    """One item's output: its pooled vector (not normalized) and, when asked for, its tokens."""

    pooled: torch.Tensor  # (dim,) float32
    tokens: torch.Tensor | None  # (T, dim) float32, unpadded


@dataclass(eq=False)  # identity: jobs are compared and hashed as objects
class _Job:
    prepared: list[Any]
    lengths: list[int]
    want_tokens: bool
    future: asyncio.Future
    results: list[ItemResult | None] = field(default_factory=list)
    remaining: int = 0
    submitted: float = 0.0  # time.perf_counter() when queued
    started: float = 0.0  # when its first batch started (0: not yet)


class Batcher:
    """Queue + worker for one encoder; :meth:`submit` returns a future of per-item results."""

    def __init__(self, name: str, encoder: Any, config: ServeConfig, metrics: Metrics) -> None:
        self.name, self.encoder, self.cfg, self.metrics = name, encoder, config, metrics
        self._jobs: deque[_Job] = deque()
        self.queued_items = 0
        self.reserved_items = 0  # admitted items still being prepared
        self.taken_items = 0  # items cut into batches that have not finished (waiting for a thread, or running)
        self.incoming = 0  # requests for this encoder being prepared (they are about to be submitted)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        on_gpu = str(getattr(encoder, "device", "cpu")).startswith("cuda")
        self.threads = config.batch_threads or batch_threads_for(on_gpu)
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=f"mhub-batch-{name}",
                                            initializer=lower_priority, initargs=(config.batch_nice,))
        self._running: dict[int, float] = {}  # worker thread -> when its batch started
        self._tasks: set[asyncio.Task] = set()
        self.last_beat = time.monotonic()
        self.warm = False
        self._rate = 0.0  # items/s, exponential moving average over batches
        self._ref_rate = 0.0  # _rate when the current overload began (its first refusal)
        self._refused_at = -math.inf  # time.monotonic() of the last refusal
        self.max_cost = config.max_batch_cost or (16384 if on_gpu else 2048)
        self.cache = None
        if config.cache:  # items already embedded (by this server, Hub.embed or embed-dataset) never run again
            from ..cache import open_cache

            self.cache = open_cache(config.cache)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, warm_up: list[Any] | None = None) -> None:
        """Start the worker; it first runs ``warm_up`` items (not ready until they are done)."""
        self._wake = asyncio.Event()
        self.last_beat = time.monotonic()
        self.warm = not warm_up
        self._task = asyncio.get_running_loop().create_task(self._loop(warm_up), name=f"mhub-batcher-{self.name}")

    @property
    def busy_since(self) -> float | None:
        """When the oldest batch still running started (None: idle)."""
        return min(self._running.values(), default=None)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(ApiError(503, "the server is shutting down", reason="draining"))
        self._jobs.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def alive(self) -> bool:
        """The worker answered its heartbeat within ``heartbeat_timeout_s`` (and its loop runs)."""
        if self._task is None or self._task.done() or not self.warm:
            return False
        now, since = time.monotonic(), self.busy_since
        if since is not None and now - since >= self.cfg.heartbeat_timeout_s:
            return False  # a batch is stuck (other threads may still beat)
        return now - self.last_beat < self.cfg.heartbeat_timeout_s

    # -- submitting ----------------------------------------------------------------------------
    def retry_after_s(self, extra: int = 0) -> float:
        """Estimated seconds until what is admitted now (and ``extra`` more items) is embedded (0.05..60)."""
        rate = self._rate if self._rate > 0 else 1.0
        return min(60.0, max(0.05, (self.backlog + extra) / rate))

    def retry_after(self, extra: int = 0) -> int:
        """:meth:`retry_after_s` in whole seconds (1..60), as HTTP's ``Retry-After`` takes them."""
        return int(min(60, max(1, math.ceil(self.retry_after_s(extra)))))

    @property
    def backlog(self) -> int:
        """Admitted items not yet embedded: being prepared, queued, or in batches not finished."""
        return self.queued_items + self.reserved_items + self.taken_items

    def limit(self) -> int:
        """Items admitted at most now: ``max_queue_items``; while requests are being refused (overload, see
        ``ServeConfig.overload_wait``), what the batches, at the rate measured now, embed in ``overload_target``
        (default 0.8) of the time a full queue took before the overload (``max_queue_items / rate before``): fewer
        when batches run slower, so admitted requests keep their wait."""
        cap = self.cfg.max_queue_items
        if not self.cfg.overload_wait or time.monotonic() - self._refused_at > self.cfg.overload_window_s:
            return cap
        slower = min(1.0, self._rate / self._ref_rate) if self._ref_rate > 0 and self._rate > 0 else 1.0
        return max(1, int(cap * slower * self.cfg.overload_target))

    def full_error(self, n: int) -> ApiError:
        """The 429 for a request of ``n`` items that does not fit (``Retry-After``, and ``retry-after-ms``,
        which OpenAI's clients read first: the estimated time for the backlog to be embedded)."""
        now = time.monotonic()
        if now - self._refused_at > self.cfg.overload_window_s:  # an overload starts: keep the rate measured before
            self._ref_rate = self._rate
        self._refused_at = now
        wait = self.retry_after_s(n)
        return ApiError(429, f"model {self.name!r} is at capacity ({self.backlog} items queued or being prepared, "
                        f"limit {self.limit()} now, {self.cfg.max_queue_items} at most); retry in {wait:.1f} s",
                        reason="queue_full", code="queue_full",
                        headers={"Retry-After": str(self.retry_after(n)), "retry-after-ms": str(int(1000 * wait))})

    def admit(self, n: int) -> None:
        """Reserve room for a request's ``n`` items before they are prepared, or refuse it with 429.

        Items being prepared count against the limit too, so under overload the work a server has
        accepted stays bounded and refusals are answered at once, before any decoding.
        """
        if self.backlog + n > self.limit():
            raise self.full_error(n)
        self.reserved_items += n

    def release(self, n: int) -> None:
        """Give back an admitted request's reservation (its items failed to prepare)."""
        self.reserved_items -= n

    def submit(self, prepared: list[Any], lengths: list[int], want_tokens: bool) -> asyncio.Future:
        """Queue one admitted request's prepared items (its reservation becomes queued items)."""
        n = len(prepared)
        self.reserved_items -= n
        job = _Job(prepared, lengths, want_tokens, asyncio.get_running_loop().create_future(), [None] * n, n,
                   time.perf_counter())
        self._jobs.append(job)
        self.queued_items += n
        self.metrics.queue_depth.labels(self.name).set(self.queued_items)
        assert self._wake is not None
        self._wake.set()
        return job.future

    # -- the worker ----------------------------------------------------------------------------
    def _full(self) -> bool:
        return self.queued_items >= self.cfg.max_batch_items

    async def _wait(self, timeout: float) -> bool:
        assert self._wake is not None
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _loop(self, warm_up: list[Any] | None = None) -> None:
        loop = asyncio.get_running_loop()
        if warm_up:
            try:
                await loop.run_in_executor(self._executor, self._warm_up, warm_up)
            finally:
                self.warm = True
        slots = asyncio.Semaphore(self.threads)  # one per batch thread
        pending: deque[list[tuple[_Job, int]]] = deque()  # batches cut but not started
        while True:
            await slots.acquire()  # a batch thread is free
            try:
                while not pending:
                    if not self._jobs:
                        if not await self._wait(self.cfg.heartbeat_interval_s):
                            await loop.run_in_executor(self._executor, self._beat)
                        continue
                    if self.cfg.batching and self.cfg.max_wait_ms > 0:
                        deadline = loop.time() + self.cfg.max_wait_ms / 1000
                        while self.incoming > 0 and not self._full() and (left := deadline - loop.time()) > 0:
                            await self._wait(left)
                    pending.extend(self._take())
            except BaseException:
                slots.release()
                raise
            task = loop.create_task(self._guarded(pending.popleft(), slots))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _guarded(self, batch: list[tuple[_Job, int]], slots: asyncio.Semaphore) -> None:
        try:
            await self._execute(batch)
        except Exception as exc:  # noqa: BLE001 - a bug here must fail requests, not stop the worker
            for job in dict.fromkeys(job for job, _ in batch):
                self._fail(job, exc)
        finally:
            self.taken_items -= len(batch)
            slots.release()

    async def _execute(self, batch: list[tuple[_Job, int]]) -> None:
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        for job, _ in batch:
            if not job.started:
                job.started = now
                self.metrics.queue_wait.labels(self.name).observe(now - job.submitted)
        try:
            out = await loop.run_in_executor(self._executor, self._run, batch)
        except Exception as exc:  # noqa: BLE001 - isolate: rerun each request's items alone
            jobs = list(dict.fromkeys(job for job, _ in batch))
            if len(jobs) == 1:
                self._fail(jobs[0], exc)
                return
            for job in jobs:
                own = [(j, i) for j, i in batch if j is job]
                try:
                    self._deliver(own, await loop.run_in_executor(self._executor, self._run, own))
                except Exception as exc2:  # noqa: BLE001
                    self._fail(job, exc2)
            return
        self._deliver(batch, out)

    def _beat(self) -> None:
        self.last_beat = time.monotonic()

    def _take(self) -> list[list[tuple[_Job, int]]]:
        """Everything queued now (with batching off: one request), as batches of similar length.

        The items are sorted by length, then cut while ``items x longest <= max_batch_cost`` and
        ``items <= max_batch_items``: padding stays small however the requests interleave.
        """
        items: list[tuple[_Job, int]] = []
        while self._jobs:
            job = self._jobs.popleft()
            if job.future.done():  # the client went away
                self.queued_items -= len(job.prepared)
                continue
            items.extend((job, i) for i in range(len(job.prepared)))
            self.queued_items -= len(job.prepared)
            self.taken_items += len(job.prepared)
            if not self.cfg.batching:
                break
        self.metrics.queue_depth.labels(self.name).set(self.queued_items)
        items.sort(key=lambda ji: ji[0].lengths[ji[1]])
        batches: list[list[tuple[_Job, int]]] = []
        batch: list[tuple[_Job, int]] = []
        cfg = self.cfg
        for job, i in items:
            length = int(job.lengths[i])  # sorted: the longest so far
            if batch and (len(batch) >= cfg.max_batch_items or (len(batch) + 1) * length > self.max_cost):
                batches.append(batch)
                batch = []
            batch.append((job, i))
        if batch:
            batches.append(batch)
        for b in batches:
            self.metrics.batch_size.labels(self.name).observe(len(b))
            self.metrics.batch_cost.labels(self.name).observe(len(b) * max(int(j.lengths[i]) for j, i in b))
        return batches

    def _warm_up(self, items: list[Any]) -> None:
        """In the worker thread, before the server is ready: batches of 1, 8 and all of ``items``
        (the modality's examples), so the first requests do not pay for first-call allocations."""
        prepared = []
        for i, item in enumerate(items):
            try:
                prepared.append(self.encoder.prepare(item, i))
            except Exception:  # noqa: BLE001 - an example the encoder refuses is just skipped
                continue
        if not prepared:
            return
        lengths = [int(self.encoder.num_tokens(p)) for p in prepared]
        job = _Job(prepared, lengths, False, None)  # type: ignore[arg-type]
        n = len(prepared)
        for idx in ([0], [n - 1], list(range(min(8, n))), list(range(n))):
            self._run([(job, i) for i in idx], use_cache=False)

    def _run(self, batch: list[tuple[_Job, int]], use_cache: bool = True) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """In the worker thread: collate + forward (only of the items the cache misses, with one); the pooled
        rows and the tokens wanted."""
        start = self.last_beat = time.monotonic()
        me = threading.get_ident()
        self._running[me] = start
        try:
            enc = self.encoder
            device = getattr(enc, "device", None)

            ran: list[int] = []

            def forward(rows: list[int]) -> Any:
                ran.extend(rows)
                tensors = enc.collate([batch[r][0].prepared[batch[r][1]] for r in rows])
                if device is not None:
                    tensors = {k: v.to(device) for k, v in tensors.items()}
                with torch.inference_mode():
                    te = enc(**tensors)
                te.indices = list(rows)
                return te

            if self.cache is not None and use_cache:
                from ..cache import cached_embed

                prepared = {r: job.prepared[i] for r, (job, i) in enumerate(batch)}
                te = cached_embed(self.cache, enc, prepared, forward)  # rows in batch order
                self.metrics.cache_items.labels(self.name, "miss").inc(len(ran))
                self.metrics.cache_items.labels(self.name, "hit").inc(len(batch) - len(ran))
            else:
                te = forward(list(range(len(batch))))
            with torch.inference_mode():
                pooled = te.pooled().float().cpu()  # (batch, dim)
                tokens = [te[r].float().cpu() if job.want_tokens else None for r, (job, _) in enumerate(batch)]
            return pooled, tokens
        finally:
            now = self.last_beat = time.monotonic()
            self._running.pop(me, None)
            took = max(now - start, 1e-6)
            self.metrics.batch_seconds.labels(self.name).observe(took)
            rate = self.threads * len(batch) / took
            self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate

    def _deliver(self, batch: list[tuple[_Job, int]], out: tuple[torch.Tensor, list[torch.Tensor | None]]) -> None:
        pooled, tokens = out
        for r, (job, i) in enumerate(batch):
            job.results[i] = ItemResult(pooled[r], tokens[r])
            job.remaining -= 1
            if job.remaining == 0 and not job.future.done():
                job.future.set_result(job.results)
                self.metrics.batch_span.labels(self.name).observe(time.perf_counter() - job.started)

    def _fail(self, job: _Job, exc: Exception) -> None:
        # drop the rest of a failed request that is still queued
        if job in self._jobs:
            self._jobs.remove(job)
            self.queued_items -= len(job.prepared)
            self.metrics.queue_depth.labels(self.name).set(self.queued_items)
        if not job.future.done():
            job.future.set_exception(exc)
