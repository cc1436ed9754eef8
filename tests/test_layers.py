"""The layers stay honest: the core is pure, and the monitor and the CLI never reach into a node."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO_LIBRARIES = {"asyncio", "redis", "fastapi", "starlette", "prometheus_client", "opentelemetry",
                "uvicorn", "httpx", "websockets", "socket"}  # fmt: skip


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", modules("pushsvc/core"), ids=lambda p: p.name)
def test_core_is_pure(path: Path) -> None:
    for name in imports(path):
        top = name.split(".")[0]
        assert top not in IO_LIBRARIES, f"{path.name} imports {name}"
        if top == "pushsvc":
            assert name in ("pushsvc.types", "pushsvc.errors") or name.startswith("pushsvc.core"), (
                f"{path.name} imports {name}"
            )


@pytest.mark.parametrize(
    "path", modules("monitor") + modules("cli"), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_monitor_and_cli_never_import_node_internals(path: Path) -> None:
    for name in imports(path):
        assert not name.startswith("pushsvc.node"), f"{path} imports {name}"


def test_every_redis_key_is_named_in_keys_module() -> None:
    """Key and channel names are built in pushsvc/broker/keys.py only."""
    for path in modules("pushsvc"):
        if path.name == "keys.py":
            continue
        text = path.read_text()
        assert '"pushsvc:' not in text and "'pushsvc:" not in text, path
