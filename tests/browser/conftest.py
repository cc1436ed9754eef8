"""Browser tests: Debian's chromium, driven by Playwright, against real `pushsvc serve --dev` nodes.

Never a browser downloaded by Playwright: the system chromium is the browser patients' phones are
closest to that a CI machine can install from the distribution (`apt-get install chromium`).
Screenshots go to ``test-artifacts/browser/`` at the repository root (git-ignored).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `tests.support` whether pytest runs from the root or not
    sys.path.insert(0, str(ROOT))

from tests.support import NodeHandle, start_node  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts" / "browser"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def node() -> Iterator[NodeHandle]:
    with start_node(dev=True) as handle:
        yield handle


@pytest.fixture
def artifacts() -> Path:
    """Where tests save screenshots: test-artifacts/browser/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
