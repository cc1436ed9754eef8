"""The internal API's documentation pages in a real browser with no way out of the machine.

Every request that leaves loopback is blocked and recorded: Swagger UI (``/docs``) and ReDoc
(``/redoc``) must render every operation of the document from what the node serves, and must not
even try to reach anything else (a CDN, web fonts). Screenshots land in test-artifacts/browser/.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support import UNIT, NodeHandle

pytestmark = pytest.mark.browser

WAIT_MS = int(20_000 * UNIT)
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


@contextmanager
def offline_page(browser: Any) -> Iterator[tuple[Any, list[str], list[str]]]:
    """A tab whose requests beyond loopback are aborted; yields it, the blocked URLs and the
    uncaught script errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    blocked: list[str] = []
    errors: list[str] = []

    def only_loopback(route: Any) -> None:
        url = route.request.url
        if url.startswith(("data:", "blob:")) or urlsplit(url).hostname in LOOPBACK:
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    context.route("**/*", only_loopback)
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page, blocked, errors
    finally:
        context.close()


def summaries(node: NodeHandle) -> list[str]:
    document = httpx.get(node.internal_url + "/openapi.json", timeout=10 * UNIT).json()
    return [op["summary"] for ops in document["paths"].values() for op in ops.values()]


def test_swagger_ui_renders_every_operation_offline(
    browser: Any, node: NodeHandle, artifacts: Path
) -> None:
    expected = summaries(node)
    with offline_page(browser) as (page, blocked, errors):
        page.goto(node.internal_url + "/docs")
        operations = page.locator(".opblock")
        operations.nth(len(expected) - 1).wait_for()
        assert operations.count() == len(expected)
        text = page.locator("#swagger-ui").inner_text()
        for summary in expected:
            assert summary in text
        assert page.locator("button.authorize").count() == 1  # the bearer scheme
        page.screenshot(path=str(artifacts / "api-docs-swagger.png"), full_page=False)
        assert blocked == []
        assert errors == []


def test_redoc_renders_every_operation_offline(
    browser: Any, node: NodeHandle, artifacts: Path
) -> None:
    expected = summaries(node)
    with offline_page(browser) as (page, blocked, errors):
        page.goto(node.internal_url + "/redoc")
        headings = page.locator("h2")  # one per operation, grouped by tag
        headings.filter(has_text=expected[-1]).wait_for()
        assert sorted(h for h in headings.all_inner_texts() if h in expected) == sorted(expected)
        text = page.locator("body").inner_text()
        assert "authorizations:\nbearer" in text.lower()  # the security scheme
        assert "429" in text and "503" in text  # the publishes' error answers
        page.screenshot(path=str(artifacts / "api-docs-redoc.png"), full_page=False)
        assert blocked == []
        assert errors == []
