"""The demo page's pictures in README.md, taken by driving the page through a real node.

:func:`take` opens patient p1's page (phone-sized, one device pixel per CSS pixel, so each picture
stays small), waits for *Live updates on*, publishes a place in line and then a call to a room
that asks for an ack, waits until the page shows it and the node's delivery trail says it was
acked, and saves one picture after connecting and one after the call. ``test_readme_pictures``
(tests/browser/test_demo.py) takes them into ``test-artifacts/browser/`` on every run; to replace
the ones checked in:

    python -m tests.browser.screenshots docs/images/

which starts its own ``pushsvc serve --dev`` node and Debian's chromium.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tests.browser.pages import (
    WAIT_MS,
    browser_context,
    demo_url,
    no_script_errors,
    open_page,
    shot,
    wait_open,
    wait_shown,
)
from tests.support import UNIT, NodeHandle

#: The pictures, by name, as README.md shows them from docs/images/.
PICTURES = ("demo-connected", "demo-called")
MAX_BYTES = 200_000  # what a README picture may weigh in the repository
SMALL_PHONE: dict[str, Any] = {
    "viewport": {"width": 390, "height": 760},
    "device_scale_factor": 1,
    "is_mobile": True,
    "has_touch": True,
}


def take(browser: Any, node: NodeHandle, out: Path) -> dict[str, Path]:
    """Drive the demo page of ``node`` (a ``--dev`` node) and save :data:`PICTURES` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    taken: dict[str, Path] = {}
    with browser_context(browser, SMALL_PHONE) as context:
        page = open_page(context, demo_url(node, user="p1"))
        wait_open(page)
        assert page.locator("#connection-text").inner_text() == "Live updates on"
        taken["demo-connected"] = shot(page, out, "demo-connected")

        place = node.publish(
            {"to": {"users": ["p1"]}, "event": "queue.position",
             "data": {"clinic": "205", "position": 2}}
        )  # fmt: skip
        wait_shown(page, place["id"])
        call = node.publish(
            {"to": {"users": ["p1"]}, "event": "queue.called", "ack": True,
             "data": {"clinic": "205", "room": "205", "position": 1}}
        )  # fmt: skip
        wait_shown(page, call["id"])
        assert page.locator("#status-title").inner_text() == "Please go to room 205"
        deadline = time.monotonic() + WAIT_MS / 1000
        while node.trail(call["id"])["state"] != "acked":  # the page acked what it showed
            assert time.monotonic() < deadline, node.trail(call["id"])
            time.sleep(0.05 * UNIT)
        page.evaluate("window.scrollTo(0, 0)")
        taken["demo-called"] = shot(page, out, "demo-called")
        no_script_errors(page)
    return taken


def check_picture(path: Path) -> tuple[int, int]:
    """Raise AssertionError unless ``path`` is a whole PNG of a phone-sized page, small enough
    to check in; return its size in pixels. Pixels are not compared: fonts differ by machine."""
    from PIL import Image

    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), f"{path} is not a PNG"
    assert 2_000 < len(data) < MAX_BYTES, f"{path}: {len(data)} bytes"
    with Image.open(path) as image:
        assert image.format == "PNG", path
        image.verify()  # the chunks and their CRCs, to the end of the file
        width, height = image.size
    assert 320 <= width <= 1280 and 480 <= height <= 1600, f"{path}: {width}x{height}"
    return width, height


def main(argv: list[str]) -> int:
    """``python -m tests.browser.screenshots DIR``: take :data:`PICTURES` into ``DIR``."""
    if len(argv) != 1:
        print("usage: python -m tests.browser.screenshots DIR", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
    from tests.support import start_node

    with (
        start_node(dev=True) as node,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            for name, path in take(browser, node, Path(argv[0])).items():
                width, height = check_picture(path)
                print(f"{name}: {path} ({width}x{height}, {path.stat().st_size} bytes)")
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
