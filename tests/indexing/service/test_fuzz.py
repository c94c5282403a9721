"""Fuzzed query strings, parameters, keys and raw bytes: never a 5xx, always a JSON body."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import quote, quote_from_bytes, urlencode

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexing.retrieval import MODES, Retriever
from tests.indexing.service.conftest import ServiceData, build_app, running

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples every run: a failure reproduces
)
FILTER_NAMES = (
    "source", "min_width", "max_width", "min_height", "max_height", "model", "model_version",
    "captioned_after",
)  # fmt: skip
# Text, including control characters, query syntax (tantivy: field:, quotes, brackets, ~, ^)
# and non-BMP characters.
texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60
) | st.sampled_from(
    ['"', "a:b", "caption:x", "(", "[a TO b]", "a~2", "x^3", "*", "-", "AND", "\x00", "\u202e"]
)
ints = st.integers(min_value=-(10**30), max_value=10**30)
values = st.none() | ints.map(str) | texts
raw_bytes = st.binary(max_size=24)


@pytest.fixture(scope="module")
def client(
    service_data: ServiceData, open_retriever: Callable[[str], Retriever]
) -> Iterator[TestClient]:
    app = build_app(service_data, open_retriever)
    with running(app, raise_server_exceptions=False) as client:
        yield client


def check(response) -> None:
    assert response.status_code < 500, (response.request.url, response.text)
    if response.status_code == 304 or response.headers["content-type"].startswith("image/"):
        return
    body = response.json()
    assert isinstance(body, dict)
    if response.status_code >= 400:
        assert isinstance(body["error"], str) and body["error"]


@FUZZ
@given(
    q=values,
    k=st.none() | st.integers(-5, 120).map(str) | values,
    offset=st.none() | st.integers(-5, 1100).map(str) | values,
    mode=st.none() | st.sampled_from(MODES) | texts,
    filters=st.dictionaries(st.sampled_from(FILTER_NAMES), values, max_size=3),
)
def test_search_parameters(client, q, k, offset, mode, filters) -> None:
    params = {"q": q, "k": k, "offset": offset, "mode": mode, **filters}
    check(client.get("/api/search", params={n: v for n, v in params.items() if v is not None}))


@FUZZ
@given(
    route=st.sampled_from(["items", "similar", "images", "thumbnails"]),
    key=texts,
    size=st.none() | st.integers(-5, 2000).map(str) | texts,
    k=st.none() | values,
)
def test_keys_and_item_parameters(client, route, key, size, k) -> None:
    params = {name: v for name, v in (("size", size), ("k", k)) if v is not None}
    check(client.get(f"/api/{route}/{quote(key, safe='')}?{urlencode(params)}"))


@FUZZ
@given(
    parts=st.lists(
        st.tuples(st.sampled_from(["q", "k", "offset", "mode", *FILTER_NAMES]), raw_bytes),
        min_size=1,
        max_size=5,
    ),
    key=raw_bytes,
)
def test_raw_percent_encoded_bytes(client, parts, key) -> None:
    query = "&".join(f"{name}={quote_from_bytes(value)}" for name, value in parts)
    check(client.get(f"/api/search?{query}"))
    check(client.get(f"/api/items/{quote_from_bytes(key, safe='')}"))
