"""`imgindex serve` flags -> ServiceConfig, the search service's validated settings."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from indexing.errors import IndexingError

# RFC 6750's b64token: what a bearer token (and our cookie value) may hold without quoting.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
MIN_THUMBNAIL = 16
MAX_THUMBNAIL = 1024


class ServiceConfigError(IndexingError):
    """A service setting that cannot work; the message says which and what to change."""


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """What the service serves and how.

    Attributes:
        path: a collection root (its CURRENT version is served and followed) or an index directory.
        token: when set, /api/* and /metrics need it (bearer header or the imgindex_token cookie).
        reload_interval_s: how often a collection's CURRENT is polled; 0 turns hot reload off.
        max_k: the largest page (k) a request may ask for.
        max_query_chars: the longest query text accepted.
        batch_window_ms: how long the embedding batcher waits for more queries after the first.
        batch_max: the most query texts embedded in one call.
        query_cache: query vectors kept (LRU, per embedder).
        response_cache: whole search/similar responses kept (LRU, keyed by version and params).
        thumbnail_cache_mb: JPEG thumbnails kept in memory (LRU by bytes).
    """

    path: str
    token: str | None = None
    reload_interval_s: float = 1.0
    max_k: int = 100
    max_query_chars: int = 1000
    batch_window_ms: float = 2.0
    batch_max: int = 32
    query_cache: int = 4096
    response_cache: int = 1024
    thumbnail_cache_mb: float = 64.0

    def __post_init__(self) -> None:
        if not str(self.path).strip():
            raise ServiceConfigError("serve needs a PATH: a collection root or an index directory")
        if self.token is not None and not _TOKEN_RE.match(self.token):
            raise ServiceConfigError(
                "--token must be non-empty and hold only letters, digits and -._~+/ "
                "(optionally ending in =): it travels in a header and a cookie unquoted"
            )
        self._check_range("reload_interval_s", 0, 3600)
        self._check_range("max_k", 1, 1000)
        self._check_range("max_query_chars", 1, 100_000)
        self._check_range("batch_window_ms", 0, 1000)
        self._check_range("batch_max", 1, 4096)
        self._check_range("query_cache", 0, 10_000_000)
        self._check_range("response_cache", 0, 10_000_000)
        self._check_range("thumbnail_cache_mb", 0, 1_000_000)

    def _check_range(self, name: str, low: float, high: float) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ServiceConfigError(f"ServiceConfig.{name} must be a number, got {value!r}")
        if not (math.isfinite(value) and low <= value <= high):
            raise ServiceConfigError(
                f"ServiceConfig.{name} must be between {low} and {high}, got {value}"
            )

    def to_json(self) -> str:
        """The config as JSON (how `serve --workers N` hands it to each worker process)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServiceConfig:
        try:
            doc: Any = json.loads(text)
        except ValueError as err:
            raise ServiceConfigError(f"the service config is not JSON: {err}") from err
        if not isinstance(doc, dict):
            raise ServiceConfigError("the service config must be a JSON object")
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(doc) - known):
            raise ServiceConfigError(f"unknown service settings: {', '.join(unknown)}")
        return cls(**doc)
