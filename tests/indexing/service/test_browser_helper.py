"""The browser tests' skip rule and the uvicorn helper, without a browser."""

from __future__ import annotations

import json
import urllib.request

import pytest
from fastapi import FastAPI

from tests.indexing.service import browser


def test_without_chromium_the_browser_tests_skip_and_say_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(browser, "chromium_path", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        browser.require_chromium()


def test_under_ci_a_missing_chromium_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browser, "chromium_path", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium"):
        browser.require_chromium()


def test_a_found_chromium_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browser, "chromium_path", lambda: "/opt/chromium")
    monkeypatch.setenv("CI", "true")
    assert browser.require_chromium() == "/opt/chromium"


def test_serve_runs_an_app_on_a_free_loopback_port_and_stops_it() -> None:
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    with browser.serve(app) as url:
        assert url.startswith("http://127.0.0.1:")
        browser.wait_ready(url, timeout_s=10)
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
            assert json.load(response) == {"ready": True}
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/readyz", timeout=2)
