"""An ASGI app + Debian's chromium -> a served base URL and a headless browser for page tests."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
]
INSTALL_HINT = (
    "the browser tests need Debian's chromium: apt-get install chromium "
    "(Playwright drives /usr/bin/chromium; no browser download is needed)"
)


def chromium_path() -> str | None:
    """/usr/bin/chromium, else `chromium` on PATH, else None."""
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def require_chromium() -> str:
    """The chromium executable; without one, skip the test, or fail it under CI (CI=true)."""
    import pytest

    path = chromium_path()
    if path is not None:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but no chromium: {INSTALL_HINT}", pytrace=False)
    pytest.skip(INSTALL_HINT)


def launch_chromium(playwright: Any, executable: str) -> Any:
    """A headless Playwright Browser over the given chromium executable."""
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)


def wait_ready(base_url: str, timeout_s: float = 60.0) -> None:
    """Poll GET /readyz (open without a token) until the service has an index version loaded."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as err:
            if err.code != 503:
                raise
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base_url} was not ready within {timeout_s} s")
        time.sleep(0.05)


@contextmanager
def serve(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` with uvicorn in a background thread; yields its base URL (a free port if 0)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("uvicorn did not start (see the log above)")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
