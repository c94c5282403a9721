"""The search page in headless chromium: query, thumbnails, paging, filters, modes, item, auth."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.indexing.service.browser import launch_chromium, require_chromium, serve, wait_ready
from tests.indexing.service.conftest import PAGE_TOKEN

pytestmark = pytest.mark.slow

TIMEOUT_MS = 15_000
PAGE = 10  # one of the page's per-page choices
SEEN_IMAGES_LOADED = """() => {
  const imgs = [...document.querySelectorAll('#results img')]
    .filter((img) => img.getBoundingClientRect().top < window.innerHeight);
  return imgs.length > 0 && imgs.every((img) => img.complete && img.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, executable)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def base_url(page_app: Any) -> Iterator[str]:
    with serve(page_app) as url:
        wait_ready(url)
        yield url


@pytest.fixture(scope="module")
def token_url(page_app_with_token: Any) -> Iterator[str]:
    with serve(page_app_with_token) as url:
        wait_ready(url)
        yield url


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def hits(page: Any) -> list[dict[str, str]]:
    """The shown hits' data attributes (key, width, height, source, rank, ...)."""
    return page.eval_on_selector_all("#results li.hit", "els => els.map((e) => ({...e.dataset}))")


def wait_for_results(page: Any, url_part: str) -> list[dict[str, str]]:
    page.wait_for_url(f"**{url_part}*")
    page.wait_for_selector("#results li.hit")
    page.wait_for_function("() => !document.getElementById('results').hasAttribute('aria-busy')")
    return hits(page)


def search(page: Any, url: str, query: str, k: int) -> list[dict[str, str]]:
    page.goto(url + "/")
    page.select_option("#k", str(k))
    page.fill("#q", query)
    page.press("#q", "Enter")
    shown = wait_for_results(page, "q=")
    page.wait_for_function(SEEN_IMAGES_LOADED)
    return shown


def test_search_page_pages_filters_and_opens_an_item(
    page: Any, base_url: str, page_app: Any, page_query: str
) -> None:
    first = search(page, base_url, page_query, k=PAGE)
    assert len(first) == PAGE
    assert [int(h["rank"]) for h in first] == list(range(1, PAGE + 1))
    served = page_app.state.service.holder.current.version
    assert page.inner_text("#version") == f"index version {served}"
    why = page.inner_text("#results li.hit .why")  # hybrid: both sides explained
    assert "vector" in why and "keyword" in why
    assert all(h["vectorRank"] or h["keywordRank"] for h in first)

    page.click("#next")
    second = wait_for_results(page, f"offset={PAGE}")
    assert [int(h["rank"]) for h in second][0] == PAGE + 1
    assert not {h["key"] for h in first} & {h["key"] for h in second}

    # a width filter that about half of the first two pages pass
    widths = sorted(int(h["width"]) for h in first + second)
    min_width = widths[len(widths) // 2]
    page.click("#filters summary")
    page.fill("input[name=min_width]", str(min_width))
    page.press("input[name=min_width]", "Enter")
    assert any(int(h["width"]) < min_width for h in first + second)  # it does exclude some
    filtered = wait_for_results(page, f"min_width={min_width}")
    assert "offset=" not in page.url
    assert filtered and all(int(h["width"]) >= min_width for h in filtered)

    page.click("label:has(input[value=keyword])")
    keyword = wait_for_results(page, "mode=keyword")
    assert "(keyword)" in page.inner_text("#summary")
    assert all(int(h["width"]) >= min_width for h in keyword)
    assert all(h["keywordRank"] and not h["vectorRank"] for h in keyword)

    check_detail_and_more_like_this(page, keyword[0], min_width)


def check_detail_and_more_like_this(page: Any, hit: dict[str, str], min_width: int) -> None:
    key = hit["key"]
    page.click(f"#results li.hit[data-key='{key}'] button.thumb")
    page.wait_for_url("**item=*")
    page.wait_for_selector("#detail[open] dd[data-field=key]")
    assert page.inner_text("#detail dd[data-field=key]") == key
    assert page.inner_text("#detail dd[data-field=size]") == f"{hit['width']} × {hit['height']}"
    page.wait_for_function(
        "() => { const i = document.getElementById('detail-image');"
        " return i.complete && i.naturalWidth > 0; }"
    )

    page.click("#more-like-this")
    similar = wait_for_results(page, "similar=")
    assert "item=" not in page.url
    assert page.locator("#detail").get_attribute("open") is None
    assert key not in {h["key"] for h in similar}
    assert all(int(h["width"]) >= min_width for h in similar)  # the filters stay on

    # the URL alone reproduces the page: reload, then back to the open item and forward again
    before = [h["key"] for h in similar]
    page.reload()
    assert [h["key"] for h in wait_for_results(page, "similar=")] == before
    page.go_back()
    page.wait_for_selector("#detail[open]")
    assert page.inner_text("#detail dd[data-field=key]") == key
    page.go_forward()
    page.wait_for_function("() => !document.getElementById('detail').open")
    assert [h["key"] for h in wait_for_results(page, "similar=")] == before


def test_source_glob_filter_and_clearing_it(page: Any, base_url: str, page_query: str) -> None:
    unfiltered = search(page, base_url, page_query, k=PAGE)
    sources = sorted({h["source"] for h in unfiltered})
    assert len(sources) > 1
    glob = "*" + sources[-1].rsplit("/", 1)[-1]  # e.g. *shard-00001.tar
    page.click("#filters summary")
    page.fill("input[name=source]", glob)
    page.click("#filters button[type=submit]")
    filtered = wait_for_results(page, "source=")
    assert filtered and {h["source"] for h in filtered} == {sources[-1]}
    assert page.inner_text("#filter-count") == "1"

    page.click("#clear-filters")
    page.wait_for_function("() => !location.search.includes('source=')")
    cleared = wait_for_results(page, "q=")
    assert [h["key"] for h in cleared] == [h["key"] for h in unfiltered]


def test_api_errors_are_shown_on_the_page(
    page: Any, base_url: str, page_app: Any, page_query: str
) -> None:
    search(page, base_url, page_query, k=PAGE)
    too_long = page_app.state.service.config.max_query_chars + 1
    page.fill("#q", "x" * too_long)
    page.press("#q", "Enter")
    message = page.locator("#message")
    message.wait_for(state="visible")
    assert message.inner_text().strip()
    assert page.locator("#results li.hit").count() == 0

    page.fill("#q", "   ")
    page.press("#q", "Enter")
    assert "Type some words" in message.inner_text()

    page.goto(base_url + "/?item=no-such-key-anywhere")
    detail_message = page.locator("#detail-message")
    detail_message.wait_for(state="visible")
    assert detail_message.inner_text().strip()


def test_a_token_protected_service_asks_for_the_token(
    page: Any, token_url: str, page_query: str, service_data: Any
) -> None:
    key = service_data.key  # a shared link to an open item
    page.goto(f"{token_url}/?q={page_query}&k={PAGE}&item={key}")
    page.wait_for_selector("#auth:not([hidden])")
    assert page.locator("#results li.hit").count() == 0
    page.wait_for_function("() => !document.getElementById('detail').open")
    assert f"item={key}" in page.url

    page.fill("#token", "wrong-token")
    page.press("#token", "Enter")
    page.wait_for_function(
        "() => document.querySelector('#auth label').textContent.includes('refused')"
    )

    page.fill("#token", PAGE_TOKEN)
    page.press("#token", "Enter")
    assert len(wait_for_results(page, "q=")) == PAGE
    page.wait_for_function(SEEN_IMAGES_LOADED)  # <img> loads carry the token in the cookie
    page.wait_for_selector("#detail[open] dd[data-field=key]")
    assert page.inner_text("#detail dd[data-field=key]") == key
    page.wait_for_function("() => document.getElementById('detail-image').naturalWidth > 0")
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["imgindex_token"]["value"] == PAGE_TOKEN
    assert cookies["imgindex_token"]["sameSite"] == "Strict"
    assert page.locator("#auth").is_hidden()
