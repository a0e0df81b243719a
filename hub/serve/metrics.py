"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_COSTS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    """``mhub_*`` metrics: request latency by modality and status, queue depth, batch sizes and cost,
    batch run time, queue wait and batch time per request, rejections by reason, items embedded and in-flight requests."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.latency = Histogram("mhub_request_duration_seconds", "Request latency (seconds) by modality and HTTP status",
                                 ["modality", "status"], buckets=_LATENCY, registry=r)
        self.queue_depth = Gauge("mhub_queue_depth", "Items waiting in an encoder's queue", ["model"], registry=r)
        self.batch_size = Histogram("mhub_batch_size", "Items per executed batch", ["model"], buckets=_SIZES, registry=r)
        self.batch_cost = Histogram("mhub_batch_cost", "Cost of executed batches: items x longest item's tokens",
                                    ["model"], buckets=_COSTS, registry=r)
        self.batch_seconds = Histogram("mhub_batch_duration_seconds", "Time to run one batch (collate + forward)",
                                       ["model"], buckets=_LATENCY, registry=r)
        self.queue_wait = Histogram("mhub_queue_wait_seconds", "From a request's items entering the queue to its first "
                                    "batch starting", ["model"], buckets=_LATENCY, registry=r)
        self.batch_span = Histogram("mhub_request_batch_seconds", "From a request's first batch starting to its last "
                                    "item embedded", ["model"], buckets=_LATENCY, registry=r)
        self.rejections = Counter("mhub_rejections_total", "Requests refused, by reason", ["reason"], registry=r)
        self.cache_items = Counter("mhub_cache_items_total", "With --cache: items served by their raw form (raw_hit, "
                                   "no prepare), by their prepared form (hit) or run through the model (miss)",
                                   ["model", "result"], registry=r)
        self.items = Counter("mhub_items_total", "Items embedded", ["model", "modality"], registry=r)
        self.in_flight = Gauge("mhub_requests_in_flight", "Requests being served", registry=r)
        self.ready = Gauge("mhub_ready", "1 when every worker answered its heartbeat recently and the server is not draining",
                           registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
