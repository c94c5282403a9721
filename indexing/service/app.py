"""ServiceConfig (+ an archive reader) -> the FastAPI app: /api, the page, health, metrics.

``create_app`` builds the app; its lifespan starts the Reloader, which loads the index version in
the background (so /readyz is 503 until it is loaded; /healthz is always 200) and, for a
collection, follows CURRENT. Every error is JSON ``{"error": ...}``: FastAPI's validation errors
become 400 (never 422), a caller's mistakes 4xx, only a bug is 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException

from indexing.retrieval import QueryError
from indexing.service.api import VERSION_HEADER, require_token, router, service_of
from indexing.service.config import ServiceConfig
from indexing.service.errors import ApiError
from indexing.service.images import ThumbnailCache
from indexing.service.metrics import ServiceMetrics
from indexing.service.models import ErrorBody, Health, Ready
from indexing.service.state import (
    IndexHolder,
    OpenRetriever,
    ReadImage,
    Reloader,
    Service,
)

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def create_app(
    config: ServiceConfig,
    read_image: ReadImage | None = None,
    *,
    open_retriever: OpenRetriever | None = None,
) -> FastAPI:
    """The search service's app.

    Args:
        config: what to serve and how.
        read_image: (source, member) -> the image's bytes, raising FileNotFoundError when it
            is gone (404) and OSError or ValueError when it cannot be read (502). None: the
            image and thumbnail routes answer 404.
        open_retriever: path -> Retriever (default Retriever.open); tests pass their own.
    """
    metrics = ServiceMetrics()
    holder = IndexHolder()
    service = Service(
        config=config,
        holder=holder,
        metrics=metrics,
        reloader=Reloader(config, holder, metrics, open_retriever),
        thumbnails=ThumbnailCache(int(config.thumbnail_cache_mb * 2**20)),
        read_image=read_image,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.reloader.start()
        try:
            yield
        finally:
            service.reloader.stop()
            holder.close()

    app = FastAPI(
        title="imgindex search",
        summary="Search captioned image archives by text: hybrid BM25 + vector ranking.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.include_router(router)
    _add_plain_routes(app)
    _add_error_handlers(app)
    app.add_middleware(ServiceMiddleware, service=service)
    return app


def _add_plain_routes(app: FastAPI) -> None:
    @app.get("/healthz", response_model=Health, summary="The process is up")
    def healthz(request: Request) -> dict[str, Any]:
        current = service_of(request).holder.current
        return {"status": "ok", "version": current.version if current else None}

    @app.get(
        "/readyz",
        response_model=Ready,
        summary="An index version is loaded",
        responses={503: {"model": Ready, "description": "nothing loaded yet"}},
    )
    def readyz(request: Request) -> Any:
        current = service_of(request).holder.current
        if current is None:
            return JSONResponse({"ready": False, "version": None, "count": None}, status_code=503)
        return {"ready": True, "version": current.version, "count": current.count}

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        dependencies=[Depends(require_token)],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}, 401: {"model": ErrorBody}},
    )
    def metrics(request: Request) -> Response:
        body, kind = service_of(request).metrics.render()
        return Response(body, media_type=kind)

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        index = STATIC_DIR / "index.html"
        if not index.is_file():
            return JSONResponse({"error": "the page is not installed"}, status_code=404)
        return FileResponse(index, media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(err: RequestValidationError) -> str:
    """FastAPI's error list -> one line: the first problem, named by its parameter."""
    problems = []
    for problem in err.errors()[:3]:
        where = [str(part) for part in problem.get("loc", ()) if part not in ("query", "path")]
        name = ".".join(where) or "request"
        problems.append(f"{name}: {problem.get('msg', 'invalid')}")
    return "bad parameter " + "; ".join(problems) if problems else "bad request"


def _add_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, err: Exception) -> Response:
        assert isinstance(err, ApiError)
        return _error(err.status, err.message, err.headers)

    async def validation_error(_: Request, err: Exception) -> Response:
        assert isinstance(err, RequestValidationError)
        return _error(400, _validation_message(err))

    async def query_error(_: Request, err: Exception) -> Response:
        return _error(400, " ".join(str(err).split()))

    async def http_error(_: Request, err: Exception) -> Response:
        assert isinstance(err, HTTPException)
        return _error(err.status_code, str(err.detail), dict(err.headers or {}))

    async def bug(request: Request, err: Exception) -> Response:
        logger.error("internal error on %s", request.url.path, exc_info=err)
        return _error(500, f"internal error: {type(err).__name__}")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(QueryError, query_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, bug)


def _bad_utf8(scope: Scope) -> str | None:
    """Which part of the URL holds percent-encoded bytes that are not UTF-8, if any."""
    raw_path = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
    try:
        unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        return "the URL path is not valid UTF-8 once percent-decoded"
    query: bytes = scope.get("query_string", b"")
    for part in query.replace(b";", b"&").split(b"&"):
        try:
            unquote_to_bytes(part.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            name = part.split(b"=", 1)[0][:40].decode("ascii", "replace")
            return f"query parameter {name!r} is not valid UTF-8 once percent-decoded"
    return None


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"


class ServiceMiddleware:
    """Refuses URLs that are not UTF-8 (400), names the served version on every /api response
    that does not yet, and counts and times every request by route."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        is_api = scope.get("path", "").startswith("/api/")

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                if is_api and VERSION_HEADER.lower() not in headers:
                    current = self.service.holder.current
                    version = current.version if current is not None else None
                    headers[VERSION_HEADER] = version or "none"
            await send(message)

        try:
            problem = _bad_utf8(scope)
            if problem is not None:
                await _error(400, problem)(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            label = _route_label(scope)
            self.service.metrics.observe_request(label, status, time.perf_counter() - started)
