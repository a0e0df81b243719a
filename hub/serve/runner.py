"""Running the app on uvicorn: in the foreground with a graceful drain, or in a background thread.

**Drain** (``serve``): the first SIGTERM turns ``/health/ready`` false and makes the gate
answer new requests with 503, while the listening socket stays open (so a load balancer
sees "not ready" rather than refused connections).  Requests already in flight finish;
when none is left (or after ``drain_timeout_s``) uvicorn shuts down and the process exits
with status 0.  SIGINT, or a second SIGTERM, is uvicorn's own shutdown.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from types import FrameType
from typing import Any

import uvicorn

from .gate import GateState

__all__ = ["serve", "DrainingServer", "BackgroundServer"]


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` whose first SIGTERM drains instead of stopping at once."""

    def __init__(self, config: uvicorn.Config, gate: GateState, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.gate, self.drain_timeout_s = gate, drain_timeout_s
        self._drainer: threading.Thread | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self._drainer is None and not self.should_exit:
            self.gate.begin_drain()
            self._drainer = threading.Thread(target=self._drain, name="mhub-drain", daemon=True)
            self._drainer.start()
            return
        super().handle_exit(sig, frame)

    def _drain(self) -> None:
        deadline = time.monotonic() + self.drain_timeout_s
        time.sleep(0.05)  # let requests that were already being read register as in flight
        while self.gate.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.should_exit = True


def serve(app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          drain_timeout_s: float | None = None) -> None:
    """Serve ``app`` (from :func:`hub.serve.create_app`) until SIGTERM (drained) or SIGINT."""
    core = app.state.core
    timeout = core.cfg.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=max(1, int(timeout)), server_header=False)
    DrainingServer(config, core.gate, timeout).run()


class BackgroundServer:
    """``with BackgroundServer(app) as s: httpx.get(s.url + "/health/live")`` — a real uvicorn server
    on 127.0.0.1 and a free port, in a daemon thread, always stopped on exit (tests, benchmarks)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 start_timeout_s: float = 120.0) -> None:
        self.app, self.host, self.port, self.log_level = app, host, port, log_level
        self.start_timeout_s = start_timeout_s
        self.server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "BackgroundServer":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level=self.log_level, lifespan="on", timeout_graceful_shutdown=5,
                                server_header=False)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name=f"mhub-serve-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __exit__(self, *exc: Any) -> None:
        self.stop()
