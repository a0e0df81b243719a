"""`POST /v1/chat/completions` for a :class:`~hub.lm.MultimodalLM` bundle (``mhub serve --bundle DIR``).

OpenAI's chat shape with the typed content parts of ``/v1/embeddings`` (``image_url`` data URIs,
``input_audio``, ``graph``, ``3d``), each going to its plugged modality::

    from hub import Hub
    from hub.serve import ServeConfig, create_app
    from hub.serve.chat import ChatService

    chat = ChatService(Hub().load("bundle/"), "my-bundle")
    app = create_app([], ServeConfig(), chat=chat)

A request goes: gate (drain, auth, body size) → envelope (:class:`~hub.serve.chat_schemas.ChatRequest`,
unsupported parameters refused) → messages and parts validated, parts for unplugged modalities
refused → items decoded in a worker thread (limits first) → the model's queue
(:mod:`hub.serve.chat_engine`: one request at a time) → prompt rendered, every item's tokens
counted (too long a prompt is a 400 saying by how much), generation → one JSON answer, or
server-sent events (``chat.completion.chunk`` s, then ``data: [DONE]``).  Errors found before the
first token are ordinary HTTP errors, even for streamed requests; a client that goes away
cancels its request (dropped from the queue, or stopped at the next token).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from .chat_engine import ChatEngine, ChatJob, ChatResult, GenOptions
from .chat_messages import check_neutral, check_plugged, decode_items, item_segments, parse_messages
from .chat_schemas import IGNORED, MAX_STOPS, NEUTRAL, SUPPORTED, ChatCompletion, ChatConfig, ChatRequest
from .errors import ApiError
from .schemas import ErrorBody

__all__ = ["ChatService", "ChatMetrics"]

_TTFT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ChatMetrics:
    """``mhub_chat_*`` metrics, registered on the server's own registry."""

    def __init__(self, registry: Any) -> None:
        r = registry
        self.requests = Counter("mhub_chat_requests_total", "Chat requests by outcome (ok, rejected, cancelled, error)",
                                ["outcome"], registry=r)
        self.completion_tokens = Counter("mhub_chat_completion_tokens_total", "Generated tokens by request outcome",
                                         ["outcome"], registry=r)
        self.prompt_tokens = Counter("mhub_chat_prompt_tokens_total", "Prompt tokens by modality", ["modality"],
                                     registry=r)
        self.ttft = Histogram("mhub_chat_time_to_first_token_seconds", "Streamed requests: arrival to first text",
                              buckets=_TTFT, registry=r)
        self.duration = Histogram("mhub_chat_request_duration_seconds", "Chat request latency by HTTP status",
                                  ["status"], buckets=_TTFT, registry=r)
        self.queue = Gauge("mhub_chat_queue_depth", "Chat requests waiting for the model", registry=r)
        self.running = Gauge("mhub_chat_running", "1 while the model generates", registry=r)


def _param_error(exc: ValidationError) -> ApiError:
    err = exc.errors()[0]
    loc = [str(x) for x in err.get("loc", ())]
    param = ".".join(loc) or None
    if err.get("type") == "extra_forbidden":
        return ApiError(400, f"unknown parameter {param!r}; supported: {', '.join(SUPPORTED)}; accepted and ignored: "
                        f"{', '.join(IGNORED)}; accepted at their neutral value only: {', '.join(NEUTRAL)}",
                        param=param, reason="invalid_request", code="unknown_parameter")
    return ApiError(400, f"{param or 'body'}: {err.get('msg')}", param=param, reason="invalid_request")


def _options(req: ChatRequest) -> GenOptions:
    if req.max_tokens is not None and req.max_completion_tokens is not None and req.max_tokens != req.max_completion_tokens:
        raise ApiError(400, f"max_tokens ({req.max_tokens}) and max_completion_tokens ({req.max_completion_tokens}) "
                       "disagree; send one of them", param="max_tokens", reason="invalid_request")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > MAX_STOPS or any(not s for s in stops):
        raise ApiError(400, f"stop takes up to {MAX_STOPS} non-empty strings, got {stops!r}", param="stop",
                       reason="invalid_request")
    if req.seed is not None and not -(2**63) <= req.seed < 2**64:
        raise ApiError(400, f"seed {req.seed} is out of range (a 64-bit integer)", param="seed", reason="invalid_request")
    return GenOptions(max_tokens=req.max_tokens or req.max_completion_tokens,
                      temperature=1.0 if req.temperature is None else req.temperature,
                      top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0, seed=req.seed, stops=stops)


