"""Hot reload: a swap under load loses no request; a bad version keeps the old one serving;
requests in flight finish on the version they started on."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from indexing.collection import INDEX_DIR, VERSIONS_DIR, Collection
from indexing.service.config import ServiceConfig
from indexing.service.metrics import ServiceMetrics
from indexing.service.state import Generation, IndexHolder
from tests.indexing.service.conftest import publish_version, running, wait_until
from tests.indexing.service.test_app import CountingRetriever

CLIENTS = 4


def test_a_swap_under_load_loses_no_request(
    fresh_collection: Path, make_app, service_data, tiny_embedder
) -> None:
    app = make_app(fresh_collection, reload_interval_s=0.05, response_cache=0)
    rows, vectors = list(service_data.rows), service_data.vectors
    seen: list[list[tuple[int, Any, Any]]] = [[] for _ in range(CLIENTS)]
    stop = threading.Event()
    with running(app, raise_server_exceptions=False) as client:

        def hammer(n: int) -> None:
            i = 0
            while not stop.is_set():
                params = {"q": f"{service_data.word} {n} {i % 7}", "k": 5, "mode": "hybrid"}
                response = client.get("/api/search", params=params)
                body = response.json() if response.status_code == 200 else {}
                seen[n].append(
                    (
                        response.status_code,
                        body.get("version"),
                        response.headers.get("x-index-version"),
                    )  # fmt: skip
                )
                i += 1

        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: all(len(s) >= 3 for s in seen), 60, "every client has answers")
            publish_version(fresh_collection, rows[:-4], vectors[:-4], tiny_embedder)
            wait_until(
                lambda: all(s and s[-1][1] == "v000002" for s in seen), 60, "v000002 is served"
            )
            marks = [len(s) for s in seen]
            wait_until(
                lambda: all(len(s) >= m + 3 for s, m in zip(seen, marks, strict=True)), 60, "more"
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        assert client.get("/readyz").json()["count"] == len(rows) - 4
    for answers in seen:
        assert {status for status, _, _ in answers} == {200}
        assert all(version == header for _, version, header in answers)
        versions = [version for _, version, _ in answers]
        switch = versions.index("v000002")
        assert switch > 0 and set(versions[:switch]) == {"v000001"}
        assert set(versions[switch:]) == {"v000002"}  # never back to the old one


def test_rollback_is_followed_and_a_bad_version_keeps_the_old_one(
    fresh_collection: Path, make_app, service_data, tiny_embedder
) -> None:
    app = make_app(fresh_collection, reload_interval_s=0)  # polled by hand below
    reloader = app.state.service.reloader
    rows, vectors = list(service_data.rows), service_data.vectors
    query = {"q": service_data.word, "k": 3}
    with running(app) as client:
        assert client.get("/api/search", params=query).json()["version"] == "v000001"
        assert reloader.poll() is False  # nothing moved

        col = Collection.open(str(fresh_collection))
        publish_version(fresh_collection, rows, vectors, tiny_embedder)  # v000002, then broken:
        index_file = Path(col.join(VERSIONS_DIR, "v000002", INDEX_DIR, "index.faiss"))
        index_file.write_bytes(b"not a faiss index")
        assert reloader.poll() is False
        assert client.get("/api/search", params=query).json()["version"] == "v000001"
        assert reloader.poll() is False  # a failed version is not retried every poll
        metrics = client.get("/metrics").text
        assert 'imgindex_index_loads_total{outcome="failed"} 1.0' in metrics

        (fresh_collection / "CURRENT").write_text("{not json")  # a corrupt pointer: keep serving
        assert reloader.poll() is False
        assert client.get("/api/search", params=query).status_code == 200

        publish_version(fresh_collection, rows[:-1], vectors[:-1], tiny_embedder)  # v000003
        assert reloader.poll() is True
        assert client.get("/readyz").json() == {
            "ready": True, "version": "v000003", "count": len(rows) - 1,
        }  # fmt: skip
        col.rollback("v000001")
        assert reloader.poll() is True
        response = client.get("/api/search", params=query)
        assert response.json()["version"] == response.headers["x-index-version"] == "v000001"
        assert 'imgindex_index_version_info{version="v000001"} 1.0' in client.get("/metrics").text


def test_a_new_version_with_the_same_embedder_keeps_the_query_cache(
    fresh_collection: Path, service_data, open_retriever, tiny_embedder
) -> None:
    from indexing.service.app import create_app

    calls: list[list[str]] = []
    config = ServiceConfig(path=str(fresh_collection), reload_interval_s=0, response_cache=0)
    app = create_app(config, open_retriever=lambda p: CountingRetriever(open_retriever(p), calls))  # type: ignore[arg-type,return-value]
    with running(app) as client:
        assert client.get("/api/search", params={"q": "two blue stars"}).status_code == 200
        rows, vectors = list(service_data.rows), service_data.vectors
        publish_version(fresh_collection, rows, vectors, tiny_embedder)
        assert app.state.service.reloader.poll() is True
        calls.clear()
        response = client.get("/api/search", params={"q": "two blue stars"})
        assert response.json()["version"] == "v000002"
        assert calls == []  # the vector came from the adopted cache


def test_a_bare_index_directory_is_served_without_polling(make_app, service_data) -> None:
    app = make_app(service_data.index_dir)
    with running(app) as client:
        response = client.get("/api/search", params={"q": service_data.word})
        assert response.json()["version"] is None
        assert response.headers["x-index-version"] == "none"
        assert app.state.service.reloader.poll() is False
        assert not app.state.service.reloader.follows_collection


def _stub_generation(version: str) -> Generation:
    retriever = SimpleNamespace(
        version=version,
        count=1,
        index_bytes=0,
        embed=lambda texts: np.ones((len(texts), 4), np.float32),
    )
    return Generation(retriever, ServiceConfig(path="x"), ServiceMetrics())  # type: ignore[arg-type]


def test_requests_in_flight_finish_on_their_version_which_then_drains() -> None:
    holder = IndexHolder()
    old, new = _stub_generation("v1"), _stub_generation("v2")
    holder.swap(old)
    with holder.pin() as pinned:
        assert holder.swap(new) is old
        assert pinned is old and holder.current is new
        assert pinned.vectors.get("still works").shape == (4,)  # not closed while pinned
        with holder.pin() as later:
            assert later is new
    started = time.monotonic()
    while old.vectors._worker is not None and old.vectors._worker.is_alive():
        assert time.monotonic() - started < 10, "the old version's batcher did not stop"
        time.sleep(0.01)
    try:
        old.vectors.get("after drain")
    except RuntimeError as err:
        assert "closed" in str(err)
    else:
        raise AssertionError("a drained version still embedded")
    assert new.vectors.get("fine").shape == (4,)
