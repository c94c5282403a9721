"""What the service does -> Prometheus metrics in a registry of its own (one per app).

Stages: ``embed`` (one batched embedding call, timed by the service's batcher), ``search``
(Retriever.query or Retriever.similar as a whole), and inside a query the parts Retriever.query
reports in its ``timings``: ``filter`` (compiling a filter; 0 when cached), ``vector_search``,
``keyword_search``, ``fusion`` (RRF) and ``entries`` (reading the page's rows); then
``image_read`` (the archive read) and ``thumbnail`` (decode + resize + encode).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

NAMESPACE = "imgindex"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# Retriever.query's timings -> our stage names ("embed" is the batcher's, timed per batch).
QUERY_STAGES = {
    "filter": "filter",
    "vector": "vector_search",
    "keyword": "keyword_search",
    "fusion": "fusion",
    "entries": "entries",
}


class ServiceMetrics:
    """The service's metrics; ``render`` gives the Prometheus text exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "http_requests", "HTTP requests by route and status", ["route", "status"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "http_request_duration_seconds", "HTTP request latency by route", ["route"],
            namespace=NAMESPACE, buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.stage = Histogram(
            "stage_duration_seconds", "Time in each stage of a request", ["stage"],
            namespace=NAMESPACE, buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "embed_batch_size", "Query texts per embedding call",
            namespace=NAMESPACE, buckets=_BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.cache = Counter(
            "cache_lookups", "Cache lookups by cache and result", ["cache", "result"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.reloads = Counter(
            "index_loads", "Index version loads by outcome", ["outcome"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.version = Gauge(
            "index_version_info", "The served index version (value 1)", ["version"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.entries = Gauge(
            "index_entries", "Entries in the served index version", namespace=NAMESPACE, registry=r
        )
        self.index_bytes = Gauge(
            "index_bytes", "Resident bytes of the served FAISS index", namespace=NAMESPACE,
            registry=r,
        )  # fmt: skip

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage=stage).observe(seconds)

    def observe_query_stages(self, timings: dict[str, float]) -> None:
        """The stages Retriever.query reported (see QUERY_STAGES)."""
        for name, seconds in timings.items():
            stage = QUERY_STAGES.get(name)
            if stage is not None:
                self.observe_stage(stage, seconds)

    def observe_batch(self, texts: int, seconds: float) -> None:
        self.batch_size.observe(texts)
        self.observe_stage("embed", seconds)

    def cache_lookup(self, cache: str, hit: bool) -> None:
        self.cache.labels(cache=cache, result="hit" if hit else "miss").inc()

    def served(self, version: str | None, count: int, index_bytes: int) -> None:
        """The version now served (replaces the previous one's info)."""
        self.version.clear()
        self.version.labels(version=version or "none").set(1)
        self.entries.set(count)
        self.index_bytes.set(index_bytes)

    def render(self) -> tuple[bytes, str]:
        """(exposition text, its Content-Type)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