def _usage(prompt: dict[str, Any], completion: int) -> dict[str, Any]:
    n = int(prompt["prompt_tokens"])
    return {"prompt_tokens": n, "completion_tokens": completion, "total_tokens": n + completion,
            "prompt_tokens_by_modality": dict(prompt["by_modality"])}


def _sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class ChatService:
    """The chat endpoint and the admin endpoints of one served :class:`~hub.lm.MultimodalLM`."""

    def __init__(self, lm: Any, name: str, config: ChatConfig | None = None) -> None:
        self.name = name
        self.cfg = config or ChatConfig()
        self.engine = ChatEngine(lm, name, self.cfg)
        self.core: Any = None
        self.metrics: ChatMetrics | None = None

    # -- wiring (called by hub.serve.app.create_app) --------------------------------------------
    def install(self, app: FastAPI, core: Any) -> None:
        from .admin import install_admin

        self.core = core
        self.metrics = ChatMetrics(core.metrics.registry)
        self.engine.metrics = self.metrics
        errors = {s: {"model": ErrorBody} for s in (400, 401, 404, 413, 429, 503)}
        body = {"requestBody": {"required": True, "content": {"application/json": {
            "schema": ChatRequest.model_json_schema()}}}}
        for path in ("/v1/chat/completions", "/chat/completions"):
            app.add_api_route(path, self.completions, methods=["POST"], response_model=ChatCompletion,
                              responses=errors, openapi_extra=body, include_in_schema=path.startswith("/v1"),
                              summary="Chat with the multimodal LM (OpenAI's shape; stream: server-sent events)")
        install_admin(app, self, core)

    def start(self) -> None:
        self.engine.start()

    async def aclose(self) -> None:
        self.engine.close()

    def model_cards(self, created: int, limits: dict[str, Any]) -> list[Any]:
        """``GET /v1/models`` entries: the chat model with what is plugged."""
        from .schemas import ModelCard

        lm = self.engine.lm
        backbone = lm.backbone
        return [ModelCard(id=self.name, created=created, encoder=str(getattr(backbone, "name", self.name)),
                          modality="text", dim=int(backbone.hidden_size), space=str(backbone.space), runtime="torch",
                          device=str(getattr(backbone, "device", "cpu")), limits=limits, kind="chat",
                          plugged=self.engine.plugged, context_window=int(backbone.max_context))]

    # -- the endpoint -------------------------------------------------------------------------
    async def _parse(self, request: Request) -> ChatRequest:
        raw = await request.body()
        try:
            payload = json.loads(raw) if len(raw) < 256 * 1024 else await run_in_threadpool(json.loads, raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON ({exc})", reason="invalid_request") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "the request body must be a JSON object with 'model' and 'messages'",
                           reason="invalid_request")
        try:
            req = ChatRequest.model_validate(payload)
        except ValidationError as exc:
            raise _param_error(exc) from None
        if req.model != self.name:
            raise ApiError(404, f"model {req.model!r} is not a chat model here; chat model: {self.name!r} "
                           "(GET /v1/models; embedding models answer POST /v1/embeddings)", param="model",
                           reason="unknown_model", code="model_not_found")
        check_neutral(req)
        return req

    async def _watch(self, request: Request, job: ChatJob) -> None:
        """Cancel ``job`` when its client disconnects (while it waits, runs or streams)."""
        try:
            while not job.finished.is_set():
                if await request.is_disconnected():
                    self.engine.withdraw(job)
                    return
                await asyncio.sleep(self.cfg.disconnect_poll_s)
        except asyncio.CancelledError:
            pass

    async def completions(self, request: Request) -> Response:
        start, status = time.perf_counter(), 200
        job: ChatJob | None = None
        watcher: asyncio.Task | None = None
        streaming = False
        try:
            req = await self._parse(request)
            turns = parse_messages(req.messages, self.core.cfg)
            check_plugged(turns, self.engine.plugged, self.name)
            options = _options(req)
            if item_segments(turns):
                await run_in_threadpool(decode_items, turns, self.core.cfg)
            loop = asyncio.get_running_loop()
            events: asyncio.Queue = asyncio.Queue()

            def emit(kind: str, payload: Any) -> None:
                loop.call_soon_threadsafe(events.put_nowait, (kind, payload))

            job = ChatJob(turns, options, emit, stream=bool(req.stream))
            self.engine.submit(job)
            watcher = asyncio.create_task(self._watch(request, job))
            kind, payload = await events.get()  # "ready" once the prompt composed and fits, else "error"
            if kind == "error":
                raise payload
            prompt = payload
            cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
            if req.stream:
                streaming = True
                include_usage = bool(req.stream_options and req.stream_options.include_usage)
                return StreamingResponse(self._stream(job, watcher, events, cid, created, prompt, include_usage, start),
                                         media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            while True:
                kind, payload = await events.get()
                if kind == "error":
                    raise payload
                if kind == "done":
                    break
            result: ChatResult = payload
            body = {"id": cid, "object": "chat.completion", "created": created, "model": self.name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                                 "finish_reason": result.finish_reason, "logprobs": None}],
                    "usage": _usage(prompt, result.completion_tokens)}
            return Response(json.dumps(body).encode(), media_type="application/json")
        except ApiError as exc:
            status = exc.status
            self.core.reject(exc)
            if (job is None or job.future is None) and self.metrics is not None:  # the worker counts the others
                self.metrics.requests.labels("rejected").inc()
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        except Exception as exc:  # noqa: BLE001 - never let one request take the server down
            status = 500
            err = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", reason="internal")
            self.core.reject(err)
            return JSONResponse(err.body(), status_code=500)
        finally:
            if not streaming:
                self._finish(job, watcher, start, status)

    def _finish(self, job: ChatJob | None, watcher: asyncio.Task | None, start: float, status: int) -> None:
        if watcher is not None:
            watcher.cancel()
        if job is not None and not job.finished.is_set():
            self.engine.withdraw(job)  # the client is gone (or the request failed): free the worker
        if self.metrics is not None:
            self.metrics.duration.labels(str(status)).observe(time.perf_counter() - start)

    async def _stream(self, job: ChatJob, watcher: asyncio.Task, events: asyncio.Queue, cid: str, created: int,
                      prompt: dict[str, Any], include_usage: bool, start: float) -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created,
                                    "model": self.name, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                                     "finish_reason": finish}]}
            if include_usage:
                body["usage"] = None
            return _sse(body)

        first = True
        pending: tuple[str, Any] | None = None
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                kind, payload = pending or await events.get()
                pending = None
                if kind == "delta":
                    if first and self.metrics is not None:
                        self.metrics.ttft.observe(time.perf_counter() - start)
                    first = False
                    while not events.empty():  # a slow reader gets the tokens made meanwhile in one chunk
                        pending = events.get_nowait()
                        if pending[0] != "delta":
                            break
                        payload, pending = payload + pending[1], None
                    yield chunk({"content": payload})
                elif kind == "done":
                    result: ChatResult = payload
                    rest = result.text[len(result.sent):] if result.text.startswith(result.sent) else ""
                    if rest:
                        if first and self.metrics is not None:
                            self.metrics.ttft.observe(time.perf_counter() - start)
                        yield chunk({"content": rest})
                    yield chunk({}, result.finish_reason)
                    if include_usage:
                        yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created,
                                    "model": self.name, "choices": [],
                                    "usage": _usage(prompt, result.completion_tokens)})
                    yield b"data: [DONE]\n\n"
                    return
                elif kind == "error":
                    yield _sse(payload.body())
                    yield b"data: [DONE]\n\n"
                    return
        finally:
            self._finish(job, watcher, start, 200)
