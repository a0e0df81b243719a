"""Admin endpoints: plug and unplug modalities of the served chat model at run time.

``POST /v1/admin/plug`` (:class:`~hub.serve.chat_schemas.PlugRequest`) and
``POST /v1/admin/unplug`` (:class:`~hub.serve.chat_schemas.UnplugRequest`) call
``MultimodalLM.plug`` / ``unplug`` on the model's own thread, after the requests queued before
them, so a plug never lands in the middle of a generation; the backbone is neither restarted nor
reloaded.  Requests queued behind an unplug that use the unplugged modality get a 400.

They need the API key (the gate checks ``Authorization: Bearer KEY`` on every path but
``/health/*``).  With no key set they answer 403, unless the server runs with ``--allow-admin``:
they read encoder and projector directories on the server, so they are never open by accident.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from ..errors import HubError, ModalityNotPluggedError
from .chat_schemas import PluggedResponse, PlugRequest, UnplugRequest
from .errors import ApiError
from .schemas import ErrorBody

if TYPE_CHECKING:
    from .chat import ChatService

__all__ = ["install_admin"]


def install_admin(app: FastAPI, service: "ChatService", core: Any) -> None:
    engine = service.engine

    def allowed() -> None:
        if core.cfg.api_key is None and not service.cfg.allow_admin:
            raise ApiError(403, "the admin endpoints need an API key: start the server with --api-key KEY (or "
                           "$MODALITY_HUB_API_KEY) and send 'Authorization: Bearer KEY'; --allow-admin opens them "
                           "without a key (trusted networks only)", reason="unauthorized", code="admin_disabled")

    async def parse(request: Request, model: type[BaseModel]) -> Any:
        try:
            payload = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON ({exc})", reason="invalid_request") from None
        try:
            req = model.model_validate(payload)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(x) for x in err.get("loc", ())) or None
            raise ApiError(400, f"{param or 'body'}: {err.get('msg')}", param=param, reason="invalid_request") from None
        if req.model is not None and req.model != service.name:
            raise ApiError(404, f"model {req.model!r} is not the chat model here ({service.name!r})", param="model",
                           reason="unknown_model", code="model_not_found")
        return req

    async def run(request: Request, model: type[BaseModel], op: Callable[[Any], None]) -> JSONResponse:
        try:
            allowed()
            req = await parse(request, model)

            def on_model_thread() -> dict[str, dict[str, Any]]:
                op(req)
                engine.refresh()
                return engine.plugged

            try:
                plugged = await engine.call(on_model_thread)
            except ModalityNotPluggedError as exc:
                raise ApiError(400, str(exc), param="modality", reason="invalid_input",
                               code="modality_not_plugged") from None
            except HubError as exc:
                raise ApiError(400, str(exc), reason="invalid_input", code=type(exc).__name__) from None
            body = PluggedResponse(model=service.name, plugged=plugged)
            return JSONResponse(body.model_dump())
        except ApiError as exc:
            core.reject(exc)
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        except Exception as exc:  # noqa: BLE001 - a failed plug never takes the server down
            err = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", reason="internal")
            core.reject(err)
            return JSONResponse(err.body(), status_code=500)

    def do_plug(req: PlugRequest) -> None:
        engine.lm.plug(req.modality, encoder=req.encoder, projector=req.projector, placeholder=req.placeholder,
                       encoder_options=req.encoder_options, projector_options=req.projector_options)

    def do_unplug(req: UnplugRequest) -> None:
        engine.lm.unplug(req.modality)

    async def plug(request: Request) -> JSONResponse:
        return await run(request, PlugRequest, do_plug)

    async def unplug(request: Request) -> JSONResponse:
        return await run(request, UnplugRequest, do_unplug)

    errors = {s: {"model": ErrorBody} for s in (400, 401, 403, 404, 503)}
    for path, fn, schema, summary in (
        ("/v1/admin/plug", plug, PlugRequest, "Plug a modality into the chat model (needs the API key)"),
        ("/v1/admin/unplug", unplug, UnplugRequest, "Unplug a modality from the chat model (needs the API key)"),
    ):
        app.add_api_route(path, fn, methods=["POST"], response_model=PluggedResponse, responses=errors, summary=summary,
                          openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                              "schema": schema.model_json_schema()}}}})
