"""ServiceConfig + ServeOptions -> uvicorn serving indexing's search app with captioning's reader.

indexing never imports captioning, so this is where the two meet: the app reads image bytes with
``captioning.archives.fetch`` (tar members by offset, Parquet rows, folder files). With
``--workers N`` uvicorn needs an import string: each worker process calls ``app_from_env``,
which rebuilds the app from the settings ``run_server`` put in IMGINDEX_SERVE_CONFIG.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from captioning.archives.fetch import MemberReader
from captioning.archives.records import DEFAULT_READ_CONFIG, ReadConfig
from indexing.service.app import create_app
from indexing.service.config import ServiceConfig
from pipelines.errors import UsageError

if TYPE_CHECKING:
    from fastapi import FastAPI

CONFIG_ENV = "IMGINDEX_SERVE_CONFIG"
FACTORY = "pipelines.serve:app_from_env"


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """How the server listens, how Parquet archives hold their images, and torch's threads.

    ``threads``: torch's intra-op threads for embedding queries in each server process; 0 keeps
    torch's default (one per core). The service batches concurrent queries into one embedding
    call, so one thread leaves the other cores to the requests' searches (on a busy 2-core
    machine, two threads made embedding one query many times slower than one thread).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    image_column: str = DEFAULT_READ_CONFIG.image_column
    log_level: str = "info"
    threads: int = 1

    def __post_init__(self) -> None:
        if not self.host.strip():
            raise UsageError("--host is empty: give an address such as 127.0.0.1")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be between 0 and 65535, got {self.port}")
        if not 1 <= self.workers <= 64:
            raise UsageError(f"--workers must be between 1 and 64, got {self.workers}")
        if not 0 <= self.threads <= 1024:
            raise UsageError(f"--threads must be between 0 and 1024, got {self.threads}")
        ReadConfig(image_column=self.image_column)  # raises a CaptioningError when empty

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the server."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False  # a host name: it may resolve to anything


def build_app(
    config: ServiceConfig, image_column: str = DEFAULT_READ_CONFIG.image_column
) -> FastAPI:
    """The search app over ``config.path``, reading images through captioning's MemberReader."""
    reader = MemberReader(ReadConfig(image_column=image_column))
    return create_app(config, read_image=reader.read)


def app_from_env() -> FastAPI:
    """uvicorn's app factory in each worker of ``--workers N`` (settings from CONFIG_ENV)."""
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise UsageError(f"{CONFIG_ENV} is not set: start the server with `imgindex serve`")
    doc = json.loads(text)
    set_torch_threads(doc["threads"])
    return build_app(ServiceConfig.from_json(json.dumps(doc["config"])), doc["image_column"])


def set_torch_threads(threads: int) -> None:
    """torch's intra-op threads for this process (0: leave torch's default)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def run_server(config: ServiceConfig, options: ServeOptions) -> None:
    """Serve until interrupted. Sets torch's threads for this process; with several workers,
    sets CONFIG_ENV for them (inherited by the processes uvicorn starts) and hands uvicorn the
    factory's import string."""
    import uvicorn

    host, port, level = options.host, options.port, options.log_level
    if options.workers == 1:
        set_torch_threads(options.threads)
        app = build_app(config, options.image_column)
        uvicorn.run(app, host=host, port=port, log_level=level, proxy_headers=False)
        return
    doc = {
        "config": json.loads(config.to_json()),
        "image_column": options.image_column,
        "threads": options.threads,
    }
    os.environ[CONFIG_ENV] = json.dumps(doc)
    uvicorn.run(
        FACTORY,
        host=host,
        port=port,
        factory=True,
        workers=options.workers,
        log_level=level,
        proxy_headers=False,
    )
