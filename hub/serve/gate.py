"""The ASGI gate in front of every route: drain, auth, body size, in-flight count.

In this order, before the app sees a request:

1. **drain**: while the server drains (SIGTERM), new requests get 503 (``/health/*`` still
   answers, and says not ready);
2. **auth**: with a key set, every path but ``/health/*`` needs ``Authorization: Bearer KEY``,
   compared in constant time (``hmac.compare_digest``); 401 otherwise, before any body is read;
3. **body size**: a ``Content-Length`` above the limit is refused at once, and the body is
   counted while it is read, so a chunked upload is cut off at the limit (413) without being
   buffered whole;
4. **full queue**: an embeddings request that no served encoder has room for (``precheck``)
   gets its 429 at once, before its body is read or parsed: under overload, refusals cost
   the event loop as little as possible, so they answer fast and leave it to the accepted requests.
"""

from __future__ import annotations

import hmac
import time
from typing import Any, Awaitable, Callable

from .errors import ApiError

__all__ = ["Gate", "GateState"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

OPEN_PREFIX = "/health/"


class GateState:
    """Shared between the gate, the app and the runner: draining flag and in-flight count."""

    def __init__(self) -> None:
        self.draining = False
        self.drain_started: float | None = None
        self.in_flight = 0

    def begin_drain(self) -> None:
        if not self.draining:
            self.draining, self.drain_started = True, time.monotonic()


class Gate:
    """Pure ASGI middleware (no buffering beyond the limit, no Starlette request objects)."""

    def __init__(self, app: Any, *, state: GateState, api_key: str | None, max_body_bytes: int,
                 on_reject: Callable[[ApiError], None],
                 precheck: Callable[[str, str], ApiError | None] | None = None,
                 on_prechecked: Callable[[ApiError, float], None] | None = None) -> None:
        self.app, self.state, self.max_body = app, state, max_body_bytes
        self._key = f"Bearer {api_key}".encode() if api_key else None
        self.on_reject = on_reject
        #: (method, path) -> an error to answer before the body is read (a full queue), or None
        self.precheck, self.on_prechecked = precheck, on_prechecked

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path.startswith(OPEN_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.state.draining:
            await self._reject(send, ApiError(503, "the server is shutting down; retry on another replica",
                                              reason="draining", headers={"Connection": "close", "Retry-After": "1"}))
            return
        if self._key is not None and not hmac.compare_digest(headers.get(b"authorization", b""), self._key):
            await self._reject(send, ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                              reason="unauthorized", code="invalid_api_key",
                                              headers={"WWW-Authenticate": "Bearer"}))
            return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await self._reject(send, self._too_large(int(length)))
            return
        if self.precheck is not None:
            start = time.perf_counter()
            err = self.precheck(scope.get("method", ""), path)
            if err is not None:
                await self._reject(send, err)
                if self.on_prechecked is not None:
                    self.on_prechecked(err, time.perf_counter() - start)
                return
        self.state.in_flight += 1
        try:
            await self.app(scope, self._limited(receive), send)
        finally:
            self.state.in_flight -= 1

    def _too_large(self, size: int) -> ApiError:
        return ApiError(413, f"request body of {size}+ bytes is above this server's limit of {self.max_body} bytes "
                        "(mhub serve --max-body-bytes)", reason="body_too_large", code="body_too_large",
                        headers={"Connection": "close"})

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def wrapped() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # the app's ApiError handler answers 413
                    raise self._too_large(seen)
            return message

        return wrapped

    async def _reject(self, send: Send, err: ApiError) -> None:
        self.on_reject(err)
        body = err.body_bytes()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
