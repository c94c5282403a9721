"""A collection root or index directory -> the loaded index version that requests pin; hot reload.

A Generation is one loaded index version (a Retriever, its query-vector batcher and its response
cache). The IndexHolder keeps the current one; a request pins the generation it started on and
releases it when done, so a swap never pulls an index from under a request. The Reloader polls
a collection's CURRENT; when it moves it opens the new version, warms it with one query, then
swaps it in; the old generation stops its batcher once its last request is done. A version that
fails to load is logged and the old one keeps serving; it is not retried until CURRENT moves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexing.collection import Collection, is_collection
from indexing.errors import IndexingError
from indexing.retrieval import Retriever
from indexing.search import REQUIRED_FILES
from indexing.service.batching import LruCache, QueryVectors
from indexing.service.config import ServiceConfig, ServiceConfigError
from indexing.service.errors import NotReady
from indexing.service.images import ThumbnailCache
from indexing.service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

WARM_QUERY = "a small red circle"
OpenRetriever = Callable[[str], Retriever]
# (source, member) -> the image's bytes; FileNotFoundError when it is gone.
ReadImage = Callable[[str, str], bytes]


def check_path(path: str) -> str:
    """What ``path`` is, "collection" or "index", checked cheaply before a server starts.

    Raises:
        ServiceConfigError (or CollectionError): neither a collection with a published version
            nor an index directory.
    """
    if is_collection(path):
        if Collection.open(path).current() is None:
            raise ServiceConfigError(
                f"collection {path} has no published version yet: run `imgindex update` first"
            )
        return "collection"
    root = Path(path)
    if not root.exists():
        raise ServiceConfigError(f"{path} does not exist: give a collection root or an index dir")
    if not root.is_dir():
        raise ServiceConfigError(f"{path} is a file: give a collection root or an index directory")
    if missing := [name for name in REQUIRED_FILES if not (root / name).is_file()]:
        raise ServiceConfigError(
            f"{path} is neither a collection root (no collection.json) nor an index directory "
            f"(no {', '.join(missing)})"
        )
    return "index"


class Generation:
    """One loaded index version and what is kept per version."""

    def __init__(self, retriever: Retriever, config: ServiceConfig, metrics: ServiceMetrics):
        self.retriever = retriever
        self.version: str | None = retriever.version
        self.count = retriever.count
        self.index_bytes = retriever.index_bytes
        self.vectors = QueryVectors(
            retriever.embed,
            window_s=config.batch_window_ms / 1000,
            max_batch=config.batch_max,
            cache_size=config.query_cache,
            on_batch=metrics.observe_batch,
            requests=lambda: self._users,
            on_lookup=lambda hit: metrics.cache_lookup("query_vector", hit),
        )
        self.responses: LruCache[tuple[Any, ...], dict[str, Any]] = LruCache(config.response_cache)
        self._users = 0
        self._retired = False
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self._users += 1

    def leave(self) -> None:
        with self._lock:
            self._users -= 1
            done = self._retired and self._users == 0
        if done:
            self._close()

    def retire(self) -> None:
        """No new requests come; close once the last one leaves."""
        with self._lock:
            self._retired = True
            done = self._users == 0
        if done:
            self._close()

    def _close(self) -> None:
        logger.info("index version %s drained", self.version)
        self.vectors.close()


class IndexHolder:
    """The current Generation; ``pin`` hands it to one request."""

    def __init__(self) -> None:
        self._current: Generation | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> Generation | None:
        return self._current

    @contextmanager
    def pin(self) -> Iterator[Generation]:
        """The current generation, kept open until the block ends. Raises NotReady before the
        first load."""
        with self._lock:
            generation = self._current
            if generation is None:
                raise NotReady()
            generation.enter()
        try:
            yield generation
        finally:
            generation.leave()

    def close(self) -> None:
        """Serve nothing any more; the current generation drains."""
        with self._lock:
            old, self._current = self._current, None
        if old is not None:
            old.retire()

    def swap(self, new: Generation) -> Generation | None:
        """Make ``new`` current; the old one retires (drains) and is returned."""
        with self._lock:
            old, self._current = self._current, new
        if old is not None:
            old.retire()
        return old


class Reloader:
    """Loads the served version and, for a collection, follows its CURRENT (a polling thread)."""

    def __init__(
        self,
        config: ServiceConfig,
        holder: IndexHolder,
        metrics: ServiceMetrics,
        open_retriever: OpenRetriever | None = None,
    ):
        self.config = config
        self.holder = holder
        self.metrics = metrics
        self._open = open_retriever or Retriever.open
        self._collection = is_collection(config.path)
        self._failed: str | None = None  # a version that failed to load: not retried
        self._pointer_problem: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._load_lock = threading.Lock()

    @property
    def follows_collection(self) -> bool:
        return self._collection

    def start(self) -> None:
        """Load in the background, then poll (collections only) every reload_interval_s."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="index-reloader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        self.poll()
        interval = self.config.reload_interval_s
        if not self._collection or interval <= 0:
            return
        while not self._stop.wait(interval):
            self.poll()

    def poll(self) -> bool:
        """Load the version to serve if it is not the one served; True when one was swapped in."""
        with self._load_lock:
            target = self._target()
            current = self.holder.current
            if target is None or target == self._failed:
                return False
            if current is not None and (not self._collection or current.version == target):
                return False
            return self._load(target, current)

    def _target(self) -> str | None:
        """The version to serve: CURRENT's name (None when unreadable); "" for an index dir."""
        if not self._collection:
            return ""
        try:
            name = Collection.open(self.config.path).current()
        except (IndexingError, OSError) as err:
            if str(err) != self._pointer_problem:  # say it once, not every poll
                logger.error("cannot read the current version, keeping the served one: %s", err)
                self._pointer_problem = str(err)
            return None
        self._pointer_problem = None
        return name

    def _load(self, target: str, current: Generation | None) -> bool:
        logger.info("loading index version %s from %s", target or "(index)", self.config.path)
        try:
            generation = self._open_generation(current)
        except Exception as err:  # noqa: BLE001 - any failure keeps the old version serving
            self._failed = target
            self.metrics.reloads.labels(outcome="failed").inc()
            log = logger.error if isinstance(err, IndexingError | OSError) else logger.exception
            served = current.version if current else "nothing"
            log("%s failed to load; still serving %s: %s", target or self.config.path, served, err)
            return False
        self._failed = None
        self.holder.swap(generation)
        self.metrics.reloads.labels(outcome="loaded").inc()
        self.metrics.served(generation.version, generation.count, generation.index_bytes)
        logger.info("serving index version %s (%d entries)", generation.version, generation.count)
        return True

    def _open_generation(self, previous: Generation | None) -> Generation:
        """Open, then warm with one query (embedder, vector and keyword sides)."""
        generation = Generation(self._open(self.config.path), self.config, self.metrics)
        try:
            vector = generation.vectors.get(WARM_QUERY)  # (D,)
            generation.retriever.query(WARM_QUERY, k=1, mode="hybrid", vector=vector)
            if previous is not None and _same_vector(previous.vectors.get(WARM_QUERY), vector):
                generation.vectors.adopt(previous.vectors)  # same embedder: its cache holds
        except BaseException:
            generation.vectors.close()
            raise
        return generation


def _same_vector(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=1e-6))


@dataclass(slots=True)
class Service:
    """Everything the routes use, on ``app.state.service``."""

    config: ServiceConfig
    holder: IndexHolder
    metrics: ServiceMetrics
    reloader: Reloader
    thumbnails: ThumbnailCache
    read_image: ReadImage | None
