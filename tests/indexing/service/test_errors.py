"""Bad requests: 4xx JSON {"error": ...}, never 422 or 500. The token guards /api and /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from indexing.retrieval import WINDOW, Retriever
from tests.indexing.service.conftest import PAGE_TOKEN, ServiceData, build_app, running


@pytest.fixture(scope="module")
def client(
    service_data: ServiceData, open_retriever: Callable[[str], Retriever]
) -> Iterator[TestClient]:
    app = build_app(service_data, open_retriever)
    with running(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def guarded(
    service_data: ServiceData, open_retriever: Callable[[str], Retriever]
) -> Iterator[TestClient]:
    app = build_app(service_data, open_retriever, token=PAGE_TOKEN)
    with running(app, raise_server_exceptions=False) as client:
        yield client


BAD_SEARCHES = [
    ("", "q"),  # q missing
    ("q=", "empty query"),
    ("q=%20%09%0A", "empty query"),
    ("q=" + "x" * 1001, "too long"),
    ("q=a&k=0", "k must be"),
    ("q=a&k=-3", "k must be"),
    ("q=a&k=101", "k must be"),
    ("q=a&k=99999999999999999999999", "k must be"),
    ("q=a&k=ten", "k"),
    ("q=a&k=1.5", "k"),
    ("q=a&offset=-1", "offset"),
    ("q=a&offset=x", "offset"),
    (f"q=a&offset={WINDOW - 5}&k=10", "offset + k"),
    ("q=a&mode=fuzzy", "unknown mode"),
    ("q=a&min_width=wide", "min_width"),
    ("q=a&min_width=-1", "width"),
    ("q=a&min_width=50&max_width=10", "width"),
    ("q=a&captioned_after=yesterday", "captioned_after"),
    ("q=a&source=" + "*" * 1001, "source too long"),
    ("q=%FF%FE", "UTF-8"),
    ("q=a&source=%C3%28", "UTF-8"),
]


@pytest.mark.parametrize(("query", "message"), BAD_SEARCHES)
def test_bad_search_parameters_are_400_json(client, query: str, message: str) -> None:
    response = client.get(f"/api/search?{query}")
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error"} and message.lower() in body["error"].lower()
    assert "\n" not in body["error"]
    assert response.headers["x-index-version"] == "v000001"


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/api/similar/x?k=0", 400, "k must be"),
        ("/api/similar/x?offset=-2", 400, "offset"),
        ("/api/thumbnails/x?size=8", 400, "size"),
        ("/api/thumbnails/x?size=2000", 400, "size"),
        ("/api/thumbnails/x?size=big", 400, "size"),
        ("/api/items/%FF", 400, "UTF-8"),
        ("/api/nothing-here", 404, "not found"),
        ("/nothing-here", 404, "not found"),
    ],
)
def test_other_bad_requests_are_4xx_json(client, path: str, status: int, message: str) -> None:
    response = client.get(path)
    assert response.status_code == status, response.text
    assert message.lower() in response.json()["error"].lower()


def test_a_wrong_method_is_405_json(client) -> None:
    response = client.post("/api/search?q=a")
    assert response.status_code == 405 and "error" in response.json()


def test_the_token_guards_the_api_and_metrics(guarded, service_data) -> None:
    paths = ["/api/search?q=a", f"/api/items/{service_data.key}", "/metrics"]
    for path in paths:
        missing = guarded.get(path)
        assert missing.status_code == 401, path
        assert "token" in missing.json()["error"]
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert guarded.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert (
            guarded.get(path, headers={"Authorization": f"Basic {PAGE_TOKEN}"}).status_code == 401
        )
        ok = guarded.get(path, headers={"Authorization": f"Bearer {PAGE_TOKEN}"})
        assert ok.status_code == 200, path
        guarded.cookies.set("imgindex_token", PAGE_TOKEN)
        assert guarded.get(path).status_code == 200, path
        guarded.cookies.set("imgindex_token", PAGE_TOKEN + "x")
        assert guarded.get(path).status_code == 401, path
        guarded.cookies.clear()


def test_a_bad_token_is_refused_before_the_parameters_are_read(guarded) -> None:
    response = guarded.get("/api/search?k=zero")
    assert response.status_code == 401


def test_health_readiness_docs_and_the_page_stay_open(guarded) -> None:
    for path in ("/healthz", "/readyz", "/docs", "/openapi.json"):
        assert guarded.get(path).status_code == 200, path
    page = guarded.get("/")
    assert page.status_code in (200, 404)  # 404 only while the page is not installed
    if page.status_code == 200:
        assert page.headers["content-type"].startswith("text/html")
