"""The HTTP contract over a real archive and index: search, paging, filters, similar, items,
images, thumbnails, readiness, metrics and the OpenAPI schema."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from captioning.archives.fetch import MemberReader
from indexing.retrieval import MODES, Retriever
from indexing.service.app import create_app
from indexing.service.config import ServiceConfig
from tests.indexing.service.conftest import (
    ServiceData,
    archive_rows,
    build_app,
    running,
    wait_until,
    write_index_dir,
)

HIT_FIELDS = {
    "rank", "score", "key", "caption", "source", "member", "url", "width", "height", "model",
    "model_version", "captioned_at", "thumbnail_url", "image_url", "vector_rank", "vector_score",
    "keyword_rank", "keyword_score",
}  # fmt: skip
PAGE_FIELDS = {"version", "took_ms", "query", "mode", "k", "offset", "hits"}
ITEM_FIELDS = {
    "key", "caption", "source", "member", "url", "alt_text", "metadata", "width", "height",
    "sha256", "model", "model_version", "captioned_at", "image_url", "thumbnail_url",
}  # fmt: skip


@pytest.fixture(scope="module")
def client(
    service_data: ServiceData, open_retriever: Callable[[str], Retriever]
) -> Iterator[TestClient]:
    with running(build_app(service_data, open_retriever)) as client:
        yield client


def rows_by_key(data: ServiceData) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in data.rows}


def search(client: TestClient, **params: Any) -> dict[str, Any]:
    response = client.get("/api/search", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["x-index-version"] == (response.json()["version"] or "none")
    return response.json()


def test_a_search_page_has_the_contract_shape_and_the_entries_data(client, service_data) -> None:
    page = search(client, q=service_data.word, k=5)
    assert set(page) == PAGE_FIELDS
    assert page["version"] == "v000001" and page["mode"] == "hybrid"
    assert (page["query"], page["k"], page["offset"]) == (service_data.word, 5, 0)
    assert isinstance(page["took_ms"], float) and page["took_ms"] >= 0
    assert [hit["rank"] for hit in page["hits"]] == [1, 2, 3, 4, 5]
    rows = rows_by_key(service_data)
    for hit in page["hits"]:
        assert set(hit) == HIT_FIELDS
        row = rows[hit["key"]]
        for name in ("caption", "source", "member", "url", "width", "height", "model"):
            assert hit[name] == row[name], name
        assert hit["model_version"] == row["model_version"]
        assert hit["thumbnail_url"] == f"/api/thumbnails/{quote(hit['key'], safe='')}?size=256"
        assert hit["image_url"] == f"/api/images/{quote(hit['key'], safe='')}"
    scores = [hit["score"] for hit in page["hits"]]
    assert scores == sorted(scores, reverse=True)


def test_each_mode_ranks_with_its_own_side(client, service_data) -> None:
    word = service_data.word
    keyword = search(client, q=word, k=10, mode="keyword")["hits"]
    assert keyword and all(word in hit["caption"].lower() for hit in keyword)
    assert all(hit["keyword_rank"] is not None and hit["vector_rank"] is None for hit in keyword)
    vector = search(client, q=word, k=10, mode="vector")["hits"]
    assert len(vector) == 10
    assert all(hit["vector_rank"] is not None and hit["keyword_rank"] is None for hit in vector)
    hybrid = search(client, q=word, k=10, mode="hybrid")["hits"]
    assert any(h["vector_rank"] is not None and h["keyword_rank"] is not None for h in hybrid)
    assert set(MODES) == {"hybrid", "vector", "keyword"}


@pytest.mark.parametrize("mode", MODES)
def test_pages_are_cut_from_one_stable_ranking(client, service_data, mode: str) -> None:
    whole = search(client, q=service_data.word, k=12, mode=mode)["hits"]
    first = search(client, q=service_data.word, k=6, mode=mode)["hits"]
    second = search(client, q=service_data.word, k=6, offset=6, mode=mode)["hits"]
    assert [h["key"] for h in first + second] == [h["key"] for h in whole]
    assert [h["rank"] for h in second] == list(range(7, 7 + len(second)))


def test_filters_are_applied_inside_the_search(client, service_data) -> None:
    widths = sorted(row["width"] for row in service_data.rows)
    cut = widths[len(widths) * 3 // 4]  # about a quarter pass
    wanted = {row["key"] for row in service_data.rows if row["width"] >= cut}
    hits = search(client, q=service_data.word, k=100, mode="vector", min_width=cut)["hits"]
    assert {hit["key"] for hit in hits} == wanted  # all of them, not a post-filtered top k

    shard = service_data.rows[0]["source"].rsplit("/", 1)[-1]
    by_source = search(client, q=service_data.word, k=100, source=f"*{shard}")["hits"]
    assert by_source and all(hit["source"].endswith(shard) for hit in by_source)
    assert len(by_source) == sum(row["source"].endswith(shard) for row in service_data.rows)

    after = sorted(row["captioned_at"] for row in service_data.rows)[len(service_data.rows) // 2]
    later = search(client, q=service_data.word, k=100, mode="vector", captioned_after=after)
    assert {hit["key"] for hit in later["hits"]} == {
        row["key"] for row in service_data.rows if row["captioned_at"] > after
    }
    assert search(client, q=service_data.word, model="another-model")["hits"] == []
    assert len(search(client, q=service_data.word, k=7, model_version="synthetic-1")["hits"]) == 7


def test_similar_leaves_the_item_out(client, service_data) -> None:
    page = client.get(f"/api/similar/{quote(service_data.key, safe='')}", params={"k": 5}).json()
    assert set(page) == PAGE_FIELDS
    assert (page["mode"], page["query"], page["version"]) == (
        "similar",
        service_data.key,
        "v000001",
    )
    assert len(page["hits"]) == 5 and service_data.key not in {h["key"] for h in page["hits"]}
    assert all(set(hit) == HIT_FIELDS for hit in page["hits"])


def test_an_item_has_its_metadata(client, service_data) -> None:
    response = client.get(f"/api/items/{quote(service_data.key, safe='')}")
    assert response.status_code == 200
    body = response.json()
    assert body["version"] == response.headers["x-index-version"] == "v000001"
    item = body["item"]
    assert set(item) == ITEM_FIELDS
    row = rows_by_key(service_data)[service_data.key]
    for name in ("caption", "source", "member", "url", "alt_text", "width", "height", "sha256"):
        assert item[name] == row[name], name
    assert item["metadata"] == {"origin": "synthetic"}


def test_unknown_keys_are_404_json(client) -> None:
    for path in (
        "/api/items/no-such-key",
        "/api/similar/no-such-key",
        "/api/images/no-such-key",
        "/api/thumbnails/no-such-key?size=64",
        "/api/images/..%2F..%2Fetc%2Fpasswd",  # a key is looked up, never joined into a path
        "/api/items/%2Fetc%2Fpasswd",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "key" in response.json()["error"]
        assert response.headers["x-index-version"] == "v000001"


def test_an_image_is_the_original_bytes_with_its_type(client, service_data) -> None:
    row = rows_by_key(service_data)[service_data.key]
    response = client.get(f"/api/images/{quote(service_data.key, safe='')}")
    assert response.status_code == 200
    assert response.content == MemberReader().read(row["source"], row["member"])
    expected = Image.open(io.BytesIO(response.content)).get_format_mimetype()
    assert response.headers["content-type"] == expected
    assert response.headers["etag"] == f'"{row["sha256"]}"'
    again = client.get(response.url, headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and not again.content


def test_thumbnails_are_jpegs_with_an_etag_and_cached(service_data, open_retriever) -> None:
    reads: list[tuple[str, str]] = []
    reader = MemberReader()

    def read_image(source: str, member: str) -> bytes:
        reads.append((source, member))
        return reader.read(source, member)

    config = ServiceConfig(path=str(service_data.collection))
    app = create_app(config, read_image=read_image, open_retriever=open_retriever)
    row = rows_by_key(service_data)[service_data.key]
    url = f"/api/thumbnails/{quote(service_data.key, safe='')}"
    with running(app) as client:
        response = client.get(url, params={"size": 64})
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"
        assert response.headers["etag"] == f'"{row["sha256"]}-64"'
        thumb = Image.open(io.BytesIO(response.content))
        assert thumb.format == "JPEG" and max(thumb.size) == 64
        assert client.get(url, params={"size": 64}).content == response.content
        assert len(reads) == 1  # the second came from the cache
        either = '"x", ' + response.headers["etag"]
        not_modified = client.get(url, params={"size": 64}, headers={"If-None-Match": either})
        assert not_modified.status_code == 304
        assert client.get(url).headers["etag"] == f'"{row["sha256"]}-256"'  # the default size


def test_a_vanished_archive_file_is_a_404_for_its_images(
    tmp_path: Path, service_data, tiny_embedder, open_retriever
) -> None:
    import shutil

    archive = Path(shutil.copytree(service_data.archive, tmp_path / "archive"))
    rows = archive_rows(archive)
    assert [row["key"] for row in rows] == service_data.keys  # same order: same vectors
    write_index_dir(tmp_path / "index", rows, service_data.vectors, tiny_embedder)
    gone = Path(rows[0]["source"].removeprefix("file://"))
    app = build_app(service_data, open_retriever, tmp_path / "index")
    with running(app) as client:
        key = quote(rows[0]["key"], safe="")
        assert client.get(f"/api/images/{key}").status_code == 200
        gone.unlink()
        for path in (f"/api/images/{key}", f"/api/thumbnails/{key}?size=32"):
            response = client.get(path)
            assert response.status_code == 404
            assert "gone" in response.json()["error"]
        assert client.get(f"/api/items/{key}").status_code == 200  # the metadata is still there


def test_keys_with_slashes_and_odd_characters_round_trip(
    tmp_path: Path, service_data, tiny_embedder, open_retriever
) -> None:
    odd = ["sub dir/ä b#1?.jpg", "a/b/c", "100%", "x+y&z=w"]
    rows = [dict(row, key=key) for row, key in zip(service_data.rows, odd, strict=False)]
    write_index_dir(tmp_path / "index", rows, service_data.vectors[: len(rows)], tiny_embedder)
    app = build_app(service_data, open_retriever, tmp_path / "index")
    with running(app) as client:
        page = search(client, q="anything", k=len(odd), mode="vector")
        assert page["version"] is None  # a bare index directory has no version name
        assert {hit["key"] for hit in page["hits"]} == set(odd)
        for hit in page["hits"]:
            item = client.get(hit["image_url"].replace("/images/", "/items/"))
            assert item.json()["item"]["key"] == hit["key"]
            assert client.get(hit["thumbnail_url"]).status_code == 200


def test_ready_only_once_a_version_is_loaded(service_data, open_retriever) -> None:
    release = threading.Event()

    def slow_open(path: str) -> Retriever:
        assert release.wait(30)
        return open_retriever(path)

    app = create_app(ServiceConfig(path=str(service_data.collection)), open_retriever=slow_open)
    with TestClient(app) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert client.get("/healthz").json() == {"status": "ok", "version": None}
        not_yet = client.get("/api/search", params={"q": "x"})
        assert not_yet.status_code == 503 and "error" in not_yet.json()
        assert not_yet.headers["x-index-version"] == "none"
        release.set()
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "the index loads")
        ready_body = client.get("/readyz").json()
        assert ready_body == {"ready": True, "version": "v000001", "count": len(service_data.rows)}
        assert client.get("/healthz").json() == {"status": "ok", "version": "v000001"}


class CountingRetriever:
    """A Retriever that records its embed calls (everything else is the real one's)."""

    def __init__(self, inner: Retriever, calls: list[list[str]]):
        self._inner = inner
        self.calls = calls

    def embed(self, texts: list[str]) -> Any:
        self.calls.append(list(texts))
        return self._inner.embed(texts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_concurrent_queries_share_embed_calls_and_repeats_need_none(
    service_data, open_retriever
) -> None:
    calls: list[list[str]] = []
    config = ServiceConfig(path=str(service_data.collection), response_cache=0, batch_window_ms=20)
    app = create_app(config, open_retriever=lambda p: CountingRetriever(open_retriever(p), calls))  # type: ignore[arg-type,return-value]
    texts = [f"{service_data.word} number {i}" for i in range(16)]
    with running(app) as client:
        calls.clear()  # the warm-up query
        barrier = threading.Barrier(len(texts))

        def ask(text: str) -> int:
            barrier.wait()
            return client.get("/api/search", params={"q": text, "k": 3}).status_code

        with ThreadPoolExecutor(len(texts)) as pool:
            assert set(pool.map(ask, texts)) == {200}
        assert len(calls) < len(texts)
        assert sorted(t for call in calls for t in call) == sorted(texts)
        before = len(calls)
        for text in texts[:4]:  # repeats, and another page of the same query: no embedding
            assert client.get("/api/search", params={"q": text, "k": 3}).status_code == 200
            assert (
                client.get("/api/search", params={"q": text, "k": 3, "offset": 3}).status_code
                == 200
            )
        assert client.get("/api/search", params={"q": "zzz", "mode": "keyword"}).status_code == 200
        assert len(calls) == before


def test_metrics_count_requests_stages_and_the_served_version(client, service_data) -> None:
    search(client, q=service_data.word, k=3)
    client.get("/api/items/no-such-key")
    text = client.get("/metrics").text
    assert 'imgindex_http_requests_total{route="/api/search",status="200"}' in text
    assert 'imgindex_http_requests_total{route="/api/items/{key:path}",status="404"}' in text
    assert 'imgindex_http_request_duration_seconds_bucket{le="0.01",route="/api/search"}' in text
    for stage in ("embed", "search", "vector_search", "keyword_search", "fusion"):
        assert f'imgindex_stage_duration_seconds_count{{stage="{stage}"}}' in text
    assert 'imgindex_index_version_info{version="v000001"} 1.0' in text
    assert f"imgindex_index_entries {float(len(service_data.rows))}" in text
    assert "imgindex_index_bytes " in text
    assert "imgindex_embed_batch_size_count" in text


def test_the_openapi_schema_documents_the_contract(client) -> None:
    schema = client.get("/openapi.json").json()
    for path in ("/api/search", "/api/similar/{key}", "/api/items/{key}", "/api/images/{key}",
                 "/api/thumbnails/{key}", "/healthz", "/readyz", "/metrics"):  # fmt: skip
        assert path in schema["paths"], path
    hit = schema["components"]["schemas"]["Hit"]["properties"]
    assert set(hit) == HIT_FIELDS
    assert client.get("/docs").status_code == 200
