"""QueryVectors: concurrent texts -> fewer embed calls; repeated texts -> none; errors reach all."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from indexing.service.batching import LruCache, QueryVectors

D = 8


class SlowEmbedder:
    """Deterministic text -> unit vector; each call takes `delay_s` and is recorded."""

    def __init__(self, delay_s: float = 0.01):
        self.delay_s = delay_s
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()

    def vector(self, text: str) -> np.ndarray:
        rng = np.random.default_rng(abs(hash(text)) % 2**32)
        v = rng.standard_normal(D).astype(np.float32)  # (D,)
        return v / np.linalg.norm(v)

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            self.calls.append(list(texts))
        time.sleep(self.delay_s)
        return np.stack([self.vector(t) for t in texts])  # (Q, D)


def test_concurrent_distinct_texts_share_embed_calls_and_get_their_own_vectors() -> None:
    embed = SlowEmbedder(delay_s=0.02)
    vectors = QueryVectors(embed, window_s=0.005, max_batch=32)
    texts = [f"query number {i}" for i in range(24)]
    barrier = threading.Barrier(len(texts))

    def ask(text: str) -> np.ndarray:
        barrier.wait()
        return vectors.get(text)

    with ThreadPoolExecutor(len(texts)) as pool:
        got = list(pool.map(ask, texts))
    vectors.close()
    assert len(embed.calls) < len(texts)
    assert sorted(t for call in embed.calls for t in call) == sorted(texts)  # each text once
    for text, vector in zip(texts, got, strict=True):
        np.testing.assert_allclose(vector, embed.vector(text), rtol=1e-6)


def test_a_repeated_text_is_not_embedded_again() -> None:
    embed = SlowEmbedder(delay_s=0)
    vectors = QueryVectors(embed, window_s=0.001)
    first = vectors.get("two green triangles")
    again = vectors.get("two green triangles")
    vectors.close()
    assert len(embed.calls) == 1 and vectors.hits == 1 and vectors.misses == 1
    np.testing.assert_array_equal(first, again)
    assert not again.flags.writeable  # a cached vector cannot be changed by a caller


def test_identical_texts_waiting_together_are_embedded_once() -> None:
    embed = SlowEmbedder(delay_s=0.05)
    vectors = QueryVectors(embed, window_s=0.01)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(vectors.get, ["same"] * 8))
    vectors.close()
    assert [t for call in embed.calls for t in call] == ["same"]


def test_a_batch_never_exceeds_max_batch() -> None:
    embed = SlowEmbedder(delay_s=0.02)
    vectors = QueryVectors(embed, window_s=0.05, max_batch=4)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(vectors.get, [f"t{i}" for i in range(16)]))
    vectors.close()
    assert max(len(call) for call in embed.calls) <= 4
    assert sum(len(call) for call in embed.calls) == 16


def test_an_embed_error_reaches_every_waiting_request_and_the_next_batch_works() -> None:
    fail = threading.Event()
    fail.set()

    def embed(texts: list[str]) -> np.ndarray:
        if fail.is_set():
            raise RuntimeError("embedder broke")
        return np.ones((len(texts), D), np.float32)

    vectors = QueryVectors(embed, window_s=0.01)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(vectors.get, f"t{i}") for i in range(4)]
        for future in futures:
            with pytest.raises(RuntimeError, match="embedder broke"):
                future.result(timeout=10)
    fail.clear()
    assert vectors.get("t0").shape == (D,)  # not cached as a failure
    vectors.close()


def test_a_wrongly_shaped_embedding_is_an_error_not_a_hang() -> None:
    vectors = QueryVectors(lambda texts: np.ones((1, 2, 3)), window_s=0)
    with pytest.raises(ValueError, match="shape"):
        vectors.get("x")
    vectors.close()


def test_adopt_copies_another_caches_vectors() -> None:
    embed = SlowEmbedder(delay_s=0)
    old = QueryVectors(embed, window_s=0)
    old.get("a")
    new = QueryVectors(embed, window_s=0)
    new.adopt(old)
    new.get("a")
    assert len(embed.calls) == 1
    old.close()
    new.close()
    with pytest.raises(RuntimeError, match="closed"):
        new.get("b")


def test_lru_cache_drops_the_least_recently_used() -> None:
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    nothing: LruCache[str, int] = LruCache(0)
    nothing.put("a", 1)
    assert nothing.get("a") is None and len(nothing) == 0


def test_a_lone_request_does_not_wait_out_the_window() -> None:
    embed = SlowEmbedder(delay_s=0)
    alone = QueryVectors(embed, window_s=2.0, requests=lambda: 1)
    started = time.monotonic()
    alone.get("only me")
    assert time.monotonic() - started < 1.0
    alone.close()
    others = QueryVectors(embed, window_s=0.2, requests=lambda: 3)  # two more may still ask
    started = time.monotonic()
    others.get("not alone")
    assert time.monotonic() - started >= 0.15
    others.close()
