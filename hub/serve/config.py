"""What `mhub serve` allows: limits, batching, auth and drain settings (one pydantic model)."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ServeConfig", "ENV_API_KEY", "MiB"]

#: environment variable holding the bearer key when ``--api-key`` is not given
ENV_API_KEY = "MODALITY_HUB_API_KEY"
MiB = 1024 * 1024


class ServeConfig(BaseModel):
    """Limits are on by default; every one is configurable (``mhub serve --help``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- request limits ----------------------------------------------------------------------
    max_body_bytes: int = Field(16 * MiB, ge=1024, description="request body size, enforced while reading (413)")
    max_text_items: int = Field(2048, ge=1, description="strings per request")
    max_other_items: int = Field(64, ge=1, description="non-text items per request")
    max_text_chars: int = Field(200_000, ge=1, description="characters per text item")
    max_image_pixels: int = Field(40_000_000, ge=1, description="pixels per image, read from its header before decoding")
    max_audio_seconds: float = Field(600.0, gt=0, description="seconds per audio clip, read from its header before decoding")
    max_graph_nodes: int = Field(50_000, ge=1, description="nodes per graph")
    max_graph_edges: int = Field(500_000, ge=1, description="edges per graph")
    max_points: int = Field(2_000_000, ge=1, description="points (or mesh vertices) per 3D item")

    # -- batching ----------------------------------------------------------------------------
    max_batch_cost: int = Field(0, ge=0, description="a batch's cost: items x the longest item's token count; 0: "
                                "2048 on CPU (bigger batches run slower per item there), 16384 on a GPU")
    max_batch_items: int = Field(256, ge=1, description="items per executed batch")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits for more items once it has one")
    max_queue_items: int = Field(4096, ge=1, description="items admitted per encoder and not yet embedded (being prepared, "
                                 "queued, or in batches not finished); above it requests get 429")
    overload_wait: bool = Field(True, description="while requests are being refused (a refusal within "
                                "overload_window_s), admit only what batches, at the rate measured now, embed in the "
                                "time a full queue took before the overload: when refusals or other load slow the "
                                "batches down, admitted requests keep their latency (fewer are admitted); off: the "
                                "item bound alone")
    overload_target: float = Field(0.8, gt=0, le=1, description="with overload_wait, the admitted wait while "
                                   "overloaded as a fraction of the time a full queue took before the overload (1.0: "
                                   "that time; lower: shorter waits for accepted requests, more 429s, smaller batches; "
                                   "with 0.8 the accepted p99 was 0.985x the 32-client p99 by the median of 16 "
                                   "rounds on a quiet 2-core machine, docs/serving.md)")
    overload_window_s: float = Field(1.0, gt=0, description="how long after a refusal the server counts as overloaded")
    batching: bool = Field(True, description="False: every batch holds one request's items (for comparison)")
    cache: str | None = Field(None, description="embedding cache file (hub.cache): items already embedded are not run "
                                                "again; None: off")
    prepare_threads: int = Field(1, ge=1, description="threads per encoder that decode and preprocess items")
    batch_threads: int = Field(0, ge=0, le=64, description="batches run at the same time per encoder; 0: one per core "
                                                           "(at most 4) on CPU with one torch thread, else 1")
    batch_nice: int = Field(10, ge=0, le=19, description="on Linux, niceness added to the batch threads (and the "
                            "intra-op threads they start), so the event loop preempts them: refusals and small "
                            "requests stay fast while batches use every core; 0: same priority as the event loop")

    # -- health, shutdown, auth ------------------------------------------------------------
    heartbeat_interval_s: float = Field(1.0, gt=0, description="how often an idle worker answers its heartbeat")
    heartbeat_timeout_s: float = Field(30.0, gt=0, description="a worker silent this long (stuck in a batch) is not ready")
    drain_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM, the longest wait for in-flight requests")
    api_key: str | None = Field(None, repr=False, description="bearer key; None: no auth (health is always open)")

    @classmethod
    def with_env_key(cls, api_key: str | None = None, **kwargs) -> "ServeConfig":
        """An explicit key wins over ``MODALITY_HUB_API_KEY``; an empty string means none."""
        key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
        return cls(api_key=key or None, **kwargs)
