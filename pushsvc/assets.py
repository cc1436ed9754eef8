"""Files pushsvc ships besides its code: the browser client with the demo page, the Grafana
dashboards and the Prometheus alert rules.

A checkout keeps them where they are edited (``clients/js``, ``dashboards/``, ``alerts/``); a built
wheel carries copies under ``pushsvc/_data/`` (``setup.py`` copies them at build time, from the
table below; git holds one copy). :func:`asset_dir` finds either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Kind = Literal["client", "dashboards", "alerts"]

# kind -> (folder in a checkout, the files of it that ship, as glob patterns)
SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "client": ("clients/js", ("pushsvc.js", "pushsvc.d.ts", "pushsvc-sw.js", "demo/*")),
    "dashboards": ("dashboards", ("*.json", "provisioning/*/*.yml")),
    "alerts": ("alerts", ("*.yml", "tests/*.yml")),
}

# Where the shipped alert rules (and, by default, the monitor's alerts) say ``docs/`` is published:
# each runbook link is ``<base>/runbooks.md#<alert>``. The .invalid domain never resolves; set
# your own with ``pushsvc export alerts --runbook-base-url`` and ``PUSHSVC_RUNBOOK_BASE_URL``.
RUNBOOK_PLACEHOLDER = "https://pushsvc.invalid/docs"

PACKAGED = Path(__file__).resolve().parent / "_data"
CHECKOUT = Path(__file__).resolve().parent.parent


def asset_dir(kind: Kind) -> Path:
    """The folder holding ``kind``'s files: the wheel's copy when installed, else the checkout's."""
    packaged = PACKAGED / kind
    if packaged.is_dir():
        return packaged
    return CHECKOUT / SOURCES[kind][0]


def asset_files(kind: Kind) -> list[Path]:
    """``kind``'s shipped files, relative to :func:`asset_dir` (sorted)."""
    root = asset_dir(kind)
    found = {p for pattern in SOURCES[kind][1] for p in root.glob(pattern) if p.is_file()}
    return sorted(p.relative_to(root) for p in found)
