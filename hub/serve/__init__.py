"""`mhub serve`: an OpenAI-compatible embedding server for every modality.

FastAPI on uvicorn, dynamic batching per encoder, limits on by default, Prometheus metrics,
bearer auth and a graceful drain on SIGTERM.  Needs the ``serve`` extra
(``pip install 'modality-hub[serve]'``)::

    from hub import Hub
    from hub.serve import ServeConfig, create_app, load_models, serve

    h = Hub()
    app = create_app(load_models(["minilm-l6", "tiny-clip=clip"], hub=h), ServeConfig())
    serve(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeConfig", "ServedModel", "create_app", "load_models", "serve", "BackgroundServer", "ENV_API_KEY"]

_LAZY = {
    "ServeConfig": "config", "ENV_API_KEY": "config", "ServedModel": "models", "load_models": "models",
    "create_app": "app", "serve": "runner", "BackgroundServer": "runner",
}


def __getattr__(name: str) -> Any:  # FastAPI and uvicorn load only when the server is used
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
