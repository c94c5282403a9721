"""/api/* requests -> the pinned index version's answers: search, similar, items, images, thumbs.

Every handler pins the current index version for its whole run (state.IndexHolder.pin) and names
it in the JSON ``version`` and the ``X-Index-Version`` header. Keys are only ever looked up with
Retriever.entry; a key is never part of a file path.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from indexing.retrieval import MODES, WINDOW, QueryError, RankedHit, SearchFilter
from indexing.service.auth import check_token
from indexing.service.config import MAX_THUMBNAIL, MIN_THUMBNAIL
from indexing.service.errors import ApiError, bad_request, not_found
from indexing.service.images import ImageDecodeError, content_type, make_thumbnail
from indexing.service.models import ErrorBody, ItemResponse, SearchResponse
from indexing.service.state import Generation, Service

VERSION_HEADER = "X-Index-Version"
DEFAULT_THUMBNAIL = 256
CACHE_CONTROL = "private, max-age=300"


def service_of(request: Request) -> Service:
    return request.app.state.service


def require_token(request: Request) -> None:
    check_token(request, service_of(request).config.token)


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": what}
    for code, what in (
        (400, "a bad parameter"),
        (401, "missing or wrong token"),
        (404, "unknown key, or the image's archive file is gone"),
        (503, "no index version loaded yet"),
    )
}
router = APIRouter(prefix="/api", dependencies=[Depends(require_token)], responses=_ERRORS)

KeyParam = Annotated[str, Path(description="the image's key (URL-quoted)")]
KParam = Annotated[int, Query(description="hits per page (1..100 by default)")]
OffsetParam = Annotated[int, Query(description=f"hits to skip; offset + k <= {WINDOW}")]


def filter_params(
    request: Request,
    source: Annotated[str | None, Query(description="glob over the source URI")] = None,
    min_width: int | None = None,
    max_width: int | None = None,
    min_height: int | None = None,
    max_height: int | None = None,
    model: Annotated[str | None, Query(description="the captioner's name")] = None,
    model_version: str | None = None,
    captioned_after: Annotated[
        str | None, Query(description="ISO date or datetime; captioned strictly after it")
    ] = None,
) -> SearchFilter:
    """The filter query parameters -> a SearchFilter (empty text means no filter)."""
    limit = service_of(request).config.max_query_chars
    texts = {
        name: value.strip() or None if value is not None else None
        for name, value in (
            ("source", source),
            ("model", model),
            ("model_version", model_version),
            ("captioned_after", captioned_after),
        )
    }
    for name, value in texts.items():
        if value is not None and len(value) > limit:
            raise bad_request(f"{name} too long: {len(value)} characters, at most {limit}")
    try:
        return SearchFilter(
            min_width=min_width,
            max_width=max_width,
            min_height=min_height,
            max_height=max_height,
            **texts,
        )
    except QueryError as err:
        raise bad_request(str(err)) from err


Filters = Annotated[SearchFilter, Depends(filter_params)]


def _check_page(service: Service, k: int, offset: int) -> None:
    if not 1 <= k <= service.config.max_k:
        raise bad_request(f"k must be between 1 and {service.config.max_k}, got {k}")
    if offset < 0:
        raise bad_request(f"offset must be 0 or more, got {offset}")
    if offset + k > WINDOW:
        raise bad_request(f"offset + k must be at most {WINDOW}, got {offset} + {k}")


def _query_text(service: Service, q: str) -> str:
    text = q.strip()
    if not text:
        raise bad_request("empty query: type some words")
    if len(text) > service.config.max_query_chars:
        raise bad_request(
            f"query too long: {len(text)} characters, at most {service.config.max_query_chars}"
        )
    return text


def _number(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _urls(key: str) -> dict[str, str]:
    quoted = quote(key, safe="")
    return {
        "thumbnail_url": f"/api/thumbnails/{quoted}?size={DEFAULT_THUMBNAIL}",
        "image_url": f"/api/images/{quoted}",
    }


def _hit(hit: RankedHit) -> dict[str, Any]:
    entry = hit.entry
    fields = ("key", "caption", "source", "member", "url", "width", "height", "model")
    return {
        "rank": hit.rank,
        "score": _number(hit.score) or 0.0,
        **{name: entry.get(name) for name in fields},
        "model_version": entry.get("model_version"),
        "captioned_at": _text(entry.get("captioned_at")),
        **_urls(entry["key"]),
        "vector_rank": hit.vector_rank,
        "vector_score": _number(hit.vector_score),
        "keyword_rank": hit.keyword_rank,
        "keyword_score": _number(hit.keyword_score),
    }


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _page(
    service: Service,
    response: Response,
    cache_key: tuple[Any, ...],
    run: Callable[[Generation], dict[str, Any]],
) -> dict[str, Any]:
    """Pin the current version, answer from its response cache or ``run(generation)``."""
    started = time.perf_counter()
    with service.holder.pin() as generation:
        response.headers[VERSION_HEADER] = generation.version or "none"
        cached = generation.responses.get(cache_key)
        service.metrics.cache_lookup("response", cached is not None)
        if cached is None:
            cached = run(generation)
            generation.responses.put(cache_key, cached)
    return {**cached, "took_ms": (time.perf_counter() - started) * 1000}


@router.get("/search", response_model=SearchResponse, summary="Search by text")
def search(
    request: Request,
    response: Response,
    filters: Filters,
    q: Annotated[str, Query(description="what to look for, in words")],
    k: KParam = 10,
    offset: OffsetParam = 0,
    mode: Annotated[str, Query(description="hybrid (BM25 + vector, RRF), vector or keyword")] = (
        "hybrid"
    ),
) -> dict[str, Any]:
    service = service_of(request)
    text = _query_text(service, q)
    _check_page(service, k, offset)
    if mode not in MODES:
        raise bad_request(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")

    def run(generation: Generation) -> dict[str, Any]:
        vector = None if mode == "keyword" else generation.vectors.get(text)
        started = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            hits = generation.retriever.query(
                text, k=k, offset=offset, mode=mode, filters=filters, vector=vector, timings=timings
            )
        finally:
            service.metrics.observe_stage("search", time.perf_counter() - started)
        service.metrics.observe_query_stages(timings)
        return _body(generation, text, mode, k, offset, hits)

    return _page(service, response, ("search", text, k, offset, mode, filters), run)


def _body(
    generation: Generation, query: str, mode: str, k: int, offset: int, hits: list[RankedHit]
) -> dict[str, Any]:
    return {
        "version": generation.version,
        "query": query,
        "mode": mode,
        "k": k,
        "offset": offset,
        "hits": [_hit(hit) for hit in hits],
    }


@router.get("/similar/{key:path}", response_model=SearchResponse, summary="More like an item")
def similar(
    request: Request,
    response: Response,
    key: KeyParam,
    filters: Filters,
    k: KParam = 10,
    offset: OffsetParam = 0,
) -> dict[str, Any]:
    service = service_of(request)
    _check_page(service, k, offset)

    def run(generation: Generation) -> dict[str, Any]:
        if generation.retriever.entry(key) is None:
            raise not_found(f"no item with key {key!r} in index version {generation.version}")
        started = time.perf_counter()
        try:
            hits = generation.retriever.similar(key, k=k, offset=offset, filters=filters)
        finally:
            service.metrics.observe_stage("search", time.perf_counter() - started)
        return _body(generation, key, "similar", k, offset, hits)

    return _page(service, response, ("similar", key, k, offset, filters), run)


def _entry(service: Service, response: Response, key: str) -> tuple[dict[str, Any], Generation]:
    with service.holder.pin() as generation:
        response.headers[VERSION_HEADER] = generation.version or "none"
        entry = generation.retriever.entry(key)
    if entry is None:
        raise not_found(f"no item with key {key!r} in index version {generation.version}")
    return entry, generation


@router.get("/items/{key:path}", response_model=ItemResponse, summary="An item's metadata")
def item(request: Request, response: Response, key: KeyParam) -> dict[str, Any]:
    entry, generation = _entry(service_of(request), response, key)
    names = ("key", "caption", "source", "member", "url", "alt_text", "width", "height", "sha256")
    body = {name: entry.get(name) for name in names}
    body.update(
        metadata=_metadata(entry.get("metadata")),
        model=entry.get("model"),
        model_version=entry.get("model_version"),
        captioned_at=_text(entry.get("captioned_at")),
        **_urls(entry["key"]),
    )
    return {"version": generation.version, "item": body}


def _metadata(raw: Any) -> dict[str, Any] | None:
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        return None
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _read(service: Service, entry: dict[str, Any]) -> bytes:
    key = entry["key"]
    if service.read_image is None:
        raise not_found("this service was started without an archive reader: no images")
    started = time.perf_counter()
    try:
        return service.read_image(entry["source"], entry["member"])
    except FileNotFoundError as err:
        raise not_found(f"the image of {key!r} is gone from its archive: {err}") from err
    except (OSError, ValueError) as err:
        raise ApiError(502, f"the image of {key!r} cannot be read from its archive: {err}") from err
    finally:
        service.metrics.observe_stage("image_read", time.perf_counter() - started)


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or etag in tags


IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/*": {}}, "description": "the image"},
    304: {"description": "not modified (If-None-Match)"},
    502: {"model": ErrorBody, "description": "the archive is there but unreadable"},
}


@router.get(
    "/images/{key:path}",
    summary="The original image bytes",
    response_class=Response,
    responses=IMAGE_RESPONSES,
)
def image(request: Request, response: Response, key: KeyParam) -> Response:
    service = service_of(request)
    entry, generation = _entry(service, response, key)
    headers = {
        VERSION_HEADER: generation.version or "none",
        "Cache-Control": CACHE_CONTROL,
        "X-Content-Type-Options": "nosniff",
    }
    if entry.get("sha256"):
        headers["ETag"] = f'"{entry["sha256"]}"'
        if _etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
            return Response(status_code=304, headers=headers)
    data = _read(service, entry)
    return Response(data, media_type=content_type(data), headers=headers)


@router.get(
    "/thumbnails/{key:path}",
    summary="A JPEG thumbnail",
    response_class=Response,
    responses=IMAGE_RESPONSES,
)
def thumbnail(
    request: Request,
    response: Response,
    key: KeyParam,
    size: Annotated[int, Query(description="longest side, 16..1024")] = DEFAULT_THUMBNAIL,
) -> Response:
    service = service_of(request)
    if not MIN_THUMBNAIL <= size <= MAX_THUMBNAIL:
        raise bad_request(f"size must be between {MIN_THUMBNAIL} and {MAX_THUMBNAIL}, got {size}")
    entry, generation = _entry(service, response, key)
    headers = {
        VERSION_HEADER: generation.version or "none",
        "Cache-Control": CACHE_CONTROL,
        "X-Content-Type-Options": "nosniff",
    }
    sha = entry.get("sha256")
    if sha and _etag_matches(request.headers.get("if-none-match"), f'"{sha}-{size}"'):
        return Response(status_code=304, headers={**headers, "ETag": f'"{sha}-{size}"'})
    cache_id = sha or f"{entry['source']}\0{entry['member']}"
    data = service.thumbnails.get((cache_id, size))
    service.metrics.cache_lookup("thumbnail", data is not None)
    if data is None:
        original = _read(service, entry)
        started = time.perf_counter()
        try:
            data = make_thumbnail(original, size)
        except ImageDecodeError as err:
            raise ApiError(502, f"no thumbnail for {key!r}: {err}") from err
        finally:
            service.metrics.observe_stage("thumbnail", time.perf_counter() - started)
        service.thumbnails.put((cache_id, size), data)
    sha = sha or hashlib.sha256(data).hexdigest()  # no stored sha256: the thumbnail's own
    headers["ETag"] = f'"{sha}-{size}"'
    if _etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="image/jpeg", headers=headers)
