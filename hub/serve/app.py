"""The FastAPI app: ``create_app(models, config)``.

Routes: ``POST /v1/embeddings`` (and ``/embeddings``), ``GET /v1/models``, ``GET /health/live``,
``GET /health/ready``, ``GET /metrics``.  A request goes: gate (drain, auth, body size) →
envelope validation → item caps → per item, in the model's prepare thread: decode, limits,
``encoder.prepare`` (a bad item fails its own request, naming ``input[i]``) → the model's
batcher → pooled vectors (normalized unless ``normalize: false``) in OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.concurrency import run_in_threadpool

from ..errors import HubError
from ..tokens import TokenEmbeddings
from .batcher import Batcher, ItemResult
from .config import ServeConfig
from .decode import RawItem, split_input, to_hub_item
from .errors import ApiError, envelope
from .gate import Gate, GateState
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .models import ServedModel
from .schemas import EmbeddingRequest, EmbeddingResponse, ErrorBody, ModelCard, ModelList

__all__ = ["create_app", "ServerCore"]

#: the embeddings endpoint's paths
EMBEDDING_PATHS = ("/v1/embeddings", "/embeddings")
#: responses above this many floats are serialized in a worker thread, off the event loop
_BIG_RESPONSE = 50_000


class ServerCore:
    """Everything a running app holds: models, batchers, prepare threads, metrics, gate state."""

    def __init__(self, models: Sequence[ServedModel], config: ServeConfig, *, allow_empty: bool = False) -> None:
        self.cfg = config
        self.models = {m.alias: m for m in models}
        if not self.models and not allow_empty:  # allow_empty: a chat-only server (issue 13)
            raise ApiError(500, "no models to serve", reason="internal")
        self.metrics = Metrics()
        self.gate = GateState()
        self.batchers = {a: Batcher(a, m.encoder, config, self.metrics) for a, m in self.models.items()}
        self.prepare_pools = {a: ThreadPoolExecutor(config.prepare_threads, thread_name_prefix=f"mhub-prep-{a}")
                              for a in self.models}
        self.created = int(time.time())

    # -- health ------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        workers = {}
        for alias, b in self.batchers.items():
            workers[alias] = {"alive": b.alive(), "warm": b.warm, "queued_items": b.queued_items,
                              "preparing_items": b.reserved_items, "last_heartbeat_s": round(now - b.last_beat, 3),
                              "busy_s": round(now - b.busy_since, 3) if b.busy_since else 0.0}
        ready = not self.gate.draining and all(w["alive"] for w in workers.values())
        self.metrics.ready.set(1 if ready else 0)
        self.metrics.in_flight.set(self.gate.in_flight)
        return ready, {"ready": ready, "draining": self.gate.draining, "models": workers}

    def reject(self, err: ApiError) -> None:
        self.metrics.rejections.labels(err.reason).inc()

    def precheck(self, method: str, path: str) -> ApiError | None:
        """Before an embeddings request's body is read: its 429 when no served encoder has room for one
        more item (the gate answers it at once; a request that may fit is parsed and :meth:`Batcher.admit` ted)."""
        if method != "POST" or path not in EMBEDDING_PATHS or not self.batchers:
            return None
        if any(b.backlog < b.limit() for b in self.batchers.values()):
            return None
        return min(self.batchers.values(), key=lambda b: b.backlog).full_error(1)

    def prechecked(self, err: ApiError, seconds: float) -> None:
        modality = next(iter(self.models.values())).modality if len(self.models) == 1 else "none"
        self.metrics.latency.labels(modality, str(err.status)).observe(seconds)

    # -- embeddings ----------------------------------------------------------------------------
    def model_for(self, req: EmbeddingRequest) -> ServedModel:
        model = self.models.get(req.model)
        if model is None:
            raise ApiError(404, f"model {req.model!r} is not served here; served models: "
                           f"{', '.join(sorted(self.models))} (GET /v1/models)", param="model",
                           reason="unknown_model", code="model_not_found")
        if req.dimensions is not None:
            dims = model.matryoshka_dims
            if not dims:
                raise ApiError(400, f"model {req.model!r} does not support 'dimensions': its encoder declares no "
                               f"Matryoshka training, so truncated vectors would be meaningless. Omit 'dimensions' "
                               f"to get all {model.dim}", param="dimensions", reason="invalid_request")
            if req.dimensions not in dims:
                raise ApiError(400, f"model {req.model!r} supports dimensions {dims}, not {req.dimensions}",
                               param="dimensions", reason="invalid_request")
        return model

    def prepare(self, model: ServedModel, raws: list[RawItem]) -> Prepared:
        """In the model's prepare thread: decode and check limits of every item, and ``prepare`` those the
        embedding cache (``--cache``) does not hold in this raw form (a string, a file's bytes, an array)."""
        enc = model.encoder
        items = {raw.index: to_hub_item(raw, self.cfg) for raw in raws}
        out = Prepared({}, {}, {})
        todo: list[int] = list(items)
        cache = self.batchers[model.alias].cache
        if cache is not None:
            from ..cache import CachedCall

            try:
                out.call = CachedCall(cache, enc)
                todo = out.call.serve_raw(items)  # the rest: looked up by their prepared form in the batch
            except Exception as exc:  # noqa: BLE001 - a cache failure must not fail the request
                _warn_cache(exc)
                out.call, todo = None, list(items)
            self.metrics.cache_items.labels(model.alias, "raw_hit").inc(len(items) - len(todo))
        by_index = {raw.index: raw for raw in raws}
        for i in todo:
            raw, item = by_index[i], items[i]
            try:
                p = enc.prepare(item, raw.index)
                out.lengths[i] = model.length(p)
                out.counts[i] = int(enc.num_tokens(p))
            except HubError as exc:
                raise ApiError(400, f"{raw.param}: {exc}", param=raw.param, reason="invalid_input",
                               code=type(exc).__name__) from None
            except Exception as exc:  # noqa: BLE001 - a plugin bug still names the item and spares the server
                raise ApiError(400, f"{raw.param}: {getattr(enc, 'name', 'the encoder')} could not read it: "
                               f"{type(exc).__name__}: {exc}", param=raw.param, reason="invalid_input") from None
            out.items[i] = p
        return out

    def from_cache(self, model: ServedModel, prep: Prepared, computed: dict[int, ItemResult],
                   counts: list[int]) -> list[ItemResult]:
        """In the model's prepare thread, with ``--cache``: every item as the cache holds it (the raw-form hits,
        and the prepared items the batch looked up or stored), recording raw-form aliases of the new ones, as
        ``Hub.embed(cache=True)`` does. Items the store does not hold (evicted meanwhile, unhashable) are
        taken from the batch's results (``computed``), never run again. Fills ``counts`` of the raw-form hits."""
        enc = model.encoder

        def run(todo: list[int]) -> TokenEmbeddings:
            te = TokenEmbeddings.from_list([computed[i].tokens for i in todo], modality=enc.modality, space=enc.space,
                                           pooling=enc.pooling, dim=int(enc.dim))
            te.indices = list(todo)
            return te

        assert prep.call is not None
        te = prep.call.embed(prep.items, run)
        if te.indices != list(range(len(counts))):
            raise RuntimeError(f"the embedding cache returned items {te.indices}, not 0..{len(counts) - 1}")
        pooled = te.pooled().float().cpu()
        out = []
        for r in range(len(te)):
            tokens = te[r].float().cpu()
            if r not in prep.items:
                counts[r] = int(tokens.shape[0])
            out.append(ItemResult(pooled[r], tokens))
        return out

    async def embed(self, req: EmbeddingRequest, model: ServedModel) -> bytes:
        raws = split_input(req.input, req.modality, self.cfg)
        for raw in raws:
            if raw.modality != model.modality:
                others = sorted(a for a, m in self.models.items() if m.modality == raw.modality)
                raise ApiError(400, f"{raw.param} is a {raw.modality} item but model {req.model!r} embeds "
                               f"{model.modality}; {raw.modality} models here: {', '.join(others) or 'none'}",
                               param=raw.param, reason="invalid_input", code="modality_mismatch")
        batcher = self.batchers[req.model]
        batcher.admit(len(raws))  # 429 now, before decoding, when the queue is full
        loop = asyncio.get_running_loop()
        pool = self.prepare_pools[req.model]
        batcher.incoming += 1
        try:
            prep = await loop.run_in_executor(pool, self.prepare, model, raws)
        except BaseException:
            batcher.release(len(raws))
            raise
        finally:
            batcher.incoming -= 1
        batcher.release(len(raws) - len(prep.items))  # served from the cache by their raw form: not queued
        order = sorted(prep.items, key=prep.lengths.__getitem__)  # shorter first: less padding per batch
        computed: dict[int, ItemResult] = {}
        if order:
            future = batcher.submit([prep.items[i] for i in order], [prep.lengths[i] for i in order],
                                    req.return_tokens or prep.call is not None)
            computed = dict(zip(order, await future))
        counts = [prep.counts.get(i, 0) for i in range(len(raws))]
        if prep.call is not None:
            try:
                by_input = await loop.run_in_executor(pool, self.from_cache, model, prep, computed, counts)
            except Exception as exc:  # noqa: BLE001 - the store failed: what the batch computed still answers
                if len(computed) < len(raws):
                    raise ApiError(503, f"the embedding cache failed ({type(exc).__name__}: {exc}); retry",
                                   reason="cache_error") from None
                _warn_cache(exc)
                by_input = [computed[i] for i in range(len(raws))]
        else:
            by_input = [computed[i] for i in range(len(raws))]
        self.metrics.items.labels(req.model, model.modality).inc(len(by_input))
        if len(by_input) * model.dim > _BIG_RESPONSE:
            return await run_in_threadpool(self.response_body, req, model, by_input, counts)
        return self.response_body(req, model, by_input, counts)

    @staticmethod
    def response_body(req: EmbeddingRequest, model: ServedModel, results: list[ItemResult], counts: list[int]) -> bytes:
        vectors = torch.stack([r.pooled for r in results])  # (n, dim)
        if req.dimensions is not None:
            vectors = vectors[:, : req.dimensions]
        if req.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
        arr = vectors.numpy().astype("<f4", copy=False)
        data = []
        for i, r in enumerate(results):
            row: dict[str, Any] = {"object": "embedding", "index": i}
            row["embedding"] = (base64.b64encode(arr[i].tobytes()).decode("ascii") if req.encoding_format == "base64"
                                else arr[i].tolist())
            if req.return_tokens and r.tokens is not None:
                row["tokens"] = base64.b64encode(np.ascontiguousarray(r.tokens.numpy(), dtype="<f4").tobytes()).decode()
                row["num_tokens"] = int(r.tokens.shape[0])
            data.append(row)
        total = int(sum(counts))
        usage = {"prompt_tokens": total, "total_tokens": total, "tokens_by_modality": {model.modality: total}}
        return json.dumps({"object": "list", "data": data, "model": req.model, "usage": usage}).encode()


@dataclass
class Prepared:
    """One request's items after its prepare thread: the prepared ones by input index (the others came from
    the cache by their raw form), their lengths and token counts, and the request's cache call."""

    items: dict[int, Any]
    lengths: dict[int, int]
    counts: dict[int, int]
    call: Any = None  # hub.cache.CachedCall with --cache


def _warn_cache(exc: Exception) -> None:
    warnings.warn(f"embedding cache: not used for this request ({type(exc).__name__}: {exc})", RuntimeWarning,
                  stacklevel=2)


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _parse(request: Request) -> EmbeddingRequest:
    body = await request.body()
    try:
        payload = json.loads(body) if len(body) < 256 * 1024 else await run_in_threadpool(json.loads, body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", reason="invalid_request") from None
    if not isinstance(payload, dict):
        raise ApiError(422, "the request body must be a JSON object with 'model' and 'input'", reason="invalid_request")
    try:
        return EmbeddingRequest.model_validate(payload)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(x) for x in err.get("loc", ())) or None
        raise ApiError(422, f"{param or 'body'}: {err.get('msg')}", param=param, reason="invalid_request") from None


def create_app(models: Sequence[ServedModel] | Mapping[str, Any], config: ServeConfig | None = None, *,
               chat: Any = None) -> FastAPI:
    """The server app for ``models`` (``ServedModel`` s, or a mapping of model id → encoder).

    ``chat``: a :class:`hub.serve.chat.ChatService` adds ``/v1/chat/completions`` and ``/v1/admin/*``
    (then ``models`` may be empty)."""
    cfg = config or ServeConfig()
    if isinstance(models, Mapping):
        models = [ServedModel(alias, enc, alias) for alias, enc in models.items()]
    core = ServerCore(list(models), cfg, allow_empty=chat is not None)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for alias, b in core.batchers.items():
            b.start(core.models[alias].warm_up)
        if chat is not None:  # -- chat (issue 13) --
            chat.start()
        core.readiness()
        # The loaded models leave ~400k tracked objects; a full collection of them stops the event loop for
        # about 200 ms (measured with minilm-l6), which every request waiting then pays (a 429 included).
        # Objects alive at start-up live as long as the server, so the collector stops scanning them.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            for b in core.batchers.values():
                await b.stop()
            if chat is not None:  # -- chat (issue 13) --
                await chat.aclose()
            for pool in core.prepare_pools.values():
                pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="modality-hub embeddings", version="1", lifespan=lifespan,
                  description="OpenAI-compatible embeddings for text, image, audio, graph and 3D items")
    app.state.core = core

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        core.reject(exc)
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", reason="not_found")
        core.reject(err)
        return _error_response(err)

    body_schema = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": EmbeddingRequest.model_json_schema()}}}}
    errors = {s: {"model": ErrorBody} for s in (400, 401, 404, 413, 422, 429, 503)}

    async def embeddings(request: Request) -> Response:
        start, modality, status = time.perf_counter(), "none", 200
        try:
            req = await _parse(request)
            model = core.model_for(req)
            modality = model.modality
            body = await core.embed(req, model)
            return Response(body, media_type="application/json")
        except ApiError as exc:
            status = exc.status
            core.reject(exc)
            return _error_response(exc)
        except Exception as exc:  # noqa: BLE001 - never let one request take the server down
            status = 500
            err = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", reason="internal")
            core.reject(err)
            return _error_response(err)
        finally:
            core.metrics.latency.labels(modality, str(status)).observe(time.perf_counter() - start)

    for path in EMBEDDING_PATHS:
        app.add_api_route(path, embeddings, methods=["POST"], response_model=EmbeddingResponse, responses=errors,
                          openapi_extra=body_schema, summary="Embed items of any modality (OpenAI's shape)",
                          include_in_schema=path.startswith("/v1"))

    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> ModelList:
        limits = {k: v for k, v in cfg.model_dump().items() if k.startswith("max_")}
        cards = [
            ModelCard(id=a, created=core.created, encoder=str(getattr(m.encoder, "name", a)), modality=m.modality,
                      dim=m.dim, space=m.space, runtime=m.runtime, device=m.device, matryoshka_dims=m.matryoshka_dims,
                      limits=limits)
            for a, m in core.models.items()]
        if chat is not None:  # -- chat (issue 13): the chat model and what is plugged --
            cards += chat.model_cards(core.created, limits)
        return ModelList(data=cards)

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        ok, detail = core.readiness()
        return JSONResponse(detail, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        core.readiness()
        return Response(core.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    if chat is not None:  # -- chat (issue 13): /v1/chat/completions, /v1/admin/plug, /v1/admin/unplug --
        chat.install(app, core)

    app.add_middleware(Gate, state=core.gate, api_key=cfg.api_key, max_body_bytes=cfg.max_body_bytes,
                       on_reject=core.reject, precheck=core.precheck, on_prechecked=core.prechecked)
    return app
