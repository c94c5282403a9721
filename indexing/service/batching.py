"""Query texts from concurrent requests -> (D,) query vectors: cached, else embedded in batches.

A request asks for one text's vector. A cached vector (LRU keyed by the text) returns at once;
otherwise the text joins a queue that one worker thread drains: it takes whatever arrived within
``window_s`` of the first waiting text (or ``max_batch`` texts, whichever comes first) and embeds
them in one call. While that call runs, new texts queue up for the next one, so under load the
batch grows by itself. When ``requests`` says no other request is in flight that could still
ask, the worker does not wait out the window (a lone query pays no batching delay). Identical
texts waiting at the same time are embedded once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

import numpy as np

logger = logging.getLogger(__name__)

# (batch size, seconds) of each embedding call, for metrics.
BatchHook = Callable[[int, float], None]
K = TypeVar("K")
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """A thread-safe LRU map of at most ``size`` items (0 keeps nothing)."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def items(self) -> list[tuple[K, V]]:
        """Oldest first."""
        with self._lock:
            return list(self._items.items())

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class QueryVectors:
    """text -> its (D,) float32 query vector, for one embedder (see the module docstring).

    Args:
        embed: (Q,) texts -> (Q, D) vectors; the index version's embedder.
        window_s: how long to wait for more texts after the first one waiting.
        max_batch: the most texts per embed call.
        cache_size: vectors kept (LRU).
        on_batch: called with (texts embedded, seconds) after every embed call.
        requests: how many requests are in flight now (each may still ask for a vector); None:
            always wait out the window.
        on_lookup: called with True (cache hit) or False (miss) on every get.
    """

    def __init__(
        self,
        embed: Callable[[list[str]], np.ndarray],
        *,
        window_s: float = 0.002,
        max_batch: int = 32,
        cache_size: int = 4096,
        on_batch: BatchHook | None = None,
        requests: Callable[[], int] | None = None,
        on_lookup: Callable[[bool], None] | None = None,
    ):
        self._embed = embed
        self._window_s = window_s
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._requests = requests
        self._on_lookup = on_lookup
        self.cache: LruCache[str, np.ndarray] = LruCache(cache_size)
        self._queue: list[str] = []
        self._waiting: dict[str, Future[np.ndarray]] = {}
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._closed = False
        self.hits = 0
        self.misses = 0
        self.embed_calls = 0

    def get(self, text: str) -> np.ndarray:
        """The vector of ``text``; blocks while its batch is embedded. An error of the embed call
        is raised here, in every request of that batch."""
        cached = self.cache.get(text)
        if self._on_lookup is not None:
            self._on_lookup(cached is not None)
        if cached is not None:
            with self._cond:
                self.hits += 1
            return cached
        with self._cond:
            if self._closed:
                raise RuntimeError("QueryVectors is closed")
            self.misses += 1
            future = self._waiting.get(text)
            if future is None:
                future = Future()
                self._waiting[text] = future
                self._queue.append(text)
                self._start_worker()
                self._cond.notify()
        return future.result()

    def adopt(self, other: QueryVectors) -> None:
        """Take over ``other``'s cached vectors (same embedder, so still valid)."""
        for text, vector in other.cache.items():
            self.cache.put(text, vector)

    def close(self) -> None:
        """Stop the worker once the queue is empty; later gets raise."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=10)

    def _start_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="query-embedder", daemon=True)
            self._worker.start()

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._embed_batch(batch)

    def _next_batch(self) -> list[str] | None:
        """Wait for a first text, then up to window_s (or max_batch texts) for more."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self._window_s
            while len(self._queue) < self._max_batch:
                left = deadline - time.monotonic()
                if left <= 0 or self._nobody_else():
                    break
                self._cond.wait(left)
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            return batch

    def _nobody_else(self) -> bool:
        """No request in flight besides those already queued: waiting would gain nothing."""
        return self._requests is not None and self._requests() <= len(self._queue)

    def _embed_batch(self, batch: list[str]) -> None:
        with self._cond:
            futures = [self._waiting.pop(text) for text in batch]
        started = time.perf_counter()
        try:
            vectors = np.asarray(self._embed(batch), dtype=np.float32)  # (Q,) -> (Q, D)
            if vectors.ndim != 2 or len(vectors) != len(batch):
                raise ValueError(f"embed gave shape {vectors.shape} for {len(batch)} texts")
        except BaseException as err:  # every waiting request gets the error, none hangs
            for future in futures:
                future.set_exception(err)
            if not isinstance(err, Exception):
                raise
            return
        seconds = time.perf_counter() - started
        self.embed_calls += 1
        if self._on_batch is not None:
            self._on_batch(len(batch), seconds)
        for text, vector, future in zip(batch, vectors, futures, strict=True):
            vector = vector.copy()  # (D,); not a view that keeps the whole batch alive
            vector.setflags(write=False)
            self.cache.put(text, vector)
            future.set_result(vector)
