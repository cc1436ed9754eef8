"""What the browser tests share: page profiles, opening the demo page, waiting for its states."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support import UNIT, NodeHandle

WAIT_MS = int(10_000 * UNIT)  # the longest any page state may take to appear

PHONE: dict[str, Any] = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}
DESKTOP: dict[str, Any] = {"viewport": {"width": 1280, "height": 900}}


@contextmanager
def browser_context(browser: Any, options: dict[str, Any]) -> Iterator[Any]:
    """A fresh browser profile (its own localStorage, so its own device id)."""
    context = browser.new_context(**options)
    context.set_default_timeout(WAIT_MS)
    try:
        yield context
    finally:
        context.close()


def open_page(context: Any, url: str) -> Any:
    """Opens `url` in a new tab; any uncaught script error in the tab fails the test at the end."""
    page = context.new_page()
    page.script_errors = []
    page.on("pageerror", lambda error: page.script_errors.append(str(error)))
    page.goto(url)
    return page


def no_script_errors(*pages: Any) -> None:
    for page in pages:
        assert page.script_errors == [], f"{page.url}: {page.script_errors}"


def wait_open(page: Any) -> None:
    page.wait_for_selector('#connection[data-state="open"]', timeout=WAIT_MS)


def feed_item(page: Any, message_id: str) -> Any:
    return page.locator(f'#feed li[data-id="{message_id}"]')


def wait_shown(page: Any, message_id: str) -> None:
    feed_item(page, message_id).wait_for(timeout=WAIT_MS)


def shot(page: Any, artifacts: Path, name: str, *, full_page: bool = False) -> Path:
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def demo_url(node: NodeHandle, **query: str) -> str:
    return f"{node.http_url}/demo/?" + "&".join(f"{k}={v}" for k, v in query.items())
