"""`imgindex serve`: an index or a collection -> the search service and its page over HTTP."""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.cli.common import app, err, stderr_line

TOKEN_ENV = "IMGINDEX_TOKEN"


@app.command("serve")
def serve(
    path: Annotated[
        str,
        typer.Argument(
            metavar="PATH",
            help="A collection root (serves its current version and follows it) or an index dir.",
        ),
    ],
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; non-loopback needs care.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8080,
    workers: Annotated[
        int, typer.Option("--workers", help="Server processes (each loads the index).")
    ] = 1,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar=TOKEN_ENV,
            help=f"Require this bearer token on /api and /metrics (or set {TOKEN_ENV}, "
            "which other users cannot read in the process list).",
        ),
    ] = None,
    reload_interval: Annotated[
        float,
        typer.Option("--reload-interval", help="Seconds between checks of CURRENT; 0: never."),
    ] = 1.0,
    image_column: Annotated[
        str, typer.Option("--image-column", help="Parquet column with image bytes.")
    ] = "jpg",
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            help="torch threads per server process for embedding queries (batched); "
            "0: one per core.",
        ),
    ] = 1,
) -> None:
    """Serve an index over HTTP: the search page, the JSON API, health and Prometheus metrics."""
    from indexing.service.config import ServiceConfig
    from indexing.service.state import check_path
    from pipelines.serve import ServeOptions, run_server

    config = ServiceConfig(path=path, token=token, reload_interval_s=reload_interval)
    options = ServeOptions(
        host=host, port=port, workers=workers, image_column=image_column, threads=threads
    )
    _announce(check_path(path), path, host, port, warn=not options.loopback and token is None)
    run_server(config, options)


def _announce(kind: str, path: str, host: str, port: int, warn: bool) -> None:
    if warn:
        stderr_line(
            f"warning: serving on {host} without a token: anyone who can reach this address "
            f"can search the index and read its images; pass --token or set {TOKEN_ENV}"
        )
    shown = f"[{host}]" if ":" in host else host
    err.print(
        f"serving the {kind} {path} on http://{shown}:{port}/ (JSON API under /api, "
        f"schema at /docs); Ctrl-C stops it",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
