"""Which code a figure was measured on: the repository's commit and the key package versions."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "pushsvc",
    "uvloop",
    "uvicorn",
    "httptools",
    "websockets",
    "fastapi",
    "pyjwt",
    "msgspec",
)


def git_state(repo: Path) -> dict[str, object]:
    """``commit`` and ``dirty`` (tracked files changed) of the git tree at ``repo``."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
