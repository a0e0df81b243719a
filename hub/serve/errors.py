"""Errors the server answers with, in OpenAI's envelope: ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["ApiError", "envelope", "REASONS"]

#: rejection reasons counted by ``mhub_rejections_total`` (label ``reason``)
REASONS = (
    "unauthorized", "body_too_large", "too_many_items", "item_too_large", "invalid_input", "invalid_request",
    "unknown_model", "queue_full", "draining", "not_found", "internal",
)

_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
    413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
    500: "server_error", 503: "service_unavailable",
}


class ApiError(Exception):
    """An error response: HTTP ``status``, a message naming the item, ``param`` (``input[3]``) and ``reason``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 reason: str = "invalid_request", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code or reason
        self.reason = reason
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return envelope(self.status, self.message, param=self.param, code=self.code)

    def body_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()


def envelope(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}
