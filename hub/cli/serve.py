"""``mhub serve``: the OpenAI-compatible embedding server (needs the ``serve`` extra)."""

from __future__ import annotations

import click

from ..errors import HubError
from ..serve.config import ServeConfig
from ._common import fail

__all__ = ["register", "serve_command"]


#: ``--option`` -> ServeConfig field (defaults and help come from the config model)
FIELDS = {
    "max-body-bytes": "max_body_bytes", "max-text-items": "max_text_items", "max-other-items": "max_other_items",
    "max-text-chars": "max_text_chars", "max-image-pixels": "max_image_pixels",
    "max-audio-seconds": "max_audio_seconds", "max-graph-nodes": "max_graph_nodes",
    "max-graph-edges": "max_graph_edges", "max-points": "max_points", "max-batch-cost": "max_batch_cost",
    "max-batch-items": "max_batch_items", "max-wait-ms": "max_wait_ms", "max-queue-items": "max_queue_items",
    "overload-wait": "overload_wait", "overload-window": "overload_window_s", "overload-target": "overload_target",
    "prepare-threads": "prepare_threads", "batch-threads": "batch_threads", "batch-nice": "batch_nice",
    "heartbeat-timeout": "heartbeat_timeout_s",
    "drain-timeout": "drain_timeout_s",
}


def _config_options(fn):
    for option, field in reversed(FIELDS.items()):
        info = ServeConfig.model_fields[field]
        fn = click.option(f"--{option}", field, type=info.annotation, default=info.default, show_default=True,
                          help=info.description)(fn)
    return fn


@click.command("serve")
@click.option("--encoder", "-e", "encoders", multiple=True, metavar="NAME_OR_DIR[=ALIAS]",
              help="an encoder to serve (repeatable): a registered name (`mhub plugins`) or an ONNX export directory "
                   "(`mhub export`); ALIAS is the model id clients send. Default: the text modality's default encoder")
@click.option("--runtime", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="run encoders in PyTorch, or in ONNX Runtime (exported to the cache on first use)")
@click.option("--device", default="cpu", show_default=True,
              help="cpu or cuda[:N]; with --runtime onnx, CUDA must really load (OnnxEncoder's provider check)")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind; 0.0.0.0 exposes the server")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--api-key", default=None, metavar="KEY",
              help="require 'Authorization: Bearer KEY' (except /health/*); default: $MODALITY_HUB_API_KEY, else none")
@_config_options
@click.option("--no-batching", is_flag=True, help="one request per batch (for comparisons)")
@click.option("--cache", "use_cache", is_flag=True,
              help="use the on-disk embedding cache (MODALITY_HUB_CACHE/embeddings.sqlite): items already embedded "
                   "are served from it")
@click.option("--torch-threads", type=int, default=None,
              help="PyTorch intra-op threads (torch.set_num_threads); default: PyTorch's (the physical cores). "
                   "On shared or CPU-quota'd machines 1 is often much faster: parallel ops wait for their slowest thread")
# -- chat (issue 13, hub/serve/chat.py) --
@click.option("--bundle", type=click.Path(exists=True, file_okay=False), default=None, metavar="DIR",
              help="a MultimodalLM bundle (lm.save) to chat with at POST /v1/chat/completions; without --encoder, "
                   "only chat is served")
@click.option("--bundle-name", default=None, metavar="NAME", help="the chat model id (default: the bundle's directory name)")
@click.option("--allow-admin", is_flag=True,
              help="open /v1/admin/plug and /v1/admin/unplug without an API key (they always need it when one is set)")
@click.option("--chat-max-tokens", type=int, default=256, show_default=True,
              help="new tokens when a chat request gives no max_tokens")
@click.option("--chat-queue", type=int, default=64, show_default=True,
              help="chat requests waiting for the model; above it requests get 429")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve_command(encoders, runtime, device, host, port, api_key, no_batching, use_cache, torch_threads, log_level, bundle,
                  bundle_name, allow_admin, chat_max_tokens, chat_queue, **settings):
    """Serve embeddings of every modality over HTTP, in OpenAI's /v1/embeddings shape.

    \b
    Endpoints: POST /v1/embeddings (and /embeddings), GET /v1/models, GET /health/live,
    GET /health/ready, GET /metrics (Prometheus). Binds 127.0.0.1 unless --host says otherwise.
    Items arrive as strings, data URIs or typed parts (text, image_url, input_audio, graph, 3d);
    URLs are never fetched.

    \b
    mhub serve -e minilm-l6 -e tiny-clip=clip --port 8000
    curl -s localhost:8000/v1/embeddings -H 'content-type: application/json' \\
         -d '{"model": "minilm-l6", "input": ["a cat", "a dog"]}'

    \b
    Chat with a MultimodalLM bundle (POST /v1/chat/completions, OpenAI's shape, stream: true for
    server-sent events; admin: POST /v1/admin/plug and /v1/admin/unplug with the API key):
    mhub serve --bundle ./my-bundle --api-key KEY
    """
    try:
        if use_cache:
            from ..cache import default_cache_path

            settings["cache"] = str(default_cache_path())
        config = ServeConfig.with_env_key(api_key, batching=not no_batching, **settings)
    except ValueError as exc:  # pydantic: an option out of range
        fail(HubError(f"invalid option: {exc}"))
    try:
        from .. import Hub
        from ..serve import create_app, load_models, serve
    except ImportError as exc:  # the extra is missing
        fail(HubError(f"mhub serve needs the serve extra: pip install 'modality-hub[serve]' ({exc})"))
    if torch_threads is not None:
        import torch

        torch.set_num_threads(max(1, torch_threads))
    try:
        hub = Hub()
        models = load_models(list(encoders), hub=hub, runtime=runtime, device=device) if encoders or not bundle else []
        chat = None
        if bundle:  # -- chat (issue 13) --
            from pathlib import Path

            from ..serve.chat import ChatService
            from ..serve.chat_schemas import ChatConfig

            lm = hub.load(bundle)
            if device != "cpu":
                lm = lm.to(device)
            chat = ChatService(lm, bundle_name or Path(bundle).resolve().name,
                               ChatConfig(default_max_tokens=chat_max_tokens, max_queue=chat_queue,
                                          allow_admin=allow_admin))
        app = create_app(models, config, chat=chat)
    except HubError as exc:
        fail(exc)
    except ValueError as exc:  # pydantic: a chat option out of range
        fail(HubError(f"invalid option: {exc}"))
    served = [f"{m.alias} ({m.modality}, {m.runtime}, dim {m.dim})" for m in models]
    if chat is not None:
        served.append(f"{chat.name} (chat; plugged: {', '.join(chat.engine.plugged) or 'nothing'}; admin: "
                      f"{'key' if config.api_key else 'open' if allow_admin else 'off'})")
    click.echo(f"serving {', '.join(served)} on "
               f"http://{host}:{port}  auth: {'bearer key' if config.api_key else 'none'}", err=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        click.secho(f"warning: listening on {host} without an API key; anyone who can reach it can use it",
                    fg="yellow", err=True)
    serve(app, host=host, port=port, log_level=log_level)


def register(cli: click.Group) -> None:
    cli.add_command(serve_command)
