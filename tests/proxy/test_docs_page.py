"""The API reference page renders in a real headless browser with no network: every asset it loads
comes from rerankd itself, and no request leaves the loopback interface.

Debian's chromium (installed by ``scripts/test``), driven by Playwright; Playwright's own browser
download is not used.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Route, sync_playwright

from tests.servers import RerankdServer, rerankd_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Below the page's own requests (which the route handler sees): any host name but loopback's
    # resolves to nothing, so nothing can reach the network even outside the page.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]


@pytest.fixture(scope="module")
def server() -> Iterator[RerankdServer]:
    # The pages need no model: do not wait for it to load.
    with rerankd_server(wait_ready=False) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.mark.parametrize("path", ["/docs", "/docs/swagger"])
def test_the_reference_page_renders_offline(
    server: RerankdServer, browser: Browser, path: str, tmp_path: Path
) -> None:
    left: list[str] = []
    seen: list[str] = []
    context = browser.new_context(service_workers="block")

    def guard(route: Route) -> None:
        url = route.request.url
        seen.append(url)
        host = urlsplit(url).hostname or ""
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and host not in LOOPBACK:
            left.append(url)
            route.abort("internetdisconnected")
        else:
            route.continue_()

    context.route("**/*", guard)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        response = page.goto(server.url + path, wait_until="networkidle")
        assert response is not None
        assert response.status == 200
        # Swagger UI drew the operation list from the inline description.
        page.wait_for_selector(".opblock-summary-path[data-path='/v2/rerank']", timeout=30_000)
        operations = page.locator(".opblock-summary-path").all_inner_texts()
        assert any("/v1/rerank" in text for text in operations), operations
        assert page.locator("text=Unable to render this definition").count() == 0
        assert "rerankd" in page.title()
        page.screenshot(path=str(tmp_path / "docs.png"))
        assert not errors, errors
    finally:
        context.close()
    assert not left, f"requests left loopback: {left}"
    assert any("/docs/assets/swagger-ui-bundle.js" in url for url in seen), seen


def test_assets_are_served_pinned_and_open(server: RerankdServer) -> None:
    js = httpx.get(server.url + "/docs/assets/swagger-ui-bundle.js", timeout=30)
    assert js.status_code == 200
    assert "javascript" in js.headers["content-type"]
    css = httpx.get(server.url + "/docs/assets/swagger-ui.css", timeout=30)
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    page = httpx.get(server.url + "/docs", timeout=30).text
    for host in ("cdn.", "unpkg", "googleapis"):
        assert host not in page, host
    assert httpx.get(server.url + "/docs/assets/no-such-file.js", timeout=30).status_code == 404
