"""The demo page pictures README.md shows: there, whole PNGs, phone-sized, small, described.

They are taken by driving the demo page through a real node (``tests/browser/screenshots.py``,
which ``tests/browser/test_demo.py`` runs every time); pixels are never compared, fonts differ.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.browser.screenshots import PICTURES, check_picture
from tests.support import ROOT

README = ROOT / "README.md"
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def shown() -> dict[str, str]:
    """README's pictures: path -> alt text."""
    return {path: alt for alt, path in IMAGE.findall(README.read_text())}


def test_readme_shows_every_demo_picture_the_script_takes() -> None:
    demo = {p for p in shown() if p.startswith("docs/images/demo-")}
    assert demo == {f"docs/images/{name}.png" for name in PICTURES}


@pytest.mark.parametrize("name", PICTURES)
def test_each_picture_is_a_small_whole_png_with_alt_text(name: str) -> None:
    path = f"docs/images/{name}.png"
    assert len(shown()[path]) >= 30, "alt text must say what the picture shows"
    check_picture(ROOT / path)


def test_a_broken_picture_fails(tmp_path: Path) -> None:
    good = (ROOT / "docs/images/demo-called.png").read_bytes()
    for broken in (good[: len(good) // 2], b"GIF89a" + good[6:], good + b"\0" * 200_000):
        path = tmp_path / "broken.png"
        path.write_bytes(broken)
        with pytest.raises((AssertionError, OSError, SyntaxError)):
            check_picture(path)
