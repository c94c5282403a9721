"""An index (or collection) + a query -> docs/img/search-page.png: the search page as users see it.

    python docs/make_screenshot.py [PATH] [--query TEXT] [--out docs/img/search-page.png]

PATH defaults to demo-out/run/index (made by `make demo`). Starts the real server
(`imgindex serve PATH`) on a free loopback port, waits for /readyz, warms it with one other query,
opens the page in Debian's headless chromium through Playwright, waits until the thumbnails in view
have loaded, and saves a 1280x900 screenshot. Needs chromium (apt-get install chromium); reaches
no network.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
]
THUMBNAILS_LOADED = """() => {
  const imgs = [...document.querySelectorAll('#results img')]
    .filter((img) => img.getBoundingClientRect().top < window.innerHeight);
  return imgs.length > 0 && imgs.every((img) => img.complete && img.naturalWidth > 0);
}"""


class UsageError(Exception):
    """Something the user can fix; printed as one line, exit code 2."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def imgindex_command() -> list[str]:
    script = Path(sys.executable).parent / "imgindex"
    if script.exists():
        return [str(script)]
    found = shutil.which("imgindex")
    if found is None:
        raise UsageError("`imgindex` is not installed: run `make install` first")
    return [found]


def wait_ready(base_url: str, server: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise UsageError(f"`imgindex serve` exited with code {server.returncode} (see above)")
        try:
            with urllib.request.urlopen(f"{base_url}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass  # not listening yet, or 503 until the index is loaded
        time.sleep(0.2)
    raise UsageError(f"the server was not ready within {timeout_s:.0f} s")


def warm_up(base_url: str) -> None:
    """Two other queries first, so the shown time is a warm query's, not the first one's (which
    also pays for the embedder's first call), and not a cached answer either."""
    for text in ("three large blue stars", "one purple square above a circle"):
        query = urllib.parse.urlencode({"q": text, "k": 20})
        with urllib.request.urlopen(f"{base_url}/api/search?{query}", timeout=60) as response:
            response.read()


def chromium() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise UsageError("needs Debian's chromium: apt-get install chromium")


def shoot(base_url: str, query: str, out: Path, width: int, height: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(60_000)
            page.goto(f"{base_url}/?{urllib.parse.urlencode({'q': query})}")
            page.wait_for_selector("#results li.hit, #message:not([hidden])")
            if page.locator("#message").is_visible():
                raise UsageError(f"the page shows an error: {page.inner_text('#message')}")
            page.wait_for_function(THUMBNAILS_LOADED)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(REPO / "demo-out/run/index"))
    parser.add_argument("--query", default="two green triangles")
    parser.add_argument("--out", type=Path, default=REPO / "docs/img/search-page.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for /readyz")
    args = parser.parse_args(argv)
    try:
        if not Path(args.path).exists():
            raise UsageError(f"{args.path} does not exist: run `make demo` or give an index path")
        port = free_port()
        command = [*imgindex_command(), "serve", args.path, "--port", str(port)]
        server = subprocess.Popen(command, cwd=REPO)
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_ready(base_url, server, args.timeout)
            warm_up(base_url)
            shoot(base_url, args.query, args.out, args.width, args.height)
        finally:
            server.terminate()
            server.wait(timeout=30)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
